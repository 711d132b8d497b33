"""Helpers for the tpu_setup tests: run the CLI with gcloud replaced, and read its printed plan."""
from __future__ import annotations

import io
import pathlib
import shlex
from collections.abc import Sequence

from tpu_setup import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "https://github.com/example/prompt_tuning"


class FakeGit:
  """Stands in for the local checkout: fixed HEAD, origin and dirtiness."""

  def __init__(self, head: str | None = COMMIT, origin: str | None = REPO, dirty: bool = False):
    self.head, self.origin, self.dirty = head, origin, dirty

  def head_commit(self) -> str | None:
    return self.head

  def has_local_changes(self) -> bool:
    return self.dirty

  def origin_url(self) -> str | None:
    return self.origin


class RecordingExecutor:
  """Records every command instead of running it; returns the queued exit codes (default 0)."""

  def __init__(self, returncodes: Sequence[int] = ()):
    self.calls: list[list[str]] = []
    self._returncodes = list(returncodes)

  def __call__(self, argv: Sequence[str]) -> int:
    self.calls.append(list(argv))
    return self._returncodes.pop(0) if self._returncodes else 0


def parse_printed_plan(text: str) -> tuple[list[str], list[list[str]]]:
  """Splits the CLI's output into step purposes ('# ...' lines) and shell-parsed command argvs.

  A command may span several lines (quoted scripts); it ends where its text first parses.
  """
  purposes, commands, pending = [], [], ""
  for line in text.splitlines():
    if not pending and line.startswith("# "):
      purposes.append(line[2:])
      continue
    pending += line + "\n"
    try:
      argv = shlex.split(pending)
    except ValueError:  # still inside a quoted, multi-line argument
      continue
    commands.append(argv)
    pending = ""
  assert not pending, f"unterminated command in output: {pending!r}"
  return purposes, commands


def run_cli(argv: Sequence[str], *, executor: RecordingExecutor | None = None,
            git: FakeGit | None = None) -> tuple[int, str, str, RecordingExecutor]:
  executor = executor or RecordingExecutor()
  out, err = io.StringIO(), io.StringIO()
  code = cli.main(list(argv), executor=executor, git=git or FakeGit(), out=out, err=err)
  return code, out.getvalue(), err.getvalue(), executor


def ssh_script(argv: list[str]) -> str:
  """The remote script of a `gcloud compute tpus tpu-vm ssh ... --command SCRIPT` argv."""
  assert argv[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"], argv
  return argv[argv.index("--command") + 1]
