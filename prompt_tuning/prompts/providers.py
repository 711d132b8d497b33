"""Prompt providers: modules that say which `[B, P, H]` prompt each example gets.

A provider is called as

    provider(inputs: EmbeddedInputs, *, hook_inputs, enable_dropout) -> [B, P, H]

and `hooks.PromptHook` inserts what it returns. A fixed `Prompt` broadcasts one learned prompt
to the batch; a `PromptTable` gathers each example's prompt by `hook_inputs['prompt_ids']`, so
one batch can mix tasks or run an ensemble; an input-dependent generator computes `p(x)` from
`inputs`. All three plug into the same hook.

Providers return their parameter dtype; the hook casts to the model's compute dtype.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models import inputs as model_inputs
from prompt_tuning.models.hook_inputs import HookInput
from prompt_tuning.prompts import initializers

PROMPT_IDS_KEY = "prompt_ids"


class PromptProvider(Protocol):
  """What `PromptHook` calls to get the prompt; see the module docstring."""

  def __call__(
      self,
      inputs: model_inputs.EmbeddedInputs,
      *,
      hook_inputs: Optional[Mapping[str, Any]] = None,
      enable_dropout: bool = False,
  ) -> jax.Array:
    ...


def _check_positive(name: str, value: int, owner: str) -> None:
  if not isinstance(value, int) or value <= 0:
    raise ValueError(f"{owner}.{name} must be a positive int, got {value!r}.")


class Prompt(nn.Module):
  """One learned `[P, H]` prompt shared by every example (parameter `prompt`).

  H is taken from the input embeddings. The parameter's logical axes are
  (PROMPT_LENGTH, PROMPT_EMBED), which the default partitioning rules replicate.

  Attributes:
    length: P, the number of prompt slots.
    initializer: `init(rng, (P, H), dtype)`; see `initializers`.
    param_dtype: storage dtype of the prompt.
  """

  length: int
  initializer: initializers.Initializer = initializers.random_uniform()
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_positive("length", self.length, "Prompt")
    super().__post_init__()

  @nn.compact
  def __call__(
      self,
      inputs: model_inputs.EmbeddedInputs,
      *,
      hook_inputs: Optional[Mapping[str, Any]] = None,
      enable_dropout: bool = False,
  ) -> jax.Array:
    del hook_inputs, enable_dropout  # The same prompt for every example.
    batch, _, width = inputs.embeddings.shape
    prompt = self.param(
        "prompt",
        nn.with_logical_partitioning(self.initializer, (axes.PROMPT_LENGTH, axes.PROMPT_EMBED)),
        (self.length, width),
        self.param_dtype,
    )
    # [P, H] -> [B, P, H]
    return jnp.broadcast_to(prompt[None], (batch, self.length, width))


class PromptTable(nn.Module):
  """K learned `[P, H]` prompts (parameter `prompt_table`, `[K, P, H]`), one chosen per example.

  Example b gets prompt `hook_inputs['prompt_ids'][b]`. An id outside [0, K) cannot be caught
  inside a compiled step, so its prompt is all NaN: the mistake shows in the loss, not silently.

  Attributes:
    num_prompts: K.
    length: P.
    initializer: `init(rng, (K, P, H), dtype)`; `initializers.per_prompt(...)` lifts a [P, H]
      initializer, `initializers.stack_initializers([...])` gives each prompt its own.
    param_dtype: storage dtype of the table.
  """

  num_prompts: int
  length: int
  initializer: initializers.Initializer = initializers.per_prompt(initializers.random_uniform())
  param_dtype: Any = jnp.float32

  def __post_init__(self):
    _check_positive("num_prompts", self.num_prompts, "PromptTable")
    _check_positive("length", self.length, "PromptTable")
    super().__post_init__()

  def hook_input_specs(self) -> Tuple[HookInput, ...]:
    """Each example's row of the table, read from the batch's `prompt_ids`."""
    return (HookInput(name=PROMPT_IDS_KEY, shape=(), dtype="int32"),)

  @nn.compact
  def __call__(
      self,
      inputs: model_inputs.EmbeddedInputs,
      *,
      hook_inputs: Optional[Mapping[str, Any]] = None,
      enable_dropout: bool = False,
  ) -> jax.Array:
    del enable_dropout
    batch, _, width = inputs.embeddings.shape
    if not hook_inputs or PROMPT_IDS_KEY not in hook_inputs:
      raise ValueError(
          f"PromptTable needs hook_inputs['{PROMPT_IDS_KEY}'] ([batch] ints) to pick each "
          "example's prompt.")
    prompt_ids = jnp.asarray(hook_inputs[PROMPT_IDS_KEY])
    if prompt_ids.shape != (batch,):
      raise ValueError(
          f"hook_inputs['{PROMPT_IDS_KEY}'] must have shape ({batch},), got {prompt_ids.shape}.")
    table = self.param(
        "prompt_table",
        nn.with_logical_partitioning(
            self.initializer, (axes.PROMPT_TABLE, axes.PROMPT_LENGTH, axes.PROMPT_EMBED)),
        (self.num_prompts, self.length, width),
        self.param_dtype,
    )
    # [K, P, H] gathered by [B] -> [B, P, H]; negative ids would wrap around, so mask them too.
    valid = (prompt_ids >= 0) & (prompt_ids < self.num_prompts)
    prompts = jnp.take(table, jnp.clip(prompt_ids, 0, self.num_prompts - 1), axis=0)
    return jnp.where(valid[:, None, None], prompts, jnp.asarray(jnp.nan, prompts.dtype))
