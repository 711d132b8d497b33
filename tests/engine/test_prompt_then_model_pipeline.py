"""A prompt-then-model pipeline from one command, killed in its second stage and run again.

Stage 1 prompt-tunes the frozen T5X tiny checkpoint. Stage 2 trains the whole model with that
prompt frozen and still prepended: its parameter groups read the prompt from stage 1's
checkpoint (`{prompt.checkpoint}`) and the model from the same base
(`gin/params/frozen_prompt_trained_model.gin`). Killed after stage 2 saved a step and run
again, the pipeline skips stage 1 and ends with exactly the parameters of an uninterrupted run.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.engine import checkpoint_import, checkpoints, params
from prompt_tuning.pipelines import outputs, runner

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"

PIPELINE = f"""
pipeline.stages = [@prompt/Stage(), @model/Stage()]

prompt/Stage.name = 'prompt'
prompt/Stage.kind = 'train'
prompt/Stage.gin_files = ['gin/models/t5_1_1_tiny.gin', 'gin/prompts/random_uniform.gin',
                          'gin/runs/prompt_tuning.gin', 'gin/runs/smoke.gin']
prompt/Stage.bindings = {{
    'INITIAL_CHECKPOINT_PATH': "'{T5X_TINY}'", 'MIXTURE_OR_TASK_NAME': "'smoke_last_digit'",
    'BATCH_SIZE': 8, 'train.infer_eval_dataset_cfg': 'None', 'DROPOUT_RATE': 0.1,
    'TRAIN_STEPS': 8, 'CHECKPOINT_PERIOD': 4, 'train.log_period': 4}}

model/Stage.name = 'model'
model/Stage.kind = 'train'
model/Stage.gin_files = ['gin/models/t5_1_1_tiny.gin', 'gin/prompts/random_uniform.gin',
                         'gin/runs/finetune.gin', 'gin/runs/smoke.gin',
                         'gin/params/frozen_prompt_trained_model.gin']
model/Stage.bindings = {{
    'INITIAL_CHECKPOINT_PATH': "'{T5X_TINY}'", 'MIXTURE_OR_TASK_NAME': "'smoke_last_digit'",
    'BATCH_SIZE': 8, 'train.infer_eval_dataset_cfg': 'None', 'DROPOUT_RATE': 0.1,
    'PROMPT_CHECKPOINT': "'{{prompt.checkpoint}}'",
    'TRAIN_STEPS': 12, 'CHECKPOINT_PERIOD': 4, 'train.log_period': 4,
    'train.optimizer': '@optimizers.adam()', 'optimizers.adam.learning_rate': 1e-2}}
"""


def _kill_during(stage_folder, step, args, env):
  process = subprocess.Popen([sys.executable, "-m", "prompt_tuning.pipeline", *args], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
  marker = stage_folder / "checkpoints" / str(step) / outputs.COMMIT_MARKER
  deadline = time.time() + 900
  while time.time() < deadline and process.poll() is None and not marker.exists():
    time.sleep(0.05)
  if process.poll() is None:
    os.killpg(process.pid, signal.SIGKILL)
  process.wait(timeout=60)
  stderr = process.stderr.read().decode()[-2000:]
  assert process.returncode == -signal.SIGKILL, f"the pipeline was not killed mid-way: {stderr}"


def _arrays(step_folder):
  reader = checkpoint_import.open_checkpoint(str(step_folder))
  return {name: np.asarray(reader.read(name)) for name in reader.entries()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("prompt_then_model")
  gin_file = root / "pipeline.gin"
  gin_file.write_text(PIPELINE)
  env = {**os.environ, "PYTHONPATH": str(REPO),
         "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
  old_env = dict(os.environ)
  os.environ.update(env)
  cwd = os.getcwd()
  os.chdir(REPO)
  try:
    killed = root / "killed"
    args = [f"--gin_file={gin_file}", f"--pipeline_dir={killed}"]
    _kill_during(killed / "model", 4, args, env)
    assert (killed / "prompt" / runner.RECORD_FILE).exists()
    assert not (killed / "model" / runner.RECORD_FILE).exists()
    lines = []
    resumed = pipeline_lib.main(args, say=lines.append)
    straight = pipeline_lib.main([f"--gin_file={gin_file}", f"--pipeline_dir={root / 'straight'}"],
                                 say=lines.append)
  finally:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(old_env)
  return {"root": root, "resumed": resumed, "straight": straight, "said": "\n".join(lines)}


def test_the_rerun_skips_stage_one_and_resumes_stage_two(runs):
  said = runs["said"]
  assert "stage 'prompt' (train): finished earlier, skipped." in said
  assert f"stage 'model' (train): resuming in {runs['root'] / 'killed' / 'model'}" in said


def test_stage_two_ends_with_the_uninterrupted_parameters(runs):
  resumed, straight = runs["resumed"]["model"], runs["straight"]["model"]
  assert resumed["step"] == straight["step"] == 12
  got, want = _arrays(resumed["checkpoint"]), _arrays(straight["checkpoint"])
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_stage_two_trains_everything_but_the_prompt_which_stays_stage_ones(runs):
  resumed = runs["resumed"]
  trained = _arrays(resumed["model"]["checkpoint"])
  base = checkpoint_import.open_checkpoint(str(T5X_TINY)).entries()
  assert sorted(trained) == sorted(base)  # every model parameter, and no prompt
  assert params.PROMPT_PATH not in trained
  moved = [n for n in base if not np.array_equal(
      trained[n], np.asarray(checkpoint_import.open_checkpoint(str(T5X_TINY)).read(n)))]
  assert len(moved) > len(base) // 2
  # The frozen prompt stage 2 used is stage 1's final prompt, bit for bit, read back the way
  # evaluation reads the run (its record names the prompt's source).
  stage_one = _arrays(resumed["prompt"]["checkpoint"])[params.PROMPT_PATH]
  with checkpoints.CheckpointManager(directory=Path(resumed["model"]["model_dir"]) / "checkpoints",
                                     read_only=True) as manager:
    record = manager.run_record()
  groups = {g["name"]: g for g in record["run_metadata"]["param_groups"]}
  assert groups["prompt"]["source"]["path"] == resumed["prompt"]["checkpoint"]
  assert not groups["prompt"]["trainable"] and groups["model"]["trainable"]
  np.testing.assert_array_equal(
      np.asarray(checkpoint_import.open_checkpoint(groups["prompt"]["source"]["path"]).read(
          params.PROMPT_PATH)), stage_one)
