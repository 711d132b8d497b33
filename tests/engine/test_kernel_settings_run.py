"""A prompt-tuning run through the real entry point gives the same losses and prompt with the
hand-written CPU kernels and with plain XLA autodiff (the setting TPU and GPU get)."""
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import train as train_lib

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"


def run(model_dir, impl):
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  bindings = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": "4",
              "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "4", "train.log_period": "1",
              "DROPOUT_RATE": "0.1", "train.infer_eval_dataset_cfg": "None",
              "ATTENTION_IMPL": repr(impl), "MLP_IMPL": repr(impl)}
  return train_lib.main([f"--gin_file={f}" for f in files]
                        + [f"--gin.{k}={v}" for k, v in bindings.items()])


def test_both_kernel_settings_train_the_same_prompt(tmp_path):
  custom, xla = run(tmp_path / "custom", "custom_vjp"), run(tmp_path / "xla", "xla")
  np.testing.assert_allclose([h["loss"] for h in xla.train_history],
                             [h["loss"] for h in custom.train_history], rtol=2e-5)
  np.testing.assert_allclose(np.asarray(xla.state.params["input_hook"]["prompt"]),
                             np.asarray(custom.state.params["input_hook"]["prompt"]),
                             rtol=1e-4, atol=1e-5)
