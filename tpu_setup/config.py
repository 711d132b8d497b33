"""Settings shared by all sub-commands: read from a small config file, overridden by flags.

The config file is TOML (read with the standard library's `tomllib`, Python 3.11+) or JSON, with
flat keys named like the fields of `Settings` plus an optional `env` table. Flags win over the file;
nothing is ever configured by editing the scripts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from typing import Any

DEFAULT_CONFIG_FILE = "tpu_setup.toml"
DEFAULT_ENV = {
    # Fail at start-up if the TPU is not visible instead of silently training on the CPU.
    "JAX_PLATFORMS": "tpu",
    # Flush prints at once so per-worker logs (and their bucket copies) are current.
    "PYTHONUNBUFFERED": "1",
}

_ZONE = re.compile(r"[a-z]+-[a-z]+[0-9]+-[a-z]")
_TPU_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
_BUCKET = re.compile(r"gs://[a-z0-9][-a-z0-9._]{1,221}[a-z0-9](/[-\w./]*)?")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Everything that identifies the TPU and how to reach it. None means "not configured"."""
  project: str | None = None
  zone: str | None = None
  name: str | None = None                 # the TPU VM (node) name
  accelerator_type: str | None = None     # e.g. "v3-8", "v4-32", "v5litepod-16"
  runtime_version: str | None = None      # default: the generation's JAX image, see accelerators
  bucket: str | None = None               # gs://... for per-worker logs
  repo_url: str | None = None             # default: the local checkout's `origin` remote
  spot: bool = False
  preemptible: bool = False
  queued: bool = False                    # create/delete through a queued resource
  python: str = "python3"                 # interpreter on the workers
  log_dir: str = "tpu_logs"               # local folder that `logs` fills
  env: Mapping[str, str] = dataclasses.field(default_factory=dict)

  @property
  def queued_resource_id(self) -> str:
    return f"{self.require_name()}-qr"

  def require_name(self) -> str:
    if not self.name:
      raise ValueError("no TPU name configured: pass --name or set name in the config file.")
    if not _TPU_NAME.fullmatch(self.name):
      raise ValueError(f"TPU name {self.name!r} is invalid: use lowercase letters, digits and "
                       "hyphens, starting with a letter (at most 63 characters).")
    return self.name

  def require_zone(self) -> str:
    if not self.zone:
      raise ValueError("no zone configured: pass --zone (e.g. us-central2-b) or set zone in the "
                       "config file.")
    if not _ZONE.fullmatch(self.zone):
      raise ValueError(f"zone {self.zone!r} does not look like a Cloud zone such as "
                       "europe-west4-a.")
    return self.zone

  def require_bucket(self) -> str:
    if not self.bucket:
      raise ValueError("no bucket configured: pass --bucket gs://NAME or set bucket in the config "
                       "file (or keep logs on the workers with --log-to=local).")
    bucket = self.bucket.rstrip("/")
    if not _BUCKET.fullmatch(bucket):
      raise ValueError(f"bucket {self.bucket!r} is invalid: expected gs://BUCKET_NAME[/path].")
    return bucket

  def require_accelerator_type(self) -> str:
    if not self.accelerator_type:
      raise ValueError("no accelerator type configured: pass --accelerator-type (e.g. v3-8, v4-32)"
                       " or set accelerator_type in the config file.")
    return self.accelerator_type

  def worker_env(self) -> dict[str, str]:
    """The environment every worker's job starts with: project defaults, then `env`."""
    merged = {**DEFAULT_ENV, **self.env}
    for key in merged:
      if not _ENV_KEY.fullmatch(key):
        raise ValueError(f"environment variable name {key!r} is invalid.")
    return merged


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_BOOL_FIELDS = {"spot", "preemptible", "queued"}


def load_config_file(path: str | None) -> dict[str, Any]:
  """Reads a config file; with no path, reads ./tpu_setup.toml when it exists."""
  if path is None:
    if not os.path.exists(DEFAULT_CONFIG_FILE):
      return {}
    path = DEFAULT_CONFIG_FILE
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found.")
  with open(path, "rb") as f:
    raw = f.read()
  try:
    if path.endswith(".json"):
      values = json.loads(raw)
    else:
      values = _parse_toml(raw, path)
  except (ValueError, UnicodeDecodeError) as e:  # tomllib/json errors subclass ValueError
    raise ValueError(f"config file {path!r} is malformed: {e}.") from None
  if not isinstance(values, dict):  # a bad file is bad input, hence ValueError, not TypeError
    raise ValueError(  # noqa: TRY004
        f"config file {path!r} must hold a table of keys, not {type(values).__name__}.")
  _check_values(values, path)
  return values


def _parse_toml(raw: bytes, path: str) -> Any:
  try:
    import tomllib
  except ModuleNotFoundError:  # Python 3.10
    raise ValueError(f"reading {path!r} needs Python 3.11 (tomllib); use a .json config file "
                     "instead") from None
  return tomllib.loads(raw.decode("utf-8"))


def _check_values(values: Mapping[str, Any], path: str) -> None:
  for key, value in values.items():
    if key not in _FIELDS:
      raise ValueError(f"unknown key {key!r} in config file {path!r}; known keys: "
                       f"{', '.join(sorted(_FIELDS))}.")
    if key == "env":
      if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"'env' in config file {path!r} must be a table of string values.")
    elif key in _BOOL_FIELDS:
      if not isinstance(value, bool):
        raise ValueError(f"{key!r} in config file {path!r} must be true or false.")
    elif not isinstance(value, str):
      raise ValueError(f"{key!r} in config file {path!r} must be a string.")


def make_settings(file_values: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
  """Builds Settings from the file's values and the flags; a flag left at None keeps the file's."""
  values = dict(file_values)
  env = dict(values.pop("env", {}))
  env.update(overrides.get("env") or {})
  for key, value in overrides.items():
    if key != "env" and value is not None:
      values[key] = value
  return Settings(**values, env=env)
