"""Idempotent SeqIO registration.

Task modules run their registrations at import time; a module imported twice (a checkout
on `sys.path` beside an installed wheel, `importlib.reload`, a test that re-imports) must
not raise seqio's "duplicate provider" error, so every registration goes through here and
skips names that already exist.
"""
import re
from typing import Any, Optional, Sequence

import seqio

_VALID_NAME = re.compile(r"^[\w\d\.\:_#]+$")


def clean_name(text: str) -> str:
  """Replaces every run of characters seqio forbids in a name with one underscore."""
  return re.sub(r"[^\w\d\.\:_#]+", "_", text)


def check_name(name: str) -> str:
  if not _VALID_NAME.match(name):
    raise ValueError(f"Task or mixture name {name!r} must match {_VALID_NAME.pattern}.")
  return name


def add_task(name: str, **task_kwargs: Any) -> Optional[seqio.Task]:
  """Registers a `seqio.Task` unless one with this name exists; returns the registered task."""
  check_name(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  return seqio.TaskRegistry.add(name, **task_kwargs)


def add_mixture(name: str, tasks: Sequence[Any], **mixture_kwargs: Any) -> seqio.Mixture:
  """Registers a `seqio.Mixture` unless one with this name exists."""
  check_name(name)
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  return seqio.MixtureRegistry.add(name, tasks, **mixture_kwargs)
