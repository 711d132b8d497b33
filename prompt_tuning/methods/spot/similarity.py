"""Task similarity from prompts: SPoT's two cosine measures, a similarity matrix and a ranking.

A prompt `[L, H]` trained on a task serves as that task's embedding (SPoT, Vu et al. 2022, §4).
Two prompts `a` `[La, H]` and `b` `[Lb, H]` are compared by

  average_tokens:  cos(mean_i a_i, mean_j b_j)          (the paper's "cosine of average tokens")
  per_token:       1/(La Lb) sum_i sum_j cos(a_i, b_j)  (the paper's "per-token average cosine";
                   1/L^2 when both prompts have L tokens)

Both are symmetric; `average_tokens` ignores the order of each prompt's tokens, and so does
`per_token` (it averages over every pair). Lengths may differ; the embedding sizes must match.

Command (ranks a library's sources for a target prompt and writes the matrix as CSV and PNG;
`--target` is a `.npy` prompt or the target run's model_dir, whose prompt at `--target_step`,
10K by default, is the target's task embedding):

  python -m prompt_tuning.methods.spot.similarity --library DIR --target PROMPT.npy|RUN_DIR \
      [--target_step 10000] [--measure average_tokens|per_token] [--top_k K] [--out_dir DIR]
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import runs
from prompt_tuning.methods.spot import storage

AVERAGE_TOKENS = "average_tokens"
PER_TOKEN = "per_token"


def _check(prompt, name: str) -> np.ndarray:
  array = np.asarray(prompt, dtype=np.float64)
  if array.ndim != 2 or array.shape[0] == 0:
    raise ValueError(f"Prompt {name} must be a non-empty [length, embed] array, got shape "
                     f"{array.shape}.")
  if not np.all(np.isfinite(array)):
    raise ValueError(f"Prompt {name} holds NaN or infinite values.")
  return array


def _unit_rows(array: np.ndarray, name: str) -> np.ndarray:
  """Rows scaled to length 1; a zero row has no direction, so it is refused."""
  norms = np.linalg.norm(array, axis=-1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError(f"Prompt {name} has an all-zero token, whose cosine is undefined.")
  return array / norms


def _pair(a, b, names: Tuple[str, str]) -> Tuple[np.ndarray, np.ndarray]:
  a, b = _check(a, names[0]), _check(b, names[1])
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"Prompts {names[0]} and {names[1]} have different embedding sizes "
                     f"({a.shape[1]} and {b.shape[1]}); they come from different models.")
  return a, b


def average_tokens(a, b, names: Tuple[str, str] = ("a", "b")) -> float:
  """cos(mean_i a_i, mean_j b_j) for prompts `a` [La, H] and `b` [Lb, H]."""
  a, b = _pair(a, b, names)
  mean_a = _unit_rows(a.mean(axis=0, keepdims=True), f"{names[0]} (its token mean)")
  mean_b = _unit_rows(b.mean(axis=0, keepdims=True), f"{names[1]} (its token mean)")
  return float(np.sum(mean_a * mean_b))


def per_token(a, b, names: Tuple[str, str] = ("a", "b")) -> float:
  """1/(La Lb) sum_i sum_j cos(a_i, b_j) for prompts `a` [La, H] and `b` [Lb, H]."""
  a, b = _pair(a, b, names)
  # [La, H] @ [H, Lb] -> [La, Lb] cosines; their mean is the measure.
  return float(np.mean(_unit_rows(a, names[0]) @ _unit_rows(b, names[1]).T))


MEASURES: Dict[str, Callable[..., float]] = {AVERAGE_TOKENS: average_tokens, PER_TOKEN: per_token}


def measure_fn(measure: str) -> Callable[..., float]:
  if measure not in MEASURES:
    raise ValueError(f"Unknown similarity measure {measure!r}; expected one of {sorted(MEASURES)}.")
  return MEASURES[measure]


def similarity(a, b, measure: str = AVERAGE_TOKENS, names: Tuple[str, str] = ("a", "b")) -> float:
  return measure_fn(measure)(a, b, names=names)


def similarity_matrix(prompts: Mapping[str, np.ndarray],
                      measure: str = AVERAGE_TOKENS) -> Tuple[List[str], np.ndarray]:
  """Names (in the mapping's order) and the `[N, N]` matrix of pairwise similarities."""
  fn = measure_fn(measure)
  names = list(prompts)
  matrix = np.ones((len(names), len(names)))
  for i, first in enumerate(names):
    for j in range(i, len(names)):
      second = names[j]
      value = fn(prompts[first], prompts[second], names=(first, second))
      matrix[i, j] = matrix[j, i] = value
  return names, matrix


def rank_sources(target, sources: Mapping[str, np.ndarray], measure: str = AVERAGE_TOKENS,
                 target_name: str = "target") -> List[Tuple[str, float]]:
  """`(source name, similarity to target)` from most to least similar.

  Similarities equal to 9 decimals count as a tie (rounding noise must not decide), and ties
  go by name, so the order is reproducible.
  """
  fn = measure_fn(measure)
  scored = [(name, fn(target, prompt, names=(target_name, name)))
            for name, prompt in sources.items()]
  return sorted(scored, key=lambda item: (-round(item[1], 9), item[0]))


def matrix_csv(names: Sequence[str], matrix: np.ndarray) -> str:
  """The matrix as CSV text: a header row of names, then one row per name."""
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow([""] + list(names))
  for name, row in zip(names, matrix):
    writer.writerow([name] + [f"{value:.6f}" for value in row])
  return out.getvalue()


def write_heatmap(path: str, names: Sequence[str], matrix: np.ndarray, title: str) -> None:
  """Draws the matrix as an annotated heatmap PNG (matplotlib's file-only Agg backend)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  size = max(4.0, 0.6 * len(names) + 2.0)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  low = min(0.0, float(matrix.min()))
  image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=1.0)
  ax.set_xticks(range(len(names)), labels=names, rotation=60, ha="right")
  ax.set_yticks(range(len(names)), labels=names)
  if len(names) <= 20:
    for i in range(len(names)):
      for j in range(len(names)):
        bright = (matrix[i, j] - low) / (1.0 - low) > 0.6  # viridis turns yellow at the top
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="k" if bright else "w")
  ax.set_title(title)
  fig.colorbar(image, ax=ax)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=120)
  plt.close(fig)
  if storage.is_remote(path):
    storage.write_bytes(path, buffer.getvalue())
  else:
    with open(path, "wb") as f:
      f.write(buffer.getvalue())


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m prompt_tuning.methods.spot.similarity",
      description="Rank a prompt library's source tasks for a target prompt.")
  parser.add_argument("--library", required=True, help="prompt library folder (local or gs://)")
  parser.add_argument("--target", required=True,
                      help="the target's prompt .npy, or its run's model_dir (see --target_step)")
  parser.add_argument("--target_step", type=int, default=runs.DEFAULT_KEY_STEP,
                      help="with a model_dir --target: the step whose prompt is the embedding")
  parser.add_argument("--target_name", default="target", help="the target's name in the matrix")
  parser.add_argument("--measure", default=AVERAGE_TOKENS, choices=sorted(MEASURES))
  parser.add_argument("--top_k", type=int, default=None, help="print only the K best sources")
  parser.add_argument("--out_dir", default=None,
                      help="write similarity_<measure>.csv and .png here (default: print only)")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Tuple[str, float]]:
  """Prints the ranking; writes the matrix over target and sources if `--out_dir` is given."""
  args = _parse(argv)
  library = library_lib.Library.open(args.library)
  target = runs.target_prompt(args.target, args.target_step)
  sources = library.key_prompts()
  if target.shape[1] != library.model.embed_dim:
    raise ValueError(f"Target prompt {args.target} has embedding size {target.shape[1]}, but "
                     f"library {args.library} holds {library.model.name} prompts of size "
                     f"{library.model.embed_dim}.")
  ranking = rank_sources(target, sources, args.measure, target_name=args.target_name)
  shown = ranking[:args.top_k] if args.top_k else ranking
  print(f"Sources for {args.target_name} by {args.measure} similarity:")
  for rank, (name, value) in enumerate(shown, start=1):
    print(f"{rank:>4}  {value:+.4f}  {name}")
  if args.out_dir:
    storage.makedirs(args.out_dir)
    prompts = {args.target_name: target, **sources}
    names, matrix = similarity_matrix(prompts, args.measure)
    csv_path = storage.join(args.out_dir, f"similarity_{args.measure}.csv")
    png_path = storage.join(args.out_dir, f"similarity_{args.measure}.png")
    storage.write_text(csv_path, matrix_csv(names, matrix))
    write_heatmap(png_path, names, matrix, f"Prompt similarity ({args.measure})")
    print(f"Wrote {csv_path} and {png_path}.")
  return ranking


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
