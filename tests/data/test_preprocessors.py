"""Shared preprocessors, formatters and postprocessors on hand-made tensors."""
import numpy as np
import pytest
import tensorflow as tf

from prompt_tuning.data import fewshot
from prompt_tuning.data import glue_formats
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import testing
from prompt_tuning.data import vocabularies


@pytest.fixture(scope="module")
def features():
  return vocabularies.text_to_text_features(
      vocabularies.get_vocabulary(testing.fixture_vocab_path()))


def _one(dataset):
  return list(dataset.as_numpy_iterator())


def test_tokenize_and_append_eos_trims_to_leave_room(features):
  vocab = features["inputs"].vocabulary
  ds = tf.data.Dataset.from_tensors({"inputs": "one two three four five", "targets": [7, 8, 9]})
  [ex] = _one(preprocessors.tokenize_and_append_eos(ds, features, {"inputs": 3, "targets": 10}))
  assert ex["inputs"].tolist() == vocab.encode("one two three four five")[:2] + [1]
  assert ex["inputs_pretokenized"] == b"one two three four five"
  assert ex["targets"].tolist() == [7, 8, 9, 1]  # ids are kept, not re-tokenized
  assert "targets_pretokenized" not in ex


def test_drop_trailing_eos_only_removes_one_final_eos(features):
  ds = tf.data.Dataset.from_tensor_slices({"inputs": tf.ragged.constant([[5, 1], [5, 6], []])})
  ds = ds.map(lambda x: {"inputs": x["inputs"]})
  out = _one(preprocessors.drop_trailing_eos(ds, features))
  assert [ex["inputs"].tolist() for ex in out] == [[5], [5, 6], []]


def test_rank_classification_expands_choices():
  ds = tf.data.Dataset.from_tensor_slices({
      "inputs": ["q0", "q1"], "choices": [["a", "b", "c"], ["a", "b", "c"]],
      "correct": [[False, True, False], [True, False, False]]})
  rows = _one(preprocessors.rank_classification(ds))
  assert [(r["inputs"], r["targets"], r["idx"].tolist(), bool(r["is_correct"])) for r in rows] == [
      (b"q0", b"a", [0, 0], False), (b"q0", b"b", [0, 1], True), (b"q0", b"c", [0, 2], False),
      (b"q1", b"a", [1, 0], True), (b"q1", b"b", [1, 1], False), (b"q1", b"c", [1, 2], False)]
  assert all(r["weight"] == 1.0 for r in rows)


def test_wsc_marks_words_with_regex_characters():
  fmt = glue_formats.wsc(task_prefix=None, label_names=("False", "True"))
  ex = fmt({"text": tf.constant("Mr. (Smith) told Bob that he won."),
            "span1_text": tf.constant("(Smith)"), "span1_index": tf.constant(1),
            "span2_text": tf.constant("he"), "span2_index": tf.constant(5),
            "label": tf.constant(-1, tf.int64)})
  assert ex["inputs"].numpy() == b"text: Mr. * (Smith) * told Bob that # he # won."
  assert ex["targets"].numpy() == b"<unk>"


def test_fill_template_reads_nested_features():
  text = fewshot.fill_template("Q: {question} A: {answer/value}.", {
      "question": tf.constant("who?"), "answer": {"value": tf.constant("Bob")}})
  assert text.numpy() == b"Q: who? A: Bob."


def test_postprocessors():
  assert postprocessors.until_next_example(" Paris\n\nQ: next A:", ["Q:"]) == "Paris"
  assert postprocessors.until_next_example("no prefix here", ["Q:", "Article:"]) == (
      "no prefix here")
  assert postprocessors.first_word("  True, because") == "true"
  to_id = postprocessors.fewshot_label(["true", "false", "neither"])
  assert [to_id(t) for t in ["Neither.", "false", "maybe", ""]] == [2, 1, -1, -1]
  assert postprocessors.label_to_class_id(["no", "yes"])(b" yes ") == 1
  assert postprocessors.string_to_float("3.4") == 3.4
  assert postprocessors.string_to_float("n/a") == -1.0
  example = {"idx": np.array([4, 1]), "is_correct": np.bool_(True)}
  assert postprocessors.rank_classification(-2.5, example=example, is_target=True) == (4, True)
  assert postprocessors.rank_classification(-2.5, example=example) == -2.5
