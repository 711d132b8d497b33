"""Shell text that runs on the TPU workers (bash, the login shell of TPU VM images).

Every value that comes from the user is quoted (`shlex.quote` or `quote_arg`); the tests run
`shellcheck` on each script and execute them locally with stand-ins for python3, curl, sudo, lsof
and gcloud.
"""
from __future__ import annotations

import dataclasses
import pathlib
import shlex

from tpu_setup import worker_check

RUNS_DIR = "prompt_tuning_runs"        # under the worker's home folder
LATEST_LINK = f"{RUNS_DIR}/latest"     # points at the newest run folder
COMMIT_FILE = ".prompt_tuning_commit"  # written by provision once a worker passed its check
WORKER_CHECK_FILE = "tpu_setup_worker_check.py"  # provision's copy of worker_check.py
LIBTPU_LOCKFILE = "/tmp/libtpu_lockfile"
# v2-v4 expose /dev/accel*, v5e/v5p/v6e expose /dev/vfio/<n>; a stuck job holds one of them.
ACCELERATOR_DEVICES = "/dev/accel* /dev/vfio/[0-9]*"
_HOLDERS = f"sudo lsof -t -w {ACCELERATOR_DEVICES} 2>/dev/null | sort -u"
_NEEDS_SINGLE_QUOTES = frozenset('$`"\\!\n')  # characters double quotes would not protect
_HEREDOC_END = "TPU_SETUP_LAUNCHER_END"  # the launcher travels in a quoted here-document
_WORKER_NUMBER_URL = ("http://metadata.google.internal/computeMetadata/v1/instance/attributes/"
                      "agent-worker-number")


def quote_arg(text: str) -> str:
  """Quotes one word for bash, preferring double quotes so the printed commands stay readable
  (gin string values such as --gin.MODEL_DIR='gs://b/m' would otherwise nest single quotes)."""
  quoted = shlex.quote(text)
  if quoted == text or not _NEEDS_SINGLE_QUOTES.isdisjoint(text):
    return quoted
  return f'"{text}"'


def worker_id_line(*, required: bool) -> str:
  """Sets WORKER_ID from the metadata server (0..hosts-1); per-worker file names depend on it."""
  fetch = f'WORKER_ID=$(curl -sf -H "Metadata-Flavor: Google" {_WORKER_NUMBER_URL})'
  if required:
    return (f'{fetch} || {{ echo "could not read the worker number from the metadata server" >&2;'
            ' exit 1; }')
  return f"{fetch} || WORKER_ID=$(hostname)"


def run_dir(run_name: str) -> str:
  return f"{RUNS_DIR}/{run_name}"


def install_script(*, python: str, package_spec: str) -> str:
  py = shlex.quote(python)
  return "\n".join([
      "set -e",
      f"{py} -m pip install --upgrade pip",
      f"{py} -m pip install {quote_arg(package_spec)}",
  ])


def worker_check_source() -> str:
  """Local path of the check script that provision copies to every worker."""
  return str(pathlib.Path(worker_check.__file__).resolve())


def check_script(*, python: str, commit: str, devices: int) -> str:
  """Runs the copied worker_check; on success it records the installed commit in COMMIT_FILE."""
  check = " ".join([shlex.quote(python), WORKER_CHECK_FILE, "--worker", '"$WORKER_ID"',
                    "--commit", shlex.quote(commit), "--devices", str(devices),
                    "--record", COMMIT_FILE])
  return "\n".join([worker_id_line(required=True), check])


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
  """What one job is: the same on every worker."""
  run_name: str
  python: str
  module: str                          # e.g. "prompt_tuning.train"
  gin_files: list[str]                 # relative to the run folder
  gin_bindings: list[str]              # NAME=VALUE, passed as --gin.NAME=VALUE
  gin_search_paths: list[str]          # extra worker paths searched after the run folder
  extra_args: list[str]
  env: dict[str, str]
  log_url_prefix: str | None = None    # gs://.../ to copy worker-N.log to while the job runs
  sync_seconds: int = 60


def launcher_script(spec: LaunchSpec) -> str:
  """The file every worker runs to start its share of the job (see its header comment)."""
  search_paths = '"--gin_search_paths=$RUN_DIR"'
  if spec.gin_search_paths:
    search_paths += quote_arg("," + ",".join(spec.gin_search_paths))
  job_args = [search_paths, *(quote_arg(f"--gin_file={path}") for path in spec.gin_files),
              *(quote_arg(f"--gin.{binding}") for binding in spec.gin_bindings),
              *(quote_arg(arg) for arg in spec.extra_args)]
  job = " \\\n  ".join([f"{shlex.quote(spec.python)} -m {shlex.quote(spec.module)}", *job_args])
  lines = [
      "#!/usr/bin/env bash",
      f"# Written by: python -m tpu_setup run (run {spec.run_name}). Every worker runs this file:",
      "# it starts the share of the job of this worker, logs to worker-<n>.log in the run folder",
      "# and exits with the job status (also written to worker-<n>.exit). Argument follow prints",
      "# the log while the job runs.",
      "set -u",
      f'RUN_DIR="$HOME/{run_dir(spec.run_name)}"',
      'cd "$RUN_DIR" || exit 1',
      worker_id_line(required=True),
      'LOG="$RUN_DIR/worker-$WORKER_ID.log"',
      'rm -f "$RUN_DIR/worker-$WORKER_ID.exit"',
      # Created before the job starts so that `follow` can open it whatever the scheduling.
      ': >"$LOG"',
      *(f"export {key}={quote_arg(value)}" for key, value in spec.env.items()),
      f'{job} \\\n  >"$LOG" 2>&1 &',
      "JOB_PID=$!",
      'echo "$JOB_PID" >"$RUN_DIR/worker-$WORKER_ID.pid"',
      'if [ "${1:-}" = follow ]; then',
      '  tail -n +1 -f --pid="$JOB_PID" "$LOG" &',
      "fi",
  ]
  if spec.log_url_prefix:
    lines += [
        f'LOG_URL={shlex.quote(spec.log_url_prefix)}"worker-$WORKER_ID.log"',
        "upload_log() {",
        ('  gcloud storage cp "$LOG" "$LOG_URL" >/dev/null 2>&1 ||'
         ' echo "could not copy $LOG to $LOG_URL" >&2'),
        "}",
        "ELAPSED=0",
        'while kill -0 "$JOB_PID" 2>/dev/null; do',
        "  sleep 1",
        "  ELAPSED=$((ELAPSED + 1))",
        f"  if [ $((ELAPSED % {spec.sync_seconds})) -eq 0 ]; then upload_log; fi",
        "done",
    ]
  lines += ['wait "$JOB_PID"', "STATUS=$?", 'echo "$STATUS" >"$RUN_DIR/worker-$WORKER_ID.exit"']
  if spec.log_url_prefix:
    lines.append("upload_log")
  lines += ["wait", 'exit "$STATUS"']
  return "\n".join(lines) + "\n"


def prepare_script(*, run_name: str, directories: list[str], launcher: str, commit: str) -> str:
  """Refuses to go on when the TPU is busy or the worker holds another commit, then writes the
  run folder and its launcher. Runs before any file is copied or any job is started."""
  if _HEREDOC_END in launcher.splitlines():
    raise ValueError(f"the job arguments may not contain a line {_HEREDOC_END!r}.")
  folder = run_dir(run_name)
  folders = [folder, *(f"{folder}/{d}" for d in directories if d)]
  return "\n".join([
      "set -e",
      worker_id_line(required=True),
      f'if {_HOLDERS} | grep -q .; then',
      ('  echo "worker $WORKER_ID: the TPU is held by another process; free it with:'
       ' python -m tpu_setup stop" >&2'),
      "  exit 1",
      "fi",
      f'INSTALLED=$(cat {COMMIT_FILE} 2>/dev/null || echo none)',
      f'case "$INSTALLED" in {shlex.quote(commit)}*) ;; *)',
      (f'  echo "worker $WORKER_ID has prompt_tuning commit $INSTALLED, not {commit}; install it'
       ' with: python -m tpu_setup provision" >&2'),
      "  exit 1 ;;",
      "esac",
      f"mkdir -p {' '.join(shlex.quote(f) for f in folders)}",
      f'cat >{shlex.quote(folder + "/launch.sh")} <<"{_HEREDOC_END}"',
      launcher + _HEREDOC_END,
      f"ln -sfn {shlex.quote(run_name)} {LATEST_LINK}",
  ])


def start_command(*, run_name: str, detach: str) -> str:
  """Starts the launcher: in the foreground, under nohup, or in a detached tmux session."""
  launcher = shlex.quote(f"{run_dir(run_name)}/launch.sh")
  if detach == "none":
    return f"bash {launcher} follow"
  if detach == "nohup":
    out = shlex.quote(f"{run_dir(run_name)}/launcher.out")
    return f"setsid nohup bash {launcher} >{out} 2>&1 </dev/null &"
  if detach == "tmux":
    session = "pt-" + run_name.replace(".", "_")
    return f"tmux new-session -d -s {shlex.quote(session)} {shlex.quote(f'bash {launcher} follow')}"
  raise ValueError(f"unknown detach mode {detach!r}: use none, nohup or tmux.")


def stop_script(lockfile: str = LIBTPU_LOCKFILE) -> str:
  """Kills every process holding the accelerator and removes libtpu's stale lock file."""
  return "\n".join([
      worker_id_line(required=False),
      f"HOLDERS=$({_HOLDERS})",
      'if [ -n "$HOLDERS" ]; then',
      '  echo "worker $WORKER_ID: killing pids $(echo "$HOLDERS" | xargs)"',
      '  echo "$HOLDERS" | xargs -r sudo kill -9',
      "  sleep 1",
      "fi",
      f"sudo rm -f {shlex.quote(lockfile)}",
      f'if {_HOLDERS} | grep -q .; then',
      '  echo "worker $WORKER_ID: the TPU is still held" >&2',
      "  exit 1",
      "fi",
      'echo "worker $WORKER_ID: the TPU is free"',
  ])


def status_script() -> str:
  """One line per fact and worker: installed commit, who holds the TPU, state of the latest run."""
  return "\n".join([
      worker_id_line(required=False),
      (f'echo "worker $WORKER_ID: prompt_tuning commit $(cat {COMMIT_FILE} 2>/dev/null'
       ' || echo "not provisioned")"'),
      f"HOLDERS=$({_HOLDERS} | xargs)",
      'echo "worker $WORKER_ID: TPU held by: ${HOLDERS:-nothing}"',
      f'RUN=$(readlink {LATEST_LINK} 2>/dev/null || echo none)',
      f'EXIT_FILE="{LATEST_LINK}/worker-$WORKER_ID.exit"',
      f'PID_FILE="{LATEST_LINK}/worker-$WORKER_ID.pid"',
      'if [ -f "$EXIT_FILE" ]; then STATE="finished with exit status $(cat "$EXIT_FILE")"',
      'elif [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then STATE=running',
      'else STATE="not running"; fi',
      'echo "worker $WORKER_ID: latest run $RUN: $STATE"',
  ])
