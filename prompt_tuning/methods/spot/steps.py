"""SPoT's stages as functions shaped like pipeline Python steps.

Each takes `stage_dir` (the stage's own folder) and keyword inputs, and returns
`{output name: value}`, the shape of a pipeline Python step, so registering one is a single
`pipeline_step(name, outputs=...)(fn)` call. They do not import the pipeline package, so they
can also be called and tested on their own. The training stages (source runs, the target's
short run, candidate runs from `PROMPT_FILE`) are ordinary `train` stages.

  add_source      a finished source run's key and value prompts into the library
  add_sources     several finished source runs into one library (a new one in the stage folder
                  unless `library` is given)
  retrieve        the target's top-k sources: candidates, weighted average, mixture tasks
  pick_best       best-of-top-k: the candidate run with the best validation score (with one
                  run: that run's best validation score, the number a target run reports)
  candidate       the value prompt of the retrieved source at one rank, copied into the stage
                  folder (a local file for PROMPT_FILE even when the library is on gs://)

`pipeline_steps.py` registers them as the pipeline steps `spot_<name>`.
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
ADD_SOURCES_OUTPUTS = ("library", "entries")
CANDIDATE_OUTPUTS = ("prompt", "name")
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


def add_sources(*, stage_dir: str, sources: Sequence[Dict[str, Any]], model: str,
                key_step: int = runs.DEFAULT_KEY_STEP,
                library: Optional[str] = None) -> Dict[str, Any]:
  """Adds every finished run of `sources` (`{'model_dir', 'task'[, 'metric', 'seed', 'name']}`)
  to `library` (default: `<stage_dir>/library`); outputs the library and the entry names.

  Every run is checked to exist before the first is added, so a typo in the last run does not
  leave a library holding only the first ones.
  """
  if not sources:
    raise ValueError("add_sources needs at least one source run.")
  for number, run in enumerate(sources, start=1):
    missing = [k for k in ("model_dir", "task") if not run.get(k)]
    if missing:
      raise ValueError(f"Run {number} of add_sources lacks {missing[0]!r}.")
    if not storage.isdir(run["model_dir"]):
      raise FileNotFoundError(f"Run folder {run['model_dir']} does not exist.")
  library = library or storage.join(stage_dir, "library")
  names = []
  for run in sources:
    entry = library_lib.add_run(library=library, model_dir=run["model_dir"], task=run["task"],
                                model=model, seed=run.get("seed"), key_step=key_step,
                                metric=run.get("metric"), name=run.get("name"))
    names.append(entry.name)
  return {"library": library, "entries": names}


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


def candidate(*, stage_dir: str, candidates: Sequence[str], rank: int,
              names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """The value prompt of the rank-`rank` retrieved source (1 = most similar), copied to
  `<stage_dir>/prompt.npy` so that a target run reads it as a local PROMPT_FILE."""
  rank = int(rank)
  if not 1 <= rank <= len(candidates):
    raise ValueError(f"Candidate rank {rank} is out of range: retrieval returned "
                     f"{len(candidates)} candidates; retrieve with top_k >= {rank}.")
  prompt = storage.load_prompt(candidates[rank - 1])
  storage.makedirs(stage_dir)
  path = storage.join(stage_dir, "prompt.npy")
  storage.save_prompt(path, prompt)
  return {"prompt": path, "name": names[rank - 1] if names else None}
