"""Vocabulary configuration: precedence, laziness, and the shared TF tokenizer."""
import pickle

import pytest
import tensorflow as tf

from prompt_tuning.data import testing
from prompt_tuning.data import vocabularies


@pytest.fixture
def clean_settings(monkeypatch):
  saved = dict(vocabularies._OVERRIDES)  # pylint: disable=protected-access
  vocabularies._OVERRIDES.clear()  # pylint: disable=protected-access
  monkeypatch.delenv("PROMPT_TUNING_VOCAB", raising=False)
  monkeypatch.delenv("PROMPT_TUNING_MT5_VOCAB", raising=False)
  yield monkeypatch
  vocabularies._OVERRIDES.clear()  # pylint: disable=protected-access
  vocabularies._OVERRIDES.update(saved)  # pylint: disable=protected-access


def test_path_precedence(clean_settings):
  assert vocabularies.vocabulary_path() == "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"
  assert vocabularies.vocabulary_path(kind="mt5") == (
      "gs://t5-data/vocabs/mc4.250000.100extra/sentencepiece.model")
  clean_settings.setenv("PROMPT_TUNING_VOCAB", "/env/spm.model")
  assert vocabularies.vocabulary_path() == "/env/spm.model"
  vocabularies.set_default_vocabulary_path("/set/spm.model")
  assert vocabularies.vocabulary_path() == "/set/spm.model"
  assert vocabularies.vocabulary_path(kind="mt5").startswith("gs://")
  vocabularies.set_default_vocabulary_path(None)
  assert vocabularies.vocabulary_path() == "/env/spm.model"
  with pytest.raises(ValueError, match="Unknown vocabulary kind 'byt5'"):
    vocabularies.vocabulary_path(kind="byt5")


def test_creating_a_vocabulary_reads_nothing():
  vocabulary = vocabularies.get_vocabulary("/does/not/exist.model")
  assert vocabulary.extra_ids == 100  # constructed without touching the file
  with pytest.raises(Exception):
    vocabulary.encode("x")


def test_shared_tokenizer_matches_python_and_keeps_equality():
  path = testing.fixture_vocab_path()
  first, second = vocabularies.get_vocabulary(path), vocabularies.get_vocabulary(path)
  text = "Translate English to French: Hello world."
  assert first.encode_tf(tf.constant(text)).numpy().tolist() == first.encode(text)
  assert first.tf_tokenizer is first.tf_tokenizer  # built once, reused by every pipeline
  assert first == second and first.vocab_size == 32100
  restored = pickle.loads(pickle.dumps(first))
  assert restored == first and restored.encode(text) == first.encode(text)
