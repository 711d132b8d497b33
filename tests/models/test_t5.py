"""Specification of the T5 encoder-decoder: parameter tree, cache, masks, dtypes.

Tests whose numbers depend on the kernels run on both implementations (`IMPLS`); the parameter
tree and its axes do not depend on them.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import EncoderDecoder, get_config, init_decoder_cache
from prompt_tuning.models.layers import relative_position_bucket

ENC = jnp.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0]])
DEC = jnp.array([[0, 3, 4, 5, 6], [0, 7, 8, 2, 2]])
IMPLS = ("custom_vjp", "xla")


def _init(cfg, enc=ENC, dec=DEC):
  module = EncoderDecoder(cfg)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), enc, dec)["params"])
  return module, params


def _small(impl="custom_vjp", **kw):
  return get_config("t5_1_1_tiny", vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16,
                    attention_impl=impl, mlp_impl=impl, **kw)


@pytest.mark.slow
def test_tiny_preset_has_t5x_parameter_tree():
  module, params = _init(get_config("t5_1_1_tiny"))
  flat = {"/".join(p.key for p in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  assert flat["token_embedder/embedding"] == (32128, 4)
  assert flat["encoder/relpos_bias/rel_embedding"] == (2, 4)
  assert flat["encoder/layers_1/attention/query/kernel"] == (4, 4)
  assert flat["encoder/layers_0/mlp/wi_1/kernel"] == (4, 8)
  assert flat["decoder/layers_1/encoder_decoder_attention/out/kernel"] == (4, 4)
  assert flat["decoder/layers_0/pre_cross_attention_layer_norm/scale"] == (4,)
  assert flat["decoder/logits_dense/kernel"] == (4, 32128)
  assert len(flat) == 1 + 2 * 1 + 2 * (2 + 4 + 3) + 1 + 2 * (3 + 8 + 3) + 1 + 1


def test_parameters_carry_logical_axes():
  module = EncoderDecoder(get_config("t5_1_1_tiny"))
  boxed = module.init(jax.random.PRNGKey(0), ENC, DEC)["params"]
  specs = nn.get_partition_spec(boxed)
  assert tuple(specs["token_embedder"]["embedding"]) == ("vocab", "embed")
  assert (tuple(specs["encoder"]["layers_0"]["attention"]["query"]["kernel"])
          == ("embed", "joined_kv"))
  assert tuple(specs["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["decoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_t5_1_0_ties_logits_and_uses_single_relu_projection(impl):
  cfg = _small(impl, mlp_activations=("relu",), logits_via_embedding=True)
  module, params = _init(cfg)
  assert "logits_dense" not in params["decoder"]
  assert set(params["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  # Tied logits = (hidden * E^-0.5) @ embedding^T.
  logits, hidden = module.apply({"params": params}, ENC, DEC, return_hidden=True)
  manual = (hidden * cfg.emb_dim ** -0.5) @ params["token_embedder"]["embedding"].T
  np.testing.assert_allclose(logits, manual, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunks", [[(0, 5)], [(0, 1), (1, 2), (2, 5)],
                                    [(i, i + 1) for i in range(5)]])
def test_cached_decoding_matches_teacher_forcing(chunks, impl):
  module, params = _init(_small(impl))
  full = module.apply({"params": params}, ENC, DEC)
  encoded, mask = module.apply({"params": params}, ENC, method="encode")
  cache = init_decoder_cache(module, params, encoded, mask, DEC.shape[1])
  pieces = []
  for start, stop in chunks:
    logits, variables = module.apply({"params": params, "cache": cache}, encoded, mask,
                                     DEC[:, start:stop], decode=True, method="decode",
                                     mutable=["cache"])
    cache = variables["cache"]
    pieces.append(logits)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5)
  assert int(cache["decoder"]["index"]) == DEC.shape[1]


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_cached_decoding_matches_teacher_forcing(impl):
  # Below float32 the decode cache keeps keys and values as [b, k, h, d] (float32: heads-major);
  # appending chunks at the right slots gives the teacher-forced logits up to bf16 rounding.
  module, params = _init(_small(impl, dtype="bfloat16"))
  full = np.asarray(module.apply({"params": params}, ENC, DEC))
  encoded, mask = module.apply({"params": params}, ENC, method="encode")
  cache = init_decoder_cache(module, params, encoded, mask, DEC.shape[1])
  pieces = []
  for start, stop in [(0, 1), (1, 2), (2, 5)]:
    logits, variables = module.apply({"params": params, "cache": cache}, encoded, mask,
                                     DEC[:, start:stop], decode=True, method="decode",
                                     mutable=["cache"])
    cache = variables["cache"]
    pieces.append(logits)
  cached = np.concatenate(pieces, axis=1)
  np.testing.assert_allclose(cached, full, atol=1e-2)
  assert np.abs(np.diff(full, axis=1)).max() > 0.5  # positions differ: a misplaced slot shows


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_padding_does_not_change_an_examples_logits(impl):
  module, params = _init(_small(impl))
  alone = module.apply({"params": params}, ENC[1:, :3], DEC[1:])
  batched = module.apply({"params": params}, ENC, DEC)[1:]
  np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_input_embeddings_replace_token_lookup():
  module, params = _init(_small())
  embedded = jnp.take(params["token_embedder"]["embedding"], ENC, axis=0)
  via_ids = module.apply({"params": params}, ENC, DEC)
  via_embeddings = module.apply({"params": params}, None, DEC, encoder_input_embeddings=embedded,
                                encoder_mask=ENC > 0)
  np.testing.assert_allclose(via_ids, via_embeddings, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_is_active_only_when_enabled(impl):
  module, params = _init(_small(impl, dropout_rate=0.5))
  a = module.apply({"params": params}, ENC, DEC)
  b = module.apply({"params": params}, ENC, DEC)
  c = module.apply({"params": params}, ENC, DEC, enable_dropout=True,
                   rngs={"dropout": jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a - c)).max() > 1e-3


# Remat recomputes each layer's forward pass inside the backward pass. The recomputation runs
# the same operations on the same inputs, but XLA compiles it as part of a different program and
# may fuse and order its float32 reductions (norm variances, softmax sums, matmul accumulation)
# differently, so recomputed activations, and through them the gradients, may move by a few
# ulps of the quantities involved. Measured on this model: at most 3.7e-7 x the leaf's largest
# entry (about 3 float32 epsilons), for both policies and both kernel implementations. The bound
# is therefore relative to each leaf's largest entry, at 32 float32 epsilons (~10x headroom): an
# elementwise rtol is flaky, because entries near zero are sums of cancelling terms of the
# leaf's size (one such entry once moved 2.7e-6 against atol 1e-6), while any real remat fault
# (a stale saved value, a missing layer gradient, unreplayed dropout) moves whole leaves by
# orders of magnitude more. The forward pass recomputes nothing, so the logits must be bitwise
# equal.
REMAT_GRADIENT_TOLERANCE = 32 * float(jnp.finfo(jnp.float32).eps)  # x max |leaf|


@functools.lru_cache(maxsize=None)
def _loss_and_gradients(impl, remat_policy):
  module = EncoderDecoder(_small(impl, remat_policy=remat_policy))
  params = _init(_small())[1]
  loss = lambda p: jnp.sum(module.apply({"params": p}, ENC, DEC) ** 2)
  logits = jax.jit(lambda p: module.apply({"params": p}, ENC, DEC))(params)
  return logits, jax.jit(jax.value_and_grad(loss))(params), jax.make_jaxpr(jax.grad(loss))(params)


def _remat_policies(jaxpr):
  """The `policy` parameter of every remat (checkpoint) equation, however deeply nested."""
  found = []
  for eqn in jaxpr.eqns:
    if "policy" in eqn.params and "prevent_cse" in eqn.params:
      found.append(eqn.params["policy"])
    for sub in jax.core.jaxprs_in_params(eqn.params):
      found.extend(_remat_policies(sub))
  return found


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_gives_same_values_and_gradients(policy, impl):
  plain_logits, (plain_loss, plain_grads), plain_jaxpr = _loss_and_gradients(impl, "none")
  logits, (loss, grads), jaxpr = _loss_and_gradients(impl, policy)
  # The policy reaches every layer (2 encoder + 2 decoder), and plain runs have none.
  expected = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}
  assert _remat_policies(jaxpr.jaxpr) == [expected[policy]] * 4
  assert _remat_policies(plain_jaxpr.jaxpr) == []
  np.testing.assert_array_equal(logits, plain_logits)
  np.testing.assert_allclose(loss, plain_loss, rtol=REMAT_GRADIENT_TOLERANCE)
  flat = jax.tree_util.tree_flatten_with_path(plain_grads)[0]
  assert len(flat) == len(jax.tree_util.tree_leaves(grads)) == 52
  for (path, want), got in zip(flat, jax.tree_util.tree_leaves(grads)):
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0, path  # every parameter gets a gradient
    error = float(jnp.max(jnp.abs(got - want)))
    assert error <= REMAT_GRADIENT_TOLERANCE * scale, (jax.tree_util.keystr(path), error, scale)


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_compute_keeps_float32_params_and_logits(impl):
  cfg = _small(impl, dtype="bfloat16")
  module, params = _init(cfg)
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].dtype == jnp.float32
  logits = module.apply({"params": params}, ENC, DEC)
  reference = EncoderDecoder(_small(impl)).apply({"params": params}, ENC, DEC)
  assert logits.dtype == jnp.float32
  assert np.abs(np.asarray(logits - reference)).max() < 0.1 * np.abs(np.asarray(reference)).max()


def test_relative_position_buckets_match_t5_table():
  rel = jnp.arange(-20, 21)
  bidir = relative_position_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
  causal = relative_position_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128)
  # Exact buckets for small distances; keys after the query use the upper half.
  assert bidir[20].item() == 0 and bidir[21].item() == 17 and bidir[19].item() == 1
  assert [int(b) for b in bidir[20 - 8:20 - 5]] == [8, 7, 6]  # distance 8 is the first log bucket
  assert causal[21:].tolist() == [0] * 20  # future keys all share bucket 0
  # Causal stacks use all 32 buckets one way: distance 20 -> 16 + floor(log(20/16)/log(8)*16).
  assert causal[0].item() == 17
