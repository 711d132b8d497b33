"""Every domain-shift pipeline file dry-runs (TPU presets and tiny variants), and its stages'
gin resolves, parsed as each run would parse it, to the intended settings: model and mesh,
prompt vs model tuning, seeds, checkpoint selection, evaluation mixture and step."""
import glob
import os

import gin
import pytest

from prompt_tuning import pipeline as pipeline_lib
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
METHOD_DIR = os.path.join(ROOT, "gin", "methods", "domain_shift")
SHARED = {"domain_shift.gin", "squad_mrqa.gin", "qqp_to_mrpc.gin", "mrpc_to_qqp.gin",
          "tiny.gin"}
PIPELINES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(METHOD_DIR, "*.gin"))
                   if os.path.basename(p) not in SHARED)
SIZES = ("small", "base", "large", "xl", "xxl")
EXPERIMENTS = ("squad_mrqa", "qqp_to_mrpc", "mrpc_to_qqp")
MESH = {"small": (1, 16), "base": (1, 16), "large": (1, 16), "xl": (4, None),
        "xxl": (8, None)}
SEEDS = (0, 1, 2)
TRAIN_STAGES = [f"{m}_seed{s}" for m in ("pt", "mt") for s in SEEDS]
EVAL_STAGES = [f"{name}_eval" for name in TRAIN_STAGES]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def _size(name):
  return next((s for s in SIZES if name.endswith(f"_t5_1_1_lm100k_{s}.gin")), None)


def _argv(name, tmp_path, extra=()):
  argv = [f"--gin_file=gin/methods/domain_shift/{name}", f"--pipeline_dir={tmp_path}"]
  size = _size(name)
  if size:
    argv.append(f"--gin.BASE_CHECKPOINT='/ckpts/t5_1_1_lm100k_{size}/checkpoint_1100000'")
  return argv + list(extra)


def _runner(name, tmp_path, extra=()):
  """The pipeline's plan and runner, as `python -m prompt_tuning.pipeline` builds them."""
  spec, runner, _ = dry_run.plan(_argv(name, tmp_path, extra))
  return spec, runner


def _parse_stage(args, kind):
  """Parses a stage's command line (files, then bindings) like its entry point does."""
  dry_run.parse_stage(args, "train" if kind == "train" else "evaluate")


_value = dry_run.gin_value


def _bound(name):
  try:
    return _value(name)
  except ValueError:  # not bound at all
    return None


_stages = dry_run.stages


def test_there_is_a_preset_per_experiment_and_size_and_a_tiny_variant_each():
  expected = {f"{e}_t5_1_1_lm100k_{s}.gin" for e in EXPERIMENTS for s in SIZES}
  expected |= {f"{e}_tiny.gin" for e in EXPERIMENTS}
  assert set(PIPELINES) == expected
  assert len(PIPELINES) == 18


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_dry_runs_and_its_stages_resolve(name, tmp_path):
  lines = []
  assert pipeline_lib.main(_argv(name, tmp_path) + ["--dry_run"], say=lines.append) == {}
  text = "\n".join(lines)
  spec, runner = _runner(name, tmp_path)
  names = [s.name for s in spec.stages]
  tiny = name.endswith("_tiny.gin")
  assert names == (["base"] if tiny else []) + TRAIN_STAGES + EVAL_STAGES + ["report"]
  for stage in spec.stages:
    assert f"stage '{stage.name}' ({stage.kind}): to run" in text
  stages = _stages(runner)
  size = _size(name)
  model = "t5_1_1_tiny" if tiny else f"t5_1_1_lm100k_{size}"
  for stage_name in TRAIN_STAGES:  # each seed's own seed file, last (it wins)
    args = runner.resolve(stages[stage_name], dry_run=True).args
    seed_files = [a for a in args if a.startswith("--gin_file=") and "/runs/seed" in a]
    assert seed_files == [f"--gin_file=gin/methods/domain_shift/runs/seed{stage_name[-1]}.gin"]
  # One stage of each kind parsed in full (parsing is the slow part).
  for stage_name in ("pt_seed2", "mt_seed1", "pt_seed0_eval", "mt_seed2_eval"):
    stage = stages[stage_name]
    args = runner.resolve(stage, dry_run=True).args
    if stage.kind == "eval":  # the picked step is known once the run finished
      assert "--gin.CHECKPOINT_STEP=<step>" in args
      args = [a.replace("=<step>", "=1000") for a in args]
    _parse_stage(args, stage.kind)
    assert gin.query_parameter("network.get_config.name") == model
    mesh = gin.get_configurable("partitioning.MeshConfig")()
    if not tiny:
      assert (mesh.model, mesh.expected_device_count) == MESH[size]
    if stage.kind == "train":
      seed = int(stage_name[-1])
      assert _value("train.random_seed") == seed
      assert _value("train/data.DatasetConfig.seed") == seed
      assert _value("trainer.CheckpointConfig.keep_best") == 1
      assert _value("trainer.CheckpointConfig.best_metric").startswith(
          _value("train/data.DatasetConfig.mixture_or_task_name") + "/")
      prompt_tuned = stage_name.startswith("pt_")
      assert (_bound("train.trainable_patterns") == [".*"]) != prompt_tuned
      assert (gin.query_parameter("%INPUT_HOOK") is not None) == prompt_tuned
    else:
      source = stage_name[:-len("_eval")]
      assert _value("evaluate.checkpoint_dir") == os.path.join(str(tmp_path), source)
      assert _value("evaluate.checkpoint_step") == 1000
  report_inputs = runner.resolve(stages["report"], dry_run=True).inputs
  assert report_inputs["runs"] == {
      m: [os.path.join(str(tmp_path), f"{m}_seed{s}_eval") for s in SEEDS] for m in ("pt", "mt")}
  assert not os.listdir(tmp_path)  # a dry run writes nothing


def _parse_eval(runner, stage):
  args = runner.resolve(_stages(runner)[stage], dry_run=True).args
  _parse_stage([a.replace("=<step>", "=1000") for a in args], "eval")


def _train_settings(runner, stage):
  _parse_stage(runner.resolve(_stages(runner)[stage], dry_run=True).args, "train")
  return {
      "task": _value("train/data.DatasetConfig.mixture_or_task_name"),
      "module": _value("train/data.DatasetConfig.module"),
      "lengths": _value("train/data.DatasetConfig.task_feature_lengths"),
      "steps": _value("train.total_steps"),
      "lr": _value("optimizers.adafactor.learning_rate"),
      "batch": _value("train/data.DatasetConfig.batch_size"),
      "best": _value("trainer.CheckpointConfig.best_metric"),
      "period": _value("trainer.CheckpointConfig.period"),
      "dropout": _value("network.get_config.dropout_rate"),
      "base": _value("trainer.RestoreConfig.path"),
  }


def test_squad_mrqa_xxl_carries_the_papers_settings(tmp_path):
  _, runner = _runner("squad_mrqa_t5_1_1_lm100k_xxl.gin", tmp_path)
  base = "/ckpts/t5_1_1_lm100k_xxl/checkpoint_1100000"
  pt = _train_settings(runner, "pt_seed1")
  assert pt == {"task": "mrqa_squad_v100", "module": "tasks.mrqa",
                "lengths": {"inputs": 512, "targets": 32}, "steps": 30000, "lr": 0.3,
                "batch": 32, "best": "mrqa_squad_v100/f1", "period": 1000, "dropout": 0.1,
                "base": base}
  assert _value("prompts.Prompt.length") == 100
  assert gin.query_parameter("%PROMPT_INIT").selector == "prompt_init.sampled_vocabulary"
  mt = _train_settings(runner, "mt_seed2")
  assert mt == dict(pt, lr=1e-3)
  _parse_eval(runner, "pt_seed1_eval")
  assert _value("eval/data.DatasetConfig.mixture_or_task_name") == "mrqa_squad_and_ood_v100"
  assert _value("eval/data.DatasetConfig.split") == "validation"
  assert _value("eval/data.DatasetConfig.module") == "tasks.mrqa"
  assert _value("evaluate.decoder_params") is None
  rows = runner.resolve(_stages(runner)["report"], dry_run=True).inputs["rows"]
  assert [key for _, key in rows[:7]] == [
      "mrqa_squad_v100/f1", "mrqa_textbook_qa_v100/f1", "mrqa_bio_asq_v100/f1",
      "mrqa_race_v100/f1", "mrqa_relation_extraction_v100/f1", "mrqa_duo_rc_v100/f1",
      "mrqa_drop_v100/f1"]
  assert [key.split("/")[1] for _, key in rows[7:]] == ["em"] * 7


@pytest.mark.parametrize("source,target,labels", [
    ("qqp", "mrpc", ["not_duplicate", "duplicate"]),
    ("mrpc", "qqp", ["not_equivalent", "equivalent"])])
def test_paraphrase_pipelines_train_on_one_and_evaluate_on_both(tmp_path, source, target,
                                                                labels):
  _, runner = _runner(f"{source}_to_{target}_t5_1_1_lm100k_base.gin", tmp_path)
  pt = _train_settings(runner, "pt_seed0")
  assert (pt["task"], pt["module"], pt["best"]) == (
      f"taskless_glue_{source}_v200", "tasks.glue", f"taskless_glue_{source}_v200/f1")
  assert gin.query_parameter("%PROMPT_INIT").selector == "prompt_init.class_labels"
  assert _value("prompt_init.class_labels.labels") == labels
  _parse_eval(runner, "mt_seed0_eval")
  assert _value("eval/data.DatasetConfig.mixture_or_task_name") == (
      f"domain_shift_{source}_to_{target}_eval_v200")
  rows = runner.resolve(_stages(runner)["report"], dry_run=True).inputs["rows"]
  assert [key for _, key in rows] == [
      f"taskless_glue_{source}_v200/f1", f"taskless_glue_{source}_v200/accuracy",
      f"taskless_glue_{target}_as_{source}_v200/f1",
      f"taskless_glue_{target}_as_{source}_v200/accuracy"]


def test_every_setting_is_overridable_by_a_binding(tmp_path):
  _, runner = _runner("squad_mrqa_t5_1_1_lm100k_base.gin", tmp_path,
                      ["--gin.PT_STEPS=321", "--gin.PROMPT_LENGTH=20",
                       "--gin.MT_LEARNING_RATE=0.005", "--gin.BATCH_SIZE=128"])
  pt = _train_settings(runner, "pt_seed0")
  assert (pt["steps"], pt["batch"]) == (321, 128)
  assert _value("prompts.Prompt.length") == 20
  assert _train_settings(runner, "mt_seed0")["lr"] == 0.005


def test_preset_without_base_checkpoint_is_refused(tmp_path):
  argv = ["--gin_file=gin/methods/domain_shift/squad_mrqa_t5_1_1_lm100k_base.gin",
          f"--pipeline_dir={tmp_path}", "--dry_run"]
  with pytest.raises(Exception, match="BASE_CHECKPOINT"):
    pipeline_lib.main(argv, say=lambda _: None)
