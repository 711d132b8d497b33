"""The second-stage SeqIO task of textual recursion: question + candidate list -> answer.

`candidates_task(directory=..., vocabulary=...)` registers a task reading the
`<directory>/<split>.jsonl` files that `candidates.write_split` writes and returns its name, so
a run file can say `MIXTURE_OR_TASK_NAME = @recursion.candidates_task()` (gin calls it while it
builds the dataset config, in the run's own process). Metric: exact match.
"""
from __future__ import annotations

import json
import os

import gin
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import registry

SPLITS = ("train", "validation")


def format_inputs(question: str, candidates) -> str:
  """The second pass's input text: the question, then the numbered candidates (best first)."""
  listed = " ".join(f"({i + 1}) {c}" for i, c in enumerate(candidates))
  return f"question: {question} candidates: {listed}"


def _dataset_fn(directory: str):
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    path = os.path.join(directory, f"{split}.jsonl")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"The second-stage split file {path} does not exist; run the "
                              "candidates stage first.")
    inputs, targets = [], []
    with open(path) as f:
      for line in f:
        if line.strip():
          row = json.loads(line)
          inputs.append(format_inputs(row["question"], row["candidates"]))
          targets.append(row["answer"])
    return tf.data.Dataset.from_tensor_slices({"inputs": inputs, "targets": targets})
  return dataset_fn


def _strip(text, example=None, is_target=False):
  del example, is_target
  return text.strip() if isinstance(text, str) else text.decode("utf-8").strip()


def exact_match(targets, predictions):
  """EM: percent of predictions equal to their answer after SQuAD-style normalisation."""
  if len(targets) != len(predictions):
    raise ValueError(f"exact_match got {len(targets)} targets and {len(predictions)} predictions.")
  hits = sum(metrics.normalize_answer(t) == metrics.normalize_answer(p)
             for t, p in zip(targets, predictions))
  return {"exact_match": 100.0 * hits / max(len(targets), 1)}


def candidates_task(*, directory: str, vocabulary: seqio.Vocabulary,
                    name: str = "recursion_candidates") -> str:
  """Registers (again, replacing any earlier one) the task over `directory`; returns its name."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"The second-stage dataset folder {directory} does not exist.")
  seqio.TaskRegistry.remove(name)
  features = {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
              "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  registry.add_task(
      name,
      source=seqio.FunctionDataSource(dataset_fn=_dataset_fn(directory), splits=SPLITS),
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
      output_features=features, postprocess_fn=_strip, metric_fns=[exact_match])
  return name


try:
  gin.external_configurable(candidates_task, module="recursion")
except ValueError:  # registered already in this process
  pass
