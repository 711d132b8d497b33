"""One task of every family through `seqio.Evaluator`, with a stub model of known mistakes.

The stub stands in for the engine's model: it answers from the processed example (the
target, except where a mistake is planted) and scores choices by their length, so every
metric below can be worked out by hand.
"""
import json
import os

import numpy as np
import pytest
import seqio

from prompt_tuning.data import evaluation
from prompt_tuning.data import registry
from prompt_tuning.data import testing
from tasks import natural_questions

EXAMPLES = {
    "super_glue/rte": {
        "validation": [
            {"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
            {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1},
            {"premise": "It is noon.", "hypothesis": "It is day.", "idx": 2, "label": 0}],
        "train": [{"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 1}]},
    "glue/mrpc": {"validation": [
        {"sentence1": "He left.", "sentence2": "He went away.", "idx": 0, "label": 1},
        {"sentence1": "He left.", "sentence2": "She stayed.", "idx": 1, "label": 0}]},
    "natural_questions_open": {"train": [
        {"question": "who wrote hamlet", "answer": ["Shakespeare"]},
        {"question": "capital of peru", "answer": ["Lima"]}]},
    "wmt14_translate/fr-en": {"validation": [
        {"en": "The house is very small.", "fr": "La maison est très petite."},
        {"en": "I like black cats.", "fr": "J'aime les chats noirs."}]},
}
# Inputs (pretokenized) the stub gets wrong, and what it says instead.
MISTAKES = {
    "rte hypothesis: Cats bark. premise: Dogs bark.": "entailment",
    "nq question: capital of peru": "Bogota",
    # few-shot: the 1-shot query for the second RTE example
    "P. question: H. Is it true or false? answer: false\n\nDogs bark. question: Cats bark. "
    "Is it true or false? answer:": "true, it is",
}


def stub_predict(examples):
  predictions = []
  for ex in examples:
    answer = MISTAKES.get(ex["inputs_pretokenized"], ex["targets_pretokenized"])
    # In a few-shot prompt a model keeps going with a next example; postprocessing cuts it.
    if ex["inputs_pretokenized"].endswith("answer:"):
      answer += "\n\nP. question: H. Is it true or false? answer: false"
    predictions.append(answer)
  return predictions


def stub_score(examples):
  assert all("encoder_input_tokens" in ex for ex in examples)  # model features are there too
  return [-float(len(ex["targets_pretokenized"])) for ex in examples]  # shorter is likelier


@pytest.fixture(scope="module")
def extra_tasks(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  reader_file = root / "dev.json"
  reader_file.write_text(json.dumps([{"question": "who wrote hamlet?", "answers": ["Shakespeare"],
                                      "ctxs": [{"id": "1", "title": "Hamlet",
                                                "text": "Hamlet is by Shakespeare.",
                                                "score": 2.0}]}]))
  natural_questions.register_reader(name="e2e_reader_v100", files={"validation": str(reader_file)})
  p3_folder = os.path.join(str(root), "p3", "super_glue_rte_GPT_3_style_score_eval")
  testing.write_p3_task(p3_folder, {"validation": [
      {"inputs": [5, 1], "inputs_pretokenized": f"Premise {e}", "targets": [7, 1],
       "targets_pretokenized": choice, "idx": np.array([e, j], np.int32),
       "is_correct": j == e, "weight": 1.0}
      for e in range(2) for j, choice in enumerate(["yes", "no"])]})
  from tasks import p3  # pylint: disable=g-import-not-at-top
  p3.register(data_dir=os.path.dirname(p3_folder), name_prefix="p3e2e_")
  registry.add_mixture("e2e_validation_mixture", [
      "super_glue_rte_v102", "taskless_super_glue_rte_v102_rank_classification",
      "glue_mrpc_v200", "natural_questions_open_v100", "e2e_reader_v100", "wmt14_enfr_v100",
      "p3e2e_super_glue_rte_GPT_3_style_score_eval"], default_rate=1.0)


@pytest.fixture
def mocked(tfds_dir, extra_tasks):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


@pytest.mark.slow
def test_one_task_per_family_through_the_evaluator(mocked):
  results = evaluation.evaluate(
      "e2e_validation_mixture", predict_fn=stub_predict, score_fn=stub_score,
      split="validation", sequence_length={"inputs": 128, "targets": 32})
  assert results["super_glue_rte_v102"] == {"accuracy": pytest.approx(200 / 3)}
  # Shorter choice wins: "entailment" over "not_entailment", right for examples 0 and 2.
  assert results["taskless_super_glue_rte_v102_rank_classification"] == {
      "accuracy": pytest.approx(200 / 3)}
  assert results["glue_mrpc_v200"] == {"f1": 100.0, "accuracy": 100.0}
  assert results["natural_questions_open_v100"] == {"em": 50.0, "f1": 50.0}
  assert results["e2e_reader_v100"] == {"em": 100.0, "f1": 100.0, "recall_at_input": 100.0}
  assert results["wmt14_enfr_v100"]["bleu"] == pytest.approx(100.0)
  # "no" is shorter than "yes": wrong for example 0 (answer "yes"), right for example 1.
  assert results["p3e2e_super_glue_rte_GPT_3_style_score_eval"] == {"accuracy": 50.0}


def test_few_shot_family_on_its_test_split(mocked):
  results = evaluation.evaluate("fewshot_rte_1shot", predict_fn=stub_predict, split="test")
  # Three RTE examples, one planted mistake.
  assert results == {"fewshot_rte_1shot": {"accuracy": pytest.approx(200 / 3)}}


def test_missing_callbacks_and_wrong_counts_are_explained(mocked):
  with pytest.raises(ValueError, match="pass score_fn"):
    evaluation.evaluate("taskless_super_glue_rte_v102_rank_classification",
                        predict_fn=stub_predict)
  with pytest.raises(ValueError, match="one per example"):
    evaluation.evaluate("super_glue_rte_v102", predict_fn=lambda examples: ["entailment"])
  with pytest.raises(ValueError, match="no task with a 'nope' split"):
    evaluation.evaluate("super_glue_rte_v102", predict_fn=stub_predict, split="nope")


def test_unknown_name_is_refused():
  with pytest.raises(ValueError):
    seqio.get_mixture_or_task("super_glue_rte_v999")
