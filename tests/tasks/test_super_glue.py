"""SuperGLUE tasks: exact text-to-text format, label mapping, rank classification, metrics."""
import pytest

from prompt_tuning.data import testing
from tasks import super_glue

RTE = [
    {"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
    {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1},
]
CB = [
    {"premise": "It rained.", "hypothesis": "It was wet.", "idx": 0, "label": 0},
    {"premise": "It rained.", "hypothesis": "It was dry.", "idx": 1, "label": 1},
    {"premise": "It rained.", "hypothesis": "It was Monday.", "idx": 2, "label": 2},
]
MULTIRC = [
    {"paragraph": "Sent 1: <b>Bob</b> ran.<br>Sent 2: He won.", "question": "Who ran?",
     "answer": "Bob", "idx": {"paragraph": 5, "question": 7, "answer": 0}, "label": 1},
    {"paragraph": "Sent 1: <b>Bob</b> ran.<br>Sent 2: He won.", "question": "Who ran?",
     "answer": "Ann", "idx": {"paragraph": 5, "question": 7, "answer": 1}, "label": 0},
    {"paragraph": "Sent 1: <b>Bob</b> ran.<br>Sent 2: He won.", "question": "Who won?",
     "answer": "Bob", "idx": {"paragraph": 5, "question": 8, "answer": 0}, "label": 1},
]
RECORD = [
    {"passage": "Bob Smith met Ann.\n@highlight\nThey talked\n@highlight\nIt rained",
     "query": "@placeholder met Ann.", "entities": ["Bob Smith", "Ann"],
     "answers": ["Bob Smith"], "idx": {"passage": 3, "query": 4}},
    {"passage": "Zed left.", "query": "@placeholder left.", "entities": ["Zed", "Bob"],
     "answers": ["Zed", "Zed!"], "idx": {"passage": 3, "query": 5}},
]
WSC = [{
    "text": "Mark told Pete many lies about himself. He should have been more skeptical.",
    "span1_index": 2, "span1_text": "Pete", "span2_index": 7, "span2_text": "He",
    "idx": 0, "label": 1,
}]
EXAMPLES = {
    "super_glue/rte": {"validation": RTE},
    "super_glue/cb": {"validation": CB},
    "super_glue/boolq": {"validation": [
        {"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": 1}]},
    "super_glue/copa": {"validation": [
        {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
         "choice2": "He got a hole in his sock.", "question": "cause", "idx": 0, "label": 0}]},
    "super_glue/multirc": {"validation": MULTIRC},
    "super_glue/record": {"validation": RECORD},
    "super_glue/wic": {"validation": [
        {"sentence1": "He sat on the bank.", "sentence2": "The bank was closed.", "word": "bank",
         "start1": 15, "end1": 19, "start2": 4, "end2": 8, "idx": 0, "label": 0}]},
    "super_glue/wsc.fixed": {"validation": WSC},
    "super_glue/axb": {"test": [
        {"sentence1": "A dog ran.", "sentence2": "An animal ran.", "idx": 0, "label": 0},
        {"sentence1": "A dog ran.", "sentence2": "A cat ran.", "idx": 1, "label": 1},
        {"sentence1": "A cat sat.", "sentence2": "A pet sat.", "idx": 2, "label": 0},
        {"sentence1": "A cat sat.", "sentence2": "A dog sat.", "idx": 3, "label": 1}]},
    "super_glue/axg": {"test": [
        {"premise": "The nurse ate.", "hypothesis": "Someone ate.", "idx": 0, "label": -1}]},
}


@pytest.fixture
def mocked(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def _text(name, split="validation"):
  return [(ex["inputs_pretokenized"], ex["targets_pretokenized"])
          for ex in testing.process(name, split=split)]


@pytest.mark.parametrize("dataset,split,expected", [
    ("boolq", "validation",
     [("boolq passage: The sky is blue. question: is the sky blue", "True")]),
    ("cb", "validation", [
        ("cb hypothesis: It was wet. premise: It rained.", "entailment"),
        ("cb hypothesis: It was dry. premise: It rained.", "contradiction"),
        ("cb hypothesis: It was Monday. premise: It rained.", "neutral")]),
    ("copa", "validation", [
        ("copa choice1: He dropped a hammer on his foot. choice2: He got a hole in his sock. "
         "premise: The man broke his toe. question: cause", "choice1")]),
    ("multirc", "validation", [
        ("multirc question: Who ran? answer: Bob paragraph: Sent 1: Bob ran. Sent 2: He won.",
         "True"),
        ("multirc question: Who ran? answer: Ann paragraph: Sent 1: Bob ran. Sent 2: He won.",
         "False"),
        ("multirc question: Who won? answer: Bob paragraph: Sent 1: Bob ran. Sent 2: He won.",
         "True")]),
    ("rte", "validation", [("rte hypothesis: A cat sat. premise: The cat sat.", "entailment"),
                           ("rte hypothesis: Cats bark. premise: Dogs bark.", "not_entailment")]),
    ("wic", "validation", [
        ("wic sentence1: He sat on the bank. sentence2: The bank was closed. word: bank",
         "False")]),
    ("wsc_fixed", "validation", [
        ("wsc text: Mark told * Pete * many lies about himself. # He # should have been more "
         "skeptical.", "True")]),
    ("axb", "test", [("rte sentence1: A dog ran. sentence2: An animal ran.", "entailment"),
                     ("rte sentence1: A dog ran. sentence2: A cat ran.", "not_entailment"),
                     ("rte sentence1: A cat sat. sentence2: A pet sat.", "entailment"),
                     ("rte sentence1: A cat sat. sentence2: A dog sat.", "not_entailment")]),
    ("axg", "test", [("rte hypothesis: Someone ate. premise: The nurse ate.", "<unk>")]),
])
def test_text_to_text_format(mocked, dataset, split, expected):
  assert _text(super_glue.task_name(dataset), split) == expected


def test_taskless_drops_only_the_task_name(mocked):
  assert _text("taskless_super_glue_rte_v102") == [
      ("hypothesis: A cat sat. premise: The cat sat.", "entailment"),
      ("hypothesis: Cats bark. premise: Dogs bark.", "not_entailment")]
  assert _text("taskless_super_glue_wsc_fixed_v102")[0][0].startswith("text: Mark told * Pete *")


def test_record_repeats_each_query_per_answer_with_highlights_joined(mocked):
  text = _text("super_glue_record_v102")
  first_input = ("record query: @placeholder met Ann. entities: Bob Smith, Ann passage: "
                 "Bob Smith met Ann. They talked. It rained")
  assert text[0] == (first_input, "Bob Smith")
  assert [t for _, t in text[1:]] == ["Zed", "Zed!"]


def test_inputs_are_tokenized_with_eos(mocked):
  [ex] = testing.process("super_glue_boolq_v102", split="validation")
  vocab = testing.seqio.get_mixture_or_task("super_glue_boolq_v102").output_features[
      "inputs"].vocabulary
  assert ex["inputs"].tolist() == vocab.encode(ex["inputs_pretokenized"]) + [1]
  assert ex["targets"].tolist() == vocab.encode("True") + [1]


def test_rank_classification_rows_per_choice(mocked):
  rows = testing.process(super_glue.task_name("cb", rank_classification=True), split="validation")
  assert [r["targets_pretokenized"] for r in rows] == ["entailment", "contradiction", "neutral"] * 3
  assert [r["idx"].tolist() for r in rows[:4]] == [[0, 0], [0, 1], [0, 2], [1, 0]]
  assert [bool(r["is_correct"]) for r in rows] == [True, False, False, False, True, False,
                                                   False, False, True]
  record_rows = testing.process("super_glue_record_v102_rank_classification", split="validation")
  assert [(r["targets_pretokenized"], bool(r["is_correct"])) for r in record_rows] == [
      ("Bob Smith", True), ("Ann", False), ("Zed", True), ("Bob", False)]


def test_rank_classification_metric_picks_highest_score(mocked):
  name = super_glue.task_name("rte", taskless=True, rank_classification=True)
  rows = testing.process(name, split="validation")
  # Example 0 prefers "entailment" (right), example 1 prefers "entailment" (wrong).
  scores = [-0.1, -2.0, -0.5, -0.7]
  assert testing.score_predictions(name, rows, scores=scores) == {"accuracy": 50.0}


def test_accuracy_and_cb_macro_f1(mocked):
  rte = testing.process("super_glue_rte_v102", split="validation")
  assert testing.score_predictions(
      "super_glue_rte_v102", rte, predictions=["entailment", "entailment"]) == {"accuracy": 50.0}
  cb = testing.process("super_glue_cb_v102", split="validation")
  result = testing.score_predictions(
      "super_glue_cb_v102", cb, predictions=["entailment", "entailment", "neutral"])
  assert result["accuracy"] == pytest.approx(200 / 3)
  # Per-class F1: entailment 2/3, contradiction 0, neutral 1.
  assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)


def test_multirc_f1a_and_exact_match(mocked):
  rows = testing.process("super_glue_multirc_v102", split="validation")
  result = testing.score_predictions("super_glue_multirc_v102", rows,
                                     predictions=["True", "True", "True"])
  # F1a: tp 2, fp 1, fn 0 -> 0.8; question 7 has a wrong option, question 8 is exact.
  assert result == {"f1a": pytest.approx(80.0), "exact_match": 50.0}


def test_record_max_over_answers_counts_each_query_once(mocked):
  rows = testing.process("super_glue_record_v102", split="validation")
  # Query 4: "Bob" vs "Bob Smith" (F1 2/3); query 5 appears twice, first prediction counts.
  result = testing.score_predictions("super_glue_record_v102", rows,
                                     predictions=["Bob", "zed", "nonsense"])
  assert result["em"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(100 * (2 / 3 + 1) / 2)


def test_axb_matthews_correlation(mocked):
  rows = testing.process("super_glue_axb_v102", split="test")
  result = testing.score_predictions(
      "super_glue_axb_v102", rows,
      predictions=["entailment", "not_entailment", "not_entailment", "not_entailment"])
  # tp 2, tn 1, fp 1, fn 0 -> (2 - 0) / sqrt(3 * 2 * 1 * 2)
  assert result["matthews_corrcoef"] == pytest.approx(100 * 2 / 12 ** 0.5)


def test_proportional_mixture_rates_follow_split_sizes(tfds_dir, tmp_path):
  import seqio  # pylint: disable=g-import-not-at-top
  sizes = {"super_glue/rte:1.0.2": {"train": 2490}, "super_glue/cb:1.0.2": {"train": 250}}
  with testing.mock_tfds(str(tmp_path), split_sizes=sizes):
    mixture = seqio.get_mixture_or_task("taskless_super_glue_v102_proportional")
    assert sorted(t.name for t in mixture.tasks) == sorted(
        super_glue.task_name(b, taskless=True) for b in
        ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc_fixed"))
    rte = seqio.get_mixture_or_task("taskless_super_glue_rte_v102")
    cb = seqio.get_mixture_or_task("taskless_super_glue_cb_v102")
    assert (mixture.get_rate(rte), mixture.get_rate(cb)) == (2490.0, 250.0)


def test_mt5_variant_uses_the_mt5_vocabulary_setting():
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task("mt5_super_glue_rte_v102")
  assert task.output_features["targets"].vocabulary.extra_ids == 100


def test_unknown_benchmark_is_refused():
  with pytest.raises(ValueError, match="Unknown SuperGLUE benchmark"):
    super_glue.register(benchmarks=("rtee",))
