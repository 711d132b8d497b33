"""GLUE and SuperGLUE examples in the T5 text-to-text format.

The format is `"<task> key1: value1 key2: value2"` -> label name, where the leading task
name may be dropped ("taskless", the form prompt tuning trains on: the prompt, not a text
prefix, tells the frozen model which task it is doing). Every formatter keeps `label`
and `idx` so rank classification and metrics can use them later.
"""
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf

Example = Dict[str, tf.Tensor]
UNKNOWN_LABEL = "<unk>"


def _join(parts: Sequence[tf.Tensor]) -> tf.Tensor:
  return tf.strings.join(list(parts), separator=" ")


def label_text(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The label's name, or `<unk>` for unlabelled (test split, label -1) examples."""
  names = tf.constant(list(label_names))
  safe = tf.maximum(tf.cast(label, tf.int32), 0)
  return tf.where(tf.cast(label, tf.int32) < 0, tf.constant(UNKNOWN_LABEL), tf.gather(names, safe))


def key_value(
    *,
    task_prefix: Optional[str],
    fields: Sequence[Tuple[str, str]],
    label_names: Sequence[str],
) -> Callable[[Example], Example]:
  """Formats `fields` as `"name: value"` pairs, optionally after a task prefix.

  Args:
    task_prefix: the leading task name (e.g. "rte"), or None for the taskless form.
    fields: (name shown in the text, feature read from the example) pairs, in order.
      Different names let one dataset be dressed as another (MRPC as QQP).
    label_names: label index -> target text.
  """

  def format_example(x: Example) -> Example:
    parts = [tf.constant(task_prefix)] if task_prefix else []
    for shown, feature in fields:
      parts += [tf.constant(f"{shown}:"), x[feature]]
    out = dict(x)
    out["inputs"] = _join(parts)
    out["targets"] = label_text(x["label"], label_names)
    return out

  return format_example


def multirc(*, task_prefix: Optional[str],
            label_names: Sequence[str]) -> Callable[[Example], Example]:
  """MultiRC: question, answer, paragraph, with the paragraph's HTML markup removed."""
  base = key_value(
      task_prefix=task_prefix,
      fields=(("question", "question"), ("answer", "answer"), ("paragraph", "paragraph")),
      label_names=label_names,
  )

  def format_example(x: Example) -> Example:
    out = base(x)
    text = tf.strings.regex_replace(out["inputs"], "<br>", " ")
    out["inputs"] = tf.strings.regex_replace(text, "</?b>", "")
    out["idx/paragraph"] = x["idx"]["paragraph"]
    out["idx/question"] = x["idx"]["question"]
    out["idx/answer"] = x["idx"]["answer"]
    del out["idx"]
    return out

  return format_example


def stsb(*, task_prefix: Optional[str]) -> Callable[[Example], Example]:
  """STS-B: the similarity score rounded to the nearest 0.2, written with one decimal."""

  def format_example(x: Example) -> Example:
    parts = [tf.constant(task_prefix)] if task_prefix else []
    parts += [tf.constant("sentence1:"), x["sentence1"], tf.constant("sentence2:"), x["sentence2"]]
    out = dict(x)
    out["inputs"] = _join(parts)
    rounded = tf.round(tf.cast(x["label"], tf.float32) * 5.0) / 5.0
    out["targets"] = tf.strings.as_string(rounded, precision=1)
    return out

  return format_example


def _mark_word(text: tf.Tensor, word: tf.Tensor, index: tf.Tensor, mark: str) -> tf.Tensor:
  """Surrounds `word`, found at whitespace-token position `index`, with `mark`."""
  pattern = tf.strings.join(
      [r"^((?:\S+\s){", tf.strings.as_string(index), r"})(", _escape_regex(word), ")"])
  return tf.strings.regex_replace(text, pattern, rf"\1{mark} \2 {mark}")


def _escape_regex(text: tf.Tensor) -> tf.Tensor:
  return tf.strings.regex_replace(text, r"([\\.^$|?*+()\[\]{}])", r"\\\1")


def wsc(*, task_prefix: Optional[str], label_names: Sequence[str]) -> Callable[[Example], Example]:
  """WSC: the candidate noun phrase marked `* ... *`, the pronoun marked `# ... #`."""

  def format_example(x: Example) -> Example:
    text = _mark_word(x["text"], x["span1_text"], x["span1_index"], "*")
    # Marking span 1 inserted two tokens; shift span 2 when it comes later.
    shift = 2 * tf.cast(x["span1_index"] < x["span2_index"], x["span2_index"].dtype)
    text = _mark_word(text, x["span2_text"], x["span2_index"] + shift, "#")
    parts = [tf.constant(task_prefix)] if task_prefix else []
    out = dict(x)
    out["inputs"] = _join(parts + [tf.constant("text:"), text])
    out["targets"] = label_text(x["label"], label_names)
    return out

  return format_example


def record(*, task_prefix: Optional[str]) -> Callable[[Example], Example]:
  """ReCoRD: query, the candidate entities and the passage (highlights joined as sentences).

  The example keeps `answers` and `entities`; `targets` is the first answer (or `<unk>`).
  Use `one_example_per_answer` to train on every answer, as T5 does.
  """

  def format_example(x: Example) -> Example:
    passage = tf.strings.regex_replace(x["passage"], r"(\.|\?|\!|\"|\')\n@highlight\n", r"\1 ")
    passage = tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")
    prefix = f"{task_prefix} query:" if task_prefix else "query:"
    inputs = _join([
        tf.constant(prefix), x["query"],
        tf.constant("entities:"), tf.strings.reduce_join(x["entities"], separator=", "),
        tf.constant("passage:"), passage,
    ])
    first = tf.concat([x["answers"], tf.constant([UNKNOWN_LABEL])], axis=0)[0]
    return {
        "inputs": inputs,
        "targets": first,
        "answers": x["answers"],
        "entities": x["entities"],
        "idx/passage": x["idx"]["passage"],
        "idx/query": x["idx"]["query"],
    }

  return format_example


def one_example_per_answer(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """Repeats a ReCoRD example once per answer with that answer as target (unlabelled: once)."""

  def expand(x: Example) -> tf.data.Dataset:
    answers = tf.cond(
        tf.size(x["answers"]) > 0, lambda: x["answers"], lambda: tf.constant([UNKNOWN_LABEL]))
    rest = {k: v for k, v in x.items() if k != "targets"}
    return tf.data.Dataset.from_tensor_slices(answers).map(lambda a: {**rest, "targets": a})

  return dataset.flat_map(tf.autograph.experimental.do_not_convert(expand))


def label_choices(label_names: Sequence[str]) -> Callable[[Example], Example]:
  """Adds `choices` (all label names) and `correct` (one-hot label) for rank classification."""

  def add_choices(x: Example) -> Example:
    out = dict(x)
    out["choices"] = tf.constant(list(label_names))
    out["correct"] = tf.equal(tf.range(len(label_names)), tf.cast(x["label"], tf.int32))
    return out

  return add_choices


def record_choices(x: Example) -> Example:
  """ReCoRD rank classification ranks the candidate entities; any listed answer is correct."""
  out = dict(x)
  out["choices"] = x["entities"]
  matches = tf.equal(tf.expand_dims(x["entities"], 1), tf.expand_dims(x["answers"], 0))
  out["correct"] = tf.reduce_any(matches, axis=1)
  return out

