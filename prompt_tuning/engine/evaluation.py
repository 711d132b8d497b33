"""Evaluation on the mesh: jitted score / predict / loss, and SeqIO `Evaluator` integration.

`ModelRunner` compiles the model wrapper's `score_batch`, `predict_batch` and `loss_fn` with
explicit in/out shardings: parameters stay where the trainer placed them, the batch is split
over the data axes, and outputs come back replicated so every host can read them whole.

Evaluation data is small, so every host reads all of it (the `seqio.Evaluator` caches it per
host); each global batch is then cut into the hosts' row ranges before it is joined into one
global array, and the final ragged batch is padded with empty rows whose outputs are dropped.

Two kinds of evaluation run during training, as in T5X:
  * train-eval: teacher-forced loss and token accuracy on a few batches of a split;
  * infer-eval: the task's own SeqIO metrics (predictions decoded and postprocessed, or
    scores for rank classification), through `seqio.Evaluator`.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import numpy as np
import seqio
from jax.sharding import NamedSharding, PartitionSpec

from prompt_tuning.engine import data as data_lib
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import reporting
from prompt_tuning.engine.train_state import merge_params

_LOG = logging.getLogger("prompt_tuning")
Batch = Dict[str, np.ndarray]
TaskMetrics = Dict[str, Dict[str, float]]


class ModelRunner:
  """The model's inference functions, jitted for the mesh with explicit shardings.

  Parameters are passed as (trainable, frozen) trees, exactly as the trainer holds them, and
  merged inside the compiled function, so no merged copy of a large model is ever made.
  """

  def __init__(self, *, model: Any, mesh: jax.sharding.Mesh, rules: Any,
               trainable_shardings: Any, frozen_shardings: Any,
               max_decode_length: int,
               decoder_params: Optional[Mapping[str, Any]] = None):
    self.model = model
    self.mesh = mesh
    self.rules = rules
    self.max_decode_length = max_decode_length
    self.decoder_params = model_wrappers.DecoderParams.create(decoder_params)
    self.shard = partitioning.host_data_shard(mesh=mesh)
    replicated = NamedSharding(mesh, PartitionSpec())
    batch = partitioning.batch_sharding(mesh=mesh)
    params_in = (trainable_shardings, frozen_shardings)

    def merged(trainable, frozen):
      return merge_params(trainable=trainable, frozen=frozen)

    def score(trainable, frozen, batch):
      return model.score_batch(merged(trainable, frozen), batch)

    def predict(trainable, frozen, batch, rng):
      return model.predict_batch(merged(trainable, frozen), batch,
                                 decoder_params=self.decoder_params, rng=rng,
                                 max_decode_length=max_decode_length)

    def loss(trainable, frozen, batch):
      return model.loss_fn(merged(trainable, frozen), batch, None)[1]

    self._score = jax.jit(score, in_shardings=(*params_in, batch), out_shardings=replicated)
    self._predict = jax.jit(predict, in_shardings=(*params_in, batch, replicated),
                            out_shardings=replicated)
    def predict_with_scores(trainable, frozen, batch, rng):
      return model.predict_batch_with_scores(merged(trainable, frozen), batch,
                                             decoder_params=self.decoder_params, rng=rng,
                                             max_decode_length=max_decode_length)

    self._loss = jax.jit(loss, in_shardings=(*params_in, batch), out_shardings=replicated)
    self._predict_with_scores = jax.jit(
        predict_with_scores, in_shardings=(*params_in, batch, replicated),
        out_shardings=(replicated, replicated))

  def _global(self, batch: Batch) -> Any:
    """A batch every host holds in full -> one global array split over the data axes."""
    local = data_lib.host_rows(batch, self.shard)
    return partitioning.host_local_to_global(batch=local, mesh=self.mesh)

  def _call(self, fn: Callable, *args) -> Any:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return fn(*args)

  def score(self, trainable, frozen, batch: Batch) -> np.ndarray:
    """`[B]` summed target log-likelihoods."""
    return np.asarray(self._call(self._score, trainable, frozen, self._global(batch)))

  def predict(self, trainable, frozen, batch: Batch, rng: jax.Array) -> np.ndarray:
    """`[B, max_decode_length]` decoded token ids (0 after EOS)."""
    rng = jax.device_put(rng, NamedSharding(self.mesh, PartitionSpec()))
    return np.asarray(self._call(self._predict, trainable, frozen, self._global(batch), rng))

  def predict_with_scores(self, trainable, frozen, batch: Batch,
                          rng: jax.Array) -> Tuple[np.ndarray, np.ndarray]:
    """All `num_decodes` decodes `[B, N, max_decode_length]`, best first, and their `[B, N]`
    scores (see `predict_batch_with_scores`)."""
    rng = jax.device_put(rng, NamedSharding(self.mesh, PartitionSpec()))
    decodes, scores = self._call(self._predict_with_scores, trainable, frozen,
                                 self._global(batch), rng)
    return np.asarray(decodes), np.asarray(scores)

  def loss_metrics(self, trainable, frozen, batch: Batch) -> Dict[str, float]:
    """The wrapper's loss metrics (loss, accuracy, ...) on one batch, without dropout."""
    metrics = self._call(self._loss, trainable, frozen, self._global(batch))
    return {name: float(np.asarray(value)) for name, value in metrics.items()}


def max_decode_length_for(model: Any, task_feature_lengths: Mapping[str, int]) -> int:
  """How many tokens prediction generates (the wrapper decides; the targets' length)."""
  return model.max_decode_length(task_feature_lengths)


# ------------------------------------------------------------------------------------------------
# SeqIO Evaluator.


INFERENCE_LOG_SUBDIR = "inference_eval"


def inference_file_name(task: str, split: str, step: int) -> str:
  """The per-example results file of a task's split at a step, for eval and infer alike."""
  return f"{task}-{split}-step_{step}.jsonl"


class _JSONLogger(seqio.JSONLogger):
  """seqio's JSON logger; its per-example file is renamed to `inference_file_name`."""

  def __init__(self, output_dir: str, *, split: str):
    super().__init__(output_dir)
    self._split = split

  def __call__(self, task_name, step, *args, **kwargs):
    super().__call__(task_name, step, *args, **kwargs)
    step = -1 if step is None else step
    written = os.path.join(self.output_dir, f"{task_name}-{step:06}.jsonl")  # seqio's name
    if os.path.exists(written):
      os.replace(written, os.path.join(self.output_dir,
                                       inference_file_name(task_name, self._split, step)))


def build_evaluator(config: data_lib.DatasetConfig, *, model: Any,
                    num_examples: Optional[int] = None,
                    log_dir: Optional[str] = None) -> Optional[seqio.Evaluator]:
  """A `seqio.Evaluator` for the config's task and split, or None if it has no metrics there.

  With `log_dir` (give it on the primary process only) the evaluator also writes, per task and
  step, every example's inputs, target and prediction or score (`inference_file_name`) and the
  metrics (`<task>-metrics.jsonl`), seqio's JSON format.
  """
  data_lib.get_mixture_or_task(config)
  if log_dir is not None:
    os.makedirs(log_dir, exist_ok=True)  # seqio's loggers expect it to exist
  evaluator = seqio.Evaluator(
      mixture_or_task_name=config.mixture_or_task_name,
      feature_converter=data_lib.feature_converter_for(model),
      eval_split=config.split,
      use_cached=config.use_cached,
      seed=config.seed,
      sequence_length=dict(config.task_feature_lengths),
      num_examples=num_examples,
      shuffle=False,
      async_compute_metrics=False,
      logger_cls=((functools.partial(_JSONLogger, split=config.split),)
                  if log_dir is not None else ()),
      log_dir=log_dir,
  )
  return evaluator if evaluator.eval_tasks else None


def _batched(dataset, batch_size: int, desc: str = ""):
  """`(indices [n], global batch padded to batch_size, n)` over an enumerated model dataset.

  Counts examples on a progress bar (an interactive terminal only, see `reporting.progress`).
  """
  with reporting.progress(total=reporting.known_length(dataset), desc=desc, unit="example",
                          primary=jax.process_index() == 0, leave=False) as bar:
    for indices, features in dataset.batch(batch_size).as_numpy_iterator():
      batch = {key: np.asarray(value) for key, value in features.items()}
      yield np.asarray(indices), data_lib.pad_rows(batch, batch_size), len(indices)
      bar.update(len(indices))


def make_predict_fn(runner: ModelRunner, trainable, frozen, *, batch_size: int,
                    seed: int = 0) -> Callable:
  """`predict_fn(enumerated dataset) -> [(index, token ids)]` for `seqio.Evaluator`."""

  def predict_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    outputs: List[Tuple[int, Sequence[int]]] = []
    rng = jax.random.PRNGKey(seed)
    for indices, batch, real in _batched(dataset, batch_size, desc="predict"):
      rng, step_rng = jax.random.split(rng)
      tokens = runner.predict(trainable, frozen, batch, step_rng)[:real]
      outputs.extend((int(i), [int(t) for t in row]) for i, row in zip(indices, tokens))
    return outputs

  return predict_fn


def make_score_fn(runner: ModelRunner, trainable, frozen, *, batch_size: int) -> Callable:
  """`score_fn(enumerated dataset) -> [(index, log-likelihood)]` for `seqio.Evaluator`."""

  def score_fn(dataset, model_feature_shapes=None):
    del model_feature_shapes
    outputs: List[Tuple[int, float]] = []
    for indices, batch, real in _batched(dataset, batch_size, desc="score"):
      scores = runner.score(trainable, frozen, batch)[:real]
      outputs.extend((int(i), float(s)) for i, s in zip(indices, scores))
    return outputs

  return score_fn


def _plain(metrics: Mapping[str, Mapping[str, Any]]) -> TaskMetrics:
  plain: TaskMetrics = {}
  for task, values in (metrics or {}).items():
    plain[task] = {}
    for name, value in values.items():
      value = getattr(value, "value", value)
      try:
        plain[task][name] = float(np.asarray(value))
      except (TypeError, ValueError):
        continue
  return plain


def run_infer_eval(evaluator: seqio.Evaluator, runner: ModelRunner, trainable, frozen, *,
                   batch_size: int, step: int) -> TaskMetrics:
  """Runs the evaluator's predict / score metrics; returns `{task: {metric: value}}`."""
  future, _ = evaluator.evaluate(
      compute_metrics=True, step=step,
      predict_fn=make_predict_fn(runner, trainable, frozen, batch_size=batch_size),
      score_fn=make_score_fn(runner, trainable, frozen, batch_size=batch_size))
  return _plain(future.result())


def run_train_eval(config: data_lib.DatasetConfig, runner: ModelRunner, trainable, frozen, *,
                   num_batches: Optional[int]) -> TaskMetrics:
  """Teacher-forced loss and accuracy over (up to) `num_batches` batches of each task."""
  mixture_or_task = data_lib.get_mixture_or_task(config)
  converter = data_lib.feature_converter_for(runner.model)
  results: TaskMetrics = {}
  for task in seqio.get_subtasks(mixture_or_task):
    if config.split not in task.splits:
      continue
    dataset = seqio.get_dataset(
        task.name, task_feature_lengths=dict(config.task_feature_lengths),
        feature_converter=converter, dataset_split=config.split, shuffle=False,
        num_epochs=1, use_cached=config.use_cached, seed=config.seed)
    totals: Dict[str, float] = {}
    count = 0
    with reporting.progress(total=num_batches, desc=f"train-eval {task.name}", unit="batch",
                            primary=jax.process_index() == 0, leave=False) as bar:
      for batch, real in data_lib.eval_batches(dataset, batch_size=config.batch_size):
        if real < config.batch_size:  # a padded batch would bias the token-mean metrics
          break
        for name, value in runner.loss_metrics(trainable, frozen, batch).items():
          totals[name] = totals.get(name, 0.0) + value
        count += 1
        bar.update(1)
        if num_batches is not None and count >= num_batches:
          break
    if count:
      results[task.name] = {name: total / count for name, total in totals.items()}
  return results


class PeriodicEvaluation:
  """The evaluations a training run does at its eval steps, written as metrics.

  Returns flat metrics: infer-eval ones as 'task/metric' (what `CheckpointConfig.best_metric`
  names), train-eval ones as 'train_eval/task/metric'.
  """

  def __init__(self, *, runner: ModelRunner, writer: reporting.MetricsWriter,
               train_eval: Optional[data_lib.DatasetConfig] = None,
               infer_eval: Optional[data_lib.DatasetConfig] = None,
               train_eval_batches: Optional[int] = None,
               infer_eval_examples: Optional[int] = None):
    self.runner = runner
    self.writer = writer
    self.train_eval = train_eval
    self.infer_eval = infer_eval
    self.train_eval_batches = train_eval_batches
    self.evaluator = None
    if infer_eval is not None:
      log_dir = os.path.join(writer.model_dir, INFERENCE_LOG_SUBDIR) if writer.is_primary else None
      self.evaluator = build_evaluator(infer_eval, model=runner.model,
                                       num_examples=infer_eval_examples, log_dir=log_dir)

  @property
  def enabled(self) -> bool:
    return self.train_eval is not None or self.evaluator is not None

  def __call__(self, trainable, frozen, step: int) -> Dict[str, float]:
    flat: Dict[str, float] = {}
    if self.train_eval is not None:
      metrics = run_train_eval(self.train_eval, self.runner, trainable, frozen,
                               num_batches=self.train_eval_batches)
      values = reporting.flatten_eval_metrics(metrics)
      self.writer.write(reporting.TRAIN_EVAL, step, values)
      flat.update({f"train_eval/{name}": value for name, value in values.items()})
    if self.evaluator is not None:
      metrics = run_infer_eval(self.evaluator, self.runner, trainable, frozen,
                               batch_size=self.infer_eval.batch_size, step=step)
      values = reporting.flatten_eval_metrics(metrics)
      self.writer.write(reporting.INFER_EVAL, step, values)
      flat.update(values)
    if self.writer.is_primary and flat:
      _LOG.info("eval at step %d: %s", step,
                ", ".join(f"{name} {value:.4g}" for name, value in sorted(flat.items())))
    return flat
