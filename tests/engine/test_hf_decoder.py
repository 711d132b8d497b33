"""Hugging Face decoder checkpoints: lazy sharded reads, one-sentence refusals, export round trip.

Checkpoints are written here with `safetensors.numpy` from arrays the test keeps, so every value
the importer returns is compared with the array it was written from; the export round trip is
checked by loading the exported folder with `transformers` itself.
"""
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from prompt_tuning.engine import checkpoint_import as ci
from prompt_tuning.engine.importers import hf_decoder
from prompt_tuning.engine.importers.hf_decoder_export import export_hf_decoder
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.models.llama_config import get_llama_config

REPO = pathlib.Path(__file__).resolve().parents[2]
HF_CONFIG = dict(model_type="qwen2", vocab_size=40, hidden_size=16, intermediate_size=24,
                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=4,
                 rms_norm_eps=1e-6, tie_word_embeddings=False)


def write_checkpoint(folder, config=None, *, shards=1, drop=(), reshape=None):
  """Writes config.json and random tensors of the shapes the config implies; returns them."""
  config = dict(HF_CONFIG, **(config or {}))
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(config, f)
  shapes = hf_decoder.expected_shapes(hf_decoder.config_from_hf_decoder(str(folder)))
  rng = np.random.default_rng(0)
  tensors = {name: rng.normal(size=(reshape or {}).get(name, shape)).astype(np.float32)
             for name, shape in shapes.items() if name not in drop}
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    return tensors
  weight_map = {}
  for k in range(shards):
    file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[k::shards]}
    save_file(part, os.path.join(folder, file))
    weight_map.update({n: file for n in part})
  with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  return tensors


def one_sentence(error) -> str:
  message = str(error.value)
  assert "\n" not in message and message.endswith(".") and message.count(". ") == 0, message
  return message


def test_sharded_checkpoint_reads_every_tensor_transposed_and_sliced(tmp_path):
  tensors = write_checkpoint(tmp_path, shards=3)
  reader = ci.open_checkpoint(str(tmp_path))
  assert isinstance(reader, hf_decoder.HFDecoderReader)
  entries = reader.entries()
  assert len(entries) == len(tensors) == 3 + 2 * 12  # embed, norm, head; 12 per layer
  q = tensors["model.layers.1.self_attn.q_proj.weight"]  # [out 16, in 16]
  np.testing.assert_array_equal(reader.read("layers_1/self_attn/q_proj/kernel"), q.T)
  np.testing.assert_array_equal(reader.read("layers_0/self_attn/k_proj/bias"),
                                tensors["model.layers.0.self_attn.k_proj.bias"])
  # A device's slice [rows 4:8, cols 2:10] of our kernel is read as the stored [2:10, 4:8].
  down = tensors["model.layers.0.mlp.down_proj.weight"]  # [16, 24] -> ours [24, 16]
  part = reader.read("layers_0/mlp/down_proj/kernel", (slice(4, 8), slice(2, 10)))
  np.testing.assert_array_equal(part, down.T[4:8, 2:10])


def test_import_fills_the_model_and_runs(tmp_path):
  tensors = write_checkpoint(tmp_path, shards=2)
  config = hf_decoder.config_from_hf_decoder(str(tmp_path))
  assert (config.family, config.qkv_bias, config.num_kv_heads) == ("qwen2", True, 2)
  module = LlamaDecoder(config=config)
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.ones((1, 3), jnp.int32))
  params = ci.import_checkpoint(str(tmp_path), abstract_params=abstract["params"])
  np.testing.assert_array_equal(np.asarray(params["logits_dense"]["kernel"]),
                                tensors["lm_head.weight"].T)
  logits = module.apply({"params": params}, jnp.ones((1, 3), jnp.int32)).logits
  assert logits.shape == (1, 3, 40) and bool(jnp.all(jnp.isfinite(logits)))


def test_unsupported_model_type_is_refused(tmp_path):
  write_checkpoint(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps(dict(config, model_type="bert")))
  with pytest.raises(ValueError) as error:
    ci.open_checkpoint(str(tmp_path))
  assert "model_type 'bert'" in one_sentence(error) and "llama" in str(error.value)
  assert str(tmp_path / "config.json") in str(error.value)


def test_malformed_index_is_refused(tmp_path):
  write_checkpoint(tmp_path, shards=2)
  (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ')
  with pytest.raises(ValueError) as error:
    ci.open_checkpoint(str(tmp_path))
  assert "model.safetensors.index.json is not a JSON object" in one_sentence(error)
  (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ["a"]}')
  with pytest.raises(ValueError, match="has no 'weight_map' object"):
    ci.open_checkpoint(str(tmp_path))


def test_partial_index_names_the_missing_tensor(tmp_path):
  write_checkpoint(tmp_path, shards=2, drop=("model.layers.1.mlp.up_proj.weight",))
  with pytest.raises(ValueError) as error:
    ci.open_checkpoint(str(tmp_path))
  message = one_sentence(error)
  assert message.startswith("Tensor model.layers.1.mlp.up_proj.weight, which config.json "
                            "requires, is in no file of")
  assert "model.safetensors.index.json lacks it" in message


def test_index_pointing_at_the_wrong_shard_is_refused(tmp_path):
  write_checkpoint(tmp_path, shards=2)
  index_path = tmp_path / "model.safetensors.index.json"
  index = json.loads(index_path.read_text())
  name = "model.norm.weight"
  other = next(f for f in set(index["weight_map"].values()) if f != index["weight_map"][name])
  index["weight_map"][name] = other
  index_path.write_text(json.dumps(index))
  with pytest.raises(ValueError) as error:
    ci.open_checkpoint(str(tmp_path))
  assert one_sentence(error) == (f"Shard {tmp_path / other} lacks tensor {name}, which "
                                 f"{index_path} places there.")


def test_missing_shard_is_refused(tmp_path):
  write_checkpoint(tmp_path, shards=3)
  os.remove(tmp_path / "model-00002-of-00003.safetensors")
  with pytest.raises(FileNotFoundError) as error:
    ci.open_checkpoint(str(tmp_path))
  message = one_sentence(error)
  assert f"Shard {tmp_path / 'model-00002-of-00003.safetensors'}" in message
  assert "does not exist" in message and "for tensor model." in message


def test_shape_mismatch_names_file_and_tensor(tmp_path):
  name = "model.layers.0.self_attn.k_proj.weight"
  write_checkpoint(tmp_path, reshape={name: (12, 16)})
  with pytest.raises(ValueError) as error:
    ci.open_checkpoint(str(tmp_path))
  assert one_sentence(error) == (f"Tensor {name} in {tmp_path / 'model.safetensors'} has shape "
                                 "(12, 16) but config.json implies (8, 16).")


def test_t5_folders_still_open_with_the_t5_reader(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))
  save_file({"shared.weight": np.zeros((4, 2), np.float32)}, str(tmp_path / "model.safetensors"))
  reader = ci.open_checkpoint(str(tmp_path))
  assert type(reader).__name__ == "HFT5Reader"
  assert list(reader.entries()) == ["token_embedder/embedding"]


@pytest.mark.slow  # PyTorch round trip
@pytest.mark.parametrize("preset, shard_bytes", [("llama_tiny", 1 << 30),
                                                 ("gemma2_tiny", 40_000)])
def test_export_round_trips_through_transformers_and_our_importer(tmp_path, preset,
                                                                  shard_bytes):
  torch = pytest.importorskip("torch", reason="the round trip loads the export with torch")
  transformers = pytest.importorskip("transformers", reason="the round trip needs transformers")
  config = get_llama_config(preset, vocab_size=48)
  module = LlamaDecoder(config=config)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 48, (2, 7)), jnp.int32)
  params = module.init(jax.random.PRNGKey(1), tokens)["params"]
  params = jax.tree_util.tree_map(lambda x: getattr(x, "value", x), params,
                                  is_leaf=lambda x: hasattr(x, "value"))
  folder = str(tmp_path / "export")
  export_hf_decoder(params=params, config=config, directory=folder, max_shard_bytes=shard_bytes)
  sharded = os.path.isfile(os.path.join(folder, "model.safetensors.index.json"))
  assert sharded == (shard_bytes < 1 << 20)

  hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    expected = hf_model(input_ids=torch.from_numpy(np.asarray(tokens).astype(np.int64))).logits
  ours = module.apply({"params": params}, tokens).logits
  assert np.abs(np.asarray(ours) - expected.numpy()).max() < 1e-4

  assert hf_decoder.config_from_hf_decoder(folder) == config
  abstract = jax.eval_shape(module.init, jax.random.PRNGKey(0), tokens)["params"]
  back = ci.import_checkpoint(folder, abstract_params=abstract)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(back)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))

  with pytest.raises(FileExistsError, match="already exists"):
    export_hf_decoder(params=params, config=config, directory=folder)


def test_export_refuses_what_the_family_cannot_express(tmp_path):
  config = get_llama_config("llama_tiny", qkv_bias=True)
  with pytest.raises(ValueError, match=r"^A llama config.json cannot express qkv_bias=True\.$"):
    export_hf_decoder(params={}, config=config, directory=str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


_SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from prompt_tuning.engine import checkpoint_import as ci
from prompt_tuning.engine.importers import base

reads = []
original_place = base.place
def counting_place(read_slice, request):
  def counted(index):
    reads.append([s.stop - s.start for s in index])
    return read_slice(index)
  return original_place(counted, request)
base.place = counting_place

mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
abstract = {"layers_0": {"mlp": {"down_proj": {"kernel": jax.ShapeDtypeStruct((24, 16),
                                                                                np.float32)}}}}
sharding = NamedSharding(mesh, P("model", "data"))
params = ci.import_checkpoint(sys.argv[1], abstract_params=abstract, shardings=sharding)
array = params["layers_0"]["mlp"]["down_proj"]["kernel"]
print("REPORT" + json.dumps({"shards": len(array.addressable_shards), "reads": sorted(reads),
                             "sharding_equal": array.sharding == sharding,
                             "values": np.asarray(array).tolist()}))
"""


@pytest.mark.slow  # a subprocess with 8 CPU devices
def test_sharded_import_reads_only_each_devices_slice(tmp_path):
  tensors = write_checkpoint(tmp_path / "hf", shards=2)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "hf")],
                          capture_output=True, text=True, env=env, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.split("REPORT", 1)[1])
  # Our [24, 16] kernel over (model=2, data=4): eight distinct [12, 4] reads, each a slice of
  # the stored, transposed [16, 24] tensor; never the whole tensor.
  assert report["shards"] == 8 and report["sharding_equal"]
  assert report["reads"] == [[12, 4]] * 8
  np.testing.assert_array_equal(np.asarray(report["values"], np.float32),
                                tensors["model.layers.0.mlp.down_proj.weight"].T)
