"""Reads Hugging Face Llama / Mistral / Qwen2 / Gemma / Gemma 2 checkpoints under our names.

A folder holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. Everything that can be checked without reading weights is
checked when the reader opens, each failure one sentence naming the file and tensor: an
unsupported `model_type`, an index that is not JSON or has no `weight_map`, a shard file that
does not exist, a tensor the index places in a shard that lacks it, a tensor the config needs
that no file holds, and a tensor whose shape differs from what `config.json` implies. Reads stay
lazy and slice-wise (see `hf_t5.HFT5Reader`): each device reads only its slice, transposed
kernels included.

Hugging Face name (`i` = layer)                     -> ours (T = transposed `[out, in]`)
  model.embed_tokens.weight                         -> token_embedder/embedding
  model.layers.i.input_layernorm.weight             -> layers_i/input_layernorm/scale
  model.layers.i.self_attn.{q,k,v,o}_proj.weight (T) -> layers_i/self_attn/{q,k,v,o}_proj/kernel
  model.layers.i.self_attn.{q,k,v}_proj.bias        -> layers_i/self_attn/{q,k,v}_proj/bias
  model.layers.i.{post_attention,pre_feedforward,post_feedforward}_layernorm.weight
                                                    -> layers_i/<same>/scale
  model.layers.i.mlp.{gate,up,down}_proj.weight (T) -> layers_i/mlp/{gate,up,down}_proj/kernel
  model.norm.weight                                 -> final_norm/scale
  lm_head.weight (T)                                -> logits_dense/kernel (untied models)
"""
from __future__ import annotations

import json
import os
import re
from typing import Dict, Mapping, Optional, Tuple

from safetensors import safe_open

from prompt_tuning.engine.importers import hf_t5
from prompt_tuning.models.llama_config import LlamaConfig, RopeScaling

CONFIG_FILE = hf_t5.CONFIG_FILE
WEIGHTS_FILE = hf_t5.WEIGHTS_FILE
INDEX_FILE = hf_t5.INDEX_FILE
MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma", "gemma2")
ENCODER_DECODER_TYPES = ("t5", "mt5")

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_NORMS = ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
          "post_feedforward_layernorm")
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh",
                "gelu_new": "gelu_tanh"}


def our_name(hf_name: str) -> Optional[Tuple[str, bool]]:
  """(our parameter path, transposed?) for a Hugging Face decoder tensor name; None if unused."""
  fixed = {"model.embed_tokens.weight": ("token_embedder/embedding", False),
           "model.norm.weight": ("final_norm/scale", False),
           "lm_head.weight": ("logits_dense/kernel", True)}
  if hf_name in fixed:
    return fixed[hf_name]
  match = _LAYER.fullmatch(hf_name)
  if not match:
    return None
  layer, module, leaf = match.groups()
  prefix = f"layers_{layer}"
  if module in _NORMS and leaf == "weight":
    return f"{prefix}/{module}/scale", False
  parts = module.split(".")
  if len(parts) != 2:
    return None
  if parts[0] == "self_attn" and parts[1] in ("q_proj", "k_proj", "v_proj", "o_proj"):
    return (f"{prefix}/{module.replace('.', '/')}/kernel", True) if leaf == "weight" else (
        f"{prefix}/{module.replace('.', '/')}/bias", False)
  if parts[0] == "mlp" and parts[1] in ("gate_proj", "up_proj", "down_proj") and leaf == "weight":
    return f"{prefix}/mlp/{parts[1]}/kernel", True
  return None


def hf_name(our: str) -> str:
  """The Hugging Face tensor name of one of our parameter paths (inverse of `our_name`)."""
  fixed = {"token_embedder/embedding": "model.embed_tokens.weight",
           "final_norm/scale": "model.norm.weight", "logits_dense/kernel": "lm_head.weight"}
  if our in fixed:
    return fixed[our]
  layer, *rest = our.split("/")
  leaf = {"scale": "weight", "kernel": "weight", "bias": "bias"}[rest[-1]]
  return ".".join(["model", "layers", layer[len("layers_"):]] + rest[:-1] + [leaf])


def expected_shapes(config: LlamaConfig) -> Dict[str, Tuple[int, ...]]:
  """Every Hugging Face tensor the config needs, with its stored (PyTorch) shape."""
  e, d, f, v = config.emb_dim, config.head_dim, config.mlp_dim, config.vocab_size
  q, kv = config.num_heads * d, config.num_kv_heads * d
  shapes = {"model.embed_tokens.weight": (v, e), "model.norm.weight": (e,)}
  if not config.tie_word_embeddings:
    shapes["lm_head.weight"] = (v, e)
  norms = _NORMS if config.sandwich_norms else _NORMS[:2]
  for i in range(config.num_decoder_layers):
    p = f"model.layers.{i}."
    shapes.update({p + n + ".weight": (e,) for n in norms})
    shapes.update({p + "self_attn.q_proj.weight": (q, e), p + "self_attn.k_proj.weight": (kv, e),
                   p + "self_attn.v_proj.weight": (kv, e), p + "self_attn.o_proj.weight": (e, q),
                   p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e),
                   p + "mlp.down_proj.weight": (e, f)})
    if config.qkv_bias:
      shapes.update({p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                     p + "self_attn.v_proj.bias": (kv,)})
  return shapes


# ------------------------------------------------------------------------------------------------
# config.json


def read_config_json(path: str) -> Tuple[str, dict]:
  """(path of config.json, its contents) for a folder or the file itself."""
  if os.path.isdir(path):
    path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Hugging Face config {path} does not exist.")
  try:
    with open(path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"Hugging Face config {path} is not valid JSON ({e}).") from None
  if not isinstance(hf, dict):
    raise ValueError(f"Hugging Face config {path} is not a JSON object.")
  return path, hf


def _rope(hf: dict, path: str) -> Tuple[float, RopeScaling]:
  """RoPE base and scaling from `rope_parameters` (transformers 5) or `rope_theta` +
  `rope_scaling` (older files)."""
  params = dict(hf.get("rope_scaling") or {})
  params.update(hf.get("rope_parameters") or {})
  theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
  rope_type = params.get("rope_type", params.get("type", "default"))
  if rope_type not in ("default", "linear", "llama3"):
    raise ValueError(f"{path} uses RoPE type {rope_type!r}; only 'default', 'linear' and "
                     "'llama3' are supported.")
  fields = {k: params[k] for k in ("factor", "low_freq_factor", "high_freq_factor",
                                   "original_max_position_embeddings") if k in params}
  return theta, RopeScaling(rope_type=rope_type, **fields)


def _sliding(hf: dict, model_type: str, layers: int):
  """(window, tuple of sliding layer indices) from `layer_types` or the family's rule."""
  window = hf.get("sliding_window")
  if model_type == "qwen2" and not hf.get("use_sliding_window", False):
    window = None
  layer_types = hf.get("layer_types")
  if window is None:
    return None, None
  if layer_types:
    return window, tuple(i for i, t in enumerate(layer_types) if t == "sliding_attention")
  if model_type == "gemma2":
    return window, tuple(range(0, layers, 2))
  if model_type == "qwen2":
    return window, tuple(range(hf.get("max_window_layers", layers), layers))
  return window, None


def _bos(hf: dict, path: str) -> Optional[int]:
  """The config's `bos_token_id` (None when it has none)."""
  bos = hf.get("bos_token_id")
  if isinstance(bos, list) and len(bos) == 1:
    bos = bos[0]
  if bos is not None and (not isinstance(bos, int) or isinstance(bos, bool)):
    raise ValueError(f"{path} has bos_token_id {bos!r}; expected one token id.")
  return bos


def config_from_hf_decoder(config_json_path: str, **overrides) -> LlamaConfig:
  """Our `LlamaConfig` for a Hugging Face decoder `config.json` (a file or its folder).

  `overrides` replace any resulting field (e.g. `dtype='bfloat16'`).
  """
  path, hf = read_config_json(config_json_path)
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise ValueError(f"{path} describes model_type {model_type!r}; only {', '.join(MODEL_TYPES)} "
                     "decoder-only models can be imported.")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if k not in hf]
  if missing:
    raise ValueError(f"{path} lacks the fields {', '.join(missing)}.")
  if hf.get("mlp_bias") or (model_type != "qwen2" and hf.get("attention_bias")):
    raise ValueError(f"{path} asks for biases on the MLP or attention output projections, "
                     "which these blocks do not have.")
  activation = hf.get("hidden_activation") or hf.get("hidden_act") or "silu"
  if activation not in _ACTIVATIONS:
    raise ValueError(f"{path} uses activation {activation!r}; supported: "
                     f"{', '.join(sorted(_ACTIVATIONS))}.")
  heads, layers = hf["num_attention_heads"], hf["num_hidden_layers"]
  gemma = model_type in ("gemma", "gemma2")
  theta, scaling = _rope(hf, path)
  window, sliding_layers = _sliding(hf, model_type, layers)
  fields = dict(
      family=model_type, vocab_size=hf["vocab_size"], emb_dim=hf["hidden_size"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp_dim=hf["intermediate_size"],
      num_decoder_layers=layers, mlp_activation=_ACTIVATIONS[activation], rope_theta=theta,
      rope_scaling=scaling, norm_epsilon=float(hf.get("rms_norm_eps", 1e-6)),
      norm_plus_one=gemma, qkv_bias=model_type == "qwen2", scale_embeddings=gemma,
      sandwich_norms=model_type == "gemma2",
      query_pre_attn_scalar=(hf.get("query_pre_attn_scalar", 256)
                             if model_type == "gemma2" else None),
      attn_logit_softcap=hf.get("attn_logit_softcapping") if model_type == "gemma2" else None,
      final_logit_softcap=hf.get("final_logit_softcapping") if model_type == "gemma2" else None,
      sliding_window=window, sliding_layers=sliding_layers,
      tie_word_embeddings=bool(hf.get("tie_word_embeddings", gemma)),
      # Qwen2's config names <|endoftext|> as BOS, but its tokenizer never writes it.
      bos_token_id=None if model_type == "qwen2" else _bos(hf, path))
  fields.update(overrides)
  return LlamaConfig(**fields)


def model_type_of(path: str) -> Optional[str]:
  """The `model_type` of a Hugging Face folder's config.json."""
  return read_config_json(path)[1].get("model_type")


# ------------------------------------------------------------------------------------------------
# Weights.


def tensor_files(directory: str) -> Dict[str, str]:
  """Tensor name -> safetensors file, checked against the files themselves.

  Raises one sentence naming the index, shard and tensor for a malformed index, a shard that
  does not exist, or a tensor its shard lacks.
  """
  index_path = os.path.join(directory, INDEX_FILE)
  if not os.path.isfile(index_path):
    path = os.path.join(directory, WEIGHTS_FILE)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"No {WEIGHTS_FILE} or {INDEX_FILE} in {directory}.")
    with safe_open(path, framework="np") as f:
      return {name: path for name in f.keys()}
  try:
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
  except (json.JSONDecodeError, AttributeError) as e:
    raise ValueError(f"Shard index {index_path} is not a JSON object ({e}).") from None
  if not isinstance(weight_map, dict) or not all(
      isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
    raise ValueError(f"Shard index {index_path} has no 'weight_map' object of tensor name -> "
                     "shard file.")
  by_shard: Dict[str, list] = {}
  for name, shard in weight_map.items():
    by_shard.setdefault(shard, []).append(name)
  files = {}
  for shard, names in sorted(by_shard.items()):
    path = os.path.join(directory, shard)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Shard {path}, which {index_path} names for tensor {names[0]}, "
                              "does not exist.")
    with safe_open(path, framework="np") as f:
      present = set(f.keys())
    for name in names:
      if name not in present:
        raise ValueError(f"Shard {path} lacks tensor {name}, which {index_path} places there.")
      files[name] = path
  return files


class HFDecoderReader(hf_t5.HFT5Reader):
  """Lazy, slice-wise reads of a Hugging Face decoder-only safetensors checkpoint."""

  def __init__(self, path: str):  # pylint: disable=super-init-not-called
    if not os.path.isdir(path):
      raise FileNotFoundError(f"Hugging Face checkpoint folder {path} does not exist.")
    self.path = path
    self.config = config_from_hf_decoder(path)
    files = tensor_files(path)
    where = INDEX_FILE if os.path.isfile(os.path.join(path, INDEX_FILE)) else WEIGHTS_FILE
    self._files = files
    self._handles: Dict[Tuple[str, str], object] = {}
    self._sources: Dict[str, Tuple[str, bool]] = {}
    shapes = expected_shapes(self.config)
    for name, shape in shapes.items():
      if name not in files:
        raise ValueError(f"Tensor {name}, which {CONFIG_FILE} requires, is in no file of {path} "
                         f"({where} lacks it).")
      stored = tuple(self._handle(name).get_slice(name).get_shape())
      if stored != shape:
        raise ValueError(f"Tensor {name} in {files[name]} has shape {stored} but {CONFIG_FILE} "
                         f"implies {shape}.")
      self._sources[our_name(name)[0]] = (name, our_name(name)[1])
    self._infos = {name: self._info(hf, transposed)
                   for name, (hf, transposed) in self._sources.items()}


def open_hf_reader(path: str):
  """The reader for a Hugging Face folder, chosen by its config's `model_type`."""
  has_config = os.path.isfile(os.path.join(path, CONFIG_FILE))
  model_type = model_type_of(path) if has_config else None
  if model_type in MODEL_TYPES:
    return HFDecoderReader(path)
  if model_type not in ENCODER_DECODER_TYPES and model_type is not None:
    raise ValueError(f"{os.path.join(path, CONFIG_FILE)} describes model_type {model_type!r}; "
                     f"importable types are {', '.join(ENCODER_DECODER_TYPES + MODEL_TYPES)}.")
  return hf_t5.HFT5Reader(path)


def config_to_hf(config: LlamaConfig) -> Mapping[str, object]:
  """The `config.json` contents transformers needs to rebuild `config` (see `export`).

  Raises a one-sentence error for a switch the family's config.json cannot express (e.g.
  q/k/v biases outside Qwen2), which would otherwise load as a different model.
  """
  gemma = config.family in ("gemma", "gemma2")
  implied = dict(qkv_bias=config.family == "qwen2", norm_plus_one=gemma, scale_embeddings=gemma,
                 sandwich_norms=config.family == "gemma2")
  if config.family != "gemma2":
    implied.update(attn_logit_softcap=None, final_logit_softcap=None, query_pre_attn_scalar=None)
  for field, value in implied.items():
    if getattr(config, field) != value:
      raise ValueError(f"A {config.family} config.json cannot express "
                       f"{field}={getattr(config, field)!r}.")
  hf = dict(model_type=config.family, vocab_size=config.vocab_size, hidden_size=config.emb_dim,
            intermediate_size=config.mlp_dim, num_hidden_layers=config.num_decoder_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
            head_dim=config.head_dim, rms_norm_eps=config.norm_epsilon,
            tie_word_embeddings=config.tie_word_embeddings,
            architectures=[_ARCHITECTURES[config.family]])
  if config.bos_token_id is not None:
    hf["bos_token_id"] = config.bos_token_id
  hf["hidden_activation" if config.family == "gemma2" else "hidden_act"] = (
      "silu" if config.mlp_activation == "silu" else "gelu_pytorch_tanh")
  rope = {"rope_type": config.rope_scaling.rope_type, "rope_theta": config.rope_theta}
  if config.rope_scaling.rope_type != "default":
    rope["factor"] = config.rope_scaling.factor
  if config.rope_scaling.rope_type == "llama3":
    rope.update(low_freq_factor=config.rope_scaling.low_freq_factor,
                high_freq_factor=config.rope_scaling.high_freq_factor,
                original_max_position_embeddings=(
                    config.rope_scaling.original_max_position_embeddings))
  hf["rope_parameters"] = rope
  layer_types = ["sliding_attention" if config.is_sliding(i) else "full_attention"
                 for i in range(config.num_decoder_layers)]
  if config.family == "mistral":
    hf["sliding_window"] = config.sliding_window
  elif config.family == "qwen2":
    hf.update(use_sliding_window=config.sliding_window is not None,
              sliding_window=config.sliding_window, layer_types=layer_types)
  elif config.family == "gemma2":
    hf.update(sliding_window=config.sliding_window, layer_types=layer_types,
              query_pre_attn_scalar=config.query_pre_attn_scalar or config.head_dim,
              attn_logit_softcapping=config.attn_logit_softcap,
              final_logit_softcapping=config.final_logit_softcap)
  if config.family in ("llama", "mistral") and config.sliding_window is not None and (
      config.family == "llama" or config.sliding_layers is not None):
    raise ValueError(f"A {config.family} config.json cannot express sliding_window="
                     f"{config.sliding_window} on layers {config.sliding_layers}.")
  return hf


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM",
                  "gemma2": "Gemma2ForCausalLM"}
