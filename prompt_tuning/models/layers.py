"""Building blocks shared by the encoder-decoder and the decoder-only model.

Parameter names and layouts follow T5X's example T5 network (2-D kernels with heads flattened,
`scale` for norms, `rel_embedding` for position buckets) so that its checkpoints load unchanged.
Matmuls run in the compute dtype with float32 accumulation; norms and softmax run in float32.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning import axes
from prompt_tuning.models import kernels
from prompt_tuning.models.config import ModelConfig

# Added to attention logits that must be ignored. Finite, so a fully masked row (a padding
# query) still gives a well-defined softmax instead of NaN.
MASKED = -1e10


# Parameters the models only ever use after rounding them to the compute dtype (products and
# embedding lookups); norm scales and position-bias tables are used in float32.
_ROUNDED_FOR_COMPUTE = ("kernel", "embedding")


def compute_dtype_copies(params, compute_dtype):
  """`params` with every product kernel and embedding table stored in `compute_dtype`.

  For frozen parameters of a low-precision step: the step then reads bf16 weights instead of
  rounding every float32 weight again each step (on XLA:CPU, for T5 1.1 small, converts of
  frozen weights were about 10% of the bf16 step's operation time). The step's results are
  bit-identical, since those parameters are rounded to `compute_dtype` before any use. Other
  leaves (norm `scale`, `rel_embedding`) are returned as they are.
  """
  dtype = jnp.dtype(compute_dtype)

  def convert(path, leaf):
    name = getattr(path[-1], "key", None) if path else None
    if name in _ROUNDED_FOR_COMPUTE and jnp.issubdtype(leaf.dtype, jnp.floating):
      return leaf.astype(dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(convert, params)


def constrain(x: jax.Array, names: Sequence[Optional[str]]) -> jax.Array:
  """Applies a logical sharding constraint; a no-op outside a mesh with axis rules."""
  return nn.with_logical_constraint(x, tuple(names))


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
    return kernels.matmul(x, kernel, self.config.compute_dtype,
                          float32_output=self.float32_output)


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
    return kernels.matmul(query, self.embedding, self.config.compute_dtype, float32_output=True,
                          kernel_transposed=True)


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

  The input products go through `kernels.stacked_matmul`, implemented as `config.mlp_impl` says.
  """

  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, enable_dropout: bool) -> jax.Array:
    cfg = self.config
    activations = cfg.mlp_activations
    names = ["wi"] if len(activations) == 1 else [f"wi_{i}" for i in range(len(activations))]
    wi_kernels = [Kernel((x.shape[-1], cfg.mlp_dim), (axes.EMBED, axes.MLP), cfg, name=name)()
                  for name in names]
    hidden = None
    # With the CPU kernels, the activations are applied to the float32 accumulators and the
    # gated product is rounded to the compute dtype once: below float32 that is one fused pass
    # over the products' output instead of rounding each product (a pass of its own) and
    # activating the rounded values. Float32 values are unchanged. Elsewhere XLA fuses the
    # rounding itself, and bf16 activations keep the residuals small.
    products = kernels.stacked_matmul(
        x, wi_kernels, cfg.compute_dtype, impl=cfg.mlp_impl,
        float32_output=kernels.resolve(cfg.mlp_impl) == kernels.CUSTOM_VJP)
    for act, h in zip(activations, products):
      h = _ACTIVATION_FNS[act](h)
      hidden = h if hidden is None else hidden * h
    hidden = hidden.astype(cfg.compute_dtype)
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
    # An elementwise choice among the buckets' per-head values, not a gather: XLA turns any
    # gather from this table into one `[heads]` slice per `(b, q, k)` entry (a million slices
    # at 356 tokens, 45 ms of a 1.2 s bf16 step on XLA:CPU) and a transpose to `[b, heads, q,
    # k]`; the choice is one fused pass that writes the result in place (the same values).
    table = table.astype(jnp.float32)
    shape = (bucket.shape[0], cfg.num_heads) + bucket.shape[1:]
    which = jnp.broadcast_to(bucket[:, None], shape)
    choices = [jnp.broadcast_to(table[None, :, j, None, None], shape)
               for j in range(cfg.relative_attention_num_buckets)]
    return jax.lax.select_n(which, *choices)


def mask_to_bias(allowed: jax.Array) -> jax.Array:
  """Boolean `[b, q, k]` -> additive float32 `[b, 1, q, k]`."""
  return jnp.where(allowed, 0.0, MASKED).astype(jnp.float32)[:, None, :, :]


class KeepMask(nn.Module):
  """A boolean attention-dropout keep-mask of `shape`, drawn from the 'dropout' stream.

  `nn.Dropout` applied to a tensor of ones draws 32 random bits an entry and gives float32
  multipliers; attention masks are `[b, h, q, k]`, the largest arrays of a dropout step, and
  XLA keeps such draws alive from the forward to the backward pass. This mask compares 8 random
  bits an entry with `threshold` (1 byte an entry), so the keep rate is quantised to
  `threshold / 256` (0.898 for a 0.1 dropout rate); `scale` is its exact inverse, so kept
  weights are rescaled without bias.
  """

  keep_rate: float

  @property
  def threshold(self) -> int:
    return max(1, min(256, round(self.keep_rate * 256)))

  @property
  def scale(self) -> float:
    return 256.0 / self.threshold

  @nn.compact
  def __call__(self, shape: Tuple[int, ...]) -> jax.Array:
    # Four 8-bit draws from each 32-bit word: drawing uint8 directly still makes (and keeps) a
    # 32-bit word per entry. The leading axes stay as they are, so a batch sharding carries over.
    *leading, last = shape
    words = jax.random.bits(self.make_rng("dropout"), (*leading, -(-last // 4)), jnp.uint32)
    bits = jax.lax.bitcast_convert_type(words, jnp.uint8).reshape(*leading, -1)[..., :last]
    return bits.astype(jnp.int32) < self.threshold


class MultiHeadAttention(nn.Module):
  """Unscaled dot-product attention (1/sqrt(D) lives in the query init, as in T5).

  With `decode=True` keys and values are kept in the `cache` collection: self-attention appends
  the new chunk at `cache_index`; cross-attention projects the encoder output once, when the
  cache is created, and reuses it afterwards. The cache holds them heads-major (see
  `_to_cache_layout`).
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

    def project_kv():
      return split(proj(name="key")(inputs_kv)), split(proj(name="value")(inputs_kv))

    if self._stacks_projections(decode):
      kernel = lambda name, scale=1.0: Kernel((inputs_kv.shape[-1], inner),
                                              (axes.EMBED, axes.JOINED_KV), cfg,
                                              init_scale=scale, name=name)()
      if inputs_q is inputs_kv:
        query, key, value = map(split, kernels.stacked_matmul(
            inputs_q, [kernel("query", 1.0 / cfg.head_dim), kernel("key"), kernel("value")],
            cfg.compute_dtype, impl=cfg.attention_impl))
      else:
        query = split(proj(init_scale=1.0 / cfg.head_dim, name="query")(inputs_q))
        key, value = map(split, kernels.stacked_matmul(
            inputs_kv, [kernel("key"), kernel("value")], cfg.compute_dtype,
            impl=cfg.attention_impl))
    else:
      query = split(proj(init_scale=1.0 / cfg.head_dim, name="query")(inputs_q))
      if decode and self.is_cross_attention:
        key, value = self._cached_cross_kv(project_kv, inputs_kv, cache_index)
      else:
        key, value = project_kv()
        if decode:
          key, value = self._append_to_cache(key, value, cache_index)
    query = constrain(query, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    key = constrain(key, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))
    value = constrain(value, (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV))

    keep, keep_scale = None, 1.0
    if enable_dropout and cfg.dropout_rate > 0:
      shape = (query.shape[0], cfg.num_heads, query.shape[1], key.shape[1])
      mask = KeepMask(1.0 - cfg.dropout_rate, name="Dropout_0")
      keep, keep_scale = mask(shape), mask.scale
    out = kernels.dot_product_attention(query, key, value, bias, keep, keep_scale=keep_scale,
                                        impl=cfg.attention_impl)
    out = out.reshape(out.shape[:2] + (inner,))
    return Dense(cfg.emb_dim, (axes.JOINED_KV, axes.EMBED), cfg, name="out")(out)

  def _stacks_projections(self, decode: bool) -> bool:
    """Whether the projections of one input run as one stacked product (`stacked_matmul`).

    Below float32 on the CPU kernels: XLA:CPU ran the `[tokens, emb] x [emb, heads * kv]`
    bf16 products at about half the rate of the MLP's wider ones; stacked, q/k/v (or k/v
    for cross-attention) make one wider product. In float32 they measured as fast apart,
    and stay apart so float32 results do not change. Decoding keeps separate products
    (single-token steps, cached keys and values).
    """
    cfg = self.config
    return (not decode and kernels.resolve(cfg.attention_impl) == kernels.CUSTOM_VJP
            and jnp.dtype(cfg.compute_dtype) != jnp.float32)

  def _append_to_cache(self, key, value, cache_index):
    initializing = not self.has_variable("cache", "cached_key")
    new_key, new_value = _to_cache_layout(key, value)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, new_key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, new_value.shape,
                                 value.dtype)
    if initializing or cache_index is None:
      return key, value
    key_axis, value_axis = (3, 2) if _heads_major_cache(key.dtype) else (1, 1)
    at = lambda axis: tuple(cache_index if i == axis else 0 for i in range(4))
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, new_key, at(key_axis))
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, new_value,
                                                      at(value_axis))
    return _from_cache_layout(cached_key.value, cached_value.value)

  def _cached_cross_kv(self, project_kv, inputs_kv, cache_index):
    # The cache is created by a decode call that finds none: that call projects the encoder
    # output once and stores it; every later step only reads it.
    if not self.has_variable("cache", "cached_key"):
      key, value = project_kv()
      cache_key, cache_value = _to_cache_layout(key, value)
      self.variable("cache", "cached_key", lambda: cache_key)
      self.variable("cache", "cached_value", lambda: cache_value)
      return key, value
    return _from_cache_layout(self.variable("cache", "cached_key").value,
                              self.variable("cache", "cached_value").value)


def _to_cache_layout(key: jax.Array, value: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """`[b, k, h, d]` keys and values -> what the decode cache holds.

  In float32, keys `[b, h, d, k]` and values `[b, h, k, d]`: the layouts the float32 attention
  products read (`kernels._attention_forward`), so the `[b, k, h, d]` views `_from_cache_layout`
  hands back cancel against the products' own transposes and a decoding step copies no cache.
  Cached as `[b, k, h, d]`, every step transposed every layer's whole cache (for
  cross-attention: all encoder positions, per beam) before its products, which was most of a
  float32 beam-4 step on CPU. Below float32 the products read `[b, k, h, d]` as it is, and the
  cache keeps that layout.
  """
  if not _heads_major_cache(key.dtype):
    return key, value
  return jnp.transpose(key, (0, 2, 3, 1)), jnp.transpose(value, (0, 2, 1, 3))


def _from_cache_layout(key: jax.Array, value: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """The inverse of `_to_cache_layout`: `[b, k, h, d]` keys and values."""
  if not _heads_major_cache(key.dtype):
    return key, value
  return jnp.transpose(key, (0, 3, 1, 2)), jnp.transpose(value, (0, 2, 1, 3))


def _heads_major_cache(dtype) -> bool:
  return jnp.dtype(dtype) == jnp.float32
