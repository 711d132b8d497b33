"""The Connector: a few causal Transformer layers at the LM's width between two LM passes.

It reuses the LM's own `DecoderLayer` (no cross-attention), so its parameters carry the same
logical axis names and are partitioned like the LM's layers, and its layers can be initialised
by copying LM layers (`lm_layer_prefix_map`, `copy_lm_layers`).

With `residual=True` the output is `x + gate * f(x)` with `gate` (one per feature) starting at
zero: the untrained Connector is exactly the identity, so LM-C-LM starts from "feed the pass-1
states straight back", C-LM and LM-C from the plain LM. With `residual=False` the output is
`f(x)`, the form used when the layers are copied from the LM.

`causal=True` (the decoder-only LM's form) stacks the LM's `DecoderLayer`s under a causal mask;
`causal=False` (between two passes of an encoder) stacks `EncoderLayer`s, each position seeing
every real position, with the encoder's parameter names, so encoder layers can be copied in.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.layers import RelativePositionBias, RMSNorm, mask_to_bias
from prompt_tuning.models.transformer import DecoderLayer, EncoderLayer


class Connector(nn.Module):
  """`[B, L, E]` states and a `[B, L]` mask -> `[B, L, E]` at the LM's width (causal unless
  `causal=False`)."""

  config: ModelConfig
  num_layers: int = 1
  residual: bool = True
  causal: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, enable_dropout: bool = False) -> jax.Array:
    if self.num_layers < 1:
      raise ValueError(f"A Connector needs at least one layer, got num_layers={self.num_layers}.")
    cfg = self.config
    if x.ndim != 3 or x.shape[-1] != cfg.emb_dim:
      raise ValueError(f"The Connector reads [B, L, {cfg.emb_dim}] states, got {x.shape}.")
    batch, length = mask.shape
    slots = jnp.arange(length)
    real = mask.astype(bool)
    allowed = real[:, None, :] & real[:, :, None]
    if self.causal:
      allowed = (slots[None, :] <= slots[:, None])[None] & real[:, None, :]
    positions = jnp.broadcast_to(slots, (batch, length)).astype(jnp.int32)
    bias = mask_to_bias(allowed) + RelativePositionBias(cfg, bidirectional=not self.causal,
                                                        name="relpos_bias")(positions, positions)
    h = x.astype(cfg.compute_dtype)
    for i in range(self.num_layers):
      if self.causal:
        h = DecoderLayer(cfg, name=f"layers_{i}")(h, bias, None, None, enable_dropout)
      else:
        h = EncoderLayer(cfg, name=f"layers_{i}")(h, bias, enable_dropout)
    h = RMSNorm(cfg, name="connector_norm")(h)
    if not self.residual:
      return h
    gate = self.param("gate", nn.with_logical_partitioning(nn.initializers.zeros, (axes.EMBED,)),
                      (cfg.emb_dim,), cfg.parameter_dtype)
    return x + gate.astype(h.dtype) * h


STACKS = ("decoder", "encoder")


def _check_stack(stack: str) -> None:
  if stack not in STACKS:
    raise ValueError(f"stack must be one of {STACKS}, got {stack!r}.")


def lm_layer_prefix_map(lm_layers: Sequence[int],
                        stack: str = "decoder") -> Tuple[Tuple[str, str], ...]:
  """`FromCheckpoint.prefix_map` pairs that read Connector layer i from layer `lm_layers[i]` of
  the LM's `stack` ('decoder' for a causal Connector, 'encoder' for `causal=False`), with that
  stack's final norm and position table, for a non-residual Connector."""
  _check_stack(stack)
  pairs = [(f"connector/layers_{i}/", f"{stack}/layers_{j}/") for i, j in enumerate(lm_layers)]
  pairs += [("connector/connector_norm/", f"{stack}/{stack}_norm/"),
            ("connector/relpos_bias/", f"{stack}/relpos_bias/")]
  return tuple(pairs)


def copy_lm_layers(params: Dict[str, Any], lm_layers: Sequence[int],
                   stack: str = "decoder") -> Dict[str, Any]:
  """A copy of a wrapper's parameter tree whose Connector layers are copies of LM layers.

  `params` holds the LM's parameters and a `connector` entry; layer i of the Connector gets the
  values of `<stack>/layers_{lm_layers[i]}` (and its norm and position table the stack's, when
  the LM has them). Shapes must agree: the Connector runs at the LM's width.
  """
  _check_stack(stack)
  connector = dict(params["connector"])
  if len(lm_layers) != sum(1 for k in connector if k.startswith("layers_")):
    raise ValueError(f"copy_lm_layers got {len(lm_layers)} LM layers for a Connector with "
                     f"{sum(1 for k in connector if k.startswith('layers_'))} layers.")
  source = params[stack]
  for i, j in enumerate(lm_layers):
    if f"layers_{j}" not in source:
      raise ValueError(f"The LM has no {stack} layer {j}; it has {sorted(source)}.")
    connector[f"layers_{i}"] = jax.tree_util.tree_map(jnp.array, source[f"layers_{j}"])
  for ours, theirs in (("connector_norm", f"{stack}_norm"), ("relpos_bias", "relpos_bias")):
    if theirs in source and ours in connector:
      connector[ours] = jax.tree_util.tree_map(jnp.array, source[theirs])
  return {**params, "connector": connector}
