"""The tiny recursion pipelines run end to end on CPU (minutes each, hence `e2e`): textual
recursion (p1, sampling, candidates, p2, evaluation), re-runs that redo nothing, sampling that
draws the same candidates again; and the Connector pre-trained on language modelling feeding
the recursion run's Connector."""
import json
import os
import shutil

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def run(name, directory, *extra):
  return pipeline_lib.main([f"--gin_file=gin/methods/recursion/{name}",
                            f"--pipeline_dir={directory}", *extra], say=lambda _: None)


def completed(directory, stage):
  with open(os.path.join(directory, stage, "completed.json")) as f:
    return json.load(f)["outputs"]


def test_textual_recursion_runs_resumes_and_samples_deterministically(tmp_path):
  run("textual_tiny.gin", tmp_path, "--gin.NUM_CANDIDATES=4")
  candidates = completed(tmp_path, "candidates")
  assert 0.0 <= candidates["recall"] <= 100.0 and candidates["validation_examples"] > 0
  rows = [json.loads(line) for line in open(tmp_path / "candidates" / "validation.jsonl")]
  assert all(1 <= len(r["candidates"]) <= 4 for r in rows)
  metrics = [json.loads(line) for line in open(completed(tmp_path, "evaluate")["metrics"])]
  assert "recursion_candidates/exact_match" in metrics[-1]
  dataset = (tmp_path / "candidates" / "train.jsonl").read_bytes()
  sampled = open(completed(tmp_path, "sample_validation")["predictions"], "rb").read()
  # A second run finds every stage finished and changes nothing.
  run("textual_tiny.gin", tmp_path, "--gin.NUM_CANDIDATES=4")
  assert (tmp_path / "candidates" / "train.jsonl").read_bytes() == dataset
  # Sampling again from scratch draws the same candidates (the sampling key is fixed).
  shutil.rmtree(tmp_path / "sample_validation")
  run("textual_tiny.gin", tmp_path, "--gin.NUM_CANDIDATES=4", "--stages=sample_validation")
  assert open(completed(tmp_path, "sample_validation")["predictions"], "rb").read() == sampled


def test_the_pretrained_connector_initialises_the_recursion_run(tmp_path):
  run("neural_pretrained_tiny.gin", tmp_path)
  pretrained = completed(tmp_path, "connector_lm")
  recursion = completed(tmp_path, "recursion")
  record = os.path.join(recursion["checkpoint"], "run", "metadata")
  groups = json.load(open(record))["run_metadata"]["param_groups"]
  connector = next(g for g in groups if g["name"] == "connector")
  assert connector["source"]["kind"] == "checkpoint" and connector["trainable"]
  assert connector["source"]["path"] == pretrained["checkpoint"]
  exports = [np.load(os.path.join(d["model_dir"], "group_exports",
                                  f"checkpoint_{d['step']}", "connector.npz"))
             for d in (pretrained, recursion)]
  assert set(exports[0].files) == set(exports[1].files)
  # Pre-training opened the zero-initialised gate; the recursion run continued from there.
  gate = next(k for k in exports[0].files if k.endswith("gate"))
  assert np.abs(exports[0][gate]).max() > 0
  metrics = [json.loads(line) for line in open(os.path.join(recursion["metrics"],
                                                            "infer_eval.jsonl"))]
  assert "smoke_last_digit/accuracy" in metrics[-1]
