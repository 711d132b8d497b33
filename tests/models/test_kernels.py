"""Both kernel implementations (XLA autodiff, hand-written backward) against plain autodiff.

Every numeric test runs on both; the tests that count traced products pin down what the
hand-written backward pass saves, so they run on `custom_vjp` only.
"""
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.engine import gin_utils
from prompt_tuning.models import kernels
from prompt_tuning.models import layers
from prompt_tuning.models.config import ModelConfig

B, Q, K, H, D = 2, 5, 7, 3, 4
IMPLS = ("custom_vjp", "xla")


def _attention(impl):
  return lambda q, k, v, b, keep=None: kernels.dot_product_attention(q, k, v, b, keep, impl=impl)


def _stacked(impl, dtype=jnp.float32):
  return lambda x, ks: kernels.stacked_matmul(x, ks, dtype, impl=impl)


def _reference_attention(query, key, value, bias, keep):
  """The textbook formulation, differentiated by JAX."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32) + bias
  weights = jax.nn.softmax(logits, axis=-1)
  if keep is not None:
    weights = weights * keep
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(query.dtype), value,
                    preferred_element_type=jnp.float32).astype(query.dtype)


def _inputs(bias_shape, dropout, dtype=jnp.float32):
  keys = jax.random.split(jax.random.PRNGKey(0), 6)
  query = jax.random.normal(keys[0], (B, Q, H, D)).astype(dtype)
  key = jax.random.normal(keys[1], (B, K, H, D)).astype(dtype)
  value = jax.random.normal(keys[2], (B, K, H, D)).astype(dtype)
  bias = jax.random.normal(keys[3], bias_shape)
  keep = None
  if dropout:
    keep = jax.random.bernoulli(keys[4], 0.8, (B, H, Q, K)).astype(jnp.float32) / 0.8
  cotangent = jax.random.normal(keys[5], (B, Q, H, D)).astype(dtype)
  return query, key, value, bias, keep, cotangent


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias_shape", [(B, H, Q, K), (1, H, Q, K), (B, 1, Q, K)])
@pytest.mark.parametrize("dropout", [False, True])
def test_attention_output_and_every_gradient_match_autodiff(bias_shape, dropout, impl):
  query, key, value, bias, keep, cotangent = _inputs(bias_shape, dropout)

  def loss(fn):
    return lambda q, k, v, b: jnp.sum(fn(q, k, v, b, keep) * cotangent)

  ours = jax.value_and_grad(loss(_attention(impl)), argnums=(0, 1, 2, 3))
  reference = jax.value_and_grad(loss(_reference_attention), argnums=(0, 1, 2, 3))
  (value_ours, grads_ours), (value_ref, grads_ref) = (
      ours(query, key, value, bias), reference(query, key, value, bias))
  np.testing.assert_allclose(value_ours, value_ref, rtol=1e-5)
  for name, got, want in zip(("query", "key", "value", "bias"), grads_ours, grads_ref):
    assert got.shape == want.shape, name
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize("argnums", [(0,), (1,), (2,), (3,), (0, 2), (1, 3)])
def test_custom_vjp_gradients_of_an_input_subset_match_autodiff_and_skip_the_rest(argnums):
  query, key, value, bias, _, cotangent = _inputs((1, H, Q, K), False)
  args = (query, key, value, bias)

  def loss(fn):
    return lambda *a: jnp.sum(fn(*a, None) * cotangent)

  ours = _attention("custom_vjp")
  got = jax.grad(loss(ours), argnums=argnums)(*args)
  want = jax.grad(loss(_reference_attention), argnums=argnums)(*args)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=2e-5, rtol=1e-4)
  # Only the products those gradients need are traced: one [q, k] x [k, d] product per head
  # for d_value alone, three more products when query, key or bias need the logits' gradient.
  jaxpr = jax.make_jaxpr(jax.grad(loss(ours), argnums=argnums))(*args)
  products = sum(e.primitive.name == "dot_general" for e in jaxpr.jaxpr.eqns)
  backward = {(2,): 1, (0,): 2, (1,): 2, (3,): 1, (0, 2): 3, (1, 3): 2}[argnums]
  assert products == 2 + backward


@pytest.mark.parametrize("impl", IMPLS)
def test_attention_in_bfloat16_stays_close_to_float32(impl):
  query, key, value, bias, _, cotangent = _inputs((1, H, Q, K), False)
  loss = lambda q, k, v: jnp.sum(_attention(impl)(q, k, v, bias).astype(jnp.float32) * cotangent)
  grads32 = jax.grad(loss, argnums=(0, 1, 2))(query, key, value)
  low = [x.astype(jnp.bfloat16) for x in (query, key, value)]
  grads16 = jax.grad(loss, argnums=(0, 1, 2))(*low)
  for got, want in zip(grads16, grads32):
    assert got.dtype == jnp.bfloat16
    scale = float(jnp.max(jnp.abs(want)))
    assert float(jnp.max(jnp.abs(got.astype(jnp.float32) - want))) < 0.03 * scale


@pytest.mark.parametrize("impl", IMPLS)
def test_fully_masked_query_rows_stay_finite(impl):
  query, key, value, _, _, cotangent = _inputs((1, H, Q, K), False)
  bias = jnp.full((B, 1, Q, K), layers.MASKED).at[:, :, :2].set(0.0)  # rows 2.. see nothing
  grads = jax.grad(lambda q, k, v: jnp.sum(_attention(impl)(q, k, v, bias) * cotangent),
                   argnums=(0, 1, 2))(query, key, value)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_gated_mlp_keeps_t5x_parameter_paths_and_equals_separate_products(impl):
  cfg = ModelConfig(vocab_size=16, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=12,
                    num_encoder_layers=1, num_decoder_layers=1, mlp_impl=impl)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8))
  block = layers.MlpBlock(cfg)
  params = nn.meta.unbox(block.init(jax.random.PRNGKey(2), x, False))["params"]
  assert sorted(params) == ["wi_0", "wi_1", "wo"]
  assert params["wi_0"]["kernel"].shape == (8, 12) and params["wo"]["kernel"].shape == (12, 8)
  expected = (nn.gelu(x @ params["wi_0"]["kernel"], approximate=True)
              * (x @ params["wi_1"]["kernel"])) @ params["wo"]["kernel"]
  np.testing.assert_allclose(block.apply({"params": params}, x, False), expected, rtol=1e-5,
                             atol=1e-6)
  # Gradients flow into each kernel as if it had its own product.
  grads = jax.grad(lambda p: jnp.sum(block.apply({"params": p}, x, False) ** 2))(params)
  manual = jax.grad(lambda p: jnp.sum(((nn.gelu(x @ p["wi_0"]["kernel"], approximate=True)
                                        * (x @ p["wi_1"]["kernel"])) @ p["wo"]["kernel"]) ** 2))(
                                            params)
  for name in ("wi_0", "wi_1", "wo"):
    np.testing.assert_allclose(grads[name]["kernel"], manual[name]["kernel"], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("argnums", [(0,), (1,), (2,), (1, 2), (0, 1, 2)])
def test_stacked_matmul_gradients_of_any_input_subset_match_separate_products(argnums, impl):
  """custom_vjp: separate backward products, kernel gradients only when a kernel is trained."""
  keys = jax.random.split(jax.random.PRNGKey(3), 4)
  x = jax.random.normal(keys[0], (2, 5, 8))
  w0, w1 = jax.random.normal(keys[1], (8, 6)), jax.random.normal(keys[2], (8, 6))
  weights = jax.random.normal(keys[3], (2, 5, 6))

  def loss(x, w0, w1, product):
    a, b = product(x, [w0, w1])
    return jnp.sum(jnp.tanh(a) * b * weights)

  separate = lambda x, ks: [x @ k for k in ks]
  got = jax.grad(loss, argnums)(x, w0, w1, _stacked(impl))
  want = jax.grad(loss, argnums)(x, w0, w1, separate)
  for g, w in zip(got, want):
    assert g.shape == w.shape and float(jnp.abs(w).max()) > 0.1
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_stacked_matmul_with_one_output_unused_and_in_bfloat16(impl):
  keys = jax.random.split(jax.random.PRNGKey(4), 3)
  x = jax.random.normal(keys[0], (3, 8))
  w0, w1 = jax.random.normal(keys[1], (8, 6)), jax.random.normal(keys[2], (8, 6))
  # Only the second product reaches the loss: d/dx sum(x @ w1) = row sums of w1.
  d_x = jax.grad(lambda x: jnp.sum(_stacked(impl)(x, [w0, w1])[1]))(x)
  np.testing.assert_allclose(d_x, jnp.broadcast_to(w1.sum(1), x.shape), rtol=1e-5, atol=1e-5)
  outputs = _stacked(impl, jnp.bfloat16)(x, [w0, w1])
  assert all(o.dtype == jnp.bfloat16 for o in outputs)
  d_x16 = jax.grad(lambda x: jnp.sum(
      _stacked(impl, jnp.bfloat16)(x, [w0, w1])[0].astype(jnp.float32)))(x)
  assert d_x16.dtype == jnp.float32  # the cast back to the input's dtype is differentiated too
  np.testing.assert_allclose(d_x16, jnp.broadcast_to(w0.sum(1), x.shape), rtol=2e-2, atol=5e-2)


def _attention_jaxpr(config):
  block = layers.MultiHeadAttention(config)
  x, bias = jnp.ones((1, 3, config.emb_dim)), jnp.zeros((1, 1, 3, 3))
  params = block.init(jax.random.PRNGKey(0), x, x, bias)
  return str(jax.make_jaxpr(lambda p: block.apply(p, x, x, bias))(params))


@pytest.mark.parametrize("backend, expected", [("cpu", "custom_vjp"), ("tpu", "xla"),
                                               ("gpu", "xla")])
def test_auto_picks_the_hand_written_kernels_on_cpu_only_when_a_layer_is_traced(
    monkeypatch, backend, expected):
  cfg = ModelConfig(vocab_size=16, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=12,
                    num_encoder_layers=1, num_decoder_layers=1)
  assert cfg.attention_impl == cfg.mlp_impl == "auto"
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  assert kernels.resolve("auto") == expected
  # The same config object traces to the backend's choice; explicit choices ignore the backend.
  assert ("custom_vjp_call" in _attention_jaxpr(cfg)) == (expected == "custom_vjp")
  assert "custom_vjp_call" not in _attention_jaxpr(cfg.replace(attention_impl="xla"))
  assert "custom_vjp_call" in _attention_jaxpr(cfg.replace(attention_impl="custom_vjp"))


@pytest.mark.parametrize("field", ["attention_impl", "mlp_impl"])
def test_an_unknown_kernel_implementation_is_refused_naming_the_field(field):
  with pytest.raises(ValueError, match=f"{field} must be one of .*'cuda'"):
    ModelConfig(vocab_size=16, emb_dim=8, num_heads=2, head_dim=4, mlp_dim=12,
                num_encoder_layers=1, num_decoder_layers=1, **{field: "cuda"})


@pytest.mark.parametrize("model_file", ["t5_1_1_tiny.gin", "decoder_only_tiny.gin"])
def test_model_gin_files_set_the_kernel_implementations(model_file):
  gin_utils.register_configurables()
  gin.clear_config()
  try:
    gin_utils.parse_gin(gin_files=[f"gin/models/{model_file}"], gin_bindings=[])
    default = gin.query_parameter("%MODEL").scoped_configurable_fn().module.config
    gin_utils.parse_gin(gin_files=[], gin_bindings=["ATTENTION_IMPL = 'xla'",
                                                    "MLP_IMPL = 'custom_vjp'"])
    chosen = gin.query_parameter("%MODEL").scoped_configurable_fn().module.config
  finally:
    gin.clear_config()
  assert (default.attention_impl, default.mlp_impl) == ("auto", "auto")
  assert (chosen.attention_impl, chosen.mlp_impl) == ("xla", "custom_vjp")
