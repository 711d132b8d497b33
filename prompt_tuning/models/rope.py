"""Rotary position embeddings (RoPE) with the scalings the Llama family uses.

Each head's `D` features are rotated as `D/2` pairs `(x[i], x[i + D/2])` (the half-split layout
Hugging Face checkpoints are trained with, not interleaved pairs) by the angle
`position * inv_freq[i]`. Positions come from the caller per slot, so a prompt inserted by an
input hook, padding and cached decoding all rotate by the slot's own position.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.models.llama_config import RopeScaling


def inverse_frequencies(head_dim: int, theta: float, scaling: RopeScaling) -> np.ndarray:
  """`[D/2]` float32 angular frequencies, `theta ** (-2i / D)` after `scaling`."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  if scaling.rope_type == "linear":
    inv_freq = inv_freq / scaling.factor
  elif scaling.rope_type == "llama3":
    inv_freq = _llama3_frequencies(inv_freq, scaling)
  return inv_freq.astype(np.float32)


def _llama3_frequencies(inv_freq: np.ndarray, s: RopeScaling) -> np.ndarray:
  """Llama 3.1: wavelengths longer than `original / low_freq_factor` are stretched by `factor`,
  shorter than `original / high_freq_factor` kept, and the band between blended linearly in
  `original / wavelength`."""
  wavelength = 2 * math.pi / inv_freq
  long_edge = s.original_max_position_embeddings / s.low_freq_factor
  short_edge = s.original_max_position_embeddings / s.high_freq_factor
  stretched = inv_freq / s.factor
  blend = ((s.original_max_position_embeddings / wavelength - s.low_freq_factor)
           / (s.high_freq_factor - s.low_freq_factor))
  between = (1 - blend) * stretched + blend * inv_freq
  return np.where(wavelength > long_edge, stretched,
                  np.where(wavelength < short_edge, inv_freq, between))


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates `x [B, L, H, D]` by `positions [B, L]`; angles in float32, result in x's dtype."""
  angles = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_freq)[None, None]
  cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)  # [B, L, 1, D/2]
  sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
