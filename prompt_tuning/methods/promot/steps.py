"""ProMoT's pipeline steps (`pipeline.step_modules = ['prompt_tuning.methods.promot.steps']`)."""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence

from prompt_tuning.methods.promot import evaluation
from prompt_tuning.pipelines.stages import pipeline_step


@pipeline_step("promot_eval", outputs=("metrics", "with_prompt", "without_prompt"))
def promot_eval(*, stage_dir: str, model_gin_files: Sequence[str],
                with_prompt: Sequence[Any], without_prompt: Sequence[Any],
                run_dir: Optional[str] = None, step: Optional[int] = None,
                prompt_gin_files: Sequence[str] = (), base_checkpoint: Optional[str] = None,
                bindings: Optional[Mapping[str, Any]] = None, flags: Sequence[str] = ()):
  """One stage-2 step evaluated twice: the target task with its prompt, the rest without
  (`evaluation.evaluate_both`); `run_dir=None` evaluates `base_checkpoint` instead (a path;
  one in quotes, as BASE_CHECKPOINT macros once held gin text `'path'`, is unquoted)."""
  if base_checkpoint is not None and len(base_checkpoint) > 1 and \
      base_checkpoint[0] == base_checkpoint[-1] and base_checkpoint[0] in "'\"":
    base_checkpoint = base_checkpoint[1:-1]
  evaluation.evaluate_both(
      output_dir=stage_dir, run_dir=run_dir, step=None if step is None else int(step),
      model_gin_files=model_gin_files, prompt_gin_files=prompt_gin_files,
      with_prompt=with_prompt, without_prompt=without_prompt, bindings=bindings, flags=flags,
      base_checkpoint=base_checkpoint)
  return {"metrics": os.path.join(stage_dir, evaluation.METRICS_FILE),
          "with_prompt": os.path.join(stage_dir, evaluation.WITH_PROMPT),
          "without_prompt": os.path.join(stage_dir, evaluation.WITHOUT_PROMPT)}


@pipeline_step("promot_stack_prompts", outputs=("table",))
def stack_prompts(*, stage_dir: str, prompts: Sequence[str]):
  """Stacks per-task `[P, H]` prompts into one `[K, P, H]` table (`prompt_table.npy`), row k
  being `prompts[k]`: multi-task stage 2 reads it as its frozen `PromptTable`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  if not prompts:
    raise ValueError("promot_stack_prompts needs at least one prompt file.")
  arrays = []
  for path in prompts:
    if not os.path.isfile(path):
      raise ValueError(f"Prompt file {path} does not exist.")
    array = np.load(path)
    if array.ndim != 2:
      raise ValueError(f"Prompt file {path} holds shape {array.shape}, not [length, width].")
    if arrays and array.shape != arrays[0].shape:
      raise ValueError(f"Prompt file {path} has shape {array.shape}, unlike {prompts[0]} "
                       f"({arrays[0].shape}); the table needs prompts of one shape.")
    arrays.append(array)
  table = os.path.join(stage_dir, "prompt_table.npy")
  np.save(table, np.stack(arrays))
  return {"table": table}


@pipeline_step("promot_gradient_cosine", outputs=("csv", "png"))
def gradient_cosine(*, stage_dir: str, model_gin_files: Sequence[str], base_checkpoint: str,
                    task: str, lengths: Mapping[str, int], module: Optional[str] = None,
                    prompt_gin_files: Sequence[str] = (), prompt_checkpoint: Optional[str] = None,
                    bindings: Optional[Mapping[str, Any]] = None, steps: int = 100,
                    every: int = 10,
                    batch_size: int = 32, learning_rate: float = 1e-3):
  """Cosine between the task and the format-only gradient over fine-tuning steps, without and
  with the stage-1 prompt (`analysis.run`): a CSV and a PNG in the stage folder."""
  from prompt_tuning.methods.promot import analysis  # pylint: disable=g-import-not-at-top
  return analysis.run(
      output_dir=stage_dir, model_gin_files=model_gin_files, base_checkpoint=base_checkpoint,
      task=task, module=module, lengths=lengths, prompt_gin_files=prompt_gin_files,
      prompt_checkpoint=prompt_checkpoint, bindings=bindings, steps=int(steps),
      every=int(every), batch_size=int(batch_size), learning_rate=float(learning_rate))
