"""Neural recursion on a tiny random decoder-only LM: what the two passes receive, what trains,
and that cached prediction matches a search that re-runs the whole model at every step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import train_state
from prompt_tuning.engine.models import DecoderOnlyModel
from prompt_tuning.methods.recursion.connector import Connector, copy_lm_layers
from prompt_tuning.methods.recursion.model import LMConnectorLMModel, recursion_groups
from prompt_tuning.models import DecoderOnly, get_config
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

VOCAB = 32
EOS = 1
# Prefix-LM layout: [start, question..., answer...]; causal attention covers start + question.
BATCH = {
    "decoder_input_tokens": np.array([[0, 3, 4, 5, 9, 8, 0], [0, 6, 7, 2, 1, 0, 0]]),
    "decoder_target_tokens": np.array([[3, 4, 5, 9, 8, 1, 0], [6, 7, 2, 1, 0, 0, 0]]),
    "decoder_loss_weights": np.array([[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0, 0]]),
    "decoder_causal_attention": np.array([[1, 1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]),
}


def lm_config():
  return get_config("decoder_only_tiny", vocab_size=VOCAB, emb_dim=16, num_heads=2,
                    head_dim=8, mlp_dim=32, num_decoder_layers=2)


def make(mode="lm_c_lm", hook=None, num_layers=1, residual=True):
  cfg = lm_config()
  lm = DecoderOnly(cfg, input_hook=hook)
  return LMConnectorLMModel(lm, connector=Connector(cfg, num_layers=num_layers,
                                                    residual=residual), mode=mode)


def params_of(model, seed=0, gate=None):
  variables = model.get_initial_variables(jax.random.PRNGKey(seed), batch_size=1,
                                          decoder_length=7)
  params = jax.tree_util.tree_map(lambda x: x.value if hasattr(x, "value") else x,
                                  variables["params"],
                                  is_leaf=lambda x: hasattr(x, "value"))
  if gate is not None:
    params["connector"]["gate"] = jnp.full_like(params["connector"]["gate"], gate)
  return params


def test_a_zero_gate_connector_feeds_pass_one_states_straight_to_pass_two():
  model = make()
  params = params_of(model)
  lm_params, _ = model.split_params(params)
  logits, _, _ = model._logits(params, BATCH, dropout_rng=None)
  # Pass 1 run on each example's unpadded question alone: padding must not leak in.
  lm = model.module
  expected = []
  for row in range(2):
    prompt_len = int(BATCH["decoder_causal_attention"][row].sum())
    tokens = jnp.asarray(BATCH["decoder_input_tokens"][row:row + 1])
    hidden = lm.apply({"params": lm_params}, tokens[:, :prompt_len]).hidden
    embedded = lm.apply({"params": lm_params}, tokens,
                        method=lambda m, t: m.token_embedder(t))
    embedded = embedded.at[:, :prompt_len].set(hidden)
    mask = jnp.asarray(BATCH["decoder_target_tokens"][row:row + 1] > 0, jnp.int32)
    expected.append(lm.apply({"params": lm_params}, None, decoder_input_embeddings=embedded,
                             decoder_mask=mask).logits)
  expected = jnp.concatenate(expected)
  real = BATCH["decoder_target_tokens"] > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(expected)[real],
                             atol=1e-5, rtol=1e-5)
  # A single plain pass is a different function, and a non-zero gate changes the result.
  plain = lm.apply({"params": lm_params}, jnp.asarray(BATCH["decoder_input_tokens"]),
                   decoder_mask=jnp.asarray(real, jnp.int32)).logits
  assert np.abs(np.asarray(plain - logits)[real]).max() > 1e-2
  gated, _, _ = model._logits(params_of(model, gate=0.5), BATCH, dropout_rng=None)
  assert np.abs(np.asarray(gated - logits)[real]).max() > 1e-3


@pytest.mark.parametrize("mode", ["c_lm", "lm_c"])
def test_a_zero_gate_connector_makes_single_pass_baselines_the_plain_lm(mode):
  model = make(mode)
  params = params_of(model)
  lm_params, _ = model.split_params(params)
  logits, _, _ = model._logits(params, BATCH, dropout_rng=None)
  real = BATCH["decoder_target_tokens"] > 0
  plain = model.module.apply({"params": lm_params}, jnp.asarray(BATCH["decoder_input_tokens"]),
                             decoder_mask=jnp.asarray(real, jnp.int32)).logits
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain)[real], atol=1e-5)


# Llama-style layout (BOS 5, masks from lengths): the targets [0, 8, 1] and [7, 0] hold a real
# token 0 (Llama 3's "!"), at target positions 2 of both rows.
BOS_BATCH = {
    "decoder_input_tokens": np.array([[5, 3, 4, 0, 8, 0, 0], [5, 6, 7, 0, 0, 0, 0]]),
    "decoder_target_tokens": np.array([[3, 4, 0, 8, 1, 0, 0], [6, 7, 0, 0, 0, 0, 0]]),
    "decoder_loss_weights": np.array([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0, 0]]),
    "decoder_causal_attention": np.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]]),
}


@pytest.mark.parametrize("mode", ["c_lm", "lm_c"])
def test_a_real_token_0_is_attended_under_a_bos_start_token(mode):
  """With a zero gate the single-pass baselines are the plain LM wrapper with the same start
  token, on all 8 real positions, those reading or predicting the token 0 included."""
  cfg = lm_config()
  model = LMConnectorLMModel(DecoderOnly(cfg), connector=Connector(cfg), mode=mode,
                             start_token=5)
  params = params_of(model)
  lm_params, _ = model.split_params(params)
  logits, targets, weights = model._logits(params, BOS_BATCH, dropout_rng=None)
  plain, _, _ = DecoderOnlyModel(model.module, start_token=5)._logits(
      lm_params, BOS_BATCH, dropout_rng=None)
  real = (BOS_BATCH["decoder_causal_attention"] | BOS_BATCH["decoder_loss_weights"]) > 0
  assert real.sum() == 8
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain)[real], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(weights).sum(axis=1), [3, 2])
  np.testing.assert_array_equal(np.asarray(targets)[:, 2], [0, 0])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lm_c_lm", "c_lm", "lm_c"])
def test_training_moves_every_connector_parameter_and_no_lm_parameter(mode):
  model = make(mode, hook=PromptHook(Prompt(length=2)))
  params = params_of(model, seed=1)
  assignment_paths = [g.pattern for g in recursion_groups() if g.trainable]
  assert assignment_paths == ["^connector/"]
  trainable, frozen = train_state.split_params(params=params, patterns=assignment_paths)
  before = jax.tree_util.tree_map(np.array, frozen)
  optimizer = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.1)
  state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer,
                                         rng=jax.random.PRNGKey(0))
  step = jax.jit(train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer))
  batch = {k: jnp.asarray(v) for k, v in BATCH.items()}
  losses = []
  for _ in range(4):
    state, metrics = step(state, frozen, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  for path, value in train_state._flatten(before).items():
    assert np.array_equal(value, np.asarray(train_state._flatten(frozen)[path])), path
  start, end = train_state._flatten(trainable), train_state._flatten(state.params)
  assert set(start) == set(end) and all(p.startswith("connector/") for p in start)
  unchanged = [p for p in start if np.array_equal(np.asarray(start[p]), np.asarray(end[p]))]
  assert not unchanged
  # Through the full tree, the LM is in the graph: its gradient is non-zero; training leaves it
  # alone only because the trainer differentiates the Connector's group alone.
  grads = jax.grad(lambda p: model.loss_fn(p, batch, None)[0])(
      train_state.merge_params(trainable=state.params, frozen=frozen))
  assert float(jnp.abs(grads["decoder"]["layers_0"]["mlp"]["wo"]["kernel"]).max()) > 0


def greedy_without_cache(model, params, batch, length):
  """Greedy decoding that re-runs the full teacher-forced model on the history each step.

  The history sits in a fixed-width buffer (trailing slots masked; the model is causal, so
  they cannot change earlier slots) so that one compiled call serves every step.
  """
  run = jax.jit(model.sequence_logits)
  rows = []
  for row in range(batch["decoder_input_tokens"].shape[0]):
    prompt_len = int(batch["decoder_causal_attention"][row].sum())
    history = list(np.asarray(batch["decoder_input_tokens"][row, :prompt_len]))
    width = prompt_len + length
    prompt = jnp.asarray([[1] * prompt_len + [0] * length])
    out = []
    for _ in range(length):
      tokens = jnp.asarray([history + [0] * (width - len(history))])
      mask = jnp.asarray([[1] * len(history) + [0] * (width - len(history))])
      logits, index = run(params, tokens, mask, prompt)
      slot = int(np.argmax(np.asarray(index[0]) == len(history) - 1))
      token = int(np.argmax(np.asarray(logits[0, slot])))
      out.append(token)
      history.append(token)
      if token == EOS:
        break
    rows.append(out + [0] * (length - len(out)))
  return np.array(rows)


@pytest.mark.slow
@pytest.mark.parametrize("mode,hook", [("lm_c_lm", False), ("lm_c_lm", True), ("c_lm", True),
                                       ("lm_c", False)])
def test_cached_prediction_equals_decoding_without_cache(mode, hook):
  model = make(mode, hook=PromptHook(Prompt(length=3)) if hook else None, num_layers=2)
  params = params_of(model, seed=2, gate=0.7)
  length = 6
  decodes = model.predict_batch(params, BATCH, max_decode_length=length)
  expected = greedy_without_cache(model, params, BATCH, length)
  np.testing.assert_array_equal(np.asarray(decodes), expected)
  assert len({tuple(r) for r in expected}) == 2  # the two examples decode differently


@pytest.mark.slow
def test_sampling_returns_every_decode_with_scores_best_first():
  model = make()
  params = params_of(model, seed=3, gate=0.3)
  decodes, scores = model.predict_batch_with_scores(
      params, BATCH, decoder_params={"method": "sample", "num_decodes": 4, "temperature": 1.0},
      rng=jax.random.PRNGKey(0), max_decode_length=5)
  assert decodes.shape == (2, 4, 5) and scores.shape == (2, 4)
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)


def test_connector_layers_can_be_copied_from_lm_layers():
  model = make(residual=False, num_layers=2)
  params = copy_lm_layers(params_of(model), lm_layers=(1, 0))
  np.testing.assert_array_equal(params["connector"]["layers_0"]["mlp"]["wo"]["kernel"],
                                params["decoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  np.testing.assert_array_equal(params["connector"]["layers_1"]["mlp"]["wo"]["kernel"],
                                params["decoder"]["layers_0"]["mlp"]["wo"]["kernel"])
  with pytest.raises(ValueError, match="LM has no decoder layer 5"):
    copy_lm_layers(params, lm_layers=(5, 0))


def test_bad_configuration_is_refused_with_a_clear_sentence():
  cfg = lm_config()
  with pytest.raises(ValueError, match="mode must be one of"):
    LMConnectorLMModel(DecoderOnly(cfg), connector=Connector(cfg), mode="c_lm_c")
  narrow = get_config("decoder_only_tiny", vocab_size=VOCAB, emb_dim=8, num_heads=2, head_dim=4,
                      mlp_dim=16, num_decoder_layers=1)
  with pytest.raises(ValueError, match="width 8 differs from the LM's 16"):
    LMConnectorLMModel(DecoderOnly(cfg), connector=Connector(narrow))
