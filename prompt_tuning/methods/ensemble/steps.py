"""The ensemble evaluation as a pipeline step (`kind='prompt_ensemble'`).

Runs `python -m prompt_tuning.methods.ensemble.evaluate` in its own process: the command parses
the model's gin file itself, which must not disturb the pipeline's own gin configuration.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence

from prompt_tuning.pipelines.stages import PipelineError, pipeline_step

REPORT_FILE = "ensemble.json"


@pipeline_step("prompt_ensemble", outputs=("report", "mean", "best", "majority_vote",
                                           "score_average"))
def prompt_ensemble(*, stage_dir: str, model_gin: Sequence[str], base: str,
                    prompts: Sequence[str], task: str, task_module: Optional[str] = None,
                    split: str = "validation", lengths: str = "inputs:512,targets:16",
                    num_examples: Optional[int] = None, batch_size: int = 32
                    ) -> Dict[str, Any]:
  """Evaluates `prompts` (files or run folders) on `task` in one batched pass per batch."""
  report = os.path.join(stage_dir, REPORT_FILE)
  command = [sys.executable, "-m", "prompt_tuning.methods.ensemble.evaluate",
             *[f"--model_gin={g}" for g in model_gin], f"--base={base}", "--prompts", *prompts,
             f"--task={task}", f"--split={split}", f"--lengths={lengths}",
             f"--batch_size={batch_size}", f"--output={report}"]
  if task_module:
    command.append(f"--task_module={task_module}")
  if num_examples is not None:
    command.append(f"--num_examples={num_examples}")
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  print(done.stdout, end="", flush=True)
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["no message"])[-1]
    raise PipelineError(f"The prompt ensemble evaluation failed: {last}")
  with open(report) as f:
    result = json.load(f)
  return {"report": report, "mean": result["mean"], "best": result["best"],
          "majority_vote": result.get("majority_vote"),
          "score_average": result.get("score_average")}
