"""Every decoder-rank pipeline dry-runs, and each stage's gin parses and builds as its run would:
the model wrapper, the mesh, the data configs (8B presets included, shapes only)."""
import glob
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.prompts import providers
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
METHOD_DIR = os.path.join(ROOT, "gin", "methods", "decoder_rank")
PIPELINES = sorted(os.path.basename(p)
                   for p in glob.glob(os.path.join(METHOD_DIR, "decoder_rank_*.gin")))
TINY = [p for p in PIPELINES if p.endswith("_tiny.gin")]
PRESETS = [p for p in PIPELINES if p not in TINY]
BASE = "--gin.BASE_CHECKPOINT='/ckpts/hf_model'"


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def _argv(name, tmp_path, extra=()):
  argv = [f"--gin_file=gin/methods/decoder_rank/{name}", f"--pipeline_dir={tmp_path}"]
  return argv + ([] if name in TINY else [BASE]) + list(extra)


def _runner(name, tmp_path, extra=()):
  _, runner, _ = dry_run.plan(_argv(name, tmp_path, extra))
  return dry_run.stages(runner), runner


_parse_stage = dry_run.parse_stage
_value = dry_run.gin_value


def test_there_are_presets_and_tiny_variants_for_every_family():
  assert {"decoder_rank_llama3_1_8b_v5e_16.gin", "decoder_rank_llama3_1_8b_v4_32.gin",
          "decoder_rank_mistral_7b_v5e_16.gin", "decoder_rank_qwen2_7b_v5e_16.gin",
          "decoder_rank_gemma_7b_v5e_16.gin", "decoder_rank_gemma2_9b_v5e_16.gin"} <= set(PRESETS)
  assert {"decoder_rank_tiny.gin", "decoder_rank_decoder_only_tiny.gin",
          "decoder_rank_gemma_tiny.gin", "decoder_rank_gemma2_tiny.gin",
          "decoder_rank_mistral_tiny.gin", "decoder_rank_qwen2_tiny.gin"} <= set(TINY)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_dry_runs_and_writes_nothing(name, tmp_path):
  lines = []
  assert pipeline_lib.main(_argv(name, tmp_path) + ["--dry_run"], say=lines.append) == {}
  text = "\n".join(lines)
  expected = ["prompt", "rank_eval"] + (["base", "base_eval"] if name in TINY else [])
  for stage in expected:
    assert f"stage '{stage}'" in text
  assert "--gin_file=gin/methods/decoder_rank/runs/prompt.gin" in text
  assert "--gin_file=gin/methods/decoder_rank/runs/eval.gin" in text
  assert not os.listdir(tmp_path)


def test_a_preset_without_its_checkpoint_is_refused(tmp_path):
  with pytest.raises(Exception, match="BASE_CHECKPOINT"):
    pipeline_lib.main([f"--gin_file=gin/methods/decoder_rank/{PRESETS[0]}",
                       f"--pipeline_dir={tmp_path}", "--dry_run"], say=lambda line: None)


def _n_params(model, lengths):
  shapes = jax.eval_shape(lambda: model.initial_variables(jax.random.PRNGKey(0), lengths))
  params = nn.meta.unbox(shapes["params"])
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)), params


@pytest.mark.parametrize("name,mesh_axes", [
    ("decoder_rank_llama3_1_8b_v5e_16.gin", (4, 4)),
    ("decoder_rank_llama3_1_8b_v4_32.gin", (4, 4)),
])
def test_the_8b_presets_build_an_fsdp_tp_prompt_run_and_a_rank_eval(name, mesh_axes, tmp_path):
  stages, runner = _runner(name, tmp_path)
  _parse_stage(runner.resolve(stages["prompt"], dry_run=True).args)
  model = _value("train.model")
  assert isinstance(model, model_wrappers.DecoderOnlyModel)
  assert not model.inputs_bidirectional_attention  # causal LM: inputs then targets
  config = model.module.config
  assert (config.vocab_size, config.emb_dim, config.num_decoder_layers) == (128256, 4096, 32)
  mesh = _value("train.mesh_config")
  assert (mesh.data, mesh.model, mesh.shard_params_over_data, mesh.expected_device_count) == (
      *mesh_axes, True, 16)
  assert _value("prompts.Prompt.length") == 100
  assert _value("optimizers.adafactor.learning_rate") == 0.3
  assert _value("train.total_steps") == 30000
  assert _value("trainer.RestoreConfig.path") == "/ckpts/hf_model"
  train_data, rank_data = _value("train.train_dataset_cfg"), _value("train.infer_eval_dataset_cfg")
  assert train_data.mixture_or_task_name == "lm_super_glue_v102_proportional"
  assert rank_data.mixture_or_task_name == "lm_super_glue_v102_rank_classification"
  assert rank_data.module == "prompt_tuning.methods.decoder_rank.tasks"
  assert (rank_data.split, rank_data.batch_size, rank_data.shuffle) == ("validation", 64, False)
  # The prompt starts from 5000 embedding rows sampled from the checkpoint's table; for the
  # shapes, a prompt of the same length with the default initialiser stands in.
  assert _value("prompt_init.sampled_vocabulary.population_size") == 5000
  assert _value("prompt_init.checkpoint_array.checkpoint_path") == "/ckpts/hf_model"
  hook = model.module.input_hook
  shaped = model_wrappers.DecoderOnlyModel(model.module.clone(input_hook=hook.clone(
      provider=providers.Prompt(length=hook.provider.length))))
  count, params = _n_params(shaped, {"decoder_input_tokens": 528})
  assert params["input_hook"]["prompt"].shape == (100, 4096)
  assert 8.0e9 < count < 8.1e9  # Llama 3.1 8B + a 100 x 4096 prompt

  _parse_stage(runner.resolve(stages["rank_eval"], dry_run=True).args)
  eval_data = _value("evaluate.dataset_cfg")
  assert eval_data.mixture_or_task_name == "lm_super_glue_v102_rank_classification"
  assert _value("evaluate.checkpoint_dir") == os.path.join(str(tmp_path), "prompt")
  assert _value("evaluate.model").module.config.emb_dim == 4096


@pytest.mark.parametrize("name", PIPELINES)
def test_every_stage_builds_its_model_and_data(name, tmp_path):
  stages, runner = _runner(name, tmp_path)
  for stage in stages.values():
    _parse_stage(runner.resolve(stage, dry_run=True).args)
    entry = "train" if stage.kind == "train" else "evaluate"
    model = _value(f"{entry}.model")
    assert isinstance(model, model_wrappers.DecoderOnlyModel)
    hooked = model.module.input_hook is not None
    assert hooked == (stage.name in ("prompt", "rank_eval"))
    if stage.kind == "eval":
      task = _value("evaluate.dataset_cfg").mixture_or_task_name
      assert task.endswith("_rank_classification")
    else:
      assert _value("train.train_dataset_cfg").mixture_or_task_name.startswith(
          ("tiny_", "lm_"))


def test_tiny_variants_swap_only_the_model(tmp_path):
  stages, runner = _runner("decoder_rank_gemma_tiny.gin", tmp_path)
  _parse_stage(runner.resolve(stages["prompt"], dry_run=True).args)
  assert _value("network.get_llama_config.name") == "gemma_tiny"
  assert _value("train.train_dataset_cfg").mixture_or_task_name == "tiny_super_glue_rte_v102"
  assert _value("train.infer_eval_dataset_cfg").mixture_or_task_name == (
      "tiny_super_glue_rte_v102_rank_classification")
  stages, runner = _runner("decoder_rank_decoder_only_tiny.gin", tmp_path)
  _parse_stage(runner.resolve(stages["rank_eval"], dry_run=True).args)
  assert _value("network.get_config.name") == "decoder_only_tiny"
  assert _value("evaluate.dataset_cfg").mixture_or_task_name == (
      "tiny_super_glue_v102_rank_classification")
