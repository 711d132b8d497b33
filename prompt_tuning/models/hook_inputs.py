"""Declarations of the per-example side inputs an input hook reads (`hook_inputs`).

A prompt table reads one id per example; an input-dependent prompt generator reads the example's
tokens in its own encoder's tokenisation; other hooks may read float features. A hook (or the
model wrapper around it) declares each input once, and the engine uses the declaration to
initialise the model, to carry the feature from the task's examples through the feature
converter, and to partition it along the batch axis.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class HookInput:
  """One side input of the hook.

  Attributes:
    name: the batch key (and the key of the task's examples).
    shape: the shape of one example's value; `None` entries take a length from the run's
      task feature lengths (e.g. `(None,)` for a token sequence): `task_feature_lengths[name]`
      if set, else the length of the feature `length_from`.
    dtype: numpy dtype name.
    length_from: a task feature (e.g. 'inputs') whose length `None` entries take by default.
  """

  name: str
  shape: Tuple[Optional[int], ...] = ()
  dtype: str = "int32"
  length_from: Optional[str] = None

  def resolved_shape(self, task_feature_lengths: Optional[Mapping[str, int]] = None
                     ) -> Tuple[int, ...]:
    """The per-example shape with `None` entries filled from `task_feature_lengths`."""
    if all(d is not None for d in self.shape):
      return tuple(self.shape)
    lengths = dict(task_feature_lengths or {})
    length = lengths.get(self.name, lengths.get(self.length_from))
    if length is None:
      raise ValueError(f"Hook input {self.name!r} has shape {self.shape}; set its length with "
                       f"task_feature_lengths[{self.name!r}].")
    return tuple(length if d is None else d for d in self.shape)

  def flat_length(self, task_feature_lengths: Optional[Mapping[str, int]] = None) -> int:
    """Elements per example: data pipelines carry the value flattened to this length."""
    return int(math.prod(self.resolved_shape(task_feature_lengths)))

  def placeholder(self, batch_size: int,
                  task_feature_lengths: Optional[Mapping[str, int]] = None) -> np.ndarray:
    """Zeros of the batched shape, for initialising a model."""
    return np.zeros((batch_size,) + self.resolved_shape(task_feature_lengths),
                    np.dtype(self.dtype))
