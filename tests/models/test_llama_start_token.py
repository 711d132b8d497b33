"""Llama-family batches start with the model's BOS and take their masks from lengths.

The T5X layout (start token 0, padding 0, loss weights from `token != 0`) loses real tokens
with id 0 (Llama 3's "!") and feeds these models a start token they never saw. Here: the
converted layout with a BOS id and without one (Qwen2), a target id 0 that keeps its loss
weight, the T5-style decoder still on seqio's converter, BOS ids read from config.json, and
parity with `transformers` fed `[bos] + tokens` (or the bare tokens for Qwen2).
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import sequence_start
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine.importers import hf_decoder
from prompt_tuning.models.config import get_config
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.models.llama_config import get_llama_config

LENGTHS = {"inputs": 5, "targets": 4}
# A target that holds id 0 (Llama 3's "!"), and a row whose inputs fill their length.
EXAMPLES = [{"inputs": [7, 8, 9], "targets": [0, 11]},
            {"inputs": [3, 4, 5, 6, 7], "targets": [12, 0, 0, 13]}]


def convert(wrapper, examples=EXAMPLES, lengths=LENGTHS):
  ds = tf.data.Dataset.from_generator(
      lambda: ({k: np.asarray(v, np.int32) for k, v in ex.items()} for ex in examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  converted = wrapper.feature_converter()(ds, lengths)
  return next(converted.batch(len(examples)).as_numpy_iterator())


def llama_wrapper(name="llama_tiny", **overrides):
  config = get_llama_config(name, vocab_size=64, **overrides)
  return model_wrappers.DecoderOnlyModel(LlamaDecoder(config=config))


LAYOUTS = {
    # BOS 5 first; the target "0" of row 0 (slot 3) and both zeros of row 1 are weighted.
    "bos": dict(
        wrapper=dict(bos_token_id=5), start_token=5,
        decoder_input_tokens=[[5, 7, 8, 9, 0, 0, 0, 0, 0], [5, 3, 4, 5, 6, 7, 12, 0, 0]],
        decoder_target_tokens=[[7, 8, 9, 0, 11, 0, 0, 0, 0], [3, 4, 5, 6, 7, 12, 0, 0, 13]],
        decoder_loss_weights=[[0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1]],
        decoder_causal_attention=[[1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]],
        real_positions=[[1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]]),
    # Qwen2 has no start token: the tokens themselves are the decoder input, and the last
    # one predicts nothing.
    "qwen2": dict(
        wrapper=dict(name="qwen2_tiny"), start_token=None,
        decoder_input_tokens=[[7, 8, 9, 0, 11, 0, 0, 0, 0], [3, 4, 5, 6, 7, 12, 0, 0, 13]],
        decoder_target_tokens=[[8, 9, 0, 11, 0, 0, 0, 0, 0], [4, 5, 6, 7, 12, 0, 0, 13, 0]],
        decoder_loss_weights=[[0, 0, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0]],
        decoder_causal_attention=[[1, 1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0, 0]],
        real_positions=[[1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 0]]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_converted_layout_keeps_target_id_zero(layout):
  expected = LAYOUTS[layout]
  wrapper = llama_wrapper(**expected["wrapper"])
  assert wrapper.start_token == expected["start_token"]
  batch = convert(wrapper)
  for key in ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
              "decoder_causal_attention"):
    np.testing.assert_array_equal(batch[key], expected[key], err_msg=key)
  np.testing.assert_array_equal(sequence_start.real_positions(batch),
                                expected["real_positions"])


def test_target_zero_is_in_the_loss():
  """The loss counts the target id 0: 2 + 4 weighted tokens, and scoring uses them."""
  wrapper = llama_wrapper(bos_token_id=5)
  batch = convert(wrapper)
  params = wrapper.initial_variables(jax.random.PRNGKey(0),
                                     wrapper.model_feature_lengths(LENGTHS))["params"]
  _, metrics = wrapper.loss_fn(params, batch, None)
  assert int(metrics["num_tokens"]) == 6
  # Zeroing the "0" target's weight changes row 0's score by exactly its log-probability.
  scores = wrapper.score_batch(params, batch)
  weights = batch["decoder_loss_weights"].copy()
  weights[0, 3] = 0
  without = wrapper.score_batch(params, {**batch, "decoder_loss_weights": weights})
  assert float(scores[0] - without[0]) < -1e-3
  np.testing.assert_allclose(scores[1], without[1], rtol=0, atol=0)


def test_t5_style_decoder_keeps_the_t5x_layout():
  wrapper = model_wrappers.DecoderOnlyModel(
      DecoderOnly(config=get_config("decoder_only_tiny")))
  assert wrapper.t5x_start
  assert "PrefixLMFeatureConverter" in type(wrapper.feature_converter()._base).__name__
  batch = convert(wrapper)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], [0, 0])
  # seqio's convention: a target id 0 reads as padding and gets no weight.
  assert batch["decoder_loss_weights"][0, 3] == 0


def test_start_token_can_be_forced_and_is_checked():
  wrapper = llama_wrapper(bos_token_id=5)
  forced = model_wrappers.DecoderOnlyModel(wrapper.module, start_token="t5x")
  assert convert(forced)["decoder_input_tokens"][0, 0] == 0
  with pytest.raises(ValueError, match="start_token must be"):
    model_wrappers.DecoderOnlyModel(wrapper.module, start_token=-3)
  with pytest.raises(ValueError, match="bos_token_id=99 is not a row"):
    get_llama_config("llama_tiny", vocab_size=64, bos_token_id=99)


def _write_config(folder, model_type, **fields):
  config = dict(model_type=model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=8, **fields)
  (folder / "config.json").write_text(json.dumps(config))
  return hf_decoder.config_from_hf_decoder(str(folder))


def test_bos_is_read_from_config_json(tmp_path):
  assert _write_config(tmp_path, "llama", bos_token_id=7).bos_token_id == 7
  assert _write_config(tmp_path, "qwen2", bos_token_id=7).bos_token_id is None
  assert _write_config(tmp_path, "mistral").bos_token_id is None
  assert hf_decoder.config_to_hf(get_llama_config("llama3_8b"))["bos_token_id"] == 128000
  with pytest.raises(ValueError, match="bos_token_id 'x'; expected one token id"):
    _write_config(tmp_path, "llama", bos_token_id="x")


def test_presets_carry_their_bos():
  assert {name: get_llama_config(name).bos_token_id
          for name in ("llama2_7b", "llama3_1_8b", "mistral_7b", "gemma_7b", "gemma2_9b",
                       "qwen2_7b")} == {
              "llama2_7b": 1, "llama3_1_8b": 128000, "mistral_7b": 1, "gemma_7b": 2,
              "gemma2_9b": 2, "qwen2_7b": None}


@pytest.mark.slow  # imports torch and builds two transformers models
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_parity_with_transformers_fed_bos_and_tokens(family, tmp_path):
  """Our logits on the converted batch equal `transformers` on `[bos] + tokens` (1e-4)."""
  torch = pytest.importorskip("torch", reason="parity needs the 'test' extra (torch)")
  transformers = pytest.importorskip("transformers",
                                     reason="parity needs the 'test' extra (transformers)")
  from prompt_tuning.engine import checkpoint_import as ci  # pylint: disable=g-import-not-at-top
  cls = transformers.LlamaConfig if family == "llama" else transformers.Qwen2Config
  torch.manual_seed(0)
  hf_model = transformers.AutoModelForCausalLM.from_config(cls(
      vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=8, bos_token_id=5,
      eos_token_id=1, pad_token_id=0))
  with torch.no_grad():
    for name, param in hf_model.named_parameters():
      param.copy_(torch.randn_like(param) * (1.0 if "embed" in name else 0.3)
                  + (1.0 if "norm" in name else 0.0))
  hf_model.eval().save_pretrained(str(tmp_path))
  config = hf_decoder.config_from_hf_decoder(str(tmp_path))
  wrapper = model_wrappers.DecoderOnlyModel(LlamaDecoder(config=config))
  bos = [5] if family == "llama" else []
  assert wrapper.start_token == (5 if family == "llama" else None)
  abstract = jax.eval_shape(wrapper.module.init, jax.random.PRNGKey(0),
                            jnp.ones((1, 4), jnp.int32))["params"]
  params = ci.import_checkpoint(str(tmp_path), abstract_params=abstract)
  batch = convert(wrapper)
  mask = sequence_start.real_positions(batch)
  ours = np.asarray(wrapper.module.apply(
      {"params": params}, jnp.asarray(batch["decoder_input_tokens"]),
      decoder_mask=jnp.asarray(mask)).logits)
  scores = np.asarray(wrapper.score_batch(params, batch))
  for row, example in enumerate(EXAMPLES):
    sequence = bos + example["inputs"] + example["targets"]
    fed = sequence[:-1]  # the last token predicts nothing
    with torch.no_grad():
      theirs = hf_model(torch.tensor([sequence], dtype=torch.long)).logits[0].numpy()
    assert int(mask[row].sum()) == len(fed)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][row, :len(fed)], fed)
    np.testing.assert_allclose(ours[row, :len(fed)], theirs[:len(fed)], atol=1e-4, rtol=0)
    # The rank-classification score: the targets' summed log-probabilities under HF.
    log_probs = theirs - np.log(np.exp(theirs).sum(-1, keepdims=True))
    start = len(bos) + len(example["inputs"]) - 1
    expected = sum(log_probs[start + k, t] for k, t in enumerate(example["targets"]))
    np.testing.assert_allclose(scores[row], expected, atol=1e-4, rtol=0)
