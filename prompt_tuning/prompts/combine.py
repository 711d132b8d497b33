"""Inserting a `[B, P, H]` prompt into an embedded, right-padded batch.

Every example of a batch is "real tokens, then padding" (mask 1...1 0...0). The prompt is placed
at a per-example insertion point k (its first prompt slot), and the result is again "real tokens,
then padding", now `L + P` long:

  output slot j <  k        holds input slot j
  output slot j in [k, k+P)  holds prompt row j - k
  output slot j >= k + P    holds input slot j - P

Placements pick k:
  'prefix'      k = 0          the prompt comes first (T5 prompt tuning; any encoder or LM input)
  'after_bos'   k = min(1, n)  the prompt follows the first token (a BOS-led decoder-only input)
  'suffix'      k = n          the prompt follows the last real token
  'before_eos'  k = max(n-1,0) the prompt precedes the last real token, which for inputs built
                               with an appended EOS is the EOS
where n is the example's number of real tokens. Since k <= n, padding always ends up last, and
the mapping is one gather per array: no loop over examples.

Positions continue through the prompt: the prompt takes the positions right after the token
before it, and the input slots after it shift by P. For contiguous input positions 0..L-1 the
prompted sequence has contiguous positions 0..L+P-1, which for 'prefix' is exactly prepending the
prompt to the embeddings. `input_index` is -1 on prompt slots.

Attention visibility (a `[B, L+P, L+P]` bool, None when nothing is restricted):
  prompt_attends_input=False   prompt queries see only prompt keys;
  causal_prompt=True           prompt query row r sees prompt keys rows <= r only.
Input queries always see the prompt; among input slots any visibility the inputs carried is kept.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_tuning.models import inputs as model_inputs

PLACEMENTS = ("prefix", "after_bos", "suffix", "before_eos")


def check_placement(placement: str) -> None:
  if placement not in PLACEMENTS:
    raise ValueError(f"Unknown prompt placement {placement!r}; expected one of {PLACEMENTS}.")


def insertion_points(mask: jax.Array, placement: str) -> jax.Array:
  """`[B]` int32 index of the first prompt slot of each example (see the module docstring)."""
  check_placement(placement)
  num_real = jnp.sum(mask > 0, axis=1, dtype=jnp.int32)
  if placement == "prefix":
    return jnp.zeros_like(num_real)
  if placement == "after_bos":
    return jnp.minimum(num_real, 1)
  if placement == "suffix":
    return num_real
  return jnp.maximum(num_real - 1, 0)


def _gather_slots(x: jax.Array, index: jax.Array) -> jax.Array:
  """x: [B, L, ...], index: [B, L'] -> [B, L', ...] (x[b, index[b, j]])."""
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def insert_prompt(
    inputs: model_inputs.EmbeddedInputs,
    prompt: jax.Array,
    *,
    placement: str = "prefix",
    prompt_attends_input: bool = True,
    causal_prompt: bool = False,
) -> model_inputs.EmbeddedInputs:
  """Returns `inputs` with `prompt` ([B, P, H], cast to the embeddings' dtype) inserted.

  See the module docstring for the layout, positions and visibility rules.
  """
  check_placement(placement)
  batch, length, width = inputs.embeddings.shape
  if prompt.ndim != 3 or prompt.shape[0] != batch or prompt.shape[2] != width:
    raise ValueError(
        f"The prompt must be [batch={batch}, prompt_length, embed={width}], got {prompt.shape}.")
  prompt_length = prompt.shape[1]
  prompt = prompt.astype(inputs.embeddings.dtype)

  k = insertion_points(inputs.mask, placement)[:, None]  # [B, 1]
  slot = jnp.arange(length + prompt_length, dtype=jnp.int32)[None, :]  # [1, L+P]
  is_prompt = (slot >= k) & (slot < k + prompt_length)  # [B, L+P]
  after_prompt = slot >= k + prompt_length
  source = jnp.clip(jnp.where(after_prompt, slot - prompt_length, slot), 0, length - 1)
  prompt_row = jnp.clip(slot - k, 0, prompt_length - 1)

  if placement == "prefix":
    # Same result as the gather below, as a plain concatenation (the common, hot case).
    embeddings = jnp.concatenate([prompt, inputs.embeddings], axis=1)
  else:
    embeddings = jnp.where(
        is_prompt[..., None], _gather_slots(prompt, prompt_row),
        _gather_slots(inputs.embeddings, source))

  mask = jnp.where(is_prompt, jnp.ones((), inputs.mask.dtype), _gather_slots(inputs.mask, source))

  # The prompt continues the positions of the token before it (or starts at the first position).
  before = jnp.take_along_axis(inputs.positions, jnp.maximum(k - 1, 0), axis=1)
  first_prompt_position = jnp.where(k > 0, before + 1, inputs.positions[:, :1])
  positions = jnp.where(
      is_prompt, first_prompt_position + (slot - k),
      _gather_slots(inputs.positions, source) + jnp.where(after_prompt, prompt_length, 0))
  input_index = jnp.where(is_prompt, -1, _gather_slots(inputs.input_index, source))

  visibility = _visibility(
      inputs.visibility, is_prompt, prompt_row, source,
      prompt_attends_input=prompt_attends_input, causal_prompt=causal_prompt)
  return model_inputs.EmbeddedInputs(
      embeddings=embeddings,
      mask=mask,
      positions=positions.astype(inputs.positions.dtype),
      input_index=input_index.astype(inputs.input_index.dtype),
      visibility=visibility,
  )


def _visibility(
    input_visibility,
    is_prompt: jax.Array,
    prompt_row: jax.Array,
    source: jax.Array,
    *,
    prompt_attends_input: bool,
    causal_prompt: bool,
):
  """`[B, L', L']` visibility of the prompted sequence, or None when unrestricted."""
  if input_visibility is None and prompt_attends_input and not causal_prompt:
    return None
  query_prompt = is_prompt[:, :, None]
  key_prompt = is_prompt[:, None, :]
  if input_visibility is None:
    among_inputs = jnp.ones(query_prompt.shape[:2] + key_prompt.shape[2:], bool)
  else:
    rows = _gather_slots(input_visibility.astype(bool), source)  # [B, L', L]
    among_inputs = jnp.take_along_axis(rows, source[:, None, :], axis=2)  # [B, L', L']
  if causal_prompt:
    among_prompt = prompt_row[:, None, :] <= prompt_row[:, :, None]
  else:
    among_prompt = jnp.ones_like(among_inputs)
  return jnp.where(
      query_prompt,
      jnp.where(key_prompt, among_prompt, prompt_attends_input),
      jnp.where(key_prompt, True, among_inputs),
  )
