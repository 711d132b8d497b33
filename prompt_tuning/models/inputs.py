"""The input-embedding hook: the one place where learned inputs meet a frozen model.

It lives with the models, which call it; the modules that plug into it (`prompt_tuning.prompts`
and others) import it from here, so the models import none of them.

A model embeds its input tokens into an `EmbeddedInputs`, hands it to its hook (when it has
one), and runs its stack on whatever comes back. A fixed prompt, a per-example prompt table,
an input-dependent prompt generator or a Connector all fit this one signature:

    hook(inputs: EmbeddedInputs, *, hook_inputs: Mapping[str, Array] | None,
         enable_dropout: bool) -> EmbeddedInputs

`hook_inputs` carries per-example side information from the batch (for example
`prompt_ids: [B]` for a prompt table); the model forwards it untouched.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Protocol

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class EmbeddedInputs:
  """An embedded, possibly prompted, input sequence.

  Attributes:
    embeddings: `[B, L, H]` input embeddings in the compute dtype.
    mask: `[B, L]` 1 where a slot holds a real token (prompt or input), 0 for padding.
    positions: `[B, L]` int32 position of each slot, used by relative position buckets and
      learned position tables. Padding slots may hold any value.
    input_index: `[B, L]` int32 index of the original input token that each slot holds, -1
      for slots a hook inserted (prompt slots). Lets a decoder-only loss realign its targets.
    visibility: optional `[B, L, L]` bool; where given, query slot i may attend key slot j only
      if `visibility[b, i, j]` (on top of the padding mask and, in a decoder, causality).
  """

  embeddings: jax.Array
  mask: jax.Array
  positions: jax.Array
  input_index: jax.Array
  visibility: Optional[jax.Array] = None


def embedded_from_tokens(embeddings: jax.Array, mask: jax.Array) -> EmbeddedInputs:
  """Wraps plain (un-prompted) embeddings with contiguous positions and identity indices."""
  batch, length = mask.shape
  index = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
  return EmbeddedInputs(
      embeddings=embeddings,
      mask=mask.astype(jnp.int32),
      positions=index,
      input_index=index,
      visibility=None,
  )


class InputHook(Protocol):
  """What a model calls on its embedded inputs; see the module docstring."""

  def __call__(
      self,
      inputs: EmbeddedInputs,
      *,
      hook_inputs: Optional[Mapping[str, Any]] = None,
      enable_dropout: bool = False,
  ) -> EmbeddedInputs:
    ...
