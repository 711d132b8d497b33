"""Export a trained prompt `[P, H]` as `.npy` or as a Hugging Face PEFT adapter folder.

`.npy`: a plain 2-D float32 array, the layout the reference prompt-tuning release uses for its
pretrained prompts (`np.load` gives the `[prompt_length, embed]` table directly).

PEFT adapter folder (checked against peft 0.21.2 by loading it with
`peft.PeftModel.from_pretrained` in tests/engine/test_export.py):

  adapter_config.json          peft_type "PROMPT_TUNING", task_type, num_virtual_tokens,
                               token_dim, num_transformer_submodules, num_attention_heads,
                               num_layers, base_model_name_or_path, inference_mode, ...
  adapter_model.safetensors    one float32 tensor 'prompt_embeddings' of shape
                               [num_virtual_tokens * num_transformer_submodules, token_dim]

`num_transformer_submodules` matters for encoder-decoder models: PEFT's default for
SEQ_2_SEQ_LM is 2, which makes it expect a `[2P, H]` table and prepend the second half to the
*decoder* input as well. Our prompts go in front of the encoder input only, so we always write
1; PEFT then prepends the `[P, H]` table to the encoder's input embeddings, as we do.

The config says what is true of the run: `prompt_tuning_init` is the PEFT name of the prompt's
initialiser (`peft_init_fields`), and `base_model_name_or_path` is the Hugging Face folder of
the base when there is one (the base itself, or its export by `hf_export`), so
`PeftModel.from_pretrained` on that folder reproduces the run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any, Dict, Optional

import numpy as np

from prompt_tuning.prompts import npy_io

TASK_TYPES = ("SEQ_2_SEQ_LM", "CAUSAL_LM")
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PROMPT_KEY = "prompt_embeddings"
PEFT_INITS = ("RANDOM", "SAMPLE_VOCAB", "TEXT")
# Our initialisers (by factory name) with a PEFT counterpart; the others (class labels, a file,
# a checkpoint variable) have none and are recorded as RANDOM, which PEFT does not act on when
# it loads an adapter for inference.
_PEFT_INIT_OF = {"random_uniform": "RANDOM", "sampled_vocabulary": "SAMPLE_VOCAB",
                 "from_string": "TEXT"}
_LOG = logging.getLogger("prompt_tuning")


def peft_init_fields(model: Any) -> Dict[str, Any]:
  """`prompt_tuning_init` (and `prompt_tuning_init_text`) describing the model's prompt init.

  Reads `model.module.input_hook.provider.initializer`, a closure made by one of
  `prompts.initializers`' factories; the factory's name says which initialiser it is.
  """
  provider = getattr(getattr(getattr(model, "module", None), "input_hook", None),
                     "provider", None)
  initializer = getattr(provider, "initializer", None)
  factory = getattr(initializer, "__qualname__", "").split(".<locals>")[0]
  init = _PEFT_INIT_OF.get(factory, "RANDOM")
  fields: Dict[str, Any] = {"prompt_tuning_init": init}
  if init == "TEXT":
    import inspect  # pylint: disable=g-import-not-at-top
    fields["prompt_tuning_init_text"] = inspect.getclosurevars(initializer).nonlocals.get("text")
  return fields


def _as_prompt(prompt) -> np.ndarray:
  array = np.asarray(prompt)
  if array.ndim != 2:
    raise ValueError(
        f"A prompt must be a 2-D [prompt_length, embed] array, got shape {array.shape}."
    )
  if not np.issubdtype(array.dtype, np.floating):
    raise ValueError(f"A prompt must hold floating-point values, got dtype {array.dtype}.")
  return array.astype(np.float32)


def _atomic_write(path: str, write) -> None:
  """Writes via a temporary file in the same folder, then renames over `path`.

  An interrupted export therefore never leaves a truncated file under the final name.
  """
  folder = os.path.dirname(os.path.abspath(path))
  handle, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
  os.close(handle)
  try:
    write(tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def save_prompt_npy(*, prompt, path: str) -> None:
  """Writes `prompt` ([P, H]) to `path` as a float32 `.npy` file (`prompts.npy_io` writes it)."""
  npy_io.save_prompt_npy(path, _as_prompt(prompt))


def load_prompt_npy(*, path: str) -> np.ndarray:
  """Reads a `[P, H]` prompt from `.npy` as float32 (float64 files are converted)."""
  return _as_prompt(npy_io.load_array_npy(path))


def export_peft_prompt(
    *,
    prompt,
    directory: str,
    task_type: str = "SEQ_2_SEQ_LM",
    num_layers: int,
    num_attention_heads: int,
    base_model_name_or_path: Optional[str] = None,
    prompt_tuning_init: str = "RANDOM",
    prompt_tuning_init_text: Optional[str] = None,
    tokenizer_name_or_path: Optional[str] = None,
) -> None:
  """Writes `prompt` ([P, H]) as a PEFT prompt-tuning adapter folder.

  Args:
    prompt: the learned prompt table, `[num_virtual_tokens, token_dim]`.
    directory: output folder (created if missing; existing adapter files are replaced).
    task_type: 'SEQ_2_SEQ_LM' (T5-style) or 'CAUSAL_LM' (decoder-only).
    num_layers: the base model's number of (encoder) layers, recorded for PEFT.
    num_attention_heads: the base model's number of attention heads, recorded for PEFT.
    base_model_name_or_path: Hugging Face name or local path of the frozen base model; a
      checkpoint with a Hugging Face export (`hf_export.hf_folder_for`) is replaced by it.
    prompt_tuning_init: PEFT's name of the initialiser used ('RANDOM', 'SAMPLE_VOCAB',
      'TEXT'); see `peft_init_fields`.
    prompt_tuning_init_text: the text of a 'TEXT' initialisation.
    tokenizer_name_or_path: the tokenizer of a 'TEXT' initialisation (PEFT requires one;
      default: the base's Hugging Face folder).
  """
  if task_type not in TASK_TYPES:
    raise ValueError(f"Unknown PEFT task_type {task_type!r}; expected one of {list(TASK_TYPES)}.")
  if prompt_tuning_init not in PEFT_INITS:
    raise ValueError(f"Unknown PEFT prompt_tuning_init {prompt_tuning_init!r}; expected one of "
                     f"{list(PEFT_INITS)}.")
  from prompt_tuning.engine import hf_export  # pylint: disable=g-import-not-at-top
  base_model_name_or_path = hf_export.hf_folder_for(base_model_name_or_path) or \
      base_model_name_or_path
  if prompt_tuning_init == "TEXT":
    tokenizer_name_or_path = tokenizer_name_or_path or hf_export.hf_folder_for(
        base_model_name_or_path)
    if prompt_tuning_init_text is None or tokenizer_name_or_path is None:
      # PEFT refuses a TEXT config without both; the adapter must stay loadable.
      _LOG.warning("The PEFT adapter records prompt_tuning_init RANDOM: a TEXT initialisation "
                   "needs its text and a Hugging Face tokenizer folder.")
      prompt_tuning_init, prompt_tuning_init_text, tokenizer_name_or_path = "RANDOM", None, None
  else:
    prompt_tuning_init_text, tokenizer_name_or_path = None, None
  array = _as_prompt(prompt)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  os.makedirs(directory, exist_ok=True)
  config = {
      "peft_type": "PROMPT_TUNING",
      "task_type": task_type,
      "num_virtual_tokens": int(array.shape[0]),
      "token_dim": int(array.shape[1]),
      "num_transformer_submodules": 1,
      "num_attention_heads": int(num_attention_heads),
      "num_layers": int(num_layers),
      "base_model_name_or_path": base_model_name_or_path,
      "inference_mode": True,
      "prompt_tuning_init": prompt_tuning_init,
      "prompt_tuning_init_text": prompt_tuning_init_text,
      "tokenizer_name_or_path": tokenizer_name_or_path,
      "tokenizer_kwargs": None,
      "revision": None,
      "auto_mapping": None,
      "modules_to_save": None,
  }
  _atomic_write(
      os.path.join(directory, PEFT_WEIGHTS_FILE),
      lambda tmp: save_file({PEFT_PROMPT_KEY: array}, tmp, metadata={"format": "pt"}),
  )

  def write_config(tmp):
    with open(tmp, "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)

  _atomic_write(os.path.join(directory, PEFT_CONFIG_FILE), write_config)


def load_peft_prompt(*, directory: str) -> np.ndarray:
  """Reads the `[P, H]` prompt of a PEFT prompt-tuning adapter folder.

  Only encoder-side prompts are accepted (num_transformer_submodules 1), since a table that also
  prompts the decoder has no counterpart in this project's models.
  """
  config_path = os.path.join(directory, PEFT_CONFIG_FILE)
  weights_path = os.path.join(directory, PEFT_WEIGHTS_FILE)
  for path in (config_path, weights_path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"PEFT adapter file {path} does not exist.")
  with open(config_path) as f:
    config = json.load(f)
  if config.get("peft_type") != "PROMPT_TUNING":
    raise ValueError(f"{config_path} has peft_type {config.get('peft_type')!r}, not PROMPT_TUNING.")
  submodules = config.get("num_transformer_submodules")
  if submodules is None:  # PEFT's default: seq2seq prompts both encoder and decoder.
    submodules = 2 if config.get("task_type") == "SEQ_2_SEQ_LM" else 1
  if submodules != 1:
    raise ValueError(
        f"{config_path} has num_transformer_submodules={submodules}; only encoder-side "
        "prompts (1) can be loaded."
    )
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

  tensors = load_file(weights_path)
  if PEFT_PROMPT_KEY not in tensors:
    raise ValueError(f"{weights_path} has no tensor named {PEFT_PROMPT_KEY!r}.")
  prompt = _as_prompt(tensors[PEFT_PROMPT_KEY])
  expected = (config["num_virtual_tokens"], config["token_dim"])
  if prompt.shape != expected:
    raise ValueError(
        f"{weights_path} holds a prompt of shape {prompt.shape}, but its config says {expected}."
    )
  return prompt
