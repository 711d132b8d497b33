"""`train(*, model, train_dataset_cfg, ...)`: what the train entry point runs, configured by gin.

Plain Python with keyword arguments; `prompt_tuning/train.py` is its command line
(`python -m prompt_tuning.train`), which parses flags and gin and calls it. Kept apart from
the command line so the gin glue (`engine/gin_utils.py`) can register it without importing
the entry points that import the glue.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

_LOG = logging.getLogger("prompt_tuning")


@dataclasses.dataclass
class TrainResult:
  """What a finished (or deliberately stopped) run reports back."""

  step: int
  train_history: List[Dict[str, float]]
  eval_history: List[Dict[str, float]]
  checkpoint_dir: str
  exports: List[str]
  state: Any = None  # the final TrainState (trainable parameters, optimizer state, ...)
  frozen: Any = None  # the frozen parameters the run used


def train(
    *,
    model: Any,
    train_dataset_cfg: Any,
    model_dir: str,
    total_steps: int,
    optimizer: Any,
    mesh_config: Any = None,
    trainable_patterns: Optional[Sequence[str]] = None,
    param_groups: Optional[Sequence[Any]] = None,
    restore_cfg: Any = None,
    checkpoint_cfg: Any = None,
    train_eval_dataset_cfg: Any = None,
    infer_eval_dataset_cfg: Any = None,
    eval_period: Optional[int] = None,
    eval_steps: Optional[int] = 10,
    infer_eval_examples: Optional[int] = None,
    log_period: int = 100,
    num_microbatches: int = 1,
    max_grad_norm: Optional[float] = None,
    random_seed: int = 0,
    decoder_params: Optional[Mapping[str, Any]] = None,
    run_eval_before_training: bool = False,
    learning_rate_fn: Optional[Callable] = None,
    summarize_config_fn: Optional[Callable[[str], Any]] = None,
    check_settings_fn: Optional[Callable[[str], Any]] = None,
    divergence_limit: Optional[float] = 1e5,
) -> TrainResult:
  """Trains the selected parameters of `model` for `total_steps` steps.

  Args:
    model: a model wrapper (`engine.models.ModelWrapper`), e.g. an `EncoderDecoderModel`.
    train_dataset_cfg: `data.DatasetConfig` of the training data (global batch size).
    model_dir: where checkpoints, exports, metrics and `config.gin` go; resumed from if it
      already holds checkpoints.
    total_steps: the step count at which training ends.
    optimizer: an optax transformation (e.g. `optimizers.adafactor()`).
    mesh_config: `partitioning.MeshConfig` (default: all devices data-parallel).
    trainable_patterns: regexes over '/'-joined parameter paths; the rest stays frozen.
      `('.*',)` fine-tunes everything. Default (and without `param_groups`): prompt tuning,
      the input hook trained and the rest frozen (`params.prompt_tuning_groups`).
    param_groups: `params.ParamGroup`s: per group, trainable or frozen, its source (base,
      another checkpoint, `.npy`, initialiser), export and optimizer. Excludes
      `trainable_patterns`.
    restore_cfg: `trainer.RestoreConfig`, the frozen base (None: initialise everything).
    checkpoint_cfg: `trainer.CheckpointConfig`.
    train_eval_dataset_cfg: data for teacher-forced eval loss/accuracy (optional).
    infer_eval_dataset_cfg: data for the SeqIO Evaluator's task metrics (optional).
    eval_period: evaluate every this many steps (and at the end).
    eval_steps: batches per train-eval (None: the whole split).
    infer_eval_examples: cap on examples per task for infer-eval (None: all).
    log_period: report training metrics every this many steps.
    num_microbatches: gradient accumulation steps per batch.
    max_grad_norm: clip gradients to this global norm (None: no clipping).
    random_seed: seeds parameter init, dropout and the data order.
    decoder_params: decoding for infer-eval, e.g. `{'method': 'beam', 'num_decodes': 4}`.
    run_eval_before_training: evaluate once before the first step of a fresh run.
    learning_rate_fn: the schedule, for logging only (gin entry points fill it in).
    summarize_config_fn: called with `model_dir` once the model is built (writes config.gin).
    check_settings_fn: called with `model_dir` before anything is loaded; the gin entry point
      uses it to stop a resumed run whose settings changed unsoundly (`resume_check`).
    divergence_limit: stop, before saving, when a trained parameter's magnitude exceeds this
      (None: no limit); prompts and T5 weights stay orders of magnitude below the default.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import data, partitioning, reporting, trainer  # pylint: disable=g-import-not-at-top

  if total_steps <= 0:
    raise ValueError(f"The total number of training steps (TRAIN_STEPS, train.total_steps) is "
                     f"{total_steps}; it must be positive.")
  data.get_mixture_or_task(train_dataset_cfg)  # an unknown task fails before any model work
  _check_model_dir(model_dir)
  if check_settings_fn is not None:
    check_settings_fn(model_dir)
  mesh_config = mesh_config or partitioning.MeshConfig()
  _check_batch_fits_mesh(train_dataset_cfg.batch_size, mesh_config.make_mesh())
  restore_cfg = restore_cfg or trainer.RestoreConfig()
  checkpoint_cfg = checkpoint_cfg or trainer.CheckpointConfig()
  lengths = data.model_feature_lengths(model, train_dataset_cfg.task_feature_lengths)
  session = trainer.setup(model=model, lengths=lengths, mesh_config=mesh_config,
                          restore=restore_cfg, patterns=trainable_patterns, groups=param_groups,
                          optimizer=optimizer, checkpoint=checkpoint_cfg, model_dir=model_dir,
                          seed=random_seed)
  if summarize_config_fn is not None:
    summarize_config_fn(model_dir)
  session = trainer.maybe_resume(session, on_damage=checkpoint_cfg.on_damage)
  start = int(session.state.step)
  is_primary = jax.process_index() == 0
  writer = reporting.MetricsWriter(model_dir=model_dir, is_primary=is_primary)
  evaluate = _periodic_evaluation(session, writer, train_eval_dataset_cfg, infer_eval_dataset_cfg,
                                  eval_steps, infer_eval_examples, decoder_params)
  if evaluate and run_eval_before_training and start == 0:
    evaluate(session.state, 0)
  batches = data.train_batches(
      train_dataset_cfg, converter=data.feature_converter_for(model),
      shard=partitioning.host_data_shard(mesh=session.mesh),
      start_batch=int(session.state.data_position))
  step_fn = trainer.compile_train_step(
      model=model, optimizer=session.optimizer, session=session, num_microbatches=num_microbatches,
      max_grad_norm=max_grad_norm, learning_rate_fn=learning_rate_fn)
  reporter = reporting.TrainingReporter(writer=writer, total_steps=total_steps,
                                        batch_size=train_dataset_cfg.batch_size,
                                        start_step=start)
  loop = trainer.LoopConfig(total_steps=total_steps, log_period=log_period,
                            eval_period=eval_period, checkpoint=checkpoint_cfg,
                            divergence_limit=divergence_limit)
  try:
    result = trainer.train_loop(session, step_fn=step_fn, batches=batches, config=loop,
                                reporter=reporter, evaluate=evaluate)
  finally:
    writer.close()
    session.checkpoints.close()
  return TrainResult(step=int(result.state.step), train_history=result.train_history,
                     eval_history=result.eval_history,
                     checkpoint_dir=str(session.checkpoints.directory), exports=result.exports,
                     state=result.state, frozen=session.placed.frozen)


def _periodic_evaluation(session, writer, train_eval_cfg, infer_eval_cfg, eval_steps,
                         infer_eval_examples, decoder_params):
  """`evaluate(state, step) -> flat metrics`, or None when no eval data is configured."""
  from prompt_tuning.engine import evaluation  # pylint: disable=g-import-not-at-top

  if train_eval_cfg is None and infer_eval_cfg is None:
    return None
  lengths = (infer_eval_cfg or train_eval_cfg).task_feature_lengths
  runner = evaluation.ModelRunner(
      model=session.model, mesh=session.mesh, rules=session.rules,
      trainable_shardings=session.placed.trainable_shardings,
      frozen_shardings=session.placed.frozen_shardings,
      max_decode_length=evaluation.max_decode_length_for(session.model, lengths),
      decoder_params=decoder_params)
  periodic = evaluation.PeriodicEvaluation(
      runner=runner, writer=writer, train_eval=train_eval_cfg, infer_eval=infer_eval_cfg,
      train_eval_batches=eval_steps, infer_eval_examples=infer_eval_examples)
  frozen = session.placed.frozen
  return lambda state, step: periodic(state.params, frozen, step)


def _check_model_dir(model_dir: str) -> None:
  """MODEL_DIR must be a folder this process can write: checked before anything is loaded."""
  import os  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  path = os.path.abspath(model_dir)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"MODEL_DIR {model_dir} cannot be a folder: {existing} is a file.")
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      pass
  except OSError as error:
    raise ValueError(f"MODEL_DIR {model_dir} is not writable ({error.strerror}).") from None


def _check_batch_fits_mesh(batch_size: int, mesh: Any) -> None:
  """The global batch must split evenly over the mesh's data-parallel devices."""
  from prompt_tuning.engine import partitioning  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  devices = int(np.prod([mesh.shape[a] for a in partitioning.data_axes_of(mesh)] or [1]))
  if batch_size % devices:
    raise ValueError(f"BATCH_SIZE {batch_size} does not divide over the {devices} data-parallel "
                     f"devices of the mesh; use a multiple of {devices} or another device count.")

