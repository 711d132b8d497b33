"""Greedy passage packing for the open-book reader: exact budget, order, recall-at-input."""
import json

import pytest
import tensorflow as tf

from prompt_tuning.data import reader
from prompt_tuning.data import testing
from prompt_tuning.data import vocabularies


@pytest.fixture(scope="module")
def vocabulary():
  return vocabularies.get_vocabulary(testing.fixture_vocab_path())


def _features(vocabulary):
  return vocabularies.text_to_text_features(vocabulary)


def _write(tmp_path, records):
  path = tmp_path / "retrieval.json"
  path.write_text(json.dumps(records))
  return str(path)


PASSAGES = [  # (title, text, score, has_answer)
    ("Alpha", "Alpha is the first letter of the Greek alphabet and has a long history.", 3.0,
     False),
    ("Beta", "Beta comes second, and it is used widely in finance and in physics too.", 2.0, True),
    ("Gamma", "Gamma rays.", 1.0, True),
]


def _record(passages=PASSAGES):
  return {"question": "which letter comes first?", "answers": ["Alpha"],
          "ctxs": [{"id": str(i), "title": t, "text": x, "score": s, "has_answer": h}
                   for i, (t, x, s, h) in enumerate(passages)]}


def _pack(path, vocabulary, inputs_length):
  ds = reader.pack_passages(reader.retrieval_dataset(path), {"inputs": inputs_length},
                            _features(vocabulary))
  return list(ds.as_numpy_iterator())


def test_greedy_packing_fills_the_budget_exactly(tmp_path, vocabulary):
  prefix = vocabulary.encode("question: which letter comes first?")
  alpha, beta, gamma = (vocabulary.encode(f"title: {t} context: {x}") for t, x, _, _ in PASSAGES)
  assert len(gamma) < len(beta)
  # Room (besides EOS) for the prefix, Alpha and Gamma, but not Beta.
  length = len(prefix) + len(alpha) + len(gamma) + 1
  [packed] = _pack(_write(tmp_path, [_record()]), vocabulary, length)
  assert packed["inputs"].tolist() == prefix + alpha + gamma
  assert len(packed["inputs"]) == length - 1
  assert packed["num_passages"] == 2
  assert bool(packed["answer_in_input"])  # Gamma carries the answer
  assert packed["inputs_pretokenized"].decode() == (
      "question: which letter comes first? title: Alpha context: " + PASSAGES[0][1] +
      " title: Gamma context: Gamma rays.")
  assert vocabulary.decode(packed["inputs"].tolist()) == packed["inputs_pretokenized"].decode()


def test_one_token_less_drops_the_passage_that_no_longer_fits(tmp_path, vocabulary):
  prefix = vocabulary.encode("question: which letter comes first?")
  alpha, _, gamma = (vocabulary.encode(f"title: {t} context: {x}") for t, x, _, _ in PASSAGES)
  length = len(prefix) + len(alpha) + len(gamma)  # one short of Alpha + Gamma
  [packed] = _pack(_write(tmp_path, [_record()]), vocabulary, length)
  assert packed["inputs"].tolist() == prefix + alpha
  assert not bool(packed["answer_in_input"])


def test_passages_are_taken_by_score_not_file_order(tmp_path, vocabulary):
  reordered = [PASSAGES[2], PASSAGES[0], PASSAGES[1]]
  [packed] = _pack(_write(tmp_path, [_record(reordered)]), vocabulary, 512)
  assert packed["inputs_pretokenized"].decode().split(" title: ")[1:] == [
      f"{t} context: {x}" for t, x, _, _ in PASSAGES]


def test_missing_scores_keep_retrieval_order_and_has_answer_is_computed(tmp_path, vocabulary):
  record = {"question": "q?", "answers": ["the Beta"],
            "ctxs": [{"id": "1", "title": "A", "text": "nothing here"},
                     {"id": "2", "title": "B", "text": "Beta, again."}]}
  [packed] = _pack(_write(tmp_path, [record]), vocabulary, 512)
  assert packed["inputs_pretokenized"].decode() == (
      "question: q? title: A context: nothing here title: B context: Beta, again.")
  assert bool(packed["answer_in_input"])


def test_question_without_passages(tmp_path, vocabulary):
  [packed] = _pack(_write(tmp_path, [{"question": "q?", "answers": [], "ctxs": []}]),
                   vocabulary, 16)
  assert packed["inputs"].tolist() == vocabulary.encode("question: q?")
  assert packed["num_passages"] == 0 and packed["targets"] == b""


def test_bad_files_are_reported(tmp_path, vocabulary):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    reader.read_retrieval_file(str(tmp_path / "nope.json"))
  bad = tmp_path / "bad.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not valid JSON"):
    reader.read_retrieval_file(str(bad))
  bad.write_text(json.dumps([{"question": "q"}]))
  with pytest.raises(ValueError, match="Entry 0 .* lacks 'question' or 'ctxs'"):
    reader.read_retrieval_file(str(bad))
  with pytest.raises(ValueError, match="sequence_length"):
    reader.pack_passages(tf.data.Dataset.range(1), {}, _features(vocabulary))


def test_recall_at_input_counts_the_packed_passages_not_the_file_order(tmp_path, vocabulary):
  """Answers are looked up in the passages the budget kept, ranked by score.

  Every question has Alpha, Beta and Gamma (scores 3, 2, 1) in a different file order; the
  budget keeps Alpha and Gamma and skips Beta. Which passage carries the answer decides, by
  hand: B-A-G/Beta no, A-G-B/Gamma yes, B-G-A/Alpha yes, G-A-B/Gamma yes, B-G-A/Gamma yes,
  so 4 of 5. Pairing the kept mask (score order) with the flags in file order would say yes,
  no, yes, yes, no: 3 of 5.
  """
  prefix = vocabulary.encode("question: which letter comes first?")
  alpha, _, gamma = (vocabulary.encode(f"title: {t} context: {x}") for t, x, _, _ in PASSAGES)
  by_title = {p[0]: p for p in PASSAGES}
  cases = [("Beta Alpha Gamma", "Beta", False), ("Alpha Gamma Beta", "Gamma", True),
           ("Beta Gamma Alpha", "Alpha", True), ("Gamma Alpha Beta", "Gamma", True),
           ("Beta Gamma Alpha", "Gamma", True)]
  records = []
  for file_order, answer_in, _ in cases:
    records.append(_record([by_title[t][:3] + (t == answer_in,) for t in file_order.split()]))
  packed = _pack(_write(tmp_path, records), vocabulary, len(prefix) + len(alpha) + len(gamma) + 1)
  assert [p["inputs"].tolist() for p in packed] == [prefix + alpha + gamma] * 5
  assert [int(p["num_passages"]) for p in packed] == [2] * 5
  assert [bool(p["answer_in_input"]) for p in packed] == [expected for *_, expected in cases]
  assert sum(bool(p["answer_in_input"]) for p in packed) == 4
