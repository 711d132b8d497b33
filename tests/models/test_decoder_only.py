"""Specification of the decoder-only LM: causal and prefix-LM attention, positions, cache.

The behaviour tests run for both position schemes and both kernel implementations.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import DecoderOnly, get_config, init_decoder_only_cache

TOKENS = jnp.array([[0, 5, 6, 7, 8, 0], [0, 9, 10, 0, 0, 0]])
MASK = jnp.array([[1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]])


def _init(position_embedding, impl="custom_vjp"):
  cfg = get_config("decoder_only_tiny", position_embedding=position_embedding, max_length=64,
                   attention_impl=impl, mlp_impl=impl)
  module = DecoderOnly(cfg)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0), TOKENS)["params"])
  return module, params


@pytest.fixture(params=[("relative", "custom_vjp"), ("learned", "custom_vjp"),
                        ("relative", "xla"), ("learned", "xla")], ids="-".join)
def model(request):
  return _init(*request.param)


@pytest.mark.slow
def test_parameter_tree_matches_position_scheme():
  _, rel = _init("relative")
  _, learned = _init("learned")
  assert rel["decoder"]["relpos_bias"]["rel_embedding"].shape == (4, 16)
  assert "position_embedder" not in rel["decoder"]
  assert learned["decoder"]["position_embedder"]["embedding"].shape == (64, 32)
  assert "encoder_decoder_attention" not in rel["decoder"]["layers_0"]


def test_causal_outputs_do_not_see_future_tokens(model):
  module, params = model
  a = module.apply({"params": params}, TOKENS).logits
  changed = TOKENS.at[0, 4].set(11)
  b = module.apply({"params": params}, changed).logits
  np.testing.assert_allclose(a[0, :4], b[0, :4], atol=1e-6)
  assert np.abs(np.asarray(a[0, 4] - b[0, 4])).max() > 1e-3


def test_prefix_lm_attends_bidirectionally_inside_the_prefix_only(model):
  module, params = model
  prefix = jnp.array([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
  run = lambda toks: module.apply({"params": params}, toks, decoder_mask=MASK,
                                  decoder_causal_attention=prefix).logits
  base = run(TOKENS)
  # Changing a prefix token (position 2) changes earlier prefix outputs (position 1) ...
  changed = run(TOKENS.at[0, 2].set(12))
  assert np.abs(np.asarray(base[0, 1] - changed[0, 1])).max() > 1e-3
  # ... but a token after the prefix (position 4) does not reach earlier positions.
  after = run(TOKENS.at[0, 4].set(12))
  np.testing.assert_allclose(base[0, :4], after[0, :4], atol=1e-6)


@pytest.mark.slow
def test_padded_prefill_then_steps_match_unpadded_full_passes(model):
  module, params = model
  cache = init_decoder_only_cache(module, params, 2, 8)
  out, variables = module.apply(
      {"params": params, "cache": cache}, jnp.array([[0, 5, 6], [0, 9, 0]]),
      decoder_mask=jnp.array([[1, 1, 1], [1, 1, 0]]), decode=True, prefill=True,
      mutable=["cache"])
  full0 = module.apply({"params": params}, jnp.array([[0, 5, 6, 7, 3]])).logits[0]
  full1 = module.apply({"params": params}, jnp.array([[0, 9, 11, 4]])).logits[0]
  np.testing.assert_allclose(out.logits[0], full0[:3], atol=1e-5)
  np.testing.assert_allclose(out.logits[1, :2], full1[:2], atol=1e-5)
  steps = []
  cache = variables["cache"]
  for token in ([[7], [11]], [[3], [4]]):
    out, variables = module.apply({"params": params, "cache": cache}, jnp.array(token),
                                  decode=True, mutable=["cache"])
    cache = variables["cache"]
    steps.append(out.logits[:, 0])
  np.testing.assert_allclose(steps[0][0], full0[3], atol=1e-5)
  np.testing.assert_allclose(steps[1][0], full0[4], atol=1e-5)
  np.testing.assert_allclose(steps[0][1], full1[2], atol=1e-5)
  np.testing.assert_allclose(steps[1][1], full1[3], atol=1e-5)
  np.testing.assert_array_equal(cache["decoder"]["next_position"], [5, 4])


def test_returns_hidden_states_and_identity_input_index(model):
  module, params = model
  out = module.apply({"params": params}, TOKENS, decoder_mask=MASK)
  assert out.hidden.shape == (2, 6, 32)
  np.testing.assert_array_equal(out.inputs.input_index[1], np.arange(6))
  np.testing.assert_array_equal(out.inputs.mask, MASK)
