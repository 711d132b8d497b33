"""`python -m prompt_tuning.checkpoints verify PATH [--step N]`: check run checkpoints on disk.

PATH is a run's model dir or its `checkpoints` folder. Each step prints as one line:

  step 3: ok
  step 4: damaged ('params/ocdbt.process_0/d/1f0c...' does not match its checksum)
  step 1: unverified (no checksums.json: written before checksums existed)

Exit status: 0 when every step is ok or unverified, 1 when one is damaged or incomplete, 2 for
a bad PATH or step. Nothing is moved or written (training moves damaged steps aside itself).
Only the standard library and etils are imported, so the answer comes in well under a second.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from prompt_tuning.engine import checkpoint_integrity as integrity


def verify(path: str, step: Optional[int] = None) -> int:
  """Prints one line per step of `path`; returns the exit status (see the module docstring)."""
  try:
    directory = integrity.checkpoints_directory(path)
    reports = integrity.verify_directory(directory, step)
  except FileNotFoundError as error:
    print(f"Error: {str(error).rstrip('.')}.", file=sys.stderr)
    return 2
  if not reports:
    print(f"No checkpoint steps in {directory}.")
    return 0
  for report in reports:
    print(report)
  bad = [r.step for r in reports if not r.usable]
  if bad:
    print(f"{len(bad)} of {len(reports)} steps in {directory} are damaged or incomplete: {bad}.",
          file=sys.stderr)
    return 1
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.checkpoints",
                                   description="Inspect a run's checkpoints.")
  commands = parser.add_subparsers(dest="command", required=True)
  check = commands.add_parser("verify", help="check every step against its checksums")
  check.add_argument("path", help="a run's model dir or its checkpoints folder")
  check.add_argument("--step", type=int, default=None, help="only this step")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  return verify(args.path, args.step)


if __name__ == "__main__":
  sys.exit(main())
