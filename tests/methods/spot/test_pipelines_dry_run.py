"""Every SPoT pipeline dry-runs (the tiny CPU variants and the T5 1.1 LM-adapted base presets),
and the presets' train stages resolve to the paper's settings, each stage's files and bindings
parsed as its run would parse them."""
import glob
import os

import gin
import pytest

from prompt_tuning import pipeline as pipeline_lib
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
METHOD_DIR = os.path.join(ROOT, "gin", "methods", "spot")
SHARED = {"common.gin", "generic.gin", "targeted.gin", "targeted_best_of_k.gin",
          "targeted_average.gin", "targeted_mixture.gin", "tiny.gin", "tiny_library.gin"}
PIPELINES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(METHOD_DIR, "*.gin"))
                   if os.path.basename(p) not in SHARED)
PRESETS = [p for p in PIPELINES if p.endswith("_t5_1_1_lm100k_base.gin")]
TINY = [p for p in PIPELINES if p.endswith("_tiny.gin")]
BASE = "/ckpts/t5_1_1_lm100k_base/checkpoint_1100000"
PRESET_FLAGS = [f"--gin.BASE_CHECKPOINT='{BASE}'", "--gin.LIBRARY='gs://bucket/library'"]


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def _argv(name, tmp_path, extra=()):
  flags = PRESET_FLAGS if name in PRESETS else []
  if name.startswith("generic") and name in PRESETS:
    flags = flags[:1]  # generic transfer reads no library
  return [f"--gin_file=gin/methods/spot/{name}", f"--pipeline_dir={tmp_path}"] + flags + \
      list(extra)


def _runner(name, tmp_path, extra=()):
  """The pipeline's plan and runner, as `python -m prompt_tuning.pipeline` builds them."""
  return dry_run.plan(_argv(name, tmp_path, extra))[1]


def _parse_stage(args):
  """Parses a train stage's command line (files then bindings) like the train entry point."""
  # A dry run cannot know what retrieval will return: stand in two tasks for it.
  args = [a if not a.startswith("--gin.MIXTURE_TASKS=") else
          "--gin.MIXTURE_TASKS=['glue_mnli_v200', 'glue_qnli_v200']" for a in args]
  dry_run.parse_train_stage(args)


_value = dry_run.gin_value


def test_there_is_every_pipeline_for_both_models():
  kinds = ["generic", "targeted_best_of_k", "targeted_average", "targeted_mixture"]
  assert PRESETS == sorted(f"{k}_t5_1_1_lm100k_base.gin" for k in kinds)
  assert TINY == sorted(f"{k}_tiny.gin" for k in kinds)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_dry_runs(name, tmp_path):
  lines = []
  assert pipeline_lib.main(_argv(name, tmp_path) + ["--dry_run"], say=lines.append) == {}
  text = "\n".join(lines)
  runner = _runner(name, tmp_path)
  for stage in runner.plan.stages:
    assert f"stage '{stage.name}' ({stage.kind}): to run" in text
    resolved = runner.resolve(stage, dry_run=True)
    if stage.kind != "train":
      continue
    _parse_stage(resolved.args)  # every train stage's gin parses
    model = "t5_1_1_lm100k_base" if name in PRESETS else "t5_1_1_tiny"
    assert gin.query_parameter("network.get_config.name") == model
  assert not os.listdir(tmp_path)  # a dry run writes nothing


def _stages(name, tmp_path, extra=()):
  runner = _runner(name, tmp_path, extra)
  return runner, {s.name: s for s in runner.plan.stages}


def _paper_prompt_settings(steps, period):
  assert _value("train.total_steps") == steps
  assert _value("trainer.CheckpointConfig.period") == period
  assert _value("train.eval_period") == period
  assert _value("prompts.Prompt.length") == 100
  assert _value("train/data.DatasetConfig.batch_size") == 32
  assert _value("network.get_config.dropout_rate") == 0.1
  assert _value("optimizers.adafactor.learning_rate") == 0.3
  assert _value("optimizers.adafactor.weight_decay_rate") == 1e-5
  assert _value("optimizers.adafactor.multiply_by_parameter_scale") is False
  assert _value("trainer.RestoreConfig.path") == BASE
  assert _value("trainer.CheckpointConfig.export_prompts") is True
  assert _value("partitioning.MeshConfig.expected_device_count") == 8


def test_generic_preset_carries_the_papers_settings(tmp_path):
  runner, stages = _stages("generic_t5_1_1_lm100k_base.gin", tmp_path)
  assert list(stages) == ["mixture_source", "generic_target", "generic_report"]
  _parse_stage(runner.resolve(stages["mixture_source"], dry_run=True).args)
  _paper_prompt_settings(262144, 10000)
  assert _value("train/data.DatasetConfig.mixture_or_task_name") == \
      "taskless_glue_v200_proportional"
  assert _value("train/data.DatasetConfig.module") == "tasks"
  assert gin.query_parameter("%PROMPT_INIT").selector == "prompt_init.sampled_vocabulary"
  assert _value("prompt_init.sampled_vocabulary.population_size") == 5000

  _parse_stage(runner.resolve(stages["generic_target"], dry_run=True).args)
  _paper_prompt_settings(262144, 500)
  assert _value("train/data.DatasetConfig.mixture_or_task_name") == \
      "taskless_super_glue_boolq_v102"
  assert _value("prompt_init.from_npy.path") == os.path.join(
      str(tmp_path), "mixture_source", "numpy_checkpoints", "checkpoint_<step>",
      "input_hook.prompt.npy")
  report = runner.resolve(stages["generic_report"], dry_run=True).inputs
  assert report["model_dirs"] == [os.path.join(str(tmp_path), "generic_target")]


def test_glue_mixture_is_examples_proportional_with_spots_cap():
  import seqio  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top,unused-import
  mixture = seqio.get_mixture_or_task("taskless_glue_v200_proportional")
  assert len(mixture.tasks) == 8


def test_targeted_presets_read_the_library_and_the_short_run(tmp_path):
  runner, stages = _stages("targeted_best_of_k_t5_1_1_lm100k_base.gin", tmp_path)
  assert list(stages) == ["target_short", "retrieve", "candidate_1", "best_of_k_1",
                          "candidate_2", "best_of_k_2", "candidate_3", "best_of_k_3", "best_of_k"]
  _parse_stage(runner.resolve(stages["target_short"], dry_run=True).args)
  _paper_prompt_settings(10000, 10000)
  retrieve = runner.resolve(stages["retrieve"], dry_run=True).inputs
  assert retrieve == {"library": "gs://bucket/library", "target_step": 10000, "top_k": 3,
                      "measure": "average_tokens",
                      "target": os.path.join(str(tmp_path), "target_short")}
  assert runner.resolve(stages["candidate_3"], dry_run=True).inputs["rank"] == 3
  _parse_stage(runner.resolve(stages["best_of_k_2"], dry_run=True).args)
  _paper_prompt_settings(262144, 500)
  assert _value("prompt_init.from_npy.path") == "<prompt of step spot_candidate>"
  assert runner.resolve(stages["best_of_k"], dry_run=True).inputs["model_dirs"] == [
      os.path.join(str(tmp_path), f"best_of_k_{r}") for r in (1, 2, 3)]

  runner, stages = _stages("targeted_average_t5_1_1_lm100k_base.gin", tmp_path)
  _parse_stage(runner.resolve(stages["average_target"], dry_run=True).args)
  _paper_prompt_settings(262144, 500)

  runner, stages = _stages("targeted_mixture_t5_1_1_lm100k_base.gin", tmp_path,
                           ["--gin.TOP_K=2", "--gin.KEY_STEP=5000"])
  assert runner.resolve(stages["retrieve"], dry_run=True).inputs["top_k"] == 2
  _parse_stage(runner.resolve(stages["topk_source"], dry_run=True).args)
  _paper_prompt_settings(262144, 10000)
  assert _value("spot.topk_mixture.module") == "tasks"
  _parse_stage(runner.resolve(stages["target_short"], dry_run=True).args)
  assert _value("train.total_steps") == 5000


def test_a_preset_without_its_library_stops_naming_it(tmp_path):
  argv = [f"--gin_file=gin/methods/spot/targeted_average_t5_1_1_lm100k_base.gin",
          f"--pipeline_dir={tmp_path}", PRESET_FLAGS[0], "--dry_run"]
  with pytest.raises(ValueError, match="LIBRARY"):
    pipeline_lib.main(argv, say=lambda line: None)
