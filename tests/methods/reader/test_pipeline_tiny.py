"""The tiny reader pipeline end to end (13 stages, about 6 minutes on 2 cores: slow)."""
import json
import os

import pytest

from prompt_tuning import pipeline
from prompt_tuning.methods.reader import crossfit


def _records(path):
  with open(path) as f:
    return json.load(f)


def _questions(path):
  return {crossfit.question_key(r["question"]) for r in _records(path)}


def check_finished_pipeline(directory):
  """What a finished run of gin/methods/reader/reader_tiny.gin must have produced."""
  done = {name: json.load(open(os.path.join(directory, name, "completed.json")))["outputs"]
          for name in os.listdir(directory)
          if os.path.exists(os.path.join(directory, name, "completed.json"))}
  assert len(done) == 13, sorted(done)
  half_a, half_b = done["split"]["half_a"], done["split"]["half_b"]
  train = done["data"]["train"]
  assert not _questions(half_a) & _questions(half_b)
  assert _questions(half_a) | _questions(half_b) == _questions(train)
  # Each half was scored by the other half's re-ranker: same questions, re-ranker scores.
  assert _questions(done["score_a"]["scored"]) == _questions(half_a)
  assert _questions(done["score_b"]["scored"]) == _questions(half_b)
  merged = _records(done["merge"]["train"])
  assert [r["question"] for r in merged] == [r["question"] for r in _records(train)]
  for record in merged + _records(done["score_dev"]["scored"]):
    scores = [c["score"] for c in record["ctxs"]]
    assert scores == sorted(scores, reverse=True)
    assert all("retriever_score" in c and c["text"] for c in record["ctxs"])
  assert 0.0 <= done["recall"]["before"] <= 100.0 and 0.0 <= done["recall"]["after"] <= 100.0
  metrics_file = done["reader_test"]["metrics"]
  last = [json.loads(line) for line in open(metrics_file)][-1]
  assert {"reader_packed/em", "reader_packed/recall_at_input"} <= set(last), last


@pytest.mark.slow
@pytest.mark.e2e
def test_the_tiny_pipeline_runs_every_stage(tmp_path):
  pipeline.main(["--gin_file=gin/methods/reader/reader_tiny.gin",
                 f"--pipeline_dir={tmp_path / 'run'}"])
  check_finished_pipeline(str(tmp_path / "run"))


def test_the_tiny_pipeline_dry_run_resolves_every_stage(capsys, tmp_path):
  pipeline.main(["--gin_file=gin/methods/reader/reader_tiny.gin",
                 f"--pipeline_dir={tmp_path}", "--dry_run"])
  out = capsys.readouterr().out
  assert out.count("to run") == 13
  assert "--gin.RERANKER_TRAIN_FILE=\"'<half_a of step reader_split>'\"" in out
  assert "input file = '<half_b of step reader_split>'" in out


def test_the_xxl_pipeline_dry_run_uses_the_protocol_presets(capsys, tmp_path):
  pipeline.main(["--gin_file=gin/methods/reader/reader_t5_1_1_xxl.gin",
                 f"--pipeline_dir={tmp_path}", "--dry_run",
                 "--gin.TRAIN_FILE='/d/train.json'", "--gin.DEV_FILE='/d/dev.json'",
                 "--gin.TEST_FILE='/d/test.json'", "--gin.RERANKER_BASE='/c/base'",
                 "--gin.READER_BASE='/c/xxl'"])
  out = capsys.readouterr().out
  assert out.count("to run") == 12
  for flag in ("--gin.NUM_NEGATIVES=23", "--gin.TOP_K=100", "--gin.TRAIN_STEPS=30000",
               "--gin.BATCH_SIZE=16", "--gin.RERANKER_PRESET=\"'t5_1_1_base'\"",
               "--gin.INITIAL_CHECKPOINT_PATH=\"'/c/base'\"",
               "--gin.INITIAL_CHECKPOINT_PATH=\"'/c/xxl'\"",
               "--gin_file=gin/models/t5_1_1_lm100k_xxl.gin", "--gin.BATCH_SIZE=32",
               "--gin.READER_LR=0.1", "--gin_file=gin/partitioning/v4_32.gin"):
    assert flag in out, flag
  assert "input file = /d/dev.json" in out or "input file = '/d/dev.json'" in out


def test_one_reranker_preset_reaches_its_training_and_its_scoring(capsys, tmp_path):
  pipeline.main(["--gin_file=gin/methods/reader/reader_t5_1_1_xxl.gin",
                 f"--pipeline_dir={tmp_path}", "--dry_run",
                 "--gin.TRAIN_FILE='/d/train.json'", "--gin.DEV_FILE='/d/dev.json'",
                 "--gin.TEST_FILE='/d/test.json'", "--gin.RERANKER_BASE='/c/large'",
                 "--gin.READER_BASE='/c/xxl'", "--gin.RERANKER_PRESET='t5_1_1_large'"])
  out = capsys.readouterr().out
  assert out.count("--gin.RERANKER_PRESET=\"'t5_1_1_large'\"") == 3  # rerank_a, _b, _all
  assert out.count("input preset = 't5_1_1_large'") == 4  # score_a, _b, _dev, _test
