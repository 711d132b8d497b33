"""The reader pipeline's Python steps: split, cross-fitted scoring, merge, recall-at-input.

  reader_split   train file -> half_a, half_b (question-disjoint), train (the file itself)
  reader_score   a re-ranker checkpoint scores one file it was not trained on -> scored
  reader_merge   re-scored halves -> one train file in the original question order
  reader_recall  recall-at-input of a file before and after re-ranking -> before, after
  reader_synthetic  synthetic retrieval files (tiny pipeline, demo) -> train, dev, test
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from prompt_tuning.data import vocabularies
from prompt_tuning.methods.reader import crossfit
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import packing
from prompt_tuning.pipelines.stages import pipeline_step


@pipeline_step("reader_split", outputs=("train", "half_a", "half_b"))
def reader_split(*, stage_dir: str, train_file: str, seed: int = 0):
  """Question-disjoint halves of `train_file`; `train` is `train_file` itself (checked)."""
  half_a, half_b = crossfit.split_halves(data_lib.read_records(train_file), seed=seed)
  paths = {"train": train_file, "half_a": os.path.join(stage_dir, "train_a.json"),
           "half_b": os.path.join(stage_dir, "train_b.json")}
  data_lib.write_records(paths["half_a"], half_a)
  data_lib.write_records(paths["half_b"], half_b)
  return paths


@pipeline_step("reader_score", outputs=("scored",))
def reader_score(*, stage_dir: str, checkpoint: str, trained_on: Sequence[str], file: str,
                 preset: str, passage_length: int, vocabulary_path: Optional[str] = None,
                 batch_size: int = 64):
  """Scores `file` with the re-ranker at `checkpoint`, trained on the files `trained_on`."""
  trained_on = [trained_on] if isinstance(trained_on, str) else list(trained_on)
  crossfit.check_not_trained_on(file, trained_on)  # before any model is loaded
  records = data_lib.read_records(file)
  model, params = crossfit.load_reranker(checkpoint, preset=preset,
                                         passage_length=passage_length)
  vocabulary = vocabularies.get_vocabulary(vocabulary_path)
  scored = crossfit.score_records(model, params, records, vocabulary, batch_size=batch_size)
  path = os.path.join(stage_dir, os.path.basename(file))
  data_lib.write_records(path, scored)
  return {"scored": path}


@pipeline_step("reader_merge", outputs=("train",))
def reader_merge(*, stage_dir: str, original: str, parts: Sequence[str]):
  """The re-scored parts in the order of `original` (every question exactly once)."""
  by_question = {}
  for part in parts:
    for record in data_lib.read_records(part):
      by_question.setdefault(crossfit.question_key(record["question"]), []).append(record)
  merged = []
  for index, record in enumerate(data_lib.read_records(original)):
    waiting = by_question.get(crossfit.question_key(record["question"]))
    if not waiting:
      raise ValueError(f"Question {index} of {original} is missing from the re-scored parts "
                       f"{list(parts)}.")
    merged.append(waiting.pop(0))
  path = os.path.join(stage_dir, os.path.basename(original))
  data_lib.write_records(path, merged)
  return {"train": path}


@pipeline_step("reader_recall", outputs=("before", "after"))
def reader_recall(*, stage_dir: str, retrieved: str, reranked: str, inputs_length: int,
                  vocabulary_path: Optional[str] = None):
  """Recall-at-input of the same questions packed by retriever and by re-ranker scores."""
  vocabulary = vocabularies.get_vocabulary(vocabulary_path)
  before = packing.recall_at_input(retrieved, vocabulary, inputs_length)
  after = packing.recall_at_input(reranked, vocabulary, inputs_length)
  with open(os.path.join(stage_dir, "recall_at_input.json"), "w") as f:
    json.dump({"retriever": before, "reranker": after}, f, indent=1)
  return {"before": before["recall_at_input"], "after": after["recall_at_input"]}


@pipeline_step("reader_synthetic", outputs=("train", "dev", "test"))
def reader_synthetic(*, stage_dir: str, train: int = 128, dev: int = 32, test: int = 32,
                     num_passages: int = 20, noise: float = 1.0, seed: int = 0):
  """Synthetic retrieval files (see `synthetic.py`) with disjoint questions per split."""
  from prompt_tuning.methods.reader import synthetic  # pylint: disable=g-import-not-at-top
  records = synthetic.make_records(train + dev + test, num_passages=num_passages, noise=noise,
                                   seed=seed)
  splits = {"train": records[:train], "dev": records[train:train + dev],
            "test": records[train + dev:]}
  paths = {}
  for name, part in splits.items():
    paths[name] = os.path.join(stage_dir, f"{name}.json")
    data_lib.write_records(paths[name], part)
  return paths
