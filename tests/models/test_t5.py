"""Specification of the T5 encoder-decoder: parameter tree, cache, masks, dtypes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import EncoderDecoder, get_config, init_decoder_cache
from prompt_tuning.models.layers import relative_position_bucket

ENC = jnp.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0]])
DEC = jnp.array([[0, 3, 4, 5, 6], [0, 7, 8, 2, 2]])


def _init(cfg, enc=ENC, dec=DEC):
  module = EncoderDecoder(cfg)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), enc, dec)["params"])
  return module, params


def _small(**kw):
  return get_config("t5_1_1_tiny", vocab_size=64, emb_dim=16, num_heads=4, head_dim=4, mlp_dim=32,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16, **kw)


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
  assert tuple(specs["encoder"]["layers_0"]["attention"]["query"]["kernel"]) == ("embed", "joined_kv")
  assert tuple(specs["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]) == ("mlp", "embed")
  assert tuple(specs["decoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")


@pytest.mark.slow
def test_t5_1_0_ties_logits_and_uses_single_relu_projection():
  cfg = _small(mlp_activations=("relu",), logits_via_embedding=True)
  module, params = _init(cfg)
  assert "logits_dense" not in params["decoder"]
  assert set(params["encoder"]["layers_0"]["mlp"]) == {"wi", "wo"}
  # Tied logits = (hidden * E^-0.5) @ embedding^T.
  logits, hidden = module.apply({"params": params}, ENC, DEC, return_hidden=True)
  manual = (hidden * cfg.emb_dim ** -0.5) @ params["token_embedder"]["embedding"].T
  np.testing.assert_allclose(logits, manual, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("chunks", [[(0, 5)], [(0, 1), (1, 2), (2, 5)], [(i, i + 1) for i in range(5)]])
def test_cached_decoding_matches_teacher_forcing(chunks):
  module, params = _init(_small())
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
def test_padding_does_not_change_an_examples_logits():
  module, params = _init(_small())
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
def test_dropout_is_active_only_when_enabled():
  module, params = _init(_small(dropout_rate=0.5))
  a = module.apply({"params": params}, ENC, DEC)
  b = module.apply({"params": params}, ENC, DEC)
  c = module.apply({"params": params}, ENC, DEC, enable_dropout=True,
                   rngs={"dropout": jax.random.PRNGKey(3)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a - c)).max() > 1e-3


@pytest.mark.slow
def test_remat_gives_same_values_and_gradients():
  plain_module, params = _init(_small())
  remat_module = EncoderDecoder(_small(remat_policy="full"))
  loss = lambda m: (lambda p: jnp.sum(m.apply({"params": p}, ENC, DEC) ** 2))
  g1 = jax.grad(loss(plain_module))(params)
  g2 = jax.grad(loss(remat_module))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = _small(dtype="bfloat16")
  module, params = _init(cfg)
  assert params["encoder"]["layers_0"]["attention"]["query"]["kernel"].dtype == jnp.float32
  logits = module.apply({"params": params}, ENC, DEC)
  reference = EncoderDecoder(_small()).apply({"params": params}, ENC, DEC)
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
