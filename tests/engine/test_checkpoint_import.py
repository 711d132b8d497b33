"""Specification of `prompt_tuning.engine.checkpoint_import`.

Values are checked against reads that do not go through the importer: the T5X fixture's zarr
chunks are gunzipped and decoded with numpy, its inline arrays are decoded from the raw msgpack,
Hugging Face tensors are compared with the numpy arrays they were written from.
"""
import gzip
import json
import os
import pathlib
import subprocess
import sys
import textwrap

from flax import serialization
from flax import traverse_util
import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file

from prompt_tuning.engine import checkpoint_import as ci
from prompt_tuning.engine.importers import hf_t5
from prompt_tuning.models.config import get_config
from prompt_tuning.models.t5 import EncoderDecoder

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests/fixtures/t5x_reference/test_t5_1_1_tiny/checkpoint_3"


# ---------------------------------------------------------------- independent readers


def zarr_by_hand(folder: pathlib.Path) -> np.ndarray:
  """Reads a gzip-compressed zarr v2 array chunk by chunk with gzip + numpy."""
  meta = json.loads((folder / ".zarray").read_text())
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C" and meta["filters"] is None
  shape, chunks, dtype = meta["shape"], meta["chunks"], np.dtype(meta["dtype"])
  out = np.full(shape, np.nan, dtype)
  for chunk_file in folder.iterdir():
    if chunk_file.name.startswith("."):
      continue
    grid = [int(i) for i in chunk_file.name.split(".")]
    data = np.frombuffer(gzip.decompress(chunk_file.read_bytes()), dtype).reshape(chunks)
    start = [g * c for g, c in zip(grid, chunks)]
    stop = [min(s + c, n) for s, c, n in zip(start, chunks, shape)]
    out[tuple(slice(a, b) for a, b in zip(start, stop))] = data[
        tuple(slice(0, b - a) for a, b in zip(start, stop))]
  return out


def msgpack_by_hand(path: pathlib.Path) -> dict:
  """Decodes the msgpack file; arrays are ext type 1 holding (shape, dtype name, bytes)."""
  def ext_hook(code, data):
    assert code == 1, code
    shape, dtype, buffer = msgpack.unpackb(data)
    return np.frombuffer(buffer, np.dtype(dtype)).reshape(shape)
  return msgpack.unpackb(path.read_bytes(), ext_hook=ext_hook, strict_map_key=False)


def flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and not {"driver", "kvstore"} <= set(value):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = value
  return out


@pytest.fixture(scope="module")
def fixture_arrays():
  """name -> array of the fixture's parameters, read without the importer."""
  target = msgpack_by_hand(FIXTURE / "checkpoint")["optimizer"]["target"]
  arrays = {}
  for name, value in flatten(target).items():
    if isinstance(value, dict):
      arrays[name] = zarr_by_hand(FIXTURE / value["kvstore"]["path"])
    else:
      arrays[name] = value
  return arrays


def tiny_abstract_params(config, **overrides):
  model = EncoderDecoder(config=config.replace(**overrides) if overrides else config)
  tokens = jnp.ones((1, 4), jnp.int32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens, tokens)["params"]


# ---------------------------------------------------------------- T5X legacy


def test_fixture_is_detected_as_t5x_legacy():
  assert ci.detect_format(str(FIXTURE)) == "t5x"
  assert ci.detect_format(str(FIXTURE / "checkpoint")) == "t5x"


def test_every_fixture_array_reads_as_written(fixture_arrays):
  reader = ci.open_checkpoint(str(FIXTURE))
  entries = reader.entries()
  assert set(entries) == set(fixture_arrays)
  assert len(entries) == 52  # 2+2 layers of a gated T5 1.1 with untied logits
  assert entries["token_embedder/embedding"].shape == (32128, 4)
  assert entries["decoder/logits_dense/kernel"].shape == (4, 32128)
  # [heads, buckets]: the fixture was trained with 2 heads and 4 relative position buckets.
  assert entries["encoder/relpos_bias/rel_embedding"].shape == (2, 4)
  for name, expected in fixture_arrays.items():
    got = ci.read_checkpoint_array(str(FIXTURE), name)
    assert got.dtype == np.float32 and got.shape == expected.shape, name
    np.testing.assert_array_equal(got, expected, err_msg=name)


def test_fixture_optimizer_step_is_readable():
  assert int(ci.read_checkpoint_array(str(FIXTURE), "step", section="state")) == 3


def test_fixture_loads_into_tiny_preset(fixture_arrays):
  config = get_config("t5_1_1_tiny")
  abstract = tiny_abstract_params(config)
  params = ci.import_checkpoint(str(FIXTURE), abstract_params=abstract)
  flat = traverse_util.flatten_dict(params, sep="/")
  assert set(flat) == set(fixture_arrays)
  for name, value in flat.items():
    assert isinstance(value, jax.Array)
    np.testing.assert_array_equal(np.asarray(value), fixture_arrays[name], err_msg=name)
  # The restored parameters run: finite logits over the full vocabulary.
  model = EncoderDecoder(config=config)
  logits = jax.jit(model.apply)({"params": params}, jnp.array([[5, 9, 1]]), jnp.array([[0, 7]]))
  assert logits.shape == (1, 2, 32128) and bool(jnp.all(jnp.isfinite(logits)))


def test_shape_mismatch_names_parameter_and_checkpoint():
  abstract = tiny_abstract_params(get_config("t5_1_1_tiny"), mlp_dim=16)
  with pytest.raises(ValueError, match=r"Parameter 'decoder/layers_0/mlp/wi_0/kernel' has shape "
                     r"\(4, 8\) in checkpoint .*checkpoint_3 but the model expects \(4, 16\)\."):
    ci.import_checkpoint(str(FIXTURE), abstract_params=abstract)


def test_missing_parameter_is_one_clear_error():
  # A ReLU MLP needs `mlp/wi`, which the gated fixture lacks in all 2 + 2 layers.
  abstract = tiny_abstract_params(get_config("t5_1_1_tiny"), mlp_activations=("relu",))
  with pytest.raises(ValueError) as error:
    ci.import_checkpoint(str(FIXTURE), abstract_params=abstract)
  message = str(error.value)
  assert message.startswith("4 parameters are missing from checkpoint ")
  assert "'decoder/layers_0/mlp/wi/kernel'" in message and "checkpoint_3" in message
  assert message.count(".") >= 1 and "\n" not in message


def test_allow_missing_returns_none_for_the_initialiser(fixture_arrays):
  abstract = tiny_abstract_params(get_config("t5_1_1_tiny"))
  abstract["input_hook"] = {"prompt": jax.ShapeDtypeStruct((3, 4), jnp.float32)}
  with pytest.raises(ValueError, match="Parameter 'input_hook/prompt' is missing"):
    ci.import_checkpoint(str(FIXTURE), abstract_params=abstract)
  params = ci.import_checkpoint(str(FIXTURE), abstract_params=abstract,
                                allow_missing=r"^input_hook/")
  assert params["input_hook"]["prompt"] is None
  initialised = dict(params, input_hook={"prompt": jnp.full((3, 4), 0.5)})
  filled = ci.fill_missing(params, initialised)
  np.testing.assert_array_equal(filled["input_hook"]["prompt"], np.full((3, 4), 0.5))
  np.testing.assert_array_equal(filled["token_embedder"]["embedding"],
                                fixture_arrays["token_embedder/embedding"])


def test_dtype_mismatch_needs_explicit_cast(fixture_arrays):
  abstract = tiny_abstract_params(get_config("t5_1_1_tiny", param_dtype="bfloat16"))
  with pytest.raises(ValueError, match=r"is float32 in checkpoint .* expects bfloat16; pass "
                     r"dtype= to cast"):
    ci.import_checkpoint(str(FIXTURE), abstract_params=abstract)
  params = ci.import_checkpoint(str(FIXTURE), abstract_params=abstract, dtype=jnp.bfloat16)
  embedding = params["token_embedder"]["embedding"]
  assert embedding.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      np.asarray(embedding),
      fixture_arrays["token_embedder/embedding"].astype(jnp.bfloat16))


def test_legacy_bfloat16_zarr_array(tmp_path):
  """T5X (format version 3) writes bfloat16 parameters as native bfloat16 zarr arrays."""
  import tensorstore as ts  # pylint: disable=import-outside-toplevel
  values = (np.arange(12, dtype=np.float32).reshape(3, 4) / 7).astype(jnp.bfloat16)
  spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": "target.mlp.wo.kernel"},
          "metadata": {"shape": [3, 4], "chunks": [3, 4], "dtype": "bfloat16",
                       "compressor": {"id": "gzip", "level": 1}}}
  store = ts.open(dict(spec, kvstore={"driver": "file",
                                      "path": str(tmp_path / "target.mlp.wo.kernel")}),
                  create=True, open=True).result()
  store.write(values).result()
  contents = {"version": 3, "optimizer": {"target": {"mlp": {"wo": {"kernel": spec}}},
                                          "state": {"step": np.int32(5)}}}
  (tmp_path / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  assert ci.open_checkpoint(str(tmp_path)).entries()["mlp/wo/kernel"].dtype == jnp.bfloat16
  params = ci.import_checkpoint(
      str(tmp_path), dtype=jnp.float32,
      abstract_params={"mlp": {"wo": {"kernel": jax.ShapeDtypeStruct((3, 4), jnp.float32)}}})
  np.testing.assert_array_equal(params["mlp"]["wo"]["kernel"], values.astype(np.float32))


def test_bad_paths_and_formats_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    ci.detect_format(str(tmp_path / "nowhere"))
  with pytest.raises(ValueError, match="Cannot tell the format of checkpoint"):
    ci.detect_format(str(tmp_path))
  with pytest.raises(ValueError, match="Unknown checkpoint format 'pt'"):
    ci.open_checkpoint(str(FIXTURE), format="pt")
  with pytest.raises(ValueError, match="dtype=int32 is not a floating-point"):
    ci.import_checkpoint(str(FIXTURE), abstract_params={}, dtype=jnp.int32)


# ---------------------------------------------------------------- orbax (T5X layout)


def write_t5x_orbax(model_dir, *, step, target, use_ocdbt):
  """Writes a checkpoint the way T5X does with orbax: CheckpointManager, step prefix
  'checkpoint', one PyTree item 'state' = {'target': params, 'state': {step, param_states}}."""
  state = {"target": target,
           "state": {"step": np.int32(step),
                     "param_states": {"token_embedder": {"embedding": {
                         "v": np.ones_like(target["token_embedder"]["embedding"])}}}}}
  options = ocp.CheckpointManagerOptions(step_prefix="checkpoint")
  with ocp.CheckpointManager(
      str(model_dir), options=options,
      item_handlers={"state": ocp.PyTreeCheckpointHandler(use_ocdbt=use_ocdbt)}) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state)))
    manager.wait_until_finished()
  return model_dir / f"checkpoint_{step}"


def nest(flat):
  return traverse_util.unflatten_dict(flat, sep="/")


@pytest.mark.parametrize("use_ocdbt", [False, True], ids=["t5x_zarr_per_array", "ocdbt"])
def test_t5x_orbax_checkpoint_roundtrip(tmp_path, fixture_arrays, use_ocdbt):
  step_dir = write_t5x_orbax(tmp_path, step=3, target=nest(fixture_arrays), use_ocdbt=use_ocdbt)
  assert (step_dir / "_CHECKPOINT_METADATA").is_file()
  assert (step_dir / "state" / "_METADATA").is_file()
  if not use_ocdbt:  # T5X's own setting: one zarr folder per array, named by its tree path
    assert (step_dir / "state" / "target.encoder.layers_0.attention.query.kernel").is_dir()
  for path in (step_dir, step_dir / "state"):
    assert ci.detect_format(str(path)) == "orbax"
  abstract = tiny_abstract_params(get_config("t5_1_1_tiny"))
  params = ci.import_checkpoint(str(step_dir), abstract_params=abstract)
  for name, value in traverse_util.flatten_dict(params, sep="/").items():
    np.testing.assert_array_equal(np.asarray(value), fixture_arrays[name], err_msg=name)
  assert int(ci.read_checkpoint_array(str(step_dir), "step", section="state")) == 3
  np.testing.assert_array_equal(
      ci.read_checkpoint_array(str(step_dir), "encoder/relpos_bias/rel_embedding"),
      fixture_arrays["encoder/relpos_bias/rel_embedding"])
  with pytest.raises(ValueError, match="has shape \\(32128, 4\\) in checkpoint .*state but"):
    ci.import_checkpoint(
        str(step_dir),
        abstract_params={"token_embedder": {"embedding": jax.ShapeDtypeStruct((100, 4),
                                                                              jnp.float32)}})


def test_plain_orbax_params_tree_gives_single_arrays(tmp_path):
  """Any orbax PyTree of a params collection works, e.g. a saved prompt to initialise from."""
  prompt = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "prompt_ckpt", {"params": {"input_hook": {"prompt": prompt}}})
  assert ci.detect_format(str(tmp_path / "prompt_ckpt")) == "orbax"
  np.testing.assert_array_equal(
      ci.read_checkpoint_array(str(tmp_path / "prompt_ckpt"), "input_hook/prompt"), prompt)


# ---------------------------------------------------------------- Hugging Face safetensors

HF_CONFIG = dict(model_type="t5", vocab_size=11, d_model=4, d_kv=3, d_ff=5, num_heads=2,
                 num_layers=2, num_decoder_layers=1, relative_attention_num_buckets=6,
                 relative_attention_max_distance=12, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.0)


def hf_tensors(config, rng):
  """Random tensors under Hugging Face T5 names and PyTorch layouts ([out, in])."""
  e, hd, f, v = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"], \
      config["vocab_size"]
  gated = config["feed_forward_proj"].startswith("gated")
  shapes = {"shared.weight": (v, e), "encoder.final_layer_norm.weight": (e,),
            "decoder.final_layer_norm.weight": (e,), "lm_head.weight": (v, e)}
  for stack, layers in (("encoder", config["num_layers"]), ("decoder",
                                                             config["num_decoder_layers"])):
    attentions = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
    for i in range(layers):
      block = f"{stack}.block.{i}.layer"
      for j, module in enumerate(attentions):
        shapes[f"{block}.{j}.layer_norm.weight"] = (e,)
        for proj in "qkv":
          shapes[f"{block}.{j}.{module}.{proj}.weight"] = (hd, e)
        shapes[f"{block}.{j}.{module}.o.weight"] = (e, hd)
      ff = len(attentions)
      shapes[f"{block}.{ff}.layer_norm.weight"] = (e,)
      for wi in (("wi_0", "wi_1") if gated else ("wi",)):
        shapes[f"{block}.{ff}.DenseReluDense.{wi}.weight"] = (f, e)
      shapes[f"{block}.{ff}.DenseReluDense.wo.weight"] = (e, f)
    shapes[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
        config["relative_attention_num_buckets"], config["num_heads"])
  return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def write_hf(folder, config, tensors, *, shards=1):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(config))
  names = sorted(tensors)
  if shards == 1:
    save_file(tensors, str(folder / "model.safetensors"))
    return folder
  weight_map = {}
  for s in range(shards):
    file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
    part = {n: tensors[n] for n in names[s::shards]}
    save_file(part, str(folder / file))
    weight_map.update({n: file for n in part})
  (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  return folder


def test_hf_name_mapping_covers_layouts():
  assert hf_t5.our_name("shared.weight") == ("token_embedder/embedding", False)
  assert hf_t5.our_name("encoder.block.3.layer.0.SelfAttention.o.weight") == (
      "encoder/layers_3/attention/out/kernel", True)
  assert hf_t5.our_name("decoder.block.1.layer.1.EncDecAttention.k.weight") == (
      "decoder/layers_1/encoder_decoder_attention/key/kernel", True)
  assert hf_t5.our_name("decoder.block.1.layer.1.layer_norm.weight") == (
      "decoder/layers_1/pre_cross_attention_layer_norm/scale", False)
  assert hf_t5.our_name("decoder.block.0.layer.2.DenseReluDense.wi.weight") == (
      "decoder/layers_0/mlp/wi/kernel", True)
  assert hf_t5.our_name("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight") \
      == ("decoder/relpos_bias/rel_embedding", True)
  assert hf_t5.our_name("decoder.embed_tokens.weight") is None


@pytest.mark.parametrize("shards", [1, 3])
def test_hf_checkpoint_loads_with_transposed_kernels(tmp_path, shards):
  tensors = hf_tensors(HF_CONFIG, np.random.default_rng(0))
  folder = write_hf(tmp_path / "hf", HF_CONFIG, tensors, shards=shards)
  assert ci.detect_format(str(folder)) == "hf"
  config = ci.config_from_hf(str(folder))
  params = ci.import_checkpoint(str(folder), abstract_params=tiny_abstract_params(config))
  enc, dec = params["encoder"], params["decoder"]
  np.testing.assert_array_equal(params["token_embedder"]["embedding"], tensors["shared.weight"])
  np.testing.assert_array_equal(enc["layers_1"]["attention"]["query"]["kernel"],
                                tensors["encoder.block.1.layer.0.SelfAttention.q.weight"].T)
  np.testing.assert_array_equal(enc["layers_1"]["attention"]["out"]["kernel"],
                                tensors["encoder.block.1.layer.0.SelfAttention.o.weight"].T)
  np.testing.assert_array_equal(
      dec["layers_0"]["encoder_decoder_attention"]["value"]["kernel"],
      tensors["decoder.block.0.layer.1.EncDecAttention.v.weight"].T)
  np.testing.assert_array_equal(dec["layers_0"]["mlp"]["wi_1"]["kernel"],
                                tensors["decoder.block.0.layer.2.DenseReluDense.wi_1.weight"].T)
  np.testing.assert_array_equal(dec["layers_0"]["pre_mlp_layer_norm"]["scale"],
                                tensors["decoder.block.0.layer.2.layer_norm.weight"])
  np.testing.assert_array_equal(
      enc["relpos_bias"]["rel_embedding"],
      tensors["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].T)
  np.testing.assert_array_equal(dec["logits_dense"]["kernel"], tensors["lm_head.weight"].T)
  np.testing.assert_array_equal(dec["decoder_norm"]["scale"],
                                tensors["decoder.final_layer_norm.weight"])
  np.testing.assert_array_equal(
      ci.read_checkpoint_array(str(folder), "encoder/layers_0/mlp/wo/kernel"),
      tensors["encoder.block.0.layer.1.DenseReluDense.wo.weight"].T)


def test_hf_bfloat16_tensors_read_and_cast(tmp_path):
  import ml_dtypes  # pylint: disable=import-outside-toplevel
  tensors = hf_tensors(HF_CONFIG, np.random.default_rng(1))
  stored = {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()}
  folder = write_hf(tmp_path / "hf", HF_CONFIG, stored)
  query = ci.read_checkpoint_array(str(folder), "encoder/layers_0/attention/query/kernel")
  assert query.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      query, stored["encoder.block.0.layer.0.SelfAttention.q.weight"].T)
  abstract = tiny_abstract_params(ci.config_from_hf(str(folder)))
  with pytest.raises(ValueError, match="is bfloat16 in checkpoint .* expects float32"):
    ci.import_checkpoint(str(folder), abstract_params=abstract)
  params = ci.import_checkpoint(str(folder), abstract_params=abstract, dtype=jnp.float32)
  kernel = params["decoder"]["layers_0"]["self_attention"]["key"]["kernel"]
  assert kernel.dtype == jnp.float32
  np.testing.assert_array_equal(
      kernel, stored["decoder.block.0.layer.0.SelfAttention.k.weight"].T.astype(np.float32))


def test_hf_tied_model_ignores_lm_head(tmp_path):
  config = dict(HF_CONFIG, feed_forward_proj="relu", tie_word_embeddings=True)
  tensors = hf_tensors(config, np.random.default_rng(2))
  folder = write_hf(tmp_path / "hf", config, tensors)
  model_config = ci.config_from_hf(str(folder))
  assert model_config.logits_via_embedding and model_config.mlp_activations == ("relu",)
  params = ci.import_checkpoint(str(folder), abstract_params=tiny_abstract_params(model_config))
  assert "logits_dense" not in params["decoder"]
  np.testing.assert_array_equal(params["encoder"]["layers_0"]["mlp"]["wi"]["kernel"],
                                tensors["encoder.block.0.layer.1.DenseReluDense.wi.weight"].T)


def test_config_from_hf_translates_fields(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(dict(HF_CONFIG, layer_norm_epsilon=1e-5, dropout_rate=0.1)))
  config = ci.config_from_hf(str(path), dtype="bfloat16")
  assert (config.vocab_size, config.emb_dim, config.num_heads, config.head_dim,
          config.mlp_dim) == (11, 4, 2, 3, 5)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 1)
  assert config.mlp_activations == ("gelu", "linear") and not config.logits_via_embedding
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (6, 12)
  assert config.dropout_rate == 0.1 and config.layer_norm_epsilon == 1e-5
  assert config.dtype == "bfloat16"
  # transformers 5.x writes tie_word_embeddings=true for untied v1.1 and says
  # scale_decoder_outputs=false instead.
  path.write_text(json.dumps(dict(HF_CONFIG, tie_word_embeddings=True,
                                  scale_decoder_outputs=False, model_type="mt5")))
  assert not ci.config_from_hf(str(path)).logits_via_embedding
  path.write_text(json.dumps(dict(HF_CONFIG, feed_forward_proj="gated-silu")))
  with pytest.raises(ValueError, match="feed_forward_proj 'gated-silu' is not supported"):
    ci.config_from_hf(str(path))
  path.write_text(json.dumps(dict(HF_CONFIG, model_type="bart")))
  with pytest.raises(ValueError, match="model_type 'bart'; only 't5' and 'mt5'"):
    ci.config_from_hf(str(path))


# ---------------------------------------------------------------- sharded placement

_SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from flax import traverse_util
    from prompt_tuning.engine import checkpoint_import as ci
    from prompt_tuning.engine.importers import base

    fixture, hf_dir, orbax_dir = sys.argv[1:4]
    reads = []
    original_place = base.place
    def counting_place(read_slice, request):
      def counted(index):
        reads.append([s.stop - s.start for s in index])
        return read_slice(index)
      return original_place(counted, request)
    base.place = counting_place

    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    spec = lambda *a: NamedSharding(mesh, P(*a))
    report = {"devices": jax.device_count()}
    for label, path, name, shape, sharding_spec in (
        ("t5x", fixture, "token_embedder/embedding", (32128, 4), ("data", "model")),
        ("hf", hf_dir, "encoder/layers_0/attention/query/kernel", (4, 8), ("model", "data")),
        ("orbax", orbax_dir, "token_embedder/embedding", (32128, 4), ("data", "model"))):
      reads.clear()
      nest = lambda leaf: traverse_util.unflatten_dict({name: leaf}, sep="/")
      sharding = spec(*sharding_spec)
      params = ci.import_checkpoint(
          path, abstract_params=nest(jax.ShapeDtypeStruct(shape, np.float32)),
          shardings=nest(sharding))
      array = traverse_util.flatten_dict(params, sep="/")[name]
      expected = ci.read_checkpoint_array(path, name)
      shards_ok = all(np.array_equal(np.asarray(s.data), expected[s.index])
                      for s in array.addressable_shards)
      report[label] = {"sharding_equal": array.sharding == sharding,
                       "shards_ok": shards_ok, "values_ok": bool(np.array_equal(array, expected)),
                       "num_shards": len(array.addressable_shards),
                       "reads": sorted(reads)}
    print("REPORT" + json.dumps(report))
""")


@pytest.mark.slow
def test_sharded_load_on_8_devices_reads_only_each_slice(tmp_path, fixture_arrays):
  hf_config = dict(HF_CONFIG, d_kv=4)  # query kernel [E=4, H*D=8]
  hf_dir = write_hf(tmp_path / "hf", hf_config, hf_tensors(hf_config, np.random.default_rng(3)))
  orbax_dir = write_t5x_orbax(tmp_path / "orbax", step=1, target=nest(fixture_arrays),
                              use_ocdbt=True)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, "-c", _SHARDED_SCRIPT, str(FIXTURE), str(hf_dir), str(orbax_dir)],
      capture_output=True, text=True, env=env, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.split("REPORT", 1)[1])
  assert report["devices"] == 8
  for label in ("t5x", "hf", "orbax"):
    entry = report[label]
    assert entry["sharding_equal"] and entry["shards_ok"] and entry["values_ok"], (label, entry)
    assert entry["num_shards"] == 8
  # 32128 x 4 over (data=4, model=2): eight distinct [8032, 2] reads, never the whole table.
  assert report["t5x"]["reads"] == [[8032, 2]] * 8
  # The HF query kernel [4, 8] over (model=2, data=4): eight [2, 2] reads of the stored,
  # transposed [8, 4] tensor.
  assert report["hf"]["reads"] == [[2, 2]] * 8
