"""Makes tpu_setup and the helper module beside these tests importable from any working folder,
and runs each test in its own empty folder."""
import pathlib
import sys

import pytest

_HERE = pathlib.Path(__file__).resolve().parent
REPO_ROOT = _HERE.parents[1]
for path in (str(_HERE), str(REPO_ROOT)):
  if path not in sys.path:
    sys.path.insert(0, path)


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
  # The CLI reads ./tpu_setup.toml and resolves gin files against the current folder.
  monkeypatch.chdir(tmp_path)
