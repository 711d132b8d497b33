"""Numeric parity of the rotary decoder family with PyTorch `transformers`.

For each family (Llama with Llama 3.1 RoPE scaling, Mistral with a sliding window, Qwen2 with
q/k/v biases, Gemma with one kv head, Gemma 2 with sandwich norms, soft-capping and alternating
sliding layers) a tiny random model is built with `transformers` (an independent
implementation; nothing is downloaded), every weight redrawn so no bias or norm is trivial,
saved with `save_pretrained` and loaded through our importer. Then:

  * teacher-forced logits on a right-padded batch agree within 1e-4 at every real slot;
  * greedy decoding of the padded batch through our wrapper and KV cache
    (`DecoderOnlyModel.predict_batch`) equals `generate` on each unpadded prompt for 10 tokens;
  * with a soft prompt in our input hook, logits and greedy tokens equal `transformers` fed
    `[prompt; embed_tokens(ids)]` through `inputs_embeds`.

Sequences (12 slots) are longer than the sliding windows (6) and than Llama 3.1's scaling band
edges, so every path is exercised.
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
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine.importers import hf_decoder
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.prompts import hooks, providers

pytestmark = pytest.mark.slow  # PyTorch parity: builds and runs five transformers models

EOS = 1
NEW_TOKENS = 10
TOLERANCE = 1e-4
PROMPT_LENGTH = 3
LENGTHS = (12, 7, 3)
VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8, eos_token_id=EOS,
              pad_token_id=0, bos_token_id=2)
FAMILIES = {
    "llama3_scaled_rope": (transformers.LlamaConfig, dict(
        rope_parameters=dict(rope_type="llama3", rope_theta=10000.0, factor=4.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16))),
    "mistral_sliding": (transformers.MistralConfig, dict(sliding_window=6)),
    "qwen2_biases": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "gemma_one_kv_head": (transformers.GemmaConfig, dict(num_key_value_heads=1)),
    "gemma2_softcap_sliding": (transformers.Gemma2Config, dict(
        sliding_window=6, query_pre_attn_scalar=16, attn_logit_softcapping=5.0,
        final_logit_softcapping=3.0)),
}


def build_hf_model(name):
  cls, extra = FAMILIES[name]
  torch.manual_seed(len(name))
  model = transformers.AutoModelForCausalLM.from_config(cls(**{**COMMON, **extra}))
  with torch.no_grad():
    for param_name, param in model.named_parameters():
      scale = 1.0 if "embed" in param_name else 0.3
      offset = 1.0 if "norm" in param_name and "gemma" not in name else 0.0
      param.copy_(torch.randn_like(param) * scale + offset)
  model.generation_config.eos_token_id = None  # greedy runs all NEW_TOKENS steps
  return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
  """(name, hf_model, our module, our params) sharing one set of weights."""
  name = request.param
  hf_model = build_hf_model(name)
  folder = tmp_path_factory.mktemp(name)
  hf_model.save_pretrained(str(folder))
  assert ci.detect_format(str(folder)) == "hf"
  config = hf_decoder.config_from_hf_decoder(str(folder))
  module = LlamaDecoder(config=config)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                            jnp.ones((1, 4), jnp.int32))["params"]
  params = ci.import_checkpoint(str(folder), abstract_params=abstract)
  return name, hf_model, module, params


def padded_batch(seed):
  rng = np.random.default_rng(seed)
  tokens = np.zeros((len(LENGTHS), max(LENGTHS)), np.int32)
  for row, length in enumerate(LENGTHS):
    tokens[row, :length] = rng.integers(3, VOCAB, length)
  mask = (np.arange(max(LENGTHS))[None] < np.array(LENGTHS)[:, None]).astype(np.int32)
  return tokens, mask


def with_prompt(module, params, seed):
  prompted = module.clone(input_hook=hooks.PromptHook(
      provider=providers.Prompt(length=PROMPT_LENGTH)))
  prompt = np.random.default_rng(seed).normal(size=(PROMPT_LENGTH, module.config.emb_dim))
  return prompted, {**params, "input_hook": {"prompt": jnp.asarray(prompt, jnp.float32)}}


def hf_prompted_embeddings(hf_model, prompt, tokens):
  """`[1, P + n, E]` = the prompt rows, then the model's own (scaled) token embeddings."""
  with torch.no_grad():
    embedded = hf_model.get_input_embeddings()(torch.from_numpy(tokens[None].astype(np.int64)))
  return torch.cat([torch.from_numpy(np.array(prompt))[None].float(), embedded], dim=1)


def test_config_is_read_for_each_family(family):
  name, hf_model, module, _ = family
  cfg = module.config
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
      4, 1 if name.startswith("gemma_") else 2, 8)
  expected_sliding = {"mistral_sliding": (6, None), "gemma2_softcap_sliding": (6, (0,))}
  assert (cfg.sliding_window, cfg.sliding_layers) == expected_sliding.get(name, (None, None))
  assert cfg.tie_word_embeddings == hf_model.config.tie_word_embeddings


def test_padded_logits_match_transformers(family):
  name, hf_model, module, params = family
  tokens, mask = padded_batch(0)
  with torch.no_grad():
    expected = hf_model(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                        attention_mask=torch.from_numpy(mask.astype(np.int64))).logits.numpy()
  out = jax.jit(module.apply)({"params": params}, jnp.asarray(tokens),
                              decoder_mask=jnp.asarray(mask))
  ours = np.asarray(out.logits)
  real = mask.astype(bool)
  assert ours.shape == expected.shape == (3, 12, VOCAB)
  assert np.abs(expected[real]).max() > 1.0, name  # logits far from trivially small
  assert np.abs(ours - expected)[real].max() < TOLERANCE


def hf_greedy(hf_model, **inputs):
  """10 greedy tokens from `generate`; no token ends it (the model has no EOS set)."""
  with torch.no_grad():
    out = hf_model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False,
                            pad_token_id=0)
  assert out.shape[1] >= NEW_TOKENS
  return out.numpy()[0, -NEW_TOKENS:]


def our_greedy(module, params, tokens, mask):
  """Greedy decode of the padded batch through the trainer's wrapper (prefill + KV cache);
  no token ends a decode, as for `hf_greedy`."""
  wrapper = model_wrappers.DecoderOnlyModel(module, eos_id=VOCAB + 1)
  batch = {"decoder_input_tokens": jnp.asarray(tokens),
           "decoder_causal_attention": jnp.asarray(mask)}
  decodes = jax.jit(lambda p, b: wrapper.predict_batch(p, b, max_decode_length=NEW_TOKENS))(
      params, batch)
  return np.asarray(decodes)


def test_greedy_decoding_with_cache_matches_generate(family):
  name, hf_model, module, params = family
  tokens, mask = padded_batch(1)
  ours = our_greedy(module, params, tokens, mask)
  for row, length in enumerate(LENGTHS):
    expected = hf_greedy(hf_model, input_ids=torch.from_numpy(tokens[row:row + 1, :length]
                                                               .astype(np.int64)))
    np.testing.assert_array_equal(ours[row], expected, err_msg=f"{name} row {row}")


def test_prompted_logits_match_inputs_embeds(family):
  name, hf_model, module, params = family
  prompted, prompted_params = with_prompt(module, params, seed=2)
  tokens, mask = padded_batch(3)
  out = jax.jit(prompted.apply)({"params": prompted_params}, jnp.asarray(tokens),
                                decoder_mask=jnp.asarray(mask))
  prompt = prompted_params["input_hook"]["prompt"]
  for row, length in enumerate(LENGTHS):
    embeds = hf_prompted_embeddings(hf_model, prompt, tokens[row, :length])
    with torch.no_grad():
      expected = hf_model(inputs_embeds=embeds).logits.numpy()[0]
    ours = np.asarray(out.logits[row, :PROMPT_LENGTH + length])
    assert np.abs(ours - expected).max() < TOLERANCE, f"{name} row {row}"
  index = np.asarray(out.inputs.input_index)
  assert (index[:, :PROMPT_LENGTH] == -1).all()
  assert (index[0, PROMPT_LENGTH:] == np.arange(12)).all()


def test_prompted_greedy_decoding_matches_generate_from_inputs_embeds(family):
  name, hf_model, module, params = family
  prompted, prompted_params = with_prompt(module, params, seed=4)
  tokens, mask = padded_batch(5)
  ours = our_greedy(prompted, prompted_params, tokens, mask)
  prompt = prompted_params["input_hook"]["prompt"]
  for row, length in enumerate(LENGTHS):
    embeds = hf_prompted_embeddings(hf_model, prompt, tokens[row, :length])
    expected = hf_greedy(hf_model, inputs_embeds=embeds,
                         attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long))
    np.testing.assert_array_equal(ours[row], expected, err_msg=f"{name} row {row}")
