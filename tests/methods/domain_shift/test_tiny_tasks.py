"""The generated tasks of the tiny domain-shift pipelines: formats, domains, labels, metrics."""
import re

import pytest
import seqio

from prompt_tuning.data import testing
from prompt_tuning.methods.domain_shift import tiny_tasks

QA = re.compile(r"^question: (\w) context: ((?:\w=\d+ ?)+)$")


def _pairs(text):
  return dict(pair.split("=") for pair in text.split())


@pytest.mark.parametrize("name,keys,counts", [("qa", "abcd", {3, 4}),
                                              ("qa_new_keys", "wxyz", {3, 4}),
                                              ("qa_long", "abcdefgh", {6})])
def test_qa_sets_answer_the_asked_key_from_their_own_keys(name, keys, counts):
  data = tiny_tasks.generate_qa(name, "validation")
  assert len(data["inputs"]) == tiny_tasks.SPLIT_SIZES["validation"] == 128
  seen_keys, seen_counts = set(), set()
  for text, target, answers in zip(data["inputs"], data["targets"], data["answers"]):
    match = QA.match(text)
    assert match, text
    pairs = _pairs(match[2])
    assert pairs[match[1]] == target and answers == [target]
    seen_keys |= set(pairs)
    seen_counts.add(len(pairs))
  assert seen_keys == set(keys) and seen_counts == counts


def test_splits_are_fixed_and_distinct():
  assert tiny_tasks.generate_qa("qa", "train") == tiny_tasks.generate_qa("qa", "train")
  assert tiny_tasks.generate_qa("qa", "train")["inputs"][:5] != (
      tiny_tasks.generate_qa("qa", "validation")["inputs"][:5])
  with pytest.raises(ValueError, match="Tiny set 'qa_long' has no split 'train'"):
    tiny_tasks.generate_qa("qa_long", "train")


@pytest.mark.parametrize("name,alphabet", [("pair_digits", "0123456789"),
                                           ("pair_letters", "abcdefghij")])
def test_pairs_are_duplicates_or_differ_in_one_place(name, alphabet):
  data = tiny_tasks.generate_pairs(name, "train")
  duplicates = 0
  for text, label in zip(data["inputs"], data["targets"]):
    first, second = re.match(r"^question1: (\w+) question2: (\w+)$", text).groups()
    assert set(first + second) <= set(alphabet)
    differences = sum(a != b for a, b in zip(first, second))
    assert len(first) == len(second) and differences == (0 if label == "duplicate" else 1)
    duplicates += label == "duplicate"
  # 2048 fair coin flips: within 4 standard deviations (~ 90) of half.
  assert abs(duplicates - 1024) < 90


def test_tasks_score_with_the_real_tasks_metrics():
  rows = testing.process(tiny_tasks.task_name("qa"), split="validation", num_examples=4)
  assert rows[0]["inputs_pretokenized"].startswith("question: ")
  predictions = [rows[0]["targets_pretokenized"], rows[1]["targets_pretokenized"], "x", "y"]
  assert testing.score_predictions(tiny_tasks.task_name("qa"), rows,
                                   predictions=predictions) == {"em": 50.0, "f1": 50.0}
  pairs = testing.process(tiny_tasks.task_name("pair_digits"), split="validation",
                          num_examples=4)
  # Every prediction "duplicate": accuracy = share of duplicates; an unknown label counts wrong.
  labels = [r["targets_pretokenized"] for r in pairs]
  result = testing.score_predictions(tiny_tasks.task_name("pair_digits"), pairs,
                                     predictions=["duplicate"] * 4)
  assert result["accuracy"] == pytest.approx(100 * labels.count("duplicate") / 4)
  result = testing.score_predictions(tiny_tasks.task_name("pair_digits"), pairs,
                                     predictions=labels)
  assert result == {"accuracy": 100.0, "f1": 100.0}


def test_eval_mixtures_hold_in_domain_and_shifted_sets():
  qa = seqio.get_mixture_or_task(tiny_tasks.QA_EVAL_MIXTURE)
  assert sorted(t.name for t in qa.tasks) == [
      "domain_shift_tiny_qa", "domain_shift_tiny_qa_long", "domain_shift_tiny_qa_new_keys"]
  pair = seqio.get_mixture_or_task(tiny_tasks.pair_mixture_name("digits", "letters"))
  assert sorted(t.name for t in pair.tasks) == ["domain_shift_tiny_pair_digits",
                                                "domain_shift_tiny_pair_letters"]
