"""GLUE tasks: text-to-text format, STS-B rounding, MRPC<->QQP transfer, metrics, mixture."""
import pytest
import seqio

from prompt_tuning.data import testing
from tasks import glue

EXAMPLES = {
    "glue/cola": {"validation": [
        {"sentence": "The book was read.", "idx": 0, "label": 1},
        {"sentence": "Book the read was.", "idx": 1, "label": 0},
        {"sentence": "He ran.", "idx": 2, "label": 1},
        {"sentence": "Ran he the.", "idx": 3, "label": 0}]},
    "glue/mrpc": {"validation": [
        {"sentence1": "He left.", "sentence2": "He went away.", "idx": 0, "label": 1},
        {"sentence1": "He left.", "sentence2": "She stayed.", "idx": 1, "label": 0},
        {"sentence1": "It is red.", "sentence2": "It's red.", "idx": 2, "label": 1}]},
    "glue/qqp": {"validation": [
        {"question1": "How old is he?", "question2": "What is his age?", "idx": 0, "label": 1}]},
    "glue/stsb": {"validation": [
        {"sentence1": "A man sings.", "sentence2": "A man is singing.", "idx": 0, "label": 4.93},
        {"sentence1": "A cat.", "sentence2": "A plane.", "idx": 1, "label": 0.11},
        {"sentence1": "A dog.", "sentence2": "A puppy.", "idx": 2, "label": 3.0}]},
    "glue/mnli": {"validation_matched": [
        {"premise": "He slept.", "hypothesis": "He was awake.", "idx": 0, "label": 2}],
                  "validation_mismatched": [
        {"premise": "It snowed.", "hypothesis": "It was cold.", "idx": 0, "label": 0}]},
    "glue/qnli": {"validation": [
        {"question": "Who ran?", "sentence": "Bob ran.", "idx": 0, "label": 0}]},
    "glue/sst2": {"validation": [{"sentence": "great film", "idx": 0, "label": 1}]},
}


@pytest.fixture
def mocked(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def _text(name):
  return [(ex["inputs_pretokenized"], ex["targets_pretokenized"])
          for ex in testing.process(name, split="validation")]


@pytest.mark.parametrize("name,expected", [
    ("glue_cola_v200", [("cola sentence: The book was read.", "acceptable"),
                        ("cola sentence: Book the read was.", "unacceptable"),
                        ("cola sentence: He ran.", "acceptable"),
                        ("cola sentence: Ran he the.", "unacceptable")]),
    ("glue_sst2_v200", [("sst2 sentence: great film", "positive")]),
    ("glue_qqp_v200", [("qqp question1: How old is he? question2: What is his age?",
                        "duplicate")]),
    ("glue_qnli_v200", [("qnli question: Who ran? sentence: Bob ran.", "entailment")]),
    ("glue_mnli_matched_v200", [("mnli hypothesis: He was awake. premise: He slept.",
                                 "contradiction")]),
    ("glue_mnli_mismatched_v200", [("mnli hypothesis: It was cold. premise: It snowed.",
                                    "entailment")]),
    ("taskless_glue_mrpc_v200", [("sentence1: He left. sentence2: He went away.", "equivalent"),
                                 ("sentence1: He left. sentence2: She stayed.", "not_equivalent"),
                                 ("sentence1: It is red. sentence2: It's red.", "equivalent")]),
])
def test_text_to_text_format(mocked, name, expected):
  assert _text(name) == expected


def test_stsb_targets_round_to_the_nearest_fifth(mocked):
  assert [t for _, t in _text("glue_stsb_v200")] == ["5.0", "0.2", "3.0"]
  assert _text("glue_stsb_v200")[0][0] == (
      "stsb sentence1: A man sings. sentence2: A man is singing.")


def test_mrpc_as_qqp_translates_field_names_and_labels(mocked):
  assert _text("glue_mrpc_as_qqp_v200") == [
      ("qqp question1: He left. question2: He went away.", "duplicate"),
      ("qqp question1: He left. question2: She stayed.", "not_duplicate"),
      ("qqp question1: It is red. question2: It's red.", "duplicate")]
  assert _text("taskless_glue_qqp_as_mrpc_v200") == [
      ("sentence1: How old is he? sentence2: What is his age?", "equivalent")]


def test_transfer_scores_predictions_in_the_borrowed_label_words(mocked):
  rows = testing.process("glue_mrpc_as_qqp_v200", split="validation")
  # A QQP prompt answers in QQP words; "equivalent" is not one of them and counts as wrong.
  result = testing.score_predictions("glue_mrpc_as_qqp_v200", rows,
                                     predictions=["duplicate", "duplicate", "equivalent"])
  assert result["accuracy"] == pytest.approx(100 / 3)
  # Positive class: tp 1, fp 1, fn 1 -> F1 0.5.
  assert result["f1"] == pytest.approx(50.0)


def test_cola_matthews_and_stsb_correlations(mocked):
  cola = testing.process("glue_cola_v200", split="validation")
  result = testing.score_predictions(
      "glue_cola_v200", cola, predictions=["acceptable", "unacceptable", "unacceptable", "x"])
  # The unknown word is a third class (as T5 counts it), not a lucky "unacceptable": targets
  # [1, 0, 1, 0], predictions [1, 0, 0, -1]; 2 of 4 right, true counts (0, 2, 2) and predicted
  # (1, 2, 1) for classes (-1, 0, 1): (2 * 4 - 6) / sqrt((16 - 6) * (16 - 8)) = 2 / sqrt(80).
  # Counting "x" as "unacceptable" would give 2 / sqrt(12) = 0.577 instead of 0.224.
  assert result["matthews_corrcoef"] == pytest.approx(100 * 2 / 80 ** 0.5)
  stsb = testing.process("glue_stsb_v200", split="validation")
  result = testing.score_predictions("glue_stsb_v200", stsb, predictions=["4.0", "1.0", "3.6"])
  assert result["spearman_corrcoef"] == pytest.approx(100.0)
  assert 90 < result["pearson_corrcoef"] < 100


def test_spot_mixture_is_the_eight_training_tasks(tmp_path):
  sizes = {"glue/mrpc:2.0.0": {"train": 3668}, "glue/qqp:2.0.0": {"train": 363846}}
  with testing.mock_tfds(str(tmp_path), split_sizes=sizes):
    mixture = seqio.get_mixture_or_task("glue_v200_proportional")
    assert sorted(t.name for t in mixture.tasks) == sorted(
        glue.task_name(b) for b in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte"))
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates["glue_mrpc_v200"] == 3668 and rates["glue_qqp_v200"] == 363846
