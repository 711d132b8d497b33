"""Building blocks shared by the encoder-decoder and the decoder-only model.

Parameter names and layouts follow T5X's example T5 network (2-D kernels with heads flattened,
`scale` for norms, `rel_embedding` for position buckets) so that its checkpoints load unchanged.
Matmuls run in the compute dtype with float32 accumulation; norms and softmax run in float32.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import axes
from prompt_tuning.models.config import ModelConfig

# Added to attention logits that must be ignored. Finite, so a fully masked row (a padding
# query) still gives a well-defined softmax instead of NaN.
MASKED = -1e10


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Applies a logical sharding constraint; a no-op outside a mesh with axis rules."""
  return nn.with_logical_constraint(x, tuple(names))


def matmul(x: jax.Array, kernel: jax.Array, dtype) -> jax.Array:
  """`x @ kernel` in `dtype` with float32 accumulation (fast bf16 path on CPU and TPU)."""
  y = jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
  return y.astype(dtype)


def stacked_matmul(x: jax.Array, kernels: Sequence[jax.Array], dtype) -> List[jax.Array]:
  """`[x @ k for k in kernels]`: one forward product, separate backward products.

  Forward, the kernels are stacked as `[in, n, out]` and multiplied once: one large product runs
  faster on CPU than several concurrent small ones, and stacking on a new middle axis (rather
  than concatenating) keeps each kernel's sharding of its `out` axis. Backward, the input's
  gradient is `sum_i dy_i @ k_i^T`, one product per kernel: on CPU that measured about 15% faster
  than concatenating the cotangents into one `[.., n * out]` product (which autodiff of the
  stacked product would do). Kernel gradients are computed only when a kernel is trained.
  """
  if len(kernels) == 1:
    return [matmul(x, kernels[0], dtype)]
  return list(_stacked_products(x.astype(dtype), tuple(k.astype(dtype) for k in kernels)))


@jax.custom_vjp
def _stacked_products(x: jax.Array, kernels: Tuple[jax.Array, ...]) -> Tuple[jax.Array, ...]:
  stacked = jnp.stack(kernels, axis=1)
  y = jnp.einsum("...i,ino->...no", x, stacked, preferred_element_type=jnp.float32)
  return tuple(part.squeeze(-2).astype(x.dtype) for part in jnp.split(y, len(kernels), axis=-2))


def _stacked_products_fwd(x, kernels):
  """Keeps the input only when a kernel needs its gradient, the kernels only when the input does."""
  outputs = _stacked_products(x.value, tuple(k.value for k in kernels))
  kernel_grads = any(k.perturbed for k in kernels)
  return outputs, (x.value if kernel_grads else None,
                   tuple(k.value for k in kernels) if x.perturbed else None,
                   tuple(k.perturbed for k in kernels))


def _stacked_products_bwd(residuals, grads):
  x, kernels, kernel_perturbed = residuals
  live = [(i, g) for i, g in enumerate(grads)
          if not isinstance(g, jax.custom_derivatives.SymbolicZero)]
  d_x = None
  if kernels is not None and live:
    d_x = sum(jnp.einsum("...o,io->...i", g, kernels[i], preferred_element_type=jnp.float32)
              for i, g in live).astype(kernels[0].dtype)
  d_kernels = [None] * len(grads)
  if x is not None:
    flat_x = x.reshape(-1, x.shape[-1])
    for i, g in live:
      if kernel_perturbed[i]:
        d_kernels[i] = jnp.einsum("ni,no->io", flat_x, g.reshape(-1, g.shape[-1]),
                                  preferred_element_type=jnp.float32).astype(x.dtype)
  return d_x, tuple(d_kernels)


_stacked_products.defvjp(_stacked_products_fwd, _stacked_products_bwd, symbolic_zeros=True)


def fan_in_init(scale: float = 1.0) -> Callable:
  """Truncated normal with variance `scale / fan_in`, for 2-D `[in, out]` kernels."""
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal", in_axis=-2,
                                          out_axis=-1)


def _kernel(module: nn.Module, shape: Tuple[int, int], kernel_axes: Tuple[str, str],
            config: ModelConfig, init_scale: float) -> jax.Array:
  return module.param("kernel", nn.with_logical_partitioning(fan_in_init(init_scale), kernel_axes),
                      shape, config.parameter_dtype)


class Kernel(nn.Module):
  """Just the `kernel` parameter of a projection, returned unapplied.

  Lets a block multiply by several kernels at once (gated MLP inputs) while each keeps the
  parameter path a separate `Dense` would have (`wi_0/kernel`, `wi_1/kernel`).
  """

  shape: Tuple[int, int]
  kernel_axes: Tuple[str, str]
  config: ModelConfig
  init_scale: float = 1.0

  @nn.compact
  def __call__(self) -> jax.Array:
    return _kernel(self, self.shape, self.kernel_axes, self.config, self.init_scale)


class Dense(nn.Module):
  """A bias-free projection whose kernel is stored as one 2-D `[in, out]` array."""

  features: int
  kernel_axes: Tuple[str, str]
  config: ModelConfig
  init_scale: float = 1.0
  float32_output: bool = False  # for logits: keep the float32 accumulator

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = _kernel(self, (x.shape[-1], self.features), self.kernel_axes, self.config,
                     self.init_scale)
    if self.float32_output:
      dtype = self.config.compute_dtype
      return jnp.dot(x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32)
    return matmul(x, kernel, self.config.compute_dtype)


class Embed(nn.Module):
  """A token (or position) embedding table that can also project back onto the vocabulary."""

  num_embeddings: int
  config: ModelConfig
  table_axes: Tuple[str, str] = (axes.VOCAB, axes.EMBED)

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), self.table_axes),
        (self.num_embeddings, self.config.emb_dim), self.config.parameter_dtype)

  def __call__(self, ids: jax.Array) -> jax.Array:
    # [batch, length] -> [batch, length, emb]
    return jnp.take(self.embedding, ids, axis=0).astype(self.config.compute_dtype)

  def attend(self, query: jax.Array) -> jax.Array:
    # [batch, length, emb] -> [batch, length, vocab], float32.
    dtype = self.config.compute_dtype
    return jnp.dot(query.astype(dtype), self.embedding.astype(dtype).T,
                   preferred_element_type=jnp.float32)


class RMSNorm(nn.Module):
  """T5's layer norm: rescale by the root mean square, no mean subtraction and no bias."""

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + self.config.layer_norm_epsilon)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (axes.EMBED,)),
                       (x.shape[-1],), self.config.parameter_dtype)
    return (y * scale.astype(jnp.float32)).astype(self.config.compute_dtype)


_ACTIVATION_FNS = {
    "relu": nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=True),
    "linear": lambda x: x,
}


class MlpBlock(nn.Module):
  """Feed-forward block: one `wi` (ReLU) or gated `wi_0` x `wi_1` (gated-GELU), then `wo`.

  Gated inputs go through `stacked_matmul`: one forward product against the kernels stacked as
  `[emb, n, mlp]` (each kernel keeps its `mlp` sharding), one backward product per kernel.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, enable_dropout: bool) -> jax.Array:
    cfg = self.config
    activations = cfg.mlp_activations
    names = ["wi"] if len(activations) == 1 else [f"wi_{i}" for i in range(len(activations))]
    kernels = [Kernel((x.shape[-1], cfg.mlp_dim), (axes.EMBED, axes.MLP), cfg, name=name)()
               for name in names]
    hidden = None
    for act, h in zip(activations, stacked_matmul(x, kernels, cfg.compute_dtype)):
      h = _ACTIVATION_FNS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=not enable_dropout)
    hidden = constrain(hidden, (axes.BATCH, axes.LENGTH, axes.MLP))
    return Dense(cfg.emb_dim, (axes.MLP, axes.EMBED), cfg, name="wo")(hidden)


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """Maps `key_position - query_position` to T5's log-spaced buckets.

  Half the buckets hold exact small distances, the rest grow logarithmically up to
  `max_distance`; a bidirectional stack spends half of them on keys after the query.
  """
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(relative_position)
  else:
    distance = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  large = jnp.minimum(max_exact + scaled.astype(jnp.int32), num_buckets - 1)
  return buckets + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
  """Per-head learned bias indexed by the bucketed distance between key and query."""

  config: ModelConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """`[b, q]`, `[b, k]` int positions -> `[b, heads, q, k]` float32 bias (b may be 1)."""
    cfg = self.config
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                     (axes.HEADS, axes.RELPOS_BUCKETS)),
        (cfg.num_heads, cfg.relative_attention_num_buckets), cfg.parameter_dtype)
    relative = key_positions[:, None, :] - query_positions[:, :, None]
    bucket = relative_position_bucket(
        relative, bidirectional=self.bidirectional,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance)
    bias = jnp.take(table.astype(jnp.float32).T, bucket, axis=0)  # [b, q, k, heads]
    return jnp.transpose(bias, (0, 3, 1, 2))


def _softmax(logits: jax.Array) -> jax.Array:
  """Softmax over the last axis; the max subtracted for stability carries no gradient."""
  shifted = logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  unnormalized = jnp.exp(shifted)
  return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


def _heads_major(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 2, 1, 3))  # [b, l, h, d] <-> [b, h, l, d]


def _from_transposed(x: jax.Array) -> jax.Array:
  """`[b, h, d, k]` -> `[b, k, h, d]`.

  The key and value gradients contract over the queries; XLA:CPU runs that product fastest
  with the small operand first, giving `[b, h, d, k]` (about 9.5 ms against 12-13.5 ms for
  `[b, h, k, d]` at T5 small's encoder shapes), and the transpose back is needed either way.
  """
  return jnp.transpose(x, (0, 3, 1, 2))


def _attention_forward(query, key, value, bias, keep):
  """Returns the output `[b, q, h, d]` and the intermediates a backward pass may need."""
  dtype = query.dtype
  q = _heads_major(query)  # [b, h, q, d]
  k_t = jnp.transpose(key, (0, 2, 3, 1))  # [b, h, d, k]: the product needs no further copy
  v = _heads_major(value)  # [b, h, k, d]
  logits = jnp.einsum("bhqd,bhdk->bhqk", q, k_t, preferred_element_type=jnp.float32)
  weights = _softmax(logits + bias)  # float32
  applied = weights if keep is None else weights * keep
  out = jnp.einsum("bhqk,bhkd->bhqd", applied.astype(dtype), v,
                   preferred_element_type=jnp.float32)
  return _heads_major(out).astype(dtype), dict(q=q, k_t=k_t, v=v, weights=weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(query, key, value, bias, keep, bias_shape):
  del bias_shape  # used by the backward pass only
  return _attention_forward(query, key, value, bias, keep)[0]


def _attention_fwd(query, key, value, bias, keep, bias_shape):
  """Keeps only what the cotangents of the perturbed inputs need (`symbolic_zeros` primals).

  In prompt tuning most attention inputs do depend on the prompt, but e.g. the first decoder
  layer's cross-attention query does not: its gradient is then neither kept for nor computed.
  """
  del bias_shape
  need = dict(query=query.perturbed, key=key.perturbed, value=value.perturbed,
              bias=bias.perturbed)
  keep = None if keep is None else keep.value
  out, inter = _attention_forward(query.value, key.value, value.value, bias.value, keep)
  logits_grad = need["query"] or need["key"] or need["bias"]
  residuals = dict(
      keep=keep,
      weights=inter["weights"] if logits_grad or need["value"] else None,
      v=inter["v"] if logits_grad else None,
      out=out if logits_grad else None,
      k_t=inter["k_t"] if need["query"] else None,
      q=inter["q"] if need["key"] else None,
      # Empty arrays as flags: residuals must be arrays, and None marks "not needed".
      need_value=jnp.zeros((0,)) if need["value"] else None,
      need_bias=jnp.zeros((0,)) if need["bias"] else None)
  return out, residuals


def _attention_backward(bias_shape, residuals, grad):
  r = residuals
  keep = r["keep"]
  d_keep = None
  if isinstance(grad, jax.custom_derivatives.SymbolicZero):
    return None, None, None, None, d_keep
  dtype = grad.dtype  # the output's, which is the query's
  grad_h = _heads_major(grad)  # [b, h, q, d]
  applied = None
  if r["weights"] is not None:
    applied = r["weights"] if keep is None else r["weights"] * keep
  d_value = None
  if r["need_value"] is not None:
    d_value = _from_transposed(jnp.einsum("bhqd,bhqk->bhdk", grad_h, applied.astype(dtype),
                                          preferred_element_type=jnp.float32)).astype(dtype)
  if r["v"] is None:  # neither query, key nor bias needs the logits' gradient
    return None, None, d_value, None, d_keep
  # Softmax backward needs rowsum(dWeights * weights), which equals rowsum(dOut * out): one
  # reduction over [b, q, h, d] instead of another pass over the [b, h, q, k] weights.
  row = jnp.sum(grad.astype(jnp.float32) * r["out"].astype(jnp.float32), axis=-1)  # [b, q, h]
  row = jnp.transpose(row, (0, 2, 1))[..., None]  # [b, h, q, 1]
  d_applied = jnp.einsum("bhqd,bhkd->bhqk", grad_h, r["v"], preferred_element_type=jnp.float32)
  d_weights = d_applied if keep is None else d_applied * keep
  d_logits = r["weights"] * (d_weights - row)  # float32 [b, h, q, k]
  d_logits_c = d_logits.astype(dtype)
  d_query = d_key = d_bias = None
  if r["k_t"] is not None:
    d_query = jnp.einsum("bhqk,bhdk->bhqd", d_logits_c, r["k_t"],
                         preferred_element_type=jnp.float32)
    d_query = _heads_major(d_query).astype(dtype)
  if r["q"] is not None:
    d_key = _from_transposed(jnp.einsum("bhqd,bhqk->bhdk", r["q"], d_logits_c,
                                        preferred_element_type=jnp.float32)).astype(dtype)
  if r["need_bias"] is not None:
    summed = tuple(i for i, n in enumerate(bias_shape) if n == 1 and d_logits.shape[i] != 1)
    d_bias = jnp.sum(d_logits, axis=summed, keepdims=True) if summed else d_logits
  return d_query, d_key, d_value, d_bias, d_keep


_attention.defvjp(_attention_fwd, _attention_backward, symbolic_zeros=True)


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array,
                          keep: Optional[jax.Array] = None) -> jax.Array:
  """Unscaled attention with a hand-written backward pass.

  Args:
    query: `[b, q, h, d]` in the compute dtype.
    key, value: `[b, k, h, d]`.
    bias: float32, broadcastable to `[b, h, q, k]` (masking and position bias).
    keep: optional dropout multipliers for the weights (0 or 1/keep_rate), `[b, h, q, k]`.

  Returns:
    `[b, q, h, d]` in the query's dtype.

  Products run heads-major with keys pre-transposed, so XLA:CPU gets canonical batched matmuls.
  The backward pass avoids a second reduction over the `[b, h, q, k]` weights (see
  `_attention_backward`) and returns the bias gradient (a trained relative-position table needs
  it; XLA drops it when nothing uses it).
  """
  bias = jnp.asarray(bias, jnp.float32)
  return _attention(query, key, value, bias, keep, tuple(bias.shape))


def mask_to_bias(allowed: jax.Array) -> jax.Array:
  """Boolean `[b, q, k]` -> additive float32 `[b, 1, q, k]`."""
  return jnp.where(allowed, 0.0, MASKED).astype(jnp.float32)[:, None, :, :]


class MultiHeadAttention(nn.Module):
  """Unscaled dot-product attention (1/sqrt(D) lives in the query init, as in T5).

  With `decode=True` keys and values are kept in the `cache` collection: self-attention appends
  the new chunk at `cache_index`; cross-attention projects the encoder output once, when the
  cache is created, and reuses it afterwards.
  """

  config: ModelConfig
  is_cross_attention: bool = False

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, bias: jax.Array,
               enable_dropout: bool = False, decode: bool = False,
               cache_index: Optional[jax.Array] = None) -> jax.Array:
    cfg = self.config
    inner = cfg.num_heads * cfg.head_dim
    proj = functools.partial(Dense, inner, (axes.EMBED, axes.JOINED_KV), cfg)
    split = lambda t: t.reshape(t.shape[:2] + (cfg.num_heads, cfg.head_dim))
    query = split(proj(init_scale=1.0 / cfg.head_dim, name="query")(inputs_q))
    key_proj, value_proj = proj(name="key"), proj(name="value")

    def project_kv():
      # Separate q/k/v products measured as fast as one stacked product here; they stay apart.
      return split(key_proj(inputs_kv)), split(value_proj(inputs_kv))

    if decode and self.is_cross_attention:
      key, value = self._cached_cross_kv(project_kv, inputs_kv, cache_index)
    else:
      key, value = project_kv()
      if decode:
        key, value = self._append_to_cache(key, value, cache_index)
    query = constrain(query, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    key = constrain(key, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    value = constrain(value, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))

    keep = None
    if enable_dropout and cfg.dropout_rate > 0:
      shape = (query.shape[0], cfg.num_heads, query.shape[1], key.shape[1])
      keep = nn.Dropout(cfg.dropout_rate)(jnp.ones(shape, jnp.float32), deterministic=False)
    out = dot_product_attention(query, key, value, bias, keep)
    out = out.reshape(out.shape[:2] + (inner,))
    return Dense(cfg.emb_dim, (axes.JOINED_KV, axes.EMBED), cfg, name="out")(out)

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

  def _cached_cross_kv(self, project_kv, inputs_kv, cache_index):
    # The cache is created by a decode call that finds none: that call projects the encoder
    # output once and stores it; every later step only reads it.
    if not self.has_variable("cache", "cached_key"):
      key, value = project_kv()
      self.variable("cache", "cached_key", lambda: key)
      self.variable("cache", "cached_value", lambda: value)
      return key, value
    return (self.variable("cache", "cached_key").value,
            self.variable("cache", "cached_value").value)
