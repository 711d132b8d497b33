"""Prompts as `.npy` files: a `[P, H]` float32 array, the layout published prompts use.

A trained prompt is a few hundred kilobytes; saving it on its own lets it be shared, loaded into
another run (`initializers.from_npy`) or analysed without the model checkpoint.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Optional, Sequence

import numpy as np


def save_prompt_npy(path: str, prompt: Any) -> str:
  """Writes `prompt` ([P, H], any float array) as float32 `.npy` and returns the path written.

  The file is written beside its destination and renamed into place, so an interrupted save
  never leaves a truncated prompt where a good one was.
  """
  path = os.fspath(path)
  value = np.asarray(prompt)
  if value.ndim != 2:
    raise ValueError(
        f"A prompt to save must be 2-D [prompt_length, embed], got shape {value.shape}.")
  if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
    raise ValueError(f"A prompt to save must hold floats, got dtype {value.dtype}.")
  value = value.astype(np.float32)
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"Cannot save the prompt to {path}: the folder {directory} does not exist.")
  fd, tmp_path = tempfile.mkstemp(dir=directory, suffix=".npy.tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, value, allow_pickle=False)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  return path


def load_array_npy(path: str) -> np.ndarray:
  """Reads one array from a `.npy` file, stopping with one sentence on a bad file.

  Refused: a missing file, a file that is not in `.npy` format (e.g. text saved under that
  name; pickled objects are never loaded), and values that are NaN or infinite (a prompt
  holding NaN would otherwise surface much later as a NaN loss naming no file).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"The array file {path} does not exist.")
  try:
    value = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError):
    raise ValueError(f"The file {path} is not a .npy array file (it may be text or a pickle, "
                     "which are not read).") from None
  if not isinstance(value, np.ndarray):
    raise ValueError(f"The file {path} holds several arrays; a .npy file with one was expected.")
  _check_finite(value, path)
  return value


def load_arrays_npz(path: str) -> dict:
  """Reads every array of an `.npz` file (keyed by name), with `load_array_npy`'s checks."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"The array file {path} does not exist.")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (ValueError, OSError, EOFError):
    raise ValueError(f"The file {path} is not a readable .npz archive.") from None
  for value in arrays.values():
    _check_finite(value, path)
  return arrays


def _check_finite(value: np.ndarray, path: str) -> None:
  floating = np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"
  if floating and not np.all(np.isfinite(value.astype(np.float32))):
    raise ValueError(f"The file {path} holds NaN or infinite values.")


def load_prompt_npy(path: str, expected_shape: Optional[Sequence[int]] = None) -> np.ndarray:
  """Reads a `.npy` prompt as float32, checking its shape against `expected_shape` if given."""
  value = load_array_npy(path)
  if value.ndim != 2:
    raise ValueError(f"The prompt file {path} holds shape {value.shape}; a prompt is 2-D [P, H].")
  if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
    raise ValueError(f"The prompt file {path} holds {value.dtype} values; a prompt holds floats.")
  if expected_shape is not None and tuple(value.shape) != tuple(expected_shape):
    raise ValueError(
        f"The prompt file {path} has shape {tuple(value.shape)} but {tuple(expected_shape)} was "
        "expected.")
  return value.astype(np.float32)
