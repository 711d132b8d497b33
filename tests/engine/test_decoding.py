"""Specification of the model-free searches in `prompt_tuning.engine.decoding`.

The toy model is a trigram lookup table whose previous token comes from a history buffer in
the cache, so any mistake in repeating or gathering the cache changes the logits and shows
up against the numpy references below. Its cache also has a per-example bias row (to tell
examples apart) and a 0-d shared index, like a real model's cache.
"""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.engine import decoding

EOS = 1


def toy_cache(bias, length):
  """A cache for `bias.shape[0]` examples holding up to `length + 1` positions."""
  bias = jnp.asarray(bias, jnp.float32)
  return {
      "index": jnp.zeros((), jnp.int32),
      "history": jnp.zeros((bias.shape[0], length + 1), jnp.int32),
      "bias": bias,
  }


def toy_tokens_to_logits(table):
  """logits(next) = table[previous token, current token] + bias; previous read from cache."""
  table = jnp.asarray(table, jnp.float32)

  def tokens_to_logits(state):
    cache = state.cache
    index = cache["index"]
    current = state.cur_token[:, 0]
    previous = jax.lax.dynamic_index_in_dim(
        cache["history"], jnp.maximum(index - 1, 0), axis=1, keepdims=False)
    previous = jnp.where(index > 0, previous, 0)
    history = jax.lax.dynamic_update_slice_in_dim(
        cache["history"], current[:, None], index, axis=1)
    logits = table[previous, current] + cache["bias"]
    return logits, {"index": index + 1, "history": history, "bias": cache["bias"]}

  return tokens_to_logits


# The tests compile many tiny programs; XLA's backend optimisations cost more than they save.
fast_jit = functools.partial(
    jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                               "xla_llvm_disable_expensive_passes": True})


def fast_key(seed):
  """A PRNG key whose random bits compile quickly on CPU (threefry compiles slowly)."""
  return jax.random.key(seed, impl="rbg")


def np_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def np_step_log_probs(table, bias_row, buffer):
  """Log-probs of the next token after buffer positions 0..t (buffer[0] is the start token)."""
  previous = buffer[-2] if len(buffer) >= 2 else 0
  return np_log_softmax(np.asarray(table)[previous, buffer[-1]] + np.asarray(bias_row))


def np_greedy(table, bias_row, length, prefix=()):
  """Argmax chain with forced `prefix`; returns (tokens padded to length, sum of log-probs)."""
  buffer, total = [0], 0.0
  for t in range(length):
    log_probs = np_step_log_probs(table, bias_row, buffer)
    if t < len(prefix):
      token = prefix[t]
    else:
      token = int(np.argmax(log_probs))
      total += log_probs[token]
    buffer.append(token)
    if token == EOS and t >= len(prefix):
      break
  tokens = buffer[1:] + [0] * (length + 1 - len(buffer))
  return np.array(tokens), total


def np_sequence_log_prob(table, bias_row, tokens, skip=0):
  buffer, total = [0], 0.0
  for t, token in enumerate(tokens):
    if t >= skip:
      total += np_step_log_probs(table, bias_row, buffer)[token]
    buffer.append(token)
  return total


def penalised(log_prob, length, alpha):
  return log_prob / ((5.0 + length) / 6.0) ** alpha


def random_problem(seed, batch, vocab, scale=2.0):
  rng = np.random.default_rng(seed)
  table = rng.normal(size=(vocab, vocab, vocab)) * scale
  bias = rng.normal(size=(batch, vocab))
  return table.astype(np.float32), bias.astype(np.float32)


def run_sample(inputs, cache, table, rng=None, **kwargs):
  """`temperature_sample` on the toy model, compiled as one program (much faster than eager)."""
  step = toy_tokens_to_logits(table)
  run = fast_jit(lambda inputs, cache, rng: decoding.temperature_sample(
      inputs, cache, step, eos_id=EOS, rng=rng, **kwargs))
  return run(jnp.asarray(inputs), cache, rng)


def sample(table, bias, length, **kwargs):
  return run_sample(
      jnp.zeros((bias.shape[0], length), jnp.int32), toy_cache(bias, length), table, **kwargs)


# ----------------------------------------------------------------------------------------
# temperature_sample


def test_greedy_follows_the_argmax_chain_and_sums_its_log_probs():
  table, bias = random_problem(0, batch=4, vocab=7)
  sequences, log_probs = sample(table, bias, 6, temperature=0.0)
  assert sequences.shape == (4, 1, 6) and log_probs.shape == (4, 1)
  for b in range(4):
    tokens, total = np_greedy(table, bias[b], 6)
    np.testing.assert_array_equal(sequences[b, 0], tokens)
    np.testing.assert_allclose(log_probs[b, 0], total, rtol=1e-5)


def test_very_low_temperature_equals_greedy():
  table, bias = random_problem(2, batch=5, vocab=6)
  greedy, _ = sample(table, bias, 5, temperature=0.0)
  cold, _ = sample(table, bias, 5, temperature=1e-4, num_decodes=8,
                   rng=fast_key(3))
  np.testing.assert_array_equal(cold, np.repeat(np.asarray(greedy), 8, axis=1))


def test_one_step_frequencies_match_the_tempered_softmax():
  table, bias = random_problem(4, batch=1, vocab=6, scale=0.5)
  n, temperature = 4000, 0.7
  sequences, log_probs = sample(table, bias, 3, temperature=temperature, num_decodes=n,
                                max_decode_steps=1, rng=fast_key(5))
  first = np.asarray(sequences[0, :, 0])
  assert np.all(np.asarray(sequences[0, :, 1:]) == 0)  # only one step was decoded
  logits = table[0, 0] + bias[0]
  expected = np.exp(np_log_softmax(logits / temperature))
  observed = np.bincount(first, minlength=6) / n
  np.testing.assert_allclose(observed, expected, atol=0.03)  # 4000 draws: sigma <= 0.008
  # The score is the model's (untempered) log-probability of the drawn token.
  np.testing.assert_allclose(log_probs[0], np_log_softmax(logits)[first], rtol=1e-5)


def test_topk_never_emits_a_token_outside_the_top_k():
  table, bias = random_problem(6, batch=2, vocab=10, scale=1.0)
  n = 500
  sequences, _ = sample(table, bias, 4, topk=3, num_decodes=n, rng=fast_key(7))
  sequences = np.asarray(sequences)
  checked = 0
  for b in range(2):
    for k in range(n):
      buffer = [0]
      for token in sequences[b, k]:
        log_probs = np_step_log_probs(table, bias[b], buffer)
        assert token in np.argsort(-log_probs)[:3], (b, k, buffer, token)
        checked += 1
        buffer.append(int(token))
        if token == EOS:
          break
  assert checked > 2 * n  # many multi-step checks, not just first tokens


def test_topk_first_step_frequencies_are_the_renormalised_top_k():
  table, bias = random_problem(8, batch=1, vocab=10, scale=0.5)
  n = 4000
  sequences, _ = sample(table, bias, 2, topk=3, num_decodes=n, max_decode_steps=1,
                        rng=fast_key(9))
  probs = np.exp(np_log_softmax(table[0, 0] + bias[0]))
  top3 = np.argsort(-probs)[:3]
  expected = np.zeros(10)
  expected[top3] = probs[top3] / probs[top3].sum()
  observed = np.bincount(np.asarray(sequences[0, :, 0]), minlength=10) / n
  np.testing.assert_allclose(observed, expected, atol=0.03)
  assert observed[np.setdiff1d(np.arange(10), top3)].sum() == 0


@pytest.mark.parametrize("topp, nucleus", [(0.75, [0, 1]), (0.85, [0, 1, 2])])
def test_topp_samples_only_the_nucleus_in_renormalised_proportion(topp, nucleus):
  probs = np.array([0.5, 0.3, 0.1, 0.06, 0.04])
  # Shuffle the vocabulary so the nucleus is not simply the lowest ids.
  order = np.array([3, 0, 4, 2, 1])
  bias = np.log(probs)[order][None, :].astype(np.float32)
  table = np.zeros((5, 5, 5), np.float32)
  n = 4000
  sequences, _ = sample(table, bias, 2, topp=topp, num_decodes=n, max_decode_steps=1,
                        rng=fast_key(11))
  observed = np.bincount(np.asarray(sequences[0, :, 0]), minlength=5) / n
  nucleus_ids = [int(np.where(order == i)[0][0]) for i in nucleus]
  expected = np.zeros(5)
  expected[nucleus_ids] = probs[nucleus] / probs[nucleus].sum()
  np.testing.assert_allclose(observed, expected, atol=0.03)
  assert observed[np.setdiff1d(np.arange(5), nucleus_ids)].sum() == 0


def test_num_decodes_are_independent_samples_of_each_examples_own_distribution():
  table = np.zeros((4, 4, 4), np.float32)
  p0 = np.array([0.1, 0.2, 0.3, 0.4])
  p1 = np.array([0.6, 0.1, 0.2, 0.1])
  bias = np.log(np.stack([p0, p1])).astype(np.float32)
  n = 4000
  sequences, _ = sample(table, bias, 2, num_decodes=n, max_decode_steps=1,
                        rng=fast_key(13))
  first = np.asarray(sequences[:, :, 0])
  np.testing.assert_allclose(np.bincount(first[0], minlength=4) / n, p0, atol=0.03)
  np.testing.assert_allclose(np.bincount(first[1], minlength=4) / n, p1, atol=0.03)
  # Neighbouring decodes agree only as often as independent draws would (sum p^2 = 0.30).
  agree = np.mean(first[0, :-1] == first[0, 1:])
  assert abs(agree - np.sum(p0 ** 2)) < 0.03


def eos_script_table(vocab=6):
  """Deterministic toy: token 0 -> 3 -> EOS; token 2 -> 2 forever; 4 -> 4 forever."""
  table = np.zeros((vocab, vocab, vocab), np.float32)
  table[:, 0, 3] = 3.0
  table[:, 3, EOS] = 3.0
  table[:, 2, 2] = 3.0
  table[:, 4, 4] = 3.0
  table[:, EOS, 4] = 3.0  # would continue after EOS if the search did not stop
  return table


def test_sequences_are_padded_with_zeros_after_eos_and_the_loop_stops():
  table = eos_script_table()
  bias = np.zeros((2, 6), np.float32)
  calls = []

  def counting(state):
    jax.debug.callback(lambda i: calls.append(int(i)), state.cur_index)
    return toy_tokens_to_logits(table)(state)

  length = 6
  sequences, log_probs = fast_jit(lambda cache: decoding.temperature_sample(
      jnp.zeros((2, length), jnp.int32), cache, counting, eos_id=EOS, temperature=0.0))(
          toy_cache(bias, length))
  jax.effects_barrier()
  np.testing.assert_array_equal(sequences[:, 0], [[3, 1, 0, 0, 0, 0]] * 2)
  assert calls == [0, 1]  # stopped as soon as both rows had emitted EOS
  expected = np_sequence_log_prob(table, bias[0], [3, 1])
  np.testing.assert_allclose(log_probs[:, 0], [expected] * 2, rtol=1e-5)


def test_rows_finish_independently():
  table = eos_script_table()
  bias = np.zeros((2, 6), np.float32)
  bias[1, 2] = 4.0  # row 1 prefers 2 at every step and never ends
  sequences, log_probs = sample(table, bias, 5, temperature=0.0)
  np.testing.assert_array_equal(sequences[0, 0], [3, 1, 0, 0, 0])
  np.testing.assert_array_equal(sequences[1, 0], [2, 2, 2, 2, 2])
  np.testing.assert_allclose(
      log_probs[1, 0], np_sequence_log_prob(table, bias[1], [2] * 5), rtol=1e-5)


def test_forced_prefix_tokens_are_written_and_not_scored():
  table, bias = random_problem(14, batch=2, vocab=7)
  length, prefix = 6, [5, 4]
  inputs = np.zeros((2, length), np.int32)
  inputs[:, 1:3] = prefix  # positions 1 and 2 of the buffer: the first two outputs
  sequences, log_probs = run_sample(inputs, toy_cache(bias, length), table, temperature=0.0)
  for b in range(2):
    tokens, total = np_greedy(table, bias[b], length, prefix=prefix)
    np.testing.assert_array_equal(sequences[b, 0], tokens)
    np.testing.assert_allclose(log_probs[b, 0], total, rtol=1e-5)


def test_initial_index_continues_a_prefilled_cache_like_forcing_the_prefix():
  table, bias = random_problem(15, batch=2, vocab=7)
  length, prefix = 6, [5, 4]
  inputs = np.zeros((2, length), np.int32)
  inputs[:, 1:3] = prefix
  forced, _ = run_sample(inputs, toy_cache(bias, length), table, temperature=0.0)
  # Prefill by hand: the cache already holds buffer positions 0 and 1 (tokens 0 and 5).
  cache = toy_cache(bias, length)
  cache["history"] = cache["history"].at[:, 1].set(prefix[0])
  cache["index"] = jnp.array(2, jnp.int32)
  continued, _ = run_sample(inputs, cache, table, temperature=0.0, initial_index=2)
  np.testing.assert_array_equal(continued, forced)


def test_max_decode_steps_limits_the_number_of_decoded_tokens():
  table = eos_script_table()
  bias = np.zeros((1, 6), np.float32)
  bias[0, 2] = 4.0
  sequences, _ = sample(table, bias, 5, temperature=0.0, max_decode_steps=3)
  np.testing.assert_array_equal(sequences[0, 0], [2, 2, 2, 0, 0])


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": -1.0, "rng": fast_key(0)}, "temperature"),
    ({"temperature": 1.0}, "rng"),
    ({"temperature": 0.0, "num_decodes": 0}, "num_decodes"),
    ({"temperature": 0.0, "topp": 1.5}, "topp"),
    ({"temperature": 0.0, "initial_index": jnp.zeros((2,), jnp.int32)}, "initial_index"),
])
def test_bad_sampling_arguments_are_rejected_with_a_named_reason(kwargs, message):
  table, bias = random_problem(16, batch=2, vocab=4)
  with pytest.raises(ValueError, match=message):
    sample(table, bias, 3, **kwargs)


def test_inputs_must_be_two_dimensional():
  table, bias = random_problem(16, batch=2, vocab=4)
  with pytest.raises(ValueError, match=r"\[batch, length\]"):
    decoding.temperature_sample(jnp.zeros((3,), jnp.int32), toy_cache(bias, 3),
                                toy_tokens_to_logits(table), eos_id=EOS, temperature=0.0)


# ----------------------------------------------------------------------------------------
# beam_search


def brute_force(table, bias_row, vocab, length, alpha):
  """(complete, incomplete): every sequence ending at its first EOS within `length`, and
  every EOS-free sequence of exactly `length`, each as (penalised score, padded tokens)
  sorted best first."""
  def scored(tokens):
    return (penalised(np_sequence_log_prob(table, bias_row, tokens), len(tokens), alpha),
            tokens + [0] * (length - len(tokens)))

  others = [t for t in range(vocab) if t != EOS]
  complete = [scored(list(body) + [EOS]) for n in range(length)
              for body in itertools.product(others, repeat=n)]
  incomplete = [scored(list(body)) for body in itertools.product(others, repeat=length)]
  return sorted(complete, key=lambda r: -r[0]), sorted(incomplete, key=lambda r: -r[0])


def run_beam(inputs, cache, table, **kwargs):
  """`beam_search` on the toy model, compiled as one program."""
  step = toy_tokens_to_logits(table)
  run = fast_jit(lambda inputs, cache: decoding.beam_search(
      inputs, cache, step, eos_id=EOS, **kwargs))
  return run(jnp.asarray(inputs), cache)


def beam(table, bias, length, **kwargs):
  return run_beam(
      jnp.zeros((bias.shape[0], length), jnp.int32), toy_cache(bias, length), table, **kwargs)


@pytest.mark.parametrize("vocab, length, alpha", [(4, 3, 0.6), (3, 4, 0.6), (4, 3, 0.0)])
def test_exhaustive_beam_returns_every_complete_sequence_ranked_by_penalised_score(
    vocab, length, alpha):
  # The trigram table reads the previous token from the cache history: a beam that kept
  # another beam's cache would score its sequences wrongly.
  table, bias = random_problem(20 + vocab, batch=2, vocab=vocab, scale=3.0)
  beams = vocab ** length
  sequences, scores = beam(table, bias, length, num_decodes=beams, alpha=alpha)
  assert sequences.shape == (2, beams, length)
  for b in range(2):
    complete, incomplete = brute_force(table, bias[b], vocab, length, alpha)
    expected = complete + incomplete  # complete first, then the best incomplete beams
    found = len(expected)
    np.testing.assert_allclose(scores[b, :found], [s for s, _ in expected], rtol=1e-4)
    np.testing.assert_array_equal(sequences[b, :found], [t for _, t in expected])
    assert np.all(np.asarray(scores[b, found:]) == decoding.NEG_INF)
    assert np.all(np.asarray(sequences[b, found:]) == 0)


def test_length_penalty_can_change_the_winner():
  # EOS right away costs log(0.5); the 3-token path 2, 3, EOS costs log(0.5) + log(0.9).
  table = np.full((4, 4, 4), -30.0, np.float32)
  table[:, 0, EOS] = np.log(0.5)
  table[:, 0, 2] = np.log(0.5)
  table[:, 2, 3] = np.log(0.9)
  table[:, 2, 0] = np.log(0.1)
  table[:, 3, EOS] = 0.0
  bias = np.zeros((1, 4), np.float32)
  short, _ = beam(table, bias, 4, num_decodes=2, alpha=0.0)
  long, _ = beam(table, bias, 4, num_decodes=2, alpha=3.0)
  np.testing.assert_array_equal(short[0, 0], [EOS, 0, 0, 0])
  np.testing.assert_array_equal(long[0, 0], [2, 3, EOS, 0])


@pytest.mark.parametrize("eos_logit", [-50.0, None])
def test_beam_of_one_without_length_penalty_equals_greedy(eos_logit):
  # Beam 1 keeps a complete runner-up (an EOS that was not the argmax) when it outscores the
  # greedy path, so it equals greedy when EOS is either the argmax or never competitive.
  if eos_logit is None:
    table, bias = eos_script_table(), np.zeros((3, 6), np.float32)
    bias[1, 2] = 4.0
  else:
    table, bias = random_problem(30, batch=4, vocab=6)
    table[:, :, EOS] = eos_logit
  greedy, greedy_logp = sample(table, bias, 6, temperature=0.0)
  sequences, scores = beam(table, bias, 6, num_decodes=1, alpha=0.0)
  np.testing.assert_array_equal(sequences, greedy)
  np.testing.assert_allclose(scores, greedy_logp, rtol=1e-5)


def test_beam_search_without_any_complete_hypothesis_returns_the_live_beams():
  table, bias = random_problem(31, batch=1, vocab=4, scale=1.0)
  bias[:, EOS] = -1e9  # EOS impossible
  length, alpha = 3, 0.6
  sequences, scores = beam(table, bias, length, num_decodes=27, alpha=alpha)
  _, expected = brute_force(table, bias[0], 4, length, alpha)
  np.testing.assert_allclose(scores[0], [s for s, _ in expected], rtol=1e-4)
  np.testing.assert_array_equal(sequences[0], [t for _, t in expected])


def test_beam_search_keeps_a_forced_prefix_and_matches_a_prefilled_cache():
  table, bias = random_problem(32, batch=2, vocab=5)
  length = 5
  inputs = np.zeros((2, length), np.int32)
  inputs[:, 1] = 4  # the first output is forced to 4
  forced, forced_scores = run_beam(inputs, toy_cache(bias, length), table, num_decodes=3)
  assert np.all(np.asarray(forced[:, :, 0]) == 4)
  cache = toy_cache(bias, length)
  cache["index"] = jnp.array(1, jnp.int32)  # buffer position 0 (the start token) is cached
  prefilled, prefilled_scores = run_beam(inputs, cache, table, num_decodes=3, initial_index=1)
  np.testing.assert_array_equal(prefilled, forced)
  np.testing.assert_allclose(prefilled_scores, forced_scores, rtol=1e-5)
  # The best hypothesis is scored without the forced token, with |y| counting decoded ones.
  best = [int(t) for t in forced[0, 0]]
  n = best.index(EOS) if EOS in best else length
  expected = penalised(np_sequence_log_prob(table, bias[0], best[:n + 1], skip=1), n, 0.6)
  np.testing.assert_allclose(forced_scores[0, 0], expected, rtol=1e-5)


def test_beam_search_rejects_a_negative_alpha():
  table, bias = random_problem(34, batch=1, vocab=4)
  with pytest.raises(ValueError, match="alpha"):
    beam(table, bias, 3, num_decodes=2, alpha=-0.5)
