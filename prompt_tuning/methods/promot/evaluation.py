"""Evaluating one ProMoT run with and without its prompt.

ProMoT's claim is about two uses of the same stage-2 weights: the fine-tuned task keeps its
prompt; every other task is served by the model with the prompt removed. Removing the prompt
means building the model without an input hook and reading every one of its parameters from the
stage-2 step's saved parameters (one parameter group, `FromCheckpoint(<run>/checkpoints/<step>)`;
nothing comes from the base), so the weights are exactly the fine-tuned ones.

Each evaluation is a run of the eval entry point in its own process (the same command a user
would type), so gin state never leaks between the two model configurations.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

from prompt_tuning.engine import reporting

WITH_PROMPT = "with_prompt"
WITHOUT_PROMPT = "without_prompt"
METRICS_FILE = "metrics.json"
EVAL_RUN_FILE = "gin/runs/eval.gin"


@dataclasses.dataclass(frozen=True)
class EvalEntry:
  """One task to evaluate: its SeqIO name, the module registering it, split and lengths."""

  task: str
  module: str
  split: str = "validation"
  lengths: Optional[Mapping[str, int]] = None

  @classmethod
  def parse(cls, value: Any, where: str) -> "EvalEntry":
    if isinstance(value, str):
      raise ValueError(f"{where} entry {value!r} must be a dict with 'task' and 'module'.")
    if not isinstance(value, Mapping) or "task" not in value or "module" not in value:
      raise ValueError(f"{where} entry {value!r} must be a dict with 'task' and 'module'.")
    unknown = sorted(set(value) - {"task", "module", "split", "lengths"})
    if unknown:
      raise ValueError(f"{where} entry for {value['task']!r} has unknown keys {unknown}.")
    return cls(task=value["task"], module=value["module"], split=value.get("split", "validation"),
               lengths=value.get("lengths"))


def _gin_text(value: Any) -> str:
  return value if isinstance(value, str) else repr(value)


def flatten_entries(values: Sequence[Any]) -> List[Any]:
  """Entries given as a list, or as a list of lists (`[[%EVAL_TARGET], %EVAL_OTHERS]` in gin)."""
  flat = []
  for value in values:
    flat.extend(value if isinstance(value, (list, tuple)) else [value])
  return flat


def eval_command(*, entry: EvalEntry, run_dir: Optional[str], step: Optional[int],
                 output_dir: str, gin_files: Sequence[str], bindings: Mapping[str, Any],
                 prompt: bool, base_checkpoint: Optional[str] = None,
                 flags: Sequence[str] = ()) -> List[str]:
  """The `python -m prompt_tuning.eval` command for one task, with or without the prompt.

  Without `run_dir` the model is the base checkpoint itself (the "pretrained" row)."""
  command = [sys.executable, "-m", "prompt_tuning.eval"]
  command += [f"--gin_file={f}" for f in list(gin_files) + [EVAL_RUN_FILE]]
  values = dict(bindings)
  values.update({
      "CHECKPOINT_DIR": repr(run_dir), "CHECKPOINT_STEP": repr(step),
      "EVAL_OUTPUT_DIR": repr(output_dir), "MIXTURE_OR_TASK_NAME": repr(entry.task),
      "TASK_MODULE": repr(entry.module), "EVAL_SPLIT": repr(entry.split)})
  if entry.lengths is not None:
    values["TASK_FEATURE_LENGTHS"] = dict(entry.lengths)
  if run_dir is None:
    values["INITIAL_CHECKPOINT_PATH"] = repr(base_checkpoint)
  elif not prompt:
    # The hook-less model, every parameter read from the step's saved parameters (a step of a
    # run whose prompt was trained too holds the prompt as well; it is not read).
    values.update({
        "CHECKPOINT_DIR": "None", "CHECKPOINT_STEP": "None",
        "evaluate.param_groups": "[@weights/params.ParamGroup()]",
        "weights/params.ParamGroup.name": repr("model"),
        "weights/params.ParamGroup.source": "@weights/params.FromCheckpoint()",
        "weights/params.FromCheckpoint.path": repr(step_folder(run_dir, step))})
  command += [f"--gin.{name}={_gin_text(value)}" for name, value in values.items()]
  return command + list(flags)


def step_folder(run_dir: str, step: Optional[int]) -> str:
  """`<run>/checkpoints/<step>`; without a step, the one the run chose (best or latest)."""
  if step is None:
    from prompt_tuning.pipelines import outputs  # pylint: disable=g-import-not-at-top
    return outputs.read("train", run_dir)["checkpoint"]
  return os.path.join(run_dir, "checkpoints", str(step))


def check_inputs(*, run_dir: Optional[str], base_checkpoint: Optional[str],
                 gin_files: Sequence[str]) -> None:
  """Stops, before any evaluation starts, on a missing run, checkpoint or gin file."""
  if run_dir is None:
    if base_checkpoint is None or not os.path.exists(base_checkpoint):
      raise ValueError(f"ProMoT evaluation without a run needs an existing base_checkpoint, got "
                       f"{base_checkpoint!r}.")
  elif not os.path.isdir(os.path.join(run_dir, "checkpoints")) and \
      os.path.basename(os.path.normpath(run_dir)) != "checkpoints":
    raise ValueError(f"ProMoT evaluation: {run_dir} is not a training run (no checkpoints/).")
  missing = [f for f in gin_files if not os.path.isfile(f)]
  if missing:
    raise ValueError(f"ProMoT evaluation: gin file(s) {missing} do not exist (paths are relative "
                     f"to {os.getcwd()}).")


def evaluate_both(*, output_dir: str, run_dir: Optional[str], step: Optional[int],
                  model_gin_files: Sequence[str], prompt_gin_files: Sequence[str],
                  with_prompt: Sequence[Any], without_prompt: Sequence[Any],
                  bindings: Optional[Mapping[str, Any]] = None, flags: Sequence[str] = (),
                  base_checkpoint: Optional[str] = None,
                  runner=subprocess.run) -> Dict[str, Dict[str, float]]:
  """Evaluates `with_prompt` tasks with the prompt and `without_prompt` tasks without it.

  Writes each run under `<output_dir>/{with_prompt,without_prompt}/<task>/` and the metrics of
  all of them to `<output_dir>/metrics.json` as `{'with_prompt': {...}, 'without_prompt':
  {...}}` (each `{'task/metric': value}`); returns that dict. Without `run_dir`, the base
  checkpoint is evaluated (with the prompt: the prompt's initialiser, as for a fresh run).
  """
  entries = {
      WITH_PROMPT: [EvalEntry.parse(e, "with_prompt") for e in flatten_entries(with_prompt)],
      WITHOUT_PROMPT: [EvalEntry.parse(e, "without_prompt")
                       for e in flatten_entries(without_prompt)]}
  check_inputs(run_dir=run_dir, base_checkpoint=base_checkpoint,
               gin_files=list(model_gin_files) + list(prompt_gin_files))
  env = dict(os.environ)
  package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
  results: Dict[str, Dict[str, float]] = {WITH_PROMPT: {}, WITHOUT_PROMPT: {}}
  for kind, kind_entries in entries.items():
    prompt = kind == WITH_PROMPT
    files = list(model_gin_files) + (list(prompt_gin_files) if prompt else [])
    for entry in kind_entries:
      folder = os.path.join(output_dir, kind, entry.task)
      command = eval_command(entry=entry, run_dir=run_dir, step=step, output_dir=folder,
                             gin_files=files, bindings=bindings or {}, prompt=prompt,
                             base_checkpoint=base_checkpoint, flags=flags)
      done = runner(command, env=env, check=False)
      if done.returncode != 0:
        raise ValueError(f"Evaluating {entry.task!r} {kind.replace('_', ' ')} failed with exit "
                         f"status {done.returncode}; see the log above.")
      results[kind].update(reporting.last_eval_metrics(
          reporting.metrics_file(folder, "infer_eval")))
  with open(os.path.join(output_dir, METRICS_FILE), "w") as f:
    json.dump(results, f, indent=1, sort_keys=True)
  return results
