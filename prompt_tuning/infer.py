r"""Infer entry point: `python -m prompt_tuning.infer --gin_file=... --gin.NAME=VALUE`.

Writes one JSON line per example of a task's split: the input text and either the decoded
prediction (`mode='predict'`, greedy / beam / sampling as `decoder_params` says) or the
log-likelihood of the example's target (`mode='score'`):

  python -m prompt_tuning.infer \
    --gin_file=gin/models/byte_t5_tiny.gin \
    --gin_file=gin/prompts/prompt.gin \
    --gin_file=gin/runs/infer.gin \
    --gin.CHECKPOINT_DIR="'/tmp/smoke/prompt'" \
    --gin.INFER_OUTPUT_DIR="'/tmp/smoke/infer'" \
    --gin.MIXTURE_OR_TASK_NAME="'smoke_last_digit'" \
    --gin.TASK_MODULE="'prompt_tuning.smoke_data.tasks'" --gin.PROMPT_LENGTH=8

Output: `<output_dir>/inference/<task>-<split>-step_<N>.jsonl` (eval writes the same names
under `inference_eval/`). Each line holds `index`, `inputs`, `targets` and, for `predict`, the
best decode's `prediction`, `tokens` and `score` (the search's log-likelihood: summed token
log-probabilities for greedy and sampling, length-penalised for beam search); with
`num_decodes > 1` also `decodes`, every decode best first with its `prediction`, `tokens` and
`score`. For `score`, `score` is the log-likelihood of the example's target.
"""
from __future__ import annotations

import sys
from typing import List, Optional, Sequence

from prompt_tuning.jobs.infer import infer  # noqa: F401  (re-exported)
from prompt_tuning.jobs.infer import MODES  # noqa: F401  (re-exported)

def main(argv: Sequence[str]) -> List[str]:
  from prompt_tuning.engine import gin_utils, run_settings  # pylint: disable=g-import-not-at-top
  argv = run_settings.with_run_shapes(argv)  # the run's prompt and model shapes, overridable
  return gin_utils.run_entry_point(infer, "infer", argv, prog="prompt_tuning.infer",
                                   description="Predict or score examples with a trained run.")


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-infer` / `python -m prompt_tuning.infer`."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.console(main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  console_main()
