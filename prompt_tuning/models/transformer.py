"""Transformer layers and stacks shared by the encoder-decoder and the decoder-only model.

Position biases and attention masks are computed once per stack and shared by its layers.
A decoder stack in `decode` mode keeps, in the `cache` collection, the position and validity
of every slot written so far, so chunks of any length (a prompted prefill, then single tokens)
can be appended to the same cache, and padded examples keep correct relative positions.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.layers import (Dense, Embed, MlpBlock, MultiHeadAttention,
                                         RelativePositionBias, RMSNorm, constrain, mask_to_bias)
from prompt_tuning.models.inputs import EmbeddedInputs

_REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _maybe_remat(layer_cls, config: ModelConfig, static_argnums: Tuple[int, ...]):
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=_REMAT_POLICIES[config.remat_policy],
                  static_argnums=static_argnums)


def _dropout(config: ModelConfig, x: jax.Array, enable_dropout: bool) -> jax.Array:
  return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))(x, deterministic=not enable_dropout)


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and feed-forward, each added back to the residual stream."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, bias, enable_dropout: bool = False):
    cfg = self.config
    h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg, name="attention")(h, h, bias, enable_dropout)
    x = x + _dropout(cfg, h, enable_dropout)
    h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    x = x + _dropout(cfg, MlpBlock(cfg, name="mlp")(h, enable_dropout), enable_dropout)
    return constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class DecoderLayer(nn.Module):
  """Causal self-attention, optional cross-attention to an encoder, and feed-forward."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x, bias, encoded, cross_bias, enable_dropout: bool = False,
               decode: bool = False, cache_index=None):
    cfg = self.config
    h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
    h = MultiHeadAttention(cfg, name="self_attention")(h, h, bias, enable_dropout, decode,
                                                      cache_index)
    x = x + _dropout(cfg, h, enable_dropout)
    if encoded is not None:
      h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
      h = MultiHeadAttention(cfg, is_cross_attention=True, name="encoder_decoder_attention")(
          h, encoded, cross_bias, enable_dropout, decode, cache_index)
      x = x + _dropout(cfg, h, enable_dropout)
    h = RMSNorm(cfg, name="pre_mlp_layer_norm")(x)
    x = x + _dropout(cfg, MlpBlock(cfg, name="mlp")(h, enable_dropout), enable_dropout)
    return constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))


class EncoderStack(nn.Module):
  """Bidirectional stack over (possibly prompted) embedded inputs; returns normed hidden states."""

  config: ModelConfig

  @nn.compact
  def __call__(self, inputs: EmbeddedInputs, enable_dropout: bool = False) -> jax.Array:
    cfg = self.config
    mask = inputs.mask.astype(bool)
    allowed = mask[:, :, None] & mask[:, None, :]
    if inputs.visibility is not None:
      allowed = allowed & inputs.visibility
    bias = mask_to_bias(allowed) + RelativePositionBias(cfg, bidirectional=True,
                                                        name="relpos_bias")(
                                                            inputs.positions, inputs.positions)
    x = _dropout(cfg, inputs.embeddings.astype(cfg.compute_dtype), enable_dropout)
    x = constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
    layer_cls = _maybe_remat(EncoderLayer, cfg, static_argnums=(3,))
    for i in range(cfg.num_encoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, enable_dropout)
    x = RMSNorm(cfg, name="encoder_norm")(x)
    return _dropout(cfg, x, enable_dropout)


class DecoderStack(nn.Module):
  """Causal stack (optionally attending to an encoder) that ends in vocabulary logits.

  Returns `(logits [B, T, V] float32, hidden [B, T, E])`, hidden being the final normed states
  before the logits projection.
  """

  config: ModelConfig
  shared_embedding: Optional[Embed] = None

  @nn.compact
  def __call__(self, inputs: EmbeddedInputs, *, encoded=None, encoder_mask=None, prefix=None,
               enable_dropout: bool = False, decode: bool = False,
               continue_positions: bool = False):
    cfg = self.config
    batch, length = inputs.mask.shape
    positions, mask = inputs.positions.astype(jnp.int32), inputs.mask.astype(jnp.int32)
    query_slots = key_slots = jnp.arange(length)
    key_positions, key_mask, cache_index = positions, mask, None
    prefix_keys, visibility = prefix, inputs.visibility
    cache = None
    if decode:
      initializing = not self.has_variable("cache", "index")
      cache = self._cache_variables(batch, length)
      if initializing:
        cache = None
    if cache is not None:
      cache_index = cache["index"].value
      positions, key_positions, key_mask = self._append_slots(
          cache, positions, mask, continue_positions)
      max_length = key_mask.shape[1]
      query_slots, key_slots = cache_index + jnp.arange(length), jnp.arange(max_length)
      if prefix is not None:
        prefix_keys = jax.lax.dynamic_update_slice(
            jnp.zeros((batch, max_length), bool), prefix.astype(bool), (0, cache_index))
      if visibility is not None:
        visibility = jax.lax.dynamic_update_slice(
            jnp.ones((batch, length, max_length), bool), visibility, (0, 0, cache_index))

    allowed = (key_slots[None, :] <= query_slots[:, None])[None] & key_mask.astype(bool)[:, None]
    if prefix is not None:
      allowed = allowed | (prefix.astype(bool)[:, :, None] & prefix_keys.astype(bool)[:, None, :]
                           & key_mask.astype(bool)[:, None])
    if visibility is not None:
      allowed = allowed & visibility
    bias = mask_to_bias(allowed)
    x = inputs.embeddings.astype(cfg.compute_dtype)
    if cfg.position_embedding == "relative":
      bias = bias + RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")(
          positions, key_positions)
    else:
      table = Embed(cfg.max_length, cfg, table_axes=(axes.ABS_POS, axes.EMBED),
                    name="position_embedder")
      x = x + table(jnp.clip(positions, 0, cfg.max_length - 1))
    cross_bias = None
    if encoded is not None:
      cross_bias = mask_to_bias(jnp.broadcast_to(encoder_mask.astype(bool)[:, None, :],
                                                 (batch, length, encoder_mask.shape[1])))

    x = constrain(_dropout(cfg, x, enable_dropout), (axes.BATCH, axes.LENGTH, axes.EMBED))
    layer_cls = _maybe_remat(DecoderLayer, cfg, static_argnums=(5, 6))
    for i in range(cfg.num_decoder_layers):
      x = layer_cls(cfg, name=f"layers_{i}")(x, bias, encoded, cross_bias, enable_dropout, decode,
                                             cache_index)
    hidden = _dropout(cfg, RMSNorm(cfg, name="decoder_norm")(x), enable_dropout)
    if cfg.logits_via_embedding:
      # Tied output projection: T5 rescales by 1/sqrt(E) before reusing the embedding table.
      logits = self.shared_embedding.attend(hidden * (cfg.emb_dim ** -0.5))
    else:
      logits = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), cfg, float32_output=True,
                     name="logits_dense")(hidden)
    return constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB)), hidden

  def _cache_variables(self, batch: int, length: int):
    """The stack's cache; created empty, with capacity `length`, by the first decode call."""
    zeros = lambda *shape: (lambda: jnp.zeros(shape, jnp.int32))
    return {
        "index": self.variable("cache", "index", zeros()),
        "next_position": self.variable("cache", "next_position", zeros(batch)),
        "positions": self.variable("cache", "positions", zeros(batch, length)),
        "mask": self.variable("cache", "mask", zeros(batch, length)),
    }

  @staticmethod
  def _append_slots(cache, positions, mask, continue_positions):
    """Writes this chunk's positions and validity into the cache; returns what attention needs."""
    length = mask.shape[1]
    index, next_position = cache["index"], cache["next_position"]
    cached_positions, cached_mask = cache["positions"], cache["mask"]
    cache_index = index.value
    if continue_positions:
      positions = next_position.value[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
    cached_positions.value = jax.lax.dynamic_update_slice(cached_positions.value, positions,
                                                          (0, cache_index))
    cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, mask, (0, cache_index))
    next_position.value = jnp.maximum(
        next_position.value, jnp.max(jnp.where(mask > 0, positions + 1, 0), axis=1))
    index.value = cache_index + length
    return positions, cached_positions.value, cached_mask.value
