"""Checksummed steps, fallback to the newest good step, and the `verify` command.

Each damage test saves three steps of a tiny training run, damages the newest the way the
fault-injection pass did (a byte flip or a truncation in a params data file, a deleted file, an
emptied run record, a missing params folder, a missing commit marker), then resumes: the damaged
step must be named in one log sentence, moved aside intact, and training must continue from step
2 to a step 3 bit-identical to the uninterrupted one.
"""
import logging
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import checkpoint_integrity as integrity
from prompt_tuning.engine import checkpoints, train_state

REPO = pathlib.Path(__file__).resolve().parents[2]
OPTIMIZER = optax.adam(0.1)


def loss_fn(params, batch, dropout_rng):
  del dropout_rng
  prediction = batch["x"] @ params["input_hook"]["prompt"]
  return jnp.mean((prediction - batch["y"]) ** 2), {}


STEP = jax.jit(train_state.make_train_step(loss_fn=loss_fn, optimizer=OPTIMIZER))


def _batch(i):
  rng = np.random.default_rng(i)
  return {"x": rng.normal(size=(3, 4)).astype(np.float32),
          "y": rng.normal(size=(3, 8)).astype(np.float32)}


def _initial():
  prompt = jnp.arange(32, dtype=jnp.float32).reshape(4, 8) / 32
  return train_state.create_train_state(trainable_params={"input_hook": {"prompt": prompt}},
                                        optimizer=OPTIMIZER, rng=jax.random.PRNGKey(0))


def _advance(state, steps):
  for _ in range(steps):
    state, _ = STEP(state, {}, _batch(int(state.data_position)))
  return state


def _prompt(state):
  return np.asarray(state.params["input_hook"]["prompt"])


@pytest.fixture(name="run")
def fixture_run(tmp_path):
  """Three saved steps; returns the directory and each step's prompt."""
  state, prompts = _initial(), {}
  with checkpoints.CheckpointManager(directory=tmp_path / "checkpoints") as manager:
    for step in (1, 2, 3):
      state = _advance(state, 1)
      manager.save(step=step, state=state)
      prompts[step] = _prompt(state)
  return tmp_path / "checkpoints", prompts


def _largest_params_data_file(step_dir):
  data = [p for p in (step_dir / "params" / "ocdbt.process_0" / "d").iterdir()]
  return max(data, key=lambda p: p.stat().st_size)


def _flip_bytes(step_dir):
  path = _largest_params_data_file(step_dir)
  raw = bytearray(path.read_bytes())
  for i in range(len(raw) // 2, min(len(raw), len(raw) // 2 + 64)):
    raw[i] ^= 0xFF
  path.write_bytes(bytes(raw))
  return "does not match its checksum"


def _truncate(step_dir):
  path = _largest_params_data_file(step_dir)
  size = path.stat().st_size
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  return f"has {size // 2} bytes, {size} were saved"


def _delete_file(step_dir):
  path = _largest_params_data_file(step_dir)
  path.unlink()
  return f"'{path.relative_to(step_dir).as_posix()}' is missing"


def _empty_run_record(step_dir):
  (step_dir / "run" / "metadata").write_text("")
  return "'run/metadata' has 0 bytes"


def _remove_params_folder(step_dir):
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(step_dir / "params")
  return "its 'params' folder is missing"


def _remove_commit_marker(step_dir):
  (step_dir / "commit_success.txt").unlink()
  return "no commit_success.txt"


DAMAGE = {
    "byte_flip": (_flip_bytes, "damaged", "checksum-mismatch"),
    "truncate": (_truncate, "damaged", "wrong-size"),
    "delete_file": (_delete_file, "damaged", "missing-file"),
    "empty_run_record": (_empty_run_record, "damaged", "wrong-size"),
    "missing_params_folder": (_remove_params_folder, "damaged", "missing-folder"),
    "no_commit_marker": (_remove_commit_marker, "incomplete", "no-commit-marker"),
}


def _snapshot(directory):
  return {p.relative_to(directory).as_posix(): p.read_bytes()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_moves_the_damaged_newest_step_aside_and_continues_from_the_previous(
    run, damage, caplog):
  directory, prompts = run
  damage_fn, status, tag = DAMAGE[damage]
  expected_reason = damage_fn(directory / "3")
  damaged_files = _snapshot(directory / "3")

  with caplog.at_level(logging.WARNING):
    manager = checkpoints.CheckpointManager(directory=directory)
    restored = manager.restore_resumable(state_target=_initial())
  # One sentence names the step, what is wrong, and where it went.
  sentences = [r.getMessage() for r in caplog.records if "step 3" in r.getMessage()]
  assert len(sentences) == 1, caplog.text
  assert sentences[0].startswith(f"Checkpoint step 3 in {directory} is {status} (")
  assert expected_reason in sentences[0]
  assert "moved it to" in sentences[0] and sentences[0].count(". ") == 0

  # The previous step, with exactly the values it was saved with.
  assert restored.step == 2 and int(restored.state.step) == 2
  np.testing.assert_array_equal(_prompt(restored.state), prompts[2])
  # Moved, not deleted: the damaged step's files are all there, byte for byte.
  (aside,) = (directory / "damaged").iterdir()
  assert aside.name == f"3-{tag}"
  assert _snapshot(aside) == damaged_files
  assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "damaged"]

  # Training goes on from step 2, and step 3 can be written again (it was stuck before).
  resumed = _advance(restored.state, 1)
  np.testing.assert_array_equal(_prompt(resumed), prompts[3])  # as the uninterrupted run
  manager.save(step=3, state=resumed)
  manager.wait_until_finished()
  assert [r.status for r in manager.verify()] == ["ok", "ok", "ok"]
  np.testing.assert_array_equal(_prompt(manager.restore(state_target=_initial()).state),
                                prompts[3])
  manager.close()


def test_on_damage_stop_raises_one_sentence_and_changes_nothing(run):
  directory, _ = run
  _flip_bytes(directory / "3")
  before = _snapshot(directory)
  manager = checkpoints.CheckpointManager(directory=directory)
  with pytest.raises(checkpoints.CheckpointDamagedError) as error:
    manager.restore_resumable(state_target=_initial(), on_damage="stop")
  message = str(error.value)
  assert message.startswith(f"Checkpoint step 3 in {directory} is damaged: 'params/ocdbt.process_0")
  assert "does not match its checksum" in message and "\n" not in message
  assert _snapshot(directory) == before
  manager.close()


def test_every_damaged_step_is_moved_until_a_good_one(run):
  directory, prompts = run
  _flip_bytes(directory / "3")
  _remove_commit_marker(directory / "2")
  with checkpoints.CheckpointManager(directory=directory) as manager:
    assert manager.resumable_step() == 1
    np.testing.assert_array_equal(_prompt(manager.restore(state_target=_initial()).state),
                                  prompts[1])
  assert sorted(p.name.split("-")[0] for p in (directory / "damaged").iterdir()) == ["2", "3"]


def test_no_good_step_left_is_a_fresh_start(tmp_path):
  directory = tmp_path / "checkpoints"
  with checkpoints.CheckpointManager(directory=directory) as manager:
    manager.save(step=1, state=_initial())
  _truncate(directory / "1")
  with checkpoints.CheckpointManager(directory=directory) as manager:
    assert manager.restore_resumable(state_target=_initial()) is None
    assert manager.latest_step() is None


def test_restore_verifies_the_step_first(run):
  directory, _ = run
  _flip_bytes(directory / "3")
  reader = checkpoints.CheckpointManager(directory=directory, read_only=True)
  with pytest.raises(checkpoints.CheckpointDamagedError,
                     match=r"^Checkpoint step 3 in .* is damaged: 'params/.*checksum$"):
    reader.restore(state_target=_initial())
  # Read-only readers may skip a damaged step but never move it.
  assert reader.resumable_step(on_damage="skip") == 2
  with pytest.raises(ValueError, match="read-only"):
    reader.resumable_step()
  assert (directory / "3").is_dir()


def test_manifest_lists_every_file_with_its_sha256(run):
  directory, _ = run
  import hashlib  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  manifest = json.loads((directory / "2" / "checksums.json").read_text())
  files = {p.relative_to(directory / "2").as_posix() for p in (directory / "2").rglob("*")
           if p.is_file()}
  assert set(manifest["files"]) == files - {"checksums.json", "commit_success.txt",
                                            "_CHECKPOINT_METADATA"}
  assert {"run/metadata", "params/_METADATA"} <= set(manifest["files"])
  for name, entry in manifest["files"].items():
    raw = (directory / "2" / name).read_bytes()
    assert entry == {"size": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}


def test_step_saved_before_checksums_is_unverified_and_restores(run, caplog):
  directory, prompts = run
  (directory / "3" / "checksums.json").unlink()
  with caplog.at_level(logging.INFO):
    reports = integrity.verify_directory(directory)
  assert [(r.step, r.status) for r in reports] == [(1, "ok"), (2, "ok"), (3, "unverified")]
  assert "step 3" in caplog.text and "no checksums" in caplog.text
  with checkpoints.CheckpointManager(directory=directory) as manager:
    restored = manager.restore_resumable(state_target=_initial())
  assert restored.step == 3
  np.testing.assert_array_equal(_prompt(restored.state), prompts[3])


@pytest.mark.parametrize("damage, reason", [
    (_empty_run_record, "'run/metadata' is missing or empty"),
    (_remove_params_folder, "its 'params' folder is missing"),
])
def test_step_without_checksums_is_still_checked_for_structure(run, damage, reason):
  directory, _ = run
  (directory / "3" / "checksums.json").unlink()
  damage(directory / "3")
  (report,) = integrity.verify_directory(directory, step=3)
  assert (report.status, report.reason, report.tag) == ("damaged", reason, "structure")
  with checkpoints.CheckpointManager(directory=directory) as manager:
    assert manager.resumable_step() == 2
  assert [p.name for p in (directory / "damaged").iterdir()] == ["3-structure"]


def test_a_step_damaged_twice_is_kept_twice(run):
  directory, _ = run
  with checkpoints.CheckpointManager(directory=directory) as manager:
    for _ in range(2):
      _flip_bytes(directory / "3")
      assert manager.resumable_step() == 2
      manager.save(step=3, state=_advance(manager.restore(state_target=_initial()).state, 1))
      manager.wait_until_finished()
  assert sorted(p.name for p in (directory / "damaged").iterdir()) == [
      "3-checksum-mismatch", "3-checksum-mismatch-2"]


def test_unverified_step_that_fails_to_restore_falls_back(run):
  directory, prompts = run
  (directory / "3" / "checksums.json").unlink()
  for path in (directory / "3" / "params").rglob("d/*"):  # every data file of the parameters
    path.write_bytes(path.read_bytes()[:20])  # structure intact, data short: only a restore sees
  with checkpoints.CheckpointManager(directory=directory) as manager:
    restored = manager.restore_resumable(state_target=_initial())
  assert restored.step == 2
  np.testing.assert_array_equal(_prompt(restored.state), prompts[2])
  (aside,) = (directory / "damaged").iterdir()
  assert aside.name == "3-unrestorable"


def test_verified_step_that_does_not_fit_the_run_is_a_settings_error_not_damage(run):
  directory, _ = run
  other = train_state.create_train_state(
      trainable_params={"input_hook": {"prompt": jnp.zeros((5, 8))}}, optimizer=OPTIMIZER,
      rng=jax.random.PRNGKey(0))
  with checkpoints.CheckpointManager(directory=directory) as manager:
    with pytest.raises(ValueError, match=r"^Checkpoint step 3 in .* matches its checksums but "
                       r"does not fit this run \(.*\); resume with the settings"):
      manager.restore_resumable(state_target=other)
  assert not (directory / "damaged").exists()


# ------------------------------------------------------------------------------------------------
# The verify command.


def _verify(*args):
  env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  return subprocess.run([sys.executable, "-m", "prompt_tuning.checkpoints", "verify", *args],
                        env=env, cwd=REPO, capture_output=True, text=True, timeout=60,
                        check=False)


def test_verify_command_reports_each_step_and_exits_non_zero_on_damage(run):
  directory, _ = run
  clean = _verify(str(directory.parent))  # the model dir works as well as its checkpoints/
  assert (clean.returncode, clean.stdout) == (0, "step 1: ok\nstep 2: ok\nstep 3: ok\n")

  _flip_bytes(directory / "3")
  _remove_commit_marker(directory / "1")
  (directory / "2" / "checksums.json").unlink()
  damaged = _verify(str(directory))
  assert damaged.returncode == 1
  lines = damaged.stdout.splitlines()
  assert lines[0] == "step 1: incomplete (no commit_success.txt: the save or copy did not finish)"
  assert lines[1] == "step 2: unverified (no checksums.json: written before checksums existed)"
  assert lines[2].startswith("step 3: damaged ('params/ocdbt.process_0/d/")
  assert lines[2].endswith("' does not match its checksum)")
  assert f"2 of 3 steps in {directory} are damaged or incomplete: [1, 3]." in damaged.stderr
  assert "Traceback" not in damaged.stderr

  one = _verify(str(directory), "--step", "2")
  assert (one.returncode, one.stdout.splitlines()) == (0, [lines[1]])
  missing = _verify(str(directory), "--step", "7")
  assert missing.returncode == 2
  assert missing.stderr.strip() == (f"Error: No checkpoint step 7 in {directory}; steps are "
                                    "[1, 2, 3].")
  nowhere = _verify(str(directory / "nope"))
  assert (nowhere.returncode, nowhere.stderr.strip()) == (
      2, f"Error: Checkpoint directory {directory / 'nope'} does not exist.")


# ------------------------------------------------------------------------------------------------
# Two processes: process 0 checks and moves, both resume from the same step.

TWO_PROCESS_SCRIPT = """
import json, os, sys, time
import jax
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                           process_id=int(sys.argv[3]))
import jax.numpy as jnp, numpy as np, optax
from jax.experimental import multihost_utils
from prompt_tuning.engine import checkpoints, train_state

directory = sys.argv[1]
mesh = jax.sharding.Mesh(np.array(jax.devices()), ("data",))
replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
def state(value):  # one global array over both processes' devices
  return jax.jit(lambda: train_state.create_train_state(
      trainable_params={"input_hook": {"prompt": jnp.full((4, 8), value)}},
      optimizer=optax.adam(0.1), rng=jax.random.PRNGKey(0)), out_shardings=replicated)()
with checkpoints.CheckpointManager(directory=directory) as manager:
  for step in (1, 2, 3):
    manager.save(step=step, state=state(float(step)))
multihost_utils.sync_global_devices("saved")
if jax.process_index() == 0:
  data = os.path.join(directory, "3", "params", "ocdbt.process_0", "d")
  path = os.path.join(data, sorted(os.listdir(data))[0])
  raw = bytearray(open(path, "rb").read()); raw[len(raw) // 2] ^= 0xFF
  open(path, "wb").write(bytes(raw))
multihost_utils.sync_global_devices("damaged")
with checkpoints.CheckpointManager(directory=directory) as manager:
  restored = manager.restore_resumable(state_target=state(0.0))
  prompt = np.asarray(restored.state.params["input_hook"]["prompt"])
  print(json.dumps({"step": restored.step, "prompt": float(prompt.max()),
                    "aside": sorted(os.listdir(os.path.join(directory, "damaged")))}), flush=True)
"""


@pytest.mark.slow
def test_two_processes_agree_on_the_step_and_move_the_damaged_one_once(tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
  children = [subprocess.Popen(
      [sys.executable, "-c", TWO_PROCESS_SCRIPT, str(tmp_path), f"127.0.0.1:{port}", str(i)],
      env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
  outputs = [child.communicate(timeout=240) for child in children]
  for child, (_, err) in zip(children, outputs):
    assert child.returncode == 0, err[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
  assert results == [{"step": 2, "prompt": 2.0, "aside": ["3-checksum-mismatch"]}] * 2
