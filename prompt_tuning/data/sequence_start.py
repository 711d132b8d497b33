"""Prefix-LM batches that start with the model's own BOS token, with masks from lengths.

`seqio.PrefixLMFeatureConverter` follows the T5X convention: the decoder input is the
concatenated inputs + targets shifted right with id 0 as the start token, and id 0 is also the
padding, so its loss weights come from `token != 0`. That is right for the T5 vocabulary, but
Llama-family tokenizers have a real token at id 0 (Llama 3's "!") and their models were
trained with their own BOS id at the sequence start (128000 for Llama 3, 1 for Llama 2 and
Mistral, 2 for Gemma) or with no start token at all (Qwen2).

`StartTokenPrefixLMConverter` keeps seqio's trimming, padding and pass-through features (it
subclasses the seqio converter) and rewrites only the per-example layout. Every mask it writes
comes from the example's input and target lengths, never from token ids:

  with a BOS id b, inputs i1..in, targets t1..tm (n + m = N real positions, padded to L):
    decoder_input_tokens     b  i1 .. in t1 .. t(m-1)   0 ..
    decoder_target_tokens    i1 .. in t1 .. tm          0 ..
    decoder_loss_weights     1 on the m target positions (a target id 0 included)
    decoder_causal_attention 1 on the first n + 1 positions (BOS + inputs), as seqio's
  without a start token (`start_token=None`), the tokens themselves are the decoder input:
    decoder_input_tokens     i1 .. in t1 .. tm          0 ..
    decoder_target_tokens    i2 .. in t1 .. tm 0        0 ..
    decoder_loss_weights     1 on the m positions that predict t1..tm
    decoder_causal_attention 1 on the n input positions
    (with empty inputs the first target token has nothing to be predicted from: no loss)

The model's attention mask for a batch is `decoder_causal_attention | decoder_loss_weights`
(`real_positions`): every position that reads a real token, BOS included.
Unpacked datasets only (the model wrappers do not read packed batches).
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf


class StartTokenPrefixLMConverter(seqio.PrefixLMFeatureConverter):
  """`seqio.PrefixLMFeatureConverter` with a chosen start token and length-based masks."""

  def __init__(self, start_token: Optional[int], **kwargs):
    """Args:
      start_token: the id every sequence starts with (the model's BOS); None for models
        without one (Qwen2), whose decoder input is the tokens themselves.
      **kwargs: as `seqio.PrefixLMFeatureConverter` (`pack` must be False).
    """
    if kwargs.get("pack", True):
      raise ValueError("StartTokenPrefixLMConverter does not pack; pass pack=False.")
    if start_token is not None and start_token < 0:
      raise ValueError(f"start_token must be a token id >= 0 or None, got {start_token}.")
    self.start_token = start_token
    super().__init__(**kwargs)

  def _convert_example(self, features: Mapping[str, tf.Tensor]) -> Mapping[str, tf.Tensor]:
    tokens = features["targets"]  # inputs + targets, zero-padded to the model length
    dtype = tokens.dtype
    positions = tf.range(tf.size(tokens))
    # seqio fills both widths over the real positions only and pads them with 0, so
    # `inputs_width_add_pos > 0` marks the real positions whatever their token ids are.
    real = features["inputs_width_add_pos"] > 0
    inputs_part = positions < features["inputs_width"]
    targets_part = real & ~inputs_part
    if self.start_token is not None:
      start = tf.fill([1], tf.cast(self.start_token, dtype))
      shifted = tf.concat([start, tokens[:-1]], axis=0)
      converted = {
          "decoder_target_tokens": tokens,
          "decoder_input_tokens": tf.where(real, shifted, tf.zeros_like(tokens)),
          "decoder_loss_weights": tf.cast(targets_part, dtype),
          "decoder_causal_attention": tf.cast(positions < features["inputs_width_add_pos"],
                                              dtype),
      }
    else:
      next_real = tf.concat([real[1:], [False]], axis=0)
      converted = {
          "decoder_target_tokens": tf.concat([tokens[1:], tf.zeros([1], dtype)], axis=0),
          "decoder_input_tokens": tokens,
          "decoder_loss_weights": tf.cast(
              tf.concat([targets_part[1:], [False]], axis=0) & next_real, dtype),
          "decoder_causal_attention": tf.cast(inputs_part & real, dtype),
      }
    converted.update({k: features[k] for k in self._passthrough_features})
    return converted


def real_positions(batch: Mapping[str, np.ndarray]):
  """`[B, L]` 1 where a converted batch's decoder input holds a real token (see module doc)."""
  causal = batch["decoder_causal_attention"]
  return ((causal > 0) | (batch["decoder_loss_weights"] > 0)).astype(causal.dtype)
