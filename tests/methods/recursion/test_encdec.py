"""Neural recursion on a tiny random T5 encoder-decoder: what the second encoder pass receives,
what trains, how the Connector is partitioned, and cached decoding against re-running."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import train_state
from prompt_tuning.methods.recursion.connector import (Connector, copy_lm_layers,
                                                       lm_layer_prefix_map)
from prompt_tuning.methods.recursion.encdec import EncoderConnectorModel
from prompt_tuning.models import EncoderDecoder, get_config
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

VOCAB = 32
EOS = 1
BATCH = {
    "encoder_input_tokens": np.array([[3, 4, 5, 9, 1], [6, 7, 1, 0, 0]]),
    "decoder_input_tokens": np.array([[0, 8, 2, 11], [0, 12, 0, 0]]),
    "decoder_target_tokens": np.array([[8, 2, 11, 1], [12, 1, 0, 0]]),
    "decoder_loss_weights": np.array([[1, 1, 1, 1], [1, 1, 0, 0]]),
}
PROMPT = 3


def config():
  return get_config("t5_1_1_tiny", vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8,
                    mlp_dim=32, relative_attention_num_buckets=8,
                    relative_attention_max_distance=16)


def make(mode="lm_c_lm", hook=False, num_layers=1, residual=True):
  cfg = config()
  module = EncoderDecoder(cfg, input_hook=PromptHook(Prompt(length=PROMPT)) if hook else None)
  return EncoderConnectorModel(module, connector=Connector(cfg, num_layers=num_layers,
                                                           residual=residual, causal=False),
                               mode=mode)


def boxed_variables(model, seed=0):
  return model.get_initial_variables(jax.random.PRNGKey(seed), batch_size=1, encoder_length=5,
                                     decoder_length=4)


def params_of(model, seed=0, gate=None):
  params = flax.core.meta.unbox(boxed_variables(model, seed)["params"])
  if gate is not None:
    params["connector"]["gate"] = jnp.full_like(params["connector"]["gate"], gate)
  return params


def batch():
  return {k: jnp.asarray(v) for k, v in BATCH.items()}


@pytest.mark.parametrize("hook", [False, True])
def test_a_zero_gate_connector_feeds_pass_one_states_to_the_second_encoder_pass(hook):
  model = make(hook=hook)
  params = params_of(model, seed=1)
  logits, _, _ = model._logits(params, batch(), dropout_rng=None)
  # By hand: the hooked encoder, its prompt slots dropped (prefix placement), fed back to the
  # bare encoder as its input embeddings, then the decoder.
  lm_params, _ = model.split_params(params)
  tokens = batch()["encoder_input_tokens"]
  mask = (tokens > 0).astype(jnp.int32)
  states, _ = model.module.apply({"params": lm_params}, tokens, method="encode")
  states = states[:, PROMPT:] if hook else states
  bare = model.bare_model
  encoded, encoded_mask = bare.apply({"params": lm_params}, None,
                                     encoder_input_embeddings=states * mask[..., None],
                                     encoder_mask=mask, method="encode")
  expected = bare.apply({"params": lm_params}, encoded, encoded_mask,
                        batch()["decoder_input_tokens"], method="decode")
  real = BATCH["decoder_loss_weights"] > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(expected)[real], atol=1e-5,
                             rtol=1e-5)
  # One plain pass is a different function; a non-zero gate changes the result.
  plain = model.module.apply({"params": lm_params}, tokens, batch()["decoder_input_tokens"])
  assert np.abs(np.asarray(plain - logits)[real]).max() > 1e-2
  gated, _, _ = model._logits(params_of(model, seed=1, gate=0.5), batch(), dropout_rng=None)
  assert np.abs(np.asarray(gated - logits)[real]).max() > 1e-3


@pytest.mark.parametrize("mode", ["c_lm", "lm_c"])
def test_a_zero_gate_connector_makes_single_pass_baselines_the_plain_model(mode):
  model = make(mode, hook=True)
  params = params_of(model)
  lm_params, _ = model.split_params(params)
  logits, _, _ = model._logits(params, batch(), dropout_rng=None)
  plain = model.module.apply({"params": lm_params}, batch()["encoder_input_tokens"],
                             batch()["decoder_input_tokens"])
  real = BATCH["decoder_loss_weights"] > 0
  np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(plain)[real], atol=1e-5)


@pytest.mark.slow
def test_training_moves_only_the_connector_and_leaves_the_model_bit_identical():
  model = make(hook=True, num_layers=2)
  params = params_of(model, seed=2)
  trainable, frozen = train_state.split_params(params=params, patterns=["^connector/"])
  before = {k: np.array(v) for k, v in train_state._flatten(frozen).items()}
  optimizer = optax.adamw(1e-2, b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.1)
  state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer,
                                         rng=jax.random.PRNGKey(0))
  step = jax.jit(train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer))
  losses = []
  for _ in range(4):
    state, metrics = step(state, frozen, batch())
    losses.append(float(metrics["loss"]))
  assert losses[-1] < losses[0]
  after = train_state._flatten(frozen)
  assert set(before) == set(after) and any(p.startswith("encoder/") for p in before)
  for path, value in before.items():
    assert np.array_equal(value, np.asarray(after[path])), path
  start, end = train_state._flatten(trainable), train_state._flatten(state.params)
  assert start and all(p.startswith("connector/") for p in start)
  assert not [p for p in start if np.array_equal(np.asarray(start[p]), np.asarray(end[p]))]


def test_the_connector_is_partitioned_like_the_encoder_layers():
  variables = boxed_variables(make(num_layers=2))
  specs = train_state._flatten(flax.linen.get_partition_spec(variables)["params"])
  connector = {p[len("connector/layers_1/"):]: s for p, s in specs.items()
               if p.startswith("connector/layers_1/")}
  encoder = {p[len("encoder/layers_0/"):]: s for p, s in specs.items()
             if p.startswith("encoder/layers_0/")}
  assert connector and connector == encoder
  assert specs["connector/layers_0/attention/query/kernel"] == \
      specs["encoder/layers_1/attention/query/kernel"]


def test_connector_layers_copy_from_encoder_layers_and_prefix_maps_name_them():
  model = make(residual=False, num_layers=2)
  params = copy_lm_layers(params_of(model), lm_layers=(1, 0), stack="encoder")
  np.testing.assert_array_equal(params["connector"]["layers_0"]["mlp"]["wo"]["kernel"],
                                params["encoder"]["layers_1"]["mlp"]["wo"]["kernel"])
  np.testing.assert_array_equal(params["connector"]["connector_norm"]["scale"],
                                params["encoder"]["encoder_norm"]["scale"])
  # Every Connector leaf is named by the prefix map onto an existing encoder leaf.
  flat = train_state._flatten(params)
  pairs = lm_layer_prefix_map((1, 0), stack="encoder")
  for path in (p for p in flat if p.startswith("connector/")):
    ours, theirs = next((a, b) for a, b in pairs if path.startswith(a))
    source = theirs + path[len(ours):]
    np.testing.assert_array_equal(flat[path], flat[source])
  with pytest.raises(ValueError, match="stack must be one of"):
    lm_layer_prefix_map((0,), stack="cross")


def greedy_by_rerunning(model, params, length):
  """Greedy decoding that re-runs the whole teacher-forced model on the history each step."""
  run = jax.jit(lambda p, b: model._logits(p, b, dropout_rng=None)[0])
  rows = []
  for row in range(2):
    history = [0]
    for _ in range(length):
      decoder_tokens = np.zeros((1, length), np.int32)
      decoder_tokens[0, :len(history)] = history
      single = {"encoder_input_tokens": jnp.asarray(BATCH["encoder_input_tokens"][row:row + 1]),
                "decoder_input_tokens": jnp.asarray(decoder_tokens),
                "decoder_target_tokens": jnp.ones((1, length), jnp.int32),
                "decoder_loss_weights": jnp.ones((1, length), jnp.int32)}
      token = int(np.argmax(np.asarray(run(params, single))[0, len(history) - 1]))
      history.append(token)
      if token == EOS:
        break
    out = history[1:]
    rows.append(out + [0] * (length - len(out)))
  return np.array(rows)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lm_c_lm", "lm_c"])
def test_cached_decoding_equals_rerunning_the_whole_model(mode):
  model = make(mode, hook=True, num_layers=2)
  params = params_of(model, seed=3, gate=0.7)
  decodes = np.asarray(model.predict_batch(params, batch(), max_decode_length=5))
  expected = greedy_by_rerunning(model, params, 5)
  np.testing.assert_array_equal(decodes, expected)
  assert len({tuple(r) for r in expected}) == 2


def test_bad_configuration_is_refused_with_a_clear_sentence():
  cfg = config()
  with pytest.raises(ValueError, match="mode must be one of"):
    EncoderConnectorModel(EncoderDecoder(cfg), connector=Connector(cfg), mode="lm_lm")
  with pytest.raises(ValueError, match="width 8 differs from the encoder-decoder's"):
    EncoderConnectorModel(EncoderDecoder(cfg), connector=Connector(cfg.replace(emb_dim=8)))
  model = make()
  with pytest.raises(ValueError, match="lack the 'connector' entry"):
    model._logits(model.split_params(params_of(model))[0], batch(), dropout_rng=None)
