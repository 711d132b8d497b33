"""SPoT stages with the pipeline Python-step shape: add a source, retrieve, pick the best run.

`hand_library` (conftest): key prompts with cosine 1, 1/sqrt(2), 0, -1 to the target for
entries a, b, c, d; value prompts are constant tables 1, 2, 3, 4.
"""
import json
import math

import numpy as np
import pytest

from prompt_tuning.engine import export
from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import steps


def test_add_source_outputs_the_entry_and_its_value_prompt(tmp_path, run_writer):
  run = run_writer(str(tmp_path / "run"), {10: np.full((2, 4), 1.0), 20: np.full((2, 4), 2.0)},
                   {10: {"mnli/accuracy": 60.0}, 20: {"mnli/accuracy": 65.0}}, seed=0)
  out = steps.add_source(stage_dir=str(tmp_path / "stage"), library=str(tmp_path / "lib"),
                         model_dir=run, task="mnli", model="tiny", key_step=10)
  assert out == {"entry": "mnli.seed0",
                 "value_prompt": str(tmp_path / "lib" / "prompts" / "mnli.seed0" / "value_20.npy")}
  np.testing.assert_array_equal(export.load_prompt_npy(path=out["value_prompt"]),
                                np.full((2, 4), 2.0))
  assert set(out) == set(steps.ADD_SOURCE_OUTPUTS)


def test_retrieve_outputs_candidates_average_and_mixture(hand_library, target, tmp_path):
  np.save(tmp_path / "target.npy", target)
  out = steps.retrieve(stage_dir=str(tmp_path / "stage"), library=hand_library.root,
                       target=str(tmp_path / "target.npy"), top_k=2)
  assert set(out) == set(steps.RETRIEVE_OUTPUTS)
  assert out["candidate_names"] == ["a.seed0", "b.seed0"]
  assert out["top_prompt"] == out["candidates"][0] == hand_library.path(
      "prompts/a.seed0/value_50.npy")
  assert out["mixture_tasks"] == ["task_a", "task_b"]
  np.testing.assert_allclose(export.load_prompt_npy(path=out["weighted_average"]),
                             np.full((2, 3), math.sqrt(2)), rtol=1e-6)
  assert (tmp_path / "stage" / "retrieval.json").exists()


def test_retrieve_without_a_positive_similarity_has_no_average(hand_library, tmp_path):
  np.save(tmp_path / "target.npy", np.tile([0.0, 0.0, 1.0], (2, 1)))  # cosine 0 to every key
  out = steps.retrieve(stage_dir=str(tmp_path / "stage"), library=hand_library.root,
                       target=str(tmp_path / "target.npy"), top_k=2)
  assert out["weighted_average"] is None
  assert out["candidate_names"] == ["a.seed0", "b.seed0"]  # all tied at 0: by name
  summary = json.loads((tmp_path / "stage" / "retrieval.json").read_text())
  assert summary["weighted_average_error"].startswith("No retrieved source has a positive")
  assert not (tmp_path / "stage" / "weighted_average.npy").exists()


def test_pick_best_takes_the_run_with_the_best_validation_score(tmp_path, run_writer):
  prompt = {10: np.ones((1, 2))}
  runs = [run_writer(str(tmp_path / name), prompt, evals) for name, evals in (
      ("from_a", {500: {"rte/accuracy": 70.0}, 1000: {"rte/accuracy": 74.0}}),
      ("from_b", {500: {"rte/accuracy": 78.0}, 1000: {"rte/accuracy": 76.0}}),
      ("from_c", {500: {"rte/accuracy": 78.0}}))]
  out = steps.pick_best(stage_dir=str(tmp_path / "stage"), model_dirs=runs)
  assert out == {"model_dir": runs[1], "step": 500, "score": 78.0}  # b ties c; first wins
  record = json.loads((tmp_path / "stage" / "pick_best.json").read_text())
  assert [r["score"] for r in record["runs"]] == [74.0, 78.0, 78.0]
  low = steps.pick_best(stage_dir=str(tmp_path / "stage2"), model_dirs=runs, mode="min")
  assert (low["model_dir"], low["score"]) == (runs[0], 70.0)
  with pytest.raises(ValueError, match=r"^Run .*nowhere has no evaluations in .*infer_eval"):
    steps.pick_best(stage_dir=str(tmp_path / "s3"), model_dirs=[str(tmp_path / "nowhere")])


def test_add_source_refuses_a_run_of_another_model(tmp_path, run_writer, library_maker):
  library_maker(tmp_path / "lib", {"x": ("x", np.ones((2, 3)), np.ones((2, 3)))})
  run = run_writer(str(tmp_path / "run"), {10: np.ones((2, 5))}, {10: {"m": 1.0}}, seed=0)
  with pytest.raises(library_lib.LibraryError, match=r"embedding size is not the library "
                                                     r"model's 3\.$"):
    steps.add_source(stage_dir=str(tmp_path / "s"), library=str(tmp_path / "lib"),
                     model_dir=run, task="y", model="tiny", key_step=10)


def test_add_sources_builds_one_library_from_several_runs(tmp_path, run_writer):
  run_a = run_writer(str(tmp_path / "a"), {10: np.full((2, 4), 1.0), 20: np.full((2, 4), 2.0)},
                     {10: {"a/accuracy": 60.0}, 20: {"a/accuracy": 50.0}}, seed=3)
  run_b = run_writer(str(tmp_path / "b"), {10: np.full((2, 4), 5.0)}, {10: {"b/accuracy": 1.0}},
                     seed=0)
  out = steps.add_sources(stage_dir=str(tmp_path / "stage"), model="tiny", key_step=10,
                          sources=[{"model_dir": run_a, "task": "a"},
                                   {"model_dir": run_b, "task": "b"}])
  assert out == {"library": str(tmp_path / "stage" / "library"),
                 "entries": ["a.seed3", "b.seed0"]}
  lib = library_lib.Library.open(out["library"])
  np.testing.assert_array_equal(lib.value_prompt("a.seed3"), np.full((2, 4), 1.0))  # best: 60
  np.testing.assert_array_equal(lib.key_prompt("b.seed0"), np.full((2, 4), 5.0))


def test_add_sources_checks_every_run_before_adding_any(tmp_path, run_writer):
  run_a = run_writer(str(tmp_path / "a"), {10: np.ones((2, 4))}, {10: {"a/x": 1.0}}, seed=0)
  with pytest.raises(FileNotFoundError, match=r"^Run folder .*missing does not exist\.$"):
    steps.add_sources(stage_dir=str(tmp_path / "stage"), model="tiny", key_step=10,
                      sources=[{"model_dir": run_a, "task": "a"},
                               {"model_dir": str(tmp_path / "missing"), "task": "b"}])
  assert not (tmp_path / "stage" / "library").exists()
  with pytest.raises(ValueError, match=r"^Run 1 of add_sources lacks 'task'\.$"):
    steps.add_sources(stage_dir=str(tmp_path / "s"), model="tiny", sources=[{"model_dir": run_a}])


def test_candidate_copies_the_prompt_of_one_rank(hand_library, target, tmp_path):
  np.save(tmp_path / "target.npy", target)
  found = steps.retrieve(stage_dir=str(tmp_path / "r"), library=hand_library.root,
                         target=str(tmp_path / "target.npy"), top_k=3)
  out = steps.candidate(stage_dir=str(tmp_path / "c2"), candidates=found["candidates"],
                        names=found["candidate_names"], rank=2)
  assert out == {"prompt": str(tmp_path / "c2" / "prompt.npy"), "name": "b.seed0"}
  np.testing.assert_array_equal(np.load(out["prompt"]), np.full((2, 3), 2.0))
  with pytest.raises(ValueError, match=r"^Candidate rank 4 is out of range: retrieval returned "
                                       r"3 candidates; retrieve with top_k >= 4\.$"):
    steps.candidate(stage_dir=str(tmp_path / "c4"), candidates=found["candidates"], rank=4)


def test_the_steps_are_registered_for_pipelines():
  from prompt_tuning.methods.spot import pipeline_steps  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pipelines import stages  # pylint: disable=g-import-not-at-top
  assert set(pipeline_steps.STEPS) <= set(stages.registered_step_names())
  assert stages.registered_step("spot_retrieve").outputs == steps.RETRIEVE_OUTPUTS
  assert stages.registered_step("spot_pick_best").fn is steps.pick_best
  assert stages.registered_step("spot_add_source").required == (
      "library", "model_dir", "task", "model")
  assert stages.registered_step("spot_candidate").required == ("candidates", "rank")
