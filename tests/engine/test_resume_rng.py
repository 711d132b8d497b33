"""Resumption restores the training RNG exactly, so dropout after a restart matches a straight run.

The kill-and-resume test in test_entry_points.py runs the smoke settings with dropout 0, where the
step's dropout key changes nothing. Here dropout is 0.1 on the T5X tiny checkpoint: a run stopped
at a checkpoint and continued in the same model dir must reach the uninterrupted run's prompt, loss
for loss. A resumed run that drew its dropout keys from a fresh RNG (the seed's) instead of the
checkpoint's would diverge from the first step after the restart.
"""
from pathlib import Path

import jax
import numpy as np
import pytest

from prompt_tuning import train as train_lib

pytestmark = pytest.mark.slow  # three training runs through the train entry point

REPO = Path(__file__).resolve().parents[2]
# A real T5X checkpoint (legacy msgpack + zarr) of T5 1.1 tiny: width 4, 2+2 layers.
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
STOP_AT, STEPS = 4, 8


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """The three runs compile the same step; the cache compiles it once."""
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def prompt_args(model_dir, steps):
  bindings = {
      "MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
      "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": str(steps),
      "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": str(STOP_AT), "DROPOUT_RATE": "0.1",
      "train.log_period": "1", "train.infer_eval_dataset_cfg": "None",
      "trainer.CheckpointConfig.export_prompts": "False"}
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def test_a_resumed_run_with_dropout_matches_the_uninterrupted_run(tmp_path):
  straight = train_lib.main(prompt_args(tmp_path / "straight", STEPS))
  stopped = train_lib.main(prompt_args(tmp_path / "resumed", STOP_AT))
  resumed = train_lib.main(prompt_args(tmp_path / "resumed", STEPS))

  assert stopped.step == STOP_AT and resumed.step == straight.step == STEPS
  assert [h["step"] for h in resumed.train_history] == list(range(STOP_AT + 1, STEPS + 1))
  # The RNG carried in the state is the straight run's at the end (one split per step).
  np.testing.assert_array_equal(np.asarray(resumed.state.rng), np.asarray(straight.state.rng))
  # Dropout draws the same masks after the restart: same losses, same prompt, bit for bit.
  straight_losses = [h["loss"] for h in straight.train_history]
  np.testing.assert_array_equal([h["loss"] for h in stopped.train_history],
                                straight_losses[:STOP_AT])
  np.testing.assert_array_equal([h["loss"] for h in resumed.train_history],
                                straight_losses[STOP_AT:])
  np.testing.assert_array_equal(np.asarray(resumed.state.params["input_hook"]["prompt"]),
                                np.asarray(straight.state.params["input_hook"]["prompt"]))
