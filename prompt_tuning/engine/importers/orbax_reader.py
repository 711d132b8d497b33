"""Reads T5X checkpoints in orbax format (and any orbax PyTree checkpoint of a params tree).

What T5X writes with orbax (checked against T5X's `checkpoints.py`, which builds an orbax
`CheckpointManager` with `step_prefix='checkpoint'` and one item named 'state' handled by a
`PyTreeCheckpointHandler`):

  <model_dir>/checkpoint_<step>/
    _CHECKPOINT_METADATA          step metadata written by the CheckpointManager
    state/                        the PyTree item: train_state.state_dict(), i.e.
      _METADATA                     {'target': params, 'state': {'step', 'param_states'},
      target.encoder.layers_0...      optional 'flax_mutables'}; arrays named by their tree
      ...                             path joined with '.'
      (or manifest.ocdbt + ocdbt.process_*/ when written with OCDBT, orbax's current default)
    dataset/ or train_ds-*        the input pipeline's state (ignored here)

T5X itself passes `use_ocdbt=False` (one zarr folder per array, the same names as the legacy
format); orbax's current default is OCDBT. Both are read through orbax's own restore API, so
the storage detail does not matter here. Verified by tests that write both variants with orbax
0.12 exactly as above (CheckpointManager, step_prefix 'checkpoint', item 'state') and read them
back. Assumed, not verified against a file written by T5X itself (none is available offline):
that T5X's tree under 'state/' is {'target': ..., 'state': ...} with no extra wrapper, as its
`FlaxOptimTrainState.state_dict()` returns.

Accepted paths: `checkpoint_<step>` (the 'state' item is used), the item folder itself, or any
orbax PyTree folder. Parameters are taken from the tree's 'target' entry, else 'params', else
the whole tree.

This project's own step folders (`<model_dir>/checkpoints/<step>/`, engine/checkpoints.py) hold
the trained parameters in a 'params' item and, when the run saved them, the frozen rest in a
'frozen' item; `open_step_folder` reads them as one checkpoint, so a fine-tuned run's step can be
the frozen base of a later run.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from prompt_tuning.engine.importers import base

ITEM_NAME = "state"  # T5X's name for the train-state item
METADATA_FILES = ("_METADATA", "_CHECKPOINT_METADATA")
_PARAMS_KEYS = ("target", "params")


def is_orbax_dir(path: str) -> bool:
  """Whether `path` looks like an orbax checkpoint step folder or PyTree item folder."""
  if not os.path.isdir(path):
    return False
  if any(os.path.exists(os.path.join(path, f)) for f in METADATA_FILES):
    return True
  return os.path.exists(os.path.join(path, ITEM_NAME, "_METADATA"))


def item_directory(path: str) -> str:
  """The PyTree item folder inside a step folder (T5X's 'state'), or `path` itself."""
  candidate = os.path.join(path, ITEM_NAME)
  if os.path.isdir(candidate) and not os.path.exists(os.path.join(path, "_METADATA")):
    return candidate
  return path


# The parameter items of this project's step folders (engine/checkpoints.py), trained first.
OWN_PARAMETER_ITEMS = ("params", "frozen")


def own_parameter_items(path: str) -> list:
  """The parameter item folders of one of this project's step folders ([] for anything else)."""
  if any(os.path.exists(os.path.join(path, name)) for name in (ITEM_NAME, "_METADATA")):
    return []
  return [os.path.join(path, name) for name in OWN_PARAMETER_ITEMS
          if os.path.exists(os.path.join(path, name, "_METADATA"))]


def _metadata_tree(directory: str) -> Any:
  metadata = ocp.PyTreeCheckpointer().metadata(directory)
  metadata = getattr(metadata, "item_metadata", metadata)  # StepMetadata in newer orbax
  return getattr(metadata, "tree", metadata)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    elif value is not None:
      flat[f"{prefix}{key}"] = value
  return flat


def _nest(flat: Mapping[str, Any], prefix: tuple) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for name, value in flat.items():
    node = tree
    keys = list(prefix) + name.split("/")
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = value
  return tree


class OrbaxReader(base.CheckpointReader):
  """Arrays of an orbax PyTree checkpoint, under our parameter names."""

  format_name = "orbax"

  def __init__(self, path: str, *, section: Optional[str] = None):
    """`section`: the top-level entry to read ('target', 'state', ...); None = the parameters."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Orbax checkpoint folder {path} does not exist.")
    self.path = item_directory(os.path.abspath(path))
    tree = _metadata_tree(self.path)
    if section is None:
      section = next((k for k in _PARAMS_KEYS if k in tree), None)
    elif section not in tree:
      raise ValueError(f"Orbax checkpoint {self.path} has no section {section!r}; it has "
                       f"{sorted(tree)}.")
    self._prefix = (section,) if section else ()
    self._metadata = _flatten(tree[section] if section else tree)

  def entries(self) -> Mapping[str, base.ArrayInfo]:
    return {name: base.ArrayInfo(shape=tuple(m.shape), dtype=np.dtype(m.dtype))
            for name, m in self._metadata.items()}

  def _restore(self, item: Dict[str, Any], restore_args: Dict[str, Any]) -> Dict[str, Any]:
    restored = ocp.PyTreeCheckpointer().restore(
        self.path,
        args=ocp.args.PyTreeRestore(item=_nest(item, self._prefix),
                                    restore_args=_nest(restore_args, self._prefix),
                                    partial_restore=True))
    for key in self._prefix:
      restored = restored[key]
    return _flatten(restored)

  def read(self, name: str, index: Optional[base.Index] = None) -> np.ndarray:
    info = self.entries()[name]
    value = self._restore({name: np.zeros((), info.dtype)},
                          {name: ocp.RestoreArgs(restore_type=np.ndarray)})[name]
    value = np.asarray(value)
    return value if index is None else value[index]

  def load(self, requests: Mapping[str, base.LoadRequest]) -> Dict[str, jax.Array]:
    """Restores all requested arrays in one orbax call; each device reads only its slice."""
    if not requests:
      return {}
    item = {name: jax.ShapeDtypeStruct(r.shape, r.dtype, sharding=r.sharding)
            for name, r in requests.items()}
    args = {name: ocp.ArrayRestoreArgs(sharding=r.sharding, dtype=r.dtype)
            for name, r in requests.items()}
    restored = self._restore(item, args)
    return {name: restored[name] for name in requests}


class MergedReader(base.CheckpointReader):
  """Several readers whose arrays are disjoint, read as one checkpoint (a step's items)."""

  format_name = "orbax"

  def __init__(self, path: str, readers: list):
    self.path = os.path.abspath(path)
    self._owner: Dict[str, base.CheckpointReader] = {}
    for reader in readers:
      for name in reader.entries():
        if name in self._owner:
          raise ValueError(f"Checkpoint {path}: {name!r} is in both {self._owner[name].path} and "
                           f"{reader.path}.")
        self._owner[name] = reader
    self._readers = readers

  def entries(self) -> Mapping[str, base.ArrayInfo]:
    return {name: info for reader in self._readers for name, info in reader.entries().items()}

  def read(self, name: str, index: Optional[base.Index] = None) -> np.ndarray:
    return self._owner[name].read(name, index)

  def load(self, requests: Mapping[str, base.LoadRequest]) -> Dict[str, jax.Array]:
    loaded: Dict[str, jax.Array] = {}
    for reader in self._readers:
      mine = {name: r for name, r in requests.items() if self._owner.get(name) is reader}
      loaded.update(reader.load(mine))
    return loaded


def open_step_folder(path: str, *, section: Optional[str] = None) -> base.CheckpointReader:
  """An orbax reader for `path`; this project's step folders read their items as one tree."""
  items = own_parameter_items(os.path.abspath(path)) if os.path.isdir(path) else []
  if not items:
    return OrbaxReader(path, section=section)
  if section not in (None, "target", "params"):
    raise ValueError(f"Step folder {path} holds parameters only (items {OWN_PARAMETER_ITEMS}); "
                     f"it has no section {section!r}.")
  return MergedReader(path, [OrbaxReader(item) for item in items])
