"""Numeric parity with PyTorch `transformers`: same weights, logits, greedy and beam decodes.

Random-initialised T5 models are built with `transformers` (an independent implementation),
saved with `save_pretrained` (safetensors + config.json) and loaded through our importer and
`config_from_hf`. Two shapes: T5 1.1 (gated-GELU, untied `lm_head`) and T5 1.0 (ReLU, tied
embeddings, decoder output scaled by E**-0.5). Both use several heads and sequences longer than
`relative_attention_max_distance`, so every relative-position bucket (exact, log-spaced and
clipped) is exercised.

Both kernel implementations (`attention_impl` / `mlp_impl` 'custom_vjp' and 'xla') are checked.

Batches are padded to different lengths (encoder padding id 0, attention mask = tokens > 0);
logits are compared at every decoder position, padded or not, because both implementations give
decoder positions full causal attention (no decoder padding mask) and mask padded encoder keys.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity tests need the 'test' extra (torch)")
transformers = pytest.importorskip("transformers",
                                   reason="parity tests need the 'test' extra (transformers)")

# pylint: disable=g-import-not-at-top,wrong-import-position
from prompt_tuning.engine import checkpoint_import as ci
from prompt_tuning.models.t5 import EncoderDecoder, init_decoder_cache

pytestmark = pytest.mark.slow  # builds transformers models and compares with PyTorch

EOS = 1
NEW_TOKENS = 10
TOLERANCE = 1e-4

SHAPES = {
    "t5_1_1_untied_gated_gelu": dict(
        vocab_size=160, d_model=48, d_kv=12, d_ff=96, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "t5_1_0_tied_relu": dict(
        vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
        feed_forward_proj="relu", tie_word_embeddings=True),
}
ENCODER_LENGTHS = (24, 13, 6)  # padded to 24 > max distance > buckets / 2
DECODER_LENGTH = 18
IMPLS = ("custom_vjp", "xla")


def build_hf_model(shape, seed):
  torch.manual_seed(seed)
  config = transformers.T5Config(dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                 eos_token_id=EOS, **shape)
  model = transformers.T5ForConditionalGeneration(config)
  if not shape["tie_word_embeddings"]:
    # transformers 5.x ties lm_head to the embedding even for T5 1.1 configs; give it its own
    # weights (std 1, the library's own init for an untied head).
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn(shape["vocab_size"], shape["d_model"]))
  return model.eval()


def padded_batch(rng, vocab, lengths, total):
  tokens = np.zeros((len(lengths), total), np.int64)
  for row, length in enumerate(lengths):
    tokens[row, :length] = rng.integers(2, vocab, length)
  return tokens


@pytest.fixture(scope="module", params=sorted(SHAPES))
def pair(request, tmp_path_factory):
  """(name, hf_model, our model, our params) sharing one set of weights."""
  name = request.param
  shape = SHAPES[name]
  hf_model = build_hf_model(shape, seed=len(name))
  folder = tmp_path_factory.mktemp(name)
  hf_model.save_pretrained(str(folder))
  assert ci.detect_format(str(folder)) == "hf"
  config = ci.config_from_hf(str(folder))
  assert config.logits_via_embedding == shape["tie_word_embeddings"]
  model = EncoderDecoder(config=config)
  tokens = jnp.ones((1, 4), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]
  params = ci.import_checkpoint(str(folder), abstract_params=abstract)
  return name, hf_model, model, params


def _with_kernels(model, impl):
  return EncoderDecoder(config=model.config.replace(attention_impl=impl, mlp_impl=impl))


@pytest.mark.parametrize("impl", IMPLS)
def test_teacher_forced_logits_match_transformers(pair, impl):
  name, hf_model, model, params = pair
  model = _with_kernels(model, impl)
  vocab = SHAPES[name]["vocab_size"]
  rng = np.random.default_rng(0)
  encoder_tokens = padded_batch(rng, vocab, ENCODER_LENGTHS, max(ENCODER_LENGTHS))
  decoder_tokens = padded_batch(rng, vocab, (DECODER_LENGTH, 11, 5), DECODER_LENGTH)
  decoder_tokens = np.concatenate(
      [np.zeros((len(ENCODER_LENGTHS), 1), np.int64), decoder_tokens[:, :-1]], axis=1)

  with torch.no_grad():
    expected = hf_model(
        input_ids=torch.from_numpy(encoder_tokens),
        attention_mask=torch.from_numpy((encoder_tokens > 0).astype(np.int64)),
        decoder_input_ids=torch.from_numpy(decoder_tokens)).logits.numpy()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, jnp.asarray(encoder_tokens),
                                         jnp.asarray(decoder_tokens)))

  assert ours.shape == expected.shape == (3, DECODER_LENGTH, vocab)
  assert np.abs(expected).max() > 0.5  # a model whose logits are not all near zero
  assert np.abs(ours - expected).max() < TOLERANCE


def our_greedy(model, params, encoder_tokens):
  """Greedy decoding through the KV cache, one token per call; EOS suppressed as in HF's
  `min_new_tokens`. Returns (tokens [B, NEW_TOKENS], raw logits [B, NEW_TOKENS, V])."""
  @jax.jit
  def start(encoder_tokens):
    encoded, mask = model.apply({"params": params}, encoder_tokens, method="encode")
    return encoded, mask, init_decoder_cache(model, params, encoded, mask, NEW_TOKENS)

  encoded, mask, cache = start(encoder_tokens)

  @jax.jit
  def step(cache, token):
    logits, variables = model.apply({"params": params, "cache": cache}, encoded, mask, token,
                                    decode=True, method="decode", mutable=["cache"])
    logits = logits[:, -1]
    next_token = jnp.argmax(logits.at[:, EOS].set(-jnp.inf), axis=-1).astype(jnp.int32)
    return variables["cache"], next_token[:, None], logits

  token = jnp.zeros((encoder_tokens.shape[0], 1), jnp.int32)  # T5's start token
  tokens, logits = [], []
  for _ in range(NEW_TOKENS):
    cache, token, step_logits = step(cache, token)
    tokens.append(token[:, 0])
    logits.append(step_logits)
  return np.stack(tokens, axis=1), np.stack(logits, axis=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_greedy_decoding_with_cache_matches_generate(pair, impl):
  name, hf_model, model, params = pair
  model = _with_kernels(model, impl)
  rng = np.random.default_rng(1)
  encoder_tokens = padded_batch(rng, SHAPES[name]["vocab_size"], ENCODER_LENGTHS,
                                max(ENCODER_LENGTHS))
  with torch.no_grad():
    generated = hf_model.generate(
        input_ids=torch.from_numpy(encoder_tokens),
        attention_mask=torch.from_numpy((encoder_tokens > 0).astype(np.int64)),
        do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        return_dict_in_generate=True, output_logits=True)
  expected_tokens = generated.sequences.numpy()[:, 1:]  # drop the start token
  expected_logits = np.stack([l.numpy() for l in generated.logits], axis=1)

  tokens, logits = our_greedy(model, params, jnp.asarray(encoder_tokens, jnp.int32))

  assert expected_tokens.shape == tokens.shape == (3, NEW_TOKENS)
  np.testing.assert_array_equal(tokens, expected_tokens)
  assert np.abs(logits - expected_logits).max() < TOLERANCE
  # Each cached step computes new logits (tiny tied models often repeat a token, so the tokens
  # alone may not show it).
  assert np.abs(np.diff(logits, axis=1)).max() > 1e-2


@pytest.mark.parametrize("impl", IMPLS)
def test_beam_search_with_cache_matches_generate(pair, impl):
  # Without EOS (ours: an id outside the vocabulary; HF: none) and without a length penalty
  # (alpha 0; HF length_penalty 0), both searches keep the 4 best sums of log-probabilities
  # over 4 x V extensions every step and return the 4 beams of length NEW_TOKENS, best first.
  from prompt_tuning.engine.models import EncoderDecoderModel
  name, hf_model, model, params = pair
  model = _with_kernels(model, impl)
  vocab, beams = SHAPES[name]["vocab_size"], 4
  rng = np.random.default_rng(2)
  encoder_tokens = padded_batch(rng, vocab, ENCODER_LENGTHS, max(ENCODER_LENGTHS))
  config = transformers.GenerationConfig(
      do_sample=False, num_beams=beams, num_return_sequences=beams, length_penalty=0.0,
      max_new_tokens=NEW_TOKENS, early_stopping=False, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=None, bos_token_id=None)
  with torch.no_grad():
    generated = hf_model.generate(
        input_ids=torch.from_numpy(encoder_tokens),
        attention_mask=torch.from_numpy((encoder_tokens > 0).astype(np.int64)),
        generation_config=config, return_dict_in_generate=True, output_scores=True)
  expected_tokens = generated.sequences.numpy()[:, 1:].reshape(3, beams, NEW_TOKENS)
  expected_scores = generated.sequences_scores.numpy().reshape(3, beams)

  ours = EncoderDecoderModel(model, eos_id=vocab)
  tokens, scores = jax.jit(lambda p, b: ours.predict_batch_with_scores(
      p, b, decoder_params={"method": "beam", "num_decodes": beams, "alpha": 0.0},
      max_decode_length=NEW_TOKENS))(params, {"encoder_input_tokens": jnp.asarray(
          encoder_tokens, jnp.int32)})

  assert tokens.shape == expected_tokens.shape == (3, beams, NEW_TOKENS)
  np.testing.assert_array_equal(tokens, expected_tokens)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)
  # The beams differ (a search that kept one hypothesis four times would not).
  assert all(len({tuple(t) for t in example}) == beams for example in np.asarray(tokens))
