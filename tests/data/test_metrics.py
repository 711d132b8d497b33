"""Metric functions on hand-made predictions."""
import pytest

from prompt_tuning.data import metrics


def test_accuracy_and_length_check():
  assert metrics.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == {"accuracy": 50.0}
  with pytest.raises(ValueError, match="3 targets but 2 predictions"):
    metrics.accuracy([1, 2, 3], [1, 2])


def test_binary_and_macro_f1():
  # tp 2, fp 1, fn 1 -> 2*2 / (4 + 1 + 1)
  assert metrics.f1_binary([1, 1, 1, 0], [1, 1, 0, 1])["f1"] == pytest.approx(100 * 4 / 6)
  macro = metrics.macro_f1(3)([0, 0, 1, 2], [0, 1, 1, 1])
  # class 0: tp 1 fn 1 -> 2/3; class 1: tp 1 fp 2 -> 2/4; class 2: fn 1 -> 0
  assert macro["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)


def test_matthews_perfect_inverse_and_degenerate():
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0])["matthews_corrcoef"] == 100.0
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [0, 1, 0, 1])["matthews_corrcoef"] == -100.0
  assert metrics.matthews_corrcoef([1, 1], [1, 1])["matthews_corrcoef"] == 0.0


def test_pearson_spearman():
  result = metrics.pearson_spearman([1.0, 2.0, 3.0], [2.0, 4.0, 6.5])
  assert result["spearman_corrcoef"] == pytest.approx(100.0)
  assert result["pearson_corrcoef"] == pytest.approx(99.8, abs=0.1)


def test_squad_normalisation_and_token_f1():
  assert metrics.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
  result = metrics.squad([["Eiffel Tower", "the tower"], ["Paris"]],
                         ["eiffel tower.", "Paris, France"])
  # second: 1 common token, precision 1/2, recall 1 -> F1 2/3
  assert result["em"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  assert metrics.squad([[]], ["x"]) == {"em": 0.0, "f1": 0.0}


def test_multirc_groups_by_question():
  targets = [{"group": (0, 0), "value": 1}, {"group": (0, 0), "value": 0},
             {"group": (0, 1), "value": 0}]
  result = metrics.multirc(targets, [1, 0, 1])
  # F1a over options: tp 1, fp 1 -> 2/3; question (0,0) exact, (0,1) not.
  assert result == {"f1a": pytest.approx(200 / 3), "exact_match": 50.0}


def test_record_keeps_the_first_row_of_each_query():
  targets = [{"group": (0, 0), "answers": ["Ann", "Annie"]},
             {"group": (0, 0), "answers": ["Ann", "Annie"]},
             {"group": (0, 1), "answers": ["Bob"]}]
  assert metrics.record(targets, ["annie", "wrong", "Bob"]) == {"em": 100.0, "f1": 100.0}


def test_bleu_and_rouge2():
  assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"])["bleu"] == (
      pytest.approx(100.0))
  assert metrics.bleu(["the cat sat on the mat"], ["a dog"])["bleu"] == pytest.approx(0.0)
  # bigrams of the reference: the cat, cat sat, sat down; prediction shares "the cat".
  result = metrics.rouge2(["the cat sat down"], ["the cat ran"])
  assert result["rouge2"] == pytest.approx(100 * 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_rank_classification_groups_rows_by_example():
  targets = [(0, True), (0, False), (1, False), (1, True), (1, True), (2, False), (2, True)]
  scores = [-1.0, -2.0, -0.5, -3.0, -0.4, -0.1, -0.2]
  # example 0 right, example 1 picks row 4 (correct), example 2 picks a wrong row.
  assert metrics.rank_classification(targets, scores)["accuracy"] == pytest.approx(200 / 3)


def test_median_over_templates_and_missing_results():
  results = {"a1": {"accuracy": 10.0}, "a2": {"accuracy": 50.0}, "a3": {"accuracy": 20.0},
             "b1": {"accuracy": 70.0}, "b2": {"accuracy": 80.0}}
  assert metrics.median_over_templates(results, {"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}) == {
      "a": 20.0, "b": 75.0}
  with pytest.raises(ValueError, match="a4"):
    metrics.median_over_templates(results, {"a": ["a1", "a4"]})


def test_normalized_average_maps_ranges():
  assert metrics.normalized_average({"acc": 80.0, "bleu": 20.0}) == 50.0
  assert metrics.normalized_average({"acc": 80.0, "frac": 0.4},
                                    ranges={"frac": (0.0, 1.0)}) == 60.0
  with pytest.raises(ValueError, match="at least one"):
    metrics.normalized_average({})
  with pytest.raises(ValueError, match="high > low"):
    metrics.normalized_average({"x": 1.0}, ranges={"x": (1.0, 1.0)})


def test_reader_metric_adds_recall_at_input():
  targets = [{"answers": ["Bob"], "answer_in_input": True},
             {"answers": ["Zed"], "answer_in_input": False}]
  assert metrics.reader(targets, ["bob", "Zed"]) == {
      "em": 100.0, "f1": 100.0, "recall_at_input": 50.0}


def test_invalid_predictions_count_as_t5_counts_them():
  # F1: -1 becomes the wrong class. Targets [1, 1, 0, 0], predictions [1, -1, -1, 0] ->
  # [1, 0, 1, 0]: tp 1, fp 1, fn 1 -> 0.5 (ignoring the invalid ones would give 1.0).
  assert metrics.f1_binary([1, 1, 0, 0], [1, -1, -1, 0])["f1"] == pytest.approx(50.0)
  # Matthews: -1 is a third class. Targets [1, 0, 1, 0], predictions [1, 0, -1, 0]:
  # 3 right of 4, true counts (0, 2, 2), predicted (1, 2, 1) for classes (-1, 0, 1):
  # (3 * 4 - (0 + 4 + 2)) / sqrt((16 - 6) * (16 - 8)) = 6 / sqrt(80) = 0.6708.
  # Counting -1 as class 0 would give the binary 1 / sqrt(3) = 0.5774.
  value = metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, -1, 0])["matthews_corrcoef"]
  assert value == pytest.approx(100 * 6 / 80 ** 0.5)
  # Three real classes (AX, MNLI labels): perfect is 100, and matches the binary on two.
  assert metrics.matthews_corrcoef([0, 1, 2, 2], [0, 1, 2, 2])["matthews_corrcoef"] == 100.0
  assert metrics.matthews_corrcoef([1, 1, 0, 1], [1, 0, 0, 1])["matthews_corrcoef"] == \
      pytest.approx(100 * 2 / 12 ** 0.5)
