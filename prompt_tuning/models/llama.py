"""Rotary decoder-only LM (Llama, Mistral, Qwen2, Gemma, Gemma 2): a drop-in for `DecoderOnly`.

Same call, output (`LMOutput`), input hook and cache protocol as
`prompt_tuning.models.decoder_only.DecoderOnly`, so `DecoderOnlyModel`, the trainer and the
decoding loop use it unchanged:

  * tokens are embedded (Gemma scales them by sqrt(E)), then the hook may insert prompt slots;
    each slot's RoPE angle comes from the hooked `positions`, so a prefix prompt takes positions
    0..P-1 and the input tokens P.., exactly as if the prompt were fed as input embeddings;
  * `decode=True` appends to the `cache` collection: the stack keeps every written slot's
    position and validity (`index`, `next_position`, `positions`, `mask`), each layer its
    rotated keys and values; a padded prefill followed by single steps therefore continues each
    example at its own next position, and padded slots are never attended.

Parameters (all with logical axes): `token_embedder/embedding [V, E]`, `layers_i/...` (see
`llama_layers`), `final_norm/scale [E]` and, unless tied, `logits_dense/kernel [E, V]`.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models.decoder_only import LMOutput, hooked_inputs
from prompt_tuning.models.layers import Embed, constrain, mask_to_bias
from prompt_tuning.models.llama_config import LlamaConfig
from prompt_tuning.models.llama_layers import DecoderLayer, Projection, RMSNorm, softcap
from prompt_tuning.models.inputs import EmbeddedInputs

_REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


class LlamaDecoder(nn.Module):
  """A causal (or prefix-LM) rotary decoder over tokens or input embeddings.

  Attributes:
    config: the `LlamaConfig`.
    input_hook: optional module inserting learned slots (see `prompt_tuning.prompts.base`).
  """

  config: LlamaConfig
  input_hook: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg)
    layer_cls = DecoderLayer
    if cfg.remat_policy != "none":
      layer_cls = nn.remat(DecoderLayer, policy=_REMAT_POLICIES[cfg.remat_policy],
                           static_argnums=(4, 5))
    self.layers = [layer_cls(cfg, name=f"layers_{i}") for i in range(cfg.num_decoder_layers)]
    self.final_norm = RMSNorm(cfg)
    self.slot_cache = SlotCache()
    if not cfg.tie_word_embeddings:
      self.logits_dense = Projection(cfg.vocab_size, (axes.EMBED, axes.VOCAB), cfg,
                                     float32_output=True)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """`[B, L]` ids -> `[B, L, E]` input embeddings (Gemma's sqrt(E) scaling included), the
    space a prompt lives in."""
    x = self.token_embedder(tokens)
    if self.config.scale_embeddings:
      # Rounded to the parameter dtype first, as the reference implementation does.
      scale = jnp.asarray(self.config.emb_dim ** 0.5, self.config.parameter_dtype)
      x = x * scale.astype(x.dtype)
    return x

  def __call__(self, decoder_input_tokens: Optional[jax.Array], *,
               decoder_input_embeddings: Optional[jax.Array] = None,
               decoder_mask: Optional[jax.Array] = None,
               decoder_causal_attention: Optional[jax.Array] = None,
               hook_inputs: Optional[Mapping[str, Any]] = None, enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False) -> LMOutput:
    """Runs the LM; arguments as `DecoderOnly.__call__`.

    `decoder_input_embeddings [B, L, E]` are taken as already embedded (scaled, for Gemma).
    """
    inputs, prefix, is_step = hooked_inputs(
        self, self.embed, decoder_input_tokens,
        decoder_input_embeddings=decoder_input_embeddings, decoder_mask=decoder_mask,
        decoder_causal_attention=decoder_causal_attention, hook_inputs=hook_inputs,
        enable_dropout=enable_dropout, decode=decode, prefill=prefill)
    logits, hidden = self._stack(inputs, prefix, enable_dropout, decode, is_step)
    return LMOutput(logits=logits, hidden=hidden, inputs=inputs)

  def _stack(self, inputs: EmbeddedInputs, prefix, enable_dropout, decode, continue_positions):
    cfg = self.config
    batch, length = inputs.mask.shape
    positions, mask = inputs.positions.astype(jnp.int32), inputs.mask.astype(jnp.int32)
    query_slots = key_slots = jnp.arange(length)
    key_positions, key_mask, cache_index = positions, mask, None
    prefix_keys, visibility = prefix, inputs.visibility
    if decode:
      written = self.slot_cache(positions, mask, continue_positions)
      if written is not None:  # None: this call created the (empty) cache
        cache_index, positions, key_positions, key_mask = written
        capacity = key_mask.shape[1]
        query_slots, key_slots = cache_index + jnp.arange(length), jnp.arange(capacity)
        if prefix is not None:
          prefix_keys = jax.lax.dynamic_update_slice(
              jnp.zeros((batch, capacity), bool), prefix.astype(bool), (0, cache_index))
        if visibility is not None:
          visibility = jax.lax.dynamic_update_slice(
              jnp.ones((batch, length, capacity), bool), visibility, (0, 0, cache_index))

    valid_keys = key_mask.astype(bool)[:, None, :]
    allowed = (key_slots[None, :] <= query_slots[:, None])[None] & valid_keys
    if prefix is not None:
      allowed = allowed | (prefix.astype(bool)[:, :, None] & prefix_keys.astype(bool)[:, None]
                           & valid_keys)
    if visibility is not None:
      allowed = allowed & visibility
    bias = mask_to_bias(allowed)
    sliding_bias = None
    if cfg.sliding_window is not None:
      near = (positions[:, :, None] - key_positions[:, None, :]) < cfg.sliding_window
      sliding_bias = mask_to_bias(allowed & near)

    x = constrain(inputs.embeddings.astype(cfg.compute_dtype),
                  (axes.BATCH, axes.LENGTH, axes.EMBED))
    for i, layer in enumerate(self.layers):
      layer_bias = sliding_bias if cfg.is_sliding(i) else bias
      x = layer(x, positions, layer_bias, enable_dropout, decode, cache_index)
    hidden = self.final_norm(x)
    if cfg.tie_word_embeddings:
      logits = self.token_embedder.attend(hidden)
    else:
      logits = self.logits_dense(hidden)
    logits = softcap(logits, cfg.final_logit_softcap)
    return constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB)), hidden



class SlotCache(nn.Module):
  """Position and validity of every cached slot, so padded chunks can be appended.

  Variables (collection `cache`): `index` (slots written), `next_position [B]` (one past each
  example's last real position), `positions [B, capacity]`, `mask [B, capacity]`. The first
  call creates them empty with capacity = that call's length and returns None.
  """

  @nn.compact
  def __call__(self, positions: jax.Array, mask: jax.Array, continue_positions: bool):
    """Appends a `[B, L]` chunk; returns (its first slot, its positions (continued from each
    example's last real slot when `continue_positions`), cached positions, cached mask)."""
    batch, length = mask.shape
    initializing = not self.has_variable("cache", "index")
    zeros = lambda *shape: (lambda: jnp.zeros(shape, jnp.int32))
    index = self.variable("cache", "index", zeros())
    next_position = self.variable("cache", "next_position", zeros(batch))
    cached_positions = self.variable("cache", "positions", zeros(batch, length))
    cached_mask = self.variable("cache", "mask", zeros(batch, length))
    if initializing:
      return None
    start = index.value
    if continue_positions:
      positions = next_position.value[:, None] + jnp.arange(length, dtype=jnp.int32)[None]
    cached_positions.value = jax.lax.dynamic_update_slice(cached_positions.value, positions,
                                                          (0, start))
    cached_mask.value = jax.lax.dynamic_update_slice(cached_mask.value, mask, (0, start))
    next_position.value = jnp.maximum(
        next_position.value, jnp.max(jnp.where(mask > 0, positions + 1, 0), axis=1))
    index.value = start + length
    return start, positions, cached_positions.value, cached_mask.value
