"""bfloat16 compute against float32 on one tiny prompted T5: forward, gradients, training, memory.

Parameters are float32 in both runs; only the compute dtype differs. Tolerances are stated per
test: bfloat16 keeps 8 bits of mantissa, so single values differ by up to ~0.4% and sums of
many products by a few percent of their scale.
"""
import collections
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.engine import optimizers, train_state
from prompt_tuning.engine.models import EncoderDecoderModel
from prompt_tuning.models import EncoderDecoder, layers
from prompt_tuning.models.config import ModelConfig
from prompt_tuning.prompts import hooks, providers

CFG = ModelConfig(vocab_size=64, emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  num_encoder_layers=2, num_decoder_layers=2, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
BATCH, INPUTS, PROMPT, TARGETS = 4, 24, 6, 8
IMPLS = ("custom_vjp", "xla")


def _model(dtype, *, impl="custom_vjp", dropout=0.0):
  hook = hooks.PromptHook(provider=providers.Prompt(length=PROMPT))
  config = CFG.replace(dtype=dtype, dropout_rate=dropout, attention_impl=impl, mlp_impl=impl)
  return EncoderDecoderModel(EncoderDecoder(config=config, input_hook=hook))


@pytest.fixture(scope="module")
def params():
  variables = _model("float32").get_initial_variables(
      jax.random.PRNGKey(0), batch_size=1, encoder_length=INPUTS, decoder_length=TARGETS)
  return nn.meta.unbox(variables["params"])


@pytest.fixture(scope="module")
def batch():
  """Inputs and targets the prompt can partly learn: targets copy the first input tokens."""
  rng = np.random.default_rng(0)
  inputs = rng.integers(2, CFG.vocab_size, (BATCH, INPUTS), dtype=np.int32)
  targets = inputs[:, :TARGETS].copy()
  return {
      "encoder_input_tokens": jnp.asarray(inputs),
      "decoder_input_tokens": jnp.asarray(
          np.concatenate([np.zeros((BATCH, 1), np.int32), targets[:, :-1]], axis=1)),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_loss_weights": jnp.ones((BATCH, TARGETS), jnp.float32),
  }


def _relative_error(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_forward_and_prompt_gradient_match_float32(params, batch, impl):
  """Logits within 3% of their largest magnitude; loss within 1%; prompt gradient cosine > 0.99."""
  results = {}
  for dtype in ("float32", "bfloat16"):
    model = _model(dtype, impl=impl)
    logits = jax.jit(lambda p, b, m=model: m.module.apply(
        {"params": p}, b["encoder_input_tokens"], b["decoder_input_tokens"]))(params, batch)
    loss_and_grad = jax.jit(jax.value_and_grad(
        lambda p, b, m=model: m.loss_fn(p, b, None)[0]))
    loss, grads = loss_and_grad(params, batch)
    results[dtype] = (logits, loss, grads["input_hook"]["prompt"])
  (logits32, loss32, grad32), (logits16, loss16, grad16) = results["float32"], results["bfloat16"]
  assert logits16.dtype == jnp.float32  # logits keep the float32 accumulator
  assert _relative_error(logits16, logits32) < 0.03
  assert abs(float(loss16) - float(loss32)) < 0.01 * float(loss32)
  g16, g32 = np.asarray(grad16, np.float32).ravel(), np.asarray(grad32, np.float32).ravel()
  cosine = float(g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32)))
  assert cosine > 0.99
  assert np.linalg.norm(g16) == pytest.approx(np.linalg.norm(g32), rel=0.05)


def _losses(dtype, params, batch, steps):
  model = _model(dtype)
  optimizer = optimizers.adafactor()
  trainable, frozen = train_state.split_params(params=params, patterns=train_state.PROMPT_ONLY)
  state = train_state.create_train_state(trainable_params=jax.tree.map(jnp.copy, trainable),
                                         optimizer=optimizer, rng=jax.random.PRNGKey(1))
  step = jax.jit(train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer))
  losses = []
  for _ in range(steps):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses)


def test_bfloat16_and_float32_loss_curves_agree_over_100_steps(params, batch):
  """Prompt tuning for 100 steps: every step's loss within 2% of the float32 run's, both fall."""
  curve32 = _losses("float32", params, batch, 100)
  curve16 = _losses("bfloat16", params, batch, 100)
  assert curve32[-1] < 0.9 * curve32[0]  # the prompt does learn something
  assert curve16[-1] < 0.9 * curve16[0]
  np.testing.assert_allclose(curve16, curve32, rtol=0.02)


def test_frozen_compute_dtype_copies_give_the_same_bfloat16_step(params, batch):
  """bf16 copies of frozen kernels and embeddings, made once: the same loss and prompt gradient,
  bit for bit; norm scales and the position-bias table stay float32."""
  model = _model("bfloat16")
  trainable, frozen = train_state.split_params(params=params, patterns=train_state.PROMPT_ONLY)
  copies = layers.compute_dtype_copies(frozen, jnp.bfloat16)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(copies)}
  assert flat["['encoder']['layers_0']['attention']['query']['kernel']"].dtype == jnp.bfloat16
  assert flat["['token_embedder']['embedding']"].dtype == jnp.bfloat16
  assert flat["['encoder']['layers_0']['pre_mlp_layer_norm']['scale']"].dtype == jnp.float32
  assert flat["['encoder']['relpos_bias']['rel_embedding']"].dtype == jnp.float32

  loss_and_grad = jax.jit(jax.value_and_grad(
      lambda t, f: model.loss_fn(train_state.merge_params(trainable=t, frozen=f), batch,
                                 None)[0]))
  loss, grad = loss_and_grad(trainable, frozen)
  loss_c, grad_c = loss_and_grad(trainable, copies)
  assert float(loss_c) == float(loss)
  np.testing.assert_array_equal(np.asarray(grad_c["input_hook"]["prompt"]),
                                np.asarray(grad["input_hook"]["prompt"]))


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (\w+)\[([\d,]*)\]\{[^}]*\} (\S+)\(")


def _entry_buffers(compiled_text):
  """Counts the arrays the compiled program's top level materialises, by (dtype, shape)."""
  entry = compiled_text[compiled_text.index("\nENTRY"):]
  entry = entry[:entry.index("\n}")]
  counts = collections.Counter()
  for line in entry.splitlines():
    match = _INSTRUCTION.match(line)
    if match and match.group(3) not in ("parameter", "bitcast", "constant"):
      dims = tuple(int(d) for d in match.group(2).split(",") if d)
      counts[(match.group(1), dims)] += 1
  return counts


@pytest.mark.parametrize("dtype, bytes_per_entry", [
    ("float32", 3.0), pytest.param("bfloat16", 5.0, marks=pytest.mark.slow)])
def test_attention_dropout_adds_no_4_byte_array_per_mask_entry(params, batch, dtype,
                                                               bytes_per_entry):
  """Dropout's extra temporaries, per entry of all attention masks, stay under a bound.

  A float32 keep-mask, or the 32 random bits per entry it is drawn from, alone costs 4 bytes an
  entry (the float32 masks drawn with `nn.Dropout` measured 8.4 bytes in float32 and 8.2 in
  bfloat16 here); 8 random bits an entry measured 2.7 and 4.5. No float32 or 32-bit integer
  `[b, h, q, k]` array may appear that the dropout-free step does not have.
  """
  enc, dec = PROMPT + INPUTS, TARGETS
  entries = BATCH * CFG.num_heads * (CFG.num_encoder_layers * enc * enc
                                     + CFG.num_decoder_layers * (dec * dec + dec * enc))
  shape = (BATCH, CFG.num_heads, enc, enc)
  buffers, temp = {}, {}
  for dropout in (0.0, 0.1):
    model = _model(dtype, dropout=dropout)
    trainable, frozen = train_state.split_params(params=params)
    optimizer = optimizers.adafactor()
    state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer,
                                           rng=jax.random.PRNGKey(1))
    step = train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer)
    compiled = jax.jit(step).lower(state, frozen, batch).compile()
    buffers[dropout] = _entry_buffers(compiled.as_text())
    temp[dropout] = compiled.memory_analysis().temp_size_in_bytes
  for wide in ("f32", "u32", "s32"):
    assert buffers[0.1][(wide, shape)] <= buffers[0.0][(wide, shape)], wide
  assert 0 < temp[0.1] - temp[0.0] < bytes_per_entry * entries
