"""Builders for the `gcloud` command lines tpu_setup runs: each returns an argv list, runs nothing.

Flags are written as `--flag=value` so the printed lines read unambiguously and round-trip through
`shlex`.
"""
from __future__ import annotations

from tpu_setup.accelerators import Accelerator
from tpu_setup.config import Settings

_TPU_VM = ("gcloud", "compute", "tpus", "tpu-vm")
_QUEUED = ("gcloud", "compute", "tpus", "queued-resources")


def _location(settings: Settings) -> list[str]:
  flags = [f"--zone={settings.require_zone()}"]
  if settings.project:
    flags.append(f"--project={settings.project}")
  return flags


def create_vm(settings: Settings, accelerator: Accelerator) -> list[str]:
  argv = [*_TPU_VM, "create", settings.require_name(), *_location(settings),
          f"--accelerator-type={accelerator.name}",
          f"--version={settings.runtime_version or accelerator.runtime_version}"]
  if settings.spot:
    argv.append("--spot")
  if settings.preemptible:
    argv.append("--preemptible")
  return argv


def create_queued(settings: Settings, accelerator: Accelerator) -> list[str]:
  argv = [*_QUEUED, "create", settings.queued_resource_id, f"--node-id={settings.require_name()}",
          *_location(settings), f"--accelerator-type={accelerator.name}",
          f"--runtime-version={settings.runtime_version or accelerator.runtime_version}"]
  if settings.spot:
    argv.append("--spot")
  return argv


def describe_vm(settings: Settings) -> list[str]:
  return [*_TPU_VM, "describe", settings.require_name(), *_location(settings)]


def describe_queued(settings: Settings) -> list[str]:
  return [*_QUEUED, "describe", settings.queued_resource_id, *_location(settings)]


def delete_vm(settings: Settings) -> list[str]:
  return [*_TPU_VM, "delete", settings.require_name(), *_location(settings), "--quiet"]


def delete_queued(settings: Settings) -> list[str]:
  # --force also deletes the TPU VM the queued resource created.
  return [*_QUEUED, "delete", settings.queued_resource_id, *_location(settings), "--force",
          "--quiet"]


def ssh(settings: Settings, command: str, worker: str = "all") -> list[str]:
  """Runs a shell command on one worker or, with worker='all', on every worker at once."""
  return [*_TPU_VM, "ssh", settings.require_name(), *_location(settings), f"--worker={worker}",
          "--command", command]


def scp_to_workers(settings: Settings, sources: list[str], destination: str) -> list[str]:
  """Copies local files into `destination` (relative to the home folder) on every worker."""
  return [*_TPU_VM, "scp", *sources, f"{settings.require_name()}:{destination}",
          *_location(settings), "--worker=all"]


def scp_from_worker(settings: Settings, remote_path: str, local_path: str,
                    worker: int) -> list[str]:
  return [*_TPU_VM, "scp", f"{settings.require_name()}:{remote_path}", local_path,
          *_location(settings), f"--worker={worker}"]


def storage_copy(source: str, destination: str) -> list[str]:
  return ["gcloud", "storage", "cp", source, destination]
