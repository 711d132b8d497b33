"""SPoT source tasks (tasks/spot.py) on mocked TFDS: exact text for hand-made examples, and
every task and the source mixture build from random examples."""
import pytest
import seqio

from prompt_tuning.data import testing

testing.use_fixture_vocabulary()  # before `tasks` registers anything (no network)

from tasks import spot  # noqa: E402  pylint: disable=g-import-not-at-top

LENGTHS = {"inputs": 128, "targets": 16}
EXAMPLES = {
    "doc_nli": {"validation": [{"premise": "It rained all day.", "hypothesis": "It was wet.",
                                "label": 1}]},
    "yelp_polarity_reviews": {"test": [{"text": "Cold food.", "label": 0}]},
    "squad/v1.1": {"validation": [{
        "id": "1", "title": "T", "question": "Who ran?", "context": "Bob ran home.",
        "answers": {"text": ["Bob", "Bob"], "answer_start": [0, 0]}}]},
    "drop": {"dev": [{"query_id": "q", "question": "How many?", "passage": "Two cats.",
                      "answer": "2", "validated_answers": ["two"]}]},
    "winogrande": {"validation": [{"sentence": "The cup fell off the table because _ was "
                                               "round.", "option1": "the cup",
                                   "option2": "the table", "label": 0}]},
    "hellaswag": {"validation": [{"context": "He opens the door", "endings": ["and walks in.",
                                                                             "and sings."],
                                  "label": 0, "activity_label": "a", "source_id": "s",
                                  "split_type": "indomain"}]},
    "cosmos_qa": {"validation": [{"id": "c", "context": "She smiled.", "question": "Why?",
                                  "answer0": "She was sad.", "answer1": "She was happy.",
                                  "answer2": "None.", "answer3": "She slept.", "label": 1}]},
    "race/high": {"dev": [{"example_id": "r", "article": "Tom has a dog.",
                           "questions": ["What does Tom have?", "Who has a dog?"],
                           "answers": ["B", "A"],
                           "options": [["a cat", "a dog"], ["Tom", "Ann"]]}]},
}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _spot_tasks():
  return [n for n in spot.source_task_names() + spot.source_task_names(taskless=True)
          if "spot_" in n]


def _texts(name):
  return [(ex["inputs_pretokenized"], ex["targets_pretokenized"])
          for ex in testing.process(name, split="validation", sequence_length=LENGTHS)]


@pytest.mark.parametrize("name, expected", [
    ("spot_docnli_v100", [("docnli premise: It rained all day. hypothesis: It was wet.",
                           "entailment")]),
    ("taskless_spot_yelp2_v020", [("review: Cold food.", "negative")]),
    ("spot_squad_v300", [("squad question: Who ran? context: Bob ran home.", "Bob")]),
    ("taskless_spot_drop_v200", [("question: How many? passage: Two cats.", "2")]),
    ("spot_winogrande_v120", [("winogrande sentence: The cup fell off the table because _ was "
                               "round. options: 0: the cup 1: the table", "the cup")]),
    ("taskless_spot_hellaswag_v110", [("context: He opens the door options: 0: and walks in. "
                                       "1: and sings.", "and walks in.")]),
    ("spot_cosmosqa_v100", [("cosmosqa question: Why? context: She smiled. options: 0: She was "
                             "sad. 1: She was happy. 2: None. 3: She slept.", "She was happy.")]),
    ("taskless_spot_race_high_v200", [
        ("question: What does Tom have? article: Tom has a dog. options: 0: a cat 1: a dog",
         "a dog"),
        ("question: Who has a dog? article: Tom has a dog. options: 0: Tom 1: Ann", "Tom")]),
])
def test_source_task_text(tfds_dir, name, expected):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES, task_names=_spot_tasks()):
    assert _texts(name) == expected


def test_squad_and_drop_keep_every_answer_for_the_metric(tfds_dir):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES, task_names=_spot_tasks()):
    [drop] = testing.process("spot_drop_v200", split="validation", sequence_length=LENGTHS)
  assert list(drop["answers"]) == ["2", "two"]
  task = seqio.get_mixture_or_task("spot_drop_v200")
  assert task.postprocess_fn("two", example=drop, is_target=True) == ["2", "two"]


@pytest.mark.slow
def test_every_source_task_and_the_mixture_build_from_random_examples(tfds_dir):
  names = _spot_tasks()
  assert len(names) == 18  # 9 sources, each also taskless
  with testing.mock_tfds(tfds_dir, num_examples=2):
    for name in [n for n in names if n.startswith("taskless_")]:  # the others differ by prefix
      split = seqio.get_mixture_or_task(name).splits[0]
      examples = testing.process(name, split=split, sequence_length=LENGTHS, num_examples=1)
      assert examples and examples[0]["targets"][-1] == 1, name  # EOS-terminated
    mixture = seqio.get_mixture_or_task(spot.mixture_name(taskless=True))
    assert len(mixture.tasks) == 15  # 9 here + MNLI, QQP, QNLI, SST-2, ReCoRD, MultiRC
    batch = next(mixture.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
    assert len(batch["inputs"]) > 0
