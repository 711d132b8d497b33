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
