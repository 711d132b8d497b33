"""P3 tasks from a fixture directory in the published layout, and the T0 mixture rates."""
import importlib
import os

import numpy as np
import pytest
import seqio

from prompt_tuning.data import p3 as p3_lib
from prompt_tuning.data import testing
from tasks import p3

PREFIX = "p3test_"


def _rows(n, *, eos=True, choices=None):
  rows = []
  for i in range(n):
    row = {"inputs": [100 + i, 200] + ([1] if eos else []), "inputs_pretokenized": f"Input {i}",
           "targets": [300] + ([1] if eos else []), "targets_pretokenized": " yes"}
    if choices:
      row["answer_choices"] = choices
    rows.append(row)
  return rows


def _score_rows(num_examples, choices=("yes", "no")):
  return [{"inputs": [5, 1], "inputs_pretokenized": f"Premise {e}", "targets": [7, 1],
           "targets_pretokenized": c, "idx": np.array([e, j], np.int32),
           "is_correct": j == e % 2, "weight": 1.0}
          for e in range(num_examples) for j, c in enumerate(choices)]


# folder -> (stated training examples or None for eval-only folders)
TRAIN_FOLDERS = {
    "gigaword_summarize": 3_803_957, "gigaword_title": 3_803_957, "gigaword_write": 3_803_957,
    "glue_mrpc_equivalent": 3668, "glue_mrpc_paraphrase": 3660,
    "amazon_polarity_Is_this_review": 3_600_000, "amazon_polarity_flattering": 3_600_000,
    "cos_e_v1.11_explain": 9741,
    "duorc_SelfRC_answer": 60721, "duorc_ParaphraseRC_answer": 69524,
    "hellaswag_complete_first": 39905, "hellaswag_complete_second": 39905,
    "super_glue_wsc.fixed_GPT_3_Style": 554, "super_glue_wsc.fixed_replaced": 554,
    "super_glue_rte_GPT_3_style": 2490,
    "my_own_dataset_template": 10,
}
SCORE_EVAL_FOLDERS = (
    "hellaswag_complete_first_score_eval",
    "super_glue_rte_GPT_3_style_score_eval", "super_glue_rte_does_it_follow_score_eval",
    "super_glue_wsc.fixed_GPT_3_Style_score_eval",
    "anli_GPT_3_style_r1_score_eval", "anli_can_we_infer_r1_score_eval",
    "anli_GPT_3_style_r2_score_eval",
)


@pytest.fixture(scope="module")
def p3_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("p3") / "data")
  for folder, examples in TRAIN_FOLDERS.items():
    testing.write_p3_task(os.path.join(root, folder),
                          {"train": _rows(3, choices=["yes", "no"]), "validation": _rows(2)},
                          stated_examples={"train": examples})
  for folder in SCORE_EVAL_FOLDERS:
    testing.write_p3_task(os.path.join(root, folder), {"validation": _score_rows(2)})
  testing.write_p3_task(os.path.join(root, "trec_no_eos"), {"train": _rows(2, eos=False)})
  return root


@pytest.fixture(scope="module")
def registration(p3_dir):
  return p3.register(data_dir=p3_dir, name_prefix=PREFIX)


def _rates(mixture_name):
  mixture = seqio.get_mixture_or_task(mixture_name)
  return {t.name[len(PREFIX):]: mixture.get_rate(t) for t in mixture.tasks}


def test_t0plusplus_rates_follow_the_t0_rule(registration):
  assert _rates(PREFIX + "t0plusplus_train") == {
      # over 500,000 examples: 500,000 // number of templates
      "gigaword_summarize": 166666, "gigaword_title": 166666, "gigaword_write": 166666,
      "amazon_polarity_Is_this_review": 250000, "amazon_polarity_flattering": 250000,
      # otherwise the dataset's size (its largest template), for every template
      "glue_mrpc_equivalent": 3668, "glue_mrpc_paraphrase": 3668,
      "cos_e_v1.11_explain": 9741,
      "duorc_SelfRC_answer": 60721, "duorc_ParaphraseRC_answer": 69524,
      "hellaswag_complete_first": 39905, "hellaswag_complete_second": 39905,  # T0+ addition
      "super_glue_wsc.fixed_GPT_3_Style": 554, "super_glue_wsc.fixed_replaced": 554,  # T0++
      "trec_no_eos": 2,
  }


def test_t0_and_t0plus_leave_out_the_later_additions(registration):
  t0 = set(_rates(PREFIX + "t0_train"))
  t0plus = set(_rates(PREFIX + "t0plus_train"))
  assert not any(n.startswith(("hellaswag", "super_glue")) for n in t0)
  assert t0plus - t0 == {"hellaswag_complete_first", "hellaswag_complete_second"}
  assert "my_own_dataset_template" not in _rates(PREFIX + "t0plusplus_train")


def test_t0_rate_boundary():
  assert p3_lib.t0_rate(500_000, 7) == 500_000
  assert p3_lib.t0_rate(500_001, 7) == 71_428
  with pytest.raises(ValueError, match="at least one template"):
    p3_lib.t0_rate(10, 0)


def test_tasks_read_stored_ids_and_text(registration):
  rows = testing.process(PREFIX + "glue_mrpc_equivalent", split="train")
  assert [r["inputs"].tolist() for r in rows] == [[100, 200, 1], [101, 200, 1], [102, 200, 1]]
  assert rows[0]["inputs_pretokenized"] == "Input 0"
  assert rows[0]["targets"].tolist() == [300, 1]
  assert rows[0]["answer_choices"] == ["yes", "no"]
  assert seqio.get_mixture_or_task(PREFIX + "glue_mrpc_equivalent").splits == (
      "train", "validation")


def test_ids_without_eos_get_exactly_one(registration):
  rows = testing.process(PREFIX + "trec_no_eos", split="train")
  assert [r["inputs"].tolist() for r in rows] == [[100, 200, 1], [101, 200, 1]]


def test_retokenized_variant_encodes_the_text(p3_dir, registration):
  p3.register(data_dir=p3_dir, name_prefix="p3retok_", retokenize=True)
  [row] = testing.process("p3retok_glue_mrpc_equivalent", split="train", num_examples=1)
  vocabulary = seqio.get_mixture_or_task("p3retok_glue_mrpc_equivalent").output_features[
      "inputs"].vocabulary
  assert row["inputs"].tolist() == vocabulary.encode("Input 0") + [1]
  assert row["targets_pretokenized"] == " yes"


def test_score_eval_rank_classification(registration):
  name = PREFIX + "super_glue_rte_GPT_3_style_score_eval"
  rows = testing.process(name, split="validation")
  assert [(r["idx"].tolist(), bool(r["is_correct"])) for r in rows] == [
      ([0, 0], True), ([0, 1], False), ([1, 0], False), ([1, 1], True)]
  # Example 0 picks choice 0 (right), example 1 picks choice 0 (wrong).
  assert testing.score_predictions(name, rows, scores=[-1, -2, -1, -3]) == {"accuracy": 50.0}


def test_eval_groups_and_median_over_templates(registration):
  groups = registration.eval_groups
  assert groups == {
      "super_glue_rte": [PREFIX + "super_glue_rte_GPT_3_style_score_eval",
                         PREFIX + "super_glue_rte_does_it_follow_score_eval"],
      "super_glue_wsc.fixed": [PREFIX + "super_glue_wsc.fixed_GPT_3_Style_score_eval"],
      "hellaswag": [PREFIX + "hellaswag_complete_first_score_eval"],
      "anli_r1": [PREFIX + "anli_GPT_3_style_r1_score_eval",
                  PREFIX + "anli_can_we_infer_r1_score_eval"],
      "anli_r2": [PREFIX + "anli_GPT_3_style_r2_score_eval"],
  }
  accuracy = {"super_glue_rte_GPT_3_style_score_eval": 40.0,
              "super_glue_rte_does_it_follow_score_eval": 70.0,
              "super_glue_wsc.fixed_GPT_3_Style_score_eval": 36.5,
              "hellaswag_complete_first_score_eval": 27.0,
              "anli_GPT_3_style_r1_score_eval": 33.0, "anli_can_we_infer_r1_score_eval": 35.0,
              "anli_GPT_3_style_r2_score_eval": 34.0}
  results = {PREFIX + name: {"accuracy": value} for name, value in accuracy.items()}
  assert p3.median_accuracy(results, groups) == {
      "super_glue_rte": 55.0, "super_glue_wsc.fixed": 36.5, "hellaswag": 27.0,
      "anli_r1": 34.0, "anli_r2": 34.0}
  eval_mixture = seqio.get_mixture_or_task(PREFIX + "eval_anli_r1_score_eval")
  assert sorted(t.name for t in eval_mixture.tasks) == groups["anli_r1"]


def test_registering_twice_is_harmless(p3_dir, registration):
  again = p3.register(data_dir=p3_dir, name_prefix=PREFIX)
  assert again == registration


def test_environment_variable_registers_at_import(p3_dir, monkeypatch):
  monkeypatch.setenv(p3.DATA_DIR_ENV, p3_dir)
  importlib.reload(p3)
  assert "p3_gigaword_title" in seqio.TaskRegistry.names()
  assert "p3_t0plusplus_train" in seqio.MixtureRegistry.names()


def test_missing_directory_and_stats_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    p3.register(data_dir=str(tmp_path / "nowhere"))
  folder = tmp_path / "data" / "xsum_summarize"
  testing.write_p3_task(str(folder), {"train": _rows(1)})
  os.remove(folder / "stats.train.json")
  registration = p3.register(data_dir=str(tmp_path / "data"), name_prefix="p3nostats_")
  mixture = seqio.get_mixture_or_task("p3nostats_t0_train")
  with pytest.raises(FileNotFoundError, match="stats.train.json"):
    mixture.get_rate(seqio.get_mixture_or_task(registration.tasks[0]))
