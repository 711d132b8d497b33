"""`PromptHook`: the input hook that inserts a provider's prompt into the embedded inputs.

A model holds the hook in its `input_hook` field. The provider shares the hook's variable scope,
so its parameters sit directly under the hook's scope: a `Prompt` is `<hook>/prompt` ([P, H]) and
a `PromptTable` is `<hook>/prompt_table` ([K, P, H]); an input-dependent generator's submodules
appear as `<hook>/<submodule>/...` (the scope is named in `engine/params.py`). Checkpoints and
`.npy` exports therefore name a prompt the same way whatever combiner options are chosen.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn

from prompt_tuning.models import inputs as model_inputs
from prompt_tuning.models.hook_inputs import HookInput
from prompt_tuning.prompts import combine


class PromptHook(nn.Module):
  """Calls `provider` for a `[B, P, H]` prompt and inserts it (see `combine.insert_prompt`).

  Attributes:
    provider: a module following `providers.PromptProvider` (Prompt, PromptTable, a generator).
    placement: 'prefix', 'after_bos', 'suffix' or 'before_eos'.
    prompt_attends_input: False keeps prompt queries from seeing input keys.
    causal_prompt: True lets prompt slot r see only prompt slots <= r.
  """

  provider: nn.Module
  placement: str = "prefix"
  prompt_attends_input: bool = True
  causal_prompt: bool = False

  def __post_init__(self):
    combine.check_placement(self.placement)
    super().__post_init__()

  def hook_input_specs(self) -> Tuple[HookInput, ...]:
    """The side inputs the provider reads from the batch (none for a plain prompt)."""
    declare = getattr(self.provider, "hook_input_specs", None)
    return tuple(declare()) if callable(declare) else ()

  def setup(self):
    # Keep the provider's parameters at <hook>/<name> rather than <hook>/provider/<name>.
    nn.share_scope(self, self.provider)

  def __call__(
      self,
      inputs: model_inputs.EmbeddedInputs,
      *,
      hook_inputs: Optional[Mapping[str, Any]] = None,
      enable_dropout: bool = False,
  ) -> model_inputs.EmbeddedInputs:
    prompt = self.provider(inputs, hook_inputs=hook_inputs, enable_dropout=enable_dropout)
    return combine.insert_prompt(
        inputs,
        prompt,
        placement=self.placement,
        prompt_attends_input=self.prompt_attends_input,
        causal_prompt=self.causal_prompt,
    )
