"""Attention and gated-MLP products, each in two implementations chosen per backend.

`xla`: plain code differentiated by JAX. Every backend runs it; on TPU and GPU it leaves XLA free
to fuse, lay out and partition the products as it sees fit.

`custom_vjp`: the same forward values with a hand-written backward pass, measured faster on
XLA:CPU (see `_attention_backward` and `_stacked_products_bwd` for what it saves). Its layouts
(heads-major products, keys pre-transposed, separate backward products per gated kernel) are
tuned for CPU and would only tie another backend's compiler's hands.

`auto` (the model config's default) picks `custom_vjp` when `jax.default_backend()` is 'cpu' and
`xla` otherwise. The choice is made when a layer is traced, so one config serves a CPU smoke run
and a TPU run alike.
"""
from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

XLA = "xla"
CUSTOM_VJP = "custom_vjp"
AUTO = "auto"
IMPLEMENTATIONS = (AUTO, XLA, CUSTOM_VJP)


def resolve(impl: str) -> str:
  """Returns 'xla' or 'custom_vjp' for a configured implementation (trace-time choice)."""
  if impl == AUTO:
    return CUSTOM_VJP if jax.default_backend() == "cpu" else XLA
  if impl not in (XLA, CUSTOM_VJP):
    raise ValueError(f"Unknown kernel implementation {impl!r}; expected one of {IMPLEMENTATIONS}.")
  return impl


def matmul(x: jax.Array, kernel: jax.Array, dtype, *, float32_output: bool = False,
           kernel_transposed: bool = False) -> jax.Array:
  """`x @ kernel` in `dtype` with float32 accumulation (fast bf16 path on CPU and TPU).

  Args:
    x: `[..., in]`.
    kernel: `[in, out]`, or `[out, in]` with `kernel_transposed` (a tied embedding table).
    dtype: compute dtype of both operands.
    float32_output: return the float32 accumulator (logits) instead of casting it to `dtype`.

  In float32 this is a plain product that JAX differentiates. Below float32 the backward pass is
  written by hand (`_low_precision_product`): JAX's own transpose of a product with a float32
  accumulator would carry a float32 cotangent and so run every backward product in float32,
  with the frozen kernels converted to float32 each step (on XLA:CPU about half the speed of a
  bf16 product, which made the bf16 step lose its advantage in the backward pass).
  """
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if jnp.dtype(dtype) == jnp.float32:
    y = jnp.dot(x, kernel.T if kernel_transposed else kernel, preferred_element_type=jnp.float32)
    return y
  return _low_precision_product(x, kernel, float32_output, kernel_transposed)


def _contract_last(x: jax.Array, kernel: jax.Array, kernel_axis: int) -> jax.Array:
  """`x [..., n] x kernel` contracting x's last axis with `kernel_axis`; float32 result.

  Written as one `dot_general` rather than `jnp.dot(x, kernel.T)`: on XLA:CPU an explicit
  transpose in front of a bf16 product makes the compiler run the product in float32.
  """
  return jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (kernel_axis,)), ((), ())),
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _low_precision_product(x, kernel, float32_output, kernel_transposed):
  y = _contract_last(x, kernel, 1 if kernel_transposed else 0)
  return y if float32_output else y.astype(x.dtype)


def _low_precision_product_fwd(x, kernel, float32_output, kernel_transposed):
  """Keeps the input only when the kernel is trained, the kernel only when the input is."""
  y = _low_precision_product(x.value, kernel.value, float32_output, kernel_transposed)
  return y, (x.value if kernel.perturbed else None, kernel.value if x.perturbed else None,
             jnp.zeros((0,), x.value.dtype))


def _low_precision_product_bwd(float32_output, kernel_transposed, residuals, grad):
  """Both gradients as products of compute-dtype operands with float32 accumulation."""
  del float32_output
  x, kernel, dtype_marker = residuals
  if isinstance(grad, jax.custom_derivatives.SymbolicZero):
    return None, None
  grad = grad.astype(dtype_marker.dtype)
  d_x = d_kernel = None
  if kernel is not None:
    d_x = _contract_last(grad, kernel, 0 if kernel_transposed else 1).astype(grad.dtype)
  if x is not None:
    flat_x, flat_g = x.reshape(-1, x.shape[-1]), grad.reshape(-1, grad.shape[-1])
    if kernel_transposed:  # kernel [out, in]
      d_kernel = jnp.einsum("no,ni->oi", flat_g, flat_x, preferred_element_type=jnp.float32)
    else:
      d_kernel = jnp.einsum("ni,no->io", flat_x, flat_g, preferred_element_type=jnp.float32)
    d_kernel = d_kernel.astype(grad.dtype)
  return d_x, d_kernel


_low_precision_product.defvjp(_low_precision_product_fwd, _low_precision_product_bwd,
                              symbolic_zeros=True)


# ------------------------------------------------------------------------------------------------
# Gated-MLP input products.


def stacked_matmul(x: jax.Array, kernels: Sequence[jax.Array], dtype, *,
                   impl: str = AUTO, float32_output: bool = False) -> List[jax.Array]:
  """`[x @ k for k in kernels]` in `dtype` with float32 accumulation.

  `xla`: one product per kernel, differentiated by JAX.

  `custom_vjp`: forward, the kernels are stacked as `[in, n, out]` and multiplied once: one large
  product runs faster on CPU than several concurrent small ones, and stacking on a new middle
  axis (rather than concatenating) keeps each kernel's sharding of its `out` axis. Backward, the
  input's gradient is `sum_i dy_i @ k_i^T`, one product per kernel: on CPU that measured about
  15% faster than concatenating the cotangents into one `[.., n * out]` product (which autodiff
  of the stacked product would do). Kernel gradients are computed only when a kernel is trained.
  """
  if len(kernels) == 1 or resolve(impl) == XLA:
    return [matmul(x, k, dtype, float32_output=float32_output) for k in kernels]
  return list(_stacked_products(x.astype(dtype), tuple(k.astype(dtype) for k in kernels),
                                float32_output))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _stacked_products(x: jax.Array, kernels: Tuple[jax.Array, ...],
                      float32_output: bool = False) -> Tuple[jax.Array, ...]:
  stacked = jnp.stack(kernels, axis=1)
  y = jnp.einsum("...i,ino->...no", x, stacked, preferred_element_type=jnp.float32)
  parts = tuple(part.squeeze(-2) for part in jnp.split(y, len(kernels), axis=-2))
  return parts if float32_output else tuple(p.astype(x.dtype) for p in parts)


def _stacked_products_fwd(x, kernels, float32_output):
  """Keeps the input only when a kernel needs its gradient, the kernels only when the input does."""
  outputs = _stacked_products(x.value, tuple(k.value for k in kernels), float32_output)
  kernel_grads = any(k.perturbed for k in kernels)
  return outputs, (x.value if kernel_grads else None,
                   tuple(k.value for k in kernels) if x.perturbed else None,
                   tuple(k.perturbed for k in kernels))


def _stacked_products_bwd(float32_output, residuals, grads):
  del float32_output
  x, kernels, kernel_perturbed = residuals
  dtype = (x if x is not None else kernels[0]).dtype
  live = [(i, g.astype(dtype)) for i, g in enumerate(grads)
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


# ------------------------------------------------------------------------------------------------
# Attention.


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array,
                          keep: Optional[jax.Array] = None, *, keep_scale: float = 1.0,
                          impl: str = AUTO) -> jax.Array:
  """Unscaled dot-product attention (T5 folds 1/sqrt(D) into the query kernel's init).

  Args:
    query: `[b, q, h, d]` in the compute dtype.
    key, value: `[b, k, h, d]`.
    bias: float32, broadcastable to `[b, h, q, k]` (masking and position bias).
    keep: optional dropout of the weights, broadcastable to `[b, h, q, k]`: a boolean keep-mask
      (1 byte an entry instead of a float32 multiplier's 4; the largest array a dropout step
      would otherwise hold per layer) or multipliers. Kept weights are scaled by `keep_scale`.
    keep_scale: e.g. `1 / keep_rate` for a boolean mask.
    impl: 'xla', 'custom_vjp' or 'auto' (see the module docstring).

  Returns:
    `[b, q, h, d]` in the query's dtype. Logits, softmax and weights are float32 in both
    implementations; the weights are cast to the compute dtype for the product with the values.
  """
  bias = jnp.asarray(bias, jnp.float32)
  if resolve(impl) == XLA:
    return _xla_attention(query, key, value, bias, keep, keep_scale)
  return _attention(query, key, value, bias, keep, tuple(bias.shape), float(keep_scale))


def _apply_keep(weights: jax.Array, keep: Optional[jax.Array], scale: float) -> jax.Array:
  """Dropout of float32 weights by a boolean mask or multipliers, then `scale`."""
  if keep is None:
    return weights
  if keep.dtype == jnp.bool_:
    return jnp.where(keep, weights * scale if scale != 1.0 else weights, 0.0)
  kept = weights * keep.astype(weights.dtype)
  return kept * scale if scale != 1.0 else kept


def _xla_attention(query, key, value, bias, keep, keep_scale):
  """The textbook formulation; JAX differentiates it.

  Not `jax.nn.dot_product_attention`: it has no dropout on the weights, which fine-tuning with
  dropout needs, and its XLA path is this same formulation.
  """
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  weights = _apply_keep(jax.nn.softmax(logits + bias, axis=-1), keep, keep_scale)
  out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(query.dtype), value,
                   preferred_element_type=jnp.float32)
  return out.astype(query.dtype)


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


def _is_low_precision(dtype) -> bool:
  return jnp.dtype(dtype) != jnp.float32


# Products of the two layouts, by operand names: q, k, v, o (output or its gradient) are
# `[b, l, h, d]` inputs in the low-precision layout, and the heads-major `[b, h, l, d]` (keys
# `[b, h, d, k]`) copies in the float32 layout; w is the `[b, h, q, k]` weights or their gradient.
_SPECS = {
    False: dict(logits="bhqd,bhdk->bhqk", out="bhqk,bhkd->bhqd", d_value="bhqd,bhqk->bhdk",
                d_applied="bhqd,bhkd->bhqk", d_query="bhqk,bhdk->bhqd",
                d_key="bhqd,bhqk->bhdk"),
    # The key and value gradients come out as `[b, h, d, k]` and are transposed back: written
    # straight to `[b, k, h, d]`, XLA:CPU (jax 0.10) leaves a bf16 product that contracts both
    # operands' third axes to a generic kernel that cannot run it.
    True: dict(logits="bqhd,bkhd->bhqk", out="bhqk,bkhd->bqhd", d_value="bqhd,bhqk->bhdk",
               d_applied="bqhd,bkhd->bhqk", d_query="bhqk,bkhd->bqhd",
               d_key="bqhd,bhqk->bhdk"),
}


def _attention_forward(query, key, value, bias, keep, keep_scale):
  """Returns the output `[b, q, h, d]` and the intermediates a backward pass may need.

  Float32: products run heads-major with keys pre-transposed, so XLA:CPU gets canonical batched
  matmuls. Below float32 the products take the `[b, l, h, d]` inputs as they are and leave the
  layout to XLA: an explicit transpose in front of a bf16 product makes XLA:CPU run that
  product in float32 (the transpose is done in float32 and its converts fold into the product),
  while the transposes XLA inserts itself stay in bf16.
  """
  dtype = query.dtype
  low = _is_low_precision(dtype)
  if low:
    q, k_t, v = query, key, value
  else:
    q = _heads_major(query)  # [b, h, q, d]
    k_t = jnp.transpose(key, (0, 2, 3, 1))  # [b, h, d, k]: the product needs no further copy
    v = _heads_major(value)  # [b, h, k, d]
  spec = _SPECS[low]
  logits = jnp.einsum(spec["logits"], q, k_t, preferred_element_type=jnp.float32)
  weights = _softmax(logits + bias)  # float32
  applied = _apply_keep(weights, keep, keep_scale)
  out = jnp.einsum(spec["out"], applied.astype(dtype), v, preferred_element_type=jnp.float32)
  out = (out if low else _heads_major(out)).astype(dtype)
  return out, dict(q=q, k_t=k_t, v=v, weights=weights)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(query, key, value, bias, keep, bias_shape, keep_scale):
  del bias_shape  # used by the backward pass only
  return _attention_forward(query, key, value, bias, keep, keep_scale)[0]


def _attention_fwd(query, key, value, bias, keep, bias_shape, keep_scale):
  """Keeps only what the cotangents of the perturbed inputs need (`symbolic_zeros` primals).

  In prompt tuning most attention inputs do depend on the prompt, but e.g. the first decoder
  layer's cross-attention query does not: its gradient is then neither kept for nor computed.
  Below float32 the weights are kept in the compute dtype (the product with the values rounds
  them to it anyway): half the bytes of the largest residual.
  """
  del bias_shape
  need = dict(query=query.perturbed, key=key.perturbed, value=value.perturbed,
              bias=bias.perturbed)
  keep = None if keep is None else keep.value
  out, inter = _attention_forward(query.value, key.value, value.value, bias.value, keep,
                                  keep_scale)
  logits_grad = need["query"] or need["key"] or need["bias"]
  weights = inter["weights"].astype(out.dtype)
  residuals = dict(
      keep=keep,
      weights=weights if logits_grad or need["value"] else None,
      v=inter["v"] if logits_grad else None,
      out=out if logits_grad else None,
      k_t=inter["k_t"] if need["query"] else None,
      q=inter["q"] if need["key"] else None,
      # Empty arrays as flags: residuals must be arrays, and None marks "not needed".
      need_value=jnp.zeros((0,)) if need["value"] else None,
      need_bias=jnp.zeros((0,)) if need["bias"] else None)
  return out, residuals


def _attention_backward(bias_shape, keep_scale, residuals, grad):
  """The hand-written backward pass.

  It avoids a second reduction over the `[b, h, q, k]` weights (see `row` below) and returns
  the bias gradient (a trained relative-position table needs it; XLA drops it when nothing
  uses it).
  """
  r = residuals
  keep = r["keep"]
  d_keep = None
  if isinstance(grad, jax.custom_derivatives.SymbolicZero):
    return None, None, None, None, d_keep
  dtype = grad.dtype  # the output's, which is the query's
  low = _is_low_precision(dtype)
  spec = _SPECS[low]
  grad_h = grad if low else _heads_major(grad)  # [b, q, h, d] or [b, h, q, d]
  weights = None if r["weights"] is None else r["weights"].astype(jnp.float32)
  applied = None
  if weights is not None:
    applied = _apply_keep(weights, keep, keep_scale)
  d_value = None
  if r["need_value"] is not None:
    d_value = jnp.einsum(spec["d_value"], grad_h, applied.astype(dtype),
                         preferred_element_type=jnp.float32)
    d_value = _from_transposed(d_value).astype(dtype)
  if r["v"] is None:  # neither query, key nor bias needs the logits' gradient
    return None, None, d_value, None, d_keep
  # Softmax backward needs rowsum(dWeights * weights), which equals rowsum(dOut * out): one
  # reduction over [b, q, h, d] instead of another pass over the [b, h, q, k] weights.
  row = jnp.sum(grad.astype(jnp.float32) * r["out"].astype(jnp.float32), axis=-1)  # [b, q, h]
  row = jnp.transpose(row, (0, 2, 1))[..., None]  # [b, h, q, 1]
  d_applied = jnp.einsum(spec["d_applied"], grad_h, r["v"], preferred_element_type=jnp.float32)
  d_weights = _apply_keep(d_applied, keep, keep_scale)
  d_logits = weights * (d_weights - row)  # float32 [b, h, q, k]
  d_logits_c = d_logits.astype(dtype)
  d_query = d_key = d_bias = None
  if r["k_t"] is not None:
    d_query = jnp.einsum(spec["d_query"], d_logits_c, r["k_t"],
                         preferred_element_type=jnp.float32)
    d_query = (d_query if low else _heads_major(d_query)).astype(dtype)
  if r["q"] is not None:
    d_key = jnp.einsum(spec["d_key"], r["q"], d_logits_c, preferred_element_type=jnp.float32)
    d_key = _from_transposed(d_key).astype(dtype)
  if r["need_bias"] is not None:
    summed = tuple(i for i, n in enumerate(bias_shape) if n == 1 and d_logits.shape[i] != 1)
    d_bias = jnp.sum(d_logits, axis=summed, keepdims=True) if summed else d_logits
  return d_query, d_key, d_value, d_bias, d_keep


_attention.defvjp(_attention_fwd, _attention_backward, symbolic_zeros=True)
