"""Run on every worker by `provision`: is prompt_tuning at the pinned commit, are the chips seen?

provision copies this file to each worker and runs `python3 FILE --commit HASH --devices N`, so it
uses only the standard library, jax and prompt_tuning, and prints one line per worker that names
what is wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata


def installed_commit(distribution: str = "prompt_tuning") -> str | None:
  """The commit pip recorded when installing from git (PEP 610 direct_url.json), if any."""
  try:
    text = metadata.distribution(distribution).read_text("direct_url.json")
  except metadata.PackageNotFoundError:
    return None
  if not text:
    return None
  return json.loads(text).get("vcs_info", {}).get("commit_id")


def find_problems(*, expected_commit: str, expected_devices: int, commit: str | None,
                  platform: str, local_devices: int) -> list[str]:
  """Compares what this worker has with what the slice should have; empty means healthy."""
  problems = []
  if commit is None:
    problems.append("prompt_tuning was not installed from git, so its commit is unknown")
  elif not commit.startswith(expected_commit):
    problems.append(f"prompt_tuning is at commit {commit}, not {expected_commit}")
  if platform != "tpu":
    problems.append(f"jax runs on {platform!r}, not 'tpu'")
  elif local_devices != expected_devices:
    problems.append(f"jax sees {local_devices} local TPU devices, expected {expected_devices}")
  return problems


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--commit", required=True)
  parser.add_argument("--devices", type=int, required=True)
  parser.add_argument("--worker", default="?")
  parser.add_argument("--record", help="file to write the installed commit to when healthy")
  args = parser.parse_args(argv)
  worker = f"worker {args.worker}"
  try:
    import jax

    import prompt_tuning  # noqa: F401  (the import itself is part of the check)
  except ImportError as e:
    print(f"{worker}: NOT READY: cannot import {e.name} ({e}).", flush=True)
    return 1
  commit = installed_commit()
  problems = find_problems(expected_commit=args.commit, expected_devices=args.devices,
                           commit=commit, platform=jax.default_backend(),
                           local_devices=jax.local_device_count())
  if problems:
    print(f"{worker}: NOT READY: {'; '.join(problems)}.", flush=True)
    return 1
  if args.record:
    with open(args.record, "w", encoding="utf-8") as f:
      f.write(f"{commit}\n")
  print(f"{worker}: ready: prompt_tuning {commit}, {args.devices} TPU devices.", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
