r"""Train entry point: `python -m prompt_tuning.train --gin_file=... --gin.NAME=VALUE`.

`train(*, model, train_dataset_cfg, ...)` is plain Python; gin composes its arguments from the
files and bindings on the command line (see gin/README.md). Example, prompt tuning T5 1.1 LM
base on a SeqIO task:

  python -m prompt_tuning.train \
    --gin_file=gin/models/t5_1_1_lm100k_base.gin \
    --gin_file=gin/prompts/class_labels.gin \
    --gin_file=gin/runs/prompt_tuning.gin \
    --gin.MODEL_DIR="'/tmp/pt_rte'" \
    --gin.INITIAL_CHECKPOINT_PATH="'/path/to/checkpoint_1100000'" \
    --gin.MIXTURE_OR_TASK_NAME="'super_glue_rte_v102'"

Running the same command again in the same MODEL_DIR resumes from its latest checkpoint.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from prompt_tuning.jobs.train import train  # noqa: F401  (re-exported)
from prompt_tuning.jobs.train import TrainResult  # noqa: F401  (re-exported)

def main(argv: Sequence[str]) -> TrainResult:
  """Parses flags and gin, joins a multi-process run if asked, and trains."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  return gin_utils.run_entry_point(
      train, "train", argv, prog="prompt_tuning.train",
      description="Train (prompt-tune or fine-tune) a model.",
      extra_overrides=lambda: {"learning_rate_fn": gin_utils.learning_rate_fn("train.optimizer"),
                               "check_settings_fn": _check_resumed_settings})


def _check_resumed_settings(model_dir: str) -> None:
  """Stops a resumed run whose gin settings changed in a way that makes resuming unsound."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import resume_check  # pylint: disable=g-import-not-at-top
  resume_check.check_resume_config(model_dir=model_dir, new_config=gin.operative_config_str())


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-train` / `python -m prompt_tuning.train`: errors print as one sentence, exit 1."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.console(main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  console_main()
