"""ID-PT trained over a 4 (data) x 2 (model) CPU mesh equals one device for 3 steps.

Each run is the real train entry point (`python -m prompt_tuning.train` with
gin/methods/idpt/generator.gin) in its own process, since the CPU device count must be set
before JAX starts. The frozen LM and the generator's frozen small encoder are the real T5X tiny
checkpoint; the model axis splits the MLP and attention kernels of the LM, the small encoder and
the generator's blocks.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning.engine import reporting

REPO = Path(__file__).resolve().parents[3]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
STEPS = 3


def run_args(model_dir, extra_files=()):
  files = ["gin/models/t5_1_1_tiny.gin", "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin",
           "gin/methods/idpt/generator.gin", *extra_files]
  bindings = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "ENCODER_CHECKPOINT_PATH": repr(str(T5X_TINY)), "ENCODER_PRESET": "'t5_1_1_tiny'",
              "PROMPT_LENGTH": "4", "ENCODER_PROMPT_LENGTH": "2",
              "MIXTURE_OR_TASK_NAME": "'idpt_digits'",
              "TASK_MODULE": "'prompt_tuning.methods.idpt.tasks'", "TRAIN_STEPS": str(STEPS),
              "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "1", "train.log_period": "1",
              "train.optimizer": "@optimizers.adam()", "optimizers.adam.learning_rate": "1e-2",
              "train/data.DatasetConfig.shuffle": "False", "train.infer_eval_dataset_cfg": "None"}
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def start(args, devices):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                      "--xla_backend_optimization_level=0"}
  return subprocess.Popen([sys.executable, "-m", "prompt_tuning.train", *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process):
  output = process.communicate(timeout=900)[0].decode()
  assert process.returncode == 0, output[-3000:]
  return output


def generator_at(model_dir, step):
  with np.load(os.path.join(model_dir, "group_exports", f"checkpoint_{step}",
                            "generator.npz")) as archive:
    return {name: archive[name] for name in archive.files}


def losses(model_dir):
  return [r["loss"] for r in reporting.read_jsonl(os.path.join(model_dir, "metrics",
                                                               "train.jsonl"))]


@pytest.mark.slow
def test_4x2_mesh_matches_one_device(tmp_path):
  eight = start(run_args(tmp_path / "eight", ["gin/partitioning/cpu_8.gin"]), devices=8)
  one = start(run_args(tmp_path / "one"), devices=1)
  log = finish(eight)
  finish(one)
  assert "Mesh data=4 x model=2 over 8 devices in 1 process(es)." in log
  one_losses = losses(tmp_path / "one")
  assert len(one_losses) == STEPS
  np.testing.assert_allclose(losses(tmp_path / "eight"), one_losses, rtol=2e-5)
  start_params, end_params = generator_at(tmp_path / "one", 1), generator_at(tmp_path / "one",
                                                                              STEPS)
  sharded = generator_at(tmp_path / "eight", STEPS)
  assert sorted(sharded) == sorted(end_params) and len(sharded) == 36
  for name, value in end_params.items():
    moved = np.abs(value - start_params[name]).max()
    # Sums ordered differently across devices leave a few 1e-6; three Adam steps at 1e-2 move
    # every trained leaf by far more.
    np.testing.assert_allclose(sharded[name], value, atol=1e-5, err_msg=name)
    assert moved > 1e-3, (name, moved)
