"""Postprocessors: turn decoded text (and, for targets, the example) into metric inputs.

seqio calls a task's postprocessor as `fn(text, example=..., is_target=...)` on both the
reference target and each prediction, so one function decides what the metric compares.
"""
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np


def _text(value: Any) -> str:
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return str(value)


def _texts(values: Any) -> list:
  return [_text(v) for v in np.asarray(values).reshape(-1)]


def strip(text: str, example: Optional[Mapping[str, Any]] = None, is_target: bool = False) -> str:
  del example, is_target
  return _text(text).strip()


def label_to_class_id(label_names: Sequence[str]) -> Callable[..., int]:
  """Maps a label string to its index in `label_names`; anything else becomes -1."""
  lookup = {name: i for i, name in enumerate(label_names)}

  def postprocess(text: str, example=None, is_target: bool = False) -> int:
    del example, is_target
    return lookup.get(_text(text).strip(), -1)

  return postprocess


def string_to_float(text: str, example=None, is_target: bool = False,
                    default: float = -1.0) -> float:
  """Parses a regression target/prediction (STS-B); unparseable predictions become `default`."""
  del example, is_target
  try:
    return float(_text(text).strip())
  except ValueError:
    return default


def multirc(label_names: Sequence[str]) -> Callable[..., Any]:
  """Targets become `{"group": question id, "value": label id}`, predictions a label id."""
  to_id = label_to_class_id(label_names)

  def postprocess(text: str, example=None, is_target: bool = False):
    value = to_id(text)
    if not is_target:
      return value
    group = (int(example["idx/paragraph"]), int(example["idx/question"]))
    return {"group": group, "value": value}

  return postprocess


def record(text: str, example=None, is_target: bool = False):
  """Targets become `{"group": query id, "answers": [...]}`; predictions stay text."""
  if not is_target:
    return _text(text).strip()
  group = (int(example["idx/passage"]), int(example["idx/query"]))
  return {"group": group, "answers": _texts(example["answers"])}


def answers_list(text: str, example=None, is_target: bool = False):
  """Targets become the example's full answer list (SQuAD-style max over answers)."""
  if not is_target:
    return _text(text).strip()
  return _texts(example["answers"])


def reader_answers(text: str, example=None, is_target: bool = False):
  """Targets carry the answers and whether one of them made it into the packed input."""
  if not is_target:
    return _text(text).strip()
  return {
      "answers": _texts(example["answers"]),
      "answer_in_input": bool(example["answer_in_input"]),
  }


def rank_classification(score: Any, example=None, is_target: bool = False):
  """Targets become `(example id, is_correct)`; scores pass through unchanged."""
  if not is_target:
    return score
  return (int(np.asarray(example["idx"]).reshape(-1)[0]), bool(example["is_correct"]))


def until_next_example(text: str, prefixes: Sequence[str]) -> str:
  """The text before the first of `prefixes` (where a model starts inventing the next shot)."""
  text = _text(text)
  cut = len(text)
  for prefix in prefixes:
    position = text.find(prefix)
    if position != -1:
      cut = min(cut, position)
  return text[:cut].strip()


def first_word(text: str) -> str:
  """The first word, lower-cased, without surrounding punctuation."""
  words = _text(text).strip().split()
  if not words:
    return ""
  return words[0].strip(".,;:!?\"'()").lower()


def fewshot_generation(prefixes: Sequence[str]) -> Callable[..., str]:
  """Predictions are cut before the next shot's prefix; targets are only stripped."""

  def postprocess(text: str, example=None, is_target: bool = False) -> str:
    del example
    if is_target:
      return _text(text).strip()
    return until_next_example(text, prefixes)

  return postprocess


def fewshot_answers(prefixes: Sequence[str]) -> Callable[..., Any]:
  """Like `fewshot_generation`, but targets become the example's answer list."""
  cut = fewshot_generation(prefixes)

  def postprocess(text: str, example=None, is_target: bool = False):
    if is_target:
      return _texts(example["answers"])
    return cut(text)

  return postprocess


def fewshot_label(label_names: Sequence[str], prefixes: Sequence[str] = ()) -> Callable[..., int]:
  """Classification by the first generated word, compared with the label words."""
  lookup = {name.lower(): i for i, name in enumerate(label_names)}

  def postprocess(text: str, example=None, is_target: bool = False) -> int:
    del example, is_target
    return lookup.get(first_word(until_next_example(text, prefixes)), -1)

  return postprocess
