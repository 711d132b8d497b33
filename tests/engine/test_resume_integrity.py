"""Resume through the real entry point after the newest of three steps was damaged.

A run saves steps 5, 10 and 15; the newest is then damaged four ways (a flipped byte in a data
file, a truncated data file, a deleted file, a removed commit marker). Running the same command
again must say which step is damaged in one sentence, move it aside (never delete it), resume
from step 10 and end with exactly the prompt of the undamaged run. Changed settings that make
resuming unsound stop the run with one sentence before anything is loaded.
"""
import logging
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from prompt_tuning import train as train_lib

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def args(model_dir, **bindings):
  values = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
            "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": "15",
            "CHECKPOINT_PERIOD": "5", "BATCH_SIZE": "8", "train.log_period": "5",
            "train.infer_eval_dataset_cfg": "None", "DROPOUT_RATE": "0.1",
            "trainer.CheckpointConfig.async_save": "False", **bindings}
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"]
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in values.items()]


def prompt_of(result):
  return np.asarray(result.state.params["input_hook"]["prompt"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("straight") / "run"
  result = train_lib.main(args(model_dir))
  assert sorted(os.listdir(model_dir / "checkpoints")) == ["10", "15", "5"]
  return model_dir, prompt_of(result)


def _data_file(step_dir):
  folder = step_dir / "params"
  files = [Path(root) / name for root, _, names in os.walk(folder) for name in names
           if "/d/" in str(Path(root) / name) + "/" or Path(root).name == "d"]
  assert files, f"no data file under {folder}"
  return max(files, key=lambda p: p.stat().st_size)


def flip(step_dir):
  path = _data_file(step_dir)
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) // 2, len(raw) // 2 + 64):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))


def truncate(step_dir):
  path = _data_file(step_dir)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def delete(step_dir):
  _data_file(step_dir).unlink()


def uncommit(step_dir):
  (step_dir / "commit_success.txt").unlink()


@pytest.mark.parametrize("damage", [flip, truncate, delete, uncommit])
def test_resume_skips_the_damaged_newest_step_and_ends_like_an_unbroken_run(
    straight, tmp_path, damage, caplog):
  model_dir, expected = straight
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  damage(copy / "checkpoints" / "15")
  before = sorted(p.name for p in (copy / "checkpoints").iterdir())
  with caplog.at_level(logging.INFO):
    result = train_lib.main(args(copy))
  messages = [r.getMessage() for r in caplog.records if "15" in r.getMessage()
              and "damaged" in r.getMessage().lower()]
  assert len(messages) >= 1 and "\n" not in messages[0], messages
  assert [h["step"] for h in result.train_history] == [15]  # steps 11-15 only: resumed at 10
  moved = list((copy / "checkpoints" / "damaged").iterdir())
  assert len(moved) == 1 and moved[0].name.startswith("15-")
  assert "15" in before
  np.testing.assert_array_equal(prompt_of(result), expected)
  assert result.step == 15


def test_a_changed_batch_size_stops_the_resumed_run_with_one_sentence(straight, tmp_path):
  model_dir, _ = straight
  copy = tmp_path / "run"
  shutil.copytree(model_dir, copy)
  listing = sorted(str(p.relative_to(copy)) for p in copy.rglob("*"))
  with pytest.raises(ValueError) as error:
    train_lib.main(args(copy, BATCH_SIZE="16", TRAIN_STEPS="20"))
  message = str(error.value).splitlines()[0]  # gin adds a line naming the configurable
  assert "batch_size" in message.lower() and message.endswith("."), message
  assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*")) == listing
