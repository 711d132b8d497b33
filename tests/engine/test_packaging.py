"""A built wheel carries the gin library, and a training run from it finds its gin files.

`gin/` sits at the repository root, so an editable install reads it from the checkout; a wheel has
no checkout. The test builds a wheel from a copy of the source (the checkout gets no build files),
installs it into a folder, and trains the tiny model for two steps from an unrelated directory.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prompt_tuning import smoke

pytestmark = pytest.mark.slow  # builds a wheel and trains from it in a fresh environment

REPO = Path(__file__).resolve().parents[2]
SOURCES = ["setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "prompt_tuning", "tasks",
           "gin"]


def _repo_gin_files():
  return sorted(p.relative_to(REPO).as_posix() for p in (REPO / "gin").rglob("*.gin"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  if importlib.util.find_spec("setuptools") is None:
    pytest.skip("building a wheel needs setuptools in this environment")
  root = tmp_path_factory.mktemp("wheel")
  source, wheels, target = root / "source", root / "wheels", root / "site"
  for name in SOURCES:
    src = REPO / name
    if src.is_dir():
      shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      source.mkdir(exist_ok=True)
      shutil.copy2(src, source / name)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  subprocess.run(pip + ["wheel", str(source), "--no-deps", "--no-build-isolation",
                        "-w", str(wheels)], check=True, capture_output=True, text=True)
  wheel = next(wheels.glob("prompt_tuning-*.whl"))
  subprocess.run(pip + ["install", "--no-deps", "--target", str(target), str(wheel)],
                 check=True, capture_output=True, text=True)
  return wheel, target


def test_wheel_holds_every_gin_file(installed):
  wheel, _ = installed
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = _repo_gin_files()
  assert len(expected) > 40
  missing = [f for f in expected if f"prompt_tuning/bundled/{f}" not in names]
  assert not missing, f"the wheel lacks {missing}"


def test_training_from_the_wheel_finds_the_gin_library(installed, tmp_path):
  _, target = installed
  run_dir, cwd = tmp_path / "run", tmp_path / "elsewhere"
  cwd.mkdir()
  env = dict(os.environ, PYTHONPATH=str(target), JAX_PLATFORMS="cpu")
  check = "import prompt_tuning; print(prompt_tuning.__file__)"
  where = subprocess.run([sys.executable, "-c", check], cwd=cwd, env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
  assert where.startswith(str(target)), where  # the wheel's copy, not the checkout
  args = smoke.base_args(model_dir=str(run_dir), steps=2)
  result = subprocess.run([sys.executable, "-m", "prompt_tuning.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Path not found" not in result.stderr
  operative = (run_dir / "config.gin").read_text()
  assert "TRAIN_STEPS = 2" in operative
  assert (run_dir / "checkpoints" / "2").is_dir()
