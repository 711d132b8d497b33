"""The input-dependent prompt generator: a prompt provider that reads the example's tokens.

    tokens [B, L'] --(frozen small T5 encoder, own soft prompt prepended)--> encoded [B, Pe+L', E']
    queries [P, E'] --(cross-attention block over encoded)--(2 self-attention blocks)-->
    RMS norm --(projection E' -> H)--> prompt [B, P, H]

`PromptGenerator` plugs into `prompts.hooks.PromptHook` like a fixed `Prompt`: the hook inserts
its `[B, P, H]` output into the frozen LM's embedded input. The small encoder reads the example
in its own tokenisation and length (the hook input `generator_tokens`, `[B, L']`), so the LM
and the generator may use different vocabularies. E' is the small encoder's width, H the LM's.

Parameters (under the hook's scope, `input_hook/`):
  small_encoder/token_embedder/embedding, small_encoder/encoder/...   frozen: T5 names with the
      prefix `input_hook/small_encoder/`, read from a T5 checkpoint (see `groups.idpt_groups`);
  encoder_prompt [Pe, E'], queries [P, E'], cross_block/..., self_block_{i}/..., output_norm/,
  projection/kernel [E', H]                                           trained and exported.

The blocks reuse the LM's own layers (`DecoderLayer` without causality for the cross-attention
block, `EncoderLayer` for the self-attention blocks) at the small encoder's configuration, so
they carry the same logical axis names and partition with the same rules. The queries have no
position bias: each query is its own learned vector, which already tells them apart.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from prompt_tuning import axes
from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.hook_inputs import HookInput
from prompt_tuning.models.layers import Dense, Embed, RMSNorm, mask_to_bias
from prompt_tuning.models.transformer import DecoderLayer, EncoderLayer, EncoderStack
from prompt_tuning.prompts import base
from prompt_tuning.prompts import combine

GENERATOR_TOKENS = "generator_tokens"
SMALL_ENCODER = "small_encoder"


class SmallEncoder(nn.Module):
  """A T5 encoder (token embedder + encoder stack) under T5's own parameter names.

  `__call__(tokens [B, L], prompt [Pe, E] or None)` prepends the prompt to the embedded tokens
  and returns `(encoded [B, Pe + L, E], mask [B, Pe + L])`.
  """

  config: ModelConfig

  def setup(self):
    self.token_embedder = Embed(self.config.vocab_size, self.config)
    self.encoder = EncoderStack(self.config)

  def __call__(self, tokens: jax.Array, prompt: Optional[jax.Array] = None,
               enable_dropout: bool = False) -> Tuple[jax.Array, jax.Array]:
    inputs = base.embedded_from_tokens(self.token_embedder(tokens), tokens > 0)
    if prompt is not None:
      batch_prompt = jnp.broadcast_to(prompt[None], (tokens.shape[0],) + prompt.shape)
      inputs = combine.insert_prompt(inputs, batch_prompt, placement="prefix")
    return self.encoder(inputs, enable_dropout=enable_dropout), inputs.mask


def _uniform(scale: float) -> Callable:
  def init(rng, shape, dtype=jnp.float32):
    return jax.random.uniform(rng, shape, dtype, -scale, scale)
  return init


class PromptGenerator(nn.Module):
  """Computes each example's `[P, H]` prompt from its own tokens (see the module docstring).

  Attributes:
    encoder_config: the small encoder's `ModelConfig` (T5 1.1 base by default in gin); the
      query and self-attention blocks use it too (width, heads, MLP).
    length: P, the prompt length the LM sees.
    encoder_prompt_length: Pe, the small encoder's own learned prompt (0 for none).
    num_self_attention_blocks: self-attention blocks after the cross-attention block.
    input_name: the hook input holding the small encoder's tokens `[B, L']`.
    length_from: the task feature whose length `L'` defaults to (when the run's task feature
      lengths do not name `input_name`).
    query_init_scale / encoder_prompt_init_scale: uniform init ranges of the learned rows.
  """

  encoder_config: ModelConfig
  length: int = 400
  encoder_prompt_length: int = 20
  num_self_attention_blocks: int = 2
  input_name: str = GENERATOR_TOKENS
  length_from: str = "inputs"
  query_init_scale: float = 1.0
  encoder_prompt_init_scale: float = 0.5

  def __post_init__(self):
    for name in ("length", "num_self_attention_blocks"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"PromptGenerator.{name} must be a positive int, got {value!r}.")
    if not isinstance(self.encoder_prompt_length, int) or self.encoder_prompt_length < 0:
      raise ValueError(f"PromptGenerator.encoder_prompt_length must be an int >= 0, got "
                       f"{self.encoder_prompt_length!r}.")
    super().__post_init__()

  def hook_input_specs(self) -> Tuple[HookInput, ...]:
    return (HookInput(name=self.input_name, shape=(None,), dtype="int32",
                      length_from=self.length_from),)

  def _tokens(self, inputs: base.EmbeddedInputs,
              hook_inputs: Optional[Mapping[str, Any]]) -> jax.Array:
    if not hook_inputs or self.input_name not in hook_inputs:
      raise ValueError(f"The prompt generator needs the hook input {self.input_name!r} (the "
                       f"example's tokens for its encoder) but the batch has "
                       f"{sorted(hook_inputs or {})}.")
    tokens = jnp.asarray(hook_inputs[self.input_name])
    batch = inputs.embeddings.shape[0]
    if tokens.ndim != 2 or tokens.shape[0] != batch:
      raise ValueError(f"Hook input {self.input_name!r} must be [batch={batch}, length] tokens, "
                       f"got shape {tokens.shape}.")
    return tokens.astype(jnp.int32)

  @nn.compact
  def __call__(self, inputs: base.EmbeddedInputs, *,
               hook_inputs: Optional[Mapping[str, Any]] = None,
               enable_dropout: bool = False) -> jax.Array:
    cfg = self.encoder_config
    tokens = self._tokens(inputs, hook_inputs)
    batch, lm_width = inputs.embeddings.shape[0], inputs.embeddings.shape[-1]

    encoder_prompt = None
    if self.encoder_prompt_length:
      encoder_prompt = self.param(
          "encoder_prompt",
          nn.with_logical_partitioning(_uniform(self.encoder_prompt_init_scale),
                                       (axes.PROMPT_LENGTH, axes.EMBED)),
          (self.encoder_prompt_length, cfg.emb_dim), cfg.parameter_dtype)
    encoded, encoder_mask = SmallEncoder(cfg, name=SMALL_ENCODER)(tokens, encoder_prompt,
                                                                   enable_dropout)

    queries = self.param(
        "queries", nn.with_logical_partitioning(_uniform(self.query_init_scale),
                                                (axes.PROMPT_LENGTH, axes.EMBED)),
        (self.length, cfg.emb_dim), cfg.parameter_dtype)
    x = jnp.broadcast_to(queries[None].astype(cfg.compute_dtype),
                         (batch, self.length, cfg.emb_dim))
    full = mask_to_bias(jnp.ones((batch, self.length, self.length), bool))
    cross = mask_to_bias(jnp.broadcast_to(encoder_mask.astype(bool)[:, None, :],
                                          (batch, self.length, encoder_mask.shape[1])))
    x = DecoderLayer(cfg, name="cross_block")(x, full, encoded, cross, enable_dropout)
    for i in range(self.num_self_attention_blocks):
      x = EncoderLayer(cfg, name=f"self_block_{i}")(x, full, enable_dropout)
    x = RMSNorm(cfg, name="output_norm")(x)
    prompt = Dense(lm_width, (axes.EMBED, axes.PROMPT_EMBED), cfg, name="projection")(x)
    return nn.with_logical_constraint(prompt,
                                      (axes.BATCH, axes.PROMPT_LENGTH, axes.PROMPT_EMBED))
