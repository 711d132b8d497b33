"""The input-hook contract, re-exported from `prompt_tuning.models.inputs` where it lives.

Kept so that `from prompt_tuning.prompts import base` and `base.EmbeddedInputs` keep working.
"""
from prompt_tuning.models.inputs import EmbeddedInputs, InputHook, embedded_from_tokens

__all__ = ["EmbeddedInputs", "InputHook", "embedded_from_tokens"]
