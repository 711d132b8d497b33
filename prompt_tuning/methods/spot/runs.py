"""What a finished prompt run left in its model_dir, as the prompt library needs it.

A run exports each saved prompt as `<model_dir>/numpy_checkpoints/checkpoint_<step>/<name>.npy`
(`engine.trainer.export_prompts`; the name is the prompt's parameter path with dots) and
writes its evaluations to `<model_dir>/metrics/infer_eval.jsonl`, one `{"step": N,
"task/metric": value, ...}` object per evaluation (`engine.reporting`). From these `read_run`
picks the key step (fixed, 10K by default) and the value step (the best exported step by a
metric), and reads the seed from the run's `config.gin`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from prompt_tuning.engine.params import PROMPT_PATH
from prompt_tuning.methods.spot import storage

NUMPY_EXPORT_SUBDIR = "numpy_checkpoints"  # as engine.trainer.NUMPY_EXPORT_SUBDIR
DEFAULT_PROMPT = PROMPT_PATH.replace("/", ".")
DEFAULT_KEY_STEP = 10_000  # SPoT's task embedding: the prompt after 10K steps
INFER_EVAL_FILE = "metrics/infer_eval.jsonl"
_SEED = re.compile(r"^\s*(?:RANDOM_SEED|train\.random_seed)\s*=\s*(\d+)\s*$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class RunPrompts:
  """The chosen prompts of one run: `prompt_paths` maps every exported step to its file."""
  model_dir: str
  prompt_paths: Mapping[int, str]
  steps: int
  key_step: int
  value_step: int
  metric: Optional[str]
  metric_value: Optional[float]
  seed: int


def exported_prompts(model_dir: str, prompt: str = DEFAULT_PROMPT) -> Dict[int, str]:
  """`{step: path}` of the exported `<prompt>.npy` files of a run."""
  pattern = storage.join(model_dir, NUMPY_EXPORT_SUBDIR, "checkpoint_*", f"{prompt}.npy")
  found = {}
  for path in storage.glob(pattern):
    folder = path.split("/")[-2]
    step = folder[len("checkpoint_"):]
    if step.isdigit():
      found[int(step)] = path
  return dict(sorted(found.items()))


def target_prompt(path: str, step: int = DEFAULT_KEY_STEP,
                  prompt: str = DEFAULT_PROMPT) -> np.ndarray:
  """A target's task embedding: a `.npy` prompt file, or a run folder's prompt at `step`."""
  if not storage.isdir(path):
    return storage.load_prompt(path)
  paths = exported_prompts(path, prompt)
  if step not in paths:
    raise ValueError(f"Run {path} has no {prompt}.npy exported at step {step} (exported steps: "
                     f"{list(paths)}); pass --target_step with one of them.")
  return storage.load_prompt(paths[step])


def eval_metrics(model_dir: str) -> Dict[int, Dict[str, float]]:
  """`{step: {'task/metric': value}}` from the run's infer-eval JSONL (numbers only)."""
  path = storage.join(model_dir, INFER_EVAL_FILE)
  if not storage.exists(path):
    return {}
  by_step: Dict[int, Dict[str, float]] = {}
  for number, line in enumerate(storage.read_text(path).splitlines(), start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"Line {number} of {path} is not valid JSON ({e}).") from e
    values = {k: float(v) for k, v in record.items()
              if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
    by_step.setdefault(int(record["step"]), {}).update(values)
  return by_step


def best_step(metrics: Mapping[int, Mapping[str, float]], metric: str, steps: List[int],
              mode: str = "max") -> int:
  """The step among `steps` with the best `metric`; the earliest one on a tie."""
  scored = [(metrics[s][metric], s) for s in steps if metric in metrics.get(s, {})]
  if not scored:
    raise ValueError(f"No exported step has metric {metric!r}; exported steps: {steps}.")
  sign = -1.0 if mode == "max" else 1.0
  return min(scored, key=lambda item: (sign * item[0], item[1]))[1]


def _only_metric(metrics: Mapping[int, Mapping[str, float]], path: str) -> str:
  names = sorted({name for values in metrics.values() for name in values})
  if len(names) != 1:
    raise ValueError(f"{path} holds metrics {names}; pass --metric to say which one picks the "
                     "best prompt.")
  return names[0]


def best_eval(model_dir: str, metric: Optional[str] = None,
              mode: str = "max") -> Tuple[str, int, float]:
  """`(metric, step, value)` of a run's best evaluation (its reported validation score)."""
  metrics = eval_metrics(model_dir)
  path = storage.join(model_dir, INFER_EVAL_FILE)
  if not metrics:
    raise ValueError(f"Run {model_dir} has no evaluations in {path}.")
  metric = metric or _only_metric(metrics, path)
  step = best_step(metrics, metric, sorted(metrics), mode)
  return metric, step, metrics[step][metric]


def read_seed(model_dir: str) -> int:
  path = storage.join(model_dir, "config.gin")
  match = _SEED.search(storage.read_text(path)) if storage.exists(path) else None
  if match is None:
    raise ValueError(f"The random seed of run {model_dir} is not in {path}; pass --seed.")
  return int(match.group(1))


def read_run(*, model_dir: str, prompt: str = DEFAULT_PROMPT, key_step: int,
             metric: Optional[str] = None, metric_mode: str = "max",
             value_step: Optional[int] = None, seed: Optional[int] = None) -> RunPrompts:
  """Finds a finished run's key and value prompts, refusing in one sentence if it cannot."""
  if not storage.isdir(model_dir):
    raise FileNotFoundError(f"Run folder {model_dir} does not exist.")
  paths = exported_prompts(model_dir, prompt)
  if not paths:
    raise FileNotFoundError(
        f"Run {model_dir} has no exported {prompt}.npy under {NUMPY_EXPORT_SUBDIR}/.")
  steps = list(paths)
  if key_step not in paths:
    raise ValueError(f"Run {model_dir} has no prompt exported at key step {key_step} (exported "
                     f"steps: {steps}); pass --key_step with one of them.")
  metric_value = None
  if value_step is None:
    metrics = eval_metrics(model_dir)
    infer_eval = storage.join(model_dir, INFER_EVAL_FILE)
    if not metrics:
      raise ValueError(f"Run {model_dir} has no evaluations in {infer_eval}, so its best prompt "
                       "is unknown; pass --value_step.")
    metric = metric or _only_metric(metrics, infer_eval)
    value_step = best_step(metrics, metric, steps, metric_mode)
    metric_value = metrics[value_step][metric]
  elif value_step not in paths:
    raise ValueError(f"Run {model_dir} has no prompt exported at value step {value_step} "
                     f"(exported steps: {steps}).")
  else:
    metric_value = eval_metrics(model_dir).get(value_step, {}).get(metric) if metric else None
  return RunPrompts(model_dir=model_dir, prompt_paths=paths, steps=steps[-1], key_step=key_step,
                    value_step=value_step, metric=metric, metric_value=metric_value,
                    seed=read_seed(model_dir) if seed is None else seed)
