"""A Hugging Face `tokenizer.json` (the BPE files of Llama 3 / 3.1 and Qwen2) as a seqio vocabulary.

seqio reads SentencePiece models only, and Llama 3 and Qwen2 checkpoints ship no SentencePiece
file, so their tasks need this. The `tokenizers` library (a dependency of `transformers`) does
the tokenisation; tf.data reaches it through `tf.numpy_function`, so datasets that use it run
in this Python process (they cannot be cached to files by seqio's offline cache).

Ids are the tokenizer's own, with nothing added (no BOS, no special tokens); the EOS id is the
checkpoint's `eos_token_id` (from the `config.json` beside `tokenizer.json`, or given), and
decoding leaves special tokens (EOS, chat markers) out of the text. seqio pads with id 0,
which is a real token in these vocabularies ("!" for Llama 3): a target token 0 carries no
loss, as in every seqio decoder-only pipeline.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf


def _eos_from_config(tokenizer_path: str) -> int:
  config_path = os.path.join(os.path.dirname(os.path.abspath(tokenizer_path)), "config.json")
  if not os.path.exists(config_path):
    raise ValueError(f"No eos_id given and no config.json beside {tokenizer_path} to read "
                     "eos_token_id from.")
  with open(config_path) as f:
    eos = json.load(f).get("eos_token_id")
  if isinstance(eos, list) and eos:
    eos = eos[0]
  if not isinstance(eos, int):
    raise ValueError(f"{config_path} has no integer eos_token_id (got {eos!r}).")
  return eos


class TokenizerJsonVocabulary(seqio.Vocabulary):
  """seqio vocabulary over a Hugging Face `tokenizer.json` file."""

  def __init__(self, path: str, *, eos_id: Optional[int] = None):
    if not os.path.exists(path):
      raise FileNotFoundError(f"Tokenizer file {path} does not exist.")
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError(f"Reading {path} needs the `tokenizers` package "
                        "(pip install tokenizers).") from None
    self._path = path
    self._tokenizer = tokenizers.Tokenizer.from_file(path)
    self._eos_id = _eos_from_config(path) if eos_id is None else int(eos_id)
    if not 0 <= self._eos_id < self._tokenizer.get_vocab_size(with_added_tokens=True):
      raise ValueError(f"eos_id {self._eos_id} is outside the vocabulary of {path}.")
    super().__init__(extra_ids=0)

  @property
  def path(self) -> str:
    return self._path

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def unk_id(self) -> Optional[int]:
    return None

  @property
  def _base_vocab_size(self) -> int:
    return self._tokenizer.get_vocab_size(with_added_tokens=True)

  def _encode(self, s: str) -> Sequence[int]:
    return self._tokenizer.encode(s, add_special_tokens=False).ids

  def _decode(self, ids: Sequence[int]) -> str:
    return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

  def _encode_numpy(self, text) -> np.ndarray:
    if isinstance(text, np.ndarray):  # tf.numpy_function passes a 0-d object array
      text = text.item()
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    return np.asarray(self._encode(text), np.int32)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """`[]` string -> `[n]` int32 ids; `[B]` strings -> `[B, None]` ragged ids."""
    def one(text):
      ids = tf.numpy_function(self._encode_numpy, [text], tf.int32, stateful=False)
      ids.set_shape([None])
      return ids

    if s.shape.rank == 0:
      return one(s)
    return tf.map_fn(one, s, fn_output_signature=tf.RaggedTensorSpec([None], tf.int32))

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """`[..., n]` ids -> `[...]` strings."""
    def decode_rows(rows):
      flat = rows.reshape(-1, rows.shape[-1]) if rows.ndim else rows.reshape(1, 1)
      return np.asarray([self._decode(r).encode("utf-8") for r in flat],
                        object).reshape(rows.shape[:-1])

    strings = tf.numpy_function(decode_rows, [ids], tf.string, stateful=False)
    strings.set_shape(ids.shape[:-1])
    return strings

  def __eq__(self, other) -> bool:
    return (isinstance(other, TokenizerJsonVocabulary) and other.path == self.path
            and other.eos_id == self.eos_id)

  def __hash__(self) -> int:
    return hash((self._path, self._eos_id))
