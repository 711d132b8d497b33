"""Model hyperparameters as one small frozen dataclass, plus named presets.

Layers receive a `ModelConfig` and nothing else from the run, so a model never sees optimizer or
data settings. Presets carry the published shapes of T5 1.0, T5 1.1 (and its LM-adapted
checkpoints, which share the v1.1 shapes) and mT5; `tiny` presets exist for tests.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import jax.numpy as jnp

from prompt_tuning.models.kernels import IMPLEMENTATIONS

_ACTIVATIONS = ("relu", "gelu", "linear")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Shapes and numerics of a T5-family encoder-decoder or a decoder-only LM.

  Attributes:
    vocab_size: rows of the token embedding table (T5: 32128, mT5: 250112).
    emb_dim: model width E.
    num_heads: attention heads.
    head_dim: per-head width D (attention kernels are [E, num_heads * head_dim]).
    mlp_dim: feed-forward width F.
    num_encoder_layers: encoder depth (ignored by the decoder-only model).
    num_decoder_layers: decoder depth.
    mlp_activations: ('relu',) for T5 1.0; ('gelu', 'linear') is the gated-GELU of T5 1.1 / mT5.
    logits_via_embedding: tie the output projection to the token embedding (T5 1.0).
    dropout_rate: dropout used when a call enables dropout.
    relative_attention_num_buckets / relative_attention_max_distance: T5 position buckets.
    position_embedding: 'relative' (T5 buckets) or 'learned' (absolute table, decoder-only).
    max_length: rows of the learned absolute position table.
    layer_norm_epsilon: RMS norm epsilon.
    dtype: compute dtype of activations and matmuls ('float32' or 'bfloat16').
    param_dtype: storage dtype of parameters.
    remat_policy: 'none', 'full' (recompute each layer) or 'dots' (keep matmul outputs).
    attention_impl / mlp_impl: how attention and the MLP input products are computed (same
      values, different backward passes): 'xla' (plain code, differentiated by JAX),
      'custom_vjp' (a hand-written backward pass tuned for XLA:CPU) or 'auto' (custom_vjp
      when JAX's default backend is the CPU, xla otherwise). See `models/kernels.py`.
  """

  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  mlp_activations: Tuple[str, ...] = ("gelu", "linear")
  logits_via_embedding: bool = False
  dropout_rate: float = 0.0
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  position_embedding: str = "relative"
  max_length: int = 2048
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  attention_impl: str = "auto"
  mlp_impl: str = "auto"

  def __post_init__(self):
    for act in self.mlp_activations:
      if act not in _ACTIVATIONS:
        raise ValueError(f"mlp_activations has unknown activation {act!r}; "
                         f"expected one of {_ACTIVATIONS}.")
    if self.position_embedding not in ("relative", "learned"):
      raise ValueError(
          f"position_embedding must be 'relative' or 'learned', got {self.position_embedding!r}.")
    if self.remat_policy not in ("none", "full", "dots"):
      raise ValueError(f"remat_policy must be 'none', 'full' or 'dots', got {self.remat_policy!r}.")
    for name in ("attention_impl", "mlp_impl"):
      if getattr(self, name) not in IMPLEMENTATIONS:
        raise ValueError(
            f"{name} must be one of {IMPLEMENTATIONS}, got {getattr(self, name)!r}.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{name} must be 'float32', 'bfloat16' or 'float16', "
                         f"got {getattr(self, name)!r}.")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)


def _t5_1_1(emb, heads, mlp, layers, vocab=32128, head_dim=64):
  return ModelConfig(vocab_size=vocab, emb_dim=emb, num_heads=heads, head_dim=head_dim,
                     mlp_dim=mlp, num_encoder_layers=layers, num_decoder_layers=layers,
                     mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def _t5_1_0(emb, heads, mlp, layers, head_dim=64):
  return ModelConfig(vocab_size=32128, emb_dim=emb, num_heads=heads, head_dim=head_dim,
                     mlp_dim=mlp, num_encoder_layers=layers, num_decoder_layers=layers,
                     mlp_activations=("relu",), logits_via_embedding=True)


_PRESETS = {
    # T5 1.1; the LM-adapted ("lm100k") checkpoints have the same shapes.
    "t5_1_1_small": _t5_1_1(512, 6, 1024, 8),
    "t5_1_1_base": _t5_1_1(768, 12, 2048, 12),
    "t5_1_1_large": _t5_1_1(1024, 16, 2816, 24),
    "t5_1_1_xl": _t5_1_1(2048, 32, 5120, 24),
    "t5_1_1_xxl": _t5_1_1(4096, 64, 10240, 24),
    # T5 1.0 (ReLU, tied logits).
    "t5_1_0_small": _t5_1_0(512, 8, 2048, 6),
    "t5_1_0_base": _t5_1_0(768, 12, 3072, 12),
    "t5_1_0_large": _t5_1_0(1024, 16, 4096, 24),
    "t5_1_0_3b": _t5_1_0(1024, 32, 16384, 24, head_dim=128),
    "t5_1_0_11b": _t5_1_0(1024, 128, 65536, 24, head_dim=128),
    # mT5: the v1.1 recipe with a 250k vocabulary.
    "mt5_small": _t5_1_1(512, 6, 1024, 8, vocab=250112),
    "mt5_base": _t5_1_1(768, 12, 2048, 12, vocab=250112),
    "mt5_large": _t5_1_1(1024, 16, 2816, 24, vocab=250112),
    "mt5_xl": _t5_1_1(2048, 32, 5120, 24, vocab=250112),
    "mt5_xxl": _t5_1_1(4096, 64, 10240, 24, vocab=250112),
    # The shape of the T5X test checkpoint `test_t5_1_1_tiny` (2 heads of width 2, 4 buckets
    # reaching distance 8).
    "t5_1_1_tiny": ModelConfig(vocab_size=32128, emb_dim=4, num_heads=2, head_dim=2, mlp_dim=8,
                               num_encoder_layers=2, num_decoder_layers=2,
                               relative_attention_num_buckets=4,
                               relative_attention_max_distance=8),
    # A small decoder-only LM for tests and smoke runs.
    "decoder_only_tiny": ModelConfig(vocab_size=512, emb_dim=32, num_heads=4, head_dim=8,
                                     mlp_dim=64, num_encoder_layers=0, num_decoder_layers=2,
                                     relative_attention_num_buckets=16,
                                     relative_attention_max_distance=32),
}
for _size in ("small", "base", "large", "xl", "xxl"):
  _PRESETS[f"t5_1_1_lm100k_{_size}"] = _PRESETS[f"t5_1_1_{_size}"]


def preset_names() -> Tuple[str, ...]:
  return tuple(sorted(_PRESETS))


def get_config(name: str, **overrides) -> ModelConfig:
  """Returns the named preset, with any field overridden by keyword."""
  if name not in _PRESETS:
    raise ValueError(f"Unknown model preset {name!r}; known presets: {', '.join(preset_names())}.")
  return _PRESETS[name].replace(**overrides) if overrides else _PRESETS[name]
