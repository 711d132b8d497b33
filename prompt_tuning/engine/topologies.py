"""Named accelerator slices (`v3-32`, `v4-32`, `v5e-16`, `cpu:8`) as devices to compile for.

The ahead-of-time planner compiles a run's step for a slice it is not running on. For a TPU
slice, the devices come from `jax.experimental.topologies`, which asks the TPU compiler in
`libtpu` (the `tpu` extra: `pip install .[tpu]`) for the slice's device layout; no TPU is needed.
`cpu:N` splits this host into N XLA:CPU devices instead (its memory figures are XLA:CPU's, which
schedules without an HBM limit and so overstates temporaries; only the TPU compiler's figures are
what a pod would see).

Slice names follow Cloud TPU: v3-N and v4-N count TensorCores (a v3 chip has two, each its own
16 GiB device; a v4 chip's two cores run as one 32 GiB "megacore" device), v5e-N counts chips
(one core, 16 GiB each). An explicit layout such as `v4:2x2x4` is accepted as well.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from typing import Any, List, Optional

from prompt_tuning.engine import host_devices
from prompt_tuning.engine import host_memory

GIB = 1 << 30
LIBTPU_MISSING = "libtpu not installed (pip install .[tpu])"


@dataclasses.dataclass(frozen=True)
class _Generation:
  cores_per_device: int  # TensorCores in the slice name per JAX device
  cores_per_chip: int
  hbm_bytes: int  # per JAX device
  dims: int  # chip grid dimensions
  chip_config: Optional[str] = None  # `megacore` for v4


_GENERATIONS = {
    "v3": _Generation(cores_per_device=1, cores_per_chip=2, hbm_bytes=16 * GIB, dims=2),
    "v4": _Generation(cores_per_device=2, cores_per_chip=2, hbm_bytes=32 * GIB, dims=3,
                      chip_config="megacore"),
    "v5e": _Generation(cores_per_device=1, cores_per_chip=1, hbm_bytes=16 * GIB, dims=2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e"}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice to compile for.

  Attributes:
    name: as the user wrote it, e.g. 'v3-32'.
    platform: 'tpu' or 'cpu'.
    num_devices: JAX devices of the slice (v3-32: 32; v4-32: 16; v5e-16: 16).
    hbm_bytes: memory of one device (None for CPU devices).
    layout: the TPU compiler's topology name, e.g. 'v3:4x4' (None for CPU).
    chip_config: the TPU compiler's chip configuration ('megacore' for v4).
  """

  name: str
  platform: str
  num_devices: int
  hbm_bytes: Optional[int] = None
  layout: Optional[str] = None
  chip_config: Optional[str] = None


def _chip_grid(chips: int, dims: int) -> str:
  """Chips -> the near-square (2-D) or near-cubic (3-D) power-of-two grid of Cloud TPU slices."""
  exponent = chips.bit_length() - 1
  if dims == 2:
    sizes = [2 ** (exponent // 2), 2 ** (exponent - exponent // 2)]
  elif exponent < 3:  # v4-8 is 2x2x1
    sizes = [2 ** min(exponent, 1), 2 ** max(exponent - 1, 0), 1]
  else:
    whole, extra = divmod(exponent, 3)
    sizes = [2 ** (whole + (1 if i >= 3 - extra else 0)) for i in range(3)]
  return "x".join(str(s) for s in sizes)


def parse(text: str) -> Topology:
  """'v3-32', 'v4-32', 'v5e-16', 'v4:2x2x4' or 'cpu:8' -> Topology; one sentence when unknown."""
  spec = (text or "").strip().lower()
  known = "v3-N, v4-N, v5e-N (e.g. v3-32, v4-32, v5e-16), v3:2x2-style layouts or cpu:N"
  match = re.fullmatch(r"cpu:(\d+)", spec)
  if match:
    count = int(match.group(1))
    if count < 1:
      raise ValueError(f"Topology {text!r} asks for no devices; use cpu:N with N >= 1.")
    return Topology(name=text, platform="cpu", num_devices=count)
  match = re.fullmatch(r"([a-z0-9]+)[-:](\d+(?:x\d+)*)", spec)
  generation = _ALIASES.get(match.group(1), match.group(1)) if match else None
  if generation not in _GENERATIONS:
    raise ValueError(f"Unknown topology {text!r}; expected {known}.")
  info = _GENERATIONS[generation]
  size = match.group(2)
  if "x" in size:  # an explicit chip grid
    grid = [int(s) for s in size.split("x")]
    if len(grid) != info.dims or min(grid) < 1:
      raise ValueError(f"Topology {text!r} needs a {info.dims}-D chip grid for {generation}, "
                       f"e.g. {generation}:{_chip_grid(4, info.dims)}.")
    chips = 1
    for s in grid:
      chips *= s
  else:
    count = int(size)  # TensorCores (v3, v4) or chips (v5e)
    per_chip = 1 if generation == "v5e" else info.cores_per_chip
    chips = count // per_chip
    if count % per_chip or chips < 1 or chips & (chips - 1):
      raise ValueError(f"Unknown topology {text!r}: {generation}-N slices have a power-of-two "
                       f"number of chips, N = {per_chip} x chips (e.g. {generation}-"
                       f"{per_chip * 4}, {generation}-{per_chip * 16}).")
    if generation == "v4" and chips < 4:
      raise ValueError(f"Unknown topology {text!r}: the smallest v4 slice is v4-8.")
    grid_text = _chip_grid(chips, info.dims)
    size = grid_text
  devices = chips * info.cores_per_chip // info.cores_per_device
  return Topology(name=text, platform="tpu", num_devices=devices, hbm_bytes=info.hbm_bytes,
                  layout=f"{generation}:{size}", chip_config=info.chip_config)


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def prepare(topology: Topology) -> None:
  """Sets up the process for `topology`; call before JAX starts its backends.

  CPU: splits the host into the slice's device count. TPU: checks that libtpu is importable and
  keeps JAX's own backend on the CPU (the slice's devices are descriptions, not attached).
  """
  if topology.platform == "cpu":
    host_devices.configure(topology.num_devices)
    return
  if not libtpu_available():
    raise ValueError(f"{LIBTPU_MISSING}; it is needed to compile for {topology.name}.")
  if not host_memory.jax_backend_started():
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
  # libtpu takes a machine-wide lock file so that one process owns the chips; a plan only asks
  # for device descriptions and owns none, so several plans (or a plan beside a run) may load it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # Without these libtpu logs an error per missing variable; the values are only read at init.
  if re.fullmatch(r"v\w+-\d+", topology.name.lower()):
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.name.lower())
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def devices(topology: Topology) -> List[Any]:
  """The slice's devices: TPU device descriptions from libtpu, or this host's CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  if topology.platform == "cpu":
    available = jax.local_devices(backend="cpu")
    if len(available) < topology.num_devices:
      raise ValueError(f"Topology {topology.name} needs {topology.num_devices} CPU devices but "
                       f"JAX started with {len(available)}; set it before JAX starts.")
    return list(available[:topology.num_devices])
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {"chip_config_name": topology.chip_config} if topology.chip_config else {}
  try:
    described = topologies.get_topology_desc(topology_name=topology.layout, platform="tpu",
                                             **kwargs).devices
  except RuntimeError as error:  # jax.errors.JaxRuntimeError from libtpu
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"libtpu could not describe {topology.layout} ({topology.name}): "
                     f"{first.rstrip('.')}.") from None
  if len(described) != topology.num_devices:
    raise ValueError(f"libtpu describes {topology.layout} with {len(described)} devices, not "
                     f"the {topology.num_devices} of {topology.name}.")
  return list(described)
