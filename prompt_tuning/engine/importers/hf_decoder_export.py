"""Writes a rotary decoder's parameters back as a Hugging Face folder (inverse of hf_decoder).

`config.json` plus `model.safetensors`, or shards of at most `max_shard_bytes` with a
`model.safetensors.index.json`, as `save_pretrained` writes them, so `transformers` and this
project's importer both load the result. Kernels are transposed back to PyTorch's `[out, in]`.
The folder is written under a temporary name and renamed at the end, so an existing folder is
never overwritten and a failed export leaves nothing half-written.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Dict, Mapping

from flax import traverse_util
import jax
import numpy as np
from safetensors.numpy import save_file

from prompt_tuning.engine.importers import hf_decoder
from prompt_tuning.models.llama_config import LlamaConfig


def hf_tensors(params: Mapping[str, Any], config: LlamaConfig) -> Dict[str, np.ndarray]:
  """Hugging Face tensor name -> host array for every tensor `config` needs.

  Raises a one-sentence error naming the parameter that is missing or has the wrong shape.
  Parameters outside the model (e.g. `input_hook/...`) are ignored.
  """
  flat = traverse_util.flatten_dict(dict(params), sep="/")
  tensors = {}
  for name, shape in hf_decoder.expected_shapes(config).items():
    ours, transposed = hf_decoder.our_name(name)
    if ours not in flat:
      raise ValueError(f"Parameter '{ours}' (tensor {name}) is missing from the parameters.")
    value = np.asarray(jax.device_get(flat[ours]))
    value = np.ascontiguousarray(value.T) if transposed else value
    if value.shape != shape:
      ours_shape = value.shape[::-1] if transposed else value.shape
      raise ValueError(f"Parameter '{ours}' has shape {ours_shape} but the config implies "
                       f"{shape[::-1] if transposed else shape}.")
    tensors[name] = value
  return tensors


def _shards(tensors: Mapping[str, np.ndarray], max_shard_bytes: int):
  shards, current, size = [], {}, 0
  for name, value in tensors.items():
    if current and size + value.nbytes > max_shard_bytes:
      shards.append(current)
      current, size = {}, 0
    current[name] = value
    size += value.nbytes
  return shards + [current]


def export_hf_decoder(*, params: Mapping[str, Any], config: LlamaConfig, directory: str,
                      max_shard_bytes: int = 5 * 1024 ** 3) -> str:
  """Writes `params` (our names) and `config` as a Hugging Face folder; returns `directory`."""
  if os.path.exists(directory):
    raise FileExistsError(f"Export folder {directory} already exists; choose a new folder.")
  hf_config = dict(hf_decoder.config_to_hf(config))
  tensors = hf_tensors(params, config)
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=".export-", dir=parent)
  try:
    dtypes = {v.dtype.name for v in tensors.values()}
    hf_config["torch_dtype"] = dtypes.pop() if len(dtypes) == 1 else "float32"
    with open(os.path.join(staging, hf_decoder.CONFIG_FILE), "w") as f:
      json.dump(hf_config, f, indent=2)
    shards = _shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
      save_file(shards[0], os.path.join(staging, hf_decoder.WEIGHTS_FILE), metadata=metadata)
    else:
      weight_map = {}
      for k, shard in enumerate(shards):
        file = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(staging, file), metadata=metadata)
        weight_map.update({name: file for name in shard})
      total = sum(v.nbytes for v in tensors.values())
      with open(os.path.join(staging, hf_decoder.INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    os.rename(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return directory
