"""The SQuAD -> MRQA pipeline end to end on the tiny CPU model (`squad_mrqa_tiny.gin`).

Checks the method's contract with numbers read back from the runs themselves: each run is
evaluated at the step that scored best on the in-domain validation split during training (the
"pick on dev" step), and the evaluation reproduces that step's in-domain score; seeds give
different runs; prompt tuning changes only the prompt; and the report's means and standard
deviations are those of the eval stages' metrics, recomputed here with numpy.
"""
import json
import os

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))
FAST = ["--gin.BASE_STEPS=60", "--gin.PT_STEPS=10", "--gin.MT_STEPS=10",
        "--gin.CHECKPOINT_PERIOD=5"]
IN_DOMAIN = "domain_shift_tiny_qa/f1"
SEEDS = (0, 1, 2)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _outputs(pipeline_dir, stage):
  with open(os.path.join(pipeline_dir, stage, "completed.json")) as f:
    return json.load(f)["outputs"]


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  pipeline_dir = str(tmp_path_factory.mktemp("squad_mrqa_tiny"))
  cwd = os.getcwd()
  os.chdir(ROOT)
  try:
    outputs = pipeline_lib.main(
        ["--gin_file=gin/methods/domain_shift/squad_mrqa_tiny.gin",
         f"--pipeline_dir={pipeline_dir}"] + FAST, say=lambda _: None)
  finally:
    os.chdir(cwd)
  return pipeline_dir, outputs


def test_every_stage_finished(finished):
  pipeline_dir, outputs = finished
  assert set(outputs) == {"base", "report"} | {
      f"{m}_seed{s}{e}" for m in ("pt", "mt") for s in SEEDS for e in ("", "_eval")}
  assert os.path.isfile(outputs["report"]["table"])


@pytest.mark.parametrize("method", ["pt", "mt"])
def test_each_run_is_evaluated_at_its_best_in_domain_step(finished, method):
  pipeline_dir, outputs = finished
  for seed in SEEDS:
    run = f"{method}_seed{seed}"
    during = {row["step"]: row[IN_DOMAIN] for row in
              _rows(os.path.join(pipeline_dir, run, "metrics", "infer_eval.jsonl"))}
    assert sorted(during) == [5, 10]
    picked = outputs[run]["step"]
    assert during[picked] == max(during.values())
    [after] = _rows(os.path.join(pipeline_dir, f"{run}_eval", "metrics", "infer_eval.jsonl"))
    assert after["step"] == picked
    # The same step on the same split, decoded greedily: the same score.
    assert after[IN_DOMAIN] == pytest.approx(during[picked])
    assert {"domain_shift_tiny_qa_new_keys/f1", "domain_shift_tiny_qa_long/em"} <= set(after)


def _saved_params(step_dir):
  """A step's saved trainable parameters as `{path: shape}`, read with orbax alone."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(step_dir, "params"))
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(v))
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_seeds_differ_and_prompt_tuning_trains_only_the_prompt(finished):
  _, outputs = finished
  prompts = [np.load(outputs[f"pt_seed{s}"]["prompt"]) for s in SEEDS]
  assert prompts[0].shape == (4, 64)
  assert not np.allclose(prompts[0], prompts[1]) and not np.allclose(prompts[1], prompts[2])
  assert _saved_params(outputs["pt_seed0"]["checkpoint"]) == {"input_hook/prompt": (4, 64)}
  tuned = _saved_params(outputs["mt_seed0"]["checkpoint"])
  assert len(tuned) > 40 and not any(k.startswith("input_hook") for k in tuned)
  assert "encoder/layers_0/attention/query/kernel" in tuned


def test_report_is_the_mean_and_sample_std_of_the_eval_stages(finished):
  pipeline_dir, outputs = finished
  with open(outputs["report"]["summary"]) as f:
    summary = {row["key"]: row for row in json.load(f)}
  assert list(summary) == [f"domain_shift_tiny_{s}/{m}" for m in ("f1", "em")
                           for s in ("qa", "qa_new_keys", "qa_long")]
  for key, row in summary.items():
    for method in ("pt", "mt"):
      values = [_rows(os.path.join(pipeline_dir, f"{method}_seed{s}_eval", "metrics",
                                   "infer_eval.jsonl"))[-1][key] for s in SEEDS]
      assert row[method]["values"] == pytest.approx(values)
      assert row[method]["mean"] == pytest.approx(np.mean(values))
      assert row[method]["std"] == pytest.approx(np.std(values, ddof=1))
    assert row["difference"] == pytest.approx(row["pt"]["mean"] - row["mt"]["mean"])
  with open(outputs["report"]["table"]) as f:
    table = f.read().splitlines()
  assert len(table) == 2 + 6 and table[2].startswith("in domain F1")
