"""Every ProMoT pipeline dry-runs for mT5-XXL on the v4-32 preset, and its train stages' gin
resolves to the paper's settings (each stage's files and bindings parsed as its run would)."""
import glob
import os
import re

import gin
import pytest

from prompt_tuning import pipeline as pipeline_lib
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
METHOD_DIR = os.path.join(ROOT, "gin", "methods", "promot")
SHARED = {"promot.gin", "promot_finetune.gin", "promot_joint.gin", "promot_random_prompt.gin",
          "promot_pretrained.gin",
          "promot_1shot.gin", "promot_multitask.gin", "tiny.gin", "eval_suite_mt5.gin",
          "eval_suite_t5.gin"}
PIPELINES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(METHOD_DIR, "*.gin"))
                   if os.path.basename(p) not in SHARED)
XXL = ["--gin.MODEL_GIN='gin/models/mt5_xxl.gin'",
       "--gin.MESH_GIN='gin/methods/promot/mesh/mt5_xxl_v4_32.gin'",
       "--gin.BASE_CHECKPOINT='/ckpts/mt5_xxl/checkpoint_1000000'"]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def _argv(name, tmp_path, extra=()):
  return [f"--gin_file=gin/methods/promot/{name}", f"--pipeline_dir={tmp_path}"] + XXL + \
      list(extra)


def _runner(name, tmp_path, extra=()):
  """The pipeline's plan and runner, as `python -m prompt_tuning.pipeline` builds them."""
  spec, runner, _ = dry_run.plan(_argv(name, tmp_path, extra))
  return spec, runner


_parse_stage = dry_run.parse_train_stage
_value = dry_run.gin_value


def test_there_are_pipelines_of_every_kind():
  assert {"promot_rte_mt5_xxl.gin", "promot_wmt14_enfr_mt5_xxl.gin",
          "promot_rte_t5_1_1_base.gin", "promot_wmt14_enfr_t5_1_1_base.gin", "promot_tiny.gin",
          "promot_multitask_tiny.gin", "promot_multitask_mt5_xxl.gin",
          "promot_1shot_tiny.gin", "promot_joint_tiny.gin", "promot_random_prompt_tiny.gin",
          "promot_finetune_tiny.gin", "promot_pretrained_tiny.gin",
          "promot_pretrained_rte_mt5_xxl.gin", "promot_analysis_tiny.gin"} <= set(PIPELINES)


def test_only_shared_pieces_are_left_out_of_the_dry_runs():
  """Every file kept out of `PIPELINES` is included (directly or through another piece) by a
  pipeline, so no runnable pipeline escapes the dry-run test below."""
  include = re.compile(r"^include 'gin/methods/promot/([\w.]+)'", re.M)

  def includes(name):
    with open(os.path.join(METHOD_DIR, name)) as f:
      return set(include.findall(f.read()))

  reached, todo = set(), [p for p in PIPELINES]
  while todo:
    for child in includes(todo.pop()) - reached:
      reached.add(child)
      todo.append(child)
  assert SHARED <= reached, sorted(SHARED - reached)
  assert len(PIPELINES) == len(glob.glob(os.path.join(METHOD_DIR, "*.gin"))) - len(SHARED)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_dry_runs_for_mt5_xxl_on_v4_32(name, tmp_path):
  lines = []
  assert pipeline_lib.main(_argv(name, tmp_path) + ["--dry_run"], say=lines.append) == {}
  text = "\n".join(lines)
  spec, runner = _runner(name, tmp_path)
  assert spec.stages
  for stage in spec.stages:
    assert f"stage '{stage.name}' ({stage.kind}): to run" in text
    resolved = runner.resolve(stage, dry_run=True)
    if stage.kind != "train":
      continue
    assert "--gin_file=gin/models/mt5_xxl.gin" in resolved.args
    _parse_stage(resolved.args)
    from prompt_tuning.engine import partitioning  # pylint: disable=g-import-not-at-top
    del partitioning
    mesh = gin.get_configurable("partitioning.MeshConfig")()
    assert (mesh.model, mesh.expected_device_count) == (8, 16)
    assert gin.query_parameter("network.get_config.name") == "mt5_xxl"
  assert not os.listdir(tmp_path)  # a dry run writes nothing


def test_promot_stages_carry_the_papers_settings(tmp_path):
  _, runner = _runner("promot_rte_mt5_xxl.gin", tmp_path)
  stages = {s.name: s for s in runner.plan.stages}
  _parse_stage(runner.resolve(stages["stage1"], dry_run=True).args)
  assert _value("train.total_steps") == 5000
  assert _value("prompts.Prompt.length") == 100
  assert _value("optimizers.adafactor.learning_rate") == 0.2
  assert _value("trainer.CheckpointConfig.period") == 1000
  assert _value("trainer.CheckpointConfig.best_metric") == "mt5_super_glue_rte_v102/accuracy"
  assert _value("trainer.CheckpointConfig.keep_best") == 1
  assert _value("train/data.DatasetConfig.batch_size") == 64
  assert _value("train.decoder_params") == {"method": "beam", "num_decodes": 4, "alpha": 0.6}
  assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is False

  _parse_stage(runner.resolve(stages["stage2"], dry_run=True).args)
  assert _value("train.total_steps") == 1000
  assert _value("optimizers.adafactor.learning_rate") == 1e-3
  assert _value("network.get_config.dropout_rate") == 0.1
  assert _value("models.EncoderDecoderModel.label_smoothing") == 0.1
  assert _value("trainer.CheckpointConfig.period") == 100
  assert _value("train.trainable_patterns") is None
  prompt, model = [g.scoped_configurable_fn() for g in _value("train.param_groups")]
  assert (prompt.name, prompt.pattern, prompt.trainable) == ("prompt", "^input_hook/", False)
  assert prompt.source.path == os.path.join(str(tmp_path), "stage1", "checkpoints", "<step>")
  assert (model.name, model.pattern, model.trainable) == ("model", None, True)

  evaluate = runner.resolve(stages["evaluate"], dry_run=True).inputs
  assert [e["task"] for e in evaluate["with_prompt"]] == ["mt5_super_glue_rte_v102"]
  assert [e["task"] for e in evaluate["without_prompt"]] == ["mt5_fewshot_suite_1shot",
                                                             "mt5_fewshot_suite_4shot"]
  assert {e["lengths"]["inputs"] for e in evaluate["without_prompt"]} == {1024}


def test_every_setting_is_overridable_by_a_binding(tmp_path):
  _, runner = _runner("promot_rte_mt5_xxl.gin", tmp_path,
                      ["--gin.STAGE2_STEPS=321", "--gin.PROMPT_LENGTH=20",
                       "--gin.STAGE1_LEARNING_RATE=0.5", "--gin.LABEL_SMOOTHING=0.0"])
  stages = {s.name: s for s in runner.plan.stages}
  _parse_stage(runner.resolve(stages["stage2"], dry_run=True).args)
  assert _value("train.total_steps") == 321
  assert _value("prompts.Prompt.length") == 20
  assert _value("models.EncoderDecoderModel.label_smoothing") == 0.0
  _parse_stage(runner.resolve(stages["stage1"], dry_run=True).args)
  assert _value("optimizers.adafactor.learning_rate") == 0.5
