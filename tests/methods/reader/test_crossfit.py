"""Cross-fitting: no re-ranker scores a question it was trained on (splits, the scoring step's
check, and the wiring of both pipelines)."""
import re

import pytest

from prompt_tuning.methods.reader import crossfit
from prompt_tuning.methods.reader import steps
from tests.methods.reader.conftest import planted_records, write_json
from tests.pipelines import dry_run


def _questions(records):
  return {crossfit.question_key(r["question"]) for r in records}


def test_halves_are_question_disjoint_and_cover_every_entry():
  records = planted_records(21, 3, seed=0)
  records.append(dict(records[4], question="What is item 4 ?"))  # same question, new casing
  half_a, half_b = crossfit.split_halves(records, seed=5)
  assert len(half_a) + len(half_b) == len(records) == 22
  assert not _questions(half_a) & _questions(half_b)
  assert abs(len(_questions(half_a)) - len(_questions(half_b))) <= 1
  # Duplicates land in the same half.
  assert sum(crossfit.question_key(r["question"]) == "what is item 4" for r in half_a) in (0, 2)
  assert crossfit.split_halves(records, seed=5) == (half_a, half_b)


def test_scoring_a_question_the_reranker_was_trained_on_is_refused(tmp_path):
  records = planted_records(6, 3, seed=1)
  train = write_json(tmp_path / "train_a.json", records[:3])
  other = write_json(tmp_path / "train_b.json", records[3:])
  fresh = planted_records(2, 3, seed=2, start=100)
  leaked = write_json(tmp_path / "dev.json", fresh + [records[1]])
  crossfit.check_not_trained_on(other, [train])  # disjoint: fine
  message = (r"^Cross-fitting violated: question 2 of .*dev\.json \('what is item 1\?'\) is in "
             r"the re-ranker's training file .*train_a\.json\.$")
  with pytest.raises(ValueError, match=message):
    crossfit.check_not_trained_on(leaked, [other, train])
  # The step checks before it loads anything: the checkpoint does not even exist.
  with pytest.raises(ValueError, match=message):
    steps.reader_score(stage_dir=str(tmp_path), checkpoint=str(tmp_path / "none"),
                       trained_on=[train], file=leaked, preset="t5_1_1_tiny", passage_length=8)


def _stages(gin_file, pipeline_dir, bindings=()):
  spec, _, _ = dry_run.plan([f"--gin_file={gin_file}", f"--pipeline_dir={pipeline_dir}"] +
                            [f"--gin.{b}" for b in bindings])
  return {s.name: s for s in spec.stages}


def _reference(value):
  match = re.fullmatch(r"'?\{(\w+)\.(\w+)\}'?", value)
  assert match, value
  return match.groups()


@pytest.mark.parametrize("gin_file, bindings", [
    ("gin/methods/reader/reader_tiny.gin", ()),
    ("gin/methods/reader/reader_t5_1_1_xxl.gin",
     ("TRAIN_FILE='/d/train.json'", "DEV_FILE='/d/dev.json'", "TEST_FILE='/d/test.json'",
      "RERANKER_BASE='/c/base'", "READER_BASE='/c/xxl'")),
])
def test_each_scoring_stage_reads_a_reranker_trained_on_other_questions(gin_file, bindings,
                                                                       tmp_path):
  stages = _stages(gin_file, tmp_path / "pipe", bindings)
  scoring = [s for s in stages.values() if s.kind == "reader_score"]
  assert sorted(s.name for s in scoring) == ["score_a", "score_b", "score_dev", "score_test"]
  split_inputs = stages["split"].inputs
  halves = {"half_a", "half_b"}
  scored = {}
  for stage in scoring:
    source, output = _reference(stage.inputs["checkpoint"])
    assert output == "checkpoint" and stages[source].kind == "train"
    trained = _reference(stages[source].bindings["RERANKER_TRAIN_FILE"])
    # What the step is told it was trained on is what the training stage read.
    assert [_reference(t) for t in stage.inputs["trained_on"]] == [trained]
    file = stage.inputs["file"]
    if file.startswith("{split."):
      assert _reference(file)[1] in halves
      assert _reference(file) != trained  # the other half
      assert trained[1] in halves
    else:
      assert stage.name in ("score_dev", "score_test")
      assert trained == ("split", "train") and file != split_inputs["train_file"]
    scored[stage.name] = file
  # Each half is scored exactly once, by the re-ranker of the other half; both go to merge.
  assert sorted(_reference(scored[n])[1] for n in ("score_a", "score_b")) == ["half_a", "half_b"]
  assert [_reference(p)[0] for p in stages["merge"].inputs["parts"]] == ["score_a", "score_b"]
  reader_files = stages["reader"].bindings
  assert _reference(reader_files["READER_TRAIN_FILE"]) == ("merge", "train")
  assert _reference(reader_files["READER_DEV_FILE"]) == ("score_dev", "scored")
  assert _reference(reader_files["READER_TEST_FILE"]) == ("score_test", "scored")
