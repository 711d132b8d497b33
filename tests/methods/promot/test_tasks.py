"""ProMoT's task variants: 1-shot inputs, prompt ids, and their errors."""
import numpy as np
import pytest
import seqio

from prompt_tuning.methods.promot import tasks as promot_tasks
from prompt_tuning.smoke_data import tasks as smoke_tasks

LENGTHS = {"inputs": 32, "targets": 4}


def test_one_shot_prepends_the_first_training_example_to_every_input():
  data = smoke_tasks.generate(split="train", instructed=False)
  shot = f"{data['inputs'][0]} {data['targets'][0]}\n\n"
  assert promot_tasks.one_shot_text("smoke_last_digit") == shot
  ours = list(seqio.get_mixture_or_task("smoke_last_digit_1shot").get_dataset(
      LENGTHS, split="validation", shuffle=False).take(5).as_numpy_iterator())
  plain = list(seqio.get_mixture_or_task("smoke_last_digit").get_dataset(
      LENGTHS, split="validation", shuffle=False).take(5).as_numpy_iterator())
  shot_tokens = smoke_tasks.VOCABULARY.encode(shot)
  for a, b in zip(ours, plain):
    np.testing.assert_array_equal(a["inputs"], np.concatenate([shot_tokens, b["inputs"]]))
    np.testing.assert_array_equal(a["targets"], b["targets"])
    assert a["inputs_pretokenized"].decode() == shot + b["inputs_pretokenized"].decode()


def test_unknown_tasks_and_bad_ids_are_one_sentence():
  with pytest.raises(ValueError, match=r"Unknown task 'no_such_task'"):
    promot_tasks.with_prompt_id("no_such_task", 0)
  with pytest.raises(ValueError, match=r"Unknown task 'no_such_task'"):
    promot_tasks.with_one_shot("no_such_task")
  with pytest.raises(ValueError, match=r"must be non-negative"):
    promot_tasks.with_prompt_id("smoke_skills", -1)
  with pytest.raises(ValueError, match=r"needs distinct tasks"):
    promot_tasks.register_multitask("x_mix", ["smoke_skills", "smoke_skills"])
