"""The ensemble as a pipeline step, and the tiny pipeline's plan."""
import json
import os

import flax
import jax
import numpy as np
import pytest

from prompt_tuning import pipeline
from prompt_tuning.engine.param_loading import flat
from prompt_tuning.methods.ensemble import bank as bank_lib
from prompt_tuning.methods.ensemble import loading
from prompt_tuning.methods.ensemble import steps

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def test_tiny_pipeline_plans_three_prompts_and_the_ensemble(tmp_path):
  lines = []
  pipeline.main(["--gin_file=gin/methods/ensemble/ensemble_tiny.gin",
                 f"--pipeline_dir={tmp_path}", "--dry_run"], say=lines.append)
  text = "\n".join(lines)
  assert "stage 'ensemble' (prompt_ensemble): to run" in text
  assert f"input prompts = ['{tmp_path}/p0', '{tmp_path}/p1', '{tmp_path}/p2']" in text
  assert f"input base = '{tmp_path}/base/checkpoints/<step>'" in text


@pytest.mark.slow
def test_step_writes_the_report_and_returns_its_numbers(tmp_path):
  model, _ = loading.model_from_gin([os.path.join(REPO, "gin/models/byte_t5_tiny.gin")])
  config = model.module.config
  table = bank_lib.table_model(config, capacity=1, prompt_length=4)
  variables = table.get_initial_variables(jax.random.PRNGKey(1), batch_size=1,
                                          encoder_length=8, decoder_length=4,
                                          lengths={"encoder_input_tokens": 8})
  params = flax.core.meta.unbox(variables["params"])
  base = str(tmp_path / "base.npz")
  np.savez(base, **{k: np.asarray(v) for k, v in flat(params).items()
                    if not k.startswith("input_hook/")})
  prompts = []
  for i in range(2):
    prompts.append(str(tmp_path / f"p{i}.npy"))
    np.save(prompts[-1], np.random.default_rng(i).normal(size=(4, config.emb_dim)))
  stage_dir = tmp_path / "ensemble"
  stage_dir.mkdir()
  out = steps.prompt_ensemble(
      stage_dir=str(stage_dir), model_gin=[os.path.join(REPO, "gin/models/byte_t5_tiny.gin")],
      base=base, prompts=prompts, task="smoke_last_digit",
      task_module="prompt_tuning.smoke_data.tasks", lengths="inputs:16,targets:4",
      num_examples=16, batch_size=8)
  with open(out["report"]) as f:
    report = json.load(f)
  assert report["num_examples"] == 16 and len(report["per_prompt"]) == 2
  accuracies = [m["accuracy"] for m in report["per_prompt"].values()]
  assert out["mean"]["accuracy"] == pytest.approx(np.mean(accuracies))
  assert out["best"]["accuracy"] == max(accuracies)
  assert set(out["majority_vote"]) == set(out["score_average"]) == {"accuracy"}
  with pytest.raises(pipeline.PipelineError, match="evaluation failed"):
    steps.prompt_ensemble(stage_dir=str(stage_dir), model_gin=["gin/models/byte_t5_tiny.gin"],
                          base=base, prompts=[str(tmp_path / "missing.npy")],
                          task="smoke_last_digit")
