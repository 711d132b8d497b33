"""The prompt library's manifest: entry records, JSON (de)serialisation and its checks.

Parsing checks every field's presence and type and names the manifest, the entry (index and
name) and the field in one sentence, so a hand-edited or truncated manifest is reported
before any prompt is read. The layout is described in `library.py`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ENTRY_NAME = re.compile(r"^[\w.\-]+$")


class LibraryError(ValueError):
  """A prompt library problem, stated in one sentence that names the file or entry."""


@dataclasses.dataclass(frozen=True)
class ModelInfo:
  """The frozen model every prompt of a library was trained for."""
  name: str
  embed_dim: int


@dataclasses.dataclass(frozen=True)
class Entry:
  """One source run: its task, model, training record and its key/value prompt files."""
  name: str
  task: str
  model: str
  prompt_shape: Tuple[int, int]
  seed: int
  steps: int
  key_step: int
  value_step: int
  metric: Optional[str]
  metric_value: Optional[float]
  key_prompt: str
  value_prompt: str

  def to_json(self) -> Dict[str, Any]:
    return {"name": self.name, "task": self.task,
            "model": {"name": self.model, "prompt_shape": list(self.prompt_shape)},
            "seed": self.seed, "steps": self.steps, "key_step": self.key_step,
            "value_step": self.value_step,
            "metric": {"name": self.metric, "value": self.metric_value},
            "key_prompt": self.key_prompt, "value_prompt": self.value_prompt}


def _field(record: Mapping[str, Any], key: str, kind, where: str):
  if not isinstance(record, dict) or key not in record:
    raise LibraryError(f"{where} has no {key!r} field.")
  value = record[key]
  if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
    raise LibraryError(f"{where} field {key!r} must be an integer, got {value!r}.")
  if kind is str and (not isinstance(value, str) or not value):
    raise LibraryError(f"{where} field {key!r} must be a non-empty string, got {value!r}.")
  if kind is dict and not isinstance(value, dict):
    raise LibraryError(f"{where} field {key!r} must be an object, got {value!r}.")
  if kind is list and not isinstance(value, list):
    raise LibraryError(f"{where} field {key!r} must be a list, got {value!r}.")
  return value


def _entry_from_json(record: Any, where: str) -> Entry:
  name = _field(record, "name", str, where)
  where = f"{where} ({name!r})"
  model = _field(record, "model", dict, where)
  shape = _field(model, "prompt_shape", list, f"{where} model")
  if len(shape) != 2 or not all(isinstance(n, int) and n > 0 for n in shape):
    raise LibraryError(f"{where} has prompt_shape {shape}; it must be two positive integers.")
  metric = record.get("metric") or {}
  value = metric.get("value") if isinstance(metric, dict) else None
  return Entry(
      name=name, task=_field(record, "task", str, where),
      model=_field(model, "name", str, f"{where} model"), prompt_shape=(shape[0], shape[1]),
      seed=_field(record, "seed", int, where), steps=_field(record, "steps", int, where),
      key_step=_field(record, "key_step", int, where),
      value_step=_field(record, "value_step", int, where),
      metric=metric.get("name") if isinstance(metric, dict) else None,
      metric_value=float(value) if isinstance(value, (int, float)) else None,
      key_prompt=_field(record, "key_prompt", str, where),
      value_prompt=_field(record, "value_prompt", str, where))


def parse(text: str, path: str) -> Tuple[ModelInfo, List[Entry]]:
  """The model and entries of manifest `text` (read from `path`, named in errors)."""
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise LibraryError(f"Manifest {path} is not valid JSON ({e}).") from e
  where = f"Manifest {path}"
  if not isinstance(data, dict):
    raise LibraryError(f"{where} must hold a JSON object, got {type(data).__name__}.")
  if data.get("format_version") != FORMAT_VERSION:
    raise LibraryError(f"{where} has format_version {data.get('format_version')!r}; this "
                       f"version reads {FORMAT_VERSION}.")
  model = _field(data, "model", dict, where)
  info = ModelInfo(name=_field(model, "name", str, f"{where} model"),
                   embed_dim=_field(model, "embed_dim", int, f"{where} model"))
  records = _field(data, "entries", list, where)
  entries = [_entry_from_json(r, f"{where} entry {i}") for i, r in enumerate(records)]
  names = [e.name for e in entries]
  for name in names:
    if names.count(name) > 1:
      raise LibraryError(f"{where} lists entry {name!r} more than once.")
  return info, entries


def dumps(model: ModelInfo, entries: Sequence[Entry]) -> str:
  data = {"format_version": FORMAT_VERSION, "model": dataclasses.asdict(model),
          "entries": [entry.to_json() for entry in entries]}
  return json.dumps(data, indent=2) + "\n"
