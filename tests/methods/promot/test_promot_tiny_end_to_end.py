"""The ProMoT pipeline end to end on the tiny CPU model (`gin/methods/promot/promot_tiny.gin`).

Checks the method's contract: stage 2 trains everything but the prompt; the prompt stage 2 used
is bit-identical to stage 1's best; the base checkpoint is untouched; and the evaluation with
the prompt removed decodes exactly what the plain (hook-less) model with the stage-2 weights
decodes, computed here independently from the raw checkpoint arrays.
"""
import hashlib
import json
import os

import gin
import jax
import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.engine import evaluation, gin_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
FAST = ["--gin.BASE_STEPS=150", "--gin.STAGE1_STEPS=30", "--gin.STAGE1_CHECKPOINT_PERIOD=10",
        "--gin.STAGE2_STEPS=10", "--gin.STAGE2_CHECKPOINT_PERIOD=5"]


def _tree_digest(folder):
  digest = hashlib.sha256()
  for dirpath, dirnames, filenames in sorted(os.walk(folder)):
    dirnames.sort()
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      digest.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


def _outputs(pipeline_dir, stage):
  with open(os.path.join(pipeline_dir, stage, "completed.json")) as f:
    return json.load(f)["outputs"]


def _restore_raw(step_dir):
  """A step's saved trainable parameters, read with orbax alone (no project loading code)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "params"))


def _flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flat(value, path + "/"))
    else:
      out[path] = np.asarray(value)
  return out


def _plain_model():
  gin.clear_config()
  gin_utils.register_configurables()
  gin_utils.parse_gin(gin_files=["gin/models/byte_t5_tiny.gin"], gin_bindings=[])
  return gin.query_parameter("%MODEL").scoped_configurable_fn()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    folder = str(tmp_path_factory.mktemp("promot_tiny"))
    argv = ["--gin_file=gin/methods/promot/promot_tiny.gin", f"--pipeline_dir={folder}"] + FAST
    pipeline_lib.main(argv + ["--stages=base"])
    base_dir = os.path.join(folder, "base", "checkpoints")
    before = _tree_digest(base_dir)
    pipeline_lib.main(argv)
    yield {"dir": folder, "base_before": before, "base_after": _tree_digest(base_dir)}
  finally:
    os.chdir(cwd)


@pytest.mark.slow
@pytest.mark.e2e
def test_stage2_trains_everything_but_the_prompt(finished):
  stage2 = _outputs(finished["dir"], "stage2")
  saved = _flat(_restore_raw(stage2["checkpoint"]))
  base = _flat(_restore_raw(_outputs(finished["dir"], "base")["checkpoint"]))
  assert not any(path.startswith("input_hook/") for path in saved)
  assert set(saved) == set(base)  # every model parameter, and nothing else, was trained
  changed = [p for p in saved if not np.array_equal(saved[p], base[p])]
  assert len(changed) == len(saved) == 52  # byte_t5_tiny's 52 leaves all moved
  with open(os.path.join(stage2["checkpoint"], "run", "metadata")) as f:
    groups = {g["name"]: g for g in json.load(f)["run_metadata"]["param_groups"]}
  assert (groups["prompt"]["trainable"], groups["prompt"]["pattern"]) == (False, "^input_hook/")
  assert groups["prompt"]["source"] == {
      "kind": "checkpoint", "path": _outputs(finished["dir"], "stage1")["checkpoint"],
      "format": "auto", "prefix_map": [], "dtype": None}
  assert (groups["model"]["trainable"], groups["model"]["pattern"]) == (True, None)


@pytest.mark.slow
@pytest.mark.e2e
def test_stage2_prompt_is_stage1_best_bit_for_bit(finished):
  stage1 = _outputs(finished["dir"], "stage1")
  stage2 = _outputs(finished["dir"], "stage2")
  with open(os.path.join(stage1["metrics"], "infer_eval.jsonl")) as f:
    history = [json.loads(line) for line in f if line.strip()]
  best = max(r["smoke_last_digit/accuracy"] for r in history)
  by_step = {r["step"]: r["smoke_last_digit/accuracy"] for r in history}
  assert by_step[stage1["step"]] == best
  stage1_prompt = np.load(stage1["prompt"])
  assert stage1_prompt.shape == (8, 64)
  np.testing.assert_array_equal(np.load(stage2["prompt"]), stage1_prompt)
  raw = _flat(_restore_raw(stage1["checkpoint"]))
  np.testing.assert_array_equal(raw["input_hook/prompt"], stage1_prompt)


@pytest.mark.slow
@pytest.mark.e2e
def test_base_checkpoint_is_untouched(finished):
  assert finished["base_before"] == finished["base_after"]


@pytest.mark.slow
@pytest.mark.e2e
def test_eval_without_prompt_equals_plain_model_with_stage2_weights(finished):
  from prompt_tuning.smoke_data import tasks as smoke_tasks  # pylint: disable=g-import-not-at-top
  evaluate = _outputs(finished["dir"], "evaluate")
  with open(evaluate["metrics"]) as f:
    metrics = json.load(f)
  assert set(metrics["with_prompt"]) == {"smoke_last_digit/accuracy"}
  assert set(metrics["without_prompt"]) == {"smoke_skills/accuracy"}
  folder = os.path.join(evaluate["without_prompt"], "smoke_skills",
                        evaluation.INFERENCE_LOG_SUBDIR)
  with open(os.path.join(folder, evaluation.inference_file_name("smoke_skills", "validation",
                                                                0))) as f:
    logged = [json.loads(line) for line in f if line.strip()]
  assert len(logged) == smoke_tasks.SPLIT_SIZES["validation"]

  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    model = _plain_model()
  finally:
    os.chdir(cwd)
  params = jax.tree.map(np.asarray, _restore_raw(_outputs(finished["dir"], "stage2")["checkpoint"]))
  lengths = {"inputs": 16, "targets": 4}
  inputs = [r["input"]["inputs"] for r in logged[:64]]
  encoder = np.zeros((len(inputs), lengths["inputs"]), np.int32)
  for i, tokens in enumerate(inputs):
    encoder[i, :len(tokens)] = tokens
  batch = {"encoder_input_tokens": encoder,
           "decoder_input_tokens": np.zeros((len(inputs), lengths["targets"]), np.int32)}
  decodes = np.asarray(model.predict_batch(params, batch, max_decode_length=4))
  ours = [smoke_tasks.VOCABULARY.decode([int(t) for t in row if t > 1]).strip()
          for row in decodes]
  assert ours == [r["prediction"] for r in logged[:64]]
  assert metrics["without_prompt"]["smoke_skills/accuracy"] == pytest.approx(
      100.0 * np.mean([r["prediction"] == r["target"] for r in logged]))
