"""Suite-wide set-up that must happen before any test module imports the task registries.

Tasks register their vocabulary when `tasks` is first imported, whichever test folder does it
first; pointing the vocabulary at the real T5 SentencePiece model in `tests/fixtures/` here
keeps every test offline and the registrations identical across folders.
"""
import importlib.util
import os
import pathlib

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
_FIXTURE_VOCAB = _HERE / "fixtures" / "t5x_reference" / "t5_vocab"
if _FIXTURE_VOCAB.exists():
  os.environ.setdefault("PROMPT_TUNING_VOCAB", str(_FIXTURE_VOCAB))
  os.environ.setdefault("PROMPT_TUNING_MT5_VOCAB", str(_FIXTURE_VOCAB))


def _load_slow_list():
  """`tests/slow_list.py`, which reads the list and matches tests against it (not a package)."""
  spec = importlib.util.spec_from_file_location("slow_list", _HERE / "slow_list.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):  # pylint: disable=unused-argument
  """Marks `slow` every test `tests/slow_tests.txt` names (a file, a test or one case), before
  `-m` selects, so the measured slow tests leave the fast lane (see tests/slow_list.py).

  End-to-end tests count as slow too: `-m "not slow"` replaces the default `-m "not e2e"`
  from pyproject.toml, and the fast lane must not pull the minutes-long pipelines back in."""
  slow_list = _load_slow_list()
  listed = frozenset(slow_list.read_entries(slow_list.DEFAULT_OUTPUT))
  for item in items:
    if item.get_closest_marker("e2e") is not None or slow_list.is_listed(item.nodeid, listed):
      item.add_marker(pytest.mark.slow)
