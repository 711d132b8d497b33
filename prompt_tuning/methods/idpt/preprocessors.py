"""SeqIO preprocessors that give each example the generator's own tokens (`generator_tokens`).

The prompt generator's small encoder may use another vocabulary and another length than the
frozen LM, so its tokens are a separate feature: the hook input `generator_tokens` (`[L']`,
int32, EOS-terminated). Add one of these after `seqio.preprocessors.tokenize`.
"""
from __future__ import annotations

from typing import Callable

import seqio
import tensorflow as tf

from prompt_tuning.methods.idpt.generator import GENERATOR_TOKENS


def tokenize_for_generator(vocabulary: seqio.Vocabulary, source: str = "inputs_pretokenized",
                           name: str = GENERATOR_TOKENS) -> Callable:
  """A preprocessor writing `vocabulary.encode(example[source]) + [EOS]` to `example[name]`.

  `source` is a text feature (seqio's `tokenize` keeps the text as `<feature>_pretokenized`);
  the converter trims and pads the result to the hook input's length.
  """
  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    if source not in dataset.element_spec:
      raise ValueError(f"tokenize_for_generator reads the text feature {source!r}, but the "
                       f"examples have {sorted(dataset.element_spec)}.")

    def add(example):
      ids = tf.cast(vocabulary.encode_tf(example[source]), tf.int32)
      eos = tf.constant([vocabulary.eos_id], tf.int32)
      return {**example, name: tf.concat([ids, eos], axis=0)}
    return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)
  return preprocess


def copy_inputs_as_generator_tokens(dataset: tf.data.Dataset,
                                    name: str = GENERATOR_TOKENS) -> tf.data.Dataset:
  """`example[name] = example['inputs']`: the generator reads the LM's own tokens (same
  vocabulary, e.g. a generator whose encoder is the LM's own)."""
  return dataset.map(lambda ex: {**ex, name: ex["inputs"]})
