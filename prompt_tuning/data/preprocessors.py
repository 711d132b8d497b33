"""Task-independent preprocessors shared by the task registrations."""
from typing import Callable, Dict, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

Example = Dict[str, tf.Tensor]
# Every function mapped here is straight-line TF code; autograph would only add tracing time.
_plain = tf.autograph.experimental.do_not_convert


def map_examples(fn: Callable[[Example], Example]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Wraps a per-example function as a seqio preprocessor.

  Formatters here are straight-line TF code, so autograph conversion is skipped: it only
  adds tracing time to every pipeline (hundreds of them in a P3 mixture).
  """
  plain = _plain(fn)

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(plain, num_parallel_calls=tf.data.AUTOTUNE)

  preprocess.__name__ = f"map_{getattr(fn, '__name__', 'examples')}"
  return preprocess


def tokenize_and_append_eos(
    dataset: tf.data.Dataset,
    output_features: Mapping[str, seqio.Feature],
    sequence_length: Optional[Mapping[str, int]] = None,
    copy_pretokenized: bool = True,
) -> tf.data.Dataset:
  """Tokenizes text output features, then trims each to its length - 1 and appends EOS.

  Features that are already token ids (packed by the reader, stored by P3) are not
  re-tokenized, unlike `seqio.preprocessors.tokenize`; the text is kept as
  `<name>_pretokenized`. Doing both steps in one map keeps pipeline construction cheap,
  which matters with hundreds of tasks in a mixture.
  """

  def process(x: Example) -> Example:
    out = dict(x)
    for name, feature in output_features.items():
      if name not in x:
        continue
      value = x[name]
      if value.dtype == tf.string:
        if copy_pretokenized:
          out[f"{name}_pretokenized"] = value
        value = feature.vocabulary.encode_tf(value)
      if feature.add_eos:
        if sequence_length and sequence_length.get(name):
          value = value[:sequence_length[name] - 1]
        eos = tf.constant([feature.vocabulary.eos_id], dtype=value.dtype)
        value = tf.concat([value, eos], axis=0)
      out[name] = value
    return out

  return dataset.map(_plain(process), num_parallel_calls=tf.data.AUTOTUNE)


def drop_trailing_eos(
    dataset: tf.data.Dataset, output_features: Mapping[str, seqio.Feature]
) -> tf.data.Dataset:
  """Removes one final EOS from stored token ids so `tokenize_and_append_eos` adds exactly one."""

  def drop(x: Example) -> Example:
    out = dict(x)
    for name, feature in output_features.items():
      if name in x and x[name].dtype != tf.string:
        ids = x[name]
        eos = tf.cast(feature.vocabulary.eos_id, ids.dtype)
        ends_with_eos = tf.cast(tf.reduce_any(tf.equal(ids[-1:], eos)), tf.int32)
        out[name] = ids[:tf.size(ids) - ends_with_eos]
    return out

  return dataset.map(_plain(drop), num_parallel_calls=tf.data.AUTOTUNE)


def rank_classification(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """One example per answer choice, for scoring every choice and picking the best.

  Expects `inputs` (text), `choices` ([C] text) and `correct` ([C] bool). Emits C examples
  with `targets` = the choice, `idx` = [example number, choice number], `is_correct` and
  `weight` (1.0); the example number is the position in this dataset, so the metric can
  group the rows of one example back together.
  """

  def expand(index: tf.Tensor, x: Example) -> tf.data.Dataset:
    num_choices = tf.shape(x["choices"])[0]
    index = tf.cast(index, tf.int32)
    rows = {
        "inputs": tf.fill([num_choices], x["inputs"]),
        "targets": x["choices"],
        "idx": tf.stack([tf.fill([num_choices], index), tf.range(num_choices)], axis=1),
        "is_correct": tf.cast(x["correct"], tf.bool),
        "weight": tf.ones([num_choices], tf.float32),
    }
    return tf.data.Dataset.from_tensor_slices(rows)

  return dataset.enumerate().flat_map(_plain(expand))


def select(keys: Sequence[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """Keeps only `keys`, so datasets with different raw features can be mixed or zipped."""
  keys = tuple(keys)

  def select_keys(dataset: tf.data.Dataset) -> tf.data.Dataset:
    keep = _plain(lambda x: {k: x[k] for k in keys})
    return dataset.map(keep, num_parallel_calls=tf.data.AUTOTUNE)

  return select_keys


def translate(
    *, source: str, target: str, template: str, source_name: str, target_name: str
) -> Callable[[Example], Example]:
  """Formats a TFDS translation pair with `template.format(source=..., target=...)` + sentence.

  Args:
    source/target: language codes, the keys of the TFDS example (e.g. "en", "fr").
    template: e.g. "Translate {source} to {target}: ".
    source_name/target_name: the language names written into the template.
  """
  prefix = template.format(source=source_name, target=target_name)

  def format_example(x: Example) -> Example:
    return {
        "inputs": tf.strings.join([prefix, x[source]]),
        "targets": x[target],
    }

  return format_example


def question_answer(
    *,
    question_key: str,
    answers_fn: Callable[[Example], tf.Tensor],
    prefix: str = "",
    suffix: str = "",
) -> Callable[[Example], Example]:
  """QA as text: `prefix + question + suffix` -> the first answer, keeping all `answers`."""

  def format_example(x: Example) -> Example:
    answers = answers_fn(x)
    first = tf.concat([answers, tf.constant([""])], axis=0)[0]
    return {
        "inputs": tf.strings.join([prefix, x[question_key], suffix]),
        "targets": first,
        "answers": answers,
    }

  return format_example
