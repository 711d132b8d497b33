"""An encoder-decoder wrapper whose loss also sees the prompt: wayward and ranking losses.

Two additions to the usual token cross-entropy, each off unless configured:

* **wayward** (after "Prompt Waywardness", Khashabi et al. 2022): `gamma * sum_i ||p_i -
  e(t_i)||^2`, the squared L2 distance of each prompt token `p_i` to the embedding of the
  i-th token of a given discrete prompt, summed over the prompt (`gamma` 0.01 by default). The
  target embeddings are read from the model's own (frozen) embedding table inside the loss, so
  they are exactly what the model would see for that text. The text must tokenize to exactly
  the prompt's length (no EOS); anything else is refused with both lengths.
* **ranking over class choices**: each example is scored (summed log-likelihood) with every
  class choice as its target; the example whose target is one of the choices pays
  `max(0, margin - (s_correct - max_wrong s_wrong))`, averaged over such examples and added
  with `ranking_weight`. `ranking_margin=0` is the perceptron loss. Examples whose target is
  no choice add nothing.

A subclass of `EncoderDecoderModel` overriding `loss_fn` only: training, evaluation and
prediction use it through the wrapper protocol like any other model.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import gin
import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.engine import models as model_wrappers

PROMPT_PATH = ("input_hook", "prompt")
EMBEDDING_PATH = ("token_embedder", "embedding")


def _leaf(params: Any, path: Tuple[str, ...], what: str) -> jax.Array:
  node = params
  for key in path:
    if key not in node:
      raise ValueError(f"The {what} loss needs the parameter {'/'.join(path)}, which this model "
                       "does not have (a single `Prompt` hook is expected).")
    node = node[key]
  return node


class PromptLossModel(model_wrappers.EncoderDecoderModel):
  """`EncoderDecoderModel` plus the wayward regulariser and a ranking loss over choices."""

  def __init__(self, module, *, vocabulary: Any = None, wayward_prompt: Optional[str] = None,
               wayward_gamma: float = 0.01, class_choices: Sequence[str] = (),
               ranking_weight: float = 0.0, ranking_margin: float = 1.0, **kwargs):
    """Args:
      module: the flax `EncoderDecoder` (its input hook a `Prompt`).
      vocabulary: tokenizes `wayward_prompt` and `class_choices`.
      wayward_prompt: the discrete prompt text; None turns the regulariser off.
      wayward_gamma: its weight (>= 0).
      class_choices: the label strings ranked against each other.
      ranking_weight: weight of the ranking loss (0 turns it off).
      ranking_margin: the hinge margin; 0 makes it the perceptron loss.
      **kwargs: as `EncoderDecoderModel`.
    """
    super().__init__(module, **kwargs)
    if wayward_gamma < 0 or ranking_weight < 0 or ranking_margin < 0:
      raise ValueError("wayward_gamma, ranking_weight and ranking_margin must be >= 0.")
    if (wayward_prompt is not None or ranking_weight) and vocabulary is None:
      raise ValueError("PromptLossModel needs a vocabulary for wayward_prompt / class_choices.")
    if ranking_weight and len(class_choices) < 2:
      raise ValueError(f"A ranking loss needs at least two class_choices, got "
                       f"{list(class_choices)}.")
    self.wayward_gamma, self.ranking_weight = float(wayward_gamma), float(ranking_weight)
    self.ranking_margin = float(ranking_margin)
    self.wayward_ids = (None if wayward_prompt is None else
                        np.asarray(vocabulary.encode(wayward_prompt), np.int32))
    self.choice_ids = [list(vocabulary.encode(c)) + [self.eos_id] for c in class_choices] \
        if ranking_weight else []

  def wayward(self, params: Any) -> jax.Array:
    """`gamma * sum_i ||p_i - e(t_i)||^2` (0 when no discrete prompt is set)."""
    if self.wayward_ids is None:
      return jnp.zeros((), jnp.float32)
    prompt = _leaf(params, PROMPT_PATH, "wayward").astype(jnp.float32)
    if prompt.shape[0] != len(self.wayward_ids):
      raise ValueError(f"The wayward prompt tokenizes to {len(self.wayward_ids)} tokens but the "
                       f"soft prompt has {prompt.shape[0]}; they must match one to one.")
    table = jax.lax.stop_gradient(_leaf(params, EMBEDDING_PATH, "wayward"))
    target = jnp.take(table, jnp.asarray(self.wayward_ids), axis=0).astype(jnp.float32)
    return self.wayward_gamma * jnp.sum(jnp.square(prompt - target))

  def _choice_tokens(self, length: int) -> np.ndarray:
    """`[C, T]` the choices as targets (EOS appended, trimmed to T)."""
    out = np.zeros((len(self.choice_ids), length), np.int32)
    for c, ids in enumerate(self.choice_ids):
      ids = ids[:length]
      out[c, :len(ids)] = ids
    return out

  def ranking(self, params: Any, batch: Any) -> Tuple[jax.Array, jax.Array]:
    """The mean hinge over examples whose target is a choice, and how many there were."""
    targets = batch["decoder_target_tokens"]
    size, length = targets.shape
    choices = jnp.asarray(self._choice_tokens(length))  # [C, T]
    count = choices.shape[0]
    # [C * B] rows: choice-major copies of the batch, each with one choice as its target.
    tiled = {k: jnp.tile(v, (count,) + (1,) * (v.ndim - 1)) for k, v in batch.items()}
    tiled["decoder_target_tokens"] = jnp.repeat(choices, size, axis=0)
    tiled["decoder_input_tokens"] = jnp.concatenate(
        [jnp.zeros((count * size, 1), jnp.int32), tiled["decoder_target_tokens"][:, :-1]], axis=1)
    tiled["decoder_loss_weights"] = (tiled["decoder_target_tokens"] > 0).astype(jnp.float32)
    scores = self.score_batch(params, tiled).reshape(count, size).T  # [B, C]
    correct = jnp.all(targets[:, None, :] == choices[None], axis=-1)  # [B, C]
    has_choice = jnp.any(correct, axis=-1)
    right = jnp.max(jnp.where(correct, scores, -jnp.inf), axis=-1)
    wrong = jnp.max(jnp.where(correct, -jnp.inf, scores), axis=-1)
    hinge = jnp.maximum(0.0, self.ranking_margin - (right - wrong))
    hinge = jnp.where(has_choice, hinge, 0.0)
    used = jnp.sum(has_choice)
    return jnp.sum(hinge) / jnp.maximum(used, 1), used

  def loss_fn(self, params, batch, dropout_rng) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    loss, metrics = super().loss_fn(params, batch, dropout_rng)
    if self.wayward_ids is not None:
      wayward = self.wayward(params)
      loss = loss + wayward
      metrics = {**metrics, "wayward": wayward}
    if self.ranking_weight:
      ranking, used = self.ranking(params, batch)
      loss = loss + self.ranking_weight * ranking
      metrics = {**metrics, "ranking_loss": ranking, "ranking_examples": used}
    return loss, {**metrics, "loss": loss}


try:  # gin name `regularise.PromptLossModel` (gin files import this module)
  gin.external_configurable(PromptLossModel, module="regularise")
except ValueError:  # already registered in this process
  pass
