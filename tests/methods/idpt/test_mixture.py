"""ID-PT mixtures: generator tokens carried through a mixture, long examples dropped, rates kept."""
import numpy as np
import pytest
import seqio

from prompt_tuning.data import registry
from prompt_tuning.methods.idpt import mixture
from prompt_tuning.smoke_data import tasks as smoke_tasks

SOURCE = "idpt_test_source_mixture"
registry.add_mixture(SOURCE, [(smoke_tasks.SKILLS_TASK, 3.0), (smoke_tasks.LAST_DIGIT_TASK, 1.0)])
NAME = mixture.register_idpt_mixture(SOURCE, max_input_length=8, max_target_length=2)


def _examples(task, limit=None):
  dataset = seqio.get_mixture_or_task(task).get_dataset(None, split="validation", shuffle=False)
  return list(dataset.as_numpy_iterator())[:limit]


def test_long_examples_are_dropped_and_generator_tokens_copy_the_inputs():
  original = _examples(smoke_tasks.SKILLS_TASK)
  kept = _examples(mixture.PREFIX + smoke_tasks.SKILLS_TASK)
  short = [ex for ex in original if len(ex["inputs"]) <= 8]
  assert 0 < len(kept) == len(short) < len(original)  # instructed examples are longer than 8
  for ex, want in zip(kept, short):
    np.testing.assert_array_equal(ex["inputs"], want["inputs"])
    np.testing.assert_array_equal(ex["generator_tokens"], ex["inputs"])


def test_the_mixture_keeps_rates_and_the_generator_tokens():
  converted = seqio.get_mixture_or_task(NAME)
  assert NAME == "idpt_" + SOURCE
  rates = {t.name: converted.get_rate(t) for t in converted.tasks}
  assert rates == {"idpt_smoke_skills": 3.0, "idpt_smoke_last_digit": 1.0}
  dataset = converted.get_dataset({"inputs": 16, "targets": 4}, split="validation",
                                  shuffle=False)
  example = next(dataset.as_numpy_iterator())
  assert "generator_tokens" in example and len(example["inputs"]) <= 8


def test_an_unknown_mixture_is_one_sentence():
  with pytest.raises(ValueError, match="Unknown mixture 'no_such_mixture'"):
    mixture.register_idpt_mixture("no_such_mixture")


def test_p3_t0plusplus_keeps_the_capped_rates_and_drops_long_examples(tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import testing  # pylint: disable=g-import-not-at-top
  from tasks import p3  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "data")
  # Input lengths 2..6 tokens (EOS included); stated sizes make gigaword's rate capped.
  rows = [{"inputs": list(range(100, 100 + n)) + [1], "inputs_pretokenized": f"in {n}",
           "targets": [300, 1], "targets_pretokenized": "yes"} for n in range(1, 6)]
  for folder, examples in (("gigaword_summarize", 3_803_957), ("gigaword_title", 3_803_957),
                           ("glue_mrpc_equivalent", 3668)):
    testing.write_p3_task(os.path.join(root, folder), {"train": rows},
                          stated_examples={"train": examples})
  p3.register(data_dir=root, name_prefix="p3idpt_")
  name = mixture.register_idpt_mixture("p3idpt_t0plusplus_train", max_input_length=4,
                                       max_target_length=256)
  converted = seqio.get_mixture_or_task(name)
  rates = {t.name: converted.get_rate(t) for t in converted.tasks}
  assert rates == {"idpt_p3idpt_gigaword_summarize": 250000,
                   "idpt_p3idpt_gigaword_title": 250000, "idpt_p3idpt_glue_mrpc_equivalent": 3668}
  examples = list(seqio.get_mixture_or_task("idpt_p3idpt_glue_mrpc_equivalent").get_dataset(
      None, split="train", shuffle=False).as_numpy_iterator())
  assert [len(ex["inputs"]) for ex in examples] == [2, 3, 4]  # 5 and 6 tokens dropped
  for ex in examples:
    np.testing.assert_array_equal(ex["generator_tokens"], ex["inputs"])


def test_a_generator_vocabulary_re_encodes_the_input_text():
  vocabulary = seqio.ByteVocabulary()
  name = mixture.idpt_task(smoke_tasks.LAST_DIGIT_TASK, generator_vocabulary=vocabulary,
                           max_input_length=None, max_target_length=None, prefix="idpt_bytes_")
  example = _examples(name, limit=1)[0]
  text = example["inputs_pretokenized"].decode()
  assert list(example["generator_tokens"]) == list(vocabulary.encode(text)) + [1]
