"""Decoder-only language model (causal or prefix-LM) with the same blocks and hook as T5."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.layers import Embed
from prompt_tuning.models.transformer import DecoderStack
from prompt_tuning.models.inputs import EmbeddedInputs, embedded_from_tokens


@flax.struct.dataclass
class LMOutput:
  """What a decoder-only call returns.

  `inputs` is the sequence the stack actually ran on (after the hook): its `input_index` maps
  each slot back to the caller's input position (-1 for inserted prompt slots), which is how a
  loss realigns its targets.
  """

  logits: jax.Array  # [B, L', V] float32
  hidden: jax.Array  # [B, L', E] final normed states before the logits projection
  inputs: EmbeddedInputs


class DecoderOnly(nn.Module):
  """A causal (or prefix-LM) Transformer decoder over tokens or input embeddings."""

  config: ModelConfig
  input_hook: Optional[nn.Module] = None

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg)
    self.decoder = DecoderStack(cfg, shared_embedding=self.token_embedder)

  def __call__(self, decoder_input_tokens: Optional[jax.Array], *,
               decoder_input_embeddings: Optional[jax.Array] = None,
               decoder_mask: Optional[jax.Array] = None,
               decoder_causal_attention: Optional[jax.Array] = None,
               hook_inputs: Optional[Mapping[str, Any]] = None, enable_dropout: bool = False,
               decode: bool = False, prefill: bool = False) -> LMOutput:
    """Runs the LM.

    Args:
      decoder_input_tokens: `[B, L]` ids (may be None when embeddings are given).
      decoder_input_embeddings: optional `[B, L, E]` used instead of the token lookup.
      decoder_mask: `[B, L]` 1 for real slots; defaults to all ones (the start token is 0, so
        padding cannot be inferred from ids; pass `decoder_target_tokens > 0`).
      decoder_causal_attention: optional `[B, L]` 1 on the prefix that attends bidirectionally
        (prefix-LM). Slots the hook inserts count as prefix when any prefix exists.
      decode: append to the `cache` collection (call with `mutable=['cache']`). A decode call on
        a module without a cache creates an empty one whose capacity is L.
      prefill: with `decode`, this chunk is the (prompted) prompt: the hook is applied and
        positions come from it. Without `prefill`, a decode call continues each example's
        positions after its last real slot and skips the hook.
    """
    inputs, prefix, is_step = hooked_inputs(
        self, self.token_embedder, decoder_input_tokens,
        decoder_input_embeddings=decoder_input_embeddings, decoder_mask=decoder_mask,
        decoder_causal_attention=decoder_causal_attention, hook_inputs=hook_inputs,
        enable_dropout=enable_dropout, decode=decode, prefill=prefill)
    logits, hidden = self.decoder(inputs, prefix=prefix, enable_dropout=enable_dropout,
                                  decode=decode, continue_positions=is_step)
    return LMOutput(logits=logits, hidden=hidden, inputs=inputs)


def hooked_inputs(module: nn.Module, embed: Callable[[jax.Array], jax.Array],
                  decoder_input_tokens: Optional[jax.Array], *,
                  decoder_input_embeddings: Optional[jax.Array],
                  decoder_mask: Optional[jax.Array],
                  decoder_causal_attention: Optional[jax.Array],
                  hook_inputs: Optional[Mapping[str, Any]], enable_dropout: bool,
                  decode: bool, prefill: bool
                  ) -> Tuple[EmbeddedInputs, Optional[jax.Array], bool]:
  """The call prologue every decoder-only LM shares, in one place so they cannot drift apart.

  Embeds the tokens with `embed` (or takes `decoder_input_embeddings` in the compute dtype),
  applies `module.input_hook` (not on a decode step, whose positions continue the cache), and
  maps the prefix-LM mask onto the hooked slots. Call it from the module's own `__call__`.

  Returns:
    the hooked `EmbeddedInputs`, the realigned `[B, L']` prefix mask (None without one) and
    whether this call is a single decode step.
  """
  if decoder_input_embeddings is None:
    embeddings = embed(decoder_input_tokens)
  else:
    embeddings = decoder_input_embeddings.astype(module.config.compute_dtype)
  if decoder_mask is None:
    decoder_mask = jnp.ones(embeddings.shape[:2], jnp.int32)
  inputs = embedded_from_tokens(embeddings, decoder_mask)
  is_step = decode and not prefill
  if module.input_hook is not None and not is_step:
    inputs = module.input_hook(inputs, hook_inputs=hook_inputs, enable_dropout=enable_dropout)
  prefix = None
  if decoder_causal_attention is not None and not is_step:
    prefix = _realign_prefix(decoder_causal_attention, inputs)
  return inputs, prefix, is_step


def _realign_prefix(prefix: jax.Array, inputs: EmbeddedInputs) -> jax.Array:
  """Maps a `[B, L]` prefix mask onto the hooked slots (inserted slots join a non-empty prefix)."""
  prefix = prefix.astype(bool)
  index = inputs.input_index
  gathered = jnp.take_along_axis(prefix, jnp.maximum(index, 0), axis=1)
  has_prefix = jnp.any(prefix, axis=1, keepdims=True)
  return jnp.where(index >= 0, gathered, has_prefix) & inputs.mask.astype(bool)


def init_decoder_only_cache(module: DecoderOnly, params, batch_size: int, max_length: int):
  """Returns an empty cache holding `max_length` slots (prompt + input + generated)."""
  _, variables = module.apply({"params": params},
                              jnp.zeros((batch_size, max_length), jnp.int32), decode=True,
                              mutable=["cache"])
  return variables["cache"]
