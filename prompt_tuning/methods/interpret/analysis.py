"""What a prompt's tokens are near and how large they are, as plain numpy on `[P, H]` arrays.

The prompt-tuning paper reads learned prompts this way: each prompt token's nearest
vocabulary embeddings by cosine similarity (class-label words often show up among them when
the prompt was initialised from them), and the tokens' norms against the embedding table's.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np


def _unit(rows: np.ndarray) -> np.ndarray:
  norms = np.linalg.norm(rows, axis=-1, keepdims=True)
  return rows / np.maximum(norms, 1e-12)


def nearest_neighbours(prompt: np.ndarray, embeddings: np.ndarray, k: int = 5,
                       exclude: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray]:
  """Top-k vocabulary rows by cosine similarity to each prompt token.

  Args:
    prompt: `[P, H]`.
    embeddings: `[V, H]` the model's input embedding table.
    k: neighbours per token.
    exclude: vocabulary ids never returned (e.g. padding, unused rows).

  Returns:
    ids `[P, k]` and cosine similarities `[P, k]`, most similar first (ties: lower id first).
  """
  prompt, embeddings = np.asarray(prompt, np.float64), np.asarray(embeddings, np.float64)
  if prompt.ndim != 2 or embeddings.ndim != 2 or prompt.shape[1] != embeddings.shape[1]:
    raise ValueError(f"Prompt {prompt.shape} and embedding table {embeddings.shape} must be "
                     "[P, H] and [V, H] with the same H.")
  sims = _unit(prompt) @ _unit(embeddings).T  # [P, V]
  if exclude:
    sims[:, list(exclude)] = -np.inf
  order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return order, np.take_along_axis(sims, order, axis=1)


@dataclasses.dataclass
class Norms:
  """Prompt-token L2 norms set against the embedding table's norms."""

  prompt: np.ndarray  # [P]
  table_mean: float
  table_std: float
  table_min: float
  table_max: float
  above_table_max: int  # prompt tokens longer than every vocabulary embedding

  def lines(self) -> List[str]:
    return [f"prompt token norms: mean {self.prompt.mean():.3f}, min {self.prompt.min():.3f}, "
            f"max {self.prompt.max():.3f}",
            f"embedding table norms: mean {self.table_mean:.3f} (std {self.table_std:.3f}), "
            f"min {self.table_min:.3f}, max {self.table_max:.3f}",
            f"prompt tokens longer than every vocabulary embedding: {self.above_table_max} of "
            f"{len(self.prompt)}"]


def norms(prompt: np.ndarray, embeddings: np.ndarray) -> Norms:
  token = np.linalg.norm(np.asarray(prompt, np.float64), axis=-1)
  table = np.linalg.norm(np.asarray(embeddings, np.float64), axis=-1)
  return Norms(prompt=token, table_mean=float(table.mean()), table_std=float(table.std()),
               table_min=float(table.min()), table_max=float(table.max()),
               above_table_max=int(np.sum(token > table.max())))


def label_hits(neighbour_ids: np.ndarray, labels: Mapping[str, Sequence[int]]
               ) -> Dict[str, List[int]]:
  """Per class label, the prompt positions whose neighbours include one of its token ids."""
  return {label: [p for p in range(neighbour_ids.shape[0])
                  if set(neighbour_ids[p].tolist()) & set(int(i) for i in ids)]
          for label, ids in labels.items()}


def similarity_matrix(prompt: np.ndarray) -> np.ndarray:
  """`[P, P]` cosine similarity between the prompt's tokens."""
  unit = _unit(np.asarray(prompt, np.float64))
  return unit @ unit.T


def reorder(prompt: np.ndarray, how: str, seed: int = 0) -> np.ndarray:
  """The prompt with its tokens 'reversed' or 'shuffled' (a fixed permutation from `seed`)."""
  prompt = np.asarray(prompt)
  if how == "reversed":
    return prompt[::-1].copy()
  if how == "shuffled":
    return prompt[np.random.default_rng(seed).permutation(prompt.shape[0])]
  raise ValueError(f"Unknown order ablation {how!r}; use 'reversed' or 'shuffled'.")


def save_heatmap(matrix: np.ndarray, path: str, title: str = "prompt token cosine similarity"
                 ) -> str:
  """Writes the `[P, P]` matrix as a PNG heatmap (matplotlib, headless)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(5, 4.2))
  image = axis.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
  axis.set_title(title)
  axis.set_xlabel("prompt position")
  axis.set_ylabel("prompt position")
  figure.colorbar(image, ax=axis)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def describe_token(vocabulary: Any, token_id: int) -> str:
  """A vocabulary id as readable text (repr, so spaces and control bytes show)."""
  try:
    text = vocabulary.decode([int(token_id)])
  except Exception:  # pylint: disable=broad-except  (ids a vocabulary cannot decode)
    text = f"<id {token_id}>"
  return repr(text) if text else f"<id {token_id}>"


def neighbour_lines(ids: np.ndarray, sims: np.ndarray, vocabulary: Any) -> List[str]:
  """One line per prompt position: its top-k neighbours with their cosine similarity."""
  return [f"  {p:3d}: " + ", ".join(f"{describe_token(vocabulary, i)} {s:+.2f}"
                                    for i, s in zip(ids[p], sims[p]))
          for p in range(ids.shape[0])]
