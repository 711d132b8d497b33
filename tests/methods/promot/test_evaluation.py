"""The with/without-prompt evaluation: commands, the merged metrics file, one-sentence errors."""
import json
import os
import types

import pytest

from prompt_tuning.methods.promot import evaluation
from prompt_tuning.methods.promot import steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
TARGET = {"task": "smoke_last_digit", "module": "prompt_tuning.smoke_data.tasks"}
OTHER = {"task": "smoke_skills", "module": "prompt_tuning.smoke_data.tasks", "split": "train",
         "lengths": {"inputs": 16, "targets": 4}}


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


@pytest.fixture
def run_dir(tmp_path):
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  return str(tmp_path / "run")


def _flags(command):
  return [a for a in command if a.startswith("--")]


def test_commands_with_and_without_the_prompt(run_dir):
  entry = evaluation.EvalEntry.parse(OTHER, "x")
  kwargs = dict(entry=entry, run_dir=run_dir, step=30, output_dir="/o",
                bindings={"PROMPT_LENGTH": 8, "DECODER_PARAMS": "None"})
  with_prompt = _flags(evaluation.eval_command(
      gin_files=["gin/models/byte_t5_tiny.gin", "gin/prompts/prompt.gin"], prompt=True,
      **kwargs))
  without = _flags(evaluation.eval_command(
      gin_files=["gin/models/byte_t5_tiny.gin"], prompt=False, **kwargs))
  assert with_prompt[:3] == ["--gin_file=gin/models/byte_t5_tiny.gin",
                             "--gin_file=gin/prompts/prompt.gin", "--gin_file=gin/runs/eval.gin"]
  assert without[:2] == ["--gin_file=gin/models/byte_t5_tiny.gin",
                         "--gin_file=gin/runs/eval.gin"]
  assert f"--gin.CHECKPOINT_DIR='{run_dir}'" in with_prompt
  assert "--gin.CHECKPOINT_STEP=30" in with_prompt
  for flags in (with_prompt, without):
    assert "--gin.MIXTURE_OR_TASK_NAME='smoke_skills'" in flags
    assert "--gin.EVAL_SPLIT='train'" in flags
    assert "--gin.TASK_FEATURE_LENGTHS={'inputs': 16, 'targets': 4}" in flags
    assert "--gin.DECODER_PARAMS=None" in flags and "--gin.PROMPT_LENGTH=8" in flags
  # Without the prompt every parameter of the hook-less model is read from the step's folder.
  assert "--gin.CHECKPOINT_DIR=None" in without
  assert "--gin.evaluate.param_groups=[@weights/params.ParamGroup()]" in without
  assert "--gin.weights/params.ParamGroup.source=@weights/params.FromCheckpoint()" in without
  assert f"--gin.weights/params.FromCheckpoint.path='{run_dir}/checkpoints/30'" in without
  assert not any("param_groups" in f for f in with_prompt)


def test_the_pretrained_model_is_evaluated_from_its_checkpoint():
  flags = _flags(evaluation.eval_command(
      entry=evaluation.EvalEntry("t", "m"), run_dir=None, step=None, output_dir="/o",
      gin_files=["g.gin"], bindings={}, prompt=False, base_checkpoint="/ckpt/base"))
  assert "--gin.CHECKPOINT_DIR=None" in flags
  assert "--gin.INITIAL_CHECKPOINT_PATH='/ckpt/base'" in flags
  assert not any("param_groups" in f for f in flags)


def _fake_runner(calls, accuracy):
  def run(command, env, check):
    del check
    assert ROOT in env["PYTHONPATH"].split(os.pathsep)
    calls.append(command)
    flags = dict(a[len("--gin."):].split("=", 1) for a in command if a.startswith("--gin."))
    out = flags["EVAL_OUTPUT_DIR"].strip("'")
    task = flags["MIXTURE_OR_TASK_NAME"].strip("'")
    os.makedirs(os.path.join(out, "metrics"))
    with open(os.path.join(out, "metrics", "infer_eval.jsonl"), "w") as f:
      f.write(json.dumps({f"{task}/accuracy": accuracy[task], "step": 30}) + "\n")
    return types.SimpleNamespace(returncode=0)
  return run


def test_one_step_writes_both_evaluations(run_dir, tmp_path):
  calls = []
  out = tmp_path / "evaluate"
  out.mkdir()
  results = evaluation.evaluate_both(
      output_dir=str(out), run_dir=run_dir, step=30,
      model_gin_files=["gin/models/byte_t5_tiny.gin"], prompt_gin_files=["gin/prompts/prompt.gin"],
      with_prompt=[TARGET], without_prompt=[[TARGET], [OTHER]], bindings={},
      runner=_fake_runner(calls, {"smoke_last_digit": 97.5, "smoke_skills": 41.0}))
  assert results == {"with_prompt": {"smoke_last_digit/accuracy": 97.5},
                     "without_prompt": {"smoke_last_digit/accuracy": 97.5,
                                        "smoke_skills/accuracy": 41.0}}
  assert len(calls) == 3
  assert "--gin_file=gin/prompts/prompt.gin" in calls[0]
  assert all("--gin_file=gin/prompts/prompt.gin" not in c for c in calls[1:])
  with open(out / "metrics.json") as f:
    assert json.load(f) == results
  assert (out / "with_prompt" / "smoke_last_digit" / "metrics").is_dir()
  assert (out / "without_prompt" / "smoke_skills" / "metrics").is_dir()


@pytest.mark.parametrize("entry, message", [
    ({"task": "x"}, r"must be a dict with 'task' and 'module'"),
    ("smoke_skills", r"must be a dict with 'task' and 'module'"),
    ({"task": "x", "module": "m", "lenghts": {}}, r"unknown keys \['lenghts'\]"),
])
def test_bad_entries_stop_before_any_evaluation(run_dir, tmp_path, entry, message):
  calls = []
  with pytest.raises(ValueError, match=message):
    evaluation.evaluate_both(output_dir=str(tmp_path), run_dir=run_dir, step=None,
                             model_gin_files=[], prompt_gin_files=[], with_prompt=[],
                             without_prompt=[entry], runner=_fake_runner(calls, {}))
  assert not calls


def test_a_missing_run_or_gin_file_stops_before_any_evaluation(run_dir, tmp_path):
  calls = []
  runner = _fake_runner(calls, {})
  with pytest.raises(ValueError, match=r"is not a training run \(no checkpoints/\)"):
    evaluation.evaluate_both(output_dir=str(tmp_path), run_dir=str(tmp_path / "nope"), step=None,
                             model_gin_files=[], prompt_gin_files=[], with_prompt=[TARGET],
                             without_prompt=[], runner=runner)
  with pytest.raises(ValueError, match=r"gin file\(s\) \['gin/models/nope.gin'\] do not exist"):
    evaluation.evaluate_both(output_dir=str(tmp_path), run_dir=run_dir, step=None,
                             model_gin_files=["gin/models/nope.gin"], prompt_gin_files=[],
                             with_prompt=[TARGET], without_prompt=[], runner=runner)
  assert not calls


def test_a_failed_evaluation_is_one_sentence(run_dir, tmp_path):
  fail = lambda command, env, check: types.SimpleNamespace(returncode=3)
  with pytest.raises(ValueError, match=r"Evaluating 'smoke_last_digit' with prompt failed with "
                                       r"exit status 3"):
    evaluation.evaluate_both(output_dir=str(tmp_path), run_dir=run_dir, step=None,
                             model_gin_files=[], prompt_gin_files=[], with_prompt=[TARGET],
                             without_prompt=[], runner=fail)


def test_stack_prompts_builds_the_table_in_order(tmp_path):
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = np.arange(12.).reshape(3, 4), -np.arange(12.).reshape(3, 4)
  np.save(tmp_path / "a.npy", a)
  np.save(tmp_path / "b.npy", b)
  out = steps.stack_prompts(stage_dir=str(tmp_path),
                            prompts=[str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
  table = np.load(out["table"])
  assert table.shape == (2, 3, 4)
  np.testing.assert_array_equal(table[0], a)
  np.testing.assert_array_equal(table[1], b)
  np.save(tmp_path / "c.npy", np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"has shape \(5, 4\), unlike"):
    steps.stack_prompts(stage_dir=str(tmp_path),
                        prompts=[str(tmp_path / "a.npy"), str(tmp_path / "c.npy")])
  with pytest.raises(ValueError, match=r"does not exist"):
    steps.stack_prompts(stage_dir=str(tmp_path), prompts=[str(tmp_path / "zz.npy")])


def test_the_pretrained_step_takes_the_base_as_gin_text_or_path(monkeypatch, tmp_path):
  seen = []
  monkeypatch.setattr(evaluation, "evaluate_both", lambda **kw: seen.append(kw))
  for given in ("'/ckpt/base'", "/ckpt/base"):
    out = steps.promot_eval(stage_dir=str(tmp_path), model_gin_files=["m.gin"], with_prompt=[],
                            without_prompt=[TARGET], base_checkpoint=given)
    assert out["metrics"] == str(tmp_path / "metrics.json")
  assert [kw["base_checkpoint"] for kw in seen] == ["/ckpt/base", "/ckpt/base"]
  assert all(kw["run_dir"] is None for kw in seen)
