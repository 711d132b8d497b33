"""Prompts inside the real (tiny) models: gradients, mixed batches, equivalence, padding.

Compiling a model dominates these tests on small CPUs, so each (model, input shape) is compiled
once and shared: jitted functions are cached per model variant, and parameters are random values
of the models' shapes (`jax.eval_shape`), never the compiled initializers.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models.config import get_config
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts import hooks
from prompt_tuning.prompts import providers

RNG = jax.random.PRNGKey(0)
T5_TINY = get_config("t5_1_1_tiny")
PROMPT_LENGTH = 3
NUM_PROMPTS = 3

# Right-padded encoder inputs (1 = EOS) and decoder inputs (0 = start).
ENCODER_TOKENS = np.array([[37, 5, 99, 12, 1], [8, 300, 1, 0, 0], [4, 1, 0, 0, 0]])
DECODER_TOKENS = np.array([[0, 17, 3], [0, 9, 1], [0, 250, 6]])
TARGETS = np.array([[17, 3, 1], [9, 1, 0], [250, 6, 1]])


def _random_params(model, *args, seed=0, **kwargs):
  """Random parameters with the model's shapes (fan-in scaled kernels, norm scales near 1)."""
  shapes = nn.meta.unbox(jax.eval_shape(model.init, RNG, *args, **kwargs))["params"]
  rng = np.random.RandomState(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['scale']"):
      value = 1.0 + 0.1 * rng.randn(*leaf.shape)
    elif name.endswith("['kernel']"):
      value = rng.randn(*leaf.shape) / np.sqrt(leaf.shape[0])
    else:  # embeddings, position tables, prompts
      value = rng.randn(*leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


# ------------------------------------------------------------------ encoder-decoder


def _encode_decode(module, tokens, decoder_tokens, embeddings, mask, hook_inputs):
  encoded, encoder_mask = module.encode(tokens, encoder_input_embeddings=embeddings,
                                        encoder_mask=mask, hook_inputs=hook_inputs)
  return encoded, encoder_mask, module.decode(encoded, encoder_mask, decoder_tokens)


@functools.lru_cache(maxsize=None)
def _t5(provider_kind=None, prompt_attends_input=True):
  """(params, jitted run(params, tokens, decoder_tokens, embeddings, mask, hook_inputs))."""
  if provider_kind is None:
    hook = None
  else:
    provider = (providers.Prompt(length=PROMPT_LENGTH) if provider_kind == "prompt" else
                providers.PromptTable(num_prompts=NUM_PROMPTS, length=PROMPT_LENGTH))
    hook = hooks.PromptHook(provider=provider, prompt_attends_input=prompt_attends_input)
  model = EncoderDecoder(config=T5_TINY, input_hook=hook)
  hook_inputs = {"prompt_ids": np.zeros(3, np.int32)} if provider_kind == "table" else None
  params = _random_params(model, ENCODER_TOKENS, DECODER_TOKENS, hook_inputs=hook_inputs)

  def run(params, tokens, decoder_tokens, embeddings=None, mask=None, hook_inputs=None):
    return model.apply({"params": params}, tokens, decoder_tokens, embeddings, mask, hook_inputs,
                       method=_encode_decode)

  return model, params, jax.jit(run)


@pytest.mark.slow
def test_gradient_is_taken_over_the_prompt_alone():
  model, params, _ = _t5("prompt")
  frozen = {name: value for name, value in params.items() if name != "input_hook"}
  prompt_params = params["input_hook"]
  assert jax.tree_util.tree_map(np.shape, prompt_params) == {"prompt": (PROMPT_LENGTH, 4)}

  def loss(trainable):
    logits = model.apply({"params": {**frozen, "input_hook": trainable}}, ENCODER_TOKENS,
                         DECODER_TOKENS)
    log_probs = jax.nn.log_softmax(logits)
    token_loss = -jnp.take_along_axis(log_probs, TARGETS[..., None], axis=-1)[..., 0]
    return jnp.sum(token_loss * (TARGETS > 0))

  grad_fn = jax.grad(loss)
  # The differentiated function takes and returns only the prompt; frozen weights are constants.
  jaxpr = jax.make_jaxpr(grad_fn)(prompt_params)
  assert [v.aval.shape for v in jaxpr.jaxpr.invars] == [(PROMPT_LENGTH, 4)]
  assert [v.aval.shape for v in jaxpr.jaxpr.outvars] == [(PROMPT_LENGTH, 4)]
  grads = jax.jit(grad_fn)(prompt_params)
  assert jax.tree_util.tree_map(np.shape, grads) == {"prompt": (PROMPT_LENGTH, 4)}
  assert bool(jnp.all(jnp.isfinite(grads["prompt"])))
  assert float(jnp.min(jnp.abs(grads["prompt"]).sum(axis=1))) > 0  # every prompt row matters


@pytest.mark.slow
def test_mixed_prompt_batch_matches_single_prompt_batches():
  _, params, run = _t5("table")
  assert params["input_hook"]["prompt_table"].shape == (NUM_PROMPTS, PROMPT_LENGTH, 4)
  logits = lambda ids: run(params, ENCODER_TOKENS, DECODER_TOKENS,
                           hook_inputs={"prompt_ids": np.asarray(ids, np.int32)})[2]
  mixed = logits([0, 1, 2])
  singles = [logits([k] * 3) for k in range(NUM_PROMPTS)]
  for b in range(3):
    assert _max_diff(mixed[b], singles[b][b]) < 1e-5
  # The prompts really differ in effect, so the check above is not vacuous.
  assert _max_diff(singles[0][0], singles[1][0]) > 1e-3


def _manual_prefix(params):
  """concat(prompt, embedded tokens) and the extended mask, built by hand."""
  embedded = params["token_embedder"]["embedding"][ENCODER_TOKENS]
  prompt = jnp.broadcast_to(params["input_hook"]["prompt"], (3, PROMPT_LENGTH, 4))
  mask = np.concatenate([np.ones((3, PROMPT_LENGTH), np.int32),
                         (ENCODER_TOKENS > 0).astype(np.int32)], axis=1)
  return jnp.concatenate([prompt, embedded], axis=1), mask


@pytest.mark.slow
def test_prompted_encoder_equals_unhooked_encoder_on_concatenated_embeddings():
  _, params, run = _t5("prompt")
  _, _, run_plain = _t5(None)
  encoded, mask, logits = run(params, ENCODER_TOKENS, DECODER_TOKENS)
  embeddings, manual_mask = _manual_prefix(params)
  frozen = {name: value for name, value in params.items() if name != "input_hook"}
  manual_encoded, _, manual_logits = run_plain(frozen, None, DECODER_TOKENS, embeddings,
                                               manual_mask)
  np.testing.assert_array_equal(np.asarray(mask), manual_mask)
  assert encoded.shape == (3, 5 + PROMPT_LENGTH, 4)
  assert _max_diff(encoded, manual_encoded) < 1e-6
  assert _max_diff(logits, manual_logits) < 1e-5


@pytest.mark.slow
def test_prompt_that_may_not_attend_input_ignores_the_input():
  _, params, run_private = _t5("prompt", prompt_attends_input=False)
  _, _, run_open = _t5("prompt")
  other_tokens = ENCODER_TOKENS.copy()
  other_tokens[:, 0] = [400, 401, 402]
  for run, prompt_changes in [(run_private, False), (run_open, True)]:
    encoded = run(params, ENCODER_TOKENS, DECODER_TOKENS)[0]
    other = run(params, other_tokens, DECODER_TOKENS)[0]
    prompt_diff = _max_diff(encoded[:, :PROMPT_LENGTH], other[:, :PROMPT_LENGTH])
    assert (prompt_diff > 1e-4) if prompt_changes else (prompt_diff == 0.0)
    assert _max_diff(encoded[:, PROMPT_LENGTH:], other[:, PROMPT_LENGTH:]) > 1e-4


@pytest.mark.slow
def test_t5_logits_do_not_depend_on_batch_padding():
  _, params, run = _t5("prompt")
  batched = run(params, ENCODER_TOKENS, DECODER_TOKENS)[2]
  # Example 2 without any padding, and batched with (only) the longest example.
  alone = run(params, ENCODER_TOKENS[2:3, :2], DECODER_TOKENS[2:3])[2]
  with_longer = run(params, ENCODER_TOKENS[[0, 2]], DECODER_TOKENS[[0, 2]])[2]
  assert _max_diff(batched[2], alone[0]) < 1e-5
  assert _max_diff(with_longer[1], alone[0]) < 1e-5


# ------------------------------------------------------------------ decoder-only

LM_TOKENS = np.array([[5, 77, 13, 40, 1], [9, 310, 1, 0, 0], [21, 1, 0, 0, 0]])
LM_MASK = (LM_TOKENS > 0).astype(np.int32)
LM_LENGTHS = [5, 3, 2]


@functools.lru_cache(maxsize=None)
def _lm(placement=None, position_embedding="relative"):
  """(params, jitted run(params, tokens, embeddings, mask) -> LMOutput)."""
  config = get_config("decoder_only_tiny", position_embedding=position_embedding, max_length=16)
  hook = None
  if placement is not None:
    hook = hooks.PromptHook(provider=providers.Prompt(length=PROMPT_LENGTH), placement=placement)
  model = DecoderOnly(config=config, input_hook=hook)
  params = _random_params(model, LM_TOKENS, decoder_mask=LM_MASK)

  def run(params, tokens, embeddings=None, mask=None):
    return model.apply({"params": params}, tokens, decoder_input_embeddings=embeddings,
                       decoder_mask=mask)

  return params, jax.jit(run)


def _manual_lm_layout(embedded, prompt, placement):
  """Per example: real tokens with the prompt at its place, then padding (built by hand)."""
  rows, masks = [], []
  for b, n in enumerate(LM_LENGTHS):
    k = {"prefix": 0, "suffix": n}[placement]
    rows.append(jnp.concatenate([embedded[b, :k], prompt, embedded[b, k:]], 0))
    masks.append([1] * (n + PROMPT_LENGTH) + [0] * (5 - n))
  return jnp.stack(rows), np.array(masks, np.int32)


@pytest.mark.slow
@pytest.mark.parametrize("placement, position_embedding", [
    ("prefix", "relative"), ("suffix", "relative"), ("suffix", "learned")])
def test_prompted_lm_equals_unhooked_lm_on_manual_layout(placement, position_embedding):
  params, run = _lm(placement, position_embedding)
  _, run_plain = _lm(None, position_embedding)
  out = run(params, LM_TOKENS, mask=LM_MASK)
  embedded = params["token_embedder"]["embedding"][LM_TOKENS]
  embeddings, mask = _manual_lm_layout(embedded, params["input_hook"]["prompt"], placement)
  frozen = {name: value for name, value in params.items() if name != "input_hook"}
  manual = run_plain(frozen, None, embeddings, mask)
  np.testing.assert_array_equal(np.asarray(out.inputs.mask), mask)
  real = mask.astype(bool)
  assert _max_diff(np.asarray(out.logits)[real], np.asarray(manual.logits)[real]) < 1e-5
  # input_index lets a loss realign targets: real slots map back to their token positions.
  index = np.asarray(out.inputs.input_index)
  for b, n in enumerate(LM_LENGTHS):
    assert [i for i in index[b][: n + PROMPT_LENGTH] if i >= 0] == list(range(n))


@pytest.mark.slow
def test_lm_logits_do_not_depend_on_batch_padding():
  params, run = _lm("suffix")
  batched = run(params, LM_TOKENS, mask=LM_MASK).logits
  alone = run(params, LM_TOKENS[2:3, :2], mask=LM_MASK[2:3, :2]).logits  # example 2, unpadded
  real = LM_LENGTHS[2] + PROMPT_LENGTH
  assert _max_diff(batched[2, :real], alone[0, :real]) < 1e-5
