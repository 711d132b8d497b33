"""Reads T5X's legacy checkpoints: one msgpack `checkpoint` file plus a zarr array per tensor.

Layout of a `checkpoint_<step>/` directory as T5X wrote it before it moved to orbax:

  checkpoint                                      msgpack of {'version': 3, 'optimizer': {
                                                    'target': params, 'state': {'step': ...,
                                                    'param_states': optimizer slots}}}
  target.encoder.layers_0.attention.query.kernel/  zarr v2 array (.zarray + gzip chunks)
  ...

In the msgpack tree a large array is replaced by a tensorstore spec (a dict with `driver`,
`kvstore.path` relative to the directory, and `metadata.shape/dtype/chunks`); small ones (layer
norm scales, position bias tables, factored optimizer slots) are stored inline as arrays.
Version 0 files hold the optimizer dict at the top level; versions 1-2 stored bfloat16 as uint16,
which this reader refuses rather than misreading.

The array paths come from the msgpack file, i.e. from whoever wrote the checkpoint: each must
name an entry inside the checkpoint folder (no absolute path, no '..', no symlink leading out,
no URL) and use a zarr-family driver, or the reader refuses the checkpoint before reading any
array, so a crafted checkpoint cannot make it read other files.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from flax import serialization
import jax.numpy as jnp
import numpy as np
import tensorstore as ts

from prompt_tuning.engine.importers import base

CHECKPOINT_FILE = "checkpoint"
_ARRAY_DRIVERS = ("zarr", "zarr3", "n5")  # what T5X wrote; others could parse any file
_TS_CONTEXT = ts.Context({"file_io_concurrency": {"limit": 64}})


def _is_spec(value: Any) -> bool:
  return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """Flattens nested dicts to '/'-joined paths, stopping at arrays and tensorstore specs."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and not _is_spec(value):
      flat.update(_flatten(value, f"{name}/"))
    else:
      flat[name] = value
  return flat


def _spec_info(spec: Mapping[str, Any]) -> base.ArrayInfo:
  metadata = spec.get("metadata", {})
  dtype = spec.get("dtype") or metadata.get("dtype")
  # jnp.dtype understands both zarr codes ('<f4') and 'bfloat16', which T5X writes since v3.
  return base.ArrayInfo(shape=tuple(metadata["shape"]), dtype=np.dtype(jnp.dtype(dtype)))


def _array_file(directory: str, name: str, spec: Mapping[str, Any]) -> str:
  """The absolute path of a tensorstore spec's array inside `directory`, or a refusal.

  Raises:
    ValueError: one sentence naming the array and the path when it would leave the folder.
  """
  kvstore = spec.get("kvstore")
  relative = kvstore.get("path") if isinstance(kvstore, dict) else kvstore
  relative = relative or spec.get("path")
  where = f"T5X checkpoint {directory} gives array '{name}' the path {relative!r}"
  if spec.get("driver") not in _ARRAY_DRIVERS:
    raise ValueError(f"T5X checkpoint {directory} gives array '{name}' the tensorstore driver "
                     f"{spec.get('driver')!r}; only {list(_ARRAY_DRIVERS)} are read.")
  if not isinstance(relative, str) or not relative.strip():
    raise ValueError(f"{where}, which names no file.")
  if "://" in relative or os.path.isabs(relative):
    raise ValueError(f"{where}, which is not relative to the checkpoint folder; refusing it.")
  root = os.path.realpath(directory)
  target = os.path.realpath(os.path.join(root, relative))  # resolves '..' and symlinks
  if target == root or os.path.commonpath([root, target]) != root:
    raise ValueError(f"{where}, which leads outside the checkpoint folder; refusing it.")
  return target


class T5XLegacyReader(base.CheckpointReader):
  """Arrays of one section ('target' = parameters, 'state' = step and optimizer slots)."""

  format_name = "T5X legacy (msgpack + zarr)"

  def __init__(self, path: str, *, section: str = "target"):
    path = os.path.abspath(path)  # tensorstore's file driver wants absolute paths
    directory = os.path.dirname(path) if os.path.isfile(path) else path
    checkpoint_file = os.path.join(directory, CHECKPOINT_FILE)
    if not os.path.isfile(checkpoint_file):
      raise FileNotFoundError(f"No T5X msgpack file '{CHECKPOINT_FILE}' in {directory}.")
    self.path = directory
    with open(checkpoint_file, "rb") as f:
      contents = serialization.msgpack_restore(f.read())
    version = contents.get("version", 0)
    if version in (1, 2):
      raise ValueError(f"T5X checkpoint {directory} has format version {version}, which stored "
                       "bfloat16 as uint16; re-save it with a current T5X (version 3).")
    optimizer = contents.get("optimizer", contents) if version else contents
    if section not in optimizer:
      raise ValueError(f"T5X checkpoint {directory} has no section {section!r}; it has "
                       f"{sorted(optimizer)}.")
    self._values = _flatten(optimizer[section])
    # Every array's path is checked before anything is read.
    self._files = {name: _array_file(directory, name, value)
                   for name, value in self._values.items() if _is_spec(value)}
    self._stores: Dict[str, ts.TensorStore] = {}

  def entries(self) -> Mapping[str, base.ArrayInfo]:
    infos = {}
    for name, value in self._values.items():
      if _is_spec(value):
        infos[name] = _spec_info(value)
      elif value is not None:
        array = np.asarray(value)
        infos[name] = base.ArrayInfo(shape=array.shape, dtype=array.dtype)
    return infos

  def _store(self, name: str) -> ts.TensorStore:
    if name not in self._stores:
      spec = self._values[name]
      kvstore = {"driver": "file", "path": self._files[name]}
      self._stores[name] = ts.open({"driver": spec["driver"], "kvstore": kvstore},
                                   open=True, read=True, context=_TS_CONTEXT).result()
    return self._stores[name]

  def read(self, name: str, index: Optional[base.Index] = None) -> np.ndarray:
    value = self._values[name]
    if not _is_spec(value):
      array = np.asarray(value)
      return array if index is None else array[index]
    store = self._store(name)
    return store.read().result() if index is None else store[index].read().result()
