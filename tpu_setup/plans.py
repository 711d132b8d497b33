"""One function per sub-command: checks the settings, then returns the commands to run, in order.

Building a plan never runs anything, so every configuration error is raised here, before the first
command, and `--dry-run` prints exactly what a real run would execute.
"""
from __future__ import annotations

import dataclasses
import os
import re

from tpu_setup import gcloud, gin_files, remote
from tpu_setup.accelerators import parse_accelerator
from tpu_setup.config import Settings
from tpu_setup.runner import Step, step

MODULES = {"train": "prompt_tuning.train", "eval": "prompt_tuning.eval",
           "infer": "prompt_tuning.infer"}
DETACH_MODES = ("nohup", "tmux", "none")
LATEST_RUN = "latest"

_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_GIN_BINDING = re.compile(r"[A-Za-z_][\w./]*=.*", re.DOTALL)
_PYTHON = re.compile(r"[\w./+-]+")


def create_plan(settings: Settings) -> list[Step]:
  accelerator = parse_accelerator(settings.require_accelerator_type())
  if settings.spot and settings.preemptible:
    raise ValueError("choose either --spot or --preemptible, not both.")
  shape = f"{accelerator.name} ({accelerator.hosts} host{'s' if accelerator.is_pod else ''})"
  if settings.queued:
    if settings.preemptible:
      raise ValueError("queued resources cannot be preemptible: use --spot instead.")
    return [step(gcloud.create_queued(settings, accelerator),
                 f"queue a request for a {shape} named {settings.name}")]
  return [step(gcloud.create_vm(settings, accelerator), f"create the {shape} TPU VM")]


def provision_plan(settings: Settings, *, commit: str, repo_url: str) -> list[Step]:
  accelerator = parse_accelerator(settings.require_accelerator_type())
  python = _python(settings)
  package = f"prompt_tuning[tpu] @ {pip_vcs_url(repo_url)}@{commit}"
  return [
      step(gcloud.ssh(settings, remote.install_script(python=python, package_spec=package)),
           f"install prompt_tuning[tpu] at commit {commit} on all {accelerator.hosts} worker(s)"),
      step(gcloud.scp_to_workers(settings, [remote.worker_check_source()],
                                 remote.WORKER_CHECK_FILE),
           "copy the worker check script to every worker"),
      step(gcloud.ssh(settings, remote.check_script(python=python, commit=commit,
                                                    devices=accelerator.devices_per_host)),
           f"check that every worker imports it at {commit[:12]} and sees "
           f"{accelerator.devices_per_host} TPU devices"),
  ]


def pip_vcs_url(repo_url: str) -> str:
  """pip wants git+https:// or git+ssh://; turns git@host:path into ssh://git@host/path."""
  if repo_url.startswith("git+"):
    return repo_url
  scp_like = re.fullmatch(r"([\w.-]+@[\w.-]+):(?!//)(.+)", repo_url)
  if scp_like:
    repo_url = f"ssh://{scp_like.group(1)}/{scp_like.group(2)}"
  return f"git+{repo_url}"


@dataclasses.dataclass(frozen=True)
class RunRequest:
  """A job as the user asked for it on the command line."""
  run_name: str
  module: str = "train"
  gin_files: list[str] = dataclasses.field(default_factory=list)
  gin_bindings: list[str] = dataclasses.field(default_factory=list)
  gin_search_paths: list[str] = dataclasses.field(default_factory=list)
  extra_args: list[str] = dataclasses.field(default_factory=list)
  detach: str = "nohup"
  log_to: str = "bucket"   # or "local": logs stay on the workers until `logs` fetches them
  gin_root: str = "."      # local folder gin paths are relative to


def run_plan(settings: Settings, request: RunRequest, *, commit: str) -> list[Step]:
  """Prepare the run folder on every worker, copy the gin files, start the same job everywhere."""
  settings.require_name()
  settings.require_zone()
  _check_request(request)
  run_name = request.run_name
  log_url_prefix = None
  if request.log_to == "bucket":
    log_url_prefix = f"{settings.require_bucket()}/{remote.run_dir(run_name)}/"
  given, to_copy = gin_files.collect_gin_files(request.gin_files, request.gin_root)
  groups = gin_files.group_by_directory(to_copy)
  launcher = remote.launcher_script(remote.LaunchSpec(
      run_name=run_name, python=_python(settings), module=MODULES[request.module],
      gin_files=given, gin_bindings=list(request.gin_bindings),
      gin_search_paths=list(request.gin_search_paths), extra_args=list(request.extra_args),
      env=settings.worker_env(), log_url_prefix=log_url_prefix))
  folder = remote.run_dir(run_name)
  plan = [step(gcloud.ssh(settings, remote.prepare_script(
      run_name=run_name, directories=list(groups), launcher=launcher, commit=commit)),
      f"check every worker is idle and at commit {commit[:12]}, then write {folder}/launch.sh")]
  for directory, files in groups.items():
    sources = [os.path.normpath(os.path.join(request.gin_root, f)) for f in files]
    destination = f"{folder}/{directory}/" if directory else f"{folder}/"
    plan.append(step(gcloud.scp_to_workers(settings, sources, destination),
                     f"copy {len(files)} gin file(s) to {destination} on every worker"))
  plan.append(step(gcloud.ssh(settings, remote.start_command(run_name=run_name,
                                                             detach=request.detach)),
                   f"start {MODULES[request.module]} on every worker (detach: {request.detach})"))
  return plan


def _check_request(request: RunRequest) -> None:
  run_name = check_run_name(request.run_name)
  if run_name == LATEST_RUN:
    raise ValueError(f"run name {LATEST_RUN!r} is reserved for the link to the newest run.")
  if request.module not in MODULES:
    raise ValueError(f"unknown module {request.module!r}: use one of {', '.join(MODULES)}.")
  if request.detach not in DETACH_MODES:
    raise ValueError(f"unknown detach mode {request.detach!r}: use {', '.join(DETACH_MODES)}.")
  if request.log_to not in ("bucket", "local"):
    raise ValueError(f"unknown log destination {request.log_to!r}: use bucket or local.")
  if not request.gin_files:
    raise ValueError("no gin file given: pass at least one --gin-file.")
  for binding in request.gin_bindings:
    if not _GIN_BINDING.fullmatch(binding):
      raise ValueError(f"gin binding {binding!r} must look like NAME=VALUE "
                       "(e.g. train.num_steps=1000).")


def status_plan(settings: Settings) -> list[Step]:
  plan = []
  if settings.queued:
    plan.append(step(gcloud.describe_queued(settings), "show the queued resource's state"))
  plan.append(step(gcloud.describe_vm(settings), "show the TPU VM's state and health",
                   stop_on_failure=not settings.queued))
  plan.append(step(gcloud.ssh(settings, remote.status_script()),
                   "on every worker: installed commit, TPU holders, latest run",
                   stop_on_failure=False))
  return plan


def logs_plan(settings: Settings, *, run_name: str, from_bucket: bool) -> list[Step]:
  """Fetches worker-<n>.log of every worker into <log_dir>/<tpu name>/<run>/."""
  name = settings.require_name()
  run_name = check_run_name(run_name)
  local_dir = os.path.join(settings.log_dir, name, run_name)
  plan = [step(["mkdir", "-p", local_dir], f"make the local folder {local_dir}")]
  if from_bucket:
    if run_name == LATEST_RUN:
      raise ValueError("--from-bucket needs the run's name: pass --run-name (the bucket keeps "
                       "every run).")
    source = f"{settings.require_bucket()}/{remote.run_dir(run_name)}/worker-*.log"
    plan.append(step(gcloud.storage_copy(source, local_dir + "/"),
                     "copy every worker's log from the bucket"))
    return plan
  settings.require_zone()
  accelerator = parse_accelerator(settings.require_accelerator_type())
  for worker in range(accelerator.hosts):
    log = f"worker-{worker}.log"
    plan.append(step(gcloud.scp_from_worker(settings, f"{remote.run_dir(run_name)}/{log}",
                                            os.path.join(local_dir, log), worker),
                     f"fetch worker {worker}'s log", stop_on_failure=False))
  return plan


def stop_plan(settings: Settings) -> list[Step]:
  return [step(gcloud.ssh(settings, remote.stop_script()),
               "on every worker: kill the processes holding the TPU, remove libtpu's lock file")]


def delete_plan(settings: Settings) -> list[Step]:
  if settings.queued:
    return [step(gcloud.delete_queued(settings),
                 f"delete queued resource {settings.queued_resource_id} and its TPU VM")]
  return [step(gcloud.delete_vm(settings), f"delete the TPU VM {settings.require_name()}")]


def check_run_name(run_name: str) -> str:
  if not _RUN_NAME.fullmatch(run_name):
    raise ValueError(f"run name {run_name!r} is invalid: use letters, digits, '.', '_' and '-', "
                     "starting with a letter or digit.")
  return run_name


def _python(settings: Settings) -> str:
  if not _PYTHON.fullmatch(settings.python):
    raise ValueError(f"python {settings.python!r} must be one interpreter name or path, such as "
                     "python3 or /opt/venv/bin/python.")
  return settings.python
