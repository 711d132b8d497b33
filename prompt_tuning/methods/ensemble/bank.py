"""One frozen encoder-decoder and a fixed-capacity table of prompts, each row a named prompt.

Ensembles, the multi-task server and the order ablations all run many prompts through one
frozen model. They share this runtime: the model is built once with a `PromptTable` hook of
`capacity` rows, the frozen weights are held as a separate tree, and the table is a plain
`[capacity, P, H]` argument of the jitted functions. Writing a row (a new prompt) therefore
never recompiles anything, and a batch mixes prompts freely through its `prompt_ids`.

Every prompt in a bank has the same length P: prompts of different lengths cannot share one
table without changing what the model attends to, so a mismatch is refused by name.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import PROMPT_IDS_KEY
from prompt_tuning.prompts.providers import PromptTable

TABLE_PARAM = "prompt_table"
HOOK_SCOPE = "input_hook"


def table_model(config: Any, *, capacity: int, prompt_length: int,
                placement: str = "prefix", eos_id: int = 1) -> model_wrappers.EncoderDecoderModel:
  """The model wrapper whose input hook is a `capacity`-row prompt table."""
  hook = PromptHook(provider=PromptTable(num_prompts=capacity, length=prompt_length),
                    placement=placement)
  return model_wrappers.EncoderDecoderModel(EncoderDecoder(config=config, input_hook=hook),
                                            eos_id=eos_id)


class PromptBank:
  """A frozen model plus named prompts; predictions and scores for mixed-prompt batches.

  Thread safety: `add` may run while another thread calls `predict`/`score`; each call reads
  one consistent copy of the table.
  """

  def __init__(self, *, config: Any, frozen_params: Mapping[str, Any], prompt_length: int,
               capacity: int, placement: str = "prefix", eos_id: int = 1):
    """Args:
      config: the model config (`prompt_tuning.models.config`), e.g. `model.module.config`.
      frozen_params: the base model's parameter tree, without the input hook.
      prompt_length: P, the length of every prompt in the bank.
      capacity: how many prompts the table holds (fixed: the compiled shapes depend on it).
      placement: where the hook inserts the prompt ('prefix', ...), as in `PromptHook`.
      eos_id: the token that ends a decode.
    """
    if HOOK_SCOPE in frozen_params:
      raise ValueError(f"frozen_params must not hold '{HOOK_SCOPE}'; the bank owns the prompts.")
    self.config = config
    self.prompt_length = prompt_length
    self.capacity = capacity
    self.width = int(config.emb_dim)
    self.model = table_model(config, capacity=capacity, prompt_length=prompt_length,
                             placement=placement, eos_id=eos_id)
    self.frozen = jax.tree_util.tree_map(jnp.asarray, dict(frozen_params))
    self._table = np.zeros((capacity, prompt_length, self.width), np.float32)
    self._names: List[str] = []
    self._lock = threading.Lock()
    self._predict = jax.jit(self._predict_fn,
                            static_argnames=("decoder_params", "max_decode_length"))
    self._score = jax.jit(self._score_fn)

  # -- the prompts ----------------------------------------------------------------------------

  @property
  def names(self) -> Tuple[str, ...]:
    return tuple(self._names)

  def row(self, name: str) -> int:
    """The table row of prompt `name` (ValueError naming the known prompts otherwise)."""
    try:
      return self._names.index(name)
    except ValueError:
      raise ValueError(f"Unknown prompt {name!r}; known: {sorted(self._names)}.") from None

  def prompt(self, name: str) -> np.ndarray:
    return self._table[self.row(name)].copy()

  def add(self, name: str, prompt: Any, *, replace: bool = False) -> int:
    """Stores `prompt` `[P, H]` as `name`; returns its row. Replacing needs `replace=True`."""
    value = np.asarray(prompt, np.float32)
    want = (self.prompt_length, self.width)
    if value.shape != want:
      raise ValueError(f"Prompt {name!r} has shape {value.shape}; this bank holds prompts of "
                       f"shape {want}.")
    if not np.all(np.isfinite(value)):
      raise ValueError(f"Prompt {name!r} holds NaN or infinite values.")
    with self._lock:
      if name in self._names and not replace:
        raise ValueError(f"Prompt {name!r} is already in the bank; pass replace=True.")
      if name not in self._names and len(self._names) >= self.capacity:
        raise ValueError(f"The bank is full ({self.capacity} prompts); start it with a larger "
                         "capacity.")
      row = self._names.index(name) if name in self._names else len(self._names)
      table = self._table.copy()  # readers keep the copy they took
      table[row] = value
      self._table = table
      if row == len(self._names):
        self._names.append(name)
      return row

  # -- the model ------------------------------------------------------------------------------

  def _params(self, table):
    return {**self.frozen, HOOK_SCOPE: {TABLE_PARAM: table}}

  def _predict_fn(self, table, batch, rng, *, decoder_params, max_decode_length):
    return self.model.predict_batch_with_scores(
        self._params(table), batch, decoder_params=decoder_params, rng=rng,
        max_decode_length=max_decode_length)

  def _score_fn(self, table, batch):
    return self.model.score_batch(self._params(table), batch)

  @staticmethod
  def _with_ids(batch: Mapping[str, Any], prompt_ids: Sequence[int]) -> Dict[str, Any]:
    ids = np.asarray(prompt_ids, np.int32)
    rows = np.shape(batch["encoder_input_tokens"])[0]
    if ids.shape != (rows,):
      raise ValueError(f"prompt_ids must hold one id per row ({rows}), got shape {ids.shape}.")
    return {**{k: np.asarray(v) for k, v in batch.items()}, PROMPT_IDS_KEY: ids}

  def predict(self, batch: Mapping[str, Any], prompt_ids: Sequence[int], *,
              max_decode_length: int, decoder_params: Any = None,
              rng: Optional[jax.Array] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Decodes `[B, N, T]` (best first) and their scores `[B, N]`; row b uses `prompt_ids[b]`.

    `batch` needs `encoder_input_tokens [B, L]`.
    """
    params = model_wrappers.DecoderParams.create(decoder_params)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    decodes, scores = self._predict(self._table, self._with_ids(batch, prompt_ids), rng,
                                    decoder_params=params, max_decode_length=max_decode_length)
    return np.asarray(decodes), np.asarray(scores)

  def score(self, batch: Mapping[str, Any], prompt_ids: Sequence[int]) -> np.ndarray:
    """`[B]` summed target log-likelihoods (encoder/decoder tokens and loss weights needed)."""
    return np.asarray(self._score(self._table, self._with_ids(batch, prompt_ids)))
