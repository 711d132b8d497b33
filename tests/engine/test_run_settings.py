"""Eval and infer on a run folder take the run's prompt and model shapes from its config.gin."""
from pathlib import Path

import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import train as train_lib
from prompt_tuning.engine import run_settings

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"

SAVED = """
PROMPT_LENGTH = 8
PROMPT_PLACEMENT = 'prefix'
DROPOUT_RATE = 0.1
MODEL_DIR = '/runs/x'
MODEL/get_config.dropout_rate = %DROPOUT_RATE
MODEL/get_config.emb_dim = 64
MODEL/get_config.name = 't5_1_1_tiny'
MODEL/get_config.attention_impl = 'auto'
INPUT_HOOK/Prompt.length = %PROMPT_LENGTH
"""


def test_the_shape_settings_are_read_and_placed_before_the_command_lines(tmp_path):
  (tmp_path / "config.gin").write_text(SAVED)
  (tmp_path / "checkpoints").mkdir()
  assert run_settings.shape_bindings(str(tmp_path / "checkpoints")) == [
      "PROMPT_LENGTH=8", "PROMPT_PLACEMENT='prefix'", "MODEL/get_config.emb_dim=64",
      "MODEL/get_config.name='t5_1_1_tiny'"]
  argv = ["--gin_file=gin/runs/eval.gin", f"--gin.CHECKPOINT_DIR='{tmp_path}'",
          "--gin.PROMPT_LENGTH=5"]
  assert run_settings.with_run_shapes(argv) == [
      "--gin_file=gin/runs/eval.gin", "--gin.PROMPT_LENGTH=8", "--gin.PROMPT_PLACEMENT='prefix'",
      "--gin.MODEL/get_config.emb_dim=64", "--gin.MODEL/get_config.name='t5_1_1_tiny'",
      f"--gin.CHECKPOINT_DIR='{tmp_path}'", "--gin.PROMPT_LENGTH=5"]  # the command's wins
  assert run_settings.with_run_shapes(["--gin.X=1"]) == ["--gin.X=1"]  # no run folder


def _eval_args(checkpoint_dir, **bindings):
  values = {"CHECKPOINT_DIR": repr(str(checkpoint_dir)),
            "MIXTURE_OR_TASK_NAME": "'smoke_last_digit_scored'",
            "TASK_MODULE": "'prompt_tuning.smoke_data.tasks'",
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}", "BATCH_SIZE": "16",
            "EVAL_OUTPUT_DIR": repr(str(checkpoint_dir / "eval")), **bindings}
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/prompt.gin", "gin/runs/eval.gin"]
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in values.items()]


@pytest.mark.slow
def test_the_canonical_eval_command_fits_a_run_with_a_non_default_prompt_length(tmp_path):
  run = tmp_path / "run"
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  bindings = {"MODEL_DIR": repr(str(run)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": "2",
              "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "2", "PROMPT_LENGTH": "3",
              "train.infer_eval_dataset_cfg": "None"}
  train_lib.main([f"--gin_file={f}" for f in files]
                 + [f"--gin.{k}={v}" for k, v in bindings.items()])
  # gin/prompts/prompt.gin's default length is 100; the run's 3 is used without being named.
  metrics = eval_lib.main(_eval_args(run))
  assert "smoke_last_digit_scored/target_log_likelihood" in metrics
  # A length the command sets explicitly wins, and the mismatch names the macro to set.
  with pytest.raises(ValueError) as error:
    eval_lib.main(_eval_args(run, PROMPT_LENGTH="5"))
  message = str(error.value).splitlines()[0]
  assert message == (f"Parameter 'input_hook/prompt' has shape (3, 4) in step 2 of "
                     f"{run / 'checkpoints'} but the model builds (5, 4); set "
                     "--gin.PROMPT_LENGTH=3 (the run's prompt length).")
