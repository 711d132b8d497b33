"""Every recursion pipeline dry-runs (TPU presets included), and its train stages' gin resolves
to the paper's settings (each stage's files and bindings parsed as its run would)."""
# pylint: disable=protected-access
import glob
import os

import gin
import pytest

from prompt_tuning import pipeline as pipeline_lib
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
METHOD_DIR = os.path.join(ROOT, "gin", "methods", "recursion")
# Run-file fragments and the stages presets share; every other file is a pipeline.
PARTS = {"candidates_task.gin", "connector_training.gin", "connector_from_checkpoint.gin",
         "connector_from_lm_layers.gin", "neural_lm.gin", "neural_lm_lr1e-4.gin",
         "neural_lm_lr1e-5.gin", "neural_lm_lr3e-4.gin", "neural_encdec.gin",
         "prompt_schedule.gin", "textual.gin", "neural_pretrained.gin"}
PIPELINES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(METHOD_DIR, "*.gin"))
                   if os.path.basename(p) not in PARTS)
BASE = "--gin.BASE_CHECKPOINT='/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000'"


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)
  yield
  gin.clear_config()


def _argv(name, tmp_path, extra=()):
  argv = [f"--gin_file=gin/methods/recursion/{name}", f"--pipeline_dir={tmp_path}"]
  return argv + ([] if "tiny" in name else [BASE]) + list(extra)


def _stages(name, tmp_path, extra=()):
  _, runner, _ = dry_run.plan(_argv(name, tmp_path, extra))
  return {s.name: runner.resolve(s, dry_run=True) for s in runner.plan.stages}


_parse_stage = dry_run.parse_train_stage
_value = dry_run.gin_value


def test_there_are_tpu_presets_and_tiny_variants():
  assert {"textual_t5_xxl.gin", "textual_t5_xxl_n1.gin", "textual_t5_xxl_n64.gin",
          "textual_t5_xxl_lr0.03.gin", "textual_t5_xxl_lr0.3.gin", "textual_t5_xxl_lr0.5.gin",
          "textual_tiny.gin", "neural_pretrained_t5_xxl.gin",
          "neural_pretrained_tiny.gin"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_dry_runs(name, tmp_path):
  lines = []
  assert pipeline_lib.main(_argv(name, tmp_path) + ["--dry_run"], say=lines.append) == {}
  text = "\n".join(lines)
  stages = _stages(name, tmp_path)
  for stage in stages:
    assert f"stage '{stage}' " in text and "): to run" in text
  assert not os.listdir(tmp_path)  # a dry run writes nothing


@pytest.mark.parametrize("name,candidates,lr", [
    ("textual_t5_xxl.gin", 16, 0.1), ("textual_t5_xxl_n1.gin", 1, 0.1),
    ("textual_t5_xxl_n64.gin", 64, 0.1), ("textual_t5_xxl_lr0.03.gin", 16, 0.03),
    ("textual_t5_xxl_lr0.3.gin", 16, 0.3), ("textual_t5_xxl_lr0.5.gin", 16, 0.5)])
def test_textual_presets_set_candidates_and_prompt_learning_rate(name, candidates, lr, tmp_path):
  stages = _stages(name, tmp_path)
  assert list(stages) == ["p1", "sample_train", "sample_validation", "candidates", "p2",
                          "evaluate"]
  assert stages["candidates"].inputs["num_candidates"] == candidates
  sampling = {"method": "sample", "num_decodes": candidates, "temperature": 1.0}
  for stage in ("sample_train", "sample_validation"):
    assert f"--gin.DECODER_PARAMS={sampling}" in stages[stage].args
  for stage in ("p1", "p2"):
    assert f"--gin.PROMPT_LR={lr}" in stages[stage].args
    assert "--gin.BATCH_SIZE=32" in stages[stage].args


@pytest.mark.slow
def test_textual_prompt_stages_resolve_to_batch_32_and_warmup_without_decay(tmp_path):
  stages = _stages("textual_t5_xxl_lr0.3.gin", tmp_path)
  for stage in ("p1", "p2"):
    _parse_stage(stages[stage].args)
    assert gin.query_parameter("network.get_config.name") == "t5_1_1_lm100k_xxl"
    assert _value("train/data.DatasetConfig.batch_size") == 32
    schedule = _value("optimizers.adafactor.learning_rate")
    steps = _value("train.total_steps")
    warmup = round(steps * 0.005)  # 0.5% warm-up, then constant (no decay)
    assert [float(schedule(s)) for s in (0, warmup, steps // 2, steps)] == pytest.approx(
        [0.0, 0.3, 0.3, 0.3])
    assert gin.query_parameter("partitioning.MeshConfig.model") == 8
  # p2 trains on the second-stage task over the candidates stage's folder.
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME").selector == "recursion.candidates_task"
  assert _value("%CANDIDATES_DIR") == os.path.join(str(tmp_path), "candidates")


@pytest.mark.slow
def test_the_neural_preset_pretrains_the_connector_on_c4_then_starts_from_it(tmp_path):
  stages = _stages("neural_pretrained_t5_xxl.gin", tmp_path)
  _parse_stage(stages["connector_lm"].args)
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME").selector == "recursion.c4_lm_task"
  groups = [g.scoped_configurable_fn() for g in _value("train.param_groups")]
  assert [(g.name, g.trainable) for g in groups] == [("connector", True), ("model", False)]
  assert _value("optimizers.adamw.b2") == 0.95 and _value("optimizers.adamw.eps") == 1e-6
  assert _value("optimizers.adamw.weight_decay") == 0.1
  assert _value("train/data.DatasetConfig.batch_size") == 32
  _parse_stage(stages["recursion"].args)
  connector = [g.scoped_configurable_fn() for g in _value("train.param_groups")][0]
  assert connector.trainable and connector.pattern == "^connector/"
  assert connector.source.path == os.path.join(str(tmp_path), "connector_lm", "checkpoints",
                                               "<step>")
  assert gin.query_parameter("recursion.Connector.causal") is False
  assert _value("train.total_steps") == 30000
  schedule = _value("optimizers.adamw.learning_rate")
  # 0.5% warm-up (150 steps of 30000), then linear decay to 0.
  assert [float(schedule(s)) for s in (0, 150, 30000)] == pytest.approx([0.0, 1e-4, 0.0],
                                                                        rel=1e-6, abs=1e-12)
