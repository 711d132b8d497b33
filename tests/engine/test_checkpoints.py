"""Tests for prompt_tuning.engine.checkpoints (orbax CheckpointManager underneath).

Crash safety is checked with real processes: a child process is killed (SIGKILL) while orbax
is committing a step, and a fresh manager must still restore the last complete step. Restoring
into a (4 data x 2 model) mesh runs in an 8-CPU-device subprocess, because the device count is
fixed when JAX starts.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import checkpoints, train_state

REPO = pathlib.Path(__file__).resolve().parents[2]
BASE = checkpoints.BaseCheckpoint(path="/models/t5_1_1_base/checkpoint_1100000", format="t5x")


class Toy(nn.Module):
  """A [4, 8] prompt added to the input of a frozen 8 -> 64 -> 2 MLP."""

  @nn.compact
  def __call__(self, x):
    x = x + Hook(name="input_hook")()
    return nn.Dense(2, name="out")(jnp.tanh(nn.Dense(64, name="hidden")(x)))


class Hook(nn.Module):

  @nn.compact
  def __call__(self):
    return self.param("prompt", nn.initializers.normal(1.0), (4, 8)).mean(0)


MODEL = Toy()
OPTIMIZER = optax.adam(0.05)


def loss_fn(params, batch, dropout_rng):
  noise = 0.01 * jax.random.normal(dropout_rng, batch["y"].shape)  # uses the step's key
  error = MODEL.apply({"params": params}, batch["x"]) - batch["y"] + noise
  return jnp.mean(error**2), {}


STEP = jax.jit(train_state.make_train_step(loss_fn=loss_fn, optimizer=OPTIMIZER))


def _batch(i):
  rng = np.random.default_rng(i)
  return {"x": rng.normal(size=(4, 8)).astype(np.float32),
          "y": rng.normal(size=(4, 2)).astype(np.float32)}


def _initial(patterns=train_state.PROMPT_ONLY):
  params = MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 8)))["params"]
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  state = train_state.create_train_state(trainable_params=trainable, optimizer=OPTIMIZER,
                                         rng=jax.random.PRNGKey(1))
  return state, frozen


def _advance(state, frozen, steps):
  for _ in range(steps):
    state, _ = STEP(state, frozen, _batch(int(state.data_position)))
  return state


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _dir_bytes(path):
  return sum(f.stat().st_size for f in pathlib.Path(path).rglob("*") if f.is_file())


# ------------------------------------------------------------------------------------------------
# Save, restore, resume.


@pytest.mark.slow
def test_restore_returns_the_saved_state_and_base_reference(tmp_path):
  state, frozen = _initial()
  state = _advance(state, frozen, 2)
  with checkpoints.CheckpointManager(directory=tmp_path, base_checkpoint=BASE,
                                     run_metadata={"patterns": ["^input_hook/.*"]}) as manager:
    assert manager.save(step=2, state=state)
  reader = checkpoints.CheckpointManager(directory=tmp_path, read_only=True)
  restored = reader.restore(state_target=_initial()[0])
  assert restored.step == 2
  _assert_trees_equal(restored.state, state)
  assert restored.base_checkpoint == BASE
  assert restored.run["contents"] == "trainable"
  assert restored.run["run_metadata"] == {"patterns": ["^input_hook/.*"]}
  assert restored.frozen is None


def test_resumed_run_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
  state, frozen = _initial()
  uninterrupted = _advance(state, frozen, 5)
  with checkpoints.CheckpointManager(directory=tmp_path) as manager:
    manager.save(step=3, state=_advance(state, frozen, 3))
  with checkpoints.CheckpointManager(directory=tmp_path) as manager:
    restored = manager.restore(state_target=state).state
  assert int(restored.step) == 3 and int(restored.data_position) == 3
  _assert_trees_equal(_advance(restored, frozen, 2), uninterrupted)


def test_params_only_restore_for_evaluation(tmp_path):
  state, frozen = _initial()
  with checkpoints.CheckpointManager(directory=tmp_path) as manager:
    manager.save(step=7, state=state)
  restored = checkpoints.CheckpointManager(directory=tmp_path, read_only=True).restore(
      params_target=state.params)
  assert restored.state is None and restored.step == 7
  _assert_trees_equal(restored.params, state.params)


def test_prompt_checkpoint_is_small_and_full_checkpoint_holds_the_frozen_model(tmp_path):
  state, frozen = _initial()
  with checkpoints.CheckpointManager(directory=tmp_path / "small", base_checkpoint=BASE) as small:
    small.save(step=1, state=state)
  with checkpoints.CheckpointManager(directory=tmp_path / "full", save_frozen=True) as full:
    full.save(step=1, state=state, frozen=frozen)
  assert not (tmp_path / "small" / "1" / "frozen").exists()
  frozen_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(frozen))  # 2.9 KB
  small_bytes = _dir_bytes(tmp_path / "small" / "1")
  full_bytes = _dir_bytes(tmp_path / "full" / "1")
  assert full_bytes - small_bytes > 0.5 * frozen_bytes
  restored = checkpoints.CheckpointManager(directory=tmp_path / "full", read_only=True).restore(
      state_target=state, frozen_target=frozen)
  assert restored.run["contents"] == "full" and restored.base_checkpoint is None
  _assert_trees_equal(restored.frozen, frozen)


def test_a_saved_step_folder_imports_as_one_checkpoint(tmp_path):
  """A full checkpoint's step folder (items 'params' + 'frozen') is a base for a later run."""
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  state, frozen = _initial()
  state = _advance(state, frozen, 3)
  with checkpoints.CheckpointManager(directory=tmp_path, save_frozen=True) as manager:
    manager.save(step=3, state=state, frozen=frozen)
  merged = train_state.merge_params(trainable=state.params, frozen=frozen)
  abstract = jax.eval_shape(lambda: merged)
  imported = checkpoint_import.import_checkpoint(str(tmp_path / "3"), abstract_params=abstract)
  _assert_trees_equal(imported, merged)
  assert float(jnp.abs(state.params["input_hook"]["prompt"] - _initial()[0].params["input_hook"]
                       ["prompt"]).max()) > 1e-3  # the trained prompt, not the initial one
  # A prompt-only step folder offers the prompt and nothing else: the base is named as missing.
  with checkpoints.CheckpointManager(directory=tmp_path / "small", base_checkpoint=BASE) as small:
    small.save(step=3, state=state)
  with pytest.raises(ValueError, match="hidden/kernel"):
    checkpoint_import.import_checkpoint(str(tmp_path / "small" / "3"), abstract_params=abstract)


def test_base_checkpoint_formats_are_the_importer_names():
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  assert set(checkpoints.BASE_CHECKPOINT_FORMATS) == set(checkpoint_import.FORMATS)
  assert checkpoints.BaseCheckpoint(path="/m", format="hf_safetensors").format == "hf"
  with pytest.raises(ValueError, match="Unknown base checkpoint format 'gguf'"):
    checkpoints.BaseCheckpoint(path="/m", format="gguf")


def test_asking_a_small_checkpoint_for_frozen_params_names_the_base(tmp_path):
  state, frozen = _initial()
  with checkpoints.CheckpointManager(directory=tmp_path, base_checkpoint=BASE) as manager:
    manager.save(step=1, state=state)
    with pytest.raises(ValueError, match="holds only trainable parameters; its frozen base is"):
      manager.restore(state_target=state, frozen_target=frozen)


@pytest.mark.slow
def test_full_fine_tuning_state_round_trips(tmp_path):
  state, frozen = _initial(patterns=train_state.EVERYTHING)
  state = _advance(state, frozen, 1)
  with checkpoints.CheckpointManager(directory=tmp_path, save_frozen=True) as manager:
    manager.save(step=1, state=state, frozen=frozen)
    _assert_trees_equal(manager.restore(state_target=state, frozen_target=frozen).state, state)


# ------------------------------------------------------------------------------------------------
# Which steps are kept.


def _save_steps(manager, losses):
  state, _ = _initial()
  for step, loss in losses.items():
    manager.save(step=step, state=state.replace(step=jnp.int32(step)),
                 metrics=None if loss is None else {"loss": loss, "accuracy": -loss})
  manager.wait_until_finished()


def test_keep_latest_deletes_older_steps(tmp_path):
  with checkpoints.CheckpointManager(directory=tmp_path, keep_latest=2) as manager:
    _save_steps(manager, {1: None, 2: None, 3: None, 4: None})
    assert manager.all_steps() == [3, 4]
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_keep_best_by_min_metric_also_keeps_the_latest(tmp_path):
  with checkpoints.CheckpointManager(directory=tmp_path, keep_latest=1, keep_best=1,
                                     best_metric="loss", best_mode="min") as manager:
    _save_steps(manager, {1: 5.0, 2: 1.0, 3: 4.0, 4: 3.0, 5: 6.0})
    assert manager.all_steps() == [2, 5]
    assert manager.best_step() == 2
    assert manager.latest_step() == 5


def test_keep_best_by_max_metric(tmp_path):
  with checkpoints.CheckpointManager(directory=tmp_path, keep_latest=1, keep_best=2,
                                     best_metric="accuracy", best_mode="max") as manager:
    _save_steps(manager, {1: 5.0, 2: 1.0, 3: 4.0, 4: 2.0, 5: 6.0})
    assert manager.all_steps() == [2, 4, 5]  # accuracies -1 and -2 are the best two
    assert manager.best_step() == 2


def test_save_interval_skips_steps_unless_forced(tmp_path):
  state, _ = _initial()
  with checkpoints.CheckpointManager(directory=tmp_path, save_interval_steps=10) as manager:
    assert manager.save(step=10, state=state)
    assert not manager.save(step=15, state=state)
    assert manager.save(step=17, state=state, force=True)
    manager.wait_until_finished()
    assert manager.all_steps() == [10, 17]


# ------------------------------------------------------------------------------------------------
# Errors.


def test_missing_directory_is_one_clear_sentence(tmp_path):
  missing = tmp_path / "nope"
  with pytest.raises(FileNotFoundError, match=r"^Checkpoint directory .*nope does not exist\.$"):
    checkpoints.CheckpointManager(directory=missing, read_only=True)


def test_empty_directory_and_unknown_step_are_errors(tmp_path):
  state, _ = _initial()
  manager = checkpoints.CheckpointManager(directory=tmp_path)
  with pytest.raises(FileNotFoundError, match=r"No complete checkpoint in"):
    manager.restore(state_target=state)
  manager.save(step=4, state=state)
  manager.wait_until_finished()
  with pytest.raises(FileNotFoundError, match=r"No checkpoint step 9 in .*; complete steps") as e:
    manager.restore(state_target=state, step=9)
  assert str(e.value).endswith("complete steps are [4].")
  manager.close()


def test_bad_arguments_are_errors(tmp_path):
  state, frozen = _initial()
  with pytest.raises(ValueError, match="Unknown base checkpoint format 'ckpt'"):
    checkpoints.BaseCheckpoint(path="/x", format="ckpt")
  with pytest.raises(ValueError, match="keep_best needs best_metric"):
    checkpoints.CheckpointManager(directory=tmp_path, keep_best=2)
  with pytest.raises(ValueError, match="run_metadata must be JSON-serialisable"):
    checkpoints.CheckpointManager(directory=tmp_path, run_metadata={"f": object()})
  with checkpoints.CheckpointManager(directory=tmp_path, best_metric="loss") as manager:
    with pytest.raises(ValueError, match="metrics lack the best_metric 'loss'"):
      manager.save(step=1, state=state, metrics={"accuracy": 1.0})
    with pytest.raises(ValueError, match="created with save_frozen=False"):
      manager.save(step=1, state=state, frozen=frozen)
  with pytest.raises(ValueError, match="no sharding"):
    checkpoints.abstract_target(jax.ShapeDtypeStruct((2,), jnp.float32))


# ------------------------------------------------------------------------------------------------
# Crash safety.

KILLED_SAVE_SCRIPT = """
import asyncio, sys, time
import jax, jax.numpy as jnp, optax
from orbax.checkpoint._src.path import async_path
from prompt_tuning.engine import checkpoints, train_state

directory = sys.argv[1]
params = {"input_hook": {"prompt": jnp.full((4, 8), 1.0)}}
state = train_state.create_train_state(trainable_params=params, optimizer=optax.adam(0.1),
                                       rng=jax.random.PRNGKey(0))
manager = checkpoints.CheckpointManager(directory=directory, async_save=False)
manager.save(step=1, state=state)

async def hang_before_rename(*args, **kwargs):
  print("committing", flush=True)  # everything is written; only the rename is left
  await asyncio.sleep(3600)

async_path.rename = hang_before_rename
manager.save(step=2, state=state.replace(params={"input_hook": {"prompt": jnp.full((4, 8), 2.0)}}))
"""


def _python(script, *args, device_count=1):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={device_count}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], env=env,
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_save_killed_during_commit_leaves_the_last_good_step(tmp_path):
  child = _python(KILLED_SAVE_SCRIPT, str(tmp_path))
  try:
    line = child.stdout.readline()
    assert line.strip() == "committing", child.stderr.read()[-3000:]
  finally:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
  leftovers = [n for n in os.listdir(tmp_path) if n.startswith("2.")]
  assert leftovers and "orbax-checkpoint-tmp" in leftovers[0]  # step 2 never got its name
  assert not (tmp_path / "2").exists()

  target = train_state.create_train_state(
      trainable_params={"input_hook": {"prompt": jnp.zeros((4, 8))}}, optimizer=optax.adam(0.1),
      rng=jax.random.PRNGKey(0))
  reader = checkpoints.CheckpointManager(directory=tmp_path, read_only=True)
  assert reader.latest_step() == 1
  restored = reader.restore(state_target=target)
  assert restored.step == 1
  np.testing.assert_array_equal(np.asarray(restored.state.params["input_hook"]["prompt"]), 1.0)

  # The next writer removes the leftover and can save step 2 for real.
  with checkpoints.CheckpointManager(directory=tmp_path) as writer:
    writer.save(step=2, state=restored.state)
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]


def test_step_directory_without_commit_marker_is_skipped(tmp_path):
  state, _ = _initial()
  with checkpoints.CheckpointManager(directory=tmp_path) as manager:
    manager.save(step=1, state=state)
  # E.g. an interrupted copy of a checkpoint folder: the step name exists, its contents do not.
  (tmp_path / "2" / "params").mkdir(parents=True)
  reader = checkpoints.CheckpointManager(directory=tmp_path, read_only=True)
  assert reader.all_steps() == [1]
  assert reader.restore(state_target=state).step == 1
  with pytest.raises(FileNotFoundError, match="step 2 .* is incomplete"):
    reader.restore(state_target=state, step=2)


# ------------------------------------------------------------------------------------------------
# Restoring straight into a 4 x 2 mesh.

SHARDED_RESTORE_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
from prompt_tuning.engine import checkpoints, partitioning, train_state

directory = sys.argv[1]
params = {"input_hook": {"prompt": jnp.arange(32.0).reshape(4, 8)},
          "wi": jnp.arange(128.0).reshape(8, 16)}
optimizer = optax.adam(0.1)
state = train_state.create_train_state(trainable_params=params, optimizer=optimizer,
                                       rng=jax.random.PRNGKey(0))  # on one device
with checkpoints.CheckpointManager(directory=directory) as manager:
  manager.save(step=5, state=state)

mesh = partitioning.MeshConfig(data=4, model=2).make_mesh()
param_sh = {"input_hook": {"prompt": NamedSharding(mesh, P())},
            "wi": NamedSharding(mesh, P(None, "model"))}
abstract = jax.eval_shape(lambda: state)
target_sh = train_state.state_shardings(optimizer=optimizer, trainable_params=abstract.params,
                                        trainable_shardings=param_sh, mesh=mesh)
target = checkpoints.abstract_target(abstract, target_sh)
restored = checkpoints.CheckpointManager(directory=directory, read_only=True).restore(
    state_target=target).state
wi, mu = restored.params["wi"], restored.opt_state[0].mu["wi"]
print(json.dumps({
    "wi_spec": [a for a in wi.sharding.spec],
    "wi_devices": len(wi.sharding.device_set),
    "wi_shard_shape": list(wi.addressable_shards[0].data.shape),
    "mu_spec": [a for a in mu.sharding.spec],
    "wi_equal": bool(np.array_equal(np.asarray(wi), np.arange(128.0).reshape(8, 16))),
    "prompt_equal": bool(np.array_equal(np.asarray(restored.params["input_hook"]["prompt"]),
                                        np.arange(32.0).reshape(4, 8))),
}))
"""


@pytest.mark.slow
def test_restore_reads_directly_into_mesh_shardings(tmp_path):
  child = _python(SHARDED_RESTORE_SCRIPT, str(tmp_path), device_count=8)
  out, err = child.communicate(timeout=240)
  assert child.returncode == 0, err[-4000:]
  result = json.loads(out.strip().splitlines()[-1])
  assert result == {
      "wi_spec": [None, "model"],
      "wi_devices": 8,
      "wi_shard_shape": [8, 8],
      "mu_spec": [None, "model"],
      "wi_equal": True,
      "prompt_equal": True,
  }
