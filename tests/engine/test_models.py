"""Specification of the model wrappers in `prompt_tuning.engine.models` on tiny real models.

Losses are checked against numpy on the module's own logits; cached prediction is checked
against searches that re-run the whole uncached model on the history at every step.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.engine import decoding
from prompt_tuning.engine import models
from prompt_tuning.models import DecoderOnly, EncoderDecoder, get_config
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt, PromptTable

VOCAB = 32
EOS = 1
ENC_BATCH = {
    "encoder_input_tokens": np.array([[5, 6, 7, 1, 0], [8, 9, 1, 0, 0]]),
    "decoder_input_tokens": np.array([[0, 3, 4, 5, 1, 0], [0, 6, 7, 1, 0, 0]]),
    "decoder_target_tokens": np.array([[3, 4, 5, 1, 0, 0], [6, 7, 1, 0, 0, 0]]),
    "decoder_loss_weights": np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]),
}
# Prefix-LM layout: [start, inputs..., targets...]; causal attention covers start + inputs.
LM_BATCH = {
    "decoder_input_tokens": np.array([[0, 3, 4, 5, 9, 8, 0], [0, 6, 7, 2, 1, 0, 0]]),
    "decoder_target_tokens": np.array([[3, 4, 5, 9, 8, 1, 0], [6, 7, 2, 1, 0, 0, 0]]),
    "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0]]),
    "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]),
}


def t5_config(**overrides):
  return get_config("t5_1_1_tiny", vocab_size=VOCAB, emb_dim=8, num_heads=2, head_dim=4,
                    mlp_dim=16, num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8,
                    relative_attention_max_distance=16, **overrides)


def lm_config(**overrides):
  return get_config("decoder_only_tiny", vocab_size=VOCAB, emb_dim=16, num_heads=2,
                    head_dim=8, mlp_dim=32, num_decoder_layers=1, **overrides)


HOOKS = {
    "plain": lambda: None,
    "prompt2": lambda: PromptHook(Prompt(length=2)),
    "prompt3": lambda: PromptHook(Prompt(length=3)),
    "table": lambda: PromptHook(PromptTable(num_prompts=2, length=3)),
}


def random_params(model, seed, **shapes):
  """Random parameters drawn in numpy from the model's parameter shapes.

  Tracing `init` for its shapes and filling them here avoids compiling the initializers,
  which costs more than the tests themselves on a busy 2-core machine.
  """
  abstract = jax.eval_shape(
      functools.partial(model.get_initial_variables, **shapes), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == "scale":
      return np.ones(leaf.shape, np.float32)
    if name in ("prompt", "prompt_table"):
      return rng.uniform(-0.5, 0.5, leaf.shape).astype(np.float32)
    if name in ("embedding", "rel_embedding"):
      return rng.normal(size=leaf.shape).astype(np.float32)
    return (rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])).astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, nn.meta.unbox(abstract["params"]))


# The tests compile many tiny programs; XLA's backend optimisations cost more than they save.
fast_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                               "xla_llvm_disable_expensive_passes": True})


def fast_key(seed):
  """A PRNG key whose random bits compile in seconds on CPU (threefry takes about a minute)."""
  return jax.random.key(seed, impl="rbg")


class Compiled:
  """A wrapper with its parameters and jitted entry points, built once per configuration."""

  def __init__(self, model, params):
    self.model, self.params = model, params
    self.loss = fast_jit(model.loss_fn)
    self.score = fast_jit(model.score_batch)
    self.apply = fast_jit(model.module.apply)


# Seeds whose random models decode varied sequences (and, with prompt2, an EOS mid-way).
T5_SEEDS = {"plain": 1, "prompt2": 3, "table": 1}


@functools.lru_cache(maxsize=None)
def encoder_decoder(hook="plain", dropout_rate=0.0, **kwargs):
  module = EncoderDecoder(t5_config(dropout_rate=dropout_rate), input_hook=HOOKS[hook]())
  model = models.EncoderDecoderModel(module, **kwargs)
  return Compiled(model, random_params(
      model, T5_SEEDS[hook], batch_size=2, encoder_length=5, decoder_length=6))


@functools.lru_cache(maxsize=None)
def decoder_only(hook="plain", **kwargs):
  model = models.DecoderOnlyModel(DecoderOnly(lm_config(), input_hook=HOOKS[hook]()), **kwargs)
  return Compiled(model, random_params(model, 2, batch_size=2, decoder_length=7))


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_target_log_probs(logits, targets):
  return np.take_along_axis(np_log_softmax(logits), np.asarray(targets)[..., None], -1)[..., 0]


def t5_logits(compiled, batch):
  return np.asarray(compiled.apply({"params": compiled.params}, batch["encoder_input_tokens"],
                                   batch["decoder_input_tokens"]))


def loss_with(logits, batch, **settings):
  """`models.weighted_loss` on given logits (the loss settings without recompiling a model)."""
  settings = {"label_smoothing": 0.0, "z_loss": 0.0, "loss_normalizing_factor": None,
              **settings}
  return models.weighted_loss(jnp.asarray(logits), batch["decoder_target_tokens"],
                              batch["decoder_loss_weights"], **settings)


# ----------------------------------------------------------------------------------------
# Losses and scores


@pytest.mark.slow
def test_loss_fn_is_the_mean_cross_entropy_plus_z_loss_over_weighted_tokens():
  t5 = encoder_decoder(z_loss=1e-2)
  loss, metrics = t5.loss(t5.params, ENC_BATCH, None)
  logits = t5_logits(t5, ENC_BATCH)
  weights = ENC_BATCH["decoder_loss_weights"]
  token_nll = -np_target_log_probs(logits, ENC_BATCH["decoder_target_tokens"])
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  np.testing.assert_allclose(metrics["cross_ent_loss"], (token_nll * weights).sum() / 7,
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["z_loss"], 1e-2 * (log_z ** 2 * weights).sum() / 7,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["cross_ent_loss"] + metrics["z_loss"], rtol=1e-6)
  assert int(metrics["num_tokens"]) == 7
  hits = (logits.argmax(-1) == ENC_BATCH["decoder_target_tokens"]) & (weights > 0)
  np.testing.assert_allclose(metrics["accuracy"], hits.sum() / 7, rtol=1e-6)


@pytest.mark.slow
def test_z_loss_adds_its_coefficient_times_the_squared_log_normaliser():
  logits = t5_logits(encoder_decoder(), ENC_BATCH)
  base, _ = loss_with(logits, ENC_BATCH)
  loss, metrics = loss_with(logits, ENC_BATCH, z_loss=0.1)
  log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  expected_z = 0.1 * (log_z ** 2 * ENC_BATCH["decoder_loss_weights"]).sum() / 7
  np.testing.assert_allclose(loss - base, expected_z, rtol=1e-4)
  np.testing.assert_allclose(metrics["z_loss"], expected_z, rtol=1e-5)
  np.testing.assert_allclose(metrics["cross_ent_loss"], base, rtol=1e-5)


@pytest.mark.slow
def test_label_smoothing_on_a_hand_computed_case():
  # Uniform logits over 3 tokens, smoothing 0.3: q = [0.7, 0.15, 0.15], loss = KL(q || 1/3).
  uniform = jnp.zeros((1, 1, 3))
  target = jnp.zeros((1, 1), jnp.int32)
  loss, _ = models.cross_entropy_with_z_loss(uniform, target, label_smoothing=0.3, z_loss=0.0)
  expected = 0.7 * np.log(0.7 * 3) + 2 * 0.15 * np.log(0.15 * 3)
  np.testing.assert_allclose(loss[0, 0], expected, rtol=1e-5)  # 0.2798
  plain, _ = models.cross_entropy_with_z_loss(uniform, target, label_smoothing=0.0, z_loss=0.0)
  np.testing.assert_allclose(plain[0, 0], np.log(3), rtol=1e-6)
  # Predicting exactly the smoothed distribution costs nothing.
  matched = jnp.log(jnp.array([[[0.7, 0.15, 0.15]]]))
  zero, _ = models.cross_entropy_with_z_loss(matched, target, label_smoothing=0.3, z_loss=0.0)
  assert abs(float(zero[0, 0])) < 1e-6


def test_label_smoothing_turns_the_model_loss_into_kl_from_the_smoothed_targets():
  logits = t5_logits(encoder_decoder(), ENC_BATCH)
  loss, _ = loss_with(logits, ENC_BATCH, label_smoothing=0.1)
  log_probs = np_log_softmax(logits)
  q = np.full(log_probs.shape, 0.1 / (VOCAB - 1))
  np.put_along_axis(q, ENC_BATCH["decoder_target_tokens"][..., None], 0.9, -1)
  kl = (q * (np.log(q) - log_probs)).sum(-1)
  np.testing.assert_allclose(loss, (kl * ENC_BATCH["decoder_loss_weights"]).sum() / 7, rtol=1e-4)


def test_a_constant_loss_normalizing_factor_divides_the_summed_loss():
  logits = t5_logits(encoder_decoder(), ENC_BATCH)
  mean, _ = loss_with(logits, ENC_BATCH)
  by_name, _ = loss_with(logits, ENC_BATCH, loss_normalizing_factor="NUM_REAL_TARGET_TOKENS")
  summed, _ = loss_with(logits, ENC_BATCH, loss_normalizing_factor=2.0)
  np.testing.assert_allclose(summed, mean * 7 / 2.0, rtol=1e-5)
  np.testing.assert_allclose(by_name, mean, rtol=1e-6)


@pytest.mark.parametrize("setting", [{"loss_normalizing_factor": "PER_SEQUENCE"},
                                     {"loss_normalizing_factor": -1.0},
                                     {"label_smoothing": 1.0}])
def test_bad_loss_settings_are_rejected(setting):
  with pytest.raises(ValueError, match=next(iter(setting))):
    models.EncoderDecoderModel(EncoderDecoder(t5_config()), **setting)


@pytest.mark.slow
def test_dropout_is_on_exactly_when_a_dropout_rng_is_given():
  t5 = encoder_decoder(dropout_rate=0.5)
  a, _ = t5.loss(t5.params, ENC_BATCH, None)
  b, _ = t5.loss(t5.params, ENC_BATCH, None)
  c, _ = t5.loss(t5.params, ENC_BATCH, fast_key(1))
  assert float(a) == float(b) and abs(float(a) - float(c)) > 1e-3


@pytest.mark.slow
def test_score_batch_sums_weighted_target_log_probs():
  t5 = encoder_decoder()
  token = np_target_log_probs(t5_logits(t5, ENC_BATCH), ENC_BATCH["decoder_target_tokens"])
  np.testing.assert_allclose(t5.score(t5.params, ENC_BATCH),
                             (token * ENC_BATCH["decoder_loss_weights"]).sum(-1), rtol=1e-5)


@pytest.mark.slow
def test_hook_inputs_are_routed_from_the_batch():
  t5 = encoder_decoder(hook="table")
  first = t5.score(t5.params, dict(ENC_BATCH, prompt_ids=np.array([0, 0])))
  second = t5.score(t5.params, dict(ENC_BATCH, prompt_ids=np.array([1, 1])))
  mixed = t5.score(t5.params, dict(ENC_BATCH, prompt_ids=np.array([0, 1])))
  assert np.abs(np.asarray(first - second)).min() > 1e-4
  np.testing.assert_allclose(mixed, [first[0], second[1]], rtol=1e-5)
  with pytest.raises(ValueError, match="prompt_ids"):
    t5.model.score_batch(t5.params, ENC_BATCH)


def test_missing_batch_features_are_named():
  t5 = encoder_decoder()
  batch = {k: v for k, v in ENC_BATCH.items() if k != "decoder_loss_weights"}
  with pytest.raises(ValueError, match="decoder_loss_weights"):
    t5.model.loss_fn(t5.params, batch, None)


@pytest.mark.slow
def test_rank_classification_picks_each_examples_best_scoring_choice():
  t5 = encoder_decoder()
  # Two examples x three two-token answers, plus a padding row with no weight. Padded to the
  # shapes of ENC_BATCH so the compiled passes are reused.
  choices = np.array([[3, 1], [4, 1], [5, 1]])
  rows = [(e, c) for e in range(2) for c in range(3)]
  enc = ENC_BATCH["encoder_input_tokens"]
  targets = np.zeros((7, 6), np.int32)
  targets[:6, :2] = [choices[c] for _, c in rows]
  batch = {
      "encoder_input_tokens": np.array([enc[e] for e, _ in rows] + [enc[0]]),
      "decoder_target_tokens": targets,
      "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
      "decoder_loss_weights": (targets > 0).astype(np.int32),
      "idx": np.array(rows + [(0, 2)]),
  }
  winners, scores = fast_jit(functools.partial(t5.model.rank_classification, num_examples=3))(
      t5.params, batch)
  manual = (np_target_log_probs(t5_logits(t5, batch), targets)
            * batch["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(scores, manual, rtol=1e-5)
  expected = [int(np.argmax(manual[0:3])), int(np.argmax(manual[3:6]))]
  np.testing.assert_array_equal(winners, expected + [-1])  # example 2 has no rows
  assert scores[6] == 0.0  # the padding row would win example 0 if it were counted


@pytest.mark.slow
def test_decoder_only_loss_realigns_targets_around_an_inserted_prompt():
  lm = decoder_only(hook="prompt3", z_loss=0.0)
  loss, metrics = lm.loss(lm.params, LM_BATCH, None)
  out = lm.apply({"params": lm.params}, LM_BATCH["decoder_input_tokens"],
                 decoder_mask=LM_BATCH["decoder_target_tokens"] > 0)
  assert out.logits.shape[1] == 7 + 3
  token_nll = -np_target_log_probs(out.logits[:, 3:], LM_BATCH["decoder_target_tokens"])
  weights = LM_BATCH["decoder_loss_weights"]
  np.testing.assert_allclose(loss, (token_nll * weights).sum() / weights.sum(), rtol=1e-5)
  assert int(metrics["num_tokens"]) == 6


@pytest.mark.slow
def test_decoder_only_prefix_lm_passes_the_causal_attention_as_prefix():
  causal = decoder_only()
  prefix_lm = decoder_only(inputs_bidirectional_attention=True)
  params = causal.params
  # Weigh every target, prefix included: inside the prefix, bidirectional attention differs.
  batch = dict(LM_BATCH, decoder_loss_weights=(LM_BATCH["decoder_target_tokens"] > 0) * 1)
  out = causal.apply({"params": params}, batch["decoder_input_tokens"],
                     decoder_mask=batch["decoder_target_tokens"] > 0,
                     decoder_causal_attention=batch["decoder_causal_attention"])
  expected = (np_target_log_probs(out.logits, batch["decoder_target_tokens"])
              * batch["decoder_loss_weights"]).sum(-1)
  np.testing.assert_allclose(prefix_lm.score(params, batch), expected, rtol=1e-5)
  assert np.abs(np.asarray(causal.score(params, batch)) - expected).min() > 1e-4


# ----------------------------------------------------------------------------------------
# Prediction


def test_decoder_params_are_validated():
  with pytest.raises(ValueError, match="method"):
    models.DecoderParams.create({"method": "nucleus"})
  with pytest.raises(ValueError, match="unknown keys"):
    models.DecoderParams.create({"beam_size": 4})
  with pytest.raises(ValueError, match="num_decodes"):
    models.DecoderParams.create({"method": "greedy", "num_decodes": 2})


def test_sampling_without_an_rng_is_rejected():
  t5 = encoder_decoder()
  with pytest.raises(ValueError, match="rng"):
    t5.model.predict_batch(t5.params, ENC_BATCH, decoder_params={"method": "sample"})


def uncached_greedy_t5(compiled, encoder_tokens, steps, eos_id=EOS):
  """Re-runs the whole decoder on the history each step; pads with 0 after EOS.

  The history buffer has a fixed width (zeros after step t) so one compiled pass serves every
  step; causal attention keeps the zeros from reaching position t.
  """
  batch = encoder_tokens.shape[0]
  history = np.zeros((batch, steps), np.int32)
  ended = np.zeros(batch, bool)
  decoded = np.zeros((batch, steps), np.int32)
  for t in range(steps):
    logits = compiled.apply({"params": compiled.params}, encoder_tokens, history)
    token = np.where(ended, 0, np.asarray(logits[:, t]).argmax(-1))
    decoded[:, t] = token
    if t + 1 < steps:
      history[:, t + 1] = token
    ended |= token == eos_id
  return decoded


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["plain", "prompt2"])
def test_t5_greedy_with_the_kv_cache_equals_uncached_greedy(hook):
  t5 = encoder_decoder(hook=hook)
  predict = fast_jit(functools.partial(t5.model.predict_batch, max_decode_length=10))
  decoded = np.asarray(predict(t5.params, ENC_BATCH))
  expected = uncached_greedy_t5(t5, ENC_BATCH["encoder_input_tokens"], 10)
  np.testing.assert_array_equal(decoded, expected)
  assert len(set(decoded[0].tolist())) > 2  # a varied sequence, not one repeated token


def uncached_t5_step(compiled):
  """A `tokens_to_logits` that keeps only token history (and encoder tokens) in its cache."""

  def tokens_to_logits(state):
    cache = state.cache
    history = jax.lax.dynamic_update_slice_in_dim(
        cache["history"], state.cur_token, state.cur_index, axis=1)
    logits = compiled.model.module.apply({"params": compiled.params}, cache["encoder"], history)
    return (jax.lax.dynamic_index_in_dim(logits, state.cur_index, axis=1, keepdims=False),
            {"history": history, "encoder": cache["encoder"]})

  return tokens_to_logits


def uncached_t5_cache(length):
  return {"history": jnp.zeros((2, length), jnp.int32),
          "encoder": jnp.asarray(ENC_BATCH["encoder_input_tokens"])}


@pytest.mark.slow
def test_t5_beam_search_with_a_gathered_kv_cache_equals_uncached_beam_search():
  t5 = encoder_decoder()
  length, beams = 6, 3
  decodes, scores = fast_jit(lambda p, b: t5.model.predict_batch_with_scores(
      p, b, decoder_params={"method": "beam", "num_decodes": beams, "alpha": 0.6},
      max_decode_length=length))(t5.params, ENC_BATCH)
  expected, expected_scores = fast_jit(lambda: decoding.beam_search(
      jnp.zeros((2, length), jnp.int32), uncached_t5_cache(length), uncached_t5_step(t5),
      eos_id=EOS, num_decodes=beams, alpha=0.6))()
  np.testing.assert_array_equal(decodes, expected)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)
  assert decodes.shape == (2, beams, length)


@pytest.mark.slow
def test_t5_sampling_with_the_cache_equals_uncached_sampling_and_is_sorted():
  t5 = encoder_decoder()
  length, samples, rng = 5, 4, fast_key(7)
  decoder_params = {"method": "sample", "num_decodes": samples, "topk": 8}
  decodes, scores = fast_jit(lambda p, b, r: t5.model.predict_batch_with_scores(
      p, b, decoder_params=decoder_params, rng=r, max_decode_length=length))(
          t5.params, ENC_BATCH, rng)
  raw, raw_scores = fast_jit(lambda: decoding.temperature_sample(
      jnp.zeros((2, length), jnp.int32), uncached_t5_cache(length), uncached_t5_step(t5),
      eos_id=EOS, rng=rng, num_decodes=samples, topk=8))()
  order = np.argsort(-np.asarray(raw_scores), axis=1, kind="stable")
  np.testing.assert_array_equal(decodes, np.take_along_axis(np.asarray(raw), order[..., None], 1))
  np.testing.assert_allclose(scores, np.take_along_axis(np.asarray(raw_scores), order, 1),
                             rtol=1e-5)
  assert len({tuple(d) for d in np.asarray(decodes[0]).tolist()}) > 1  # samples differ


@pytest.mark.slow
def test_t5_beam_of_one_without_length_penalty_equals_greedy():
  # Beam 1 keeps a complete runner-up (an EOS that was not the argmax) when it outscores the
  # greedy path, so compare with EOS unreachable: both follow the argmax chain.
  t5 = encoder_decoder(eos_id=VOCAB)
  decoded = fast_jit(lambda p, b: t5.model.predict_batch(
      p, b, decoder_params={"method": "beam", "num_decodes": 1, "alpha": 0.0},
      max_decode_length=10))(t5.params, ENC_BATCH)
  expected = uncached_greedy_t5(encoder_decoder(), ENC_BATCH["encoder_input_tokens"], 10,
                                eos_id=VOCAB)
  np.testing.assert_array_equal(decoded, expected)


def uncached_greedy_lm(compiled, batch, steps, prefix_lm):
  """Greedy continuation of each prompt by full passes over the prompt plus what came out.

  Sequences are left-aligned in a fixed-width buffer (one compiled pass for every step);
  causal attention keeps the zeros after the current length from reaching it.
  """
  results = []
  for b in range(batch["decoder_input_tokens"].shape[0]):
    prompt_length = int(batch["decoder_causal_attention"][b].sum())
    width = batch["decoder_input_tokens"].shape[1] + steps
    sequence = np.zeros((1, width), np.int32)
    sequence[0, :prompt_length] = batch["decoder_input_tokens"][b, :prompt_length]
    prefix = (np.arange(width) < prompt_length)[None].astype(np.int32)
    generated = []
    for t in range(steps):
      logits = compiled.apply({"params": compiled.params}, sequence,
                              decoder_causal_attention=prefix if prefix_lm else None).logits
      # A prefix prompt shifts every slot right by its length (logits are longer than width).
      slot = logits.shape[1] - width + prompt_length + t - 1
      token = int(np.asarray(logits[0, slot]).argmax())
      generated.append(token)
      if token == EOS:
        break
      sequence[0, prompt_length + t] = token
    results.append(generated + [0] * (steps - len(generated)))
  return np.array(results)


@pytest.mark.slow
@pytest.mark.parametrize("hook, prefix_lm", [("plain", False), ("prompt3", True)],
                         ids=["causal", "prompted_prefix_lm"])
def test_decoder_only_greedy_with_prefill_equals_uncached_greedy(hook, prefix_lm):
  lm = decoder_only(hook=hook, inputs_bidirectional_attention=prefix_lm)
  decoded = np.asarray(fast_jit(functools.partial(lm.model.predict_batch, max_decode_length=10))(
      lm.params, LM_BATCH))
  expected = uncached_greedy_lm(lm, LM_BATCH, 10, prefix_lm)
  np.testing.assert_array_equal(decoded, expected)
  assert len(set(decoded[0].tolist())) > 2  # a varied sequence, not one repeated token


@pytest.mark.slow
def test_decoder_only_beam_search_equals_uncached_beam_search():
  lm = decoder_only()
  length, beams = 5, 3
  decodes, scores = fast_jit(lambda p, b: lm.model.predict_batch_with_scores(
      p, b, decoder_params={"method": "beam", "num_decodes": beams},
      max_decode_length=length))(lm.params, LM_BATCH)
  # Uncached: the history buffer holds each prompt left-aligned, then the generated tokens.
  prompt_lengths = LM_BATCH["decoder_causal_attention"].sum(1)
  width = LM_BATCH["decoder_input_tokens"].shape[1] + length

  def tokens_to_logits(state):
    cache = state.cache
    slots = jnp.arange(width)[None]
    write = (state.cur_index > 0) & (slots == cache["length"][:, None])
    history = jnp.where(write, state.cur_token, cache["history"])
    length_now = cache["length"] + (state.cur_index > 0)
    out = lm.model.module.apply({"params": lm.params}, history,
                                decoder_mask=(slots < length_now[:, None]).astype(jnp.int32))
    logits = jnp.take_along_axis(out.logits, (length_now - 1)[:, None, None], axis=1)[:, 0]
    return logits, {"history": history, "length": length_now}

  history = np.zeros((2, width), np.int32)
  history[:, :7] = LM_BATCH["decoder_input_tokens"] * LM_BATCH["decoder_causal_attention"]
  expected, expected_scores = fast_jit(lambda: decoding.beam_search(
      jnp.zeros((2, length), jnp.int32),
      {"history": jnp.asarray(history), "length": jnp.asarray(prompt_lengths, jnp.int32)},
      tokens_to_logits, eos_id=EOS, num_decodes=beams))()
  np.testing.assert_array_equal(decodes, expected)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_decoder_only_prediction_needs_the_prompt_marked():
  lm = decoder_only()
  batch = {k: v for k, v in LM_BATCH.items() if k != "decoder_causal_attention"}
  with pytest.raises(ValueError, match="decoder_causal_attention"):
    lm.model.predict_batch(lm.params, batch)
