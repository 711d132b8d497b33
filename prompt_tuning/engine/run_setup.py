"""Setting a run up: mesh, parameter groups placed on it, train state, checkpoints, resumption.

`setup` resolves the run's parameter groups (`params.py`) against the model's parameter tree,
places every leaf from its group's source (`param_loading.place_params`), splits the tree into
the trainable part (held in the `TrainState`, with optimizer state only for it) and the frozen
part (a separate, never-donated step argument), and opens the checkpoint manager. `resume`
continues from the model dir's latest complete step; `load_for_inference` rebuilds the same
placement from a run's record and reads a step over it. Both use `param_loading.restore_step`.
`abstract_setup` builds the same Session on `jax.ShapeDtypeStruct`s (nothing read, initialised or
allocated) for any mesh, so the planner (`engine/planning.py`) can compile a step for a TPU pod
from a machine without one.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning.engine import checkpoints as checkpoints_lib
from prompt_tuning.engine import params as params_lib
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import train_state as train_state_lib
from prompt_tuning.engine.param_loading import CHECKPOINTS_SUBDIR
from prompt_tuning.engine.param_loading import Placed
from prompt_tuning.engine.param_loading import RestoreConfig
from prompt_tuning.engine.param_loading import abstract_params
from prompt_tuning.engine.param_loading import base_checkpoint_record
from prompt_tuning.engine.trees import flat
from prompt_tuning.engine.param_loading import place_params
from prompt_tuning.engine.param_loading import restore_step
from prompt_tuning.engine.param_loading import split_placed
from prompt_tuning.engine.trees import unflat

_LOG = logging.getLogger("prompt_tuning")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often and what to save.

  Attributes:
    period: save every this many steps (and always at the last step).
    keep: keep this many latest checkpoints (None: all).
    keep_best: also keep this many best checkpoints by `best_metric`.
    best_metric: an evaluation metric name, 'task/metric' (e.g. 'rte/accuracy').
    best_mode: 'max' or 'min'.
    save_frozen: also save the frozen parameters. None: only when some frozen parameters
      cannot be read again from their sources (they were initialised).
    export_prompts: write each group's export (prompts as `.npy` and a PEFT adapter; other
      groups as `.npz` / safetensors) at every save.
    async_save: write checkpoints in a background thread.
    on_damage: on resume, a damaged or uncommitted newest step is moved aside ('quarantine',
      then the previous verified step is used) or stops the run ('stop').
  """

  period: int = 1000
  keep: Optional[int] = None
  keep_best: Optional[int] = None
  best_metric: Optional[str] = None
  best_mode: str = "max"
  save_frozen: Optional[bool] = None
  export_prompts: bool = True
  async_save: bool = True
  on_damage: str = "quarantine"

  def __post_init__(self):
    if self.period < 1:
      raise ValueError(f"CheckpointConfig.period must be positive, got {self.period}.")
    if self.on_damage not in ("quarantine", "stop"):
      raise ValueError(f"CheckpointConfig.on_damage must be 'quarantine' or 'stop', got "
                       f"{self.on_damage!r}.")


@dataclasses.dataclass
class Session:
  """Everything the loop needs, built by `setup`."""

  model: Any
  mesh: jax.sharding.Mesh
  rules: Any
  state: train_state_lib.TrainState
  placed: Placed
  state_shardings: Any
  checkpoints: checkpoints_lib.CheckpointManager
  save_frozen: bool
  model_dir: str
  base_path: Optional[str]
  assignment: Optional[params_lib.Assignment] = None
  optimizer: Any = None


def init_fn_for(model: Any, lengths: Mapping[str, int]):
  """`rng -> boxed variables` of the wrapped module, for model-feature `lengths`."""
  return lambda rng: model.initial_variables(rng, lengths)


def assign_groups(*, init_fn, rng: jax.Array, groups: Sequence[params_lib.ParamGroup]
                  ) -> Tuple[params_lib.Assignment, Any]:
  """Resolves the groups against the model's parameter paths; returns it and the abstract tree."""
  abstract = jax.eval_shape(init_fn, rng)["params"]
  return params_lib.resolve(groups, list(flat(abstract))), abstract


def place_groups(*, model: Any, lengths: Mapping[str, int],
                 groups: Sequence[params_lib.ParamGroup], restore: RestoreConfig,
                 mesh: jax.sharding.Mesh, rules: Any, rng: jax.Array,
                 require_trainable: bool = False) -> Tuple[params_lib.Assignment, Placed]:
  """Resolves the groups, places every leaf from its group's source and splits the tree into
  trainable and frozen parts (training and inference both start here).

  With `require_trainable`, a run whose groups train nothing stops before anything is read.
  """
  return _placed_groups(place_params, model=model, lengths=lengths, groups=groups,
                        restore=restore, mesh=mesh, rules=rules, rng=rng,
                        require_trainable=require_trainable)


def abstract_groups(*, model: Any, lengths: Mapping[str, int],
                    groups: Sequence[params_lib.ParamGroup], restore: RestoreConfig,
                    mesh: jax.sharding.Mesh, rules: Any, rng: jax.Array,
                    require_trainable: bool = False) -> Tuple[params_lib.Assignment, Placed]:
  """`place_groups` without reading or initialising anything: every leaf of the returned
  `Placed` is a `jax.ShapeDtypeStruct` with its sharding (for ahead-of-time compilation)."""
  return _placed_groups(abstract_params, model=model, lengths=lengths, groups=groups,
                        restore=restore, mesh=mesh, rules=rules, rng=rng,
                        require_trainable=require_trainable)


def _placed_groups(place, *, model, lengths, groups, restore, mesh, rules, rng,
                   require_trainable):
  init_fn = init_fn_for(model, lengths)
  assignment, abstract = assign_groups(init_fn=init_fn, rng=rng, groups=groups)
  if require_trainable and not assignment.trainable_paths:
    raise ValueError("No parameter is trainable: the model has no input hook for the default "
                     "prompt group (include a gin/prompts/ file) and no other group is trainable.")
  params, shardings = place(init_fn=init_fn, assignment=assignment, restore=restore,
                            mesh=mesh, rules=rules, rng=rng, abstract=abstract)
  return assignment, split_placed(params=params, shardings=shardings, assignment=assignment)


def load_params(*, model: Any, lengths: Mapping[str, int], restore: RestoreConfig,
                mesh: jax.sharding.Mesh, rules: Any, rng: jax.Array,
                groups: Optional[Sequence[params_lib.ParamGroup]] = None) -> Tuple[Any, Any]:
  """The full parameter tree placed on the mesh (default: one group read from the base)."""
  init_fn = init_fn_for(model, lengths)
  assignment, abstract = assign_groups(init_fn=init_fn, rng=rng,
                                       groups=groups or params_lib.everything_group())
  return place_params(init_fn=init_fn, assignment=assignment, restore=restore, mesh=mesh,
                      rules=rules, rng=rng, abstract=abstract)


def _compatible_shardings(abstract: Any, shardings: Any, mesh: jax.sharding.Mesh) -> Any:
  """Replicates state leaves whose parameter-derived sharding does not fit their shape.

  Optimizer slots can be parameter-*structured* without being parameter-*shaped* (Adafactor's
  row/column statistics, its `(1,)` placeholders for unfactored parameters); a parameter's
  sharding cannot apply to those, so they are replicated (they are small).
  """
  replicated = NamedSharding(mesh, PartitionSpec())

  def fit(leaf, sharding):
    spec = getattr(sharding, "spec", None)
    if spec is None or len(spec) > len(leaf.shape):
      return replicated
    for size, axes_ in zip(leaf.shape, spec):
      names = () if axes_ is None else (axes_ if isinstance(axes_, tuple) else (axes_,))
      if size % int(np.prod([mesh.shape[n] for n in names] or [1])):
        return replicated
    return sharding

  return jax.tree.map(fit, abstract, shardings)


def create_state(*, placed: Placed, optimizer: optax.GradientTransformation, rng: jax.Array,
                 mesh: jax.sharding.Mesh) -> Tuple[train_state_lib.TrainState, Any]:
  """A fresh TrainState (optimizer slots created in their shardings) and its shardings."""
  create = _state_constructor(optimizer, rng)
  _, shardings = abstract_state(placed=placed, optimizer=optimizer, rng=rng, mesh=mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(create, in_shardings=(placed.trainable_shardings,),
                    out_shardings=shardings)(placed.trainable)
  return state, shardings


def _state_constructor(optimizer: optax.GradientTransformation, rng: jax.Array):
  return lambda params: train_state_lib.create_train_state(  # noqa: E731
      trainable_params=params, optimizer=optimizer, rng=rng)


def abstract_state(*, placed: Placed, optimizer: optax.GradientTransformation, rng: jax.Array,
                   mesh: jax.sharding.Mesh) -> Tuple[train_state_lib.TrainState, Any]:
  """The TrainState `create_state` would build, as `jax.ShapeDtypeStruct`s with their
  shardings, and the shardings; nothing is allocated (works on an abstract `placed` too)."""
  shapes = jax.eval_shape(_state_constructor(optimizer, rng), placed.trainable)
  shardings = _compatible_shardings(
      shapes,
      train_state_lib.state_shardings(optimizer=optimizer, trainable_params=placed.trainable,
                                      trainable_shardings=placed.trainable_shardings, mesh=mesh),
      mesh)
  state = jax.tree.map(lambda leaf, sharding: jax.ShapeDtypeStruct(
      leaf.shape, leaf.dtype, sharding=sharding), shapes, shardings)
  return state, shardings


def group_optimizer(assignment: params_lib.Assignment,
                    default: optax.GradientTransformation) -> optax.GradientTransformation:
  """The run's optimizer, or one that gives each group with its own optimizer that one.

  Without per-group optimizers the run's optimizer is used as it is, so the optimizer state
  (and checkpoints) of ordinary runs keep their structure.
  """
  own = {g.name: g.optimizer for g in assignment.groups if g.trainable and g.optimizer}
  if not own:
    return default
  default_label = "__run__"
  while default_label in own:
    default_label += "_"

  # A tree of labels, not a function: optax's state-sharding helpers call a label function with
  # a placeholder instead of the parameters.
  labels = unflat({path: (assignment.group_of[path] if assignment.group_of[path] in own
                          else default_label) for path in assignment.trainable_paths})
  return optax.multi_transform({**own, default_label: default}, labels)


def resolve_save_frozen(config: CheckpointConfig, restore: RestoreConfig, placed: Placed,
                        assignment: Optional[params_lib.Assignment] = None) -> bool:
  """Whether checkpoints must hold the frozen parameters to make resumption possible: they
  must when some frozen leaf was initialised rather than read from a source."""
  frozen = flat(placed.frozen)
  if config.save_frozen is not None:
    return config.save_frozen and bool(frozen)
  if assignment is None:
    return restore.path is None and bool(frozen)
  for path in frozen:
    source = assignment.source_of(path)
    if isinstance(source, params_lib.FromInit):
      return True
    if isinstance(source, params_lib.FromBase) and (restore.path is None or source.may_lack(path)):
      return True
  return False


def open_checkpoints(*, model_dir: str, config: CheckpointConfig, restore: RestoreConfig,
                     save_frozen: bool,
                     run_metadata: Mapping[str, Any]) -> checkpoints_lib.CheckpointManager:
  return checkpoints_lib.CheckpointManager(
      directory=os.path.join(model_dir, CHECKPOINTS_SUBDIR), keep_latest=config.keep,
      keep_best=config.keep_best, best_metric=config.best_metric, best_mode=config.best_mode,
      base_checkpoint=base_checkpoint_record(restore), save_frozen=save_frozen,
      run_metadata=run_metadata, async_save=config.async_save)


def check_same_base(*, model_dir: str, restore: RestoreConfig) -> None:
  """Refuses to resume a run on a different base than its checkpoints were trained on.

  Done before anything is loaded, so the mistake costs nothing and damages nothing.
  """
  directory = os.path.join(model_dir, CHECKPOINTS_SUBDIR)
  if restore.path is None or not os.path.isdir(directory):
    return
  with checkpoints_lib.CheckpointManager(directory=directory, read_only=True) as manager:
    step = manager.resumable_step(on_damage="skip")
    if step is None:
      return
    run = manager.run_record(step=step)
  recorded = (run.get("base_checkpoint") or {}).get("path")
  if recorded is not None and os.path.abspath(recorded) != os.path.abspath(restore.path):
    raise ValueError(f"The checkpoints in {directory} were trained on the base {recorded}, "
                     f"not on {restore.path}; use a new model_dir or the original base.")


def resume(session: Session, *, on_damage: str = "quarantine") -> Session:
  """Continues from the newest checkpoint in the model dir that verifies, if there is one.

  Newer steps that are damaged or were never committed are moved aside (`on_damage=
  'quarantine'`, one log sentence each, nothing deleted) or stop the run (`'stop'`); see
  `CheckpointManager.restore_resumable`.
  """
  ckpt = session.checkpoints
  target = checkpoints_lib.abstract_target(session.state, session.state_shardings)
  placed, state, step = restore_step(ckpt, placed=session.placed, state_target=target,
                                     on_damage=on_damage)
  if step is None:
    return session
  _LOG.info("Resuming from step %d of %s (data position %d).", step, ckpt.directory,
            int(state.data_position))
  return dataclasses.replace(session, state=state, placed=placed)


def run_metadata(assignment: params_lib.Assignment, seed: int) -> dict:
  """What every step records about the run: its groups (so inference can rebuild them)."""
  trainable = [g.pattern if g.pattern is not None else ".*"
               for g in assignment.groups if g.trainable]
  return {"trainable_patterns": trainable, "param_groups": assignment.describe(), "seed": seed}


def setup(*, model: Any, lengths: Mapping[str, int], mesh_config: partitioning.MeshConfig,
          restore: RestoreConfig, optimizer: optax.GradientTransformation,
          checkpoint: CheckpointConfig, model_dir: str, seed: int,
          groups: Optional[Sequence[params_lib.ParamGroup]] = None,
          patterns: Optional[Sequence[str]] = None) -> Session:
  """Mesh, parameters (each group from its source), fresh state, checkpoint manager.

  `groups` (or the older `patterns`, trainable regexes) say what is trained; the default is
  prompt tuning. Resumption from the model dir's own checkpoints is a separate step (`resume`).
  """
  groups = params_lib.choose_groups(groups, patterns)
  check_same_base(model_dir=model_dir, restore=restore)
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  _LOG.info("Mesh %s over %d devices in %d process(es).",
            " x ".join(f"{name}={size}" for name, size in mesh.shape.items()), mesh.size,
            jax.process_count())
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  assignment, placed = place_groups(model=model, lengths=lengths, groups=groups,
                                    restore=restore, mesh=mesh, rules=rules, rng=init_rng,
                                    require_trainable=True)
  optimizer = group_optimizer(assignment, optimizer)
  state, state_shardings = create_state(placed=placed, optimizer=optimizer, rng=train_rng,
                                        mesh=mesh)
  save_frozen = resolve_save_frozen(checkpoint, restore, placed, assignment)
  manager = open_checkpoints(model_dir=model_dir, config=checkpoint, restore=restore,
                             save_frozen=save_frozen,
                             run_metadata=run_metadata(assignment, seed))
  return Session(model=model, mesh=mesh, rules=rules, state=state, placed=placed,
                 state_shardings=state_shardings, checkpoints=manager, save_frozen=save_frozen,
                 model_dir=model_dir, base_path=restore.path, assignment=assignment,
                 optimizer=optimizer)


def abstract_setup(*, model: Any, lengths: Mapping[str, int], mesh: jax.sharding.Mesh,
                   rules: Any, restore: RestoreConfig, optimizer: optax.GradientTransformation,
                   seed: int, groups: Optional[Sequence[params_lib.ParamGroup]] = None,
                   patterns: Optional[Sequence[str]] = None) -> Session:
  """`setup` on abstract values, for a given mesh (e.g. of a TPU topology no process is on).

  The Session's `state` and `placed` hold `jax.ShapeDtypeStruct`s with shardings; it has no
  checkpoint manager. Nothing is read, initialised or allocated, so a step lowered on it can be
  compiled for a pod from a machine with no accelerator.
  """
  groups = params_lib.choose_groups(groups, patterns)
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  assignment, placed = abstract_groups(model=model, lengths=lengths, groups=groups,
                                       restore=restore, mesh=mesh, rules=rules, rng=init_rng,
                                       require_trainable=True)
  optimizer = group_optimizer(assignment, optimizer)
  state, state_shardings = abstract_state(placed=placed, optimizer=optimizer, rng=train_rng,
                                          mesh=mesh)
  return Session(model=model, mesh=mesh, rules=rules, state=state, placed=placed,
                 state_shardings=state_shardings, checkpoints=None, save_frozen=False,
                 model_dir="", base_path=restore.path, assignment=assignment,
                 optimizer=optimizer)


# ------------------------------------------------------------------------------------------------
# Inference (eval / infer entry points).


@dataclasses.dataclass
class InferenceSetup:
  mesh: jax.sharding.Mesh
  rules: Any
  placed: Placed
  step: Optional[int]
  base_path: Optional[str]
  assignment: Optional[params_lib.Assignment] = None


def checkpoints_dir(path: str) -> str:
  """A run's model dir or its checkpoints folder -> the checkpoints folder."""
  nested = os.path.join(path, CHECKPOINTS_SUBDIR)
  return nested if os.path.isdir(nested) else path


def recorded_groups(run: Mapping[str, Any]) -> Optional[Tuple[params_lib.ParamGroup, ...]]:
  """The parameter groups a run recorded (runs from before groups recorded patterns only)."""
  metadata = run.get("run_metadata") or {}
  if metadata.get("param_groups"):
    return tuple(params_lib.group_from_record(g) for g in metadata["param_groups"])
  if metadata.get("trainable_patterns"):
    return params_lib.groups_from_patterns(metadata["trainable_patterns"])
  return None


def load_for_inference(*, model: Any, lengths: Mapping[str, int],
                       mesh_config: partitioning.MeshConfig, restore: RestoreConfig,
                       checkpoint_dir: Optional[str] = None, step: Optional[int] = None,
                       patterns: Optional[Sequence[str]] = None,
                       groups: Optional[Sequence[params_lib.ParamGroup]] = None,
                       seed: int = 0) -> InferenceSetup:
  """Parameters for evaluation: each group from its source, then a run's step over them.

  With `checkpoint_dir` (a run's model dir or its checkpoints folder) the step (latest by
  default) supplies the trained parameters, and its record supplies the base path and the
  parameter groups when they are not given. Without it, the model is what the groups' sources
  produce (e.g. a prompt read from a `.npy` file by its initialiser).
  """
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  manager, run = None, {}
  if checkpoint_dir is not None:
    manager = checkpoints_lib.CheckpointManager(directory=checkpoints_dir(checkpoint_dir),
                                                read_only=True)
    run = manager.run_record(step=step)
    step = int(run["step"])
    recorded = (run.get("base_checkpoint") or {}).get("path")
    if restore.path is None and recorded is not None:
      restore = dataclasses.replace(restore, path=recorded)
    if groups is None and patterns is None:
      groups = recorded_groups(run)
  groups = params_lib.choose_groups(groups, patterns)
  if manager is not None:  # the step supplies the trained values: do not read their sources
    groups = tuple(dataclasses.replace(g, source=params_lib.FromInit(), optimizer=None)
                   if g.trainable else g for g in groups)
  assignment, placed = place_groups(model=model, lengths=lengths, groups=groups,
                                    restore=restore, mesh=mesh, rules=rules,
                                    rng=jax.random.PRNGKey(seed))
  if manager is not None:
    placed, _, _ = restore_step(manager, placed=placed, step=step, run=run)
    manager.close()
  return InferenceSetup(mesh=mesh, rules=rules, placed=placed, step=step,
                        base_path=restore.path, assignment=assignment)
