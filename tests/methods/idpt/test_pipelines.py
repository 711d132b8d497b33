"""ID-PT pipelines dry-run; the distance and median steps run on a real generator export."""
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.engine import run_setup
from prompt_tuning.methods.idpt import generator as generator_lib
from prompt_tuning.methods.idpt import steps
from prompt_tuning.methods.idpt import tasks
from prompt_tuning.models import config as config_lib
from prompt_tuning.prompts import base

REPO = Path(__file__).resolve().parents[3]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"


def _dry_run(tmp_path, name, *flags):
  lines = []
  assert pipeline_lib.main([f"--gin_file=gin/methods/idpt/{name}",
                            f"--pipeline_dir={tmp_path / 'pipe'}", "--dry_run", *flags],
                           say=lines.append) == {}
  assert not (tmp_path / "pipe").exists()
  return "\n".join(lines)


def test_the_tiny_pipeline_dry_runs(tmp_path):
  said = _dry_run(tmp_path, "idpt_tiny.gin", "--gin.STEPS=5")
  for stage in ("lm", "idpt", "baseline", "distances"):
    assert f"stage '{stage}'" in said
  assert "--gin.optimizers.adamw.b2=0.95" in said and "--gin.optimizers.adamw.eps=1e-06" in said
  assert "--gin.optimizers.adamw.weight_decay=0.1" in said
  assert "--gin.optimizers.adam.b2=0.999" in said
  assert f"--gin.ENCODER_CHECKPOINT_PATH=\"'{tmp_path}/pipe/lm/checkpoints/<step>'\"" in said
  assert "--gin.TRAIN_STEPS=5 \\\n" in said


def test_the_xxl_pipeline_dry_runs(tmp_path):
  said = _dry_run(tmp_path, "idpt_t5_1_1_xxl.gin", "--gin.LM_CHECKPOINT='/ckpt/xxl'",
                  "--gin.ENCODER_CHECKPOINT='/ckpt/base'", "--gin.LEARNING_RATE=5e-05")
  for stage in ("idpt", "idpt_eval", "idpt_median", "baseline", "baseline_eval",
                "baseline_median", "distances"):
    assert f"stage '{stage}'" in said
  assert "--gin_file=gin/models/t5_1_1_lm100k_xxl.gin" in said
  assert "--gin_file=gin/partitioning/v4_32.gin" in said
  assert "--gin.optimizers.adamw.learning_rate=5e-05" in said
  assert "--gin.TASK_FEATURE_LENGTHS=\"{'inputs': 1024, 'targets': 256}\"" in said
  assert "--gin.BATCH_SIZE=32" in said and "--gin.PROMPT_LENGTH=400" in said


def test_the_xxl_pipeline_requires_its_checkpoints(tmp_path):
  with pytest.raises(Exception, match="LM_CHECKPOINT|ENCODER_CHECKPOINT"):
    _dry_run(tmp_path, "idpt_t5_1_1_xxl.gin")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  """An untrained generator's group export (T5X tiny small encoder, LM width 6)."""
  provider = generator_lib.PromptGenerator(encoder_config=config_lib.get_config("t5_1_1_tiny"),
                                           length=3, encoder_prompt_length=2)
  inputs = base.embedded_from_tokens(jnp.zeros((1, 2, 6)), jnp.ones((1, 2), jnp.int32))
  variables = provider.init(jax.random.PRNGKey(1), inputs,
                            hook_inputs={"generator_tokens": jnp.ones((1, 4), jnp.int32)})
  flat = run_setup.flat(nn.meta.unbox(variables["params"]))
  path = tmp_path_factory.mktemp("export") / "generator.npz"
  np.savez(path, **{f"input_hook/{k}": np.asarray(v) for k, v in flat.items()
                    if not k.startswith("small_encoder/")})
  return path, provider


def test_the_distance_step_prints_the_table_of_the_exported_generator(tmp_path, export, capsys):
  path, provider = export
  out = steps.prompt_distances(
      stage_dir=str(tmp_path), generator_npz=str(path), encoder_checkpoint=str(T5X_TINY),
      encoder_config={"name": "t5_1_1_tiny"}, examples_per_task=8, length=16,
      tasks={tasks.task_name("first"): "first", tasks.task_name("last"): "last"})
  table = out["table"]
  # Each task is one template of its dataset: no "other template" pairs here.
  assert table["same template"]["pairs"] == 2 * (8 * 7 // 2)
  assert table["other template, same dataset"]["pairs"] == 0
  assert np.isnan(table["other template, same dataset"]["mean"])
  assert table["other dataset"]["pairs"] == 64
  # Different inputs give different prompts, even untrained.
  assert 1e-4 < table["same template"]["mean"] < 2 and 1e-4 < table["other dataset"]["mean"] < 2
  assert "other dataset" in capsys.readouterr().out
  written = json.loads((tmp_path / steps.DISTANCES_FILE).read_text())
  assert written["other dataset"] == table["other dataset"]
  # The loaded generator is the exported one: same shapes read back from the .npz.
  generator, params, width = steps.load_generator(str(path), str(T5X_TINY),
                                                  config_lib.get_config("t5_1_1_tiny"))
  assert (generator.length, generator.encoder_prompt_length, width) == (3, 2, 6)
  tokens = steps.task_generator_tokens(tasks.task_name("first"), split="validation",
                                       examples=2, length=16)
  prompts = steps.generate_prompts(generator, params, width, tokens)
  assert prompts.shape == (2, 3, 6)
  np.testing.assert_array_equal(params["queries"], np.load(path)["input_hook/queries"])


def test_a_missing_export_is_one_sentence(tmp_path):
  with pytest.raises(FileNotFoundError, match="Generator export .*nothing.npz does not exist"):
    steps.load_generator(str(tmp_path / "nothing.npz"), str(T5X_TINY),
                         config_lib.get_config("t5_1_1_tiny"))


def test_the_median_step_takes_the_median_over_templates(tmp_path, capsys):
  metrics = tmp_path / "infer_eval.jsonl"
  record = {"step": 5, "idpt_p3_super_glue_rte_a_score_eval/accuracy": 50.0,
            "idpt_p3_super_glue_rte_b_score_eval/accuracy": 70.0,
            "idpt_p3_super_glue_rte_c_score_eval/accuracy": 60.0,
            "idpt_p3_super_glue_cb_a_score_eval/accuracy": 40.0}
  metrics.write_text(json.dumps({"step": 1}) + "\n" + json.dumps(record) + "\n")
  out = steps.median_over_templates(stage_dir=str(tmp_path), metrics=str(metrics))
  assert out["medians"] == {"super_glue_rte": 60.0, "super_glue_cb": 40.0}
  assert out["average"] == 50.0
  assert "super_glue_rte" in capsys.readouterr().out
  with pytest.raises(FileNotFoundError, match="Evaluation metrics .*none.jsonl do not exist"):
    steps.median_over_templates(stage_dir=str(tmp_path), metrics=str(tmp_path / "none.jsonl"))
