"""Gin mistakes a user makes on the command line, and how early they are reported.

A misspelled macro is otherwise silently ignored (the run keeps the default of the macro meant),
a string without inner quotes gets gin's parser message, and a missing file used to be reported
only after JAX and TensorFlow were imported.
"""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from prompt_tuning import train as train_lib
from prompt_tuning.engine import gin_utils

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
RUN_FILES = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
             "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
REQUIRED = ["MODEL_DIR='/tmp/unused'", "INITIAL_CHECKPOINT_PATH='/tmp/unused'",
            "MIXTURE_OR_TASK_NAME='smoke_last_digit'"]


@pytest.fixture
def clean_gin():
  gin_utils.register_configurables()
  gin.clear_config()
  yield
  gin.clear_config()


def train_args(model_dir, *extra):
  bindings = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "BATCH_SIZE": "8"}
  return ([f"--gin_file={f}" for f in RUN_FILES]
          + [f"--gin.{k}={v}" for k, v in bindings.items()] + list(extra))


# ------------------------------------------------------------------------------------------------
# Macros bound on the command line that no configuration uses.


def test_misspelled_macro_is_reported_with_the_closest_name(clean_gin):
  logged = []
  handler = logging.Handler(level=logging.WARNING)
  handler.emit = lambda record: logged.append(record.getMessage())
  logger = logging.getLogger("prompt_tuning")  # an entry point may have stopped propagation
  logger.addHandler(handler)
  try:
    messages = gin_utils.parse_gin(gin_files=RUN_FILES,
                                   gin_bindings=REQUIRED + ["TRAIN_STEP=5"])
  finally:
    logger.removeHandler(handler)
  expected = "Gin macro TRAIN_STEP is bound but no configuration uses it; did you mean TRAIN_STEPS?"
  assert messages == [expected]
  assert expected in logged
  # What the warning is about: the run would keep the default step count.
  assert gin.query_parameter("%TRAIN_STEPS") == 30000


def test_unknown_macro_without_a_close_name_and_used_macros(clean_gin):
  messages = gin_utils.parse_gin(
      gin_files=RUN_FILES, gin_bindings=REQUIRED + ["TRAIN_STEPS=7", "QQQ=1", "PROMPT_LENGTH=3"])
  assert messages == ["Gin macro QQQ is bound but no configuration uses it."]
  assert gin.query_parameter("%TRAIN_STEPS") == 7


def test_macros_offered_by_gin_files_are_not_reported(clean_gin):
  # VOCABULARY is defined by the model file and unused by this combination: no warning.
  assert gin_utils.parse_gin(gin_files=RUN_FILES, gin_bindings=REQUIRED) == []


def test_strict_gin_makes_it_an_error(clean_gin):
  with pytest.raises(gin_utils.ConfigError) as error:
    gin_utils.parse_gin(gin_files=RUN_FILES, gin_bindings=REQUIRED + ["BATCH_SIZ=4"],
                        strict=True)
  assert str(error.value) == ("Gin macro BATCH_SIZ is bound but no configuration uses it; did "
                              "you mean BATCH_SIZE?")
  assert gin_utils.parse_flags(["--strict_gin"], prog="t", description="").strict_gin
  assert not gin_utils.parse_flags([], prog="t", description="").strict_gin


def test_strict_gin_flag_stops_the_train_entry_point(tmp_path):
  with pytest.raises(gin_utils.ConfigError, match=r"^Gin macro TRAIN_STEP is bound but no "
                     r"configuration uses it; did you mean TRAIN_STEPS\?$"):
    train_lib.main(train_args(tmp_path / "run", "--gin.TRAIN_STEP=5", "--strict_gin"))
  assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------------
# Strings whose inner quotes the shell removed.


@pytest.mark.parametrize("binding, example", [
    ("MODEL_DIR=/tmp/run", "--gin.MODEL_DIR=\"'/tmp/run'\""),
    ("MIXTURE_OR_TASK_NAME=smoke_last_digit", "--gin.MIXTURE_OR_TASK_NAME=\"'smoke_last_digit'\""),
])
def test_missing_inner_quotes_get_the_quoting_hint(clean_gin, binding, example):
  with pytest.raises(gin_utils.ConfigError) as error:
    gin_utils.parse_gin(gin_files=RUN_FILES, gin_bindings=[binding])
  assert str(error.value) == (f"Gin binding {binding!r} has a value gin cannot parse; strings "
                              f"need inner quotes, e.g. {example}.")


def test_malformed_literal_keeps_the_parser_message(clean_gin):
  with pytest.raises(gin_utils.ConfigError) as error:
    gin_utils.parse_gin(gin_files=RUN_FILES, gin_bindings=["TRAIN_STEPS=[1"])
  assert str(error.value).startswith("Gin binding 'TRAIN_STEPS=[1' is invalid: ")
  assert "inner quotes" not in str(error.value)


# ------------------------------------------------------------------------------------------------
# Errors before the heavy imports (fresh interpreter), and a non-positive step count.

_PROBE = """
import json, sys
from prompt_tuning import train
try:
  train.console_main(json.loads(sys.argv[1]))
  code = 0
except SystemExit as exit_info:
  code = exit_info.code
print(json.dumps({"code": code, "jax": "jax" in sys.modules,
                  "tensorflow": "tensorflow" in sys.modules}))
"""


def _console_in_fresh_process(args):
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.strip()


@pytest.mark.parametrize("change, message", [
    (["--gin_file=gin/runs/no_such.gin"],
     "Error: Gin file 'gin/runs/no_such.gin' was not found in the search paths"),
    (["--gin.MODEL_DIR=%gin.REQUIRED"],
     "Error: Gin macro MODEL_DIR is required but not set; add --gin.MODEL_DIR=VALUE"),
    (["--gin.MODEL_DIR=/tmp/run"],
     "Error: Gin binding 'MODEL_DIR=/tmp/run' has a value gin cannot parse; strings need inner "
     "quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\"."),
])
def test_gin_errors_come_before_jax_and_tensorflow_are_imported(tmp_path, change, message):
  result, stderr = _console_in_fresh_process(train_args(tmp_path / "run") + change)
  assert result == {"code": 1, "jax": False, "tensorflow": False}
  assert stderr.startswith(message) and "\n" not in stderr
  assert not (tmp_path / "run").exists()


def test_non_positive_train_steps_stop_with_one_sentence(tmp_path):
  with pytest.raises(ValueError) as error:
    train_lib.main(train_args(tmp_path / "run", "--gin.TRAIN_STEPS=-5"))
  assert str(error.value).splitlines()[0] == (
      "The total number of training steps (TRAIN_STEPS, train.total_steps) is -5; it must be "
      "positive.")
  assert not (tmp_path / "run" / "checkpoints").exists()
