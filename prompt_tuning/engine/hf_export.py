"""Export an encoder-decoder base (trained or fine-tuned here) as a Hugging Face T5 folder.

The inverse of `importers/hf_t5.py`: `config.json` from our `ModelConfig` and one
`model.safetensors` with every tensor under its Hugging Face name. The tensor list is derived
from the config, and each name is mapped to ours with the importer's own `our_name`, so export
and import cannot disagree about a name or a transposition. `transformers` loads the folder
with `T5ForConditionalGeneration.from_pretrained`, and a prompt exported as a PEFT adapter
(`export.export_peft_prompt`) names the folder as its `base_model_name_or_path`.

A run's step `<model_dir>/checkpoints/<step>` exports by default to
`<model_dir>/hf_export/checkpoint_<step>`, beside `numpy_checkpoints/` and `peft_adapters/`;
prompt exports look there for the Hugging Face copy of their base (`hf_folder_for`).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from prompt_tuning.engine.importers import hf_t5

HF_EXPORT_SUBDIR = "hf_export"
_STEP_PATH = re.compile(r"(?P<model_dir>.+)/checkpoints/(?P<step>\d+)(/params)?/?")
_FEED_FORWARD = {("relu",): "relu", ("gelu", "linear"): "gated-gelu",
                 ("relu", "linear"): "gated-relu"}


def hf_config(config: Any) -> Dict[str, Any]:
  """The `config.json` of a Hugging Face T5 with our `ModelConfig`'s shapes."""
  if config.position_embedding != "relative":
    raise ValueError("Only T5 models with relative position buckets can be exported to "
                     f"Hugging Face T5, not position_embedding={config.position_embedding!r}.")
  activations = tuple(config.mlp_activations)
  if activations not in _FEED_FORWARD:
    raise ValueError(f"MLP activations {activations} have no Hugging Face T5 feed_forward_proj; "
                     f"supported: {sorted(_FEED_FORWARD)}.")
  return {
      "architectures": ["T5ForConditionalGeneration"],
      "model_type": "t5",
      "is_encoder_decoder": True,
      "vocab_size": int(config.vocab_size),
      "d_model": int(config.emb_dim),
      "d_kv": int(config.head_dim),
      "d_ff": int(config.mlp_dim),
      "num_heads": int(config.num_heads),
      "num_layers": int(config.num_encoder_layers),
      "num_decoder_layers": int(config.num_decoder_layers),
      "feed_forward_proj": _FEED_FORWARD[activations],
      # transformers reads `tie_word_embeddings: false` as "no E**-0.5 output scaling", which
      # is what an untied output projection means here (T5 1.1); true means tied and scaled.
      "tie_word_embeddings": bool(config.logits_via_embedding),
      "relative_attention_num_buckets": int(config.relative_attention_num_buckets),
      "relative_attention_max_distance": int(config.relative_attention_max_distance),
      "layer_norm_epsilon": float(config.layer_norm_epsilon),
      "dropout_rate": float(config.dropout_rate),
      "initializer_factor": 1.0,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "use_cache": True,
      "torch_dtype": "float32",
  }


def hf_tensor_names(config: Any) -> List[str]:
  """Every tensor a Hugging Face T5 of this shape stores (without tied copies)."""
  mlp = ["wi"] if len(config.mlp_activations) == 1 else ["wi_0", "wi_1"]
  mlp = [f"DenseReluDense.{m}" for m in mlp + ["wo"]]
  attention = ["q", "k", "v", "o"]
  names = ["shared.weight", "encoder.final_layer_norm.weight", "decoder.final_layer_norm.weight"]
  if not config.logits_via_embedding:
    names.append("lm_head.weight")
  for stack, layers, sublayers in (
      ("encoder", config.num_encoder_layers, [("SelfAttention", attention), ("", mlp)]),
      ("decoder", config.num_decoder_layers,
       [("SelfAttention", attention), ("EncDecAttention", attention), ("", mlp)])):
    for block in range(layers):
      for index, (module, leaves) in enumerate(sublayers):
        prefix = f"{stack}.block.{block}.layer.{index}"
        names.append(f"{prefix}.layer_norm.weight")
        names += [f"{prefix}.{module}.{leaf}.weight" if module else f"{prefix}.{leaf}.weight"
                  for leaf in leaves]
      names.append(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
  return sorted(set(names))


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path + "/"))
    else:
      flat[path] = value
  return flat


def export_hf_t5(*, config: Any, read: Callable[[str], np.ndarray], directory: str,
                 source: str = "The parameters") -> str:
  """Writes `config.json` and `model.safetensors` to `directory`; returns it.

  `read(our_path)` gives a parameter by our '/'-joined name (e.g. from a checkpoint reader or
  a parameter tree, see `export_params`). The folder is written under a temporary name and
  renamed into place, so an interrupted export leaves no half-written folder.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  config_json = hf_config(config)
  tensors = {}
  for name in hf_tensor_names(config):
    ours, transposed = hf_t5.our_name(name)
    try:
      value = np.asarray(read(ours), dtype=np.float32)
    except KeyError:
      raise ValueError(f"{source} lack {ours!r}, needed for the Hugging Face tensor {name}; "
                       "export a full checkpoint (a base or fine-tuned run), not a prompt-only "
                       "step.") from None
    tensors[name] = np.ascontiguousarray(value.T if transposed else value)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=".tmp-hf-")
  try:
    save_file(tensors, os.path.join(staging, hf_t5.WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(staging, hf_t5.CONFIG_FILE), "w") as f:
      json.dump(config_json, f, indent=2, sort_keys=True)
    if os.path.isdir(directory):
      shutil.rmtree(directory)
    os.replace(staging, directory)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return directory


def export_params(*, config: Any, params: Mapping[str, Any], directory: str) -> str:
  """`export_hf_t5` from a (nested) parameter tree, e.g. a loaded model's parameters."""
  flat = _flatten(params)
  return export_hf_t5(config=config, read=lambda name: np.asarray(flat[name]),
                      directory=directory)


def export_checkpoint(*, config: Any, checkpoint_path: str, directory: str) -> str:
  """`export_hf_t5` from any checkpoint the importer reads (this project's step folders, T5X)."""
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top

  reader = checkpoint_import.open_checkpoint(checkpoint_path)
  entries = reader.entries()

  def read(name: str) -> np.ndarray:
    if name not in entries:
      raise KeyError(name)
    return reader.read(name)

  return export_hf_t5(config=config, read=read, directory=directory,
                      source=f"Checkpoint {checkpoint_path}")


def default_directory(checkpoint_path: str) -> Optional[str]:
  """`<model_dir>/hf_export/checkpoint_<step>` for a run's step folder (or its `params`)."""
  match = _STEP_PATH.fullmatch(os.path.abspath(checkpoint_path))
  if not match:
    return None
  return os.path.join(match["model_dir"], HF_EXPORT_SUBDIR, f"checkpoint_{match['step']}")


def hf_folder_for(base_path: Optional[str]) -> Optional[str]:
  """The Hugging Face folder holding `base_path`'s weights, if there is one: the path itself
  when it is a Hugging Face checkpoint, else its exported copy (`default_directory`)."""
  if not base_path:
    return None
  candidates = [base_path, default_directory(base_path)]
  for folder in candidates:
    if folder and os.path.isfile(os.path.join(folder, hf_t5.CONFIG_FILE)) and \
        os.path.isfile(os.path.join(folder, hf_t5.WEIGHTS_FILE)):
      return folder
  return None
