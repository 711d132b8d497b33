"""Prints each planned command, then (unless it is a dry run) executes it through one function.

Printing before executing is what makes every step visible; routing all execution through
`executor` is what lets tests replace gcloud without ever calling it.
"""
from __future__ import annotations

import dataclasses
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

Executor = Callable[[Sequence[str]], int]


@dataclasses.dataclass(frozen=True)
class Step:
  """One command of a plan and why it is there."""
  argv: tuple[str, ...]
  purpose: str
  stop_on_failure: bool = True


def step(argv: Sequence[str], purpose: str, *, stop_on_failure: bool = True) -> Step:
  return Step(tuple(argv), purpose, stop_on_failure)


class CommandFailed(RuntimeError):
  """A step that must succeed exited with a non-zero status."""

  def __init__(self, failed: Step, returncode: int):
    super().__init__(f"step '{failed.purpose}' failed with exit status {returncode}; later steps "
                     "were not run.")
    self.returncode = returncode


def subprocess_executor(argv: Sequence[str]) -> int:
  try:
    return subprocess.run(list(argv), check=False).returncode
  except FileNotFoundError:
    raise FileNotFoundError(f"{argv[0]!r} was not found on PATH (gcloud comes with the Google "
                            "Cloud CLI).") from None


def execute(plan: Sequence[Step], *, dry_run: bool, executor: Executor = subprocess_executor,
            out: TextIO = sys.stdout) -> list[Step]:
  """Prints '# purpose' and the shell-quoted command of each step; runs it unless dry_run.

  Returns the steps that failed without stopping the plan (fetching one worker's log, say); a
  failing step with stop_on_failure raises CommandFailed instead.
  """
  failed = []
  for current in plan:
    print(f"# {current.purpose}", file=out)
    print(shlex.join(current.argv), file=out, flush=True)
    if dry_run:
      continue
    returncode = executor(current.argv)
    if returncode != 0:
      if current.stop_on_failure:
        raise CommandFailed(current, returncode)
      failed.append(current)
  return failed
