"""Tests for prompt_tuning.engine.export: `.npy` prompts and PEFT adapter folders.

The PEFT check is against the real library: a tiny random T5 built by `transformers` loads the
exported folder with `peft.PeftModel.from_pretrained`, and PEFT's prompt table must equal ours
bit for bit and be placed in front of the encoder input only.
"""

import json
import pathlib

import numpy as np
import pytest

from prompt_tuning.engine import export

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "t5x_reference"
FIXTURE_PROMPT = FIXTURES / "prompt_5x256.npy"  # float64
PRETRAINED_PROMPT = FIXTURES / "pretrained_prompts" / "sst2.npy"  # float32 [100, 768]


def _prompt(length=5, dim=16, seed=0):
  return np.random.default_rng(seed).normal(size=(length, dim)).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# .npy


def test_npy_is_a_plain_float32_2d_array(tmp_path):
  prompt = _prompt().astype(np.float64)
  path = tmp_path / "prompt.npy"
  export.save_prompt_npy(prompt=prompt, path=str(path))
  loaded = np.load(path)
  assert loaded.dtype == np.float32 and loaded.shape == (5, 16)
  np.testing.assert_array_equal(loaded, prompt.astype(np.float32))
  np.testing.assert_array_equal(export.load_prompt_npy(path=str(path)), loaded)
  assert [p.name for p in tmp_path.iterdir()] == ["prompt.npy"]  # no temporary left behind


def test_reference_prompt_file_reads_as_float32():
  prompt = export.load_prompt_npy(path=str(FIXTURE_PROMPT))
  raw = np.load(FIXTURE_PROMPT)
  assert raw.dtype == np.float64 and prompt.dtype == np.float32 and prompt.shape == (5, 256)
  np.testing.assert_array_equal(prompt, raw.astype(np.float32))


def test_export_of_a_released_prompt_is_byte_identical_to_the_release(tmp_path):
  path = tmp_path / "sst2.npy"
  export.save_prompt_npy(prompt=np.load(PRETRAINED_PROMPT), path=str(path))
  assert path.read_bytes() == PRETRAINED_PROMPT.read_bytes()


def test_npy_errors(tmp_path):
  with pytest.raises(ValueError, match=r"2-D \[prompt_length, embed\] array, got shape \(2, 5,"):
    export.save_prompt_npy(prompt=np.zeros((2, 5, 16)), path=str(tmp_path / "p.npy"))
  with pytest.raises(ValueError, match="floating-point"):
    export.save_prompt_npy(prompt=np.zeros((5, 16), np.int32), path=str(tmp_path / "p.npy"))
  with pytest.raises(FileNotFoundError, match="[Ff]older .*missing.* does not exist"):
    export.save_prompt_npy(prompt=_prompt(), path=str(tmp_path / "missing" / "p.npy"))
  with pytest.raises(FileNotFoundError, match="file .*nope.npy does not exist"):
    export.load_prompt_npy(path=str(tmp_path / "nope.npy"))
  assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# PEFT


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
  torch = pytest.importorskip("torch", reason="torch is in the 'test' extra")
  transformers = pytest.importorskip("transformers", reason="transformers is in the 'test' extra")
  torch.manual_seed(0)
  config = transformers.T5Config(
      vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=2,
      num_heads=4, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
      decoder_start_token_id=0, pad_token_id=0,
  )
  model = transformers.T5ForConditionalGeneration(config).eval()
  path = tmp_path_factory.mktemp("t5_tiny")
  model.save_pretrained(path)
  return model, str(path)


def test_peft_loads_our_adapter_with_the_identical_prompt(tiny_t5, tmp_path):
  peft = pytest.importorskip("peft", reason="peft is in the 'test' extra")
  model, base_path = tiny_t5
  prompt = _prompt(length=5, dim=16)
  export.export_peft_prompt(prompt=prompt, directory=str(tmp_path), num_layers=2,
                            num_attention_heads=4, base_model_name_or_path=base_path)
  peft_model = peft.PeftModel.from_pretrained(model, str(tmp_path))
  config = peft_model.peft_config["default"]
  assert config.peft_type == peft.PeftType.PROMPT_TUNING
  assert config.task_type == "SEQ_2_SEQ_LM"
  assert (config.num_virtual_tokens, config.token_dim) == (5, 16)
  assert config.num_transformer_submodules == 1
  assert config.base_model_name_or_path == base_path
  table = peft_model.prompt_encoder["default"].embedding.weight.detach().numpy()
  assert table.dtype == np.float32
  np.testing.assert_array_equal(table, prompt)
  np.testing.assert_array_equal(peft_model.get_prompt(batch_size=1)[0].detach().numpy(), prompt)


def test_peft_prepends_the_prompt_to_the_encoder_input_only(tiny_t5, tmp_path):
  torch = pytest.importorskip("torch")
  peft = pytest.importorskip("peft")
  model, _ = tiny_t5
  prompt = _prompt(length=3, dim=16, seed=4)
  export.export_peft_prompt(prompt=prompt, directory=str(tmp_path), num_layers=2,
                            num_attention_heads=4)
  peft_model = peft.PeftModel.from_pretrained(model, str(tmp_path)).eval()
  input_ids = torch.tensor([[5, 9, 13, 1]])
  decoder_input_ids = torch.tensor([[0, 7, 8]])
  with torch.no_grad():
    peft_logits = peft_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                             decoder_input_ids=decoder_input_ids).logits
    embedded = model.get_input_embeddings()(input_ids)
    prompted = torch.cat([torch.from_numpy(prompt)[None], embedded], dim=1)
    ours = model(inputs_embeds=prompted, attention_mask=torch.ones(1, 7),
                 decoder_input_ids=decoder_input_ids).logits
  assert peft_logits.shape == (1, 3, 64)  # decoder length unchanged: no decoder prompt
  np.testing.assert_allclose(peft_logits.numpy(), ours.numpy(), rtol=1e-5, atol=1e-6)


def test_adapter_folder_contents(tmp_path):
  safetensors_numpy = pytest.importorskip("safetensors.numpy")
  prompt = _prompt(length=7, dim=12)
  export.export_peft_prompt(prompt=prompt, directory=str(tmp_path), task_type="CAUSAL_LM",
                            num_layers=3, num_attention_heads=2)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "adapter_config.json", "adapter_model.safetensors"]
  config = json.loads((tmp_path / "adapter_config.json").read_text())
  assert {k: config[k] for k in ("peft_type", "task_type", "num_virtual_tokens", "token_dim",
                                 "num_transformer_submodules", "num_layers",
                                 "num_attention_heads")} == {
      "peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 7,
      "token_dim": 12, "num_transformer_submodules": 1, "num_layers": 3,
      "num_attention_heads": 2}
  tensors = safetensors_numpy.load_file(str(tmp_path / "adapter_model.safetensors"))
  assert list(tensors) == ["prompt_embeddings"]
  np.testing.assert_array_equal(tensors["prompt_embeddings"], prompt)
  np.testing.assert_array_equal(export.load_peft_prompt(directory=str(tmp_path)), prompt)


def test_peft_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown PEFT task_type 'SEQ_CLS'"):
    export.export_peft_prompt(prompt=_prompt(), directory=str(tmp_path), task_type="SEQ_CLS",
                              num_layers=2, num_attention_heads=4)
  with pytest.raises(FileNotFoundError, match="adapter_config.json does not exist"):
    export.load_peft_prompt(directory=str(tmp_path))
  export.export_peft_prompt(prompt=_prompt(), directory=str(tmp_path), num_layers=2,
                            num_attention_heads=4)
  config_path = tmp_path / "adapter_config.json"
  config = json.loads(config_path.read_text())
  config["num_transformer_submodules"] = None  # PEFT's seq2seq default: 2 (decoder prompt too)
  config_path.write_text(json.dumps(config))
  with pytest.raises(ValueError, match="num_transformer_submodules=2; only encoder-side"):
    export.load_peft_prompt(directory=str(tmp_path))
