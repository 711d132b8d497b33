"""Loads pretrained weights from T5X (legacy and orbax) and Hugging Face checkpoints.

One entry point serves the trainer: `import_checkpoint(path, abstract_params=..., shardings=...)`
reads exactly the parameters the model declares, checks each against the checkpoint (name, shape,
dtype), and places each straight into its target sharding, so each device reads only its slice.
Parameters the checkpoint lacks are an error unless they match `allow_missing` (e.g. the prompt,
which a base model does not have); those come back as None for the caller's initialiser
(`fill_missing`).
Checkpoint arrays the model does not declare (optimizer slots, an unused `lm_head`) are ignored.

Formats (`format='auto'` picks by what the folder holds):
  * 't5x':    `checkpoint_<step>/checkpoint` msgpack + zarr folders (`importers/t5x_legacy.py`).
  * 'orbax':  a T5X orbax step folder, one of this project's step folders (its 'params' and
              'frozen' items together) or any orbax PyTree folder (`importers/orbax_reader.py`).
  * 'hf':     `config.json` + `model.safetensors[.index.json]` of T5/mT5 (`importers/hf_t5.py`).
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Dict, Mapping, Optional, Union

import flax
from flax.core import meta
import jax
import numpy as np

from prompt_tuning.engine import trees
from prompt_tuning.engine.importers import base
from prompt_tuning.engine.importers import hf_t5
from prompt_tuning.engine.importers import orbax_reader
from prompt_tuning.engine.importers import t5x_legacy
from prompt_tuning.engine.importers.hf_t5 import config_from_hf  # re-exported

__all__ = ["import_checkpoint", "unbox", "read_checkpoint_array", "fill_missing", "detect_format",
           "open_checkpoint", "config_from_hf"]

PyTree = Any
FORMATS = ("t5x", "orbax", "hf")


def detect_format(path: str) -> str:
  """'t5x', 'orbax' or 'hf', from the files at `path`."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint path {path} does not exist.")
  if orbax_reader.is_orbax_dir(path):
    return "orbax"
  if (os.path.basename(path) == t5x_legacy.CHECKPOINT_FILE and os.path.isfile(path)) or \
      os.path.isfile(os.path.join(path, t5x_legacy.CHECKPOINT_FILE)):
    return "t5x"
  if os.path.isfile(os.path.join(path, hf_t5.CONFIG_FILE)) and any(
      os.path.isfile(os.path.join(path, f)) for f in (hf_t5.WEIGHTS_FILE, hf_t5.INDEX_FILE)):
    return "hf"
  raise ValueError(
      f"Cannot tell the format of checkpoint {path}: expected a T5X 'checkpoint' msgpack file, "
      f"orbax metadata ({', '.join(orbax_reader.METADATA_FILES)} or a 'state' item) or "
      f"'{hf_t5.CONFIG_FILE}' with '{hf_t5.WEIGHTS_FILE}'.")


def open_checkpoint(path: str, *, format: str = "auto",  # pylint: disable=redefined-builtin
                    section: Optional[str] = None) -> base.CheckpointReader:
  """A reader for the checkpoint at `path`.

  `section` selects T5X's 'state' (step, optimizer slots) instead of the parameters.
  """
  if format == "auto":
    format = detect_format(path)
  if format not in FORMATS:
    raise ValueError(f"Unknown checkpoint format {format!r}; expected 'auto' or one of {FORMATS}.")
  if format == "hf":
    if section not in (None, "target"):
      raise ValueError(f"Hugging Face checkpoint {path} holds parameters only, no {section!r}.")
    return hf_t5.HFT5Reader(path)
  if format == "orbax":
    return orbax_reader.open_step_folder(path, section=section)
  return t5x_legacy.T5XLegacyReader(path, section=section or "target")


def unbox(tree: PyTree) -> PyTree:
  """Plain leaves from a tree that may hold flax partitioning boxes; dicts stay dicts."""
  def unbox(x):
    if isinstance(x, meta.Partitioned):
      return x.value
    return x.unbox() if isinstance(x, meta.AxisMetadata) else x
  tree = jax.tree_util.tree_map(unbox, tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


_flatten = trees.flat
_unflatten = trees.unflat


def _default_sharding(leaf: Any) -> jax.sharding.Sharding:
  sharding = getattr(leaf, "sharding", None)
  if isinstance(sharding, jax.sharding.Sharding):
    return sharding
  return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _target_dtype(name: str, stored: np.dtype, expected: np.dtype, cast: Optional[np.dtype],
                  path: str) -> np.dtype:
  """The dtype a parameter is placed in; raises when the checkpoint's dtype cannot be used."""
  if cast is not None and stored in base.CASTABLE_DTYPES and expected in base.CASTABLE_DTYPES:
    return cast
  if stored != expected:
    hint = ("; pass dtype= to cast floating-point parameters" if stored in base.CASTABLE_DTYPES
            and expected in base.CASTABLE_DTYPES else "")
    raise ValueError(f"Parameter '{name}' is {stored.name} in checkpoint {path} but the model "
                     f"expects {expected.name}{hint}.")
  return expected


def _missing_error(missing: list, available: Mapping[str, Any], path: str,
                   allow_missing: Optional[str]) -> ValueError:
  closest = difflib.get_close_matches(missing[0], list(available), n=1)
  hint = f" (closest name in the checkpoint: '{closest[0]}')" if closest else ""
  allowed = f" and do not match allow_missing={allow_missing!r}" if allow_missing else ""
  if len(missing) == 1:
    return ValueError(f"Parameter '{missing[0]}' is missing from checkpoint {path}{allowed}"
                      f"{hint}.")
  shown = ", ".join(f"'{m}'" for m in missing[:5]) + (", ..." if len(missing) > 5 else "")
  return ValueError(f"{len(missing)} parameters are missing from checkpoint {path}{allowed}: "
                    f"{shown}{hint}.")


def import_checkpoint(
    path: str,
    *,
    abstract_params: PyTree,
    shardings: Union[PyTree, jax.sharding.Sharding, None] = None,
    format: str = "auto",  # pylint: disable=redefined-builtin
    dtype: Any = None,
    allow_missing: Optional[str] = None,
) -> Dict[str, Any]:
  """Reads the parameters of `abstract_params` from a checkpoint, each into its sharding.

  Args:
    path: checkpoint folder (T5X `checkpoint_<step>`, orbax item/step folder, HF model folder).
    abstract_params: the model's params collection: nested dicts of anything with `.shape` and
      `.dtype` (`jax.eval_shape(model.init, ...)['params']`), flax partitioning boxes allowed.
    shardings: a matching tree of `jax.sharding.Sharding`, one sharding for all, or None (then
      each leaf's own `.sharding` if it has one, else this host's first device).
    format: 'auto', 't5x', 'orbax' or 'hf'.
    dtype: when given, floating-point parameters (float32 / bfloat16 / float16 on both sides)
      are cast to it while reading. When None, every stored dtype must equal the model's.
    allow_missing: regex (`re.search` on 'encoder/layers_0/...' paths) of parameters that may be
      absent (e.g. the input hook's); they come back as None (see `fill_missing`).

  Returns:
    Plain nested dicts like `abstract_params` (unboxed) holding `jax.Array`s, or None for
    allowed-missing parameters.

  Raises:
    ValueError: naming the first offending parameter and the checkpoint, for a missing
      parameter, a shape mismatch or a dtype mismatch. Nothing is read before all checks pass.
  """
  reader = open_checkpoint(path, format=format)
  wanted = _flatten(unbox(abstract_params))
  if isinstance(shardings, jax.sharding.Sharding):
    sharding_of = {name: shardings for name in wanted}
  elif shardings is not None:
    sharding_of = _flatten(unbox(shardings))
  else:
    sharding_of = {name: _default_sharding(leaf) for name, leaf in wanted.items()}
  cast = None if dtype is None else np.dtype(dtype)
  if cast is not None and cast not in base.CASTABLE_DTYPES:
    raise ValueError(f"dtype={cast.name} is not a floating-point parameter dtype; expected "
                     "float32, bfloat16 or float16.")

  available = reader.entries()
  missing = [n for n in wanted if n not in available
             and not (allow_missing and re.search(allow_missing, n))]
  if missing:
    raise _missing_error(missing, available, reader.path, allow_missing)

  requests = {}
  for name, leaf in wanted.items():
    if name not in available:
      continue
    info = available[name]
    if tuple(info.shape) != tuple(leaf.shape):
      raise ValueError(f"Parameter '{name}' has shape {tuple(info.shape)} in checkpoint "
                       f"{reader.path} but the model expects {tuple(leaf.shape)}.")
    if name not in sharding_of:
      raise ValueError(f"shardings has no entry for parameter '{name}'.")
    target = _target_dtype(name, np.dtype(info.dtype), np.dtype(leaf.dtype), cast, reader.path)
    requests[name] = base.LoadRequest(shape=tuple(leaf.shape), dtype=target,
                                      sharding=sharding_of[name])

  loaded = reader.load(requests)
  return _unflatten({name: loaded.get(name) for name in wanted})


def fill_missing(imported: PyTree, initialised: PyTree) -> PyTree:
  """Replaces the None leaves of `import_checkpoint`'s result by the same leaves of
  `initialised` (e.g. freshly initialised prompt variables)."""
  init = _flatten(unbox(initialised))
  merged = {}
  for name, value in _flatten(imported).items():
    if value is None:
      if name not in init:
        raise ValueError(f"Parameter '{name}' is neither in the checkpoint nor initialised.")
      value = init[name]
    merged[name] = value
  return _unflatten(merged)


def read_checkpoint_array(checkpoint_path: str, param_path: str, *,
                          format: str = "auto",  # pylint: disable=redefined-builtin
                          section: Optional[str] = None) -> np.ndarray:
  """Reads one array by our parameter path (e.g. 'token_embedder/embedding' or the prompt)
  into host memory. `section='state'` reads T5X optimizer state instead
  (e.g. 'step')."""
  reader = open_checkpoint(checkpoint_path, format=format, section=section)
  available = reader.entries()
  if param_path not in available:
    raise _missing_error([param_path], available, reader.path, None)
  return np.asarray(reader.read(param_path))
