"""The trainer, in three parts: setup (mesh, parameters, state), the jitted step, the loop.

Setup places every parameter directly into its sharding: shapes come from `jax.eval_shape` of
the model's init, the frozen base is read from `RestoreConfig.path` straight into those
shardings, and only the parameters the base lacks (the prompt) are initialised, by a jitted
init whose other outputs XLA drops. The tree is then split by the trainable-parameter
patterns; the optimizer state exists only for the trainable part.

The step is `train_state.make_train_step`'s pure function, jitted with in/out shardings; the
frozen tree is a separate, never-donated argument, so it stays bit-identical to the base.

The loop feeds per-host batches, reports metrics, evaluates, and saves checkpoints (trainable
state, optimizer state, step, RNG and data position; see `checkpoints.CheckpointManager`). A
run restarted in the same `model_dir` resumes from its latest complete checkpoint and reads
the data stream from the saved position, so it ends exactly where an uninterrupted run would.
A non-finite loss stops the run before anything is saved from the bad steps.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning.engine import checkpoint_import
from prompt_tuning.engine import checkpoints as checkpoints_lib
from prompt_tuning.engine import export as export_lib
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import reporting
from prompt_tuning.engine import train_state as train_state_lib

_LOG = logging.getLogger("prompt_tuning")
CHECKPOINTS_SUBDIR = "checkpoints"
NUMPY_EXPORT_SUBDIR = "numpy_checkpoints"
PEFT_EXPORT_SUBDIR = "peft_adapters"
_PROMPT_PATH = "input_hook/prompt"


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; training stopped before saving anything after it."""


# ------------------------------------------------------------------------------------------------
# Configuration records (plain dataclasses; gin binds them at the entry points).


@dataclasses.dataclass(frozen=True)
class RestoreConfig:
  """Where the frozen base parameters come from.

  Attributes:
    path: a checkpoint in any format `checkpoint_import` reads (T5X legacy or orbax, Hugging
      Face safetensors) or a step folder of one of this project's runs; None initialises
      every parameter (training from scratch).
    format: 'auto', 't5x', 'orbax' or 'hf'.
    allow_missing: regex of parameters the base may lack; they come from their initialisers
      (default: the input hook, i.e. the prompt).
    dtype: cast floating-point parameters to this dtype while reading (None: exact dtypes).
  """

  path: Optional[str] = None
  format: str = "auto"
  allow_missing: Optional[str] = r"^input_hook/"
  dtype: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """How often and what to save.

  Attributes:
    period: save every this many steps (and always at the last step).
    keep: keep this many latest checkpoints (None: all).
    keep_best: also keep this many best checkpoints by `best_metric`.
    best_metric: an evaluation metric name, 'task/metric' (e.g. 'rte/accuracy').
    best_mode: 'max' or 'min'.
    save_frozen: also save the frozen parameters. None: only when there is no base checkpoint
      to re-read them from (training from scratch with some parameters frozen).
    export_prompts: write every saved prompt as `.npy` (and a PEFT adapter for one prompt).
    async_save: write checkpoints in a background thread.
  """

  period: int = 1000
  keep: Optional[int] = None
  keep_best: Optional[int] = None
  best_metric: Optional[str] = None
  best_mode: str = "max"
  save_frozen: Optional[bool] = None
  export_prompts: bool = True
  async_save: bool = True

  def __post_init__(self):
    if self.period < 1:
      raise ValueError(f"CheckpointConfig.period must be positive, got {self.period}.")


@dataclasses.dataclass
class Placed:
  """Parameters on the mesh, split into trainable and frozen parts, with their shardings."""

  trainable: Any
  frozen: Any
  trainable_shardings: Any
  frozen_shardings: Any


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


# ------------------------------------------------------------------------------------------------
# Setup: parameters.


def _flat(tree: Any) -> Dict[str, Any]:
  return traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def _unflat(flat: Mapping[str, Any]) -> Dict[str, Any]:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def init_fn_for(model: Any, lengths: Mapping[str, int]) -> Callable[[jax.Array], Any]:
  """`rng -> boxed variables` of the wrapped module, for model-feature `lengths`."""
  if isinstance(model, model_wrappers.EncoderDecoderModel):
    return lambda rng: model.get_initial_variables(
        rng, batch_size=1, encoder_length=lengths["encoder_input_tokens"],
        decoder_length=lengths["decoder_input_tokens"])
  if isinstance(model, model_wrappers.DecoderOnlyModel):
    return lambda rng: model.get_initial_variables(
        rng, batch_size=1, decoder_length=lengths["decoder_input_tokens"])
  raise ValueError(f"Cannot initialise model type {type(model).__name__}; expected an "
                   "EncoderDecoderModel or a DecoderOnlyModel.")


def _is_run_step_dir(path: str) -> bool:
  """A step folder written by this project's CheckpointManager (items params/, run/, ...)."""
  return os.path.isdir(os.path.join(path, "params")) and os.path.isdir(os.path.join(path, "run"))


def _base_format(restore: RestoreConfig) -> str:
  """The base's format: our own step folders are orbax whatever `restore.format` says."""
  if _is_run_step_dir(restore.path):
    return "orbax"
  if restore.format == "auto":
    return checkpoint_import.detect_format(restore.path)
  return restore.format


def base_checkpoint_record(restore: RestoreConfig) -> Optional[checkpoints_lib.BaseCheckpoint]:
  """How a run's checkpoints name their frozen base (path and resolved format)."""
  if restore.path is None:
    return None
  return checkpoints_lib.BaseCheckpoint(path=restore.path, format=_base_format(restore))


def import_base(*, restore: RestoreConfig, abstract_params: Any, shardings: Any) -> Dict[str, Any]:
  """Reads the base into `shardings`; returns a flat dict with None for absent parameters.

  One of our own step folders is read through the orbax importer, which takes its `params` and
  `frozen` items together (`importers/orbax_reader.open_step_folder`).
  """
  if restore.path is None:
    raise ValueError("import_base needs RestoreConfig.path.")
  return _flat(checkpoint_import.import_checkpoint(
      restore.path, abstract_params=abstract_params, shardings=shardings,
      format=_base_format(restore), dtype=restore.dtype, allow_missing=restore.allow_missing))


def _init_selected(*, init_fn, rng, names: Sequence[str], flat_shardings, mesh, rules):
  """Initialises only `names`: XLA removes the computation of every other parameter."""
  def selected(key):
    flat = _flat(nn.meta.unbox(init_fn(key))["params"])
    return {name: flat[name] for name in names}

  out = {name: flat_shardings[name] for name in names}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(selected, out_shardings=out)(rng)


def load_params(*, model: Any, lengths: Mapping[str, int], restore: RestoreConfig,
                mesh: jax.sharding.Mesh, rules: Any, rng: jax.Array) -> Tuple[Any, Any]:
  """The full parameter tree placed on the mesh: base from `restore`, the rest initialised."""
  init_fn = init_fn_for(model, lengths)
  abstract = jax.eval_shape(init_fn, rng)["params"]
  shardings = partitioning.param_shardings(abstract_params=abstract, mesh=mesh, rules=rules)
  flat_shardings = _flat(shardings)
  if restore.path is None:
    flat = {name: None for name in flat_shardings}
  else:
    flat = import_base(restore=restore, abstract_params=abstract, shardings=shardings)
  missing = [name for name, value in flat.items() if value is None]
  if missing:
    flat.update(_init_selected(init_fn=init_fn, rng=rng, names=missing,
                               flat_shardings=flat_shardings, mesh=mesh, rules=rules))
    if restore.path is not None:
      _LOG.info("Initialised %d parameter(s) absent from the base: %s", len(missing),
                ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
  return _unflat(flat), shardings


def split_placed(*, params: Any, shardings: Any, patterns: Sequence[str]) -> Placed:
  trainable, frozen = train_state_lib.split_params(params=params, patterns=patterns)
  trainable_sh, frozen_sh = train_state_lib.split_params(params=shardings, patterns=patterns)
  return Placed(trainable=trainable, frozen=frozen, trainable_shardings=trainable_sh,
                frozen_shardings=frozen_sh)


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
  create = lambda params: train_state_lib.create_train_state(  # noqa: E731
      trainable_params=params, optimizer=optimizer, rng=rng)
  shardings = _compatible_shardings(
      jax.eval_shape(create, placed.trainable),
      train_state_lib.state_shardings(optimizer=optimizer, trainable_params=placed.trainable,
                                      trainable_shardings=placed.trainable_shardings, mesh=mesh),
      mesh)
  with jax.set_mesh(mesh):
    state = jax.jit(create, in_shardings=(placed.trainable_shardings,),
                    out_shardings=shardings)(placed.trainable)
  return state, shardings


# ------------------------------------------------------------------------------------------------
# Setup: checkpoints and resumption.


def resolve_save_frozen(config: CheckpointConfig, restore: RestoreConfig, placed: Placed) -> bool:
  """Whether checkpoints must hold the frozen parameters to make resumption possible."""
  if config.save_frozen is not None:
    return config.save_frozen and bool(_flat(placed.frozen))
  return restore.path is None and bool(_flat(placed.frozen))


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
    if manager.latest_step() is None:
      return
    run = manager.run_record()
  recorded = (run.get("base_checkpoint") or {}).get("path")
  if recorded is not None and os.path.abspath(recorded) != os.path.abspath(restore.path):
    raise ValueError(f"The checkpoints in {directory} were trained on the base {recorded}, "
                     f"not on {restore.path}; use a new model_dir or the original base.")


def maybe_resume(session: Session) -> Session:
  """Continues from the latest complete checkpoint in the model dir, if there is one."""
  ckpt = session.checkpoints
  step = ckpt.latest_step()
  if step is None:
    return session
  run = ckpt.run_record(step=step)
  target = checkpoints_lib.abstract_target(session.state, session.state_shardings)
  frozen_target = None
  if run.get("contents") == "full" and _flat(session.placed.frozen):
    frozen_target = checkpoints_lib.abstract_target(session.placed.frozen,
                                                    session.placed.frozen_shardings)
  restored = ckpt.restore(state_target=target, frozen_target=frozen_target, step=step)
  placed = session.placed
  if restored.frozen is not None:
    placed = dataclasses.replace(placed, frozen=restored.frozen)
  placed = dataclasses.replace(placed, trainable=restored.state.params)
  _LOG.info("Resuming from step %d of %s (data position %d).", step, ckpt.directory,
            int(restored.state.data_position))
  return dataclasses.replace(session, state=restored.state, placed=placed)


def setup(*, model: Any, lengths: Mapping[str, int], mesh_config: partitioning.MeshConfig,
          restore: RestoreConfig, patterns: Sequence[str], optimizer: optax.GradientTransformation,
          checkpoint: CheckpointConfig, model_dir: str, seed: int) -> Session:
  """Mesh, parameters (base restored, the rest initialised), fresh state, checkpoint manager.

  Resumption from the model dir's own checkpoints is a separate step (`maybe_resume`).
  """
  check_same_base(model_dir=model_dir, restore=restore)
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  _LOG.info("Mesh %s over %d devices in %d process(es).",
            " x ".join(f"{name}={size}" for name, size in mesh.shape.items()), mesh.size,
            jax.process_count())
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  params, shardings = load_params(model=model, lengths=lengths, restore=restore, mesh=mesh,
                                  rules=rules, rng=init_rng)
  placed = split_placed(params=params, shardings=shardings, patterns=patterns)
  state, state_shardings = create_state(placed=placed, optimizer=optimizer, rng=train_rng,
                                        mesh=mesh)
  save_frozen = resolve_save_frozen(checkpoint, restore, placed)
  metadata = {"trainable_patterns": list(patterns), "seed": seed}
  manager = open_checkpoints(model_dir=model_dir, config=checkpoint, restore=restore,
                             save_frozen=save_frozen, run_metadata=metadata)
  return Session(model=model, mesh=mesh, rules=rules, state=state, placed=placed,
                 state_shardings=state_shardings, checkpoints=manager, save_frozen=save_frozen,
                 model_dir=model_dir, base_path=restore.path)


# ------------------------------------------------------------------------------------------------
# Step.


def compile_train_step(*, model: Any, optimizer: optax.GradientTransformation, session: Session,
                       num_microbatches: int = 1, max_grad_norm: Optional[float] = None,
                       learning_rate_fn: Optional[Callable] = None) -> Callable:
  """`step(state, frozen, batch) -> (state, metrics)`, jitted with in/out shardings.

  The state is donated (updated in place); the frozen tree is not, so it is never copied.
  """
  constant_normalizer = isinstance(getattr(model, "loss_normalizing_factor", None), (int, float))
  step_fn = train_state_lib.make_train_step(
      loss_fn=model.loss_fn, optimizer=optimizer, num_microbatches=num_microbatches,
      max_grad_norm=max_grad_norm, learning_rate_fn=learning_rate_fn,
      loss_reduction="sum" if constant_normalizer else "mean")
  replicated = NamedSharding(session.mesh, PartitionSpec())
  return jax.jit(
      step_fn,
      in_shardings=(session.state_shardings, session.placed.frozen_shardings,
                    partitioning.batch_sharding(mesh=session.mesh)),
      out_shardings=(session.state_shardings, replicated),
      donate_argnums=(0,))


# ------------------------------------------------------------------------------------------------
# Saving and exporting.


def to_host(x: jax.Array) -> np.ndarray:
  """The whole value of a (possibly multi-host) global array, on this host."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def prompt_leaves(trainable: Any) -> Dict[str, Any]:
  """Trainable input-hook parameters shaped like prompts ([P, H] or a [K, P, H] table)."""
  return {path: leaf for path, leaf in _flat(trainable).items()
          if path.startswith("input_hook/") and getattr(leaf, "ndim", 0) in (2, 3)}


def export_prompts(*, trainable: Any, step: int, model_dir: str, model: Any,
                   base_path: Optional[str], is_primary: bool) -> List[str]:
  """Writes each prompt as `.npy` (and `input_hook/prompt` as a PEFT adapter); returns paths."""
  prompts = {path: to_host(leaf) for path, leaf in prompt_leaves(trainable).items()}
  if not prompts or not is_primary:
    return []
  folder = os.path.join(model_dir, NUMPY_EXPORT_SUBDIR, f"checkpoint_{step}")
  os.makedirs(folder, exist_ok=True)
  written = []
  for path, value in prompts.items():
    # A [K, P, H] prompt table is written as K [P, H] files, <name>.<k>.npy.
    rows = {"": value} if value.ndim == 2 else {f".{k}": row for k, row in enumerate(value)}
    for suffix, prompt in rows.items():
      target = os.path.join(folder, path.replace("/", ".") + suffix + ".npy")
      export_lib.save_prompt_npy(prompt=prompt, path=target)
      written.append(target)
  if _PROMPT_PATH in prompts and prompts[_PROMPT_PATH].ndim == 2:
    config = model.module.config
    decoder_only = isinstance(model, model_wrappers.DecoderOnlyModel)
    adapter = os.path.join(model_dir, PEFT_EXPORT_SUBDIR, f"checkpoint_{step}")
    export_lib.export_peft_prompt(
        prompt=prompts[_PROMPT_PATH], directory=adapter,
        task_type="CAUSAL_LM" if decoder_only else "SEQ_2_SEQ_LM",
        num_layers=config.num_decoder_layers if decoder_only else config.num_encoder_layers,
        num_attention_heads=config.num_heads, base_model_name_or_path=base_path)
    written.append(adapter)
  return written


class NonFiniteGuard:
  """Remembers, on the device, the first step whose loss was not finite.

  Checking costs one device-to-host transfer, so the loop checks only before it logs, saves
  or evaluates. Before a save it also checks the parameters themselves (an optimizer can turn
  them NaN one step before the loss shows it), so a saved state never holds NaN.
  """

  def __init__(self, directory: str):
    self._first_bad = jnp.asarray(-1, jnp.int32)
    self._directory = directory

  def update(self, loss: jax.Array, step: int) -> None:
    bad = ~jnp.isfinite(loss)
    self._first_bad = jnp.where((self._first_bad < 0) & bad, step, self._first_bad)

  def _stop(self, what: str, step: int, last_saved: Optional[int]) -> None:
    kept = (f"the last good checkpoint (step {last_saved}) in {self._directory} was kept"
            if last_saved is not None else "no checkpoint was written")
    raise NonFiniteLossError(f"Training stopped: the {what} became NaN or infinite at step "
                             f"{step}, and {kept}.")

  def check(self, last_saved: Optional[int]) -> None:
    first_bad = int(self._first_bad)
    if first_bad >= 0:
      self._stop("loss", first_bad, last_saved)

  def check_params(self, params: Any, step: int, last_saved: Optional[int]) -> None:
    finite = jax.tree.reduce(lambda a, b: a & b,
                             jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), params), True)
    if not bool(finite):
      self._stop("trained parameters", step, last_saved)


# ------------------------------------------------------------------------------------------------
# Loop.


@dataclasses.dataclass
class LoopConfig:
  """When the loop does what (all in steps)."""

  total_steps: int
  log_period: int = 100
  eval_period: Optional[int] = None
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


@dataclasses.dataclass
class LoopResult:
  state: train_state_lib.TrainState
  train_history: List[Dict[str, float]]
  eval_history: List[Dict[str, float]]
  exports: List[str]


def train_loop(session: Session, *, step_fn: Callable, batches: Iterator[Dict[str, np.ndarray]],
               config: LoopConfig, reporter: reporting.TrainingReporter,
               evaluate: Optional[Callable[[Any, int], Dict[str, float]]] = None) -> LoopResult:
  """Runs steps from the state's step to `config.total_steps`."""
  state, frozen, mesh = session.state, session.placed.frozen, session.mesh
  step = int(state.step)
  guard = NonFiniteGuard(str(session.checkpoints.directory))
  saved = session.checkpoints.latest_step()
  result = LoopResult(state=state, train_history=[], eval_history=[], exports=[])

  def run_eval(step):
    guard.check(saved)
    metrics = evaluate(state, step)
    result.eval_history.append({"step": step, **metrics})
    return metrics

  with jax.set_mesh(mesh), nn.logical_axis_rules(session.rules):
    while step < config.total_steps:
      batch = partitioning.host_local_to_global(batch=next(batches), mesh=mesh)
      state, metrics = step_fn(state, frozen, batch)
      step += 1
      guard.update(metrics["loss"], step)
      reporter.add(metrics)
      reporter.step_done(step)
      final = step == config.total_steps
      if step % config.log_period == 0 or final:
        guard.check(saved)
        result.train_history.append({"step": step, **reporter.report(step)})
      eval_metrics = None
      if evaluate is not None and (final or (config.eval_period and
                                             step % config.eval_period == 0)):
        eval_metrics = run_eval(step)
      if step % config.checkpoint.period == 0 or final:
        guard.check(saved)
        guard.check_params(state.params, step, saved)
        if config.checkpoint.best_metric and eval_metrics is None and evaluate is not None:
          eval_metrics = run_eval(step)
        save(session, state, step, eval_metrics, config.checkpoint)
        saved = step
        if config.checkpoint.export_prompts:
          result.exports += export_prompts(
              trainable=state.params, step=step, model_dir=session.model_dir,
              model=session.model, base_path=session.base_path,
              is_primary=jax.process_index() == 0)
  session.checkpoints.wait_until_finished()
  result.state = state
  return result


def save(session: Session, state: train_state_lib.TrainState, step: int,
         eval_metrics: Optional[Mapping[str, float]], config: CheckpointConfig) -> None:
  metrics = None
  if config.best_metric:
    if not eval_metrics or config.best_metric not in eval_metrics:
      raise ValueError(f"CheckpointConfig.best_metric {config.best_metric!r} is not among the "
                       f"evaluation metrics {sorted(eval_metrics or {})}.")
    metrics = {config.best_metric: eval_metrics[config.best_metric]}
  frozen = session.placed.frozen if session.save_frozen else None
  session.checkpoints.save(step=step, state=state, frozen=frozen, metrics=metrics, force=True)


# ------------------------------------------------------------------------------------------------
# Inference (eval / infer entry points).


@dataclasses.dataclass
class InferenceSetup:
  mesh: jax.sharding.Mesh
  rules: Any
  placed: Placed
  step: Optional[int]
  base_path: Optional[str]


def _checkpoints_dir(path: str) -> str:
  """A run's model dir or its checkpoints folder -> the checkpoints folder."""
  nested = os.path.join(path, CHECKPOINTS_SUBDIR)
  return nested if os.path.isdir(nested) else path


def load_for_inference(*, model: Any, lengths: Mapping[str, int],
                       mesh_config: partitioning.MeshConfig, restore: RestoreConfig,
                       checkpoint_dir: Optional[str] = None, step: Optional[int] = None,
                       patterns: Optional[Sequence[str]] = None, seed: int = 0) -> InferenceSetup:
  """Parameters for evaluation: the base, then a run's trained parameters over it.

  With `checkpoint_dir` (a run's model dir or its checkpoints folder) the step (latest by
  default) supplies the trainable parameters, and its record supplies the base path and the
  trainable patterns when they are not given. Without it, the model is the base plus whatever
  the initialisers produce (e.g. a prompt read from a `.npy` file).
  """
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  manager, run = None, {}
  if checkpoint_dir is not None:
    manager = checkpoints_lib.CheckpointManager(directory=_checkpoints_dir(checkpoint_dir),
                                                read_only=True)
    run = manager.run_record(step=step)
    step = int(run["step"])
    recorded = (run.get("base_checkpoint") or {}).get("path")
    if restore.path is None and recorded is not None:
      restore = dataclasses.replace(restore, path=recorded)
    patterns = patterns or (run.get("run_metadata") or {}).get("trainable_patterns")
  params, shardings = load_params(model=model, lengths=lengths, restore=restore, mesh=mesh,
                                  rules=rules, rng=jax.random.PRNGKey(seed))
  placed = split_placed(params=params, shardings=shardings,
                        patterns=patterns or train_state_lib.PROMPT_ONLY)
  if manager is not None:
    frozen_target = None
    if run.get("contents") == "full" and _flat(placed.frozen):
      frozen_target = checkpoints_lib.abstract_target(placed.frozen, placed.frozen_shardings)
    restored = manager.restore(
        params_target=checkpoints_lib.abstract_target(placed.trainable,
                                                      placed.trainable_shardings),
        frozen_target=frozen_target, step=step)
    placed = dataclasses.replace(
        placed, trainable=restored.params,
        frozen=restored.frozen if restored.frozen is not None else placed.frozen)
    manager.close()
  return InferenceSetup(mesh=mesh, rules=rules, placed=placed, step=step,
                        base_path=restore.path)
