"""The prefix-LM objective as SeqIO token preprocessors (the T5 `prefix_lm` recipe).

A tokenized document becomes language-modelling examples in three steps:

  1. `select_random_chunk`: a document longer than `max_chunk_length` tokens keeps one chunk of
     that length, its start drawn among the chunk boundaries (0, L, 2L, ...), so every token is
     about equally likely to be kept; shorter documents are kept whole; empty ones are dropped.
  2. `split_into_segments`: the chunk is cut into consecutive segments of at most the inputs
     length minus one (room for EOS), each a separate example, so nothing is truncated away.
  3. `split_at_uniform_point`: each segment of n tokens is split after k tokens, k drawn
     uniformly from 1 .. n-1 (a one-token segment: k = 0); the first k tokens are the inputs
     (the prefix), the other n-k the targets (the continuation), so both sides of a split of a
     segment of two or more tokens are non-empty.

`prefix_lm` chains them. Targets longer than the targets length are trimmed by the task's
final `tokenize_and_append_eos`, as T5 trims them; with targets length >= inputs length
nothing is trimmed. Randomness comes from seqio's per-example seeds (`map_over_dataset`), so
`task.get_dataset(seed=...)` is reproducible. Written here rather than imported from the `t5`
package, which is not a dependency of this project (it pulls in mesh-tensorflow and more).
"""
from typing import Mapping, Optional, Tuple

import seqio
import tensorflow as tf

# T5's prefix_lm keeps chunks of up to 65536 tokens before segmenting them.
DEFAULT_MAX_CHUNK_LENGTH = 65536
FEATURE = "targets"  # the tokenized text before the split, as T5's text tasks key it
# Straight-line TF code: autograph conversion would only add tracing time.
_plain = tf.autograph.experimental.do_not_convert


def uniform_split_point(length: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The prefix length k for a segment of `length` tokens: uniform on 1 .. length-1.

  A one-token segment gets k = 0 (all target), a zero-token one k = 0.
  """
  length = tf.cast(length, tf.int32)
  highest = tf.maximum(length - 1, 0)
  lowest = tf.minimum(highest, 1)
  return tf.random.stateless_uniform([], seed=seed, minval=lowest, maxval=highest + 1,
                                     dtype=tf.int32)


def split_at_uniform_point(tokens: tf.Tensor, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """(prefix, continuation) of a 1-D token tensor split at `uniform_split_point`."""
  k = uniform_split_point(tf.size(tokens), seed)
  return tokens[:k], tokens[k:]


def chunk_of(tokens: tf.Tensor, seed: tf.Tensor, max_length: int) -> tf.Tensor:
  """One chunk of at most `max_length` tokens, starting at a uniformly drawn multiple of it."""
  n = tf.size(tokens)
  num_chunks = (n + max_length - 1) // max_length
  start = max_length * tf.random.stateless_uniform(
      [], seed=seed, minval=0, maxval=tf.maximum(num_chunks, 1), dtype=tf.int32)
  return tokens[start:tf.minimum(start + max_length, n)]


def select_random_chunk(dataset: tf.data.Dataset, *,
                        max_length: int = DEFAULT_MAX_CHUNK_LENGTH) -> tf.data.Dataset:
  """Drops empty documents; keeps one random chunk of each (see `chunk_of`)."""
  dataset = dataset.filter(_plain(lambda x: tf.size(x[FEATURE]) > 0))

  @seqio.map_over_dataset(num_seeds=1)
  def choose(x, seed):
    return {FEATURE: chunk_of(x[FEATURE], seed, max_length)}

  return choose(dataset)


def split_into_segments(dataset: tf.data.Dataset, segment_length: int) -> tf.data.Dataset:
  """One example per consecutive run of at most `segment_length` tokens of each document."""
  if segment_length < 1:
    raise ValueError(f"Prefix-LM segments need at least one token; got length {segment_length}.")

  def segments(x):
    tokens = x[FEATURE]
    n = tf.size(tokens)
    count = (n + segment_length - 1) // segment_length
    padded = tf.pad(tokens, [[0, count * segment_length - n]])
    rows = tf.reshape(padded, [count, segment_length])
    lengths = tf.minimum(segment_length, n - segment_length * tf.range(count))
    return {FEATURE: tf.RaggedTensor.from_tensor(rows, lengths=lengths)}

  return dataset.map(_plain(segments), num_parallel_calls=tf.data.AUTOTUNE).unbatch()


def split_prefix_and_continuation(dataset: tf.data.Dataset) -> tf.data.Dataset:
  """`targets` tokens -> `inputs` (the prefix) and `targets` (the continuation)."""

  @seqio.map_over_dataset(num_seeds=1)
  def split(x, seed):
    prefix, continuation = split_at_uniform_point(x[FEATURE], seed)
    return {"inputs": prefix, "targets": continuation}

  return split(dataset)


def prefix_lm(
    dataset: tf.data.Dataset,
    sequence_length: Optional[Mapping[str, int]],
    output_features: Mapping[str, seqio.Feature],
    *,
    max_chunk_length: int = DEFAULT_MAX_CHUNK_LENGTH,
) -> tf.data.Dataset:
  """The prefix-LM objective over tokenized documents in `targets` (see the module docstring).

  Needs `sequence_length['inputs']`: segments are at most that long, less one for the EOS the
  task appends when the inputs feature adds one.
  """
  if not sequence_length or not sequence_length.get("inputs"):
    raise ValueError("The prefix-LM objective needs sequence_length['inputs'] (the segment "
                     f"length); got {sequence_length!r}.")
  segment_length = sequence_length["inputs"]
  if output_features["inputs"].add_eos:
    segment_length -= 1
  dataset = select_random_chunk(dataset, max_length=max_chunk_length)
  dataset = split_into_segments(dataset, segment_length)
  return split_prefix_and_continuation(dataset)
