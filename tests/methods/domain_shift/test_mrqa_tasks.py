"""MRQA tasks (tasks/mrqa.py) on mocked TFDS: the SQuAD text format for SQuAD and every
out-of-domain set, their splits and mixtures, and EM / F1 on hand-made predictions."""
import pytest
import seqio

from prompt_tuning.data import testing

testing.use_fixture_vocabulary()  # before `tasks` registers anything (no network)

from prompt_tuning.methods.domain_shift import eval_tasks  # noqa: E402
from tasks import mrqa  # noqa: E402  pylint: disable=g-import-not-at-top

LENGTHS = {"inputs": 128, "targets": 16}


def _example(question, context, answers):
  """One example in the TFDS `mrqa` feature layout (token lists and spans left empty)."""
  empty_tokens = {"tokens": [], "offsets": []}
  return {"subset": "x", "context": context, "context_tokens": empty_tokens, "qid": "q",
          "question": question, "question_tokens": empty_tokens,
          "detected_answers": {"text": [], "char_spans": {"start": [], "end": []},
                               "token_spans": {"start": [], "end": []}},
          "answers": answers}


SQUAD_TRAIN = [_example("Who ran?", "Bob ran home.", ["Bob"])]
SQUAD_DEV = [
    _example("Where did Bob go?", "Bob went to the old mill.", ["the old mill", "old mill"]),
    _example("How many cats?", "There were three cats.", ["three"]),
]
OOD = {config: [_example(f"{config} question?", f"{config} context [PAR] more.",
                         [f"answer of {config}", "alt"])] for config in mrqa.OUT_OF_DOMAIN}
EXAMPLES = {"mrqa/squad": {"train": SQUAD_TRAIN, "validation": SQUAD_DEV},
            **{f"mrqa/{config}": {"test": rows} for config, rows in OOD.items()}}
ALL_TASKS = [mrqa.task_name(c) for c in (mrqa.IN_DOMAIN,) + mrqa.OUT_OF_DOMAIN]


@pytest.fixture(scope="module")
def mocked(tmp_path_factory):
  with testing.mock_tfds(str(tmp_path_factory.mktemp("tfds")), examples=EXAMPLES,
                         task_names=ALL_TASKS):
    yield


def _rows(name, split):
  return testing.process(name, split=split, sequence_length=LENGTHS)


def test_the_six_out_of_domain_sets_are_the_tfds_configs():
  configs = {c.name for c in __import__("tensorflow_datasets").text.mrqa.MRQA.BUILDER_CONFIGS}
  assert set(mrqa.OUT_OF_DOMAIN) <= configs and mrqa.IN_DOMAIN in configs
  assert mrqa.OUT_OF_DOMAIN == ("textbook_qa", "bio_asq", "race", "relation_extraction",
                                "duo_rc", "drop")
  assert ALL_TASKS == ["mrqa_squad_v100", "mrqa_textbook_qa_v100", "mrqa_bio_asq_v100",
                       "mrqa_race_v100", "mrqa_relation_extraction_v100", "mrqa_duo_rc_v100",
                       "mrqa_drop_v100"]


def test_splits_read_squad_train_and_dev_and_the_ood_test_files():
  squad = seqio.get_mixture_or_task("mrqa_squad_v100").source
  assert squad.tfds_dataset.name == "mrqa/squad:1.0.0"
  assert set(squad.splits) == {"train", "validation"}
  for config in mrqa.OUT_OF_DOMAIN:
    source = seqio.get_mixture_or_task(mrqa.task_name(config)).source
    assert source.tfds_dataset.name == f"mrqa/{config}:1.0.0"
    assert source.tfds_dataset._split_map == {  # pylint: disable=protected-access
        "validation": "test", "test": "test"}


def test_squad_train_and_dev_use_the_t5_squad_format(mocked):
  train = _rows("mrqa_squad_v100", "train")
  assert [(r["inputs_pretokenized"], r["targets_pretokenized"], r["answers"]) for r in train] == [
      ("question: Who ran? context: Bob ran home.", "Bob", ["Bob"])]
  dev = _rows("mrqa_squad_v100", "validation")
  assert [(r["inputs_pretokenized"], r["targets_pretokenized"], r["answers"]) for r in dev] == [
      ("question: Where did Bob go? context: Bob went to the old mill.", "the old mill",
       ["the old mill", "old mill"]),
      ("question: How many cats? context: There were three cats.", "three", ["three"])]
  assert dev[0]["inputs"][-1] == 1 and dev[0]["targets"][-1] == 1  # EOS-terminated ids


@pytest.mark.parametrize("config", mrqa.OUT_OF_DOMAIN)
def test_each_ood_set_has_the_same_format_under_both_split_names(mocked, config):
  for split in ("validation", "test"):
    [row] = _rows(mrqa.task_name(config), split)
    assert row["inputs_pretokenized"] == (
        f"question: {config} question? context: {config} context [PAR] more.")
    assert row["targets_pretokenized"] == f"answer of {config}"
    assert row["answers"] == [f"answer of {config}", "alt"]


def test_em_and_f1_on_hand_made_predictions(mocked):
  dev = _rows("mrqa_squad_v100", "validation")
  # "The Old Mill!" normalises to "old mill" (the second answer): EM 1, F1 1.
  # "three black cats" vs "three": precision 1/3, recall 1, F1 0.5, EM 0.
  result = testing.score_predictions("mrqa_squad_v100", dev,
                                     predictions=["The Old Mill!", "three black cats"])
  assert result["em"] == pytest.approx(50.0)
  assert result["f1"] == pytest.approx(75.0)
  # "mill" vs "the old mill" -> "old mill": precision 1, recall 1/2, F1 2/3; "four": 0.
  result = testing.score_predictions("mrqa_squad_v100", dev, predictions=["mill", "four"])
  assert result == {"em": 0.0, "f1": pytest.approx(100 * (2 / 3) / 2)}


def test_ood_metrics_take_the_best_of_all_answers(mocked):
  [row] = _rows(mrqa.task_name("drop"), "validation")
  assert testing.score_predictions(mrqa.task_name("drop"), [row], predictions=["ALT."]) == {
      "em": 100.0, "f1": 100.0}
  # "answer drop" vs "answer of drop": precision 1, recall 2/3 -> F1 0.8.
  assert testing.score_predictions(mrqa.task_name("drop"), [row],
                                   predictions=["answer drop"]) == {
      "em": 0.0, "f1": pytest.approx(80.0)}


def test_mixtures_hold_squad_dev_and_the_six():
  ood = seqio.get_mixture_or_task(mrqa.OOD_MIXTURE)
  assert sorted(t.name for t in ood.tasks) == sorted(ALL_TASKS[1:])
  both = seqio.get_mixture_or_task(mrqa.EVAL_MIXTURE)
  assert sorted(t.name for t in both.tasks) == sorted(ALL_TASKS)


def test_paraphrase_mixtures_reuse_the_glue_tasks():
  qqp = seqio.get_mixture_or_task(eval_tasks.paraphrase_mixture_name("qqp", "mrpc"))
  assert sorted(t.name for t in qqp.tasks) == ["taskless_glue_mrpc_as_qqp_v200",
                                               "taskless_glue_qqp_v200"]
  mrpc = seqio.get_mixture_or_task(eval_tasks.paraphrase_mixture_name("mrpc", "qqp"))
  assert sorted(t.name for t in mrpc.tasks) == ["taskless_glue_mrpc_v200",
                                                "taskless_glue_qqp_as_mrpc_v200"]
  # MRPC dressed as QQP reads MRPC's data with QQP's labels.
  source = seqio.get_mixture_or_task("taskless_glue_mrpc_as_qqp_v200").source
  assert source.tfds_dataset.name == "glue/mrpc:2.0.0"


def test_unknown_set_is_named():
  with pytest.raises(ValueError, match="Unknown MRQA set 'newsqa'"):
    mrqa.task_name("newsqa")
