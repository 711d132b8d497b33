"""How the host C allocator hands memory to XLA:CPU, which matters for CPU training speed.

Each execution of a compiled step asks for one large block of temporary memory (about 1.4 GB for
a T5 1.1 small prompt-tuning step) and frees it at the end. glibc serves blocks that large with a
fresh `mmap` and returns them with `munmap`, so every step page-faults its whole working set back
in: over 350,000 faults and more than a second of kernel time per step on a 2-core machine.

The `reuse` policy keeps freed memory in the process instead: one malloc arena for every thread
(worker threads would otherwise fall back to `mmap` for blocks beyond their 64 MB heaps), no
`mmap` for large blocks, and no trimming of the heap. After the first step, steps run without
page faults. The cost is that the process keeps its peak host memory until it exits, which is
what a training or serving process does anyway. `system` leaves the allocator untouched.

The policy must be set before JAX starts its CPU client: threads that already own an arena keep
it. It only changes anything under glibc (Linux); elsewhere it is a logged no-op.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import Optional

_LOG = logging.getLogger("prompt_tuning")

POLICIES = ("reuse", "system")

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

_applied: Optional[str] = None


def _glibc() -> Optional[ctypes.CDLL]:
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # Present only in glibc (not musl).
    libc.mallopt
  except (OSError, AttributeError):
    return None
  libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  libc.mallopt.restype = ctypes.c_int
  return libc


def jax_backend_started() -> bool:
  """Whether JAX has started a backend in this process (settings read at start-up are fixed)."""
  module = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(module, "_backends", None))


def configure(policy: str = "reuse") -> bool:
  """Applies an allocation policy to this process; returns whether the allocator was changed.

  Args:
    policy: 'reuse' (keep freed memory for the next step) or 'system' (leave glibc's defaults).

  Raises:
    ValueError: for an unknown policy name.
  """
  global _applied
  if policy not in POLICIES:
    raise ValueError(f"Unknown host allocator policy {policy!r}; expected one of {POLICIES}.")
  if policy == "system" or _applied == policy:
    return False
  libc = _glibc()
  if libc is None:
    _LOG.info("Host allocator policy %r needs glibc; leaving the allocator as it is.", policy)
    return False
  if jax_backend_started():
    _LOG.warning("Host allocator policy %r set after JAX started its backend: threads that "
                 "already allocated keep their own arenas, so some steps may still page-fault.",
                 policy)
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
  if not all(libc.mallopt(param, value) == 1 for param, value in settings):
    _LOG.warning("glibc refused part of host allocator policy %r.", policy)
    return False
  _applied = policy
  return True


def applied_policy() -> str:
  """The policy in force: 'reuse' once `configure` changed the allocator, else 'system'."""
  return _applied or "system"
