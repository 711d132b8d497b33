"""Few-shot prompts: fill a text template per example, then prepend k solved training examples.

Used to measure what fine-tuning makes a model forget: the same frozen-format prompts are
given to a model before and after adaptation. A k-shot input is
`shot_1 SEP ... shot_k SEP query`, where a shot is `template(x) + " " + answer` and the
query is `template(x)` alone; SEP is `EXAMPLE_SEPARATOR`.
"""
import functools
import re
from typing import Callable, Dict, Optional, Sequence

import seqio
from seqio import experimental as seqio_experimental
import tensorflow as tf

from prompt_tuning.data import preprocessors

Example = Dict[str, tf.Tensor]
EXAMPLE_SEPARATOR = "\n\n"
_PLACEHOLDER = re.compile(r"(\{[\w/]+\})")


def _feature(x: Example, path: str) -> tf.Tensor:
  value = x
  for key in path.split("/"):
    value = value[key]
  return value


def fill_template(template: str, x: Example) -> tf.Tensor:
  """`template` with each `{feature}` (or `{parent/child}`) replaced by that text feature."""
  parts = []
  for piece in _PLACEHOLDER.split(template):
    if _PLACEHOLDER.fullmatch(piece):
      parts.append(_feature(x, piece[1:-1]))
    elif piece:
      parts.append(tf.constant(piece))
  return tf.strings.join(parts)


def templated(
    template: str,
    *,
    target: Callable[[Example], tf.Tensor],
    answers: Optional[Callable[[Example], tf.Tensor]] = None,
) -> Callable[[Example], Example]:
  """Per-example formatter: `inputs` from the template, `targets` (and `answers`) from fns."""

  def format_example(x: Example) -> Example:
    out = {"inputs": fill_template(template, x), "targets": target(x)}
    if answers is not None:
      out["answers"] = answers(x)
    return out

  return format_example


def label_word(label_words: Sequence[str]) -> Callable[[Example], tf.Tensor]:
  """The word standing for the example's integer `label`."""
  words = tf.constant(list(label_words))
  return lambda x: tf.gather(words, tf.maximum(tf.cast(x["label"], tf.int32), 0))


def feature(path: str) -> Callable[[Example], tf.Tensor]:
  return lambda x: _feature(x, path)


def first_of(path: str) -> Callable[[Example], tf.Tensor]:
  """The first string of a list feature ('' when empty)."""
  return lambda x: tf.concat([_feature(x, path), tf.constant([""])], axis=0)[0]


def fewshot_source(
    source: seqio.DataSource,
    *,
    num_shots: int,
    format_fn: Callable[[Example], Example],
) -> seqio_experimental.FewshotDataSource:
  """Pairs each evaluation example with `num_shots` formatted training examples."""
  formatter = preprocessors.map_examples(format_fn)
  return seqio_experimental.FewshotDataSource(
      original_source=source,
      num_shots=num_shots,
      train_preprocessors=[formatter],
      eval_preprocessors=[formatter],
      train_split="train",
  )


join_shots = functools.partial(
    seqio_experimental.fewshot_preprocessor,
    inputs_prefix="",
    targets_prefix=" ",
    example_separator=EXAMPLE_SEPARATOR,
)
join_shots.__doc__ = "Builds the k-shot `inputs` from the paired train/eval examples."
