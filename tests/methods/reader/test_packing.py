"""Packing by re-ranker score with the real T5 SentencePiece vocabulary; recall-at-input;
malformed retrieval files."""
import json

import pytest

from prompt_tuning.data import reader
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import packing
from tests.methods.reader.conftest import write_json


def _ctx(i, text, score, has_answer, retriever_score=None):
  ctx = {"id": str(i), "title": f"T{i}", "text": text, "score": score, "has_answer": has_answer}
  if retriever_score is not None:
    ctx["retriever_score"] = retriever_score
  return ctx


RESCORED = {"question": "who painted the ceiling?", "answers": ["Michelangelo"], "ctxs": [
    _ctx(0, "The ceiling was painted by Michelangelo between 1508 and 1512.", 0.5, True, 9.0),
    _ctx(1, "Rome is the capital of Italy.", 2.0, False, 7.0),
    _ctx(2, "A chapel in the Vatican, famous for its frescoes and its long history.", 1.0,
         False, 8.0)]}


def _ids(vocabulary, text):
  return list(vocabulary.encode(text))


def test_packing_follows_reranker_scores_and_fills_the_budget_exactly(vocabulary, tmp_path):
  path = write_json(tmp_path / "dev.json", [RESCORED])
  prefix = _ids(vocabulary, "question: who painted the ceiling?")
  p0, p1, p2 = (_ids(vocabulary, f"title: {c['title']} context: {c['text']}")
                for c in RESCORED["ctxs"])
  # Re-ranker order is 1, 2, 0; room for the prefix and passages 1 and 2 exactly (+ EOS).
  length = len(prefix) + len(p1) + len(p2) + 1
  [row] = packing.packed_examples(path, vocabulary, length)
  assert row["inputs"].tolist() == prefix + p1 + p2
  assert len(row["inputs"]) == length - 1 and row["num_passages"] == 2
  assert not row["answer_in_input"]
  # One token more still leaves passage 0 out (it is longer than one token): never split.
  [row] = packing.packed_examples(path, vocabulary, length + 1)
  assert row["inputs"].tolist() == prefix + p1 + p2
  # Room for all three.
  [row] = packing.packed_examples(path, vocabulary, length + len(p0))
  assert row["inputs"].tolist() == prefix + p1 + p2 + p0 and row["answer_in_input"]


def test_split_last_passage_cuts_the_first_that_does_not_fit_to_the_exact_budget(
    vocabulary, tmp_path):
  path = write_json(tmp_path / "dev.json", [RESCORED])
  prefix = _ids(vocabulary, "question: who painted the ceiling?")
  p0, p1, p2 = (_ids(vocabulary, f"title: {c['title']} context: {c['text']}")
                for c in RESCORED["ctxs"])
  length = len(prefix) + len(p1) + 5 + 1  # passage 2 gets 5 of its tokens
  assert len(p2) > 5
  [row] = packing.packed_examples(path, vocabulary, length, split_last_passage=True)
  assert row["inputs"].tolist() == prefix + p1 + p2[:5]
  assert len(row["inputs"]) == length - 1 and row["num_passages"] == 2
  assert row["inputs_pretokenized"].decode().endswith(vocabulary.decode(p2[:5]))
  [row] = packing.packed_examples(path, vocabulary, length)
  assert row["inputs"].tolist() == prefix + p1  # unsplit: passage 2 skipped, 0 too long


WORDS = ("red", "blue", "green", "gold")  # each pair text is 8 tokens, each question 5


def test_recall_at_input_before_and_after_reranking_matches_hand_counts(vocabulary, tmp_path):
  # Four questions of four passages; the budget holds exactly two passages.
  answers = [{0}, {3}, set(), {1}]  # which passages hold the answer
  retriever = [[0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [2, 1, 0, 3]]  # best first
  reranker = [[0, 2, 1, 3], [3, 0, 1, 2], [1, 0, 2, 3], [0, 1, 2, 3]]
  # By hand, top two: retriever q0 {0,1} hit, q1 {0,1} miss, q2 miss, q3 {2,1} hit -> 2 of 4;
  # re-ranker q0 {0,2} hit, q1 {3,0} hit, q2 miss, q3 {0,1} hit -> 3 of 4.
  files = {}
  for name, order in (("retriever", retriever), ("reranker", reranker)):
    records = []
    for q in range(4):
      ctxs = [{"id": f"{q}-{p}", "title": "t", "text": f"passage {WORDS[p]}",
               "score": float(4 - order[q].index(p)), "has_answer": p in answers[q]}
              for p in range(4)]
      records.append({"question": f"question {WORDS[q]}?", "answers": ["x"], "ctxs": ctxs})
    files[name] = write_json(tmp_path / f"{name}.json", records)
  assert {len(vocabulary.encode(f"question: question {w}?")) for w in WORDS} == {5}
  assert {len(vocabulary.encode(f"title: t context: passage {w}")) for w in WORDS} == {8}
  length = 5 + 2 * 8 + 1  # prefix, two passages, EOS
  before = packing.recall_at_input(files["retriever"], vocabulary, length)
  after = packing.recall_at_input(files["reranker"], vocabulary, length)
  assert before == {"recall_at_input": 50.0, "questions": 4, "answer_in_input": 2,
                    "mean_passages": 2.0}
  assert after == {"recall_at_input": 75.0, "questions": 4, "answer_in_input": 3,
                   "mean_passages": 2.0}
  # One token less: one passage fits; by retriever only q0's first holds an answer.
  assert packing.recall_at_input(files["retriever"], vocabulary, length - 1)[
      "answer_in_input"] == 1


@pytest.mark.parametrize("records, strict, message", [
    ([{"question": "a", "ctxs": [{"text": "x"}]}, {"question": "b"}], False,
     r"^Entry 1 of .*bad\.json lacks 'question' or 'ctxs'\.$"),
    ([{"question": "a", "ctxs": [{"text": "x"}, {"title": "no text"}]}], False,
     r"^Entry 0 of .*bad\.json has a passage \(ctxs\[1\]\) with no text\.$"),
    ([{"question": "a", "ctxs": [{"text": "x"}]}, {"question": "b", "ctxs": [{"text": " "}]}],
     False, r"^Entry 1 of .*bad\.json has a passage \(ctxs\[0\]\) with no text\.$"),
    ([{"question": "a", "ctxs": [{"text": "x"}]}, {"question": "b", "ctxs": []}], True,
     r"^Entry 1 of .*bad\.json has an empty 'ctxs' list \(no retrieved passages\)\.$"),
    ([], False, r"^Retrieval file .*bad\.json holds an empty list \(no questions\)\.$"),
])
def test_malformed_retrieval_files_stop_with_one_sentence(tmp_path, records, strict, message):
  path = write_json(tmp_path / "bad.json", records)
  with pytest.raises(ValueError, match=message) as error:
    reader.read_retrieval_file(path, require_passages=strict)
  assert "\n" not in str(error.value)
  if strict or not records:
    # The re-ranker's reader is strict: the same sentence, before any tokenization.
    with pytest.raises(ValueError, match=message):
      data_lib.read_records(path)
  json.loads(open(path).read())  # the file is left as it was
