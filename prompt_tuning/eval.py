r"""Eval entry point: `python -m prompt_tuning.eval --gin_file=... --gin.NAME=VALUE`.

Runs a task's SeqIO metrics (predictions and/or scores) for a trained run or a ready prompt:

  python -m prompt_tuning.eval \
    --gin_file=gin/models/byte_t5_tiny.gin \
    --gin_file=gin/prompts/prompt.gin \
    --gin_file=gin/runs/eval.gin \
    --gin.CHECKPOINT_DIR="'/tmp/smoke/prompt'" \
    --gin.EVAL_OUTPUT_DIR="'/tmp/smoke/eval'" \
    --gin.MIXTURE_OR_TASK_NAME="'smoke_last_digit'" \
    --gin.TASK_MODULE="'prompt_tuning.smoke_data.tasks'" --gin.PROMPT_LENGTH=8

Metrics go to `<output_dir>/metrics/infer_eval.jsonl` and TensorBoard summaries; every example's
prediction (or score) goes to `<output_dir>/inference_eval/<task>-<split>-step_<N>.jsonl` (the
name infer uses under `inference/`).
"""
from __future__ import annotations

import sys
from typing import Dict, Optional, Sequence

from prompt_tuning.jobs.eval import evaluate  # noqa: F401  (re-exported)

def main(argv: Sequence[str]) -> Dict[str, float]:
  from prompt_tuning.engine import gin_utils, run_settings  # pylint: disable=g-import-not-at-top
  argv = run_settings.with_run_shapes(argv)  # the run's prompt and model shapes, overridable
  return gin_utils.run_entry_point(evaluate, "evaluate", argv, prog="prompt_tuning.eval",
                                   description="Evaluate a trained run or a prompt.")


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-eval` / `python -m prompt_tuning.eval`."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.console(main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  console_main()
