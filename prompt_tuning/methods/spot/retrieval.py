"""Targeted transfer: retrieve a library's top-k sources for a target and build initialisers.

Given the target's prompt after a short run (its task embedding), sources are ranked by the
similarity of their key prompts (`similarity.py`). SPoT then initialises the target prompt in
one of three ways, each built here from the top-k:

  best of top-k       one target run per candidate, each starting from that source's value
                      prompt; the run with the best validation score wins (`candidates`).
  weighted average    sum_r alpha_r * value_r with alpha_r = sim_r / sum_s sim_s
                      (`weighted_average`), written as `.npy` for gin/prompts/from_file.gin.
  top-k mixture       a prompt trained on the mixture of the top-k sources' tasks
                      (`mixture_tasks` gives the task names, most similar first).

Command (writes weighted_average.npy and retrieval.json to --out_dir):

  python -m prompt_tuning.methods.spot.retrieval --library DIR --target PROMPT.npy|RUN_DIR \
      [--target_step 10000] [--measure average_tokens|per_token] [--top_k 3] --out_dir DIR
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import List, Optional, Sequence

import numpy as np

from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import similarity as similarity_lib
from prompt_tuning.methods.spot import runs
from prompt_tuning.methods.spot import storage


@dataclasses.dataclass(frozen=True)
class Retrieved:
  """A source entry and the similarity of its key prompt to the target."""
  entry: library_lib.Entry
  similarity: float


def retrieve(library: library_lib.Library, target: np.ndarray, *, top_k: Optional[int] = None,
             measure: str = similarity_lib.AVERAGE_TOKENS,
             target_name: str = "target") -> List[Retrieved]:
  """The `top_k` entries (all when None) most similar to `target` [L, H], best first."""
  if top_k is not None and top_k < 1:
    raise ValueError(f"top_k must be at least 1, got {top_k}.")
  if not library.entries:
    raise library_lib.LibraryError(f"Prompt library {library.root} has no entries.")
  if np.asarray(target).shape[-1] != library.model.embed_dim:
    raise ValueError(f"The {target_name} prompt has embedding size {np.asarray(target).shape[-1]},"
                     f" but library {library.root} holds {library.model.name} prompts of size "
                     f"{library.model.embed_dim}.")
  ranking = similarity_lib.rank_sources(target, library.key_prompts(), measure,
                                        target_name=target_name)
  return [Retrieved(library.entry(name), value) for name, value in ranking[:top_k]]


def candidates(library: library_lib.Library, retrieved: Sequence[Retrieved]) -> List[dict]:
  """Best-of-top-k: one initial prompt per retrieved source, in rank order.

  Each item is `{'name', 'task', 'similarity', 'prompt_file'}`, where `prompt_file` is the
  source's value prompt (checked to exist with the manifest's shape) for PROMPT_FILE of
  gin/prompts/from_file.gin; the caller runs one target run per item and keeps the best.
  """
  items = []
  for r in retrieved:
    library.value_prompt(r.entry.name)  # a missing or misshapen file stops here, not mid-run
    items.append({"name": r.entry.name, "task": r.entry.task, "similarity": r.similarity,
                  "prompt_file": library.path(r.entry.value_prompt)})
  return items


def weights(similarities: Sequence[float]) -> np.ndarray:
  """alpha_r = sim_r / sum_s sim_s over the positive similarities; non-positive ones get 0.

  A source whose key prompt points away from (or across) the target's is treated as unrelated
  rather than subtracted: a negative weight would push the initial prompt away from that
  source, which SPoT does not do. If no similarity is positive there is no related source to
  average, and a ValueError says so (use best-of-top-k or the mixture instead).
  """
  sims = np.asarray(similarities, dtype=np.float64)
  positive = np.where(sims > 0, sims, 0.0)
  if positive.sum() <= 0:
    raise ValueError(f"No retrieved source has a positive similarity ({sims.tolist()}), so a "
                     "similarity-weighted average is undefined.")
  return positive / positive.sum()


def weighted_average(library: library_lib.Library,
                     retrieved: Sequence[Retrieved]) -> np.ndarray:
  """sum_r alpha_r * value_prompt_r, `[P, H]` float32 (all value prompts must share a shape)."""
  alphas = weights([r.similarity for r in retrieved])
  shapes = {r.entry.name: tuple(r.entry.prompt_shape) for r in retrieved}
  if len(set(shapes.values())) > 1:
    raise ValueError(f"The retrieved value prompts have different shapes {shapes}; a weighted "
                     "average needs one shape.")
  total = np.zeros(next(iter(shapes.values())), np.float64)
  for alpha, r in zip(alphas, retrieved):
    if alpha > 0:
      total += alpha * library.value_prompt(r.entry.name).astype(np.float64)
  return total.astype(np.float32)


def mixture_tasks(retrieved: Sequence[Retrieved]) -> List[str]:
  """The retrieved sources' task names, most similar first, each once."""
  tasks: List[str] = []
  for r in retrieved:
    if r.entry.task not in tasks:
      tasks.append(r.entry.task)
  return tasks


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.methods.spot.retrieval",
      description="Retrieve the top-k sources for a target prompt and build its initialisers.")
  parser.add_argument("--library", required=True, help="prompt library folder (local or gs://)")
  parser.add_argument("--target", required=True,
                      help="the target's prompt .npy, or its run's model_dir (see --target_step)")
  parser.add_argument("--target_step", type=int, default=runs.DEFAULT_KEY_STEP,
                      help="with a model_dir --target: the step whose prompt is the embedding")
  parser.add_argument("--measure", default=similarity_lib.AVERAGE_TOKENS,
                      choices=sorted(similarity_lib.MEASURES))
  parser.add_argument("--top_k", type=int, default=3)
  parser.add_argument("--out_dir", required=True,
                      help="where weighted_average.npy and retrieval.json are written")
  return parser.parse_args(argv)


def write_initialisers(*, library: str, target: str, out_dir: str, top_k: int = 3,
                       measure: str = similarity_lib.AVERAGE_TOKENS,
                       target_step: int = runs.DEFAULT_KEY_STEP) -> dict:
  """Retrieves the top-k for `target` (a `.npy` or a run folder) and writes the initialisers.

  Writes `<out_dir>/weighted_average.npy` (unless no similarity is positive, see `weights`)
  and `<out_dir>/retrieval.json`, and returns that summary: `candidates` (best-of-top-k, see
  `candidates`), `mixture_tasks`, and `weighted_average` (`prompt_file`, per-entry `weights`)
  or `weighted_average_error`.
  """
  lib = library_lib.Library.open(library)
  retrieved = retrieve(lib, runs.target_prompt(target, target_step), top_k=top_k,
                       measure=measure)
  summary = {"target": target, "measure": measure, "top_k": top_k,
             "candidates": candidates(lib, retrieved), "mixture_tasks": mixture_tasks(retrieved)}
  storage.makedirs(out_dir)
  try:
    alphas = weights([r.similarity for r in retrieved])
  except ValueError as e:
    summary["weighted_average_error"] = str(e)
  else:
    average_path = storage.join(out_dir, "weighted_average.npy")
    storage.save_prompt(average_path, weighted_average(lib, retrieved))
    summary["weighted_average"] = {"prompt_file": average_path,
                                   "weights": dict(zip([r.entry.name for r in retrieved],
                                                       alphas.tolist()))}
  storage.write_text(storage.join(out_dir, "retrieval.json"), json.dumps(summary, indent=2) + "\n")
  return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
  args = _parse(argv)
  summary = write_initialisers(library=args.library, target=args.target, out_dir=args.out_dir,
                               top_k=args.top_k, measure=args.measure,
                               target_step=args.target_step)
  for rank, item in enumerate(summary["candidates"], start=1):
    print(f"{rank:>4}  {item['similarity']:+.4f}  {item['name']}  ({item['task']})")
  if "weighted_average" in summary:
    path = summary["weighted_average"]["prompt_file"]
    print(f"Weighted average written to {path}; start a prompt run from it with "
          f"gin/prompts/from_file.gin and --gin.PROMPT_FILE=\"'{path}'\".")
  else:
    print(f"No weighted average: {summary['weighted_average_error']}")
  print(f"Top-{len(summary['candidates'])} mixture tasks: {', '.join(summary['mixture_tasks'])}")
  return summary


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
