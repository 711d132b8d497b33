"""Natural Questions (open): closed-book format and splits, reader task, SQuAD-style metrics."""
import json

import pytest
import seqio

from prompt_tuning.data import testing
from tasks import natural_questions

EXAMPLES = {"natural_questions_open": {
    "validation": [
        {"question": "who wrote hamlet", "answer": ["William Shakespeare", "Shakespeare"]},
        {"question": "capital of france", "answer": ["Paris"]},
    ],
    "train": [{"question": "largest planet", "answer": ["Jupiter"]}],
}}


@pytest.fixture
def mocked(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def test_dev_is_carved_from_train_and_validation_is_test():
  source = seqio.get_mixture_or_task("natural_questions_open_v100").source
  assert source.tfds_dataset._split_map == {  # pylint: disable=protected-access
      "train": "train[:-8757]", "validation": "train[-8757:]", "test": "validation"}


def test_closed_book_format(mocked):
  rows = testing.process("natural_questions_open_v100", split="test")
  assert [(r["inputs_pretokenized"], r["targets_pretokenized"], r["answers"]) for r in rows] == [
      ("nq question: who wrote hamlet", "William Shakespeare",
       ["William Shakespeare", "Shakespeare"]),
      ("nq question: capital of france", "Paris", ["Paris"])]
  taskless = testing.process("taskless_natural_questions_open_v100", split="test")
  assert [r["inputs_pretokenized"] for r in taskless] == ["who wrote hamlet", "capital of france"]
  train = testing.process("natural_questions_open_v100", split="validation")
  assert [r["inputs_pretokenized"] for r in train] == ["nq question: largest planet"]


def test_em_and_f1_take_the_best_answer_after_normalisation(mocked):
  rows = testing.process("natural_questions_open_v100", split="test")
  result = testing.score_predictions("natural_questions_open_v100", rows,
                                     predictions=["shakespeare.", "The city of Paris"])
  # "shakespeare." matches the second answer exactly; "city of paris" vs "paris": F1 1/2.
  assert result["em"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(100 * (1 + 0.5) / 2)


def test_reader_task_packs_retrieval_json_and_reports_recall(tmp_path):
  path = tmp_path / "dev.json"
  path.write_text(json.dumps([
      {"question": "who is bob?", "answers": ["Bob Smith"], "ctxs": [
          {"id": "1", "title": "Alice", "text": "Alice is here.", "score": 1.0,
           "has_answer": False},
          {"id": "2", "title": "Bob", "text": "Bob Smith is a man.", "score": 3.0,
           "has_answer": True}]},
      {"question": "who is zed?", "answers": ["Zed"], "ctxs": [
          {"id": "3", "title": "Long", "text": "word " * 200, "score": 9.0,
           "has_answer": True}]},
  ]))
  name = "test_reader_v100"
  natural_questions.register_reader(name=name, files={"validation": str(path)})
  rows = testing.process(name, split="validation", sequence_length={"inputs": 64, "targets": 8})
  assert rows[0]["inputs_pretokenized"] == (
      "question: who is bob? title: Bob context: Bob Smith is a man. "
      "title: Alice context: Alice is here.")
  # The only passage of the second question is longer than the budget: nothing is packed.
  assert rows[1]["inputs_pretokenized"] == "question: who is zed?"
  assert [bool(r["answer_in_input"]) for r in rows] == [True, False]
  result = testing.score_predictions(name, rows, predictions=["Bob Smith", "Zed"])
  assert result == {"em": 100.0, "f1": 100.0, "recall_at_input": 50.0}


def test_reader_without_configured_directory_names_the_variable(monkeypatch):
  monkeypatch.delenv(natural_questions.READER_DIR_ENV, raising=False)
  task = seqio.get_mixture_or_task(natural_questions.READER_TASK)
  with pytest.raises(FileNotFoundError, match=natural_questions.READER_DIR_ENV):
    task.get_dataset(sequence_length={"inputs": 32, "targets": 8}, split="validation")
