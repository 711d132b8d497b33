"""What every checkpoint reader offers, and how a read array lands in its sharding.

A reader lists the arrays a checkpoint holds under *our* parameter names
(`encoder/layers_0/attention/query/kernel`, ...) with their shapes and dtypes, and reads any
rectangular slice of one of them. Placement then builds each parameter with
`jax.make_array_from_callback`, so every device asks the reader only for its own slice: a host
never holds more of a sharded parameter than its devices need, and arrays are read one at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

Index = Tuple[slice, ...]

# Casts a caller may ask for with `dtype=`: between floating formats only, never to or from
# integers, so a wrongly typed checkpoint array cannot be silently reinterpreted.
BFLOAT16 = np.dtype(jax.numpy.bfloat16)
CASTABLE_DTYPES = (np.dtype("float32"), np.dtype("float16"), BFLOAT16)


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
  """Shape and stored dtype of one checkpoint array."""

  shape: Tuple[int, ...]
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class LoadRequest:
  """One parameter to place: where it goes and the dtype it must have there."""

  shape: Tuple[int, ...]
  dtype: np.dtype
  sharding: jax.sharding.Sharding


class CheckpointReader:
  """Base class of the per-format readers.

  Subclasses set `path` and `format_name`, implement `entries` and `read`, and may replace
  `load` when their storage library restores sharded arrays itself.
  """

  path: str = ""
  format_name: str = ""

  def entries(self) -> Mapping[str, ArrayInfo]:
    """All arrays of the checkpoint's parameters, by our parameter path."""
    raise NotImplementedError

  def read(self, name: str, index: Optional[Index] = None) -> np.ndarray:
    """Reads `index` (a tuple of slices; None = everything) of the array `name`."""
    raise NotImplementedError

  def load(self, requests: Mapping[str, LoadRequest]) -> Dict[str, jax.Array]:
    """Places every requested array into its sharding, reading one array at a time."""
    return {name: place(lambda idx, n=name: self.read(n, idx), request)
            for name, request in requests.items()}


def _index_key(index: Index) -> Tuple[Tuple[Any, Any, Any], ...]:
  return tuple((s.start, s.stop, s.step) for s in index)


def place(read_slice: Callable[[Index], np.ndarray], request: LoadRequest) -> jax.Array:
  """Builds a global array whose devices each get `read_slice(their index)`, cast to its dtype.

  Devices that hold the same slice (replicas) share one read.
  """
  cache: Dict[Tuple[Any, ...], np.ndarray] = {}

  def callback(index: Index) -> np.ndarray:
    key = _index_key(index)
    if key not in cache:
      cache[key] = np.asarray(read_slice(index)).astype(request.dtype, copy=False)
    return cache[key]

  return jax.make_array_from_callback(tuple(request.shape), request.sharding, callback)


def full_index(shape: Tuple[int, ...]) -> Index:
  return tuple(slice(0, n) for n in shape)


def normalize_index(index: Optional[Index], shape: Tuple[int, ...]) -> Index:
  """Turns None and open-ended slices into explicit `slice(start, stop)` per dimension."""
  if index is None:
    return full_index(shape)
  return tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
