"""SPoT's stages as functions shaped like pipeline Python steps.

Each takes `stage_dir` (the stage's own folder) and keyword inputs, and returns
`{output name: value}`, the shape of a pipeline Python step, so registering one is a single
`pipeline_step(name, outputs=...)(fn)` call. They do not import the pipeline package, so they
can also be called and tested on their own. The training stages (source runs, the target's
short run, candidate runs from `PROMPT_FILE`) are ordinary `train` stages.

  add_source      a finished source run's key and value prompts into the library
  retrieve        the target's top-k sources: candidates, weighted average, mixture tasks
  pick_best       best-of-top-k: the candidate run with the best validation score
"""
from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence

from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import retrieval
from prompt_tuning.methods.spot import runs
from prompt_tuning.methods.spot import similarity
from prompt_tuning.methods.spot import storage

ADD_SOURCE_OUTPUTS = ("entry", "value_prompt")
RETRIEVE_OUTPUTS = ("weighted_average", "candidates", "candidate_names", "mixture_tasks",
                    "top_prompt")
PICK_BEST_OUTPUTS = ("model_dir", "step", "score")


def add_source(*, stage_dir: str, library: str, model_dir: str, task: str, model: str,
               key_step: int = runs.DEFAULT_KEY_STEP, metric: Optional[str] = None,
               seed: Optional[int] = None, name: Optional[str] = None) -> Dict[str, Any]:
  """Adds a finished source run to `library`; outputs the entry name and its value prompt."""
  del stage_dir  # the library is the stage's product
  entry = library_lib.add_run(library=library, model_dir=model_dir, task=task, model=model,
                              seed=seed, key_step=key_step, metric=metric, name=name)
  return {"entry": entry.name, "value_prompt": storage.join(library, entry.value_prompt)}


def retrieve(*, stage_dir: str, library: str, target: str, top_k: int = 3,
             measure: str = similarity.AVERAGE_TOKENS,
             target_step: int = runs.DEFAULT_KEY_STEP) -> Dict[str, Any]:
  """Writes the initialisers into `stage_dir` and outputs them.

  `weighted_average` is the `.npy` path (None when no similarity is positive); `candidates`
  the value-prompt files of the top-k, best first (one target run each); `top_prompt` the
  first of them; `mixture_tasks` the top-k task names for a mixture run.
  """
  summary = retrieval.write_initialisers(library=library, target=target, out_dir=stage_dir,
                                         top_k=top_k, measure=measure, target_step=target_step)
  files = [c["prompt_file"] for c in summary["candidates"]]
  return {"weighted_average": summary.get("weighted_average", {}).get("prompt_file"),
          "candidates": files, "candidate_names": [c["name"] for c in summary["candidates"]],
          "mixture_tasks": summary["mixture_tasks"], "top_prompt": files[0]}


def pick_best(*, stage_dir: str, model_dirs: Sequence[str], metric: Optional[str] = None,
              mode: str = "max") -> Dict[str, Any]:
  """The run among `model_dirs` whose best evaluation of `metric` is best (first on a tie).

  Writes every run's best score to `<stage_dir>/pick_best.json`.
  """
  if not model_dirs:
    raise ValueError("pick_best needs at least one candidate run in model_dirs.")
  scores = []
  for model_dir in model_dirs:
    name, step, value = runs.best_eval(model_dir, metric, mode)
    scores.append({"model_dir": model_dir, "metric": name, "step": step, "score": value})
  sign = -1.0 if mode == "max" else 1.0
  best = min(range(len(scores)), key=lambda i: (sign * scores[i]["score"], i))
  storage.makedirs(stage_dir)
  storage.write_text(storage.join(stage_dir, "pick_best.json"),
                     json.dumps({"best": scores[best], "runs": scores}, indent=2) + "\n")
  return {k: scores[best][k] for k in PICK_BEST_OUTPUTS}
