"""Registration: idempotent, valid names, lazy default vocabulary."""
import importlib
import re

import pytest
import seqio

import tasks
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies


def test_importing_again_registers_nothing_new():
  before = (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names()))
  for module in (tasks.super_glue, tasks.glue, tasks.natural_questions, tasks.wmt, tasks.fewshot):
    importlib.reload(module)
  importlib.reload(tasks)
  assert (len(seqio.TaskRegistry.names()), len(seqio.MixtureRegistry.names())) == before


def test_every_name_is_valid():
  pattern = re.compile(r"^[\w\d\.\:_#]+$")
  names = list(seqio.TaskRegistry.names()) + list(seqio.MixtureRegistry.names())
  assert names and all(pattern.match(n) for n in names)


def test_invalid_names_are_refused_or_cleaned():
  with pytest.raises(ValueError, match="must match"):
    registry.add_task("bad-name", source=None, output_features={})
  assert registry.clean_name("ai2_arc/ARC-Challenge x") == "ai2_arc_ARC_Challenge_x"


def test_default_vocabulary_is_the_public_model_and_stays_unloaded(monkeypatch):
  monkeypatch.setattr(vocabularies, "_OVERRIDES", {})
  monkeypatch.delenv("PROMPT_TUNING_VOCAB", raising=False)
  try:
    tasks.super_glue.register(name_prefix="defaultvocab_", benchmarks=("rte",))
    vocabulary = seqio.get_mixture_or_task("defaultvocab_super_glue_rte_v102").output_features[
        "inputs"].vocabulary
    assert vocabulary.sentencepiece_model_file == vocabularies.T5_VOCAB_PATH
    assert vocabulary._model is None  # pylint: disable=protected-access  (nothing downloaded)
  finally:
    for name in list(seqio.TaskRegistry.names()):
      if name.startswith("defaultvocab_"):
        seqio.TaskRegistry.remove(name)
