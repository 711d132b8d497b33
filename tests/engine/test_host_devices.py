"""Splitting the CPU host into several XLA devices (`--host_cpu_devices`)."""
import json
import os
import subprocess
import sys
import textwrap

import jax
import pytest

from prompt_tuning.engine import gin_utils, host_devices

# A fresh process: the device count is read once, when JAX starts its CPU backend.
_PROBE = textwrap.dedent("""
    import json, os, sys
    import jax  # imported but not started: the count may still be set
    from prompt_tuning.engine import host_devices
    changed = host_devices.configure(int(sys.argv[1]))
    again = host_devices.configure(int(sys.argv[1]))
    print(json.dumps({"changed": changed, "again": again, "devices": len(jax.devices()),
                      "platform": jax.devices()[0].platform,
                      "flags": os.environ["XLA_FLAGS"]}))
""")


@pytest.mark.slow
def test_count_set_before_jax_starts_gives_that_many_cpu_devices():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
  out = subprocess.run([sys.executable, "-c", _PROBE, "3"], capture_output=True, text=True,
                       check=True, timeout=300, env=env)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result == {"changed": True, "again": False, "devices": 3, "platform": "cpu",
                    "flags": "--xla_backend_optimization_level=0 "
                             "--xla_force_host_platform_device_count=3"}


def test_none_leaves_everything_alone(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
  assert host_devices.configure(None) is False
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false"


@pytest.mark.parametrize("count", [0, -2, 1.5, "4", True])
def test_a_count_that_is_not_a_positive_integer_is_one_clear_error(count):
  with pytest.raises(ValueError, match="must be a positive integer"):
    host_devices.configure(count)


def test_a_count_that_disagrees_with_xla_flags_is_refused_without_touching_them(monkeypatch):
  flags = "--xla_force_host_platform_device_count=8 --xla_cpu_enable_fast_math=false"
  monkeypatch.setenv("XLA_FLAGS", flags)
  with pytest.raises(ValueError, match="already sets --xla_force_host_platform_device_count=8"):
    host_devices.configure(4)
  assert os.environ["XLA_FLAGS"] == flags


def test_after_jax_started_only_the_current_count_is_accepted(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  current = len(jax.local_devices(backend="cpu"))  # this test process has started JAX
  assert host_devices.configure(current) is False
  with pytest.raises(RuntimeError, match=f"already started its CPU backend with {current} "):
    host_devices.configure(current + 1)
  assert "XLA_FLAGS" not in os.environ


def test_entry_point_flag_is_parsed_and_a_late_change_is_a_config_error(monkeypatch):
  flags = gin_utils.parse_flags(["--host_cpu_devices=4"], prog="train", description="")
  assert flags.host_cpu_devices == 4
  assert gin_utils.parse_flags([], prog="train", description="").host_cpu_devices is None
  with pytest.raises(gin_utils.ConfigError, match="Bad command line"):
    gin_utils.parse_flags(["--host_cpu_devices=four"], prog="train", description="")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  current = len(jax.local_devices(backend="cpu"))
  with pytest.raises(gin_utils.ConfigError,
                     match=f"--host_cpu_devices={current + 1}: JAX already started"):
    gin_utils._configure_host_devices(current + 1)
