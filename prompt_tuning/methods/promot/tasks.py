"""Task variants ProMoT trains on: examples that name their prompt, and 1-shot inputs.

Multi-task ProMoT trains one prompt per task in stage 1, stacks them into a `PromptTable`, and
trains the model on a mixture in which each example is routed to its own task's prompt by a
per-example `prompt_ids` feature. `with_prompt_id(task, k)` registers a copy of a task whose
examples carry `prompt_ids = k`; `register_multitask(name, tasks)` registers those copies (ids in
the order given) and their mixture. Importing this module registers the tiny CPU variant's
mixture of the two generated digit tasks.

ProMoT + 1-shot trains on inputs that start with one solved training example in natural
language: `with_one_shot(task)` registers `<task>_1shot`, whose every input is
`"<first training input> <its target>\n\n" + input` (the shot is read, once, when a dataset
of the task is first built). Importing this module registers the 1-shot copies of the tiny
target task and, where their modules import, of RTE and WMT14 En-Fr (T5 and mT5 vocabularies).
"""
from __future__ import annotations

from typing import Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import registry
from prompt_tuning.prompts.providers import PROMPT_IDS_KEY

SMOKE_MIXTURE = "promot_smoke_multitask"
SMOKE_TASKS = ("smoke_last_digit", "smoke_skills")
SHOT_SEPARATOR = "\n\n"
ONE_SHOT_TASKS = {"prompt_tuning.smoke_data.tasks": ("smoke_last_digit",),
                  "tasks.super_glue": ("super_glue_rte_v102", "mt5_super_glue_rte_v102"),
                  "tasks.wmt": ("wmt14_enfr_v100", "mt5_wmt14_enfr_v100")}
MT5_MIXTURE = "promot_mt5_rte_wmt14_enfr"


def add_prompt_id(prompt_id: int):
  """A preprocessor giving every example `prompt_ids = [prompt_id]` (int32, shape [1]: seqio's
  evaluator measures every output feature's length, so it cannot be a scalar)."""

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(lambda ex: {**ex, PROMPT_IDS_KEY: tf.constant([prompt_id], tf.int32)})

  return preprocess


def prompted_name(task: str, prompt_id: int) -> str:
  return f"{task}_prompt{prompt_id}"


def with_prompt_id(task: str, prompt_id: int) -> str:
  """Registers `task` whose examples carry `prompt_ids = prompt_id`; returns its name."""
  if prompt_id < 0:
    raise ValueError(f"A prompt id must be non-negative, got {prompt_id} for task {task!r}.")
  if task not in seqio.TaskRegistry.names():
    raise ValueError(f"Unknown task {task!r}: import the module that registers it first.")
  original = seqio.get_mixture_or_task(task)
  name = prompted_name(task, prompt_id)
  # An output feature, so that mixtures (which keep only output features) carry it too.
  features = {**original.output_features, PROMPT_IDS_KEY: seqio.Feature(
      vocabulary=seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.int32, rank=1)}
  registry.add_task(
      name, source=original.source,
      preprocessors=list(original.preprocessors) + [add_prompt_id(prompt_id)],
      output_features=features, postprocess_fn=original.postprocessor,
      metric_fns=list(original.metric_fns))
  return name


def register_multitask(name: str, tasks: Sequence[str]) -> Sequence[str]:
  """The mixture `name` of `tasks`, task i routed to prompt i (equal rates); its task names."""
  if len(set(tasks)) != len(tasks) or not tasks:
    raise ValueError(f"A multi-task mixture needs distinct tasks, got {list(tasks)}.")
  names = [with_prompt_id(task, i) for i, task in enumerate(tasks)]
  registry.add_mixture(name, names, default_rate=1.0)
  return names


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def one_shot_text(task: str) -> str:
  """The shot `with_one_shot` prepends: the first training example, solved, then a blank line."""
  dataset = seqio.get_mixture_or_task(task).get_dataset(
      sequence_length=None, split="train", shuffle=False, use_cached=False)
  first = next(iter(dataset.take(1).as_numpy_iterator()), None)
  if first is None or "inputs_pretokenized" not in first or "targets_pretokenized" not in first:
    raise ValueError(f"Task {task!r} has no training example with pretokenized text to use as "
                     "its 1-shot example.")
  return (f"{_text(first['inputs_pretokenized'])} {_text(first['targets_pretokenized'])}"
          f"{SHOT_SEPARATOR}")


def prepend_shot(task: str):
  """A preprocessor (after tokenisation) prepending `task`'s 1-shot example to `inputs`."""

  def preprocess(dataset: tf.data.Dataset, sequence_length=None) -> tf.data.Dataset:
    shot = one_shot_text(task)
    vocabulary = seqio.get_mixture_or_task(task).output_features["inputs"].vocabulary
    tokens = tf.constant(vocabulary.encode(shot), tf.int32)
    limit = (sequence_length or {}).get("inputs")

    def add(example):
      example = dict(example)
      ids = tf.concat([tokens, tf.cast(example["inputs"], tf.int32)], axis=0)
      if limit:  # trimmed here so the input still ends with EOS, as the task's own inputs do
        ids = tf.cond(tf.size(ids) > limit,
                      lambda: tf.concat([ids[:limit - 1], [vocabulary.eos_id]], axis=0),
                      lambda: ids)
      example["inputs"] = ids
      if "inputs_pretokenized" in example:
        example["inputs_pretokenized"] = tf.strings.join([shot, example["inputs_pretokenized"]])
      return example

    return dataset.map(add)

  return preprocess


def with_one_shot(task: str) -> str:
  """Registers `<task>_1shot`, `task` with its 1-shot example before every input."""
  if task not in seqio.TaskRegistry.names():
    raise ValueError(f"Unknown task {task!r}: import the module that registers it first.")
  original = seqio.get_mixture_or_task(task)
  name = f"{task}_1shot"
  registry.add_task(
      name, source=original.source,
      preprocessors=list(original.preprocessors) + [prepend_shot(task)],
      output_features=original.output_features, postprocess_fn=original.postprocessor,
      metric_fns=list(original.metric_fns))
  return name


def _register_defaults() -> None:
  import importlib  # pylint: disable=g-import-not-at-top
  for module, names in ONE_SHOT_TASKS.items():
    try:
      importlib.import_module(module)
    except ImportError:  # the `tasks` package is not on the path: only the tiny tasks
      continue
    for name in names:
      if name in seqio.TaskRegistry.names():
        with_one_shot(name)
  register_multitask(SMOKE_MIXTURE, SMOKE_TASKS)
  if {"mt5_super_glue_rte_v102", "mt5_wmt14_enfr_v100"} <= set(seqio.TaskRegistry.names()):
    register_multitask(MT5_MIXTURE, ("mt5_super_glue_rte_v102", "mt5_wmt14_enfr_v100"))


_register_defaults()
