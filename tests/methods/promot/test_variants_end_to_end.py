"""Every ProMoT variant pipeline runs end to end on the tiny CPU model.

The base stage runs once; each variant then runs every stage but its own `base`, reading that
shared base through `BASE_CHECKPOINT`, with short schedules.
"""
import json
import os

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
FAST = ["--gin.BASE_STEPS=150", "--gin.STAGE1_STEPS=20", "--gin.STAGE1_CHECKPOINT_PERIOD=10",
        "--gin.STAGE2_STEPS=10", "--gin.STAGE2_CHECKPOINT_PERIOD=5"]
TARGET = "smoke_last_digit/accuracy"
OTHER = "smoke_skills/accuracy"


def _outputs(folder, stage):
  with open(os.path.join(folder, stage, "completed.json")) as f:
    return json.load(f)["outputs"]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("promot_base"))
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    pipeline_lib.main(["--gin_file=gin/methods/promot/promot_finetune_tiny.gin",
                       f"--pipeline_dir={folder}", "--stages=base"] + FAST)
  finally:
    os.chdir(cwd)
  return _outputs(folder, "base")["checkpoint"]


def _run(name, base_checkpoint, tmp_path, stages, stage="evaluate"):
  folder = str(tmp_path / name)
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    done = pipeline_lib.main([f"--gin_file=gin/methods/promot/{name}.gin",
                              f"--pipeline_dir={folder}", f"--stages={','.join(stages)}",
                              f"--gin.BASE_CHECKPOINT={base_checkpoint!r}"] + FAST)
  finally:
    os.chdir(cwd)
  with open(_outputs(folder, stage)["metrics"]) as f:
    return folder, done, json.load(f)


@pytest.mark.slow
@pytest.mark.e2e
def test_pretrained_row(base_dir, tmp_path):
  _, done, metrics = _run("promot_pretrained_tiny", base_dir, tmp_path, ["pretrained"],
                          stage="pretrained")
  assert list(done) == ["pretrained"]
  assert metrics["with_prompt"] == {}
  assert set(metrics["without_prompt"]) == {TARGET, OTHER}
  assert metrics["without_prompt"][OTHER] > 50.0  # the base was trained on smoke_skills


@pytest.mark.slow
@pytest.mark.e2e
def test_finetune_baseline(base_dir, tmp_path):
  _, done, metrics = _run("promot_finetune_tiny", base_dir, tmp_path,
                             ["finetune", "evaluate"])
  assert list(done) == ["finetune", "evaluate"]
  assert metrics["with_prompt"] == {}
  assert set(metrics["without_prompt"]) == {TARGET, OTHER}


@pytest.mark.slow
@pytest.mark.e2e
def test_joint_ablation_trains_prompt_and_model(base_dir, tmp_path):
  folder, _, metrics = _run("promot_joint_tiny", base_dir, tmp_path, ["joint", "evaluate"])
  assert set(metrics["with_prompt"]) == {TARGET} and set(metrics["without_prompt"]) == {OTHER}
  joint = _outputs(folder, "joint")
  with open(os.path.join(joint["checkpoint"], "run", "metadata")) as f:
    groups = {g["name"]: g for g in json.load(f)["run_metadata"]["param_groups"]}
  assert groups["prompt"]["trainable"] and groups["model"]["trainable"]
  first = np.load(os.path.join(joint["model_dir"], "numpy_checkpoints", "checkpoint_5",
                               "input_hook.prompt.npy"))
  assert not np.array_equal(first, np.load(joint["prompt"]))  # the prompt moved


@pytest.mark.slow
@pytest.mark.e2e
def test_random_prompt_ablation_keeps_its_fixed_prompt(base_dir, tmp_path):
  folder, done, metrics = _run("promot_random_prompt_tiny", base_dir, tmp_path,
                                ["stage2", "evaluate"])
  assert list(done) == ["stage2", "evaluate"]
  assert set(metrics["with_prompt"]) == {TARGET}
  stage2 = _outputs(folder, "stage2")
  first = np.load(os.path.join(stage2["model_dir"], "numpy_checkpoints", "checkpoint_5",
                               "input_hook.prompt.npy"))
  np.testing.assert_array_equal(first, np.load(stage2["prompt"]))  # frozen throughout


@pytest.mark.slow
@pytest.mark.e2e
def test_one_shot_variant(base_dir, tmp_path):
  _, done, metrics = _run("promot_1shot_tiny", base_dir, tmp_path,
                             ["stage1", "stage2", "evaluate"])
  assert list(done) == ["stage1", "stage2", "evaluate"]
  assert set(metrics["with_prompt"]) == {"smoke_last_digit_1shot/accuracy"}


@pytest.mark.slow
@pytest.mark.e2e
def test_multitask_routes_each_task_to_its_stage1_prompt(base_dir, tmp_path):
  folder, done, metrics = _run("promot_multitask_tiny", base_dir, tmp_path,
                             ["stage1_a", "stage1_b", "stack", "stage2", "evaluate"])
  assert list(done) == ["stage1_a", "stage1_b", "stack", "stage2", "evaluate"]
  assert set(metrics["with_prompt"]) == {"smoke_last_digit_prompt0/accuracy",
                                         "smoke_skills_prompt1/accuracy"}
  table = np.load(_outputs(folder, "stack")["table"])
  np.testing.assert_array_equal(table[0], np.load(_outputs(folder, "stage1_a")["prompt"]))
  np.testing.assert_array_equal(table[1], np.load(_outputs(folder, "stage1_b")["prompt"]))
  stage2 = _outputs(folder, "stage2")
  for k in (0, 1):  # a table is exported one row per file; frozen, bit for bit
    exported = np.load(os.path.join(stage2["prompts"], f"input_hook.prompt_table.{k}.npy"))
    np.testing.assert_array_equal(exported, table[k])
