"""Recall-at-input: how often an answer-bearing passage is among those packed into the input.

Packing is `prompt_tuning.data.reader.pack_passages` (greedy by score, whole passages, exact
token budget); this module runs it over a retrieval file and counts, so the same packing
decides the reader's inputs and the reported recall.
"""
from __future__ import annotations

import functools
from typing import Dict

import seqio

from prompt_tuning.data import reader
from prompt_tuning.data import vocabularies


def packed_examples(path: str, vocabulary: seqio.Vocabulary, inputs_length: int, *,
                    split_last_passage: bool = False):
  """The packed examples (`inputs`, `answer_in_input`, `num_passages`, ...) of one file."""
  pack = functools.partial(reader.pack_passages, split_last_passage=split_last_passage)
  dataset = pack(reader.retrieval_dataset(path), {"inputs": inputs_length},
                 vocabularies.text_to_text_features(vocabulary))
  return list(dataset.as_numpy_iterator())


def recall_at_input(path: str, vocabulary: seqio.Vocabulary, inputs_length: int, *,
                    split_last_passage: bool = False) -> Dict[str, float]:
  """Percent of questions with an answer-bearing passage in the packed input, and counts."""
  rows = packed_examples(path, vocabulary, inputs_length, split_last_passage=split_last_passage)
  hits = sum(bool(r["answer_in_input"]) for r in rows)
  return {"recall_at_input": 100.0 * hits / max(len(rows), 1), "questions": len(rows),
          "answer_in_input": hits,
          "mean_passages": sum(int(r["num_passages"]) for r in rows) / max(len(rows), 1)}
