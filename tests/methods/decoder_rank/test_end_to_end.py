"""The tiny decoder-rank pipeline runs through (base, base_eval, prompt, rank_eval): prompt
tuning lowers the frozen model's validation loss, and the rank-classification accuracy each
evaluation reports is the one its own per-row scores give."""
import collections
import json
import os

import pytest

from prompt_tuning import pipeline as pipeline_lib

pytestmark = pytest.mark.e2e  # four entry-point processes, a few minutes on 2 cores

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def accuracy_from_rows(path):
  """Rank classification redone from the evaluator's per-row log: per example, is the
  highest-scoring choice a correct one?"""
  best = {}
  for row in _jsonl(path):
    example, correct = row["target"]
    if example not in best or row["score"] > best[example][0]:
      best[example] = (row["score"], correct)
  return 100.0 * sum(c for _, c in best.values()) / len(best), len(best)


def test_tiny_pipeline_tunes_a_prompt_and_ranks_choices(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  outputs = pipeline_lib.main([
      "--gin_file=gin/methods/decoder_rank/decoder_rank_tiny.gin",
      f"--pipeline_dir={tmp_path}", "--gin.BASE_STEPS=60", "--gin.TRAIN_STEPS=40",
      "--gin.EVAL_PERIOD=40", "--gin.CHECKPOINT_PERIOD=40"])
  assert set(outputs) == {"base", "base_eval", "prompt", "rank_eval"}

  # Prompt tuning lowers the validation loss of the frozen base (step 0 -> step 40).
  task = "tiny_super_glue_rte_v102"
  evals = {r["step"]: r for r in _jsonl(os.path.join(outputs["prompt"]["metrics"],
                                                     "train_eval.jsonl"))}
  before, after = evals[0][f"{task}/loss"], evals[40][f"{task}/loss"]
  assert after < before - 0.05, (before, after)

  # Every evaluation's accuracy equals the one recomputed from its per-row scores.
  rank = "tiny_super_glue_{}_v102_rank_classification"
  final = _jsonl(outputs["rank_eval"]["metrics"])[-1]
  for benchmark in ("rte", "boolq"):
    name = rank.format(benchmark)
    rows = os.path.join(outputs["rank_eval"]["dir"], "inference_eval",
                        f"{name}-validation-step_40.jsonl")
    recomputed, examples = accuracy_from_rows(rows)
    assert examples == 128
    assert final[f"{name}/accuracy"] == pytest.approx(recomputed)
  base = _jsonl(outputs["base_eval"]["metrics"])[-1]
  rows = os.path.join(outputs["base_eval"]["dir"], "inference_eval",
                      f"{rank.format('rte')}-validation-step_60.jsonl")
  assert base[f"{rank.format('rte')}/accuracy"] == pytest.approx(accuracy_from_rows(rows)[0])
  # Two rows (choices) per example in each log.
  counts = collections.Counter(r["target"][0] for r in _jsonl(rows))
  assert set(counts.values()) == {2}
