"""Checksums of checkpoint steps: the manifest written at commit, verification, quarantine.

Each committed step holds `checksums.json`, the SHA-256 and size of every file of the step
(except the commit marker, the manifest itself, and orbax's `_CHECKPOINT_METADATA`, whose
commit timestamp orbax rewrites after the manifest is written; restoring never depends on it).
The manifest is written inside the step's temporary folder before orbax writes the commit marker
and renames the folder (see `checkpoints.CheckpointManager`), so a committed step always has one;
a step without it predates checksums and verifies as 'unverified'.

Why SHA-256 (hashlib): it is in the standard library (no extra dependency), OpenSSL's
implementation runs at about 1-2 GB/s per core, which makes a prompt checkpoint (kilobytes to
megabytes) instant and a full one (gigabytes) seconds in the background commit thread, and it
detects any change, deliberate ones included. A CRC would be faster but would miss crafted edits.

This module imports no JAX, so `python -m prompt_tuning.checkpoints verify` answers quickly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from typing import Dict, List, Optional

from etils import epath

MANIFEST_FILE = "checksums.json"
COMMIT_MARKER = "commit_success.txt"
DAMAGED_SUBDIR = "damaged"
# Files a manifest does not cover: written after it, or orbax bookkeeping it rewrites on commit.
_NOT_COVERED = frozenset({MANIFEST_FILE, COMMIT_MARKER, "_CHECKPOINT_METADATA"})
_ALGORITHM = "sha256"
_CHUNK = 1 << 22
# Item folders a run step must hold (see `checkpoints`); 'frozen' only in full checkpoints.
REQUIRED_ITEMS = ("params", "train", "run")

OK, DAMAGED, UNVERIFIED, INCOMPLETE = "ok", "damaged", "unverified", "incomplete"


@dataclasses.dataclass(frozen=True)
class StepReport:
  """The verdict on one step folder.

  Attributes:
    step: the step number.
    status: 'ok' (checksums match), 'damaged' (a file is missing, changed, or unreadable),
      'unverified' (no manifest: written before checksums existed; structure looked fine), or
      'incomplete' (no commit marker: an interrupted save or copy).
    reason: for anything but 'ok', a short phrase naming the file and what is wrong with it.
    tag: a word or two for the kind of damage, used in the name of the folder it is moved to.
  """

  step: int
  status: str
  reason: str = ""
  tag: str = ""

  @property
  def usable(self) -> bool:
    return self.status in (OK, UNVERIFIED)

  def __str__(self) -> str:
    return f"step {self.step}: {self.status}" + (f" ({self.reason})" if self.reason else "")


def _digest(path: epath.Path) -> str:
  digest = hashlib.new(_ALGORITHM)
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def _files(directory: epath.Path) -> List[str]:
  """Paths of all files under `directory`, relative to it, '/'-separated, sorted."""
  found = []
  pending = [directory]
  while pending:
    folder = pending.pop()
    for entry in folder.iterdir():
      if entry.is_dir():
        pending.append(entry)
      else:
        found.append(str(entry.relative_to(directory)).replace(os.sep, "/"))
  return sorted(found)


def write_manifest(step_dir: epath.PathLike) -> epath.Path:
  """Records size and SHA-256 of every covered file of `step_dir` in its manifest.

  Written to a temporary name and renamed, so a reader never sees half a manifest.
  """
  step_dir = epath.Path(step_dir)
  files = {}
  for name in _files(step_dir):
    if name in _NOT_COVERED or name.startswith(MANIFEST_FILE):
      continue
    path = step_dir / name
    files[name] = {"size": path.stat().length, _ALGORITHM: _digest(path)}
  manifest = {"format_version": 1, "algorithm": _ALGORITHM, "files": files}
  tmp = step_dir / (MANIFEST_FILE + ".tmp")
  tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
  tmp.rename(step_dir / MANIFEST_FILE)
  return step_dir / MANIFEST_FILE


def _read_manifest(step_dir: epath.Path) -> Dict[str, Dict[str, object]]:
  manifest = json.loads((step_dir / MANIFEST_FILE).read_text())
  if manifest.get("algorithm") != _ALGORITHM or not isinstance(manifest.get("files"), dict):
    raise ValueError("unknown manifest layout")
  return manifest["files"]


def _structure_problem(step_dir: epath.Path) -> Optional[str]:
  """Why a step without checksums cannot be a usable run step, or None if it looks whole."""
  for item in REQUIRED_ITEMS:
    if not (step_dir / item).is_dir():
      return f"its '{item}' folder is missing"
  path = step_dir / "run" / "metadata"  # the run record (a JSON object)
  try:
    text = path.read_text() if path.exists() else ""
    record = json.loads(text) if text.strip() else None
  except (ValueError, OSError) as error:
    return f"'run/metadata' is not readable JSON ({error})"
  if not isinstance(record, dict):
    return "'run/metadata' is missing or empty"
  for item in ("params", "train"):
    if not any(True for _ in (step_dir / item).iterdir()):
      return f"its '{item}' folder is empty"
  return None


def verify_step(step_dir: epath.PathLike, step: Optional[int] = None) -> StepReport:
  """Checks one step folder against its manifest (see `StepReport` for the verdicts)."""
  step_dir = epath.Path(step_dir)
  step = int(step_dir.name) if step is None else step
  if not (step_dir / COMMIT_MARKER).exists():
    return StepReport(step, INCOMPLETE, f"no {COMMIT_MARKER}: the save or copy did not finish",
                      "no-commit-marker")
  if not (step_dir / MANIFEST_FILE).exists():
    problem = _structure_problem(step_dir)
    if problem is not None:
      return StepReport(step, DAMAGED, problem, "structure")
    return StepReport(step, UNVERIFIED, f"no {MANIFEST_FILE}: written before checksums existed")
  try:
    expected = _read_manifest(step_dir)
  except (ValueError, OSError) as error:
    return StepReport(step, DAMAGED, f"{MANIFEST_FILE} is unreadable ({error})",
                      "manifest-unreadable")
  for item in sorted({name.split("/")[0] for name in expected if "/" in name}):
    if not (step_dir / item).is_dir():
      return StepReport(step, DAMAGED, f"its '{item}' folder is missing", "missing-folder")
  for name, entry in sorted(expected.items()):
    path = step_dir / name
    if not path.is_file():
      return StepReport(step, DAMAGED, f"'{name}' is missing", "missing-file")
    size = path.stat().length
    if size != entry.get("size"):
      return StepReport(step, DAMAGED, f"'{name}' has {size} bytes, {entry.get('size')} were "
                        "saved", "wrong-size")
    if _digest(path) != entry.get(_ALGORITHM):
      return StepReport(step, DAMAGED, f"'{name}' does not match its checksum",
                        "checksum-mismatch")
  extra = [n for n in _files(step_dir) if n not in expected and n not in _NOT_COVERED]
  if extra:  # harmless for restoring (nothing refers to them), but worth knowing
    logging.warning("Checkpoint step %d holds files its manifest does not list: %s.", step, extra)
  return StepReport(step, OK)


def step_folders(directory: epath.PathLike) -> Dict[int, epath.Path]:
  """The step folders (named by a plain number) of a checkpoints directory, by step."""
  directory = epath.Path(directory)
  return {int(p.name): p for p in directory.iterdir() if p.name.isdigit() and p.is_dir()}


def checkpoints_directory(path: epath.PathLike, subdir: str = "checkpoints") -> epath.Path:
  """A run's model dir or its checkpoints folder -> the checkpoints folder.

  Raises:
    FileNotFoundError: `path` does not exist or holds neither steps nor a checkpoints folder.
  """
  path = epath.Path(path)
  if not path.is_dir():
    raise FileNotFoundError(f"Checkpoint directory {path} does not exist.")
  if (path / subdir).is_dir() and not step_folders(path):
    return path / subdir
  return path


def verify_directory(directory: epath.PathLike, step: Optional[int] = None) -> List[StepReport]:
  """Verdicts for every step of a checkpoints directory (or only `step`), oldest first.

  Raises:
    FileNotFoundError: `step` was asked for and there is no such step folder.
  """
  folders = step_folders(directory)
  if step is not None:
    if step not in folders:
      raise FileNotFoundError(f"No checkpoint step {step} in {directory}; steps are "
                              f"{sorted(folders)}.")
    folders = {step: folders[step]}
  reports = [verify_step(folders[s], s) for s in sorted(folders)]
  for report in reports:
    if report.status == UNVERIFIED:
      logging.info("Checkpoint step %d in %s has no checksums (saved before they were "
                   "recorded); only its structure was checked.", report.step, directory)
  return reports


def quarantine(directory: epath.PathLike, report: StepReport) -> epath.Path:
  """Moves a step folder to `<directory>/damaged/<step>-<tag>` (never deletes anything).

  The step number becomes free, so training can write that step again.
  """
  directory = epath.Path(directory)
  aside = directory / DAMAGED_SUBDIR
  aside.mkdir(parents=True, exist_ok=True)
  tag = re.sub(r"[^a-z0-9]+", "-", (report.tag or report.status).lower()).strip("-")
  base = f"{report.step}-{tag or DAMAGED}"
  target, n = aside / base, 1
  while target.exists():
    n += 1
    target = aside / f"{base}-{n}"
  (directory / str(report.step)).rename(target)
  return target
