"""What eval and infer write per example: every decode with its score, one file naming scheme.

A randomly initialised byte-level tiny T5 with a random prompt (no checkpoint) is enough: the
checks are about what is written, and its decodes differ between beams and samples.
"""
import json
import math

import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import infer as infer_lib
from prompt_tuning.engine import evaluation
from prompt_tuning.smoke_data import tasks as smoke_tasks

FILES = ["gin/models/byte_t5_tiny.gin", "gin/prompts/random_uniform.gin"]
TASK = "smoke_last_digit_scored"
EXAMPLES = 6


def args(run_file, output_key, output_dir, **bindings):
  values = {"CHECKPOINT_DIR": "None", output_key: repr(str(output_dir)),
            "MIXTURE_OR_TASK_NAME": repr(TASK), "TASK_MODULE": "'prompt_tuning.smoke_data.tasks'",
            "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}", "BATCH_SIZE": "4",
            "PROMPT_LENGTH": "4", **bindings}
  return ([f"--gin_file={f}" for f in FILES + [f"gin/runs/{run_file}"]]
          + [f"--gin.{k}={v}" for k, v in values.items()])


def infer(output_dir, **bindings):
  [path] = infer_lib.main(args("infer.gin", "INFER_OUTPUT_DIR", output_dir,
                               **{"infer.num_examples": str(EXAMPLES), **bindings}))
  return path, [json.loads(line) for line in open(path)]


def test_file_name_is_shared():
  assert evaluation.inference_file_name("t", "validation", 60) == "t-validation-step_60.jsonl"


@pytest.mark.parametrize("decoder_params", [
    "{'method': 'beam', 'num_decodes': 3, 'alpha': 0.6}",
    "{'method': 'sample', 'num_decodes': 3, 'temperature': 1.0}",
])
def test_all_decodes_are_written_with_their_scores(tmp_path, decoder_params):
  path, records = infer(tmp_path, DECODER_PARAMS=decoder_params)
  assert path == str(tmp_path / "inference" / f"{TASK}-validation-step_0.jsonl")
  truth = smoke_tasks.generate(split="validation", instructed=False)
  assert [r["inputs"] for r in records] == truth["inputs"][:EXAMPLES]
  assert [r["targets"] for r in records] == truth["targets"][:EXAMPLES]
  for record in records:
    decodes = record["decodes"]
    assert len(decodes) == 3
    scores = [d["score"] for d in decodes]
    assert all(math.isfinite(s) and s < 0 for s in scores)
    if "beam" in decoder_params:
      # Best first: complete hypotheses (ending in EOS, id 1) before incomplete ones, each
      # group by score.
      complete = [1 in d["tokens"] for d in decodes]
      assert complete == sorted(complete, reverse=True)
      for group in (True, False):
        group_scores = [s for s, c in zip(scores, complete) if c == group]
        assert group_scores == sorted(group_scores, reverse=True)
    else:
      assert scores == sorted(scores, reverse=True)  # best first
    assert {k: record[k] for k in ("prediction", "tokens", "score")} == decodes[0]
    assert all(len(d["tokens"]) <= 4 for d in decodes)
  if "beam" in decoder_params:  # beams are distinct hypotheses
    assert all(len({tuple(d["tokens"]) for d in r["decodes"]}) == 3 for r in records)


def test_greedy_writes_one_decode_and_its_score(tmp_path):
  _, records = infer(tmp_path)
  assert len(records) == EXAMPLES
  assert all("decodes" not in r and math.isfinite(r["score"]) and r["score"] < 0
             for r in records)


def test_score_mode_writes_the_target_log_likelihood_per_example(tmp_path):
  _, records = infer(tmp_path, INFER_MODE="'score'")
  assert [r["index"] for r in records] == list(range(EXAMPLES))
  assert all(set(r) == {"index", "inputs", "targets", "score"} for r in records)
  # A random model spreads probability over 260 bytes: about log(1/260) per target token.
  assert all(-8 * 4 < r["score"] < -1 for r in records)


def test_eval_writes_its_examples_under_the_same_name(tmp_path):
  metrics = eval_lib.main(args("eval.gin", "EVAL_OUTPUT_DIR", tmp_path,
                               **{"evaluate.num_examples": str(EXAMPLES)}))
  logged = tmp_path / "inference_eval" / f"{TASK}-validation-step_0.jsonl"
  lines = [json.loads(line) for line in open(logged)]
  assert len(lines) == EXAMPLES
  mean = sum(line["score"] for line in lines) / EXAMPLES
  assert metrics[f"{TASK}/target_log_likelihood"] == pytest.approx(mean, rel=1e-5)
  assert not list((tmp_path / "inference_eval").glob(f"{TASK}-0*.jsonl"))  # seqio's own name
