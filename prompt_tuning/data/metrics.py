"""Evaluation metrics, each returning a dict of scores on a 0-100 scale.

Every function takes `(targets, predictions)` or `(targets, scores)` positionally, the
signatures `seqio` recognises, after the task's postprocessor has run. Reporting all
scores in [0, 100] is what lets the few-shot suite average accuracy, BLEU and ROUGE.
"""
import collections
import re
import string
from typing import Any, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import sacrebleu
import scipy.stats
from rouge_score import rouge_scorer


def _check_lengths(targets: Sequence[Any], predictions: Sequence[Any]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(
        f"Got {len(targets)} targets but {len(predictions)} predictions; they must pair up.")


def _percent(value: float) -> float:
  return float(100.0 * value)


# ---------------------------------------------------------------- classification


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """Fraction of predictions equal to their target."""
  _check_lengths(targets, predictions)
  if not targets:
    return {"accuracy": 0.0}
  return {"accuracy": _percent(np.mean([t == p for t, p in zip(targets, predictions)]))}


def _binary_f1(targets: Sequence[int], predictions: Sequence[int], positive: int = 1) -> float:
  true_pos = sum(1 for t, p in zip(targets, predictions) if t == positive and p == positive)
  false_pos = sum(1 for t, p in zip(targets, predictions) if t != positive and p == positive)
  false_neg = sum(1 for t, p in zip(targets, predictions) if t == positive and p != positive)
  denominator = 2 * true_pos + false_pos + false_neg
  return 0.0 if denominator == 0 else 2 * true_pos / denominator


def f1_binary(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP.

  An invalid prediction (anything but 0 or 1, e.g. the -1 a label postprocessor returns for a
  word that is no label) counts as the wrong class, `1 - target`, as T5's
  `f1_score_with_invalid` counts it: a false negative on a positive example, a false positive
  on a negative one.
  """
  _check_lengths(targets, predictions)
  fixed = [p if p in (0, 1) else 1 - int(t) for t, p in zip(targets, predictions)]
  return {"f1": _percent(_binary_f1(targets, fixed))}


def macro_f1(num_classes: int):
  """Unweighted mean of per-class F1 over `num_classes` classes (CommitmentBank's F1)."""

  def macro_f1_fn(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
    _check_lengths(targets, predictions)
    per_class = [_binary_f1(targets, predictions, positive=c) for c in range(num_classes)]
    return {"macro_f1": _percent(np.mean(per_class))}

  macro_f1_fn.__name__ = f"macro_f1_{num_classes}class"
  return macro_f1_fn


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> Dict[str, float]:
  """Matthews correlation over every label seen (CoLA, AX); invalid predictions are a class.

  The multi-class form (Gorodkin's R_K, what scikit-learn's `matthews_corrcoef` computes and
  T5 reports): an invalid prediction (-1 from the label postprocessor) is its own class, never
  counted as either real label. For two labels it equals the binary coefficient. Written with
  numpy: scikit-learn is not a dependency of this package.
  """
  _check_lengths(targets, predictions)
  t, p = np.asarray(targets), np.asarray(predictions)
  classes = np.union1d(t, p)
  true_counts = np.array([np.sum(t == c) for c in classes], np.float64)
  pred_counts = np.array([np.sum(p == c) for c in classes], np.float64)
  correct, total = float(np.sum(t == p)), float(len(t))
  numerator = correct * total - float(np.dot(true_counts, pred_counts))
  denominator = np.sqrt((total ** 2 - float(np.dot(pred_counts, pred_counts))) *
                        (total ** 2 - float(np.dot(true_counts, true_counts))))
  value = 0.0 if denominator == 0 else numerator / denominator
  return {"matthews_corrcoef": _percent(value)}


def pearson_spearman(targets: Sequence[float], predictions: Sequence[float]) -> Dict[str, float]:
  """Pearson and Spearman correlations (STS-B)."""
  _check_lengths(targets, predictions)
  return {
      "pearson_corrcoef": _percent(scipy.stats.pearsonr(targets, predictions)[0]),
      "spearman_corrcoef": _percent(scipy.stats.spearmanr(targets, predictions)[0]),
  }


def multirc(targets: Sequence[Mapping[str, Any]], predictions: Sequence[int]) -> Dict[str, float]:
  """MultiRC: F1a over all answer options and exact match per question.

  Each target is `{"group": question id, "value": 0 or 1}`; a question counts as exactly
  matched when every one of its answer options is labelled correctly.
  """
  _check_lengths(targets, predictions)
  labels = [t["value"] for t in targets]
  by_question: Dict[Hashable, List[bool]] = collections.defaultdict(list)
  for target, prediction in zip(targets, predictions):
    by_question[target["group"]].append(target["value"] == prediction)
  exact = [all(v) for v in by_question.values()]
  return {
      "f1a": _percent(_binary_f1(labels, predictions)),
      "exact_match": _percent(np.mean(exact)) if exact else 0.0,
  }


# ---------------------------------------------------------------- span answers


def normalize_answer(text: str) -> str:
  """SQuAD normalisation: lower case, drop punctuation and articles, squeeze spaces."""
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _token_f1(target: str, prediction: str) -> float:
  target_tokens = normalize_answer(target).split()
  prediction_tokens = normalize_answer(prediction).split()
  common = collections.Counter(target_tokens) & collections.Counter(prediction_tokens)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision = overlap / len(prediction_tokens)
  recall = overlap / len(target_tokens)
  return 2 * precision * recall / (precision + recall)


def _max_over_answers(answers: Iterable[str], prediction: str) -> Tuple[float, float]:
  answers = list(answers)
  if not answers:
    return 0.0, 0.0
  em = max(float(normalize_answer(a) == normalize_answer(prediction)) for a in answers)
  f1 = max(_token_f1(a, prediction) for a in answers)
  return em, f1


def squad(targets: Sequence[Sequence[str]], predictions: Sequence[str]) -> Dict[str, float]:
  """Exact match and token F1, each the max over a question's reference answers."""
  _check_lengths(targets, predictions)
  if not targets:
    return {"em": 0.0, "f1": 0.0}
  scores = np.array([_max_over_answers(t, p) for t, p in zip(targets, predictions)])
  return {"em": _percent(scores[:, 0].mean()), "f1": _percent(scores[:, 1].mean())}


def record(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> Dict[str, float]:
  """ReCoRD: max-over-answers EM/F1, one prediction per query.

  Training-style ReCoRD examples repeat a query once per answer; targets carry
  `{"group": query id, "answers": [...]}` and only the first example of a group counts.
  """
  _check_lengths(targets, predictions)
  seen = set()
  answers, kept = [], []
  for target, prediction in zip(targets, predictions):
    if target["group"] in seen:
      continue
    seen.add(target["group"])
    answers.append(target["answers"])
    kept.append(prediction)
  return squad(answers, kept)


def reader(targets: Sequence[Mapping[str, Any]], predictions: Sequence[str]) -> Dict[str, float]:
  """Open-book QA: EM/F1 plus recall-at-input (an answer was inside the packed passages)."""
  _check_lengths(targets, predictions)
  scores = squad([t["answers"] for t in targets], predictions)
  recall = [bool(t["answer_in_input"]) for t in targets]
  scores["recall_at_input"] = _percent(np.mean(recall)) if recall else 0.0
  return scores


# ---------------------------------------------------------------- generation


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Corpus BLEU (sacrebleu defaults: 13a tokenisation, exponential smoothing)."""
  _check_lengths(targets, predictions)
  return {"bleu": float(sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score)}


def rouge2(targets: Sequence[str], predictions: Sequence[str]) -> Dict[str, float]:
  """Mean ROUGE-2 F-measure with Porter stemming."""
  _check_lengths(targets, predictions)
  scorer = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)
  values = [scorer.score(t, p)["rouge2"].fmeasure for t, p in zip(targets, predictions)]
  return {"rouge2": _percent(np.mean(values)) if values else 0.0}


# ---------------------------------------------------------------- scoring


def rank_classification(targets: Sequence[Sequence[Any]],
                        scores: Sequence[float]) -> Dict[str, float]:
  """Accuracy of picking, per example, the highest-scoring choice.

  Each target is `(example_id, is_correct)` for one (example, choice) row, and each score is
  the model's log-likelihood of that choice. An example is right when its best choice is one
  of its correct choices (ReCoRD may have several).
  """
  _check_lengths(targets, scores)
  best: Dict[Hashable, Tuple[float, bool]] = {}
  for (example_id, is_correct), score in zip(targets, scores):
    example_id = int(example_id)
    score = float(np.sum(score))
    if example_id not in best or score > best[example_id][0]:
      best[example_id] = (score, bool(is_correct))
  if not best:
    return {"accuracy": 0.0}
  return {"accuracy": _percent(np.mean([correct for _, correct in best.values()]))}


# ---------------------------------------------------------------- aggregation


def median_over_templates(
    results: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, Sequence[str]],
    *,
    metric: str = "accuracy",
) -> Dict[str, float]:
  """Per dataset, the median of `metric` over its prompt templates' tasks (T0's report).

  Args:
    results: task name -> metrics, as `seqio.Evaluator` returns them.
    groups: dataset name -> the task names of its templates.
    metric: the metric to take the median of.
  """
  medians = {}
  for dataset, task_names in groups.items():
    missing = [n for n in task_names if n not in results or metric not in results[n]]
    if missing:
      raise ValueError(f"No {metric!r} result for template task(s) {missing} of {dataset!r}.")
    medians[dataset] = float(np.median([float(results[n][metric]) for n in task_names]))
  return medians


def normalized_average(
    scores: Mapping[str, float],
    *,
    ranges: Optional[Mapping[str, Tuple[float, float]]] = None,
) -> float:
  """Mean of scores after mapping each one's range onto [0, 100].

  Scores already on a 0-100 scale (everything in this module) need no range; give
  `ranges[name] = (low, high)` for any other scale, e.g. `(0, 1)` for a fraction.
  """
  if not scores:
    raise ValueError("normalized_average needs at least one score.")
  ranges = ranges or {}
  values = []
  for name, value in scores.items():
    low, high = ranges.get(name, (0.0, 100.0))
    if high <= low:
      raise ValueError(f"Range for {name!r} must have high > low, got ({low}, {high}).")
    values.append(100.0 * (float(value) - low) / (high - low))
  return float(np.mean(values))
