"""Bad input to the train command: a non-zero exit, one sentence naming the cause, no traceback,
and nothing already saved changed."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import train as train_lib

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"


@pytest.fixture(autouse=True)
def fresh_log_handler():
  """Each test's entry point installs its handler on this test's captured stderr, as a fresh
  process would (a handler from an earlier test would write to a closed capture stream)."""
  logger = logging.getLogger("prompt_tuning")
  saved = list(logger.handlers)
  for handler in saved:
    logger.removeHandler(handler)
  yield
  for handler in list(logger.handlers):
    logger.removeHandler(handler)
  for handler in saved:
    logger.addHandler(handler)


def args(model_dir, files=None, **bindings):
  files = files or ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
                    "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  values = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
            "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": "2",
            "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "2",
            "train.infer_eval_dataset_cfg": "None", **bindings}
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in values.items()]


def error_of(argv, capsys):
  """Runs the console entry point; returns its one stderr sentence (exit status 1)."""
  with pytest.raises(SystemExit) as exit_info:
    train_lib.console_main(argv)
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip().splitlines()
  errors = [line for line in err if line.startswith("Error: ")]
  assert len(errors) == 1, err
  assert not any("Traceback" in line for line in err), err
  return errors[0][len("Error: "):]


def test_a_model_dir_that_is_a_file(tmp_path, capsys):
  target = tmp_path / "run"
  target.write_text("notes")
  message = error_of(args(target), capsys)
  assert message == f"MODEL_DIR {target} cannot be a folder: {target} is a file."
  assert target.read_text() == "notes"


def test_a_model_dir_that_cannot_be_written(capsys):
  message = error_of(args("/proc/prompt_tuning_run"), capsys)
  assert message.startswith("MODEL_DIR /proc/prompt_tuning_run is not writable (")


def test_a_base_checkpoint_of_another_model_names_the_checkpoint(tmp_path, capsys):
  files = ["gin/models/byte_t5_tiny.gin", "gin/prompts/sampled_vocabulary.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  message = error_of(args(tmp_path / "run", files=files, PROMPT_VOCAB_POPULATION="260"), capsys)
  assert message == ("sampled_vocabulary: the prompt width 64 differs from the embedding width 4 "
                     f"of 'token_embedder/embedding' in checkpoint {T5X_TINY} (is it a "
                     "checkpoint of this model?).")
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_prompt_file_holding_nan_names_the_file(tmp_path, capsys):
  prompt = tmp_path / "prompt.npy"
  np.save(prompt, np.full((8, 4), np.nan, np.float32))
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/from_file.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  message = error_of(args(tmp_path / "run", files=files, PROMPT_FILE=repr(str(prompt))), capsys)
  assert message == f"The file {prompt} holds NaN or infinite values."


def test_a_text_file_named_npy_names_the_file(tmp_path, capsys):
  prompt = tmp_path / "prompt.npy"
  prompt.write_text("0.1 0.2 0.3\n")
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/from_file.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  message = error_of(args(tmp_path / "run", files=files, PROMPT_FILE=repr(str(prompt))), capsys)
  assert message == (f"The file {prompt} is not a .npy array file (it may be text or a pickle, "
                     "which are not read).")
  assert "allow_pickle" not in message


@pytest.mark.slow
def test_a_diverging_run_stops_before_saving_parameters(tmp_path, capsys):
  model_dir = tmp_path / "run"
  message = error_of(args(model_dir, TRAIN_STEPS="4",
                          **{"optimizers.adafactor.learning_rate": "1e30"}), capsys)
  assert message.startswith("Training stopped: the trained parameters diverged at step 2 "), message
  assert "exceeds the divergence limit 100000" in message
  assert message.endswith("and no checkpoint was written."), message
  assert not (model_dir / "checkpoints").exists() or not any(
      p.name.isdigit() for p in (model_dir / "checkpoints").iterdir())


@pytest.mark.slow
def test_a_batch_that_does_not_divide_over_the_devices(tmp_path):
  argv = args(tmp_path / "run") + ["--host_cpu_devices=3"]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.train", *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
  assert errors == ["Error: BATCH_SIZE 8 does not divide over the 3 data-parallel devices of "
                    "the mesh; use a multiple of 3 or another device count."], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_infer_on_a_base_without_a_prompt_runs_the_base(tmp_path):
  """A model without an input hook has an empty prompt group: inference reads the base alone
  (this once stopped with "pattern '^input_hook/.*' selects no parameter")."""
  from prompt_tuning import infer as infer_lib  # pylint: disable=g-import-not-at-top
  files = ["gin/models/t5_1_1_tiny.gin", "gin/runs/infer.gin"]
  bindings = {"CHECKPOINT_DIR": "None", "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "INFER_OUTPUT_DIR": repr(str(tmp_path / "infer")),
              "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'",
              "TASK_MODULE": "'prompt_tuning.smoke_data.tasks'",
              "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}", "BATCH_SIZE": "8",
              "infer.num_examples": "8"}
  written = infer_lib.main([f"--gin_file={f}" for f in files]
                           + [f"--gin.{k}={v}" for k, v in bindings.items()])
  lines = Path(written[0]).read_text().splitlines()
  assert len(lines) == 8
