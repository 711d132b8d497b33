"""SentencePiece vocabularies for task registration, configurable without touching storage.

Tasks are registered at import time, so the vocabulary path must be decided before any
download could happen: `seqio.SentencePieceVocabulary` only reads its model file on first
use, which keeps `import tasks` free of network access. The path comes from, in order:
an explicit argument, `set_default_vocabulary_path(...)`, the environment variable
(`PROMPT_TUNING_VOCAB` / `PROMPT_TUNING_MT5_VOCAB`), then the public T5X default.
"""
import os
from typing import Dict, Optional

import seqio
import tensorflow as tf
import tensorflow_text as tf_text

T5_VOCAB_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
MT5_VOCAB_PATH = "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model"
EXTRA_IDS = 100

T5 = "t5"
MT5 = "mt5"
_DEFAULT_PATHS = {T5: T5_VOCAB_PATH, MT5: MT5_VOCAB_PATH}
_ENV_VARS = {T5: "PROMPT_TUNING_VOCAB", MT5: "PROMPT_TUNING_MT5_VOCAB"}
_OVERRIDES: Dict[str, str] = {}


def _check_kind(kind: str) -> None:
  if kind not in _DEFAULT_PATHS:
    raise ValueError(f"Unknown vocabulary kind {kind!r}; expected one of {sorted(_DEFAULT_PATHS)}.")


def set_default_vocabulary_path(path: Optional[str], *, kind: str = T5) -> None:
  """Overrides the vocabulary used by tasks registered after this call (None clears it)."""
  _check_kind(kind)
  if path is None:
    _OVERRIDES.pop(kind, None)
  else:
    _OVERRIDES[kind] = path


def vocabulary_path(kind: str = T5) -> str:
  """The SentencePiece model path that tasks of this kind will use."""
  _check_kind(kind)
  return _OVERRIDES.get(kind) or os.environ.get(_ENV_VARS[kind]) or _DEFAULT_PATHS[kind]


class SentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """seqio's SentencePiece vocabulary with one TF tokenizer shared by every pipeline.

  seqio builds a new TF tokenizer on each `encode_tf` call, so every dataset map (two per
  task, hundreds of tasks in a P3 mixture) parses the model again when its iterator
  starts. Created once outside any graph, the tokenizer's resource is captured instead.
  """

  @property
  def tf_tokenizer(self):
    tokenizer = getattr(self, "_shared_tf_tokenizer", None)
    if tokenizer is None:
      with tf.init_scope():
        tokenizer = tf_text.SentencepieceTokenizer(model=self.sp_model)
      self._shared_tf_tokenizer = tokenizer
    return tokenizer

  def __getstate__(self):
    # Equality, pickling and gin's deep copies go through the state: leave the TF
    # resource out so two vocabularies of the same model file still compare equal.
    state = super().__getstate__()
    state.pop("_shared_tf_tokenizer", None)
    return state


def get_vocabulary(path: Optional[str] = None, *, kind: str = T5) -> seqio.SentencePieceVocabulary:
  """A lazily-loaded SentencePiece vocabulary with T5's 100 extra ids."""
  return SentencePieceVocabulary(path or vocabulary_path(kind), extra_ids=EXTRA_IDS)


def text_to_text_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  """Output features of an encoder-decoder text task: EOS-terminated inputs and targets."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=False),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }
