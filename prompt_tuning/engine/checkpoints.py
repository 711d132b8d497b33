"""Run checkpoints: small (trainable state only) by default, full on request, via orbax.

A prompt-tuning checkpoint holds what the run changes — the trainable parameters, their
optimizer state, the step, the PRNG key and the input position — plus a JSON record naming the
frozen base checkpoint (path and format) it must be combined with. With `save_frozen=True` the
frozen parameters are saved as well, making the checkpoint self-contained (fine-tuning, ProMoT
stage 2).

Layout of one step (orbax items):

  <directory>/<step>/params/    trainable parameters (TrainState.params)
  <directory>/<step>/train/     {'step', 'opt_state', 'rng', 'data_position'}
  <directory>/<step>/frozen/    frozen parameters (only with save_frozen=True)
  <directory>/<step>/run/       JSON: format_version, contents, base_checkpoint, run_metadata

Atomicity (checked in tests/engine/test_checkpoints.py): orbax writes a step into
`<step>.orbax-checkpoint-tmp*`, writes `commit_success.txt` into it, then renames it to
`<step>`. A save killed part-way leaves only the tmp directory, which step listing ignores, so
the previous step stays the latest; the next manager removes such leftovers. As a second guard,
this module treats a step directory without `commit_success.txt` (e.g. from an interrupted copy)
as incomplete: it is skipped when picking the latest step and refused when asked for by number.

Integrity (checked in tests/engine/test_checkpoint_integrity.py): every committed step holds
`checksums.json` (see `checkpoint_integrity`), written in the same atomic commit. `restore`
verifies the step first; `restore_resumable` / `resumable_step` pick the newest step that
verifies and restores, moving damaged or incomplete steps to `<directory>/damaged/` (never
deleting them) so training can write those step numbers again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any, Callable, Mapping, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from prompt_tuning.engine import checkpoint_integrity as integrity
from prompt_tuning.engine.train_state import TrainState

FORMAT_VERSION = 1
# The format names of `checkpoint_import` (and of `--gin.RESTORE_FORMAT`-style bindings).
BASE_CHECKPOINT_FORMATS = ("t5x", "orbax", "hf")
# Names earlier versions recorded, read as today's.
_FORMERLY = {"hf_safetensors": "hf"}
_COMMIT_MARKER = integrity.COMMIT_MARKER
ON_DAMAGE = ("quarantine", "stop", "skip")
_FAILED = -2  # `_decided_on_primary`: process 0 raised


class CheckpointDamagedError(ValueError):
  """A checkpoint step is damaged or incomplete; the message names the step and the cause."""


@dataclasses.dataclass(frozen=True)
class BaseCheckpoint:
  """Where the frozen parameters of a small checkpoint come from.

  Attributes:
    path: directory or file of the base model checkpoint.
    format: 't5x' (legacy msgpack + zarr), 'orbax', or 'hf' (safetensors); the names
      `checkpoint_import` uses ('hf_safetensors', recorded by earlier versions, reads as 'hf').
  """

  path: str
  format: str

  def __post_init__(self):
    object.__setattr__(self, "format", _FORMERLY.get(self.format, self.format))
    if self.format not in BASE_CHECKPOINT_FORMATS:
      raise ValueError(
          f"Unknown base checkpoint format {self.format!r}; expected one of "
          f"{list(BASE_CHECKPOINT_FORMATS)}."
      )


@dataclasses.dataclass(frozen=True)
class Restored:
  """What `CheckpointManager.restore` returns.

  Attributes:
    step: the checkpoint step restored.
    state: the TrainState (None when only parameters were asked for).
    params: the trainable parameters (also `state.params` when state is restored).
    frozen: the frozen parameters if requested and saved, else None.
    run: the step's JSON record (contents, base_checkpoint, run_metadata, ...).
  """

  step: int
  state: Optional[TrainState]
  params: Any
  frozen: Any
  run: dict

  @property
  def base_checkpoint(self) -> Optional[BaseCheckpoint]:
    base = self.run.get("base_checkpoint")
    return None if base is None else BaseCheckpoint(**base)


def abstract_target(tree: Any, shardings: Any = None) -> Any:
  """A restore target: `jax.ShapeDtypeStruct`s carrying the shardings to restore into.

  Args:
    tree: arrays or ShapeDtypeStructs (e.g. from `jax.eval_shape`).
    shardings: a matching tree of shardings; default: each leaf's own `.sharding`.

  Raises:
    ValueError: naming the first leaf that has no sharding.
  """
  if shardings is None:
    shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)

  def to_struct(path, leaf, sharding):
    if sharding is None:
      raise ValueError(
          f"Restore target leaf '{jax.tree_util.keystr(path)}' has no sharding; pass "
          "arrays or ShapeDtypeStructs that carry one."
      )
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)

  return jax.tree_util.tree_map_with_path(
      to_struct, tree, shardings, is_leaf=lambda x: x is None
  )


class CheckpointManager:
  """Periodic, resumable checkpoints of a `TrainState` (and optionally the frozen params).

  Example (training):

    with CheckpointManager(directory=workdir / 'checkpoints', keep_latest=3,
                           base_checkpoint=BaseCheckpoint(path=..., format='t5x')) as ckpt:
      restored = ckpt.restore_resumable(state_target=abstract_target(state, shardings))
      if restored is not None:  # the newest step that verifies; damaged ones moved aside
        state = restored.state
      ...
      ckpt.save(step=int(state.step), state=state, metrics={'loss': loss})
  """

  def __init__(
      self,
      *,
      directory: str | epath.PathLike,
      keep_latest: Optional[int] = None,
      keep_best: Optional[int] = None,
      best_metric: Optional[str] = None,
      best_mode: str = "min",
      save_interval_steps: int = 1,
      base_checkpoint: Optional[BaseCheckpoint] = None,
      save_frozen: bool = False,
      run_metadata: Optional[Mapping[str, Any]] = None,
      async_save: bool = True,
      read_only: bool = False,
  ):
    """Opens (and unless read_only, creates) the checkpoint directory.

    Args:
      directory: where steps are written.
      keep_latest: keep this many most recent steps; None keeps every step (and so makes
        keep_best moot).
      keep_best: also keep this many best steps by `best_metric` (default 1 when best_metric
        is set); steps saved without metrics are kept only while among the latest.
      best_metric: key of the `metrics` dict passed to `save` that ranks steps.
      best_mode: 'min' (e.g. loss) or 'max' (e.g. accuracy).
      save_interval_steps: `save` without `force` only writes steps divisible by this.
      base_checkpoint: the frozen base this run adapts, recorded in every step.
      save_frozen: save the frozen parameters too (full, self-contained checkpoints).
      run_metadata: JSON-serialisable facts recorded in every step (e.g. trainable patterns).
      async_save: write in a background thread; device arrays are copied to the host before
        `save` returns, so the caller may donate or overwrite them.
      read_only: for evaluation/inference; the directory must exist and nothing is written.
    """
    self.directory = epath.Path(directory)
    if read_only and not self.directory.exists():
      raise FileNotFoundError(f"Checkpoint directory {self.directory} does not exist.")
    if best_mode not in ("min", "max"):
      raise ValueError(f"best_mode must be 'min' or 'max', got {best_mode!r}.")
    if keep_best is not None and best_metric is None:
      raise ValueError("keep_best needs best_metric, the metric name that ranks checkpoints.")
    if best_metric is not None and keep_best is None:
      keep_best = 1
    try:
      json.dumps(dict(run_metadata or {}))
    except TypeError as error:
      raise ValueError(f"run_metadata must be JSON-serialisable: {error}.") from None

    self._best_metric = best_metric
    self._best_mode = best_mode
    self._read_only = read_only
    self._save_frozen = save_frozen
    self._run = {
        "format_version": FORMAT_VERSION,
        "contents": "full" if save_frozen else "trainable",
        "base_checkpoint": None if base_checkpoint is None else dataclasses.asdict(base_checkpoint),
        "run_metadata": dict(run_metadata or {}),
    }
    policies = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    best_fn = None
    if best_metric is not None:
      best_fn = lambda metrics: metrics[best_metric]  # noqa: E731
      policies.append(
          ocp.checkpoint_managers.BestN(
              get_metric_fn=best_fn,
              reverse=best_mode == "min",
              n=keep_best,
              keep_checkpoints_without_metrics=False,
          )
      )
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval_steps,
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=best_fn,
        best_mode=best_mode,
        create=not read_only,
        read_only=read_only,
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=async_save,
    )
    options = dataclasses.replace(
        options, temporary_path_class=_manifested_temporary_path(self.directory))
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("params", "train", "frozen", "run"), options=options
    )

  # -- steps ---------------------------------------------------------------------------------

  def _is_complete(self, step: int) -> bool:
    return (self.directory / str(step) / _COMMIT_MARKER).exists()

  def all_steps(self) -> list[int]:
    """Steps whose save completed, oldest first.

    A read-only manager rescans the directory each time (another job may be writing it).
    """
    if self._read_only:
      self._manager.reload()
    steps = sorted(self._manager.all_steps())
    incomplete = [s for s in steps if not self._is_complete(s)]
    if incomplete:
      logging.warning("Ignoring incomplete checkpoint steps %s in %s.", incomplete, self.directory)
    return [s for s in steps if s not in incomplete]

  def latest_step(self) -> Optional[int]:
    """The newest complete step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def best_step(self) -> Optional[int]:
    """The best complete step by `best_metric` (the latest if no metric was configured)."""
    if self._best_metric is None:
      return self.latest_step()
    ranked = []
    for step in self.all_steps():
      metrics = self._manager.metrics(step)
      if metrics and self._best_metric in metrics:
        ranked.append((metrics[self._best_metric], step))
    if not ranked:
      return None
    pick = min if self._best_mode == "min" else max
    return pick(ranked)[1]

  # -- save ----------------------------------------------------------------------------------

  def save(
      self,
      *,
      step: int,
      state: TrainState,
      frozen: Any = None,
      metrics: Optional[Mapping[str, float]] = None,
      force: bool = False,
  ) -> bool:
    """Saves `state` (and `frozen` for full checkpoints) as `step`.

    Returns:
      True if a save started (False when `save_interval_steps` skips this step).
    """
    if self._save_frozen and frozen is None:
      raise ValueError("This manager saves full checkpoints (save_frozen=True); pass frozen.")
    if not self._save_frozen and frozen is not None:
      raise ValueError("frozen was passed but this manager was created with save_frozen=False.")
    if metrics is not None:
      metrics = {k: float(v) for k, v in metrics.items()}
      if self._best_metric is not None and self._best_metric not in metrics:
        raise ValueError(
            f"metrics lack the best_metric {self._best_metric!r}; got {sorted(metrics)}."
        )
    items = {
        "params": ocp.args.StandardSave(state.params),
        "train": ocp.args.StandardSave(_train_part(state)),
        "run": ocp.args.JsonSave({**self._run, "step": int(step)}),
    }
    if self._save_frozen and jax.tree.leaves(frozen):  # nothing frozen: full fine-tuning
      items["frozen"] = ocp.args.StandardSave(frozen)
    return self._manager.save(
        int(step), args=ocp.args.Composite(**items), metrics=metrics, force=force
    )

  # -- restore -------------------------------------------------------------------------------

  def _resolve_step(self, step: Optional[int]) -> int:
    self._manager.wait_until_finished()  # a step saved by this manager counts once written
    if not self.directory.exists():
      raise FileNotFoundError(f"Checkpoint directory {self.directory} does not exist.")
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"No complete checkpoint in {self.directory}.")
      return steps[-1]
    if step not in steps:
      if (self.directory / str(step)).exists():
        raise FileNotFoundError(
            f"Checkpoint step {step} in {self.directory} is incomplete (no {_COMMIT_MARKER})."
        )
      raise FileNotFoundError(
          f"No checkpoint step {step} in {self.directory}; complete steps are {steps}."
      )
    return step

  def run_record(self, *, step: Optional[int] = None) -> dict:
    """The JSON record of a step (latest by default): base checkpoint, contents, metadata."""
    step = self._resolve_step(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))
      record = restored.run
    except Exception as error:  # orbax / JSON errors name no step; ours does
      raise CheckpointDamagedError(
          f"Checkpoint step {step} in {self.directory} has no readable run record "
          f"(run/metadata): {_first_line(error)}") from error
    if not isinstance(record, dict):
      raise CheckpointDamagedError(
          f"Checkpoint step {step} in {self.directory} has an empty run record (run/metadata)")
    return dict(record)

  def restore(
      self,
      *,
      state_target: Optional[TrainState] = None,
      params_target: Any = None,
      frozen_target: Any = None,
      step: Optional[int] = None,
      verify: bool = True,
  ) -> Restored:
    """Restores a step (latest complete by default) directly into the targets' shardings.

    Give `state_target` to resume training, or only `params_target` to evaluate. Targets are
    trees of ShapeDtypeStructs with `.sharding` (see `abstract_target`) or arrays whose
    sharding is reused; each array is read straight into its target layout.

    With `verify` (the default) the step's files are first checked against its checksums.

    Raises:
      FileNotFoundError: the directory, or the step, does not exist or is incomplete.
      CheckpointDamagedError: the step does not match its checksums or lacks a part.
      ValueError: `frozen_target` was given but the step saved no frozen parameters.
    """
    if (state_target is None) == (params_target is None):
      raise ValueError("Pass exactly one of state_target and params_target.")
    step = self._resolve_step(step)
    if verify:

      def check() -> int:
        report = self.verify(step=step)[0]
        if not report.usable:
          raise CheckpointDamagedError(
              f"Checkpoint step {step} in {self.directory} is {report.status}: {report.reason}")
        return 0

      self._decided_on_primary(check)
    run = self.run_record(step=step)
    if frozen_target is not None and run.get("contents") != "full":
      raise ValueError(
          f"Checkpoint step {step} in {self.directory} holds only trainable parameters; "
          f"its frozen base is {run.get('base_checkpoint')}."
      )
    params_target = state_target.params if state_target is not None else params_target
    items = {"params": ocp.args.StandardRestore(abstract_target(params_target))}
    if state_target is not None:
      items["train"] = ocp.args.StandardRestore(abstract_target(_train_part(state_target)))
    if frozen_target is not None and jax.tree.leaves(frozen_target):
      items["frozen"] = ocp.args.StandardRestore(abstract_target(frozen_target))
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    state = None
    if state_target is not None:
      state = TrainState(params=restored.params, **restored.train)
    return Restored(
        step=step,
        state=state,
        params=restored.params,
        frozen=restored.frozen if "frozen" in items else frozen_target,
        run=run,
    )

  # -- integrity -----------------------------------------------------------------------------
  #
  # In a multi-process run only process 0 reads checksums and moves folders (every host hashing
  # a full checkpoint would multiply the reads, and two hosts renaming one folder would race);
  # the others receive its decision through `_decided_on_primary`.

  def verify(self, *, step: Optional[int] = None) -> list[integrity.StepReport]:
    """Checksum verdicts for every step folder (or one step), oldest first."""
    self._manager.wait_until_finished()
    return integrity.verify_directory(self.directory, step)

  def _decided_on_primary(self, decide: Callable[[], int]) -> int:
    """Runs `decide` on process 0 only; every process returns its result (an int >= -1).

    An error on process 0 is raised there and, as one sentence, on the other processes.
    """
    if jax.process_count() == 1:
      return decide()
    code, error = _FAILED, None
    if jax.process_index() == 0:
      try:
        code = decide()
      except Exception as caught:  # pylint: disable=broad-except  # re-raised below
        error = caught
    code = int(multihost_utils.broadcast_one_to_all(np.int64(code)))
    if error is not None:
      raise error
    if code == _FAILED:
      raise CheckpointDamagedError(
          f"Process 0 stopped while checking the checkpoints in {self.directory} (its log "
          "names the step and the cause)")
    return code

  def _set_aside(self, report: integrity.StepReport, on_damage: str) -> None:
    """Applies `on_damage` to an unusable step: move it aside, stop, or (read-only) skip it."""
    where = f"Checkpoint step {report.step} in {self.directory} is {report.status}"
    if on_damage == "stop":
      raise CheckpointDamagedError(
          f"{where}: {report.reason}; move it aside or resume with on_damage='quarantine'")
    if on_damage == "skip":
      logging.warning("%s (%s); skipping it.", where, report.reason)
      return
    moved = integrity.quarantine(self.directory, report)
    logging.warning("%s (%s); moved it to %s and resuming from an earlier step.", where,
                    report.reason, moved)

  def resumable_step(self, *, on_damage: str = "quarantine") -> Optional[int]:
    """The newest step that verifies (checksums, or structure for steps saved without them).

    Newer steps that are damaged or incomplete (no commit marker) are handled by `on_damage`:
    'quarantine' moves each to `<directory>/damaged/<step>-<kind of damage>` with one log
    sentence, freeing its step number for retraining; 'stop' raises `CheckpointDamagedError`
    naming the step and the cause; 'skip' (for read-only readers) only logs and passes over it.
    Steps older than the one returned are left alone. Call this before saving: in-flight saves
    of this manager are waited for, but another writer's save in progress would look incomplete.
    All processes of a run call it together; process 0 decides.

    Returns:
      The step, or None when there is none left (a fresh start).
    """
    report = self._resumable_report(on_damage)
    return None if report is None else report.step

  def _resumable_report(self, on_damage: str) -> Optional[integrity.StepReport]:
    if on_damage not in ON_DAMAGE:
      raise ValueError(f"on_damage must be one of {list(ON_DAMAGE)}, got {on_damage!r}.")
    if self._read_only and on_damage == "quarantine":
      raise ValueError("A read-only checkpoint manager cannot move steps; use on_damage="
                       "'skip' or 'stop'.")
    self._manager.wait_until_finished()

    def pick() -> int:  # -1: none; else 2 * step + (1 if checksums verified)
      if not self.directory.exists():
        return -1
      folders = integrity.step_folders(self.directory)
      for step in sorted(folders, reverse=True):  # newest first; older steps are not read
        report = integrity.verify_directory(self.directory, step)[0]
        if report.usable:
          return 2 * step + int(report.status == integrity.OK)
        self._set_aside(report, on_damage)
      return -1

    try:
      code = self._decided_on_primary(pick)
    finally:
      self._manager.reload()  # forget moved steps, so their numbers can be saved again
    if code < 0:
      return None
    return integrity.StepReport(code // 2, integrity.OK if code % 2 else integrity.UNVERIFIED)

  def restore_resumable(
      self,
      *,
      state_target: TrainState,
      frozen_target: Any = None,
      on_damage: str = "quarantine",
  ) -> Optional[Restored]:
    """Restores the newest step that verifies and restores (see `resumable_step`).

    `frozen_target` is used only for steps that hold the frozen parameters (full checkpoints),
    so a trainer can always pass it. A step that passes its checksums but does not fit the
    targets is not damaged — the run's settings changed — and raises one sentence; a step
    without checksums that fails to restore (on any process) is treated as damaged.

    Returns:
      What `restore` returns, or None when there is no usable step (a fresh start).
    """
    while True:
      report = self._resumable_report(on_damage)
      if report is None:
        return None
      step, verified = report.step, report.status == integrity.OK
      restored, error = None, None
      try:
        run = self.run_record(step=step)
        use_frozen = frozen_target if run.get("contents") == "full" else None
        if use_frozen is not None and not jax.tree.leaves(use_frozen):
          use_frozen = None
        restored = self.restore(state_target=state_target, frozen_target=use_frozen, step=step,
                                verify=False)
      except Exception as caught:  # pylint: disable=broad-except  # classified below
        error = caught
      failed = error is not None
      if jax.process_count() > 1:  # a host may fail on the shards only it reads
        failed = bool(np.any(multihost_utils.process_allgather(np.int32(failed))))
      if not failed:
        return restored
      cause = _first_line(error) if error is not None else "it failed on another process"
      if verified:
        raise ValueError(
            f"Checkpoint step {step} in {self.directory} matches its checksums but does not "
            f"fit this run ({cause}); resume with the settings it was saved with or use a new "
            "model_dir") from error
      damage = integrity.StepReport(step, integrity.DAMAGED,
                                    f"it could not be restored: {cause}", "unrestorable")
      if on_damage == "skip":
        raise CheckpointDamagedError(
            f"Checkpoint step {step} in {self.directory} could not be restored: {cause}"
        ) from error
      self._decided_on_primary(lambda damage=damage: self._set_aside(damage, on_damage) or 0)

  # -- lifecycle -----------------------------------------------------------------------------

  def wait_until_finished(self) -> None:
    """Blocks until background saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Finishes pending saves and deletions."""
    self._manager.close()

  def __enter__(self) -> "CheckpointManager":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else type(error).__name__
  return text[:300].rstrip(".")


def _train_part(state: TrainState) -> dict:
  return {
      "step": state.step,
      "opt_state": state.opt_state,
      "rng": state.rng,
      "data_position": state.data_position,
  }


def _manifested_temporary_path(directory: epath.Path) -> type:
  """Orbax's temporary-folder protocol for `directory`, plus our checksum manifest.

  Orbax finalizes a step by writing `commit_success.txt` into its temporary folder and (on
  POSIX) renaming it; items inside a step are finalized the same way just before. The step's
  manifest is written between the last data write and the commit marker, so it is part of the
  same atomic commit: a committed step always has checksums. Orbax runs this on the primary
  process only, after every process's writes are done, and for async saves in its background
  commit thread, so hashing never stalls training.
  """
  base = ocp.path.atomicity_defaults.get_default_temporary_path_class(directory)

  class ManifestedTemporaryPath(base):

    async def finalize(self, *args, **kwargs):
      if self.get_final().name.isdigit():  # a step (items are named params, run, ...)
        await asyncio.to_thread(integrity.write_manifest, self.get())
      return await super().finalize(*args, **kwargs)

  return ManifestedTemporaryPath
