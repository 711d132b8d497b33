"""Hyperparameters of the rotary decoder-only family (Llama, Mistral, Qwen2, Gemma, Gemma 2).

One frozen dataclass covers the five families: they differ only in switches (biases on q/k/v,
Gemma's `1 + scale` norms and embedding scaling, Gemma 2's sandwich norms and soft-capping,
sliding-window layers). Presets carry the published shapes (architecture only; weights come
from the user's checkpoint) and tiny variants for tests.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp

FAMILIES = ("llama", "mistral", "qwen2", "gemma", "gemma2")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """How rotary frequencies are stretched for long contexts.

  Attributes:
    rope_type: 'default' (none), 'linear' (positions divided by `factor`) or 'llama3'
      (low frequencies divided by `factor`, high ones kept, a smooth blend between).
    factor: the stretch factor.
    low_freq_factor, high_freq_factor, original_max_position_embeddings: Llama 3.1's band edges.
  """

  rope_type: str = "default"
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.rope_type not in ROPE_TYPES:
      raise ValueError(f"RoPE type {self.rope_type!r} is not supported; expected one of "
                       f"{ROPE_TYPES}.")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
  """Shapes and numerics of a rotary decoder-only LM.

  Attributes:
    family: 'llama', 'mistral', 'qwen2', 'gemma' or 'gemma2' (the Hugging Face model type an
      export writes).
    vocab_size, emb_dim, mlp_dim: table rows, model width E, feed-forward width F.
    num_heads / num_kv_heads: query heads and key/value heads (grouped-query attention when
      fewer kv heads; each kv head serves `num_heads // num_kv_heads` query heads).
    head_dim: per-head width D.
    num_decoder_layers: depth.
    mlp_activation: gate activation of the gated MLP: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU).
    rope_theta, rope_scaling: rotary base and scaling.
    norm_epsilon: RMSNorm epsilon.
    norm_plus_one: Gemma's norms multiply by `1 + scale` (scale stored around 0).
    qkv_bias: Qwen2's biases on the query, key and value projections.
    scale_embeddings: Gemma multiplies token embeddings by sqrt(E) (in the compute dtype).
    sandwich_norms: Gemma 2's extra norms after attention and around the MLP.
    query_pre_attn_scalar: attention logits are multiplied by its inverse square root (Gemma 2);
      None means D, the usual 1/sqrt(D).
    attn_logit_softcap / final_logit_softcap: `cap * tanh(x / cap)` on attention / output
      logits (Gemma 2); None disables.
    sliding_window: keys further than this many positions back are not attended, on the layers
      `sliding_layers` names (None: no layer slides).
    sliding_layers: indices of the sliding-window layers; None means every layer.
    tie_word_embeddings: the output projection reuses the token embedding table.
    dropout_rate: dropout on the residual branches when a call enables it (0 for these models).
    dtype / param_dtype: compute and storage dtypes.
    remat_policy: 'none', 'full' or 'dots' (as `ModelConfig`).
    bos_token_id: the token every sequence starts with (the checkpoint's `bos_token_id`:
      128000 for Llama 3, 1 for Llama 2 and Mistral, 2 for Gemma); None for a model trained
      without one (Qwen2). `DecoderOnlyModel` builds its batches with it.
  """

  vocab_size: int
  emb_dim: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  num_decoder_layers: int
  family: str = "llama"
  mlp_activation: str = "silu"
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling = RopeScaling()
  norm_epsilon: float = 1e-6
  norm_plus_one: bool = False
  qkv_bias: bool = False
  scale_embeddings: bool = False
  sandwich_norms: bool = False
  query_pre_attn_scalar: Optional[int] = None
  attn_logit_softcap: Optional[float] = None
  final_logit_softcap: Optional[float] = None
  sliding_window: Optional[int] = None
  sliding_layers: Optional[Tuple[int, ...]] = None
  tie_word_embeddings: bool = False
  dropout_rate: float = 0.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  bos_token_id: Optional[int] = None

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}.")
    if self.mlp_activation not in ACTIVATIONS:
      raise ValueError(f"mlp_activation must be one of {ACTIVATIONS}, got "
                       f"{self.mlp_activation!r}.")
    if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}.")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
    if self.remat_policy not in ("none", "full", "dots"):
      raise ValueError(f"remat_policy must be 'none', 'full' or 'dots', got "
                       f"{self.remat_policy!r}.")
    if self.bos_token_id is not None and not 0 <= self.bos_token_id < self.vocab_size:
      raise ValueError(f"bos_token_id={self.bos_token_id} is not a row of the "
                       f"{self.vocab_size}-row embedding table.")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"{name} must be 'float32', 'bfloat16' or 'float16', got "
                         f"{getattr(self, name)!r}.")

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def logits_via_embedding(self) -> bool:  # the name `ModelConfig` uses for the same switch
    return self.tie_word_embeddings

  @property
  def attention_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  def is_sliding(self, layer: int) -> bool:
    if self.sliding_window is None:
      return False
    return self.sliding_layers is None or layer in self.sliding_layers

  def replace(self, **changes) -> "LlamaConfig":
    return dataclasses.replace(self, **changes)


def _gemma(**fields) -> LlamaConfig:
  return LlamaConfig(family="gemma", mlp_activation="gelu_tanh", norm_plus_one=True,
                     scale_embeddings=True, tie_word_embeddings=True, bos_token_id=2, **fields)


def _gemma2(layers: int, **fields) -> LlamaConfig:
  return LlamaConfig(family="gemma2", mlp_activation="gelu_tanh", norm_plus_one=True,
                     scale_embeddings=True, tie_word_embeddings=True, sandwich_norms=True,
                     attn_logit_softcap=50.0, final_logit_softcap=30.0, sliding_window=4096,
                     sliding_layers=tuple(range(0, layers, 2)), num_decoder_layers=layers,
                     bos_token_id=2, **fields)


_LLAMA3_ROPE = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
_PRESETS = {
    "llama2_7b": LlamaConfig(vocab_size=32000, emb_dim=4096, num_heads=32, num_kv_heads=32,
                             head_dim=128, mlp_dim=11008, num_decoder_layers=32,
                             norm_epsilon=1e-5, bos_token_id=1),
    "llama2_70b": LlamaConfig(vocab_size=32000, emb_dim=8192, num_heads=64, num_kv_heads=8,
                              head_dim=128, mlp_dim=28672, num_decoder_layers=80,
                              norm_epsilon=1e-5, bos_token_id=1),
    "llama3_8b": LlamaConfig(vocab_size=128256, emb_dim=4096, num_heads=32, num_kv_heads=8,
                             head_dim=128, mlp_dim=14336, num_decoder_layers=32,
                             rope_theta=500000.0, norm_epsilon=1e-5, bos_token_id=128000),
    "llama3_1_8b": LlamaConfig(vocab_size=128256, emb_dim=4096, num_heads=32, num_kv_heads=8,
                               head_dim=128, mlp_dim=14336, num_decoder_layers=32,
                               rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                               norm_epsilon=1e-5, bos_token_id=128000),
    "llama3_1_70b": LlamaConfig(vocab_size=128256, emb_dim=8192, num_heads=64, num_kv_heads=8,
                                head_dim=128, mlp_dim=28672, num_decoder_layers=80,
                                rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                                norm_epsilon=1e-5, bos_token_id=128000),
    # Mistral 7B v0.3 (v0.1 had 32000 rows, RoPE base 1e4 and a 4096 sliding window).
    "mistral_7b": LlamaConfig(family="mistral", vocab_size=32768, emb_dim=4096, num_heads=32,
                              num_kv_heads=8, head_dim=128, mlp_dim=14336,
                              num_decoder_layers=32, rope_theta=1000000.0, norm_epsilon=1e-5,
                              bos_token_id=1),
    "qwen2_7b": LlamaConfig(family="qwen2", vocab_size=152064, emb_dim=3584, num_heads=28,
                            num_kv_heads=4, head_dim=128, mlp_dim=18944,
                            num_decoder_layers=28, qkv_bias=True, rope_theta=1000000.0),
    "qwen2_72b": LlamaConfig(family="qwen2", vocab_size=152064, emb_dim=8192, num_heads=64,
                             num_kv_heads=8, head_dim=128, mlp_dim=29568,
                             num_decoder_layers=80, qkv_bias=True, rope_theta=1000000.0),
    "gemma_2b": _gemma(vocab_size=256000, emb_dim=2048, num_heads=8, num_kv_heads=1,
                       head_dim=256, mlp_dim=16384, num_decoder_layers=18),
    "gemma_7b": _gemma(vocab_size=256000, emb_dim=3072, num_heads=16, num_kv_heads=16,
                       head_dim=256, mlp_dim=24576, num_decoder_layers=28),
    "gemma2_2b": _gemma2(26, vocab_size=256000, emb_dim=2304, num_heads=8, num_kv_heads=4,
                         head_dim=256, mlp_dim=9216, query_pre_attn_scalar=256),
    "gemma2_9b": _gemma2(42, vocab_size=256000, emb_dim=3584, num_heads=16, num_kv_heads=8,
                         head_dim=256, mlp_dim=14336, query_pre_attn_scalar=256),
    # Tiny variants (width 32, 2 layers, 2 kv heads for 4 query heads) for tests and smoke runs.
    # Their BOS is 2 (as Gemma's), which seqio.ByteVocabulary never writes (its UNK id).
    "llama_tiny": LlamaConfig(vocab_size=512, emb_dim=32, num_heads=4, num_kv_heads=2,
                              head_dim=8, mlp_dim=64, num_decoder_layers=2, bos_token_id=2),
    "mistral_tiny": LlamaConfig(family="mistral", vocab_size=512, emb_dim=32, num_heads=4,
                                num_kv_heads=2, head_dim=8, mlp_dim=64, num_decoder_layers=2,
                                sliding_window=8, bos_token_id=2),
    "qwen2_tiny": LlamaConfig(family="qwen2", vocab_size=512, emb_dim=32, num_heads=4,
                              num_kv_heads=2, head_dim=8, mlp_dim=64, num_decoder_layers=2,
                              qkv_bias=True),
    "gemma_tiny": _gemma(vocab_size=512, emb_dim=32, num_heads=4, num_kv_heads=1, head_dim=8,
                         mlp_dim=64, num_decoder_layers=2),
    "gemma2_tiny": _gemma2(2, vocab_size=512, emb_dim=32, num_heads=4, num_kv_heads=2,
                           head_dim=8, mlp_dim=64, query_pre_attn_scalar=8).replace(
                               sliding_window=8),
}


def preset_names() -> Tuple[str, ...]:
  return tuple(sorted(_PRESETS))


def get_llama_config(name: str, **overrides) -> LlamaConfig:
  """Returns the named preset, with any field overridden by keyword."""
  if name not in _PRESETS:
    raise ValueError(f"Unknown rotary decoder preset {name!r}; known presets: "
                     f"{', '.join(preset_names())}.")
  return _PRESETS[name].replace(**overrides) if overrides else _PRESETS[name]
