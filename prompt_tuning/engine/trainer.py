"""The training loop: the jitted step, guards, saving and exporting.

Setting a run up (mesh, parameter groups, state, resumption) is `run_setup.py`; placing and
restoring parameters is `param_loading.py`. Their public names are re-exported here, where the
entry points and gin files have always found them (`trainer.RestoreConfig`, ...).

The step is `train_state.make_train_step`'s pure function, jitted with in/out shardings; the
frozen tree is a separate, never-donated argument, so it stays bit-identical to its source.

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
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning.engine import export as export_lib
from prompt_tuning.engine import params as params_lib
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import reporting
from prompt_tuning.engine import train_state as train_state_lib
# Re-exported: the setup and restore API, under the names callers and gin files use.
from prompt_tuning.engine.param_loading import CHECKPOINTS_SUBDIR  # noqa: F401
from prompt_tuning.engine.param_loading import Placed  # noqa: F401
from prompt_tuning.engine.param_loading import RestoreConfig  # noqa: F401
from prompt_tuning.engine.param_loading import base_checkpoint_record  # noqa: F401
from prompt_tuning.engine.trees import flat
from prompt_tuning.engine.param_loading import import_base  # noqa: F401
from prompt_tuning.engine.param_loading import split_placed  # noqa: F401
from prompt_tuning.engine.trees import unflat
from prompt_tuning.engine.run_setup import CheckpointConfig
from prompt_tuning.engine.run_setup import InferenceSetup  # noqa: F401
from prompt_tuning.engine.run_setup import Session
from prompt_tuning.engine.run_setup import create_state  # noqa: F401
from prompt_tuning.engine.run_setup import init_fn_for  # noqa: F401
from prompt_tuning.engine.run_setup import load_for_inference  # noqa: F401
from prompt_tuning.engine.run_setup import load_params  # noqa: F401
from prompt_tuning.engine.run_setup import resume as maybe_resume  # noqa: F401
from prompt_tuning.engine.run_setup import setup  # noqa: F401

_LOG = logging.getLogger("prompt_tuning")
NUMPY_EXPORT_SUBDIR = "numpy_checkpoints"
PEFT_EXPORT_SUBDIR = "peft_adapters"
GROUP_EXPORT_SUBDIR = "group_exports"


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; training stopped before saving anything after it."""


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
  """Input-hook parameters shaped like prompts ([P, H] or a [K, P, H] table)."""
  return {path: leaf for path, leaf in flat(trainable).items()
          if params_lib.is_hook_path(path) and getattr(leaf, "ndim", 0) in (2, 3)}


def export_prompts(*, trainable: Any, step: int, model_dir: str, model: Any,
                   base_path: Optional[str], is_primary: bool) -> List[str]:
  """Writes each prompt as `.npy` (and a single `[P, H]` prompt as a PEFT adapter)."""
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
  single = prompts.get(params_lib.PROMPT_PATH)
  info = getattr(model, "prompt_export_info", lambda: None)()
  if single is not None and single.ndim == 2 and info is not None:
    adapter = os.path.join(model_dir, PEFT_EXPORT_SUBDIR, f"checkpoint_{step}")
    export_lib.export_peft_prompt(prompt=single, directory=adapter,
                                  base_model_name_or_path=base_path, **info)
    written.append(adapter)
  return written


def export_group_arrays(*, values: Mapping[str, Any], kind: str, path: str) -> str:
  """Writes a group's leaves keyed by parameter path as `.npz` or `.safetensors`.

  The keys are this project's parameter paths, so `params.FromNpy` reads an `.npz` back into
  the same group of another run.
  """
  arrays = {name: np.asarray(value) for name, value in values.items()}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  if kind == "npz":
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  else:
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp)
  os.replace(tmp, path)
  return path


def export_groups(session: Session, state: train_state_lib.TrainState, step: int) -> List[str]:
  """Each group's export at `step` (see `params.ParamGroup.export`); returns the paths."""
  assignment = session.assignment
  if assignment is None:
    return export_prompts(trainable=state.params, step=step, model_dir=session.model_dir,
                          model=session.model, base_path=session.base_path,
                          is_primary=jax.process_index() == 0)
  values = {**flat(session.placed.frozen), **flat(state.params)}
  written = []
  for group in assignment.groups:
    if group.export is None:
      continue
    leaves = {name: values[name] for name in assignment.leaves(group.name)}
    if group.export == "prompt":
      written += export_prompts(
          trainable=unflat(leaves), step=step, model_dir=session.model_dir,
          model=session.model, base_path=session.base_path,
          is_primary=jax.process_index() == 0)
      continue
    host = {name: to_host(value) for name, value in leaves.items()}
    if jax.process_index() == 0:
      suffix = ".npz" if group.export == "npz" else ".safetensors"
      written.append(export_group_arrays(
          values=host, kind=group.export,
          path=os.path.join(session.model_dir, GROUP_EXPORT_SUBDIR, f"checkpoint_{step}",
                            group.name + suffix)))
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
          result.exports += export_groups(session, state, step)
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


