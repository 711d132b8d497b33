"""The synthetic retrieval set and the demo's wiring (a short run is slow: about 2.5 minutes)."""
import pytest

from prompt_tuning.data import metrics
from prompt_tuning.methods.reader import demo, synthetic


def test_each_synthetic_question_has_one_answer_passage_among_look_alikes():
  records = synthetic.make_records(40, num_passages=20, seed=3)
  assert len({r["question"] for r in records}) == 40
  for record in records:
    positives = [c for c in record["ctxs"] if c["has_answer"]]
    assert len(positives) == 1 and len(record["ctxs"]) == 20
    name = record["question"][len("what is the code of "):-1]
    assert positives[0]["text"] == f"{name} has code {record['answers'][0]} ."
    assert all(not c["text"].startswith(name + " ") for c in record["ctxs"] if not c["has_answer"])
    scores = [c["score"] for c in record["ctxs"]]
    assert scores == sorted(scores, reverse=True)
  # The noisy retriever puts the answer passage first for some questions, not for most.
  firsts = sum(r["ctxs"][0]["has_answer"] for r in records)
  assert 4 <= firsts <= 30, firsts
  with pytest.raises(ValueError, match="At most 256 synthetic questions"):
    synthetic.make_records(257)


def test_oracle_records_put_the_answer_passage_in_the_first_three_places():
  records = demo.oracle_records(synthetic.make_records(30, seed=4), seed=0)
  places = [next(i for i, c in enumerate(r["ctxs"]) if c["has_answer"]) for r in records]
  assert set(places) == {0, 1, 2}
  assert metrics.normalize_answer("The Red.") == "red"


@pytest.mark.slow
@pytest.mark.e2e
def test_the_quick_demo_prints_its_table(tmp_path, capsys):
  rows = demo.main(["--quick", "--workdir", str(tmp_path)])
  out = capsys.readouterr().out
  assert "| retriever score" in out and "| re-ranker score" in out
  # The data and the packing are seeded: 40 of the 64 dev questions get the answer passage
  # into the input by retriever score; forcing it in gives 100.
  assert rows["retriever score"]["recall_at_input"] == pytest.approx(62.5)
  assert rows["answer passage forced in"]["recall_at_input"] == 100.0
  assert all(0.0 <= row["em"] <= 100.0 for row in rows.values())
