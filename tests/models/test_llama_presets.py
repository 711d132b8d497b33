"""The rotary decoder's gin files and big-model partitioning presets.

Model files must build the preset they name; the partitioning presets must shard every large
parameter of the 8B / 70B models over both mesh axes with dimensions that divide, leaving each
device a small slice of the frozen weights. Parameter shapes come from `jax.eval_shape`, so no
weights are allocated.
"""
import json
import math
from pathlib import Path

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec
import pytest
import seqio

from prompt_tuning.engine import gin_utils
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import partitioning
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.models.llama_config import get_llama_config

REPO = Path(__file__).resolve().parents[2]
SIZES = ("llama2_7b", "llama2_70b", "llama3_8b", "llama3_1_8b", "llama3_1_70b", "mistral_7b",
         "qwen2_7b", "qwen2_72b", "gemma_2b", "gemma_7b", "gemma2_2b", "gemma2_9b")
TINY = ("llama", "mistral", "qwen2", "gemma", "gemma2")
# Published parameter counts (billions), a check on the preset shapes.
BILLIONS = {"llama2_7b": 6.74, "llama3_1_8b": 8.03, "llama3_1_70b": 70.6, "mistral_7b": 7.25,
            "qwen2_7b": 7.62, "qwen2_72b": 72.7, "gemma_7b": 8.54, "gemma2_9b": 9.24,
            "gemma2_2b": 2.61, "gemma_2b": 2.51, "llama2_70b": 69.0}
EOS = {**{s: 2 for s in ("llama2_7b", "llama2_70b", "mistral_7b")},
       **{s: 128001 for s in ("llama3_8b", "llama3_1_8b", "llama3_1_70b")},
       **{s: 151643 for s in ("qwen2_7b", "qwen2_72b")},
       **{s: 1 for s in ("gemma_2b", "gemma_7b", "gemma2_2b", "gemma2_9b")}}
# preset file -> (mesh size, HBM per device in GiB, models it is meant for)
PARTITIONING = {
    "fsdp_tp_8b_v5e_16.gin": (16, 16, ("llama3_1_8b", "mistral_7b", "qwen2_7b", "gemma2_9b")),
    "fsdp_tp_8b_v4_32.gin": (16, 32, ("llama3_1_8b", "gemma_7b")),
    "fsdp_tp_70b_v5e_64.gin": (64, 16, ("llama3_1_70b", "qwen2_72b", "llama2_70b")),
    "fsdp_tp_70b_v4_128.gin": (64, 32, ("llama3_1_70b",)),
}


@pytest.fixture(autouse=True)
def clean_gin():
  gin_utils.register_configurables()
  gin.clear_config()
  yield
  gin.clear_config()


def build(files, bindings=()):
  gin_utils.parse_gin(gin_files=files, gin_bindings=list(bindings))
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.mark.parametrize("size", SIZES)
def test_size_file_builds_its_preset_in_bfloat16(size):
  model = build([f"gin/models/{size}.gin"])
  assert isinstance(model, model_wrappers.DecoderOnlyModel)
  assert isinstance(model.module, LlamaDecoder) and model.module.input_hook is None
  assert model.module.config == get_llama_config(size, dtype="bfloat16", param_dtype="bfloat16")
  assert model.eos_id == EOS[size]


@pytest.mark.parametrize("family", TINY)
def test_tiny_file_builds_a_byte_level_model(family):
  model = build([f"gin/models/{family}_tiny.gin"])
  assert model.module.config == get_llama_config(f"{family}_tiny", vocab_size=260)
  assert isinstance(gin.query_parameter("%VOCABULARY").scoped_configurable_fn(),
                    seqio.ByteVocabulary)


def test_hf_decoder_file_reads_the_architecture_from_config_json(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps(dict(
      model_type="mistral", vocab_size=50, hidden_size=16, intermediate_size=24,
      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1, sliding_window=7)))
  model = build(["gin/models/hf_decoder.gin"],
                [f"INITIAL_CHECKPOINT_PATH={str(tmp_path)!r}", "EOS_ID=2"])
  config = model.module.config
  assert (config.family, config.num_decoder_layers, config.num_kv_heads, config.head_dim,
          config.sliding_window, config.dtype) == ("mistral", 3, 1, 4, 7, "bfloat16")


def abstract_params(preset):
  module = LlamaDecoder(config=get_llama_config(preset, param_dtype="bfloat16"))
  return jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.ones((1, 2), jnp.int32))["params"]


@pytest.mark.slow  # traces eleven 2B-72B models
@pytest.mark.parametrize("preset", sorted(BILLIONS))
def test_preset_has_the_published_parameter_count(preset):
  count = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(
      nn.meta.unbox(abstract_params(preset))))
  assert abs(count / 1e9 - BILLIONS[preset]) < 0.01 * BILLIONS[preset]


@pytest.mark.slow  # traces the 8B and 70B models
@pytest.mark.parametrize("name", sorted(PARTITIONING))
def test_big_model_preset_shards_parameters_over_both_axes(name):
  devices, hbm_gib, presets = PARTITIONING[name]
  gin.parse_config_file(str(REPO / "gin" / "partitioning" / name))
  mesh_config = gin.get_configurable("partitioning.MeshConfig")()
  sizes = dict(zip(mesh_config.axis_names, mesh_config.mesh_shape(num_devices=devices)))
  assert sizes["data"] > 1 and sizes["model"] > 1
  rules = mesh_config.axis_rules()
  for preset in presets:
    params = abstract_params(preset)
    specs = nn.get_partition_spec(params)
    per_device = total = 0
    for (path, leaf), spec in zip(
        jax.tree_util.tree_leaves_with_path(nn.meta.unbox(params)),
        jax.tree_util.tree_leaves(specs, is_leaf=lambda x: isinstance(x, PartitionSpec))):
      mesh_axes = nn.logical_to_mesh_axes(spec, rules)
      split = 1
      for dim, axis in zip(leaf.shape, mesh_axes):
        if axis is not None:
          assert dim % sizes[axis] == 0, (preset, path, leaf.shape, mesh_axes)
          split *= sizes[axis]
      if leaf.size > 1_000_000:  # every big parameter uses both axes
        assert {"data", "model"} <= set(mesh_axes), (preset, path, mesh_axes)
      total += leaf.size * 2
      per_device += leaf.size * 2 / split
    assert per_device < 1.01 * total / devices + 2e6  # only norms stay partly replicated
    # The frozen weights take under a quarter of HBM (8B on v5e-16: 1.0 GB; 70B on v5e-64: 2.2 GB).
    assert per_device < hbm_gib * 2 ** 30 / 4


def test_every_rotary_model_file_is_tested_here():
  including = {p.name for p in (REPO / "gin" / "models").glob("*.gin")
               if "include 'gin/models/rotary_decoder.gin'" in p.read_text()}
  assert including == ({f"{s}.gin" for s in SIZES} | {f"{f}_tiny.gin" for f in TINY}
                       | {"hf_decoder.gin"})
