"""The outputs of a finished train / eval / infer stage, read from what the run left in its folder.

The folder names are the trainer's and the entry points' (engine/trainer.py, eval.py, infer.py;
a test checks they agree). They are spelled here rather than imported so that planning and
dry runs never start JAX. Before a stage has run, `predicted` gives the same outputs with
`<step>` standing for the step the run will reach.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Any, Dict, Optional

from prompt_tuning.pipelines.stages import DIR_OUTPUT, PipelineError

CHECKPOINTS_SUBDIR = "checkpoints"  # trainer.CHECKPOINTS_SUBDIR
NUMPY_EXPORT_SUBDIR = "numpy_checkpoints"  # trainer.NUMPY_EXPORT_SUBDIR
PEFT_EXPORT_SUBDIR = "peft_adapters"  # trainer.PEFT_EXPORT_SUBDIR
COMMIT_MARKER = "commit_success.txt"  # a step folder whose save completed (checkpoints.py)
PROMPT_FILE = "input_hook.prompt.npy"  # the [P, H] prompt as trainer.export_prompts names it
CONFIG_FILE = "config.gin"  # gin_utils.OPERATIVE_CONFIG_FILE
METRICS_SUBDIR = "metrics"
INFER_EVAL_METRICS = "infer_eval.jsonl"  # reporting.INFER_EVAL
EVAL_PREDICTIONS_SUBDIR = "inference_eval"  # evaluation.INFERENCE_LOG_SUBDIR
INFER_PREDICTIONS_SUBDIR = "inference"  # infer.py
STEP = "<step>"


def complete_steps(model_dir: str) -> list:
  """The steps of `<model_dir>/checkpoints` whose save completed, oldest first."""
  folder = os.path.join(model_dir, CHECKPOINTS_SUBDIR)
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder)
                if name.isdigit() and os.path.isfile(os.path.join(folder, name, COMMIT_MARKER)))


def _config_value(config: str, name: str) -> Any:
  """A `CheckpointConfig.<name>` value of an operative config (macros followed), or None."""
  found = re.search(rf"^(?:[\w.]+\.)?CheckpointConfig\.{name}\s*=\s*(.+)$", config, re.M)
  if not found:
    return None
  value = found.group(1).strip()
  if value.startswith("%"):
    macro = re.search(rf"^{re.escape(value[1:])}\s*=\s*(.+)$", config, re.M)
    value = macro.group(1).strip() if macro else "None"
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def chosen_step(model_dir: str) -> int:
  """The latest complete step, or the best one when the run ranks steps by a metric."""
  steps = complete_steps(model_dir)
  if not steps:
    raise PipelineError(f"The train stage in {model_dir} finished without a complete checkpoint "
                        f"in {os.path.join(model_dir, CHECKPOINTS_SUBDIR)}.")
  config_path = os.path.join(model_dir, CONFIG_FILE)
  config = open(config_path).read() if os.path.isfile(config_path) else ""
  best_metric = _config_value(config, "best_metric")
  if not best_metric:
    return steps[-1]
  # Only a run that ranks steps needs orbax's record of each step's metrics.
  from prompt_tuning.engine import checkpoints  # pylint: disable=g-import-not-at-top
  with checkpoints.CheckpointManager(
      directory=os.path.join(model_dir, CHECKPOINTS_SUBDIR), read_only=True,
      best_metric=best_metric, best_mode=_config_value(config, "best_mode") or "max") as manager:
    best = manager.best_step()
  return steps[-1] if best is None else best


def _existing(path: str) -> Optional[str]:
  return path if os.path.exists(path) else None


def _one_file_or_folder(folder: str) -> Optional[str]:
  """The folder's single `.jsonl` file, or the folder when it holds several (None: none)."""
  if not os.path.isdir(folder):
    return None
  files = sorted(f for f in os.listdir(folder) if f.endswith(".jsonl"))
  if not files:
    return None
  return os.path.join(folder, files[0]) if len(files) == 1 else folder


def train_outputs(folder: str, step: Any) -> Dict[str, Any]:
  exports = os.path.join(folder, NUMPY_EXPORT_SUBDIR, f"checkpoint_{step}")
  known = step != STEP
  pick = _existing if known else (lambda path: path)
  return {
      DIR_OUTPUT: folder, "model_dir": folder,
      "checkpoint": os.path.join(folder, CHECKPOINTS_SUBDIR, str(step)),
      "step": step,
      "prompt": pick(os.path.join(exports, PROMPT_FILE)),
      "prompts": pick(exports),
      "peft_adapter": pick(os.path.join(folder, PEFT_EXPORT_SUBDIR, f"checkpoint_{step}")),
      "metrics": os.path.join(folder, METRICS_SUBDIR),
      "config": os.path.join(folder, CONFIG_FILE),
  }


def read(kind: str, folder: str) -> Dict[str, Any]:
  """The outputs of a finished entry-point stage of `kind` in `folder`."""
  if kind == "train":
    return train_outputs(folder, chosen_step(folder))
  config = os.path.join(folder, CONFIG_FILE)
  if kind == "eval":
    return {DIR_OUTPUT: folder,
            "metrics": _existing(os.path.join(folder, METRICS_SUBDIR, INFER_EVAL_METRICS)),
            "predictions": _one_file_or_folder(os.path.join(folder, EVAL_PREDICTIONS_SUBDIR)),
            "config": config}
  return {DIR_OUTPUT: folder,
          "predictions": _one_file_or_folder(os.path.join(folder, INFER_PREDICTIONS_SUBDIR)),
          "config": config}


def predicted(kind: str, folder: str, names) -> Dict[str, Any]:
  """What a stage that has not run yet will report, for dry runs (`<step>`, `<file>` unknown)."""
  if kind == "train":
    return train_outputs(folder, STEP)
  if kind == "eval":
    return {DIR_OUTPUT: folder,
            "metrics": os.path.join(folder, METRICS_SUBDIR, INFER_EVAL_METRICS),
            "predictions": os.path.join(folder, EVAL_PREDICTIONS_SUBDIR, "<task>-<step>.jsonl"),
            "config": os.path.join(folder, CONFIG_FILE)}
  if kind == "infer":
    return {DIR_OUTPUT: folder,
            "predictions": os.path.join(folder, INFER_PREDICTIONS_SUBDIR,
                                        "<task>-<split>-step_<step>.jsonl"),
            "config": os.path.join(folder, CONFIG_FILE)}
  return {name: folder if name == DIR_OUTPUT else f"<{name} of step {kind}>" for name in names}
