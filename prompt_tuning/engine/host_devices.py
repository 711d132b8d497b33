"""Splitting one CPU host into several XLA devices, so a data-parallel mesh keeps every core busy.

XLA:CPU runs a program on a device one operation after another and spreads each operation over
the host's cores. The big projections parallelise well, but the per-head attention products,
the normalisations and the many small elementwise fusions of a training step do not, so cores
sit idle for part of every step. With the host split into N devices, the mesh's data axis
gives each device its own share of the batch and the N programs run at the same time: one
device's small operations fill the gaps of another's. On a 2-core host, a T5 1.1 small
prompt-tuning step (batch 8) ran about 1.1x faster over 4 host devices than over one
(see benchmarks/README.md for the command).

The cost is memory: every device holds its own copy of the replicated (frozen) parameters.

The device count is an XLA flag that is read once, when JAX starts its CPU backend, so it must
be set before anything touches `jax.devices()`. It only concerns the CPU platform.
"""
from __future__ import annotations

import os
import re
from typing import Optional

from prompt_tuning.engine import host_memory

FLAG = "--xla_force_host_platform_device_count"
_FLAG_PATTERN = re.compile(re.escape(FLAG) + r"=(\S*)")


def _cpu_device_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return len(jax.local_devices(backend="cpu"))


def configure(count: Optional[int]) -> bool:
  """Makes JAX's CPU backend start with `count` devices; returns whether XLA_FLAGS changed.

  `None` leaves the device count as it is. Asking for the count the process already has is a
  no-op, so a second entry point in the same process may repeat the flag.

  Raises:
    ValueError: `count` is not a positive integer, or XLA_FLAGS already sets another count.
    RuntimeError: JAX's backend already started with a different number of CPU devices.
  """
  if count is None:
    return False
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"The number of host CPU devices must be a positive integer, got {count!r}.")
  flags = os.environ.get("XLA_FLAGS", "")
  match = _FLAG_PATTERN.search(flags)
  if match is not None and match.group(1) != str(count):
    raise ValueError(f"XLA_FLAGS already sets {FLAG}={match.group(1)}, which disagrees with "
                     f"the requested {count} host CPU devices.")
  if host_memory.jax_backend_started():
    current = _cpu_device_count()
    if current != count:
      raise RuntimeError(f"JAX already started its CPU backend with {current} device(s); "
                         f"{count} host CPU devices must be requested before JAX starts.")
    return False
  if match is not None:
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
  return True
