"""LM-adaptation pipelines: every file dry-runs; the tiny one adapts, then prompt-tunes on it."""
import json
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.methods.lm_adaptation import corpus
from prompt_tuning.methods.lm_adaptation import steps

REPO = Path(__file__).resolve().parents[3]
GIN_DIR = REPO / "gin" / "methods" / "lm_adaptation"
PIPELINES = sorted(p.name for p in GIN_DIR.glob("lm_adaptation_*.gin")
                   if p.name != "lm_adaptation_stages.gin")
PRESETS = [p for p in PIPELINES if p.startswith("lm_adaptation_t5_1_1_")]
BASE = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"


def _dry_run(tmp_path, name, *flags):
  lines = []
  assert pipeline_lib.main([f"--gin_file=gin/methods/lm_adaptation/{name}",
                            f"--pipeline_dir={tmp_path / 'pipe'}", "--dry_run", *flags],
                           say=lines.append) == {}
  assert not (tmp_path / "pipe").exists()
  return "\n".join(lines)


def test_every_size_has_the_three_step_presets():
  assert len(PRESETS) == 15
  for size in ("small", "base", "large", "xl", "xxl"):
    for suffix in ("", "_10k", "_50k"):
      assert f"lm_adaptation_t5_1_1_{size}{suffix}.gin" in PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_tpu_preset_dry_runs(tmp_path, name):
  said = _dry_run(tmp_path, name, "--gin.BASE_CHECKPOINT='/ckpt/t5_1_1'")
  size = name[len("lm_adaptation_t5_1_1_"):-len(".gin")].split("_")[0]
  steps_expected = {"_10k": 10000, "_50k": 50000}.get(name[-8:-4], 100000)
  for stage in ("base", "adapt", "prompt"):
    assert f"stage '{stage}'" in said
  assert "input checkpoint = '/ckpt/t5_1_1'" in said
  assert said.count(f"--gin_file=gin/models/t5_1_1_{size}.gin") == 2
  assert "--gin_file=gin/methods/lm_adaptation/adapt_run.gin" in said
  assert "--gin.INITIAL_CHECKPOINT_PATH=\"'<checkpoint of step lm_adaptation_base>'\"" in said
  assert f"--gin.TRAIN_STEPS={steps_expected} \\\n" in said
  assert "--gin.MIXTURE_OR_TASK_NAME=\"'c4_en_v220_prefix_lm'\"" in said
  assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{tmp_path}/pipe/adapt/checkpoints/<step>'\"" in said
  assert "--gin.BATCH_SIZE=128" in said and "--gin_file=gin/partitioning/" in said


def test_tpu_preset_requires_its_base_checkpoint(tmp_path):
  with pytest.raises(Exception, match="BASE_CHECKPOINT"):
    _dry_run(tmp_path, "lm_adaptation_t5_1_1_base.gin")


def test_tiny_pipeline_dry_runs(tmp_path):
  said = _dry_run(tmp_path, "lm_adaptation_tiny.gin", "--gin.ADAPT_STEPS=7")
  for stage in ("base", "corpus", "adapt", "prompt"):
    assert f"stage '{stage}'" in said
  assert f"input checkpoint = '{BASE.relative_to(REPO)}'" in said
  assert "--gin_file=gin/methods/lm_adaptation/text_files.gin" in said
  assert "--gin.TRAIN_STEPS=7 \\\n" in said


def test_base_step_refuses_a_missing_checkpoint(tmp_path):
  with pytest.raises(pipeline_lib.PipelineError, match="base checkpoint to adapt.*does not exist"):
    steps.check_base(stage_dir=str(tmp_path), checkpoint=str(tmp_path / "none"))
  assert steps.check_base(stage_dir=str(tmp_path), checkpoint=str(BASE)) == {
      "checkpoint": str(BASE)}


def test_corpus_step_writes_one_document_per_line(tmp_path):
  out = steps.write_corpus(stage_dir=str(tmp_path), train_documents=5, validation_documents=3)
  train = Path(out["train"]).read_text().splitlines()
  validation = Path(out["validation"]).read_text().splitlines()
  assert len(train) == 5 and len(validation) == 3 and train != validation[:3]
  assert all(line.endswith(".") and line.count(".") >= 2 for line in train)
  again = corpus.write(str(tmp_path / "again"), {"train": 5})
  assert Path(again["train"]).read_text().splitlines() == train  # fixed seed per split


def _flat_params(checkpoint: str):
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  reader = checkpoint_import.open_checkpoint(checkpoint)
  return {name: np.asarray(reader.read(name)) for name in reader.entries()}


def _frozen_of_prompt_run(model_dir: str, prompt_length: int):
  """The frozen parameters the prompt run evaluates with, rebuilt from its run record."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import models, partitioning, run_setup, trees
  from prompt_tuning.models import config as config_lib
  from prompt_tuning.models import t5
  from prompt_tuning.prompts import hooks, initializers, providers
  # pylint: enable=g-import-not-at-top
  hook = hooks.PromptHook(provider=providers.Prompt(length=prompt_length,
                                                    initializer=initializers.random_uniform()))
  model = models.EncoderDecoderModel(
      t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"), input_hook=hook))
  loaded = run_setup.load_for_inference(
      model=model, lengths=model.model_feature_lengths({"inputs": 16, "targets": 16}),
      mesh_config=partitioning.MeshConfig(),
      restore=run_setup.RestoreConfig(path=None), checkpoint_dir=model_dir)
  return loaded.base_path, {k: np.asarray(v) for k, v in trees.flat(loaded.placed.frozen).items()}


@pytest.mark.slow
@pytest.mark.e2e
def test_tiny_pipeline_adapts_then_prompt_tunes_on_the_adapted_model(tmp_path):
  outputs = pipeline_lib.main(["--gin_file=gin/methods/lm_adaptation/lm_adaptation_tiny.gin",
                               f"--pipeline_dir={tmp_path}", "--gin.ADAPT_STEPS=40",
                               "--gin.PROMPT_STEPS=2", "--gin.PROMPT_LENGTH=2"])
  assert sorted(outputs) == ["adapt", "base", "corpus", "prompt"]
  assert outputs["adapt"]["step"] == 40 and outputs["prompt"]["step"] == 2

  # The adaptation lowers the held-out prefix-LM loss (step 0 = the T5X base).
  rows = [json.loads(line) for line in
          (tmp_path / "adapt" / "metrics" / "infer_eval.jsonl").read_text().splitlines()]
  loss = {r["step"]: r["lm_adaptation_text_files/prefix_lm_loss"] for r in rows}
  assert sorted(loss) == [0, 40]
  assert loss[0] > 10.0  # about ln(32128) = 10.4: the width-4 test checkpoint knows no English
  assert loss[40] < loss[0] - 1.0

  # Every weight changed in the adaptation is what the prompt run froze; none is the base's.
  adapted = _flat_params(outputs["adapt"]["checkpoint"])
  base = _flat_params(str(BASE))
  base_path, frozen = _frozen_of_prompt_run(str(tmp_path / "prompt"), prompt_length=2)
  assert Path(base_path).resolve() == Path(outputs["adapt"]["checkpoint"]).resolve()
  assert set(frozen) == set(adapted) == set(base)
  for name, value in frozen.items():
    np.testing.assert_array_equal(value, adapted[name], err_msg=name)
  changed = [n for n in base if not np.array_equal(base[n], adapted[n])]
  assert len(changed) == len(base)
  embedding = "token_embedder/embedding"
  assert np.abs(frozen[embedding] - base[embedding]).max() > 1e-3
