"""The benchmarked shapes: a model preset plus the batch it is stepped on.

`small` and `base` are the T5 1.1 shapes the benchmark reports on (batch 8, 256 input tokens, a
100-token prompt, 32 target tokens). `tiny` is a seconds-long stand-in for `--quick` runs and
tests; its numbers mean nothing.
"""
from __future__ import annotations

import dataclasses

from prompt_tuning.models.config import ModelConfig, get_config


@dataclasses.dataclass(frozen=True)
class BenchShape:
  """A model configuration and the batch dimensions of one training step."""

  name: str
  config: ModelConfig
  batch: int
  input_length: int
  prompt_length: int
  target_length: int

  @property
  def encoder_length(self) -> int:
    """Tokens the encoder runs over: the prompt plus the input."""
    return self.prompt_length + self.input_length

  @property
  def tokens_per_step(self) -> int:
    """Real example tokens per step (inputs and targets; prompt slots are not counted)."""
    return self.batch * (self.input_length + self.target_length)


def _tiny_config() -> ModelConfig:
  return ModelConfig(vocab_size=256, emb_dim=32, num_heads=2, head_dim=8, mlp_dim=64,
                     num_encoder_layers=1, num_decoder_layers=1)


def get_shape(name: str) -> BenchShape:
  """The named benchmark shape ('tiny', 'small' or 'base')."""
  if name == "tiny":
    return BenchShape("tiny", _tiny_config(), batch=2, input_length=16, prompt_length=4,
                      target_length=8)
  if name in ("small", "base"):
    return BenchShape(name, get_config(f"t5_1_1_{name}"), batch=8, input_length=256,
                      prompt_length=100, target_length=32)
  raise ValueError(f"Unknown benchmark shape {name!r}; expected 'tiny', 'small' or 'base'.")


SHAPE_NAMES = ("tiny", "small", "base")
