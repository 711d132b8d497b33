"""The rotary decoder on its own: axes, numerics switches, RoPE, masks and the cache protocol.

(Agreement with `transformers` is in test_llama_parity.py; training in test_llama_training.py.)
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import axes
from prompt_tuning.models.decoder_only import init_decoder_only_cache
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.models.llama_config import LlamaConfig, RopeScaling, get_llama_config
from prompt_tuning.models.rope import apply_rope, inverse_frequencies
from prompt_tuning.prompts import hooks, providers

TOKENS = jnp.asarray(np.random.default_rng(0).integers(1, 512, (2, 10)), jnp.int32)
MASK = jnp.asarray([[1] * 10, [1] * 6 + [0] * 4], jnp.int32)


def init(config, hook=None):
  module = LlamaDecoder(config=config, input_hook=hook)
  return module, module.init(jax.random.PRNGKey(0), TOKENS)["params"]


@pytest.mark.parametrize("preset", ["llama_tiny", "qwen2_tiny", "gemma2_tiny"])
def test_every_parameter_carries_logical_axes(preset):
  _, boxed = init(get_llama_config(preset))
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) > 10 and all(isinstance(x, nn.Partitioned) for x in leaves)
  known = {axes.VOCAB, axes.EMBED, axes.MLP, axes.JOINED_KV}
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known
  params = nn.meta.unbox(boxed)
  q = params["layers_0"]["self_attn"]["q_proj"]["kernel"]
  k = params["layers_0"]["self_attn"]["k_proj"]["kernel"]
  assert q.shape == (32, 32) and k.shape == (32, 16)  # 4 query heads, 2 kv heads of width 8


def test_bfloat16_compute_stays_close_to_float32():
  config = get_llama_config("gemma2_tiny")
  module, params = init(config)
  params = nn.meta.unbox(params)
  full = module.apply({"params": params}, TOKENS, decoder_mask=MASK).logits
  half_module = LlamaDecoder(config=config.replace(dtype="bfloat16", param_dtype="bfloat16"))
  half_params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  half = half_module.apply({"params": half_params}, TOKENS, decoder_mask=MASK)
  assert half.hidden.dtype == jnp.bfloat16 and half.logits.dtype == jnp.float32
  real = np.asarray(MASK, bool)
  error = np.abs(np.asarray(half.logits) - np.asarray(full))[real]
  assert error.max() < 0.05 * np.abs(np.asarray(full))[real].max()


@pytest.mark.slow  # two gradient compilations
def test_remat_gives_the_same_logits_and_gradients():
  config = get_llama_config("llama_tiny")
  module, params = init(config)
  params = nn.meta.unbox(params)
  remat = LlamaDecoder(config=config.replace(remat_policy="full"))

  def loss(m, p):
    return jnp.sum(m.apply({"params": p}, TOKENS, decoder_mask=MASK).logits ** 2) * 1e-3
  a, grad_a = jax.jit(jax.value_and_grad(lambda p: loss(module, p)))(params)
  b, grad_b = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  for x, y in zip(jax.tree_util.tree_leaves(grad_a), jax.tree_util.tree_leaves(grad_b)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


def test_rope_rotation_depends_only_on_relative_position():
  inv_freq = inverse_frequencies(8, 10000.0, RopeScaling())
  rng = np.random.default_rng(1)
  q, k = (jnp.asarray(rng.normal(size=(1, 1, 1, 8)), jnp.float32) for _ in range(2))
  dot = lambda pq, pk: float(jnp.sum(apply_rope(q, jnp.asarray([[pq]]), inv_freq)
                                     * apply_rope(k, jnp.asarray([[pk]]), inv_freq)))
  assert dot(7, 3) == pytest.approx(dot(24, 20), rel=1e-5)
  assert dot(7, 3) != pytest.approx(dot(7, 4), rel=1e-3)


@pytest.mark.parametrize("rope_type", ["linear", "llama3"])
def test_scaled_rope_frequencies_match_transformers(rope_type):
  rope_utils = pytest.importorskip("transformers.modeling_rope_utils",
                                   reason="needs transformers for the reference frequencies")
  transformers = pytest.importorskip("transformers")
  params = dict(rope_type=rope_type, rope_theta=10000.0, factor=4.0)
  if rope_type == "llama3":
    params.update(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
  hf_config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=2, head_dim=32,
                                       rope_parameters=params)
  expected, _ = rope_utils.ROPE_INIT_FUNCTIONS[rope_type](hf_config, None)
  fields = {k: v for k, v in params.items() if k != "rope_theta"}
  ours = inverse_frequencies(32, 10000.0, RopeScaling(**fields))
  np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
  assert not np.allclose(ours, inverse_frequencies(32, 10000.0, RopeScaling()))


def test_padding_and_later_slots_do_not_change_earlier_logits():
  module, params = init(get_llama_config("mistral_tiny"))  # sliding window 8 < 10 slots
  params = nn.meta.unbox(params)
  out = module.apply({"params": params}, TOKENS, decoder_mask=MASK).logits
  changed = TOKENS.at[1, 6:].set(5).at[0, 9].set(7)
  again = module.apply({"params": params}, changed, decoder_mask=MASK).logits
  np.testing.assert_allclose(out[1, :6], again[1, :6], atol=1e-6)
  np.testing.assert_allclose(out[0, :9], again[0, :9], atol=1e-6)
  assert np.abs(np.asarray(out[0, 9] - again[0, 9])).max() > 1e-3


@pytest.mark.slow  # prefill, step and two full-pass compilations
def test_prompted_prefill_then_steps_equal_one_full_pass():
  """Decode protocol: a padded, prompted prefill followed by one-token steps continues every
  example at its own position and gives the logits of running the whole sequence at once."""
  hook = hooks.PromptHook(provider=providers.Prompt(length=3))
  module, params = init(get_llama_config("gemma2_tiny"), hook)
  params = nn.meta.unbox(params)
  prompt_mask = MASK.at[0, 7:].set(0)  # prompts of 7 and 6 tokens, right-padded to 10
  cache = init_decoder_only_cache(module, params, 2, 13 + 3)
  prefill = jax.jit(lambda c, t, m: module.apply(
      {"params": params, "cache": c}, t, decoder_mask=m, decode=True, prefill=True,
      mutable=["cache"]))
  step_fn = jax.jit(lambda c, t: module.apply({"params": params, "cache": c}, t, decode=True,
                                              mutable=["cache"]))
  out, variables = prefill(cache, TOKENS * prompt_mask, prompt_mask)
  cache = variables["cache"]
  steps = []
  for t in range(3):
    step, variables = step_fn(cache, jnp.asarray([[11 + t], [21 + t]], jnp.int32))
    cache = variables["cache"]
    steps.append(step.logits[:, 0])
  full_pass = jax.jit(lambda t: module.apply({"params": params}, t).logits)
  for row, n in enumerate((7, 6)):
    full_tokens = jnp.concatenate([TOKENS[row, :n], jnp.asarray([11, 12, 13]) + 10 * row])
    full = full_pass(full_tokens[None])[0]
    np.testing.assert_allclose(out.logits[row, 3 + n - 1], full[3 + n - 1], atol=1e-4)
    for t in range(3):
      np.testing.assert_allclose(steps[t][row], full[3 + n + t], atol=1e-4)


def test_bad_configs_are_refused_in_one_sentence():
  with pytest.raises(ValueError, match=r"num_heads=6 is not a multiple of num_kv_heads=4\.$"):
    get_llama_config("llama_tiny", num_heads=6, num_kv_heads=4)
  with pytest.raises(ValueError, match="family must be one of"):
    LlamaConfig(vocab_size=4, emb_dim=4, num_heads=1, num_kv_heads=1, head_dim=4, mlp_dim=4,
                num_decoder_layers=1, family="gpt2")
  with pytest.raises(ValueError, match="RoPE type 'yarn' is not supported"):
    RopeScaling("yarn")
  with pytest.raises(ValueError, match="Unknown rotary decoder preset 'llama9'"):
    get_llama_config("llama9")
