"""Re-ranker data: (question, passage) pairs from retrieval JSON, in groups of 1 + N.

Training groups follow the DPR reader: per question, one positive and `num_negatives`
negatives drawn from the `top_k` retrieved passages (by retriever score); a question without
a positive (or without any negative) in its top `top_k` is left out of training. Each
epoch draws new passages, from a generator seeded by (seed, epoch, question), so the stream
is a pure function of the seed (the trainer's exact resumption relies on that).

Pairs are `question: Q title: T context: X`, tokenized with the task's vocabulary, cut to
`passage_length` tokens and zero-padded; a group is flattened to `[(1 + N) * L]` ids, the
feature `passages` that `reranker.RerankerFeatureConverter` reads.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import reader
from prompt_tuning.methods.reader import reranker


def read_records(path: str) -> List[Dict[str, Any]]:
  """The raw JSON entries of a retrieval file, checked (one sentence per malformed entry)."""
  reader.read_retrieval_file(path, require_passages=True)  # validates, names file and entry
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def write_records(path: str, records: Sequence[Mapping[str, Any]]) -> None:
  """Writes a retrieval file (same JSON format) beside its final name, then renames it."""
  tmp = f"{path}.tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(list(records), f)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def pair_text(question: str, ctx: Mapping[str, Any]) -> str:
  return f"question: {question} title: {ctx.get('title', '')} context: {ctx['text']}"


def pair_ids(vocabulary: seqio.Vocabulary, question: str, ctx: Mapping[str, Any],
             length: int) -> np.ndarray:
  """`[length]` int32 ids of one pair, cut and zero-padded."""
  ids = list(vocabulary.encode(pair_text(question, ctx)))[:length]
  return np.array(ids + [0] * (length - len(ids)), np.int32)


def _has_answer(ctx: Mapping[str, Any], answers: Sequence[str]) -> bool:
  if "has_answer" in ctx:
    return bool(ctx["has_answer"])
  return reader._contains_answer(ctx["text"], list(answers))  # pylint: disable=protected-access


def ranked(ctxs: Sequence[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
  """Passages best first by `score` (retrieval order where scores are missing or tied)."""
  keyed = [(-float(c.get("score", -rank)), rank) for rank, c in enumerate(ctxs)]
  return [ctxs[rank] for _, rank in sorted(keyed)]


def training_group(record: Mapping[str, Any], *, num_negatives: int, top_k: int,
                   rng: np.random.Generator) -> Optional[List[Mapping[str, Any]]]:
  """`[positive, negative * num_negatives]` from the top `top_k`, or None if impossible.

  Negatives are drawn without replacement when there are enough, with replacement otherwise.
  """
  top = ranked(record["ctxs"])[:top_k]
  answers = record.get("answers", [])
  positives = [c for c in top if _has_answer(c, answers)]
  negatives = [c for c in top if not _has_answer(c, answers)]
  if not positives or not negatives:
    return None
  positive = positives[rng.integers(len(positives))]
  replace = len(negatives) < num_negatives
  chosen = rng.choice(len(negatives), size=num_negatives, replace=replace)
  return [positive] + [negatives[i] for i in chosen]


class RerankerGroups:
  """A seqio data source function: split -> retrieval file -> endless-able training groups."""

  def __init__(self, files: Mapping[str, str], vocabulary: seqio.Vocabulary, *,
               num_negatives: int, top_k: int, passage_length: int):
    if num_negatives < 1 or top_k < 2 or passage_length < 1:
      raise ValueError(f"Re-ranker groups need num_negatives >= 1, top_k >= 2 and "
                       f"passage_length >= 1; got {num_negatives}, {top_k}, {passage_length}.")
    self.files = dict(files)
    self.vocabulary = vocabulary
    self.num_negatives = num_negatives
    self.top_k = top_k
    self.passage_length = passage_length

  @property
  def group_length(self) -> int:
    return (1 + self.num_negatives) * self.passage_length

  def examples(self, records: Sequence[Mapping[str, Any]], *, seed: int,
               epoch: int) -> Iterator[Dict[str, np.ndarray]]:
    for index, record in enumerate(records):
      rng = np.random.default_rng([seed, epoch, index])
      group = training_group(record, num_negatives=self.num_negatives, top_k=self.top_k,
                             rng=rng)
      if group is None:
        continue
      ids = [pair_ids(self.vocabulary, record["question"], c, self.passage_length)
             for c in group]
      yield {reranker.TASK_FEATURE: np.concatenate(ids)}

  def dataset_fn(self, split: str, shuffle_files: bool,
                 seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files
    if split not in self.files:
      raise ValueError(f"No re-ranker file for split {split!r}; have {sorted(self.files)}.")
    records = read_records(self.files[split])
    epochs = iter(range(1 << 30))  # each pass over the file draws new negatives

    def generate():
      yield from self.examples(records, seed=seed or 0, epoch=next(epochs))

    return tf.data.Dataset.from_generator(generate, output_signature={
        reranker.TASK_FEATURE: tf.TensorSpec([self.group_length], tf.int32)})


def register_reranker_task(name: str, *, files: Mapping[str, str],
                           vocabulary: seqio.Vocabulary, num_negatives: int = 23,
                           top_k: int = 100, passage_length: int = 256) -> str:
  """Registers (or replaces) a re-ranker training task over retrieval files; returns `name`.

  Its feature length is `(1 + num_negatives) * passage_length` under the key 'passages'.
  """
  source = RerankerGroups(files, vocabulary, num_negatives=num_negatives, top_k=top_k,
                          passage_length=passage_length)
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(source.dataset_fn, splits=list(files)),
      preprocessors=[],
      output_features={reranker.TASK_FEATURE: seqio.Feature(
          vocabulary=vocabulary, add_eos=False, dtype=tf.int32)})
  return name
