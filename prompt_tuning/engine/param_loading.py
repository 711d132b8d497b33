"""Placing a model's parameters on the mesh, group by group, and restoring a run's steps.

Shapes come from `jax.eval_shape` of the wrapper's init; every leaf is then produced directly in
its sharding from its group's source (see `params.py`):

  * `FromBase` leaves are read from the run's base checkpoint (`RestoreConfig.path`) in one
    importer call; without a base they are initialised;
  * `FromCheckpoint` leaves are read from their own checkpoint, through the same importer (so a
    T5X, orbax or Hugging Face checkpoint, or a step folder of one of our runs, prompt-only or
    full), with the group's path-prefix mapping;
  * `FromNpy` leaves are read from a `.npy` / `.npz` file;
  * the rest (and base leaves a group allows to be missing) are initialised by one jitted init
    whose other outputs XLA drops.

Every source is checked (names, shapes) before anything is read, so a wrong checkpoint costs
nothing. `restore_step` is the one path from a run's step folder back onto the mesh, used by
resumption (with the optimizer state) and by evaluation/inference (parameters only).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np

from prompt_tuning.engine import checkpoint_import
from prompt_tuning.engine import checkpoints as checkpoints_lib
from prompt_tuning.engine import params as params_lib
from prompt_tuning.engine import partitioning
from prompt_tuning.engine.trees import flat, unflat
from prompt_tuning.prompts import npy_io

_LOG = logging.getLogger("prompt_tuning")
CHECKPOINTS_SUBDIR = "checkpoints"


# ------------------------------------------------------------------------------------------------
# Records.


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """Where the frozen base parameters come from.

  Attributes:
    path: a checkpoint in any format `checkpoint_import` reads (T5X legacy or orbax, Hugging
      Face safetensors) or a step folder of one of this project's runs; None initialises
      every parameter (training from scratch).
    format: 'auto', 't5x', 'orbax' or 'hf'.
    allow_missing: regex of further parameters the base may lack (they are initialised); the
      parameter groups already allow what they initialise (the prompt, by default).
    dtype: cast floating-point parameters to this dtype while reading (None: exact dtypes).
  """

  path: Optional[str] = None
  format: str = "auto"
  allow_missing: Optional[str] = None
  dtype: Optional[str] = None


@dataclasses.dataclass
class Placed:
  """Parameters on the mesh, split into trainable and frozen parts, with their shardings."""

  trainable: Any
  frozen: Any
  trainable_shardings: Any
  frozen_shardings: Any


# ------------------------------------------------------------------------------------------------
# Base checkpoint.


def is_run_step_dir(path: str) -> bool:
  """A step folder written by this project's CheckpointManager (items params/, run/, ...)."""
  return os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "run"))


def base_format(restore: RestoreConfig) -> str:
  """The base's format: our own step folders are orbax whatever `restore.format` says."""
  if is_run_step_dir(restore.path):
    return "orbax"
  if restore.format == "auto":
    return checkpoint_import.detect_format(restore.path)
  return restore.format


def base_checkpoint_record(restore: RestoreConfig) -> Optional[checkpoints_lib.BaseCheckpoint]:
  """How a run's checkpoints name their frozen base (path and resolved format)."""
  if restore.path is None:
    return None
  return checkpoints_lib.BaseCheckpoint(path=restore.path, format=base_format(restore))


def import_base(*, restore: RestoreConfig, abstract_params: Any, shardings: Any) -> Dict[str, Any]:
  """Reads the base into `shardings`; returns a flat dict with None for absent parameters."""
  if restore.path is None:
    raise ValueError("import_base needs RestoreConfig.path.")
  return flat(checkpoint_import.import_checkpoint(
      restore.path, abstract_params=abstract_params, shardings=shardings,
      format=base_format(restore), dtype=restore.dtype, allow_missing=restore.allow_missing))


def resolve_step_folder(path: str) -> str:
  """A run's model dir or checkpoints folder -> its latest complete step folder; else `path`."""
  for directory in (os.path.join(path, CHECKPOINTS_SUBDIR), path):
    if os.path.isdir(directory) and not is_run_step_dir(directory) and any(
        name.isdigit() and is_run_step_dir(os.path.join(directory, name))
        for name in os.listdir(directory)):
      with checkpoints_lib.CheckpointManager(directory=directory, read_only=True) as manager:
        step = manager.resumable_step(on_damage="skip")
      if step is None:
        raise FileNotFoundError(f"No complete checkpoint step in {directory}.")
      return os.path.join(directory, str(step))
  return path


# ------------------------------------------------------------------------------------------------
# Reading each kind of source.


def _exact(names: Sequence[str]) -> Optional[str]:
  return "^(?:" + "|".join(re.escape(n) for n in names) + ")$" if names else None


def _read_base(names, restore, flat_abstract, flat_shardings, allowed_missing):
  if restore.path is None or not names:
    return {name: None for name in names}
  allow = [n for n in names if n in allowed_missing or (
      restore.allow_missing and re.search(restore.allow_missing, n))]
  return flat(checkpoint_import.import_checkpoint(
      restore.path, abstract_params=unflat({n: flat_abstract[n] for n in names}),
      shardings=unflat({n: flat_shardings[n] for n in names}), format=base_format(restore),
      dtype=restore.dtype, allow_missing=_exact(allow)))


def _read_checkpoint(group, names, flat_abstract, flat_shardings):
  source = group.source
  path = resolve_step_folder(source.path)
  if not os.path.exists(path) and "://" not in path:
    raise FileNotFoundError(f"Parameter group {group.name!r}: checkpoint {source.path} does not "
                            "exist.")
  theirs = {name: source.source_name(name) for name in names}
  try:
    loaded = flat(checkpoint_import.import_checkpoint(
        path, abstract_params=unflat({theirs[n]: flat_abstract[n] for n in names}),
        shardings=unflat({theirs[n]: flat_shardings[n] for n in names}),
        format="orbax" if is_run_step_dir(path) else source.format, dtype=source.dtype))
  except ValueError as error:
    raise ValueError(f"Parameter group {group.name!r}: {error}") from None
  return {name: loaded[theirs[name]] for name in names}


def _read_npy(group, names, flat_abstract, flat_shardings):
  path = group.source.path
  if path.endswith(".npz"):
    arrays = npy_io.load_arrays_npz(path)
    absent = [n for n in names if n not in arrays]
    if absent:
      raise ValueError(f"Parameter group {group.name!r}: {path} has no array {absent[0]!r}; it "
                       f"holds {sorted(arrays)[:5]}.")
  else:
    if len(names) != 1:
      raise ValueError(f"Parameter group {group.name!r} has {len(names)} parameters; a .npy "
                       f"file ({path}) holds one; use an .npz keyed by parameter path.")
    arrays = {names[0]: npy_io.load_array_npy(path)}
  out = {}
  for name in names:
    value, want = arrays[name], flat_abstract[name]
    if tuple(value.shape) != tuple(want.shape):
      raise ValueError(f"Parameter group {group.name!r}: {name!r} has shape {tuple(value.shape)} "
                       f"in {path} but the model expects {tuple(want.shape)}.")
    out[name] = jax.device_put(np.asarray(value, want.dtype), flat_shardings[name])
  return out


def _init_selected(*, init_fn, rng, names: Sequence[str], flat_shardings, mesh, rules):
  """Initialises only `names`: XLA removes the computation of every other parameter."""
  def selected(key):
    values = flat(nn.meta.unbox(init_fn(key))["params"])
    return {name: values[name] for name in names}

  out = {name: flat_shardings[name] for name in names}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(selected, out_shardings=out)(rng)


def place_params(*, init_fn: Callable[[jax.Array], Any], assignment: params_lib.Assignment,
                 restore: RestoreConfig, mesh: jax.sharding.Mesh, rules: Any,
                 rng: jax.Array, abstract: Any = None) -> Tuple[Dict[str, Any], Any]:
  """The full parameter tree placed on the mesh, each group from its source."""
  if abstract is None:
    abstract = jax.eval_shape(init_fn, rng)["params"]
  shardings = partitioning.param_shardings(abstract_params=abstract, mesh=mesh, rules=rules)
  flat_shardings = flat(shardings)
  flat_abstract = flat(checkpoint_import.unbox(abstract))
  values: Dict[str, Any] = {}
  base_names, base_may_lack = [], set()
  for group in assignment.groups:
    names = assignment.leaves(group.name)
    if not names:
      continue
    source = group.source
    if isinstance(source, params_lib.FromBase):
      base_names += names
      base_may_lack |= {n for n in names if source.may_lack(n)}
    elif isinstance(source, params_lib.FromCheckpoint):
      values.update(_read_checkpoint(group, names, flat_abstract, flat_shardings))
    elif isinstance(source, params_lib.FromNpy):
      values.update(_read_npy(group, names, flat_abstract, flat_shardings))
    else:
      values.update({name: None for name in names})
  values.update(_read_base(base_names, restore, flat_abstract, flat_shardings, base_may_lack))
  missing = [name for name in flat_shardings if values.get(name) is None]
  if missing:
    values.update(_init_selected(init_fn=init_fn, rng=rng, names=missing,
                                 flat_shardings=flat_shardings, mesh=mesh, rules=rules))
    _LOG.info("Initialised %d parameter(s): %s", len(missing),
              ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
  return unflat({name: values[name] for name in flat_shardings}), shardings


def _read_dtype(group: params_lib.ParamGroup, name: str, restore: RestoreConfig,
                stored: np.dtype) -> np.dtype:
  """The dtype a leaf is placed in when its group's source is read (a cast only applies to
  floating-point leaves read from a checkpoint; initialised leaves keep the module's dtype)."""
  source = group.source
  if isinstance(source, params_lib.FromBase):
    cast = None if restore.path is None or source.may_lack(name) else restore.dtype
  elif isinstance(source, params_lib.FromCheckpoint):
    cast = source.dtype
  else:
    cast = None
  from prompt_tuning.engine.importers import base  # pylint: disable=g-import-not-at-top
  if cast is not None and np.dtype(stored) in base.CASTABLE_DTYPES:
    return np.dtype(cast)
  return np.dtype(stored)


def abstract_params(*, init_fn: Callable[[jax.Array], Any], assignment: params_lib.Assignment,
                    restore: RestoreConfig, mesh: jax.sharding.Mesh, rules: Any,
                    rng: jax.Array, abstract: Any = None) -> Tuple[Dict[str, Any], Any]:
  """What `place_params` would place, as `jax.ShapeDtypeStruct`s carrying their shardings.

  Nothing is read or initialised: shapes come from `jax.eval_shape` of the init, shardings from
  the logical axes, dtypes from the sources (`RestoreConfig.dtype` / `FromCheckpoint.dtype`
  casts). The ahead-of-time planner lowers the step on these.
  """
  if abstract is None:
    abstract = jax.eval_shape(init_fn, rng)["params"]
  shardings = partitioning.param_shardings(abstract_params=abstract, mesh=mesh, rules=rules)
  flat_shardings = flat(shardings)
  flat_abstract = flat(checkpoint_import.unbox(abstract))
  leaves = {}
  for name, leaf in flat_abstract.items():
    group = assignment.group(assignment.group_of[name])
    dtype = _read_dtype(group, name, restore, leaf.dtype)
    leaves[name] = jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=flat_shardings[name])
  return unflat({name: leaves[name] for name in flat_shardings}), shardings


def split_by_paths(tree: Any, trainable_paths: Sequence[str]) -> Tuple[Dict, Dict]:
  """(trainable, frozen) nested dicts of any tree keyed like the parameters."""
  selected = set(trainable_paths)
  items = flat(tree)
  return (unflat({k: v for k, v in items.items() if k in selected}),
          unflat({k: v for k, v in items.items() if k not in selected}))


def split_placed(*, params: Any, shardings: Any,
                 assignment: Optional[params_lib.Assignment] = None,
                 patterns: Optional[Sequence[str]] = None) -> Placed:
  """Splits placed parameters (and their shardings) by an assignment or trainable regexes."""
  if (assignment is None) == (patterns is None):
    raise ValueError("split_placed needs exactly one of assignment and patterns.")
  if assignment is None:
    assignment = params_lib.resolve(params_lib.groups_from_patterns(patterns), list(flat(params)))
  trainable, frozen = split_by_paths(params, assignment.trainable_paths)
  trainable_sh, frozen_sh = split_by_paths(shardings, assignment.trainable_paths)
  return Placed(trainable=trainable, frozen=frozen, trainable_shardings=trainable_sh,
                frozen_shardings=frozen_sh)


# ------------------------------------------------------------------------------------------------
# A run's own steps.


def restore_step(manager: checkpoints_lib.CheckpointManager, *, placed: Placed,
                 step: Optional[int] = None, run: Optional[Mapping[str, Any]] = None,
                 state_target: Any = None,
                 on_damage: Optional[str] = None) -> Tuple[Placed, Any, Optional[int]]:
  """Reads a run's step over `placed`: its trainable parameters (and the frozen ones of a full
  checkpoint), and the whole train state when `state_target` is given.

  The one restore path of resumption and of evaluation/inference. With `on_damage` (resuming)
  the newest step that verifies is used and newer damaged steps are handled as
  `CheckpointManager.restore_resumable` says; otherwise `step` (default: the latest) is read
  and a damaged one stops with one sentence.

  Returns the updated `Placed`, the restored TrainState (None without `state_target`) and the
  step read (None when resuming found no usable step: nothing changed).
  """
  frozen_target = None
  if flat(placed.frozen):
    frozen_target = checkpoints_lib.abstract_target(placed.frozen, placed.frozen_shardings)
  if on_damage is None:
    check_step_shapes(manager, placed=placed, step=step)
  if on_damage is not None:
    restored = manager.restore_resumable(state_target=state_target, frozen_target=frozen_target,
                                         on_damage=on_damage)
    if restored is None:
      return placed, None, None
  else:
    run = run if run is not None else manager.run_record(step=step)
    if run.get("contents") != "full":
      frozen_target = None
    if state_target is not None:
      restored = manager.restore(state_target=state_target, frozen_target=frozen_target,
                                 step=step)
    else:
      restored = manager.restore(
          params_target=checkpoints_lib.abstract_target(placed.trainable,
                                                        placed.trainable_shardings),
          frozen_target=frozen_target, step=step)
  placed = dataclasses.replace(
      placed, trainable=restored.params,
      frozen=restored.frozen if restored.frozen is not None else placed.frozen)
  return placed, restored.state, restored.step


def check_step_shapes(manager: checkpoints_lib.CheckpointManager, *, placed: Placed,
                      step: Optional[int]) -> None:
  """Stops with one sentence when a step's trained parameters do not fit the model's shapes.

  Orbax would otherwise fail deep inside the restore; the sentence names the parameter and,
  for a prompt, the gin macro that sets its length.
  """
  step = manager.latest_step() if step is None else step
  folder = os.path.join(str(manager.directory), str(step), "params")
  if step is None or not os.path.isdir(folder):
    return  # the restore itself reports a missing step
  from prompt_tuning.engine.importers import orbax_reader  # pylint: disable=g-import-not-at-top
  stored = orbax_reader.OrbaxReader(folder).entries()
  for name, leaf in flat(placed.trainable).items():
    if name in stored and tuple(stored[name].shape) != tuple(leaf.shape):
      hint = ""
      if params_lib.is_hook_path(name) and len(leaf.shape) >= 2:
        hint = f"; set --gin.PROMPT_LENGTH={stored[name].shape[-2]} (the run's prompt length)"
      raise ValueError(f"Parameter {name!r} has shape {tuple(stored[name].shape)} in step {step} "
                       f"of {manager.directory} but the model builds {tuple(leaf.shape)}{hint}.")

