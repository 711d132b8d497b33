"""One task of every family through `seqio.Evaluator` with the engine's own model functions.

A randomly initialised tiny T5 (fixed seed) stands in for a trained model: its answers are
arbitrary, so the metrics are checked against a recomputation. Every example is decoded (or
scored) again on its own, outside the engine's batching, and the task's postprocessor and metric
functions are applied to those outputs; the evaluator's numbers must match. Because the model's
outputs differ from example to example, pairing an output with the wrong example changes them.
"""
import json
import os

import jax
import numpy as np
import pytest

from prompt_tuning.data import testing
from prompt_tuning.engine import data as data_lib
from prompt_tuning.engine import evaluation
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import trainer
from prompt_tuning.models import EncoderDecoder, get_config

pytestmark = pytest.mark.slow  # evaluates real tasks through the engine's compiled model

LENGTHS = {"inputs": 32, "targets": 8}
BATCH_SIZE = 4
EXAMPLES = {
    "super_glue/rte": {
        "validation": [
            {"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
            {"premise": "Dogs bark loudly at night.", "hypothesis": "Cats bark.", "idx": 1,
             "label": 1},
            {"premise": "It is noon.", "hypothesis": "It is day.", "idx": 2, "label": 0}],
        "train": [{"premise": "P.", "hypothesis": "H.", "idx": 0, "label": 1}]},
    "glue/mrpc": {"validation": [
        {"sentence1": "He left.", "sentence2": "He went away.", "idx": 0, "label": 1},
        {"sentence1": "The market fell sharply.", "sentence2": "She stayed.", "idx": 1,
         "label": 0}]},
    "natural_questions_open": {"train": [
        {"question": "who wrote hamlet", "answer": ["Shakespeare"]},
        {"question": "capital of peru", "answer": ["Lima"]}]},
    "wmt14_translate/fr-en": {"validation": [
        {"en": "The house is very small.", "fr": "La maison est très petite."},
        {"en": "I like black cats.", "fr": "J'aime les chats noirs."}]},
}
P3_TASK = "p3engine_super_glue_rte_GPT_3_style_score_eval"
# (task, split, kind): kind 'predict' decodes, 'score' ranks answer choices by likelihood.
CASES = [
    ("super_glue_rte_v102", "validation", "predict"),
    ("taskless_super_glue_rte_v102_rank_classification", "validation", "score"),
    ("glue_mrpc_v200", "validation", "predict"),
    ("natural_questions_open_v100", "validation", "predict"),
    ("wmt14_enfr_v100", "validation", "predict"),
    ("fewshot_rte_1shot", "test", "predict"),
    (P3_TASK, "validation", "score"),
]


@pytest.fixture(scope="module")
def p3_task(tmp_path_factory):
  folder = os.path.join(str(tmp_path_factory.mktemp("engine_eval")), "p3",
                        "super_glue_rte_GPT_3_style_score_eval")
  testing.write_p3_task(folder, {"validation": [
      {"inputs": [5 + e, 27, 1], "inputs_pretokenized": f"Premise {e}",
       "targets": [7 + 3 * j, 1], "targets_pretokenized": choice,
       "idx": np.array([e, j], np.int32), "is_correct": j == e, "weight": 1.0}
      for e in range(3) for j, choice in enumerate(["yes", "no"])]})
  from tasks import p3  # pylint: disable=g-import-not-at-top
  p3.register(data_dir=os.path.dirname(folder), name_prefix="p3engine_")
  return P3_TASK


@pytest.fixture(scope="module")
def engine():
  """A tiny T5 with random parameters on a one-axis mesh, and its jitted runner."""
  model = model_wrappers.EncoderDecoderModel(EncoderDecoder(config=get_config("t5_1_1_tiny")))
  mesh_config = partitioning.MeshConfig()
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  params, shardings = trainer.load_params(
      model=model, lengths=data_lib.model_feature_lengths(model, LENGTHS),
      restore=trainer.RestoreConfig(), mesh=mesh, rules=rules, rng=jax.random.PRNGKey(7))
  placed = trainer.split_placed(params=params, shardings=shardings, patterns=(".*",))
  runner = evaluation.ModelRunner(
      model=model, mesh=mesh, rules=rules, trainable_shardings=placed.trainable_shardings,
      frozen_shardings=placed.frozen_shardings,
      max_decode_length=evaluation.max_decode_length_for(model, LENGTHS))
  return model, runner, placed


@pytest.fixture
def mocked(tfds_dir, p3_task):
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    yield


def _one_at_a_time(runner, placed, kind, features):
  """The engine's output for a single example, padded to the compiled batch size."""
  batch = data_lib.pad_rows({k: np.asarray(v)[None] for k, v in features.items()}, BATCH_SIZE)
  if kind == "score":
    return float(runner.score(placed.trainable, placed.frozen, batch)[0])
  return runner.predict(placed.trainable, placed.frozen, batch, jax.random.PRNGKey(0))[0]


def _recomputed_metrics(task, examples, outputs, kind):
  """The task's metrics from per-example outputs, as the task's own functions define them."""
  vocabulary = task.output_features["targets"].vocabulary
  targets = [task.postprocess_fn(_text(ex["targets_pretokenized"]), example=ex, is_target=True)
             for ex in examples]
  if kind == "score":
    fns, values = task.score_metric_fns, outputs
  else:
    fns = task.predict_metric_fns
    values = [task.postprocess_fn(vocabulary.decode([int(t) for t in tokens]), example=ex,
                                  is_target=False) for tokens, ex in zip(outputs, examples)]
  metrics = {}
  for fn in fns:
    metrics.update(fn(targets, values))
  return {name: float(np.asarray(getattr(v, "value", v))) for name, v in metrics.items()}


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


@pytest.mark.parametrize("task_name,split,kind", CASES, ids=[c[0] for c in CASES])
def test_task_through_the_engine_evaluator(mocked, engine, tmp_path, task_name, split, kind):
  model, runner, placed = engine
  config = data_lib.DatasetConfig(mixture_or_task_name=task_name, task_feature_lengths=LENGTHS,
                                  split=split, batch_size=BATCH_SIZE, shuffle=False)
  evaluator = evaluation.build_evaluator(config, model=model, log_dir=str(tmp_path))
  assert evaluator is not None, f"{task_name} has no metrics on {split}"
  (task,) = evaluator.eval_tasks
  results = evaluation.run_infer_eval(evaluator, runner, placed.trainable, placed.frozen,
                                      batch_size=BATCH_SIZE, step=3)

  examples = list(evaluator.cached_task_datasets[task_name].as_numpy_iterator())
  model_rows = [row for _, row in evaluator.cached_model_datasets[task_name].as_numpy_iterator()]
  assert len(examples) == len(model_rows) >= 2
  solo = [_one_at_a_time(runner, placed, kind, row) for row in model_rows]

  # The engine's batched callback returns one output per example, in the examples' order.
  make_fn = evaluation.make_score_fn if kind == "score" else evaluation.make_predict_fn
  batched = dict(make_fn(runner, placed.trainable, placed.frozen, batch_size=BATCH_SIZE)(
      evaluator.cached_model_datasets[task_name]))
  assert sorted(batched) == list(range(len(examples)))
  if kind == "score":
    np.testing.assert_allclose([batched[i] for i in range(len(solo))], solo, rtol=1e-4)
    assert len(set(np.round(solo, 3))) > 1  # outputs differ, so misalignment would show
  else:
    assert [list(batched[i]) for i in range(len(solo))] == [list(s) for s in solo]
    assert len({tuple(s) for s in solo}) > 1  # decodes differ, so misalignment would show

  # The evaluator wrote one logged prediction or score per example.
  with open(os.path.join(str(tmp_path),
                         evaluation.inference_file_name(task_name, split, 3))) as f:
    logged = [json.loads(line) for line in f]
  assert len(logged) == len(examples)

  expected = _recomputed_metrics(task, examples, solo, kind)
  assert set(results) == {task_name}
  assert set(results[task_name]) == set(expected) and expected
  for name, value in expected.items():
    assert results[task_name][name] == pytest.approx(value, abs=1e-6), name

