"""Every sub-command in --dry-run for a single host and for pod slices: the exact command lines."""
from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys

import pytest
from tpu_setup_testlib import (
  COMMIT,
  REPO,
  REPO_ROOT,
  FakeGit,
  RecordingExecutor,
  parse_printed_plan,
  run_cli,
  ssh_script,
)

from tpu_setup import cli

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SLICES = [
    # accelerator, hosts, devices per host, default runtime version
    pytest.param("v3-8", 1, 8, "tpu-ubuntu2204-base", id="single-host-v3-8"),
    pytest.param("v4-32", 4, 4, "tpu-ubuntu2204-base", id="pod-v4-32"),
    pytest.param("v5litepod-16", 4, 4, "v2-alpha-tpuv5-lite", id="pod-v5litepod-16"),
]
LOCATION = ["--zone=us-central2-b", "--project=my-proj"]
TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]


def flags(accelerator: str, *, bucket: bool = True) -> list[str]:
  result = ["--name", "my-tpu", "--zone", "us-central2-b", "--project", "my-proj",
            "--accelerator-type", accelerator]
  return result + (["--bucket", "gs://my-bucket/pt"] if bucket else [])


def with_dry_run(argv: list[str]) -> list[str]:
  """Adds --dry-run before a lone '--' (what follows it belongs to the job)."""
  split = argv.index("--") if "--" in argv else len(argv)
  return [*argv[:split], "--dry-run", *argv[split:]]


def dry_run(argv: list[str], **kwargs) -> tuple[list[str], list[list[str]]]:
  code, out, err, executor = run_cli(with_dry_run(argv), **kwargs)
  assert code == 0, err
  assert executor.calls == [], "a dry run executed a command"
  return parse_printed_plan(out)


@pytest.fixture
def gin_tree(tmp_path):
  """An experiment file that includes a model file, plus a partitioning file, under tmp_path."""
  (tmp_path / "gin/models").mkdir(parents=True)
  (tmp_path / "gin/partitioning").mkdir(parents=True)
  (tmp_path / "exp").mkdir()
  (tmp_path / "gin/models/t5_1_1_base.gin").write_text("NUM_LAYERS = 12\n")
  (tmp_path / "gin/partitioning/model_parallel_xl.gin").write_text("MODEL_AXIS = 4\n")
  (tmp_path / "exp/prompt.gin").write_text("include 'gin/models/t5_1_1_base.gin'\nSTEPS = 3\n")
  return tmp_path


def launcher_of(prepare: str) -> str:
  start = prepare.index('<<"TPU_SETUP_LAUNCHER_END"\n') + len('<<"TPU_SETUP_LAUNCHER_END"\n')
  return prepare[start:prepare.index("\nTPU_SETUP_LAUNCHER_END", start)]


def job_argv(launcher: str) -> list[str]:
  """The python command line in a launcher script, as argv."""
  start = launcher.index("python3 -m ")
  text = launcher[start:launcher.index('>"$LOG" 2>&1 &', start)]
  return shlex.split(text.replace("\\\n", " "))


# ----------------------------------------------------------------------------------------- create

@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_create_prints_one_exact_gcloud_command(accelerator, hosts, devices, runtime):
  purposes, commands = dry_run(["create", *flags(accelerator)])
  assert commands == [[*TPU_VM, "create", "my-tpu", *LOCATION, f"--accelerator-type={accelerator}",
                       f"--version={runtime}"]]
  assert f"({hosts} host" in purposes[0]


def test_create_spot_preemptible_queued_and_runtime_override():
  _, [spot] = dry_run(["create", *flags("v4-8"), "--spot", "--runtime-version", "custom-rt"])
  assert spot[-2:] == ["--version=custom-rt", "--spot"]
  _, [preemptible] = dry_run(["create", *flags("v3-8"), "--preemptible"])
  assert preemptible[-1] == "--preemptible"
  _, [queued] = dry_run(["create", *flags("v4-32"), "--queued", "--spot"])
  assert queued == ["gcloud", "compute", "tpus", "queued-resources", "create", "my-tpu-qr",
                    "--node-id=my-tpu", *LOCATION, "--accelerator-type=v4-32",
                    "--runtime-version=tpu-ubuntu2204-base", "--spot"]


# -------------------------------------------------------------------------------------- provision

@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_provision_installs_the_same_commit_on_all_workers_and_checks_chips(
    accelerator, hosts, devices, runtime):
  purposes, commands = dry_run(["provision", *flags(accelerator), "--commit", COMMIT])
  install, copy_check, check = commands
  assert all("--worker=all" in argv for argv in commands)
  assert install[:6] == [*TPU_VM, "ssh", "my-tpu"] and copy_check[4] == "scp"
  pip_lines = [shlex.split(line) for line in ssh_script(install).splitlines()
               if "pip install" in line]
  assert pip_lines[-1] == ["python3", "-m", "pip", "install",
                           f"prompt_tuning[tpu] @ git+{REPO}@{COMMIT}"]
  assert copy_check[5].endswith("tpu_setup/worker_check.py")
  assert copy_check[6] == "my-tpu:tpu_setup_worker_check.py"
  check_argv = shlex.split(ssh_script(check).splitlines()[-1])
  assert check_argv == ["python3", "tpu_setup_worker_check.py", "--worker", "$WORKER_ID",
                        "--commit", COMMIT, "--devices", str(devices),
                        "--record", ".prompt_tuning_commit"]
  assert f"all {hosts} worker(s)" in purposes[0]


def test_provision_defaults_to_local_head_and_warns_about_local_changes():
  code, out, err, _ = run_cli(["provision", *flags("v4-32"), "--dry-run"],
                              git=FakeGit(head=OTHER_COMMIT, dirty=True))
  assert code == 0
  hashes = set(re.findall(r"\b[0-9a-f]{40}\b", out))
  assert hashes == {OTHER_COMMIT}, "every command must pin the local HEAD"
  assert err.startswith("warning: the local checkout has uncommitted changes")


def test_provision_repo_url_from_flag_and_scp_style_origin():
  _, commands = dry_run(["provision", *flags("v3-8"), "--commit", COMMIT, "--repo-url",
                         "https://example.org/fork.git"])
  assert f"git+https://example.org/fork.git@{COMMIT}" in ssh_script(commands[0])
  _, commands = dry_run(["provision", *flags("v3-8"), "--commit", COMMIT],
                        git=FakeGit(origin="git@github.com:me/prompt_tuning.git"))
  assert f"git+ssh://git@github.com/me/prompt_tuning.git@{COMMIT}" in ssh_script(commands[0])


# -------------------------------------------------------------------------------------------- run

@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_run_copies_gin_files_and_starts_the_same_job_on_all_workers(
    gin_tree, accelerator, hosts, devices, runtime):
  purposes, commands = dry_run([
      "run", *flags(accelerator), "--run-name", "r1", "--gin-file", "exp/prompt.gin",
      "--gin_file", "gin/partitioning/model_parallel_xl.gin", "--gin", "train.num_steps=100",
      "--gin", "MODEL_DIR='gs://my-bucket/pt/model'", "--env", "XLA_FLAGS=--xla_dump_to=/tmp/x",
      "--", "--alsologtostderr"])
  prepare, *copies, start = commands
  assert all(argv[:4] == TPU_VM and "--worker=all" in argv for argv in commands)
  assert len(purposes) == len(commands) == 5
  # The same job line on every worker: gin files relative to the run folder, bindings as given.
  launcher = launcher_of(ssh_script(prepare))
  assert job_argv(launcher) == [
      "python3", "-m", "prompt_tuning.train", "--gin_search_paths=$RUN_DIR",
      "--gin_file=exp/prompt.gin", "--gin_file=gin/partitioning/model_parallel_xl.gin",
      "--gin.train.num_steps=100", "--gin.MODEL_DIR='gs://my-bucket/pt/model'",
      "--alsologtostderr"]
  assert "export XLA_FLAGS=--xla_dump_to=/tmp/x\n" in launcher
  assert "export JAX_PLATFORMS=tpu\n" in launcher
  assert 'LOG_URL=gs://my-bucket/pt/prompt_tuning_runs/r1/"worker-$WORKER_ID.log"' in launcher
  # Workers must hold the pinned commit before anything is copied or started.
  assert f'case "$INSTALLED" in {COMMIT}*)' in ssh_script(prepare)
  # Each gin file (and the file it includes) goes to the same relative place on every worker.
  copied = {argv[-4]: argv[5:-4] for argv in copies}
  assert copied == {
      "my-tpu:prompt_tuning_runs/r1/exp/": ["exp/prompt.gin"],
      "my-tpu:prompt_tuning_runs/r1/gin/partitioning/": ["gin/partitioning/model_parallel_xl.gin"],
      "my-tpu:prompt_tuning_runs/r1/gin/models/": ["gin/models/t5_1_1_base.gin"],
  }
  assert ssh_script(start) == ("setsid nohup bash prompt_tuning_runs/r1/launch.sh "
                               ">prompt_tuning_runs/r1/launcher.out 2>&1 </dev/null &")


def test_run_module_detach_modes_and_local_logs(gin_tree):
  base = ["run", *flags("v4-32", bucket=False), "--run-name", "r2", "--gin-file", "exp/prompt.gin",
          "--log-to", "local"]
  _, commands = dry_run([*base, "--detach", "tmux", "--module", "eval"])
  assert ssh_script(commands[-1]) == (
      "tmux new-session -d -s pt-r2 'bash prompt_tuning_runs/r2/launch.sh follow'")
  launcher = launcher_of(ssh_script(commands[0]))
  assert job_argv(launcher)[:3] == ["python3", "-m", "prompt_tuning.eval"]
  assert "gcloud storage" not in launcher
  _, commands = dry_run([*base, "--detach", "none", "--gin-search-path", "/opt/gin"])
  assert ssh_script(commands[-1]) == "bash prompt_tuning_runs/r2/launch.sh follow"
  assert job_argv(launcher_of(ssh_script(commands[0])))[3] == "--gin_search_paths=$RUN_DIR,/opt/gin"


def test_run_default_name_comes_from_the_first_gin_file(gin_tree):
  purposes, _ = dry_run(["run", *flags("v3-8"), "--gin-file", "exp/prompt.gin"])
  assert re.search(r"prompt_tuning_runs/prompt-\d{8}-\d{6}/launch\.sh", purposes[0])


# ------------------------------------------------------------------- status, logs, stop, delete

@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_status_describes_the_tpu_and_asks_every_worker(accelerator, hosts, devices, runtime):
  _, (describe, workers) = dry_run(["status", *flags(accelerator)])
  assert describe == [*TPU_VM, "describe", "my-tpu", *LOCATION]
  assert workers[:-2] == [*TPU_VM, "ssh", "my-tpu", *LOCATION, "--worker=all"]
  assert "prompt_tuning_runs/latest" in ssh_script(workers)
  _, (queued, *_rest) = dry_run(["status", *flags(accelerator), "--queued"])
  assert queued[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "my-tpu-qr"]


@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_logs_fetches_one_log_per_worker(accelerator, hosts, devices, runtime):
  _, (mkdir, *fetches) = dry_run(["logs", *flags(accelerator), "--run-name", "r1"])
  assert mkdir == ["mkdir", "-p", "tpu_logs/my-tpu/r1"]
  assert fetches == [
      [*TPU_VM, "scp", f"my-tpu:prompt_tuning_runs/r1/worker-{i}.log",
       f"tpu_logs/my-tpu/r1/worker-{i}.log", *LOCATION, f"--worker={i}"] for i in range(hosts)]


def test_logs_from_bucket_copies_all_worker_logs_of_the_run():
  _, commands = dry_run(["logs", *flags("v4-32"), "--run-name", "r1", "--from-bucket",
                         "--log-dir", "out"])
  assert commands == [["mkdir", "-p", "out/my-tpu/r1"],
                      ["gcloud", "storage", "cp",
                       "gs://my-bucket/pt/prompt_tuning_runs/r1/worker-*.log", "out/my-tpu/r1/"]]


@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_stop_kills_accelerator_holders_on_every_worker(accelerator, hosts, devices, runtime):
  _, [stop] = dry_run(["stop", *flags(accelerator)])
  assert stop[:-2] == [*TPU_VM, "ssh", "my-tpu", *LOCATION, "--worker=all"]
  script = ssh_script(stop)
  assert "HOLDERS=$(sudo lsof -t -w /dev/accel* /dev/vfio/[0-9]* 2>/dev/null | sort -u)" in script
  assert 'echo "$HOLDERS" | xargs -r sudo kill -9' in script
  assert "sudo rm -f /tmp/libtpu_lockfile" in script


@pytest.mark.parametrize("accelerator, hosts, devices, runtime", SLICES)
def test_delete_vm_or_queued_resource(accelerator, hosts, devices, runtime):
  _, commands = dry_run(["delete", *flags(accelerator)])
  assert commands == [[*TPU_VM, "delete", "my-tpu", *LOCATION, "--quiet"]]
  _, commands = dry_run(["delete", *flags(accelerator), "--queued"])
  assert commands == [["gcloud", "compute", "tpus", "queued-resources", "delete", "my-tpu-qr",
                       *LOCATION, "--force", "--quiet"]]


# --------------------------------------------------------- printing, executing, failing, config

@pytest.mark.parametrize("argv", [
    ["create", "--queued"], ["provision"], ["status"], ["logs"], ["stop"], ["delete"],
    ["run", "--run-name", "r1", "--gin-file", "exp/prompt.gin", "--gin", "A='x y'", "--", "--q=1"],
], ids=lambda argv: argv[0])
def test_printed_commands_are_exactly_the_executed_argv(gin_tree, argv):
  full = [argv[0], *flags("v4-32"), *argv[1:]]
  code, out, _, executor = run_cli(full)
  assert code == 0
  _, printed = parse_printed_plan(out)
  assert printed == executor.calls and printed, "shlex round trip of the printed plan"
  code, dry_out, _, dry_executor = run_cli(with_dry_run(full))
  assert (code, dry_out, dry_executor.calls) == (0, out, [])


BAD_CONFIGURATIONS = [
    (["create", *flags("v3-7")], "unknown accelerator type 'v3-7'"),
    (["create", *flags("v5e-16")], "gcloud calls it 'v5litepod-16'"),
    (["provision", *flags("v4-12")], "unknown accelerator type 'v4-12'"),
    (["create", "--name", "my-tpu", "--accelerator-type", "v3-8"], "no zone configured"),
    (["stop", "--zone", "us-central2-b"], "no TPU name configured"),
    (["run", *flags("v3-8", bucket=False), "--gin-file", "exp/prompt.gin"],
     "no bucket configured"),
    (["run", *flags("v3-8"), "--gin-file", "exp/missing.gin"], "gin file 'exp/missing.gin'"),
    (["run", *flags("v3-8"), "--gin-file", "exp/broken.gin"],
     "gin file 'gin/nowhere.gin' (included by 'exp/broken.gin') not found"),
    (["run", *flags("v3-8"), "--gin-file", "../outside.gin"], "is outside"),
    (["run", *flags("v3-8"), "--gin-file", "exp/prompt.gin", "--gin", "no_value"],
     "gin binding 'no_value' must look like NAME=VALUE"),
    (["run", *flags("v3-8"), "--gin-file", "exp/prompt.gin", "--run-name", "latest"], "reserved"),
    (["create", *flags("v3-8"), "--spot", "--preemptible"], "either --spot or --preemptible"),
    (["create", *flags("v4-8"), "--queued", "--preemptible"], "use --spot instead"),
    (["logs", *flags("v3-8"), "--from-bucket"], "--from-bucket needs the run's name"),
    (["provision", *flags("v3-8"), "--commit", "main"], "commit 'main' is not a commit hash"),
    (["create", *flags("v3-8"), "--zone", "uscentral"], "zone 'uscentral' does not look like"),
    (["run", *flags("v3-8"), "--gin-file", "exp/prompt.gin", "--bucket", "my-bucket"],
     "expected gs://BUCKET_NAME"),
    (["stop", *flags("v3-8"), "--config", "absent.toml"], "config file 'absent.toml' not found"),
    (["stop", *flags("v3-8"), "--", "--x"], "only for run"),
]


@pytest.mark.parametrize("argv, message", BAD_CONFIGURATIONS,
                         ids=[message for _, message in BAD_CONFIGURATIONS])
def test_bad_configuration_stops_with_one_sentence_before_any_command(gin_tree, argv, message):
  (gin_tree / "exp/broken.gin").write_text("include 'gin/nowhere.gin'\n")
  code, out, err, executor = run_cli(argv)  # not a dry run: nothing may execute
  assert (code, out, executor.calls) == (2, "", [])
  assert err.startswith("error: ") and message in err
  assert err.count("\n") == 1 and err.rstrip().endswith("."), f"not one sentence: {err!r}"


def test_a_failing_step_stops_the_plan():
  executor = RecordingExecutor(returncodes=[255])
  code, _, err, _ = run_cli(["provision", *flags("v4-32"), "--commit", COMMIT],
                            executor=executor)
  assert code == 1 and len(executor.calls) == 1
  assert "failed with exit status 255" in err and "later steps were not run" in err


def test_one_missing_worker_log_does_not_stop_the_others():
  executor = RecordingExecutor(returncodes=[0, 0, 1, 0, 0])
  code, _, err, _ = run_cli(["logs", *flags("v4-32")], executor=executor)
  assert code == 1 and len(executor.calls) == 5
  assert "1 step(s) failed: fetch worker 1's log" in err


def test_config_file_supplies_settings_and_flags_override_it(tmp_path):
  (tmp_path / "tpu_setup.toml").write_text(
      'project = "cfg-proj"\nzone = "europe-west4-a"\nname = "cfg-tpu"\n'
      'accelerator_type = "v3-32"\nspot = true\n')
  _, [create] = dry_run(["create"])
  assert create == [*TPU_VM, "create", "cfg-tpu", "--zone=europe-west4-a", "--project=cfg-proj",
                    "--accelerator-type=v3-32", "--version=tpu-ubuntu2204-base", "--spot"]
  _, [create] = dry_run(["create", "--zone", "us-east1-d", "--no-spot"])
  assert create[6:8] == ["--zone=us-east1-d", "--project=cfg-proj"] and "--spot" not in create
  (tmp_path / "other.json").write_text('{"zone": "us-central1-a", "name": "json-tpu"}')
  _, [delete] = dry_run(["delete", "--config", "other.json"])
  assert delete == [*TPU_VM, "delete", "json-tpu", "--zone=us-central1-a", "--quiet"]


def test_missing_gcloud_is_reported_in_one_sentence(monkeypatch):
  monkeypatch.setenv("PATH", "/nonexistent")
  code, _, err = cli_main_with_real_executor(["delete", *flags("v3-8")])
  assert code == 2
  assert err == "error: 'gcloud' was not found on PATH (gcloud comes with the Google Cloud CLI).\n"


def cli_main_with_real_executor(argv: list[str]) -> tuple[int, str, str]:
  out, err = io.StringIO(), io.StringIO()
  code = cli.main(argv, git=FakeGit(), out=out, err=err)
  return code, out.getvalue(), err.getvalue()


def test_python_dash_m_entry_point_prints_the_plan(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  result = subprocess.run(
      [sys.executable, "-m", "tpu_setup", "delete", "--name", "my-tpu", "--zone", "us-central2-b",
       "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
  assert result.returncode == 0, result.stderr
  assert parse_printed_plan(result.stdout)[1] == [
      [*TPU_VM, "delete", "my-tpu", "--zone=us-central2-b", "--quiet"]]


@pytest.mark.parametrize("dry", [True, False])
@pytest.mark.parametrize("origin", ["/home/me/prompt_tuning", "../prompt_tuning",
                                    "file:///home/me/prompt_tuning"])
def test_provision_refuses_a_local_path_origin(origin, dry):
  executor = RecordingExecutor()
  code, out, err, _ = run_cli(["provision", *flags("v3-8"), "--commit", COMMIT,
                               *(["--dry-run"] if dry else [])],
                              executor=executor, git=FakeGit(origin=origin))
  assert code == 2
  assert err == (f"error: repository {origin!r} (from the checkout's `origin` remote) is not a "
                 "network URL the TPU workers can install from; push the commit to a hosted "
                 "repository and pass its URL with --repo-url (or set repo_url in the config "
                 "file).\n")
  assert out == "" and executor.calls == []


def test_provision_refuses_a_local_path_repo_url_flag():
  code, _, err, _ = run_cli(["provision", *flags("v3-8"), "--commit", COMMIT, "--dry-run",
                             "--repo-url", "/srv/git/prompt_tuning.git"])
  assert code == 2
  assert err.startswith("error: repository '/srv/git/prompt_tuning.git' (from --repo-url / "
                        "repo_url) is not a network URL")
