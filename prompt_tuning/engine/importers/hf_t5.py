"""Reads Hugging Face T5 / mT5 checkpoints (safetensors + config.json) under our names.

A folder holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> shard file). PyTorch stores linear
weights as `[out, in]`; our kernels are `[in, out]`, so every projection is transposed, and the
position bias table `[buckets, heads]` becomes `[heads, buckets]`. Transposed reads stay lazy: a
device's slice `[rows, cols]` of our kernel is the slice `[cols, rows]` of the stored tensor.

Hugging Face name (`i` = block)                      -> ours
  shared.weight (else encoder.embed_tokens.weight)   -> token_embedder/embedding
  S.block.0.layer.0.SelfAttention.relative_attention_bias.weight (T)
                                                     -> S/relpos_bias/rel_embedding
  encoder.block.i.layer.0.layer_norm.weight          -> encoder/layers_i/pre_attention_layer_norm
  encoder.block.i.layer.0.SelfAttention.{q,k,v,o} (T)
                                         -> encoder/layers_i/attention/{query,key,value,out}
  encoder.block.i.layer.1.layer_norm.weight          -> encoder/layers_i/pre_mlp_layer_norm
  encoder.block.i.layer.1.DenseReluDense.{wi,wi_0,wi_1,wo} (T) -> encoder/layers_i/mlp/...
  decoder.block.i.layer.0.{layer_norm, SelfAttention.*}
      -> decoder/layers_i/{pre_self_attention_layer_norm, self_attention}
  decoder.block.i.layer.1.{layer_norm, EncDecAttention.*}
      -> decoder/layers_i/{pre_cross_attention_layer_norm, encoder_decoder_attention}
  decoder.block.i.layer.2.{layer_norm, DenseReluDense.*}
      -> decoder/layers_i/{pre_mlp_layer_norm, mlp}
  {encoder,decoder}.final_layer_norm.weight          -> encoder/encoder_norm, decoder/decoder_norm
  lm_head.weight (T)                                 -> decoder/logits_dense/kernel

S = encoder or decoder; norms end in `/scale`, projections in `.weight` -> `/kernel`.
(T) = transposed. Tensors without a row here (e.g. `decoder.embed_tokens.weight`) are not
offered; `lm_head.weight` is simply unused by a model with tied logits, which has no
`logits_dense`.
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Mapping, Optional, Tuple

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from prompt_tuning.engine.importers import base
from prompt_tuning.models.config import ModelConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}
_ENCODER_SUBLAYERS = {"0": ("pre_attention_layer_norm", "attention"),
                      "1": ("pre_mlp_layer_norm", "mlp")}
_DECODER_SUBLAYERS = {"0": ("pre_self_attention_layer_norm", "self_attention"),
                      "1": ("pre_cross_attention_layer_norm", "encoder_decoder_attention"),
                      "2": ("pre_mlp_layer_norm", "mlp")}
_BLOCK = re.compile(r"(encoder|decoder)\.block\.(\d+)\.layer\.(\d)\.(.+)\.weight")
_FIXED = {
    "shared.weight": ("token_embedder/embedding", False),
    "encoder.final_layer_norm.weight": ("encoder/encoder_norm/scale", False),
    "decoder.final_layer_norm.weight": ("decoder/decoder_norm/scale", False),
    "lm_head.weight": ("decoder/logits_dense/kernel", True),
}
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


def our_name(hf_name: str) -> Optional[Tuple[str, bool]]:
  """(our parameter path, transposed?) for a Hugging Face T5 tensor name; None if unused."""
  if hf_name in _FIXED:
    return _FIXED[hf_name]
  match = _BLOCK.fullmatch(hf_name)
  if not match:
    return None
  stack, block, sublayer, rest = match.groups()
  table = _ENCODER_SUBLAYERS if stack == "encoder" else _DECODER_SUBLAYERS
  if sublayer not in table:
    return None
  norm, body = table[sublayer]
  prefix = f"{stack}/layers_{block}"
  if rest == "layer_norm":
    return f"{prefix}/{norm}/scale", False
  parts = rest.split(".")
  if len(parts) != 2:
    return None
  module, leaf = parts
  if leaf == "relative_attention_bias":
    # Only the first block of each stack owns the (shared) bias table.
    return (f"{stack}/relpos_bias/rel_embedding", True) if block == "0" else None
  if module in ("SelfAttention", "EncDecAttention") and leaf in _ATTENTION:
    return f"{prefix}/{body}/{_ATTENTION[leaf]}/kernel", True
  if module == "DenseReluDense" and leaf in ("wi", "wi_0", "wi_1", "wo"):
    return f"{prefix}/mlp/{leaf}/kernel", True
  return None


def _tensor_files(directory: str) -> Dict[str, str]:
  """Tensor name -> safetensors file, from the shard index or the single weights file."""
  index_path = os.path.join(directory, INDEX_FILE)
  if os.path.isfile(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
    if not isinstance(weight_map, dict):
      raise ValueError(f"{index_path} has no 'weight_map' object.")
    return {name: os.path.join(directory, shard) for name, shard in weight_map.items()}
  path = os.path.join(directory, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No {WEIGHTS_FILE} or {INDEX_FILE} in {directory}.")
  with safe_open(path, framework="np") as f:
    return {name: path for name in f.keys()}


class HFT5Reader(base.CheckpointReader):
  """Lazy, slice-wise reads of a Hugging Face T5/mT5 safetensors checkpoint."""

  format_name = "Hugging Face safetensors"

  def __init__(self, path: str):
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Hugging Face checkpoint folder {path} does not exist.")
    self.path = path
    files = _tensor_files(path)
    self._sources: Dict[str, Tuple[str, bool]] = {}  # ours -> (hf name, transposed)
    for hf_name in sorted(files):
      mapped = our_name(hf_name)
      if mapped and mapped[0] not in self._sources:
        self._sources[mapped[0]] = (hf_name, mapped[1])
    if ("token_embedder/embedding" not in self._sources
        and "encoder.embed_tokens.weight" in files):
      self._sources["token_embedder/embedding"] = ("encoder.embed_tokens.weight", False)
    self._files = files
    self._handles: Dict[Tuple[str, str], object] = {}
    self._infos = {name: self._info(hf_name, transposed)
                   for name, (hf_name, transposed) in self._sources.items()}

  def _handle(self, hf_name: str, framework: str = "np"):
    """An open safetensors file (memory-mapped; reading a slice touches only its bytes)."""
    key = (self._files[hf_name], framework)
    if key not in self._handles:
      self._handles[key] = safe_open(key[0], framework=framework)
    return self._handles[key]

  def _info(self, hf_name: str, transposed: bool) -> base.ArrayInfo:
    tensor = self._handle(hf_name).get_slice(hf_name)
    shape = tuple(tensor.get_shape())
    dtype = _SAFETENSORS_DTYPES.get(tensor.get_dtype())
    if dtype is None:
      raise ValueError(f"Tensor {hf_name} in {self.path} has unsupported dtype "
                       f"{tensor.get_dtype()}.")
    return base.ArrayInfo(shape=shape[::-1] if transposed else shape,
                          dtype=np.dtype(jnp.dtype(dtype)))

  def entries(self) -> Mapping[str, base.ArrayInfo]:
    return self._infos

  def read(self, name: str, index: Optional[base.Index] = None) -> np.ndarray:
    hf_name, transposed = self._sources[name]
    info = self._infos[name]
    index = base.normalize_index(index, info.shape)
    # numpy has no bfloat16 of its own, so such tensors are read through jax and converted.
    framework = "flax" if info.dtype == base.BFLOAT16 else "np"
    tensor = self._handle(hf_name, framework).get_slice(hf_name)
    if transposed:
      return np.ascontiguousarray(np.asarray(tensor[index[::-1]]).T)
    return np.asarray(tensor[index])


def _mlp_activations(feed_forward_proj: str) -> Tuple[str, ...]:
  known = {"relu": ("relu",), "gated-gelu": ("gelu", "linear"), "gated-relu": ("relu", "linear")}
  if feed_forward_proj not in known:
    raise ValueError(f"feed_forward_proj {feed_forward_proj!r} is not supported; expected one of "
                     f"{sorted(known)}.")
  return known[feed_forward_proj]


def config_from_hf(config_json_path: str, **overrides) -> ModelConfig:
  """Our `ModelConfig` for a Hugging Face T5/mT5 `config.json` (a file or its folder).

  Tied logits: older configs say `tie_word_embeddings: false` for T5 1.1 / mT5; configs written
  by transformers 5.x always say `true` and carry the real choice in `scale_decoder_outputs`
  (false for untied v1.1 weights), so both must be true for `logits_via_embedding`.
  `overrides` replace any resulting field (e.g. `dtype='bfloat16'`).
  """
  if os.path.isdir(config_json_path):
    config_json_path = os.path.join(config_json_path, CONFIG_FILE)
  if not os.path.isfile(config_json_path):
    raise FileNotFoundError(f"Hugging Face config {config_json_path} does not exist.")
  with open(config_json_path) as f:
    hf = json.load(f)
  model_type = hf.get("model_type")
  if model_type not in ("t5", "mt5"):
    raise ValueError(f"{config_json_path} describes model_type {model_type!r}; only 't5' and "
                     "'mt5' encoder-decoders can be imported.")
  missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads", "num_layers")
             if k not in hf]
  if missing:
    raise ValueError(f"{config_json_path} lacks the T5 fields {', '.join(missing)}.")
  tied = (hf.get("tie_word_embeddings", True) is not False
          and hf.get("scale_decoder_outputs", True) is not False)
  fields = dict(
      vocab_size=hf["vocab_size"],
      emb_dim=hf["d_model"],
      num_heads=hf["num_heads"],
      head_dim=hf["d_kv"],
      mlp_dim=hf["d_ff"],
      num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
      mlp_activations=_mlp_activations(hf.get("feed_forward_proj", "relu")),
      logits_via_embedding=tied,
      dropout_rate=float(hf.get("dropout_rate", 0.1)),
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
  )
  fields.update(overrides)
  return ModelConfig(**fields)
