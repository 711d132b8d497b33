"""File access for prompt libraries: local folders directly, `gs://` (any URL) via tf.io.gfile.

Local paths go through `os` rather than tf.io.gfile because importing TensorFlow costs
several seconds, which the `library list` command and the numpy-only tests should not pay;
paths with a scheme (`gs://bucket/...`) import TensorFlow on first use, as the rest of the
project does for GCS. Prompts are read and written with the project's `.npy` reader/writer
(`engine.export`), through a local temporary copy when the file is remote.
"""
from __future__ import annotations

import glob as glob_lib
import os
import tempfile
from typing import List

import numpy as np

from prompt_tuning.engine import export


def is_remote(path: str) -> bool:
  return "://" in path


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def join(*parts: str) -> str:
  return os.path.join(*parts)


def exists(path: str) -> bool:
  return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def glob(pattern: str) -> List[str]:
  return sorted(_gfile().glob(pattern) if is_remote(pattern) else glob_lib.glob(pattern))


def read_text(path: str) -> str:
  if is_remote(path):
    with _gfile().GFile(path, "r") as f:
      return f.read()
  with open(path) as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Writes beside `path` and renames into place, so a reader never sees half a file."""
  tmp = join(os.path.dirname(path), f".tmp-{os.getpid()}-{os.path.basename(path)}")
  if is_remote(path):
    with _gfile().GFile(tmp, "w") as f:
      f.write(text)
    _gfile().rename(tmp, path, overwrite=True)
    return
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def load_prompt(path: str) -> np.ndarray:
  """A `[P, H]` float32 prompt from a `.npy` file, local or remote."""
  if not is_remote(path):
    return export.load_prompt_npy(path=path)
  if not _gfile().exists(path):
    raise FileNotFoundError(f"Prompt file {path} does not exist.")
  with tempfile.TemporaryDirectory() as folder:
    local = os.path.join(folder, "prompt.npy")
    _gfile().copy(path, local)
    return export.load_prompt_npy(path=local)


def save_prompt(path: str, prompt) -> None:
  """Writes a `[P, H]` prompt as float32 `.npy`, creating its folder, local or remote."""
  makedirs(os.path.dirname(path))
  if not is_remote(path):
    export.save_prompt_npy(prompt=prompt, path=path)
    return
  with tempfile.TemporaryDirectory() as folder:
    local = os.path.join(folder, "prompt.npy")
    export.save_prompt_npy(prompt=prompt, path=local)
    _gfile().copy(local, path, overwrite=True)


def write_bytes(path: str, data: bytes) -> None:
  if is_remote(path):
    with _gfile().GFile(path, "wb") as f:
      f.write(data)
  else:
    with open(path, "wb") as f:
      f.write(data)
