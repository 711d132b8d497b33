"""Finds the gin files a job needs, including those pulled in by `include`, so all can be copied.

Paths are resolved the way the engine resolves them on the workers: relative to one search root
(locally the current directory; on a worker the run folder, passed as --gin_search_paths). Checking
the whole include tree here means a missing file stops the launch before any command runs.
"""
from __future__ import annotations

import os
import pathlib
import posixpath
import re

_INCLUDE = re.compile(r"""^\s*include\s+(['"])(.+?)\1""", re.MULTILINE)


def collect_gin_files(gin_files: list[str],
                      root: str | pathlib.Path = ".") -> tuple[list[str], list[str]]:
  """Resolves the given gin files and everything they include against root.

  Returns (the given files, all files to copy), both as POSIX paths relative to root. Raises
  FileNotFoundError naming the missing file (and who included it) and ValueError for a path that
  leaves the root, which could not be mirrored on the workers.
  """
  root = pathlib.Path(os.path.abspath(root))
  given = [_relative_to_root(path, root, None) for path in gin_files]
  ordered: list[str] = []
  pending: list[tuple[str, str | None]] = [(path, None) for path in given]
  while pending:
    path, included_by = pending.pop(0)
    relative = _relative_to_root(path, root, included_by)
    if relative in ordered:
      continue
    ordered.append(relative)
    text = (root / relative).read_text(encoding="utf-8")
    pending.extend((match.group(2), relative) for match in _INCLUDE.finditer(text))
  return given, ordered


def _relative_to_root(path: str, root: pathlib.Path, included_by: str | None) -> str:
  where = f"included by {included_by!r}" if included_by else "given with --gin-file"
  candidate = pathlib.Path(os.path.normpath(root / path))
  if not candidate.is_relative_to(root):
    raise ValueError(f"gin file {path!r} ({where}) is outside {root}; run from a directory that "
                     "contains every gin file.")
  if not candidate.is_file():
    raise FileNotFoundError(f"gin file {path!r} ({where}) not found under {root}.")
  return candidate.relative_to(root).as_posix()


def group_by_directory(relative_paths: list[str]) -> dict[str, list[str]]:
  """Maps each relative directory ('' for the root) to the files in it, keeping order."""
  groups: dict[str, list[str]] = {}
  for path in relative_paths:
    groups.setdefault(posixpath.dirname(path), []).append(path)
  return groups
