"""Run a registered task or mixture through `seqio.Evaluator` with plain Python model callbacks.

The model side is two optional callbacks over a list of examples, in dataset order:

  predict_fn(examples) -> list of predicted strings      (for generation metrics)
  score_fn(examples)   -> list of log-likelihoods        (for rank classification)

Each example dict holds the task features (`inputs_pretokenized`, `targets`, `idx`, ...) and
the model features from the feature converter (`encoder_input_tokens`, ...), so the same
callback shape serves a real model (which reads token arrays) and a stub (which reads text).
Predicted strings are encoded with the task's vocabulary and decoded again by seqio, exactly
as model output tokens would be.
"""
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import seqio

Examples = List[Dict[str, Any]]
PredictFn = Callable[[Examples], Sequence[str]]
ScoreFn = Callable[[Examples], Sequence[float]]


def _as_python(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return value


class _Callbacks:
  """Adapts list-of-examples callbacks to seqio's (dataset -> [(index, output)]) protocol."""

  def __init__(self, evaluator: seqio.Evaluator):
    self._evaluator = evaluator
    # seqio hands each callback the cached model dataset of one task; find which by identity.
    self._task_of = {id(ds): name for name, ds in evaluator.cached_model_datasets.items()}

  def examples(self, dataset) -> Tuple[str, List[int], Examples]:
    name = self._task_of[id(dataset)]
    task_examples = list(self._evaluator.cached_task_datasets[name].as_numpy_iterator())
    indices, examples = [], []
    for (index, model_features), task_features in zip(dataset.as_numpy_iterator(), task_examples):
      indices.append(int(index))
      merged = {k: _as_python(v) for k, v in task_features.items()}
      merged.update(model_features)
      examples.append(merged)
    return name, indices, examples

  def predict(self, fn: PredictFn):
    def predict_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      name, indices, examples = self.examples(dataset)
      texts = list(fn(examples))
      _check_count(name, "predict_fn", texts, examples)
      vocabulary = seqio.get_mixture_or_task(name).output_features["targets"].vocabulary
      ids = [list(vocabulary.encode(str(t))) + [vocabulary.eos_id] for t in texts]
      width = max(len(row) for row in ids) if ids else 1
      padded = np.zeros((len(ids), width), np.int32)
      for i, row in enumerate(ids):
        padded[i, :len(row)] = row
      return list(zip(indices, padded))
    return predict_fn

  def score(self, fn: ScoreFn):
    def score_fn(dataset, model_feature_shapes=None):
      del model_feature_shapes
      name, indices, examples = self.examples(dataset)
      scores = [float(s) for s in fn(examples)]
      _check_count(name, "score_fn", scores, examples)
      return list(zip(indices, scores))
    return score_fn


def _check_count(task: str, callback: str, outputs: Sequence[Any], examples: Examples) -> None:
  if len(outputs) != len(examples):
    raise ValueError(f"{callback} returned {len(outputs)} outputs for the {len(examples)} "
                     f"examples of task {task}; it must return one per example.")


def evaluate(
    mixture_or_task_name: str,
    *,
    predict_fn: Optional[PredictFn] = None,
    score_fn: Optional[ScoreFn] = None,
    split: str = "validation",
    sequence_length: Optional[Mapping[str, int]] = None,
    num_examples: Optional[int] = None,
    feature_converter: Optional[seqio.FeatureConverter] = None,
) -> Dict[str, Dict[str, Any]]:
  """Computes every metric of every task (with `split`) of a task or mixture.

  Args:
    mixture_or_task_name: a registered name.
    predict_fn: needed when a task has generation metrics.
    score_fn: needed when a task has scoring (rank classification) metrics.
    split: the evaluation split.
    sequence_length: feature lengths; required by tasks whose preprocessing depends on it
      (the open-book reader packs passages into `inputs`).
    num_examples: evaluate only the first examples of each task.
    feature_converter: default: encoder-decoder features without packing.

  Returns:
    task name -> {metric name: value}.
  """
  evaluator = seqio.Evaluator(
      mixture_or_task_name,
      feature_converter=feature_converter or seqio.EncDecFeatureConverter(pack=False),
      eval_split=split,
      sequence_length=sequence_length,
      num_examples=num_examples,
      async_compute_metrics=False,
  )
  if not evaluator.eval_tasks:
    raise ValueError(f"{mixture_or_task_name!r} has no task with a {split!r} split and metrics.")
  needs = {m.model_output_type for t in evaluator.eval_tasks for m in t.metric_objs}
  if seqio.metrics.ModelOutputType.PREDICTION in needs and predict_fn is None:
    raise ValueError(f"{mixture_or_task_name!r} has generation metrics: pass predict_fn.")
  if seqio.metrics.ModelOutputType.SCORE in needs and score_fn is None:
    raise ValueError(f"{mixture_or_task_name!r} has scoring metrics: pass score_fn.")
  callbacks = _Callbacks(evaluator)
  metrics_future, _ = evaluator.evaluate(
      compute_metrics=True,
      predict_fn=callbacks.predict(predict_fn) if predict_fn else None,
      score_fn=callbacks.score(score_fn) if score_fn else None,
  )
  results = metrics_future.result()
  evaluator.close()
  return {task: {k: _as_python(getattr(v, "value", v)) for k, v in task_metrics.items()}
          for task, task_metrics in results.items()}
