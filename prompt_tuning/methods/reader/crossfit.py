"""Cross-fitting: no re-ranker ever scores a question it was trained on.

The training questions are split into halves A and B; the re-ranker trained on A scores B's
passages and the one trained on B scores A's, so the reader is tuned on passages ranked the way
dev and test passages will be (by a re-ranker that has not seen the question); a re-ranker
trained on all training questions scores dev and test. `score_file` refuses a file that
shares a question with the re-ranker's training files, so a miswired pipeline stops.

Re-scored files keep the retrieval JSON format: each passage's `score` becomes the
re-ranker's score (the retriever's moves to `retriever_score`) and passages are listed best
first, so `prompt_tuning.data.reader.pack_passages` packs them by re-ranker score.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import seqio

from prompt_tuning.data import metrics
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import reranker


def question_key(question: str) -> str:
  """Questions compare after SQuAD normalisation (case, punctuation, articles, spaces)."""
  return metrics.normalize_answer(question)


def split_halves(records: Sequence[Mapping[str, Any]], *, seed: int = 0
                 ) -> Tuple[List[Mapping[str, Any]], List[Mapping[str, Any]]]:
  """Two halves of the questions, disjoint after normalisation (duplicates stay together)."""
  keys = sorted({question_key(r["question"]) for r in records})
  order = np.random.default_rng(seed).permutation(len(keys))
  in_a = {keys[i] for i in order[: (len(keys) + 1) // 2]}
  half_a = [r for r in records if question_key(r["question"]) in in_a]
  half_b = [r for r in records if question_key(r["question"]) not in in_a]
  return half_a, half_b


def check_not_trained_on(score_path: str, trained_on: Sequence[str]) -> None:
  """Stops with one sentence if `score_path` shares a question with any training file."""
  scored = {question_key(r["question"]): i
            for i, r in enumerate(data_lib.read_records(score_path))}
  for train_path in trained_on:
    for record in data_lib.read_records(train_path):
      index = scored.get(question_key(record["question"]))
      if index is not None:
        raise ValueError(
            f"Cross-fitting violated: question {index} of {score_path} "
            f"({record['question']!r}) is in the re-ranker's training file {train_path}.")


def score_records(model: reranker.RerankerModel, params: Any,
                  records: Sequence[Mapping[str, Any]], vocabulary: seqio.Vocabulary, *,
                  batch_size: int = 64) -> List[Dict[str, Any]]:
  """Copies of `records` with re-ranker scores, passages best first."""
  length = model.passage_length

  @jax.jit
  def scores_of(p, tokens):
    return model.passage_scores(p, tokens[:, None, :])[:, 0]

  pairs = [(i, j) for i, r in enumerate(records) for j in range(len(r["ctxs"]))]
  values = np.zeros(len(pairs), np.float32)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    tokens = np.zeros((batch_size, length), np.int32)  # fixed shape: one compilation
    for row, (i, j) in enumerate(chunk):
      tokens[row] = data_lib.pair_ids(vocabulary, records[i]["question"], records[i]["ctxs"][j],
                                      length)
    values[start:start + len(chunk)] = np.asarray(scores_of(params, jnp.asarray(tokens)))[
        :len(chunk)]
  out = [copy.deepcopy(dict(r)) for r in records]
  for (i, j), value in zip(pairs, values):
    ctx = out[i]["ctxs"][j]
    if "score" in ctx:
      ctx["retriever_score"] = ctx["score"]
    ctx["score"] = float(value)
  for record in out:
    record["ctxs"] = sorted(record["ctxs"], key=lambda c: -c["score"])
  return out


def load_reranker(checkpoint: str, *, preset: str, passage_length: int,
                  **config_overrides) -> Tuple[reranker.RerankerModel, Any]:
  """A re-ranker and its parameters from a training run's step folder; `preset` (and any
  `ModelConfig` overrides) must be the shapes it was trained with."""
  # Imported here: the engine is only needed when a model is loaded.
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import partitioning, run_setup, trainer
  from prompt_tuning.models import config as config_lib
  # pylint: enable=g-import-not-at-top
  config = config_lib.get_config(preset, **config_overrides)
  model = reranker.RerankerModel(reranker.CrossEncoder(config),
                                 passage_length=passage_length)
  mesh_config = partitioning.MeshConfig()
  params, _ = run_setup.load_params(
      model=model, lengths={reranker.MODEL_FEATURE: passage_length},
      restore=trainer.RestoreConfig(path=checkpoint), mesh=mesh_config.make_mesh(),
      rules=mesh_config.axis_rules(), rng=jax.random.PRNGKey(0))
  return model, params
