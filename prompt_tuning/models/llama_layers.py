"""Blocks of the rotary decoder-only family: RMSNorm, gated MLP, grouped-query attention, layer.

Parameter names follow the Hugging Face module names (`self_attn/q_proj/kernel`,
`mlp/gate_proj/kernel`, `input_layernorm/scale`, ...) so the importer's map is one line per
tensor; kernels are 2-D `[in, out]` (heads flattened) with the project's logical axis names.
Matmuls run in the compute dtype with float32 accumulation; norms, softmax and RoPE angles in
float32. Attention is written with plain `jnp` (no custom gradient): soft-capping needs the raw
logits, and grouping query heads over shared kv heads needs no copy of the keys.
"""
from __future__ import annotations

from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models import kernels
from prompt_tuning.models.layers import constrain, fan_in_init
from prompt_tuning.models.llama_config import LlamaConfig
from prompt_tuning.models.rope import apply_rope, inverse_frequencies

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """`x @ kernel` in `dtype` with float32 accumulation, rounded back to `dtype` (as the
  reference models' bf16 linear layers round)."""
  return kernels.matmul(x, kernel, dtype)


def softcap(x: jax.Array, cap: Optional[float]) -> jax.Array:
  """`cap * tanh(x / cap)`: bounds logits smoothly to (-cap, cap); identity when cap is None."""
  return x if cap is None else cap * jnp.tanh(x / cap)


class RMSNorm(nn.Module):
  """Root-mean-square norm; Gemma's variant multiplies by `1 + scale` in float32.

  The two round at different points in low precision (Llama casts the normed input back before
  scaling, Gemma after), which this keeps so bf16 outputs match their reference models.
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    init = nn.initializers.zeros if cfg.norm_plus_one else nn.initializers.ones
    scale = self.param("scale", nn.with_logical_partitioning(init, (axes.EMBED,)),
                       (x.shape[-1],), cfg.parameter_dtype)
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
                                 + cfg.norm_epsilon)
    if cfg.norm_plus_one:
      return (normed * (1.0 + scale.astype(jnp.float32))).astype(cfg.compute_dtype)
    return normed.astype(cfg.compute_dtype) * scale.astype(cfg.compute_dtype)


class Projection(nn.Module):
  """`x @ kernel (+ bias)` with a 2-D `[in, out]` kernel named by `kernel_axes`."""

  features: int
  kernel_axes: Tuple[str, str]
  config: LlamaConfig
  use_bias: bool = False
  float32_output: bool = False  # logits keep the float32 accumulator

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    kernel = self.param("kernel", nn.with_logical_partitioning(fan_in_init(), self.kernel_axes),
                        (x.shape[-1], self.features), cfg.parameter_dtype)
    if self.float32_output:
      y = kernels.matmul(x, kernel, cfg.compute_dtype, float32_output=True)
    else:
      y = matmul(x, kernel, cfg.compute_dtype)
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                             (self.kernel_axes[1],)),
                        (self.features,), cfg.parameter_dtype)
      y = y + bias.astype(y.dtype)
    return y


class GatedMlp(nn.Module):
  """`down(act(gate(x)) * up(x))`: SwiGLU with 'silu', GeGLU with 'gelu_tanh'."""

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    gate = Projection(cfg.mlp_dim, (axes.EMBED, axes.MLP), cfg, name="gate_proj")(x)
    up = Projection(cfg.mlp_dim, (axes.EMBED, axes.MLP), cfg, name="up_proj")(x)
    hidden = constrain(_ACTIVATIONS[cfg.mlp_activation](gate) * up,
                       (axes.BATCH, axes.LENGTH, axes.MLP))
    return Projection(cfg.emb_dim, (axes.MLP, axes.EMBED), cfg, name="down_proj")(hidden)


def grouped_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array, *,
                      scale: float, cap: Optional[float]) -> jax.Array:
  """Grouped-query attention.

  Args:
    query: `[B, Q, H, D]`; key, value: `[B, K, N, D]` with N kv heads dividing H (query head
      `n * (H // N) + g` reads kv head n, as Hugging Face's `repeat_kv` lays them out).
    bias: float32 additive mask broadcastable to `[B, 1, Q, K]`.
    scale: multiplies the logits; cap: optional soft-cap of the scaled logits.

  Returns:
    `[B, Q, H * D]` in the query's dtype.
  """
  batch, q_len, heads, depth = query.shape
  kv_heads = key.shape[2]
  grouped = query.reshape(batch, q_len, kv_heads, heads // kv_heads, depth)
  logits = jnp.einsum("bqngd,bknd->bngqk", grouped, key, preferred_element_type=jnp.float32)
  logits = softcap(logits * scale, cap) + bias[:, :, None]
  weights = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("bngqk,bknd->bqngd", weights.astype(value.dtype), value,
                   preferred_element_type=jnp.float32)
  return out.astype(query.dtype).reshape(batch, q_len, heads * depth)


class Attention(nn.Module):
  """Self-attention with RoPE, grouped kv heads and an append-only kv cache.

  With `decode=True` the rotated keys and values of this chunk are written at `cache_index` of
  `cache/cached_key` and `cache/cached_value` (`[B, capacity, N, D]`), and attention reads the
  whole cache; the caller's bias masks slots not yet written.
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, bias: jax.Array, decode: bool = False,
               cache_index: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    shape = lambda heads: x.shape[:2] + (heads, cfg.head_dim)
    proj = lambda heads, name: Projection(heads * cfg.head_dim, (axes.EMBED, axes.JOINED_KV),
                                          cfg, use_bias=cfg.qkv_bias, name=name)(x)
    query = proj(cfg.num_heads, "q_proj").reshape(shape(cfg.num_heads))
    key = proj(cfg.num_kv_heads, "k_proj").reshape(shape(cfg.num_kv_heads))
    value = proj(cfg.num_kv_heads, "v_proj").reshape(shape(cfg.num_kv_heads))
    inv_freq = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    query = apply_rope(query, positions, inv_freq)
    key = apply_rope(key, positions, inv_freq)
    if decode:
      key, value = self._append_to_cache(key, value, cache_index)
    names = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)
    query, key, value = (constrain(t, names) for t in (query, key, value))
    out = grouped_attention(query, key, value, bias, scale=cfg.attention_scale,
                            cap=cfg.attn_logit_softcap)
    return Projection(cfg.emb_dim, (axes.JOINED_KV, axes.EMBED), cfg, name="o_proj")(out)

  def _append_to_cache(self, key, value, cache_index):
    initializing = not self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    if initializing or cache_index is None:
      return key, value
    start = (0, cache_index, 0, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, key, start)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, value, start)
    return cached_key.value, cached_value.value


class DecoderLayer(nn.Module):
  """Pre-norm attention and gated MLP, each added to the residual stream.

  Gemma 2 (`sandwich_norms`) also norms each branch's output before adding it, and names its
  MLP input norm `pre_feedforward_layernorm` (its `post_attention_layernorm` is the attention
  output norm); the others norm the MLP input with `post_attention_layernorm`.
  """

  config: LlamaConfig

  @nn.compact
  def __call__(self, x, positions, bias, enable_dropout: bool = False, decode: bool = False,
               cache_index=None):
    cfg = self.config
    dropout = lambda h: nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        h, deterministic=not enable_dropout)
    h = RMSNorm(cfg, name="input_layernorm")(x)
    h = Attention(cfg, name="self_attn")(h, positions, bias, decode, cache_index)
    if cfg.sandwich_norms:
      h = RMSNorm(cfg, name="post_attention_layernorm")(h)
    x = x + dropout(h)
    mlp_norm = "pre_feedforward_layernorm" if cfg.sandwich_norms else "post_attention_layernorm"
    h = GatedMlp(cfg, name="mlp")(RMSNorm(cfg, name=mlp_norm)(x))
    if cfg.sandwich_norms:
      h = RMSNorm(cfg, name="post_feedforward_layernorm")(h)
    x = x + dropout(h)
    return constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
