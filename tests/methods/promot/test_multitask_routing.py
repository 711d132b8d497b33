"""Multi-task ProMoT: each example carries its task's prompt id and gets that task's prompt.

The mixture's examples are routed through a `PromptTable` holding the two per-task prompts; the
result for every example must equal a per-task run (the single-prompt model with that task's
prompt and the same weights), and swapping the ids must change it.
"""
import os

import flax
import gin
import jax
import numpy as np
import seqio

from prompt_tuning.engine import gin_utils
from prompt_tuning.methods.promot import tasks as promot_tasks

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
LENGTHS = {"inputs": 16, "targets": 4}
PROMPT_LENGTH = 4


def _model(prompt_file, bindings=()):
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    gin.clear_config()
    gin_utils.register_configurables()
    gin_utils.parse_gin(gin_files=["gin/models/byte_t5_tiny.gin", prompt_file],
                        gin_bindings=[f"PROMPT_LENGTH={PROMPT_LENGTH}"] + list(bindings))
    return gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    os.chdir(cwd)


def _examples(task, count):
  dataset = seqio.get_mixture_or_task(task).get_dataset(LENGTHS, split="validation",
                                                          shuffle=False)
  return list(dataset.take(count).as_numpy_iterator())


def test_each_prompted_task_carries_its_own_prompt_id():
  names = [promot_tasks.prompted_name(t, i) for i, t in enumerate(promot_tasks.SMOKE_TASKS)]
  mixture = seqio.get_mixture_or_task(promot_tasks.SMOKE_MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == sorted(names)
  for prompt_id, name in enumerate(names):
    examples = _examples(name, 8)
    assert [e["prompt_ids"].tolist() for e in examples] == [[prompt_id]] * 8
    plain = _examples(promot_tasks.SMOKE_TASKS[prompt_id], 8)
    assert "prompt_ids" in seqio.get_mixture_or_task(name).output_features
    for ours, theirs in zip(examples, plain):
      np.testing.assert_array_equal(ours["inputs"], theirs["inputs"])


def test_the_mixture_keeps_the_prompt_ids():
  """A mixture keeps only its tasks' output features; `prompt_ids` is one of them."""
  dataset = seqio.get_mixture_or_task(promot_tasks.SMOKE_MIXTURE).get_dataset(
      LENGTHS, split="validation", shuffle=False, seed=0)
  ids = [int(e["prompt_ids"][0]) for e in dataset.take(64).as_numpy_iterator()]
  assert set(ids) == {0, 1}


def test_mixed_batch_matches_per_task_runs():
  table_model = _model("gin/prompts/prompt_table.gin", ["NUM_PROMPTS=2"])
  single_model = _model("gin/prompts/prompt.gin")
  names = [promot_tasks.prompted_name(t, i) for i, t in enumerate(promot_tasks.SMOKE_TASKS)]
  converter = table_model.feature_converter()
  batches = [next(converter(seqio.get_mixture_or_task(n).get_dataset(
      LENGTHS, split="validation", shuffle=False), LENGTHS).batch(4).as_numpy_iterator())
             for n in names]
  # Interleave the two tasks' examples into one mixed batch, as the mixture would.
  order = [0, 1, 1, 0, 1, 0, 0, 1]
  taken = [0, 0]
  mixed = {k: [] for k in batches[0]}
  for task in order:
    for k in mixed:
      mixed[k].append(batches[task][k][taken[task]])
    taken[task] += 1
  mixed = {k: np.stack(v) for k, v in mixed.items()}
  assert mixed["prompt_ids"].reshape(-1).tolist() == order

  lengths = table_model.model_feature_lengths(LENGTHS)
  params = flax.core.meta.unbox(
      table_model.initial_variables(jax.random.PRNGKey(0), lengths))["params"]
  rng = np.random.default_rng(0)
  table = rng.uniform(-0.5, 0.5, size=(2, PROMPT_LENGTH, 64)).astype(np.float32)
  params = {**params, "input_hook": {"prompt_table": table}}
  logits = np.asarray(table_model._logits(params, mixed, dropout_rng=None)[0])  # pylint: disable=protected-access

  plain = {k: v for k, v in mixed.items() if k != "prompt_ids"}
  for task in (0, 1):
    single = {**params, "input_hook": {"prompt": table[task]}}
    per_task = np.asarray(single_model._logits(single, plain, dropout_rng=None)[0])  # pylint: disable=protected-access
    rows = [i for i, t in enumerate(order) if t == task]
    np.testing.assert_allclose(logits[rows], per_task[rows], rtol=1e-5, atol=1e-5)
    others = [i for i, t in enumerate(order) if t != task]
    assert np.abs(logits[others] - per_task[others]).max() > 1e-3  # the other prompt differs

  swapped = {**mixed, "prompt_ids": 1 - mixed["prompt_ids"]}
  swapped_logits = np.asarray(table_model._logits(params, swapped, dropout_rng=None)[0])  # pylint: disable=protected-access
  assert np.abs(swapped_logits - logits).max() > 1e-3
