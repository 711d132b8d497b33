"""SPoT's tiny pipelines end to end on the CPU model (no download), all four in one folder: the
targeted variants share their base, library, short target run and retrieval stages, and generic
transfer shares the base.

Checks the method's contract on what the runs left behind: the library holds the three source
runs; retrieval ranks them by the similarity of their key prompts to the target's prompt at the
key step; (a) each candidate run starts from its source's value prompt and the pick is the best
score; (b) the target starts from sum_r alpha_r value_r; (c) the source prompt trains on the
mixture of the retrieved tasks; generic transfer's target starts from the mixture prompt; every
report is the run's best validation score.
"""
import json
import os
import re

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import mixtures
from prompt_tuning.methods.spot import runs
from prompt_tuning.methods.spot import similarity

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
FAST = ["--gin.BASE_STEPS=100", "--gin.SOURCE_STEPS=20", "--gin.SOURCE_CHECKPOINT_PERIOD=10",
        "--gin.LIBRARY_KEY_STEP=10", "--gin.KEY_STEP=10", "--gin.TARGET_STEPS=20",
        "--gin.TARGET_CHECKPOINT_PERIOD=10", "--gin.MIXTURE_STEPS=10",
        "--gin.MIXTURE_CHECKPOINT_PERIOD=10"]
PIPELINES = ["targeted_average_tiny", "targeted_best_of_k_tiny", "targeted_mixture_tiny",
             "generic_tiny"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    path = str(tmp_path_factory.mktemp("spot_tiny"))
    for name in PIPELINES:
      flags = [f for f in FAST if not f.startswith(("--gin.LIBRARY", "--gin.KEY", "--gin.MIX"))] \
          if name == "generic_tiny" else FAST
      pipeline_lib.main([f"--gin_file=gin/methods/spot/{name}.gin",
                         f"--pipeline_dir={path}"] + flags)
    yield path
  finally:
    os.chdir(cwd)


def _outputs(folder, stage):
  with open(os.path.join(folder, stage, "completed.json")) as f:
    return json.load(f)["outputs"]


def _config(folder, stage):
  """The run's operative config, with gin's wrapped lines (`NAME = \\` + value) joined."""
  with open(os.path.join(folder, stage, "config.gin")) as f:
    return re.sub(r"\\\n\s*", "", f.read())


def test_retrieval_ranks_the_library_by_key_prompt_similarity(folder):
  lib = library_lib.Library.open(_outputs(folder, "library")["library"])
  assert sorted(e.task for e in lib.entries) == ["spot_demo_last_a", "spot_demo_max_a",
                                                 "spot_demo_second_a"]
  assert {e.key_step for e in lib.entries} == {10}
  target = runs.target_prompt(os.path.join(folder, "target_short"), 10)
  assert target.shape == (8, 64)
  expected = sorted(lib.entries, key=lambda e: (-round(similarity.average_tokens(
      target, lib.key_prompt(e.name)), 9), e.name))
  found = _outputs(folder, "retrieve")
  assert found["candidate_names"] == [e.name for e in expected]
  assert found["mixture_tasks"] == [e.task for e in expected]


def test_best_of_k_runs_start_from_each_candidate_and_keep_the_best(folder):
  found = _outputs(folder, "retrieve")
  scores = []
  for rank in (1, 2, 3):
    prompt = _outputs(folder, f"candidate_{rank}")["prompt"]
    np.testing.assert_array_equal(np.load(prompt), np.load(found["candidates"][rank - 1]))
    assert f"PROMPT_FILE = '{prompt}'" in _config(folder, f"best_of_k_{rank}")
    scores.append(runs.best_eval(os.path.join(folder, f"best_of_k_{rank}"))[2])
  best = _outputs(folder, "best_of_k")
  assert best["score"] == max(scores)
  assert best["model_dir"] == os.path.join(folder, f"best_of_k_{scores.index(max(scores)) + 1}")


def test_average_target_starts_from_the_similarity_weighted_average(folder):
  found = _outputs(folder, "retrieve")
  lib = library_lib.Library.open(_outputs(folder, "library")["library"])
  target = runs.target_prompt(os.path.join(folder, "target_short"), 10)
  sims = np.array([similarity.average_tokens(target, lib.key_prompt(n))
                   for n in found["candidate_names"]])
  alpha = np.where(sims > 0, sims, 0.0) / np.where(sims > 0, sims, 0.0).sum()
  expected = sum(a * lib.value_prompt(n) for a, n in zip(alpha, found["candidate_names"]))
  np.testing.assert_allclose(np.load(found["weighted_average"]), expected, rtol=1e-5, atol=1e-6)
  assert f"PROMPT_FILE = '{found['weighted_average']}'" in _config(folder, "average_target")
  report = _outputs(folder, "average_report")
  assert report["score"] == runs.best_eval(os.path.join(folder, "average_target"))[2]


def test_mixture_variant_trains_on_the_retrieved_tasks(folder):
  found = _outputs(folder, "retrieve")
  name = mixtures.mixture_name(found["mixture_tasks"])
  evals = runs.eval_metrics(os.path.join(folder, "topk_source"))
  assert evals and all(any(k.startswith(t + "/") for k in evals[max(evals)])
                       for t in found["mixture_tasks"]), (name, evals)
  source_prompt = _outputs(folder, "topk_source")["prompt"]
  assert f"PROMPT_FILE = '{source_prompt}'" in _config(folder, "mixture_target")


def test_generic_target_starts_from_the_mixture_prompt_and_reports_its_best(folder):
  prompt = _outputs(folder, "mixture_source")["prompt"]
  assert prompt.endswith("checkpoint_20/input_hook.prompt.npy")
  assert f"PROMPT_FILE = '{prompt}'" in _config(folder, "generic_target")
  evals = runs.eval_metrics(os.path.join(folder, "generic_target"))
  assert sorted(evals) == [10, 20]
  report = _outputs(folder, "generic_report")
  assert report["score"] == max(v["spot_demo_last_b/accuracy"] for v in evals.values())
  assert 0.0 <= report["score"] <= 100.0
