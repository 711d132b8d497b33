r"""Writes `tests/slow_tests.txt`, the measured part of the fast lane's `slow` marking.

Hand-placed `@pytest.mark.slow` marks say why a test is slow (a subprocess, a training run, a
PyTorch parity model); this list catches the rest from a measurement, so the fast lane
(`python -m pytest -q -m "not slow"`) stays within its few minutes as tests are added.
`tests/conftest.py` marks every test the list names (a whole file, a test, or one
parametrized case) as `slow`. Regenerate it from a full run's durations:

  python -m pytest -q --durations=0 > /tmp/durations.txt
  python tests/slow_list.py /tmp/durations.txt

A test can be fast in the full run only because an earlier test, which the fast lane leaves
out, already compiled the same functions; the fast lane then pays that compile itself. So
measure the fast lane too and add what it finds to the list:

  python -m pytest -q -m "not slow" --durations=0 > /tmp/fast.txt
  python tests/slow_list.py /tmp/fast.txt --extend

A test is listed when its setup, call and teardown together take at least `--test_seconds`;
a whole file is listed when one of its tests spends `--setup_seconds` in set-up (a module
fixture that trains or starts a subprocess: deselecting only the first test would move that
cost onto the next one).
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import re
import sys
from typing import AbstractSet, Dict, Iterable, List

DEFAULT_OUTPUT = pathlib.Path(__file__).resolve().parent / "slow_tests.txt"
_LINE = re.compile(r"^\s*([0-9.]+)s\s+(setup|call|teardown)\s+(\S+::\S.*?)\s*$")


def parse_durations(lines: Iterable[str]) -> Dict[str, Dict[str, float]]:
  """`--durations=0` report lines -> {node id: {phase: seconds}}; other lines are ignored."""
  times: Dict[str, Dict[str, float]] = collections.defaultdict(dict)
  for line in lines:
    match = _LINE.match(line)
    if match:
      seconds, phase, node = match.groups()
      times[node][phase] = times[node].get(phase, 0.0) + float(seconds)
  return dict(times)


def slow_entries(times: Dict[str, Dict[str, float]], *, test_seconds: float,
                 setup_seconds: float) -> List[str]:
  """Files with an expensive set-up, then single tests over the threshold in other files."""
  files = sorted({node.split("::")[0] for node, phases in times.items()
                  if phases.get("setup", 0.0) >= setup_seconds})
  tests = sorted(node for node, phases in times.items()
                 if sum(phases.values()) >= test_seconds and node.split("::")[0] not in files)
  return files + tests


def read_entries(path) -> List[str]:
  """The entries of an existing list (none when the file is missing)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  lines = (line.strip() for line in path.read_text().splitlines())
  return [line for line in lines if line and not line.startswith("#")]


def is_listed(node: str, entries: AbstractSet[str]) -> bool:
  """Whether `entries` name the test `node`: as itself, its test without the case, or its file."""
  return any(name in entries for name in (node, node.split("[")[0], node.split("::")[0]))


def main(argv: List[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("durations", help="output of python -m pytest -q --durations=0")
  parser.add_argument("--test_seconds", type=float, default=1.0)
  parser.add_argument("--setup_seconds", type=float, default=3.0)
  parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
  parser.add_argument("--extend", action="store_true",
                      help="keep the entries already in --output and add the new ones")
  args = parser.parse_args(argv)
  with open(args.durations) as f:
    times = parse_durations(f)
  if not times:
    sys.exit(f"{args.durations} holds no --durations=0 report lines.")
  entries = slow_entries(times, test_seconds=args.test_seconds, setup_seconds=args.setup_seconds)
  if args.extend:
    entries = sorted(set(entries) | set(read_entries(args.output)))
  header = ("# Tests the fast lane leaves out, measured (see tests/slow_list.py); one file or\n"
            "# test node id per line. Regenerate after adding tests.\n")
  pathlib.Path(args.output).write_text(header + "".join(f"{e}\n" for e in entries))
  listed = set(entries)
  fast = sum(sum(p.values()) for n, p in times.items() if not is_listed(n, listed))
  print(f"{len(entries)} entries written to {args.output}; the tests left in the fast lane "
        f"took {fast:.0f} s in the measured run (hand-marked slow tests included).")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
