"""Cloud TPU accelerator types: how many hosts (workers) a slice has and what each host sees.

The host count decides how many per-worker logs exist and what `provision` expects every worker to
see, so a wrong table silently breaks pods. The numbers follow the Cloud TPU documentation:

  v2, v3     `v3-N`: N TensorCores, 2 per chip, 4 chips (8 cores) per host. JAX sees one device per
             core, so 8 devices per host. v3-8 is one host, v3-32 four.
  v4, v5p    `v4-N`: N TensorCores, 2 per chip (one JAX device per chip), 4 chips per host.
             v4-8 is one host with 4 devices, v4-32 four hosts.
  v5e, v6e   `v5litepod-N` / `v6e-N`: N chips, 1 core each. Sizes 1, 4 and 8 are a single host
             with N chips; 16 and above are built from 4-chip hosts (v5litepod-16 is four hosts).
"""
from __future__ import annotations

import dataclasses
import re

# Runtime (software) versions recommended for JAX per generation.
RUNTIME_TPU_UBUNTU_2204 = "tpu-ubuntu2204-base"
RUNTIME_V5E = "v2-alpha-tpuv5-lite"
RUNTIME_V5P = "v2-alpha-tpuv5"
RUNTIME_V6E = "v2-alpha-tpuv6e"

_SINGLE_HOST_LITE_SIZES = (1, 4, 8)
_LITE_SIZES = (1, 4, 8, 16, 32, 64, 128, 256)


@dataclasses.dataclass(frozen=True)
class _Generation:
  prefix: str            # the accelerator type is f"{prefix}-{size}"
  cores_per_chip: int
  devices_per_host: int  # JAX devices on one multi-host worker
  runtime_version: str
  sizes: tuple[int, ...] | None  # allowed sizes; None means any multiple of 8 up to max_size
  max_size: int = 0


_GENERATIONS = {
    "v2": _Generation("v2", 2, 8, RUNTIME_TPU_UBUNTU_2204, (8, 32, 128, 256, 512)),
    "v3": _Generation("v3", 2, 8, RUNTIME_TPU_UBUNTU_2204,
                      (8, 32, 64, 128, 256, 512, 1024, 2048)),
    "v4": _Generation("v4", 2, 4, RUNTIME_TPU_UBUNTU_2204, None, max_size=8192),
    "v5p": _Generation("v5p", 2, 4, RUNTIME_V5P, None, max_size=12288),
    "v5litepod": _Generation("v5litepod", 1, 4, RUNTIME_V5E, _LITE_SIZES),
    "v6e": _Generation("v6e", 1, 4, RUNTIME_V6E, _LITE_SIZES),
}

# Names people type that gcloud does not know, with the name it wants.
_ALIASES = {"v5e": "v5litepod", "v5lite": "v5litepod"}

_EXAMPLES = "e.g. v3-8, v3-32, v4-8, v4-32, v5p-8, v5litepod-8, v5litepod-16, v6e-8"


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """One accelerator type and the shape of the slice it names."""
  name: str               # as gcloud spells it, e.g. "v4-32"
  generation: str         # "v2", "v3", "v4", "v5p", "v5litepod", "v6e"
  hosts: int              # TPU VM workers in the slice
  devices_per_host: int   # what jax.local_device_count() returns on each worker
  runtime_version: str    # default software version for JAX on this generation

  @property
  def is_pod(self) -> bool:
    return self.hosts > 1


def parse_accelerator(name: str) -> Accelerator:
  """Parses an accelerator type such as 'v4-32'; raises ValueError naming what is wrong."""
  match = re.fullmatch(r"([a-z0-9]+)-(\d+)", name.strip())
  if not match:
    raise ValueError(f"unknown accelerator type {name!r}: expected GENERATION-SIZE ({_EXAMPLES}).")
  prefix, size = match.group(1), int(match.group(2))
  if prefix in _ALIASES:
    raise ValueError(f"unknown accelerator type {name!r}: gcloud calls it "
                     f"'{_ALIASES[prefix]}-{size}'.")
  gen = _GENERATIONS.get(prefix)
  if gen is None:
    raise ValueError(f"unknown accelerator type {name!r}: generation {prefix!r} is not one of "
                     f"{', '.join(_GENERATIONS)} ({_EXAMPLES}).")
  if gen.sizes is not None and size not in gen.sizes:
    raise ValueError(f"unknown accelerator type {name!r}: {prefix} slices come in sizes "
                     f"{', '.join(map(str, gen.sizes))}.")
  if gen.sizes is None and (size < 8 or size % 8 or size > gen.max_size):
    raise ValueError(f"unknown accelerator type {name!r}: {prefix} sizes count TensorCores and "
                     f"are multiples of 8 from 8 to {gen.max_size}.")
  return Accelerator(name=f"{prefix}-{size}", generation=prefix, hosts=_hosts(gen, size),
                     devices_per_host=_devices_per_host(gen, size),
                     runtime_version=gen.runtime_version)


def _hosts(gen: _Generation, size: int) -> int:
  if gen.cores_per_chip == 1:  # v5e / v6e: size counts chips
    return 1 if size in _SINGLE_HOST_LITE_SIZES else size // 4
  return max(1, size // 8)     # 8 TensorCores per host on v2, v3, v4, v5p


def _devices_per_host(gen: _Generation, size: int) -> int:
  if gen.cores_per_chip == 1 and size in _SINGLE_HOST_LITE_SIZES:
    return size
  return gen.devices_per_host
