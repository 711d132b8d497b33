"""Accelerator table, config file, gin include closure and the worker check, one piece at a time."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from tpu_setup_testlib import COMMIT, REPO_ROOT

from tpu_setup import accelerators, config, gin_files, plans, worker_check

# ---------------------------------------------------------------------------------- accelerators

@pytest.mark.parametrize("name, generation, hosts, devices, runtime", [
    ("v2-8", "v2", 1, 8, "tpu-ubuntu2204-base"),
    ("v2-32", "v2", 4, 8, "tpu-ubuntu2204-base"),
    ("v3-8", "v3", 1, 8, "tpu-ubuntu2204-base"),
    ("v3-32", "v3", 4, 8, "tpu-ubuntu2204-base"),
    ("v3-2048", "v3", 256, 8, "tpu-ubuntu2204-base"),
    ("v4-8", "v4", 1, 4, "tpu-ubuntu2204-base"),
    ("v4-16", "v4", 2, 4, "tpu-ubuntu2204-base"),
    ("v4-32", "v4", 4, 4, "tpu-ubuntu2204-base"),
    ("v5p-8", "v5p", 1, 4, "v2-alpha-tpuv5"),
    ("v5p-128", "v5p", 16, 4, "v2-alpha-tpuv5"),
    ("v5litepod-1", "v5litepod", 1, 1, "v2-alpha-tpuv5-lite"),
    ("v5litepod-4", "v5litepod", 1, 4, "v2-alpha-tpuv5-lite"),
    ("v5litepod-8", "v5litepod", 1, 8, "v2-alpha-tpuv5-lite"),
    ("v5litepod-16", "v5litepod", 4, 4, "v2-alpha-tpuv5-lite"),
    ("v5litepod-256", "v5litepod", 64, 4, "v2-alpha-tpuv5-lite"),
    ("v6e-8", "v6e", 1, 8, "v2-alpha-tpuv6e"),
    ("v6e-16", "v6e", 4, 4, "v2-alpha-tpuv6e"),
])
def test_accelerator_shapes(name, generation, hosts, devices, runtime):
  acc = accelerators.parse_accelerator(name)
  assert (acc.name, acc.generation, acc.hosts, acc.devices_per_host, acc.runtime_version) == (
      name, generation, hosts, devices, runtime)
  assert acc.is_pod == (hosts > 1)


@pytest.mark.parametrize("name, message", [
    ("v3-7", "v3 slices come in sizes 8, 32, 64"),
    ("v4-12", "multiples of 8 from 8 to 8192"),
    ("v4-16384", "multiples of 8 from 8 to 8192"),
    ("v5litepod-2", "v5litepod slices come in sizes 1, 4, 8, 16"),
    ("v5e-16", "gcloud calls it 'v5litepod-16'"),
    ("v9-8", "generation 'v9' is not one of"),
    ("v3", "expected GENERATION-SIZE"),
    ("", "expected GENERATION-SIZE"),
])
def test_unknown_accelerators_are_named_in_the_error(name, message):
  with pytest.raises(ValueError, match="unknown accelerator type") as error:
    accelerators.parse_accelerator(name)
  assert message in str(error.value)


# ---------------------------------------------------------------------------------------- config

def test_toml_config_with_env_table_merges_under_flags(tmp_path):
  path = tmp_path / "c.toml"
  path.write_text('zone = "us-central2-b"\nname = "a"\nqueued = true\n'
                  '[env]\nXLA_FLAGS = "--x"\nJAX_PLATFORMS = "tpu,cpu"\n')
  values = config.load_config_file(str(path))
  settings = config.make_settings(values, {"name": "b", "zone": None, "env": {"EXTRA": "1"}})
  assert (settings.zone, settings.name, settings.queued) == ("us-central2-b", "b", True)
  assert settings.worker_env() == {"JAX_PLATFORMS": "tpu,cpu", "PYTHONUNBUFFERED": "1",
                                   "XLA_FLAGS": "--x", "EXTRA": "1"}


@pytest.mark.parametrize("filename, text, message", [
    ("c.toml", 'zonee = "x"\n', "unknown key 'zonee' in config file"),
    ("c.toml", "spot = 1\n", "'spot' in config file 'c.toml' must be true or false"),
    ("c.toml", "zone = 3\n", "'zone' in config file 'c.toml' must be a string"),
    ("c.toml", "[env]\nA = 1\n", "'env' in config file 'c.toml' must be a table of string values"),
    ("c.toml", "zone = \n", "config file 'c.toml' is malformed"),
    ("c.json", "[1, 2]", "must hold a table of keys, not list"),
    ("c.json", "{", "config file 'c.json' is malformed"),
])
def test_malformed_config_files_are_rejected(tmp_path, filename, text, message):
  (tmp_path / filename).write_text(text)
  with pytest.raises(ValueError) as error:
    config.load_config_file(filename)
  assert message in str(error.value)


def test_the_shipped_example_config_is_valid():
  values = config.load_config_file(str(REPO_ROOT / "tpu_setup/example_config.toml"))
  settings = config.make_settings(values, {})
  [create] = plans.create_plan(settings)
  assert create.argv[4:] == ("create", "pt-v4-32", "--zone=us-central2-b",
                             "--project=my-gcp-project", "--accelerator-type=v4-32",
                             "--version=tpu-ubuntu2204-base")
  assert settings.require_bucket() == "gs://my-bucket/prompt_tuning"


def test_default_config_file_is_optional(tmp_path):
  assert config.load_config_file(None) == {}
  (tmp_path / config.DEFAULT_CONFIG_FILE).write_text('bucket = "gs://b"\n')
  assert config.load_config_file(None) == {"bucket": "gs://b"}


def test_settings_checks():
  settings = config.Settings(name="ok-tpu", zone="europe-west4-a", bucket="gs://my-b/logs/")
  assert settings.require_bucket() == "gs://my-b/logs"
  assert settings.queued_resource_id == "ok-tpu-qr"
  with pytest.raises(ValueError, match="TPU name 'Bad_Name' is invalid"):
    config.Settings(name="Bad_Name").require_name()
  with pytest.raises(ValueError, match="environment variable name '1X' is invalid"):
    config.Settings(env={"1X": "y"}).worker_env()
  with pytest.raises(ValueError, match="python 'python3 -u' must be one interpreter"):
    plans.provision_plan(config.Settings(name="t", zone="europe-west4-a",
                                         accelerator_type="v3-8", python="python3 -u"),
                         commit=COMMIT, repo_url="https://x/y")


# ------------------------------------------------------------------------------------- gin files

def test_gin_includes_are_followed_once_and_grouped_by_folder(tmp_path):
  (tmp_path / "gin/a").mkdir(parents=True)
  (tmp_path / "gin/a/base.gin").write_text("include 'gin/a/shared.gin'\n")
  (tmp_path / "gin/a/shared.gin").write_text("X = 1\n")
  (tmp_path / "top.gin").write_text('include "gin/a/base.gin"\n  include \'gin/a/shared.gin\'\n'
                                    '# include "ignored.gin" (a comment)\n')
  given, to_copy = gin_files.collect_gin_files(["./top.gin", "gin/a/../a/base.gin"], tmp_path)
  assert given == ["top.gin", "gin/a/base.gin"]
  assert to_copy == ["top.gin", "gin/a/base.gin", "gin/a/shared.gin"]
  assert gin_files.group_by_directory(to_copy) == {"": ["top.gin"],
                                                   "gin/a": ["gin/a/base.gin", "gin/a/shared.gin"]}


# ---------------------------------------------------------------------------------- worker check

def test_worker_check_problems():
  healthy = {"expected_commit": COMMIT[:10], "expected_devices": 4, "commit": COMMIT,
             "platform": "tpu", "local_devices": 4}
  assert worker_check.find_problems(**healthy) == []
  assert worker_check.find_problems(**{**healthy, "local_devices": 8}) == [
      "jax sees 8 local TPU devices, expected 4"]
  assert worker_check.find_problems(**{**healthy, "commit": "feedbeef" * 5, "platform": "cpu"}) == [
      f"prompt_tuning is at commit {'feedbeef' * 5}, not {COMMIT[:10]}",
      "jax runs on 'cpu', not 'tpu'"]
  assert worker_check.find_problems(**{**healthy, "commit": None})[0].startswith(
      "prompt_tuning was not installed from git")


def _fake_worker_site(tmp_path, commit: str) -> str:
  """A site folder with a stand-in jax (a TPU with $FAKE_DEVICES chips) and pip's record of a
  prompt_tuning installed from git at `commit`."""
  site = tmp_path / "site"
  dist_info = site / "prompt_tuning-0.1.0.dist-info"
  dist_info.mkdir(parents=True)
  (dist_info / "METADATA").write_text(
      "Metadata-Version: 2.1\nName: prompt_tuning\nVersion: 0.1.0\n")
  (dist_info / "direct_url.json").write_text(json.dumps(
      {"url": "https://x/y", "vcs_info": {"vcs": "git", "commit_id": commit}}))
  (site / "jax.py").write_text(
      "import os\n"
      "def default_backend():\n  return 'tpu'\n"
      "def local_device_count():\n  return int(os.environ['FAKE_DEVICES'])\n")
  return str(site)


def test_worker_check_reads_the_commit_pip_recorded(tmp_path, monkeypatch):
  monkeypatch.syspath_prepend(_fake_worker_site(tmp_path, COMMIT))
  assert worker_check.installed_commit("prompt_tuning") == COMMIT
  assert worker_check.installed_commit("no_such_distribution_here") is None


@pytest.mark.parametrize("devices, commit, expected_code, expected_line", [
    ("4", COMMIT, 0, f"worker 3: ready: prompt_tuning {COMMIT}, 4 TPU devices."),
    ("8", COMMIT, 1, "worker 3: NOT READY: jax sees 8 local TPU devices, expected 4."),
    ("4", "feedbeef" * 5, 1,
     f"worker 3: NOT READY: prompt_tuning is at commit {'feedbeef' * 5}, not {COMMIT[:12]}."),
])
def test_worker_check_script_end_to_end(tmp_path, devices, commit, expected_code, expected_line):
  # Runs the very file provision copies, against a stand-in jax and pip record.
  record = tmp_path / "commit"
  result = subprocess.run(
      [sys.executable, worker_check.__file__, "--worker", "3", "--commit", COMMIT[:12],
       "--devices", "4", "--record", str(record)],
      capture_output=True, text=True, check=False, timeout=60,
      env={"PYTHONPATH": f"{_fake_worker_site(tmp_path, commit)}:{REPO_ROOT}",
           "FAKE_DEVICES": devices})
  assert (result.returncode, result.stdout.splitlines()) == (expected_code, [expected_line])
  assert record.exists() == (expected_code == 0)
  if record.exists():
    assert record.read_text() == COMMIT + "\n"


# ------------------------------------------------------------------------------------------- lint

@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is not installed (pip install ruff)")
def test_tpu_setup_passes_ruff():
  result = subprocess.run(["ruff", "check", "--no-cache", "--line-length", "100",
                           "--extend-select", "E501",
                           "tpu_setup", "tests/tpu_setup"],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout
