"""Read-only questions to the local git checkout: which commit the workers get, and from where.

These run even under --dry-run because the printed commands must name the exact commit; they never
change the checkout.
"""
from __future__ import annotations

import re
import subprocess

_COMMIT = re.compile(r"[0-9a-f]{7,40}")


class LocalGit:
  """Answers from `git -C directory ...`; tests replace it with fixed answers."""

  def __init__(self, directory: str = "."):
    self.directory = directory

  def _git(self, *args: str) -> str | None:
    try:
      result = subprocess.run(["git", "-C", self.directory, *args], capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:  # git not installed
      return None
    return result.stdout.strip() if result.returncode == 0 else None

  def head_commit(self) -> str | None:
    return self._git("rev-parse", "HEAD")

  def has_local_changes(self) -> bool:
    return bool(self._git("status", "--porcelain", "--untracked-files=no"))

  def origin_url(self) -> str | None:
    return self._git("remote", "get-url", "origin")


def resolve_commit(explicit: str | None, git: LocalGit) -> tuple[str, bool]:
  """Returns (commit hash, whether it came from the local HEAD)."""
  if explicit is not None:
    commit = explicit.strip().lower()
    if not _COMMIT.fullmatch(commit):
      raise ValueError(f"commit {explicit!r} is not a commit hash: pin the workers with a hash "
                       "such as the output of `git rev-parse HEAD`.")
    return commit, False
  head = git.head_commit()
  if not head:
    raise ValueError("could not read the local commit with `git rev-parse HEAD`: run from a git "
                     "checkout with at least one commit, or pass --commit HASH.")
  return head, True


# What a worker can fetch from: a network URL, or scp-style `user@host:path`.
_NETWORK_URL = re.compile(r"(git\+)?(https?|ssh|git)://[^/]+/.+|[\w.-]+@[\w.-]+:(?!//).+")


def resolve_repo_url(configured: str | None, git: LocalGit) -> str:
  """The URL the workers install from; a local path or file:// URL is refused (they cannot
  reach this machine's disk), in --dry-run too, since the printed commands would not work."""
  url = configured or git.origin_url()
  if not url:
    raise ValueError("no repository URL: the local checkout has no `origin` remote, so pass "
                     "--repo-url or set repo_url in the config file.")
  if not _NETWORK_URL.fullmatch(url):
    source = "--repo-url / repo_url" if configured else "the checkout's `origin` remote"
    raise ValueError(f"repository {url!r} (from {source}) is not a network URL the TPU workers "
                     "can install from; push the commit to a hosted repository and pass its "
                     "URL with --repo-url (or set repo_url in the config file).")
  return url
