"""Reading what a prompt bank needs: the model config and vocabulary (gin), the frozen base
weights (a checkpoint or an `.npz`), and prompts (`.npy` files or run folders).

The base is read through the platform's own parameter groups (`run_setup.load_for_inference`),
so every checkpoint format the trainer reads works here too.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import gin
import numpy as np

from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import params as params_lib
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts import npy_io
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

DEFAULT_PROMPT_FILE = "input_hook.prompt.npy"


def _model_and_vocabulary(model=gin.REQUIRED, vocabulary=None):
  return model, vocabulary


def model_from_gin(gin_files: Sequence[str], gin_bindings: Sequence[str] = ()
                   ) -> Tuple[Any, Any]:
  """The `MODEL` wrapper and `VOCABULARY` a model gin file (e.g. byte_t5_tiny.gin) defines."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.register_configurables()
  configured = gin_utils.configurable_entry(_model_and_vocabulary, "toolkit_model")
  gin.clear_config()
  gin_utils.parse_gin(gin_files=gin_files, gin_bindings=list(gin_bindings) + [
      "toolkit_model.model = %MODEL", "toolkit_model.vocabulary = %VOCABULARY"])
  return configured()


def base_groups(base: str) -> Tuple[params_lib.ParamGroup, ...]:
  """A throw-away prompt group (initialised) and the frozen rest, read from `base`."""
  model_source = (params_lib.FromNpy(path=base) if base.endswith(".npz")
                  else params_lib.FromBase())
  return (params_lib.ParamGroup(name="prompt", pattern=params_lib.HOOK_PATTERN, trainable=True,
                                source=params_lib.FromInit(), required=False),
          params_lib.ParamGroup(name="model", pattern=None, trainable=False,
                                source=model_source))


def frozen_params(config: Any, base: str, *, prompt_length: int,
                  lengths: Mapping[str, int]) -> Dict[str, Any]:
  """The base model's parameters (no input hook), from a checkpoint or an `.npz` by leaf path.

  Args:
    config: the model config.
    base: a checkpoint the trainer can restore (a step folder, T5X, HF) or an `.npz` file.
    prompt_length: the prompts' length (shapes the throw-away prompt only).
    lengths: model feature lengths, e.g. {'encoder_input_tokens': 64, ...}.
  """
  from prompt_tuning.engine import partitioning, run_setup  # pylint: disable=g-import-not-at-top
  if not os.path.exists(base) and "://" not in base:
    raise FileNotFoundError(f"Base checkpoint {base} does not exist.")
  model = model_wrappers.EncoderDecoderModel(EncoderDecoder(
      config=config, input_hook=PromptHook(provider=Prompt(length=prompt_length))))
  restore = run_setup.RestoreConfig(path=None if base.endswith(".npz") else base)
  setup = run_setup.load_for_inference(
      model=model, lengths=lengths, mesh_config=partitioning.MeshConfig(), restore=restore,
      groups=base_groups(base))
  return dict(setup.placed.frozen)


def run_prompt_path(run_dir: str, prompt_file: str = DEFAULT_PROMPT_FILE) -> str:
  """The newest exported prompt of a run folder (`numpy_checkpoints/checkpoint_<step>/...`)."""
  folder = os.path.join(run_dir, "numpy_checkpoints")
  steps = sorted(int(name[len("checkpoint_"):]) for name in (
      os.listdir(folder) if os.path.isdir(folder) else ())
                 if name.startswith("checkpoint_") and name[len("checkpoint_"):].isdigit()
                 and os.path.exists(os.path.join(folder, name, prompt_file)))
  if not steps:
    raise FileNotFoundError(f"Run folder {run_dir} has no exported prompt "
                            f"numpy_checkpoints/checkpoint_<step>/{prompt_file}.")
  return os.path.join(folder, f"checkpoint_{steps[-1]}", prompt_file)


def load_prompt(source: str) -> np.ndarray:
  """A `[P, H]` prompt from an `.npy` file or a run folder (its newest exported prompt)."""
  if os.path.isdir(source):
    source = run_prompt_path(source)
  elif not os.path.exists(source):
    raise FileNotFoundError(f"Prompt {source} does not exist (give an .npy file or a run "
                            "folder).")
  value = npy_io.load_prompt_npy(source)
  if value.ndim != 2:
    raise ValueError(f"Prompt {source} has shape {value.shape}; a prompt is [length, embed].")
  return value


def load_prompts(sources: Sequence[str]) -> List[np.ndarray]:
  """Every prompt, checked to share one shape (a bank holds one prompt length)."""
  prompts = [load_prompt(s) for s in sources]
  shapes = {tuple(p.shape) for p in prompts}
  if len(shapes) > 1:
    raise ValueError(f"The prompts have different shapes {sorted(shapes)}; one batched pass "
                     "needs prompts of one length.")
  return prompts
