"""T5 encoder-decoder (T5 1.0, T5 1.1 / LM-adapted, mT5) with an input-embedding hook.

The hook (`input_hook`, e.g. a soft prompt) sees the embedded encoder input and may insert or
replace embeddings; everything after it is the frozen model. Parameter names match T5X's
example network, so its checkpoints load without renaming.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.layers import Embed
from prompt_tuning.models.transformer import DecoderStack, EncoderStack
from prompt_tuning.models.inputs import embedded_from_tokens


class EncoderDecoder(nn.Module):
  """T5-family encoder-decoder; see `encode`, `decode` and `__call__`."""

  config: ModelConfig
  input_hook: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg)
    self.encoder = EncoderStack(cfg)
    self.decoder = DecoderStack(cfg, shared_embedding=self.token_embedder)

  def encode(self, encoder_input_tokens: Optional[jax.Array], *,
             encoder_input_embeddings: Optional[jax.Array] = None,
             encoder_mask: Optional[jax.Array] = None,
             hook_inputs: Optional[Mapping[str, Any]] = None, enable_dropout: bool = False):
    """Embeds (or takes) the input, applies the hook, runs the encoder.

    Args:
      encoder_input_tokens: `[B, L]` ids, 0 = padding. May be None when embeddings are given.
      encoder_input_embeddings: optional `[B, L, E]` used instead of looking tokens up.
      encoder_mask: optional `[B, L]`; defaults to `tokens > 0` (or all ones for embeddings).
      hook_inputs: per-example side inputs for the hook, e.g. `{'prompt_ids': [B]}`.

    Returns:
      `(encoded [B, L', E], encoder_mask [B, L'])`, L' including any slots the hook inserted.
    """
    if encoder_input_embeddings is None:
      if encoder_input_tokens is None:
        raise ValueError("encode needs encoder_input_tokens or encoder_input_embeddings.")
      embeddings = self.token_embedder(encoder_input_tokens)
    else:
      embeddings = encoder_input_embeddings.astype(self.config.compute_dtype)
    if encoder_mask is None:
      encoder_mask = (encoder_input_tokens > 0 if encoder_input_tokens is not None
                      else jnp.ones(embeddings.shape[:2], jnp.int32))
    inputs = embedded_from_tokens(embeddings, encoder_mask)
    if self.input_hook is not None:
      inputs = self.input_hook(inputs, hook_inputs=hook_inputs, enable_dropout=enable_dropout)
    return self.encoder(inputs, enable_dropout=enable_dropout), inputs.mask

  def decode(self, encoded: jax.Array, encoder_mask: jax.Array, decoder_input_tokens: jax.Array,
             *, enable_dropout: bool = False, decode: bool = False, return_hidden: bool = False):
    """Runs the decoder over `decoder_input_tokens` `[B, T]` (0 is the start token).

    With `decode=True` the call appends its T tokens to the `cache` collection (call with
    `mutable=['cache']`); the first such call on a module without a cache creates an empty one
    whose capacity is T (see `init_decoder_cache`).

    Returns:
      logits `[B, T, V]` float32, or `(logits, hidden [B, T, E])` with `return_hidden`.
    """
    embeddings = self.token_embedder(decoder_input_tokens)
    inputs = embedded_from_tokens(embeddings, jnp.ones(decoder_input_tokens.shape, jnp.int32))
    logits, hidden = self.decoder(inputs, encoded=encoded, encoder_mask=encoder_mask,
                                  enable_dropout=enable_dropout, decode=decode,
                                  continue_positions=decode)
    return (logits, hidden) if return_hidden else logits

  def __call__(self, encoder_input_tokens: Optional[jax.Array], decoder_input_tokens: jax.Array,
               *, encoder_input_embeddings: Optional[jax.Array] = None,
               encoder_mask: Optional[jax.Array] = None,
               hook_inputs: Optional[Mapping[str, Any]] = None, enable_dropout: bool = False,
               return_hidden: bool = False):
    """Teacher-forced forward pass: logits `[B, T, V]` float32 (and hidden states if asked)."""
    encoded, mask = self.encode(encoder_input_tokens,
                                encoder_input_embeddings=encoder_input_embeddings,
                                encoder_mask=encoder_mask, hook_inputs=hook_inputs,
                                enable_dropout=enable_dropout)
    return self.decode(encoded, mask, decoder_input_tokens, enable_dropout=enable_dropout,
                       return_hidden=return_hidden)


def init_decoder_cache(module: EncoderDecoder, params, encoded: jax.Array,
                       encoder_mask: jax.Array, max_decode_length: int):
    """Returns an empty decoder cache for `encoded` `[B, L, E]` holding `max_decode_length` steps.

    Cross-attention keys and values are projected from `encoded` here, once; decoding steps only
    read them.
    """
    batch = encoded.shape[0]
    _, variables = module.apply(
        {"params": params}, encoded, encoder_mask,
        jnp.zeros((batch, max_decode_length), jnp.int32), decode=True, method="decode",
        mutable=["cache"])
    return variables["cache"]
