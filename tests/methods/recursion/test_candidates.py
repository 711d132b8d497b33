"""Textual recursion's candidate stage and second-stage task, on hand-written sampling output."""
import json
import os

import pytest
import seqio

from prompt_tuning.methods.recursion import candidates
from prompt_tuning.methods.recursion import tasks


def sampled(inputs, target, decodes):
  """One infer record: all decodes with scores, best first."""
  rows = [{"prediction": p, "tokens": [], "score": s} for p, s in decodes]
  return {"index": 0, "inputs": inputs, "targets": target, **rows[0], "decodes": rows}


RECORDS = [
    sampled("q1", "Paris", [("Paris", -0.5), ("Lyon", -1.0), ("Paris", -2.0), ("Nice", -3.0)]),
    sampled("q2", "Rome", [("Milan", -0.2), ("Turin", -0.9), ("rome", -1.5), ("Bari", -2.5)]),
    sampled("q3", "Oslo", [("Bergen", -0.1), ("Bergen", -0.4), ("Tromso", -0.6), ("Oslo", -4.0)]),
    sampled("q4", "Bern", [("Zurich", -0.3), ("Basel", -0.7), ("Geneva", -1.1), ("Lugano", -2.0)]),
]


def write(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")
  return str(path)


@pytest.mark.parametrize("n,recall", [(1, 25.0), (2, 25.0), (3, 50.0), (4, 75.0)])
def test_recall_of_candidates_matches_hand_counts(n, recall):
  # n=1: only q1's best is right; n=3 adds q2 ("rome" normalises to "Rome"); n=4 adds q3.
  examples = candidates.build_examples(RECORDS, n)
  assert candidates.recall_of_candidates(examples) == pytest.approx(recall)


def test_candidates_are_ordered_best_first_without_repeats():
  examples = candidates.build_examples(RECORDS)
  assert examples[0]["candidates"] == ["Paris", "Lyon", "Nice"]
  assert examples[2]["candidates"] == ["Bergen", "Tromso", "Oslo"]
  # A decode that ended at once (an empty answer) is no candidate.
  early = sampled("q5", "Bern", [("", -0.1), ("Bern", -0.5), (" ", -0.7)])
  assert candidates.candidates_of(early, None) == ["Bern"]
  shuffled = dict(RECORDS[1], decodes=list(reversed(RECORDS[1]["decodes"])))
  assert candidates.candidates_of(shuffled, 2) == ["Milan", "Turin"]


def test_the_step_writes_deterministically_and_a_rerun_skips(tmp_path):
  train = write(tmp_path / "train.jsonl", RECORDS)
  validation = write(tmp_path / "validation.jsonl", RECORDS[:2])
  out = tmp_path / "stage"
  out.mkdir()
  result = candidates.recursion_candidates(stage_dir=str(out), train_predictions=train,
                                           validation_predictions=validation, num_candidates=4)
  assert result == {"recall": 100.0, "train_examples": 4, "validation_examples": 2}
  first = (out / "train.jsonl").read_bytes()
  stamp = os.stat(out / "train.jsonl").st_mtime_ns
  again = candidates.write_split(source=train, out_dir=str(out), split="train", num_candidates=4)
  assert again["skipped"] and os.stat(out / "train.jsonl").st_mtime_ns == stamp
  # Other settings redo the split; the same settings again reproduce the same bytes.
  assert not candidates.write_split(source=train, out_dir=str(out), split="train",
                                    num_candidates=1)["skipped"]
  assert not candidates.write_split(source=train, out_dir=str(out), split="train",
                                    num_candidates=4)["skipped"]
  assert (out / "train.jsonl").read_bytes() == first


def test_a_missing_sampling_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.jsonl does not exist"):
    candidates.write_split(source=str(tmp_path / "nowhere.jsonl"), out_dir=str(tmp_path),
                           split="train")
  assert not os.path.exists(tmp_path / "train.jsonl")


def test_the_second_stage_task_reads_question_and_candidates(tmp_path):
  write(tmp_path / "train.jsonl", candidates.build_examples(RECORDS, 2))
  name = tasks.candidates_task(directory=str(tmp_path), vocabulary=seqio.ByteVocabulary(),
                               name="recursion_candidates_test")
  task = seqio.get_mixture_or_task(name)
  rows = list(task.get_dataset({"inputs": 64, "targets": 8}, split="train", shuffle=False)
              .as_numpy_iterator())
  assert len(rows) == 4
  assert rows[0]["inputs_pretokenized"].decode() == "question: q1 candidates: (1) Paris (2) Lyon"
  assert rows[1]["targets_pretokenized"].decode() == "Rome"
  assert rows[0]["targets"][-1] == 1  # EOS
  assert tasks.exact_match(["Rome", "Oslo"], ["rome.", "Bergen"]) == {"exact_match": 50.0}
