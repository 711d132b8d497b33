"""Sharded and multi-process training give the single-device result.

Each configuration runs the real entry point (`python -m prompt_tuning.train`) in its own
process, because the CPU device count and `jax.distributed` must be set before JAX starts:

  * 8 CPU devices as a (4 data x 2 model) mesh (`gin/partitioning/cpu_8.gin`): the vocabulary,
    MLP and attention kernels are split over the model axis, the batch over the data axis;
  * two processes joined with `jax.distributed` on 127.0.0.1, each reading its own shard of
    the SeqIO data;
  * one CPU host split into 4 devices by the entry point's own `--host_cpu_devices=4` (no
    XLA_FLAGS device count), which the default mesh uses as a 4-way data axis.

Both must match a one-device run step for step: the same losses and the same final prompt.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from prompt_tuning import train as train_lib
from prompt_tuning.engine import reporting

pytestmark = pytest.mark.slow  # multi-device and multi-process training runs in subprocesses

REPO = Path(__file__).resolve().parents[2]
# A real T5X checkpoint (legacy msgpack + zarr) of T5 1.1 tiny: width 4, 2+2 layers, 32128
# vocabulary rows; each host reads its slice of every parameter straight into its sharding.
T5X_TINY = (REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny"
            / "checkpoint_3")
STEPS = 5


def run_args(model_dir, extra_files=()):
  """Prompt tuning of the frozen T5X tiny model; unshuffled data, so that shards are exact."""
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
           "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin", *extra_files]
  bindings = {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
              "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": str(STEPS),
              "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "1", "train.log_period": "1",
              "train/data.DatasetConfig.shuffle": "False",
              "train.infer_eval_dataset_cfg": "None"}
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def start(args, *, devices=None):
  count = "" if devices is None else f"--xla_force_host_platform_device_count={devices} "
  env = {**os.environ, "XLA_FLAGS": count + "--xla_backend_optimization_level=0",  # tiny model
         "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
  return subprocess.Popen([sys.executable, "-m", "prompt_tuning.train", *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process):
  output = process.communicate(timeout=600)[0].decode()
  assert process.returncode == 0, output[-3000:]
  return output


def prompt_at(model_dir, step):
  return np.load(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}",
                              "input_hook.prompt.npy"))


def outcome(model_dir):
  records = reporting.read_jsonl(os.path.join(model_dir, "metrics", "train.jsonl"))
  return [r["loss"] for r in records], prompt_at(model_dir, STEPS)


def assert_matches_one_device(root, name):
  """The run in `root / name` gave the one-device run's losses, step-1 prompt and final prompt.

  Its float sums are ordered differently (split products, other fusions), and five Adafactor
  steps at learning rate 0.3 (normalised updates) amplify those last bits in the final prompt
  to a few 1e-5: a hundredth of how far training moved the prompt.
  """
  one_losses, one_prompt = outcome(root / "one")
  losses, prompt = outcome(root / name)
  np.testing.assert_allclose(losses, one_losses, rtol=2e-5)
  np.testing.assert_allclose(prompt_at(root / name, 1), prompt_at(root / "one", 1), atol=2e-5)
  moved = np.abs(one_prompt - prompt_at(root / "one", 1)).max()
  assert np.abs(prompt - one_prompt).max() < 1e-4 < 1e-2 < moved


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("distributed")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  eight = start(run_args(root / "eight", ["gin/partitioning/cpu_8.gin"]), devices=8)
  pair = [start(run_args(root / "pair") + [
      f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
      devices=1) for i in range(2)]
  four = start(run_args(root / "four") + ["--host_cpu_devices=4"])
  assert len(jax.devices()) == 1
  train_lib.main(run_args(root / "one"))  # the reference, in this (one-device) process
  logs = {"eight": finish(eight), "pair": [finish(p) for p in pair], "four": finish(four)}
  return root, logs


def test_4x2_mesh_matches_one_device(runs):
  root, logs = runs
  assert "Mesh data=4 x model=2 over 8 devices in 1 process(es)." in logs["eight"]
  assert len(outcome(root / "one")[0]) == STEPS
  # Model parallelism splits the MLP and attention products (and their gradient sums) over two
  # devices, so float sums are ordered differently.
  assert_matches_one_device(root, "eight")


def test_two_processes_match_one(runs):
  root, logs = runs
  assert all("Mesh data=2 x model=1 over 2 devices in 2 process(es)." in log
             for log in logs["pair"])
  # Each process compiles its own (partitioned) program, so XLA fuses differently than in the
  # one-device run.
  assert_matches_one_device(root, "pair")


def test_host_cpu_devices_flag_gives_a_data_parallel_mesh_that_matches_one_device(runs):
  root, logs = runs
  assert "Mesh data=4 x model=1 over 4 devices in 1 process(es)." in logs["four"]
  # Data parallelism sums the per-device gradients in a different order than one device does.
  assert_matches_one_device(root, "four")
