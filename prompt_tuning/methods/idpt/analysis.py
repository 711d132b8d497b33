"""How much generated prompts vary: average cosine distance within and across templates/datasets.

For generated prompts `p_i` (each `[P, H]`, flattened) with a dataset and a template per
example, the table holds the mean of `1 - cos(p_i, p_j)` over pairs i < j that are

  same template          the same dataset and the same template;
  other template         the same dataset, different templates;
  other dataset          different datasets.

A generator that ignores its input gives 0 everywhere; one that only recognises the dataset gives
~0 within a dataset and more across datasets. (The paper's Table 8 reports these three numbers
for its P3 generator.) All pairs are computed at once from the normalised `[N, P*H]` matrix;
pass a sample of a few hundred examples per dataset for large runs.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Sequence

import numpy as np

SAME_TEMPLATE = "same template"
OTHER_TEMPLATE = "other template, same dataset"
OTHER_DATASET = "other dataset"
ROWS = (SAME_TEMPLATE, OTHER_TEMPLATE, OTHER_DATASET)


def cosine_distances(prompts: np.ndarray) -> np.ndarray:
  """`[N, N]` matrix of `1 - cos` between the flattened prompts `[N, ...]`."""
  flat = np.asarray(prompts, np.float64).reshape(len(prompts), -1)
  norms = np.linalg.norm(flat, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError("A prompt is all zeros; its cosine distance is undefined.")
  unit = flat / norms
  return 1.0 - unit @ unit.T


def distance_table(prompts: np.ndarray, datasets: Sequence[str],
                   templates: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """`{row: {'mean': ..., 'pairs': n}}` for the three rows above (mean NaN without pairs)."""
  prompts = np.asarray(prompts)
  datasets, templates = np.asarray(datasets), np.asarray(templates)
  if not len(prompts) == len(datasets) == len(templates):
    raise ValueError(f"distance_table needs one dataset and one template per prompt; got "
                     f"{len(prompts)} prompts, {len(datasets)} datasets, {len(templates)} "
                     f"templates.")
  distances = cosine_distances(prompts)
  upper = np.triu(np.ones(distances.shape, bool), k=1)
  same_dataset = datasets[:, None] == datasets[None, :]
  same_template = same_dataset & (templates[:, None] == templates[None, :])
  selections = {SAME_TEMPLATE: same_template, OTHER_TEMPLATE: same_dataset & ~same_template,
                OTHER_DATASET: ~same_dataset}
  table = {}
  for row, selection in selections.items():
    chosen = distances[upper & selection]
    table[row] = {"mean": float(chosen.mean()) if chosen.size else float("nan"),
                  "pairs": int(chosen.size)}
  return table


def format_table(table: Mapping[str, Mapping[str, float]], title: str = "") -> List[str]:
  """The table as printable lines."""
  lines = [title] if title else []
  lines.append(f"  {'pairs of examples':<30} {'mean cosine distance':>21} {'pairs':>8}")
  for row in ROWS:
    entry = table[row]
    lines.append(f"  {row:<30} {entry['mean']:>21.4f} {entry['pairs']:>8d}")
  return lines
