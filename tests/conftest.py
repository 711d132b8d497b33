"""Suite-wide set-up that must happen before any test module imports the task registries.

Tasks register their vocabulary when `tasks` is first imported, whichever test folder does it
first; pointing the vocabulary at the real T5 SentencePiece model in `tests/fixtures/` here
keeps every test offline and the registrations identical across folders.
"""
import os
import pathlib

import pytest

_FIXTURE_VOCAB = (pathlib.Path(__file__).resolve().parent / "fixtures" /
                  "t5x_reference" / "t5_vocab")
if _FIXTURE_VOCAB.exists():
  os.environ.setdefault("PROMPT_TUNING_VOCAB", str(_FIXTURE_VOCAB))
  os.environ.setdefault("PROMPT_TUNING_MT5_VOCAB", str(_FIXTURE_VOCAB))


_SLOW_LIST = pathlib.Path(__file__).resolve().parent / "slow_tests.txt"


def _listed_slow():
  if not _SLOW_LIST.exists():
    return frozenset()
  lines = (line.strip() for line in _SLOW_LIST.read_text().splitlines())
  return frozenset(line for line in lines if line and not line.startswith("#"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Marks `slow` every test `tests/slow_tests.txt` names (a file, a test or one case), before
  `-m` selects, so the measured slow tests leave the fast lane (see tests/slow_list.py).

  End-to-end tests count as slow too: `-m "not slow"` replaces the default `-m "not e2e"`
  from pyproject.toml, and the fast lane must not pull the minutes-long pipelines back in."""
  listed = _listed_slow()
  for item in items:
    node = item.nodeid
    if (item.get_closest_marker("e2e") is not None
        or {node, node.split("[")[0], node.split("::")[0]} & listed):
      item.add_marker(pytest.mark.slow)
