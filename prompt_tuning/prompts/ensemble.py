"""Prompt ensembles as one batched pass: expand the batch N times, then vote.

With a `PromptTable` holding N prompts, an ensemble over a batch of B examples is a single
forward pass over N * B examples. The expanded batch is prompt-major: row `n * B + b` is example
b under prompt `prompt_ids[n]`. Predictions come back in that same order and `majority_vote`
(hashable answers, e.g. decoded strings) or `majority_vote_tokens` (token arrays) reduce them.

Ties: among the answers with the most votes, the one given by the lowest-numbered prompt wins
(prompt order as in the expanded batch), so the result never depends on hashing or sort order.
"""
from __future__ import annotations

import collections
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.prompts.providers import PROMPT_IDS_KEY


def _repeat_batch(x: Any, times: int) -> Any:
  """[B, ...] -> [times * B, ...], the whole batch repeated `times` times."""
  xp = jnp if isinstance(x, jax.Array) else np
  x = xp.asarray(x)
  return xp.tile(x, (times,) + (1,) * (x.ndim - 1))


def expand_for_ensemble(
    batch: Mapping[str, Any],
    num_prompts: int,
    *,
    prompt_ids: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
  """Repeats every feature of `batch` once per prompt and adds `prompt_ids` ([N * B] int32).

  Args:
    batch: features with the batch as their leading axis (all the same size B).
    num_prompts: N.
    prompt_ids: which table row each of the N copies uses; default 0..N-1.

  Returns:
    The expanded batch; row n * B + b is example b with prompt `prompt_ids[n]`.
  """
  if num_prompts <= 0:
    raise ValueError(f"expand_for_ensemble needs a positive num_prompts, got {num_prompts}.")
  if PROMPT_IDS_KEY in batch:
    raise ValueError(f"The batch already has '{PROMPT_IDS_KEY}'; it cannot be expanded again.")
  ids = np.arange(num_prompts) if prompt_ids is None else np.asarray(prompt_ids)
  if ids.shape != (num_prompts,):
    raise ValueError(f"prompt_ids must list {num_prompts} ids, got {ids.tolist()}.")
  sizes = {name: np.shape(value)[0] for name, value in batch.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"Every batch feature needs the same leading size, got {sizes}.")
  batch_size = next(iter(sizes.values()))
  expanded = {name: _repeat_batch(value, num_prompts) for name, value in batch.items()}
  expanded[PROMPT_IDS_KEY] = np.repeat(ids, batch_size).astype(np.int32)
  return expanded


def _check_flat(num_items: int, num_prompts: int) -> int:
  if num_prompts <= 0 or num_items % num_prompts:
    raise ValueError(f"{num_items} predictions cannot be split evenly among {num_prompts} prompts.")
  return num_items // num_prompts


def majority_vote(predictions: Sequence[Hashable], num_prompts: int) -> List[Hashable]:
  """Per example, the answer most of the N prompts gave (ties: lowest-numbered prompt's answer).

  Args:
    predictions: N * B hashable answers in expanded-batch order (row n * B + b).
    num_prompts: N.

  Returns:
    B answers.
  """
  predictions = list(predictions)
  batch_size = _check_flat(len(predictions), num_prompts)
  winners = []
  for b in range(batch_size):
    answers = [predictions[n * batch_size + b] for n in range(num_prompts)]
    votes = collections.Counter(answers)
    top = max(votes.values())
    winners.append(next(a for a in answers if votes[a] == top))
  return winners


def majority_vote_tokens(tokens: Any, num_prompts: int) -> Any:
  """`majority_vote` for token arrays: [N * B, T] -> [B, T], identical rows count as one answer."""
  xp = jnp if isinstance(tokens, jax.Array) else np
  tokens = xp.asarray(tokens)
  batch_size = _check_flat(tokens.shape[0], num_prompts)
  per_prompt = tokens.reshape((num_prompts, batch_size) + tokens.shape[1:])  # [N, B, T...]
  trailing = tuple(range(3, per_prompt.ndim + 1))
  # same[n, m, b]: prompts n and m gave example b the same answer.
  same = xp.all(per_prompt[:, None] == per_prompt[None, :], axis=trailing)
  votes = same.sum(axis=1)  # [N, B]: how many prompts agree with prompt n's answer
  winner = xp.argmax(votes, axis=0)  # the first maximum is the lowest-numbered prompt
  return per_prompt[winner, xp.arange(batch_size)]
