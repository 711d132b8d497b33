"""A passage re-ranker: a T5 encoder reading (question, passage) pairs, one score per pair.

The module's parameters are named exactly as the T5 encoder's (`token_embedder/embedding`,
`encoder/...`), so any T5 checkpoint (T5X, orbax, Hugging Face, a run of this project) is its
base through the normal import; only `reranker_head/` (a `[E, 1]` projection of the mean of the
encoder's output over real tokens) is new. T5 has no [CLS] token, hence the mean.

Training follows the DPR reader's passage selection: each example is a group of `1 + N`
passages for one question, the positive first; the loss is the cross-entropy of a softmax over
the group's scores with the positive as the label. The position carries no information: every
pair is encoded on its own and its score depends only on its tokens.

`RerankerModel` implements the engine's `ModelWrapper` protocol, so the unchanged trainer trains
it; `RerankerFeatureConverter` turns the task's flat `passages` feature (`[(1 + N) * L]` ids,
each pair padded to `L`) into the model's `reranker_tokens`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import seqio
import tensorflow as tf

from prompt_tuning.models.config import ModelConfig
from prompt_tuning.models.layers import Embed
from prompt_tuning.models.transformer import EncoderStack
from prompt_tuning.prompts.base import embedded_from_tokens

TASK_FEATURE = "passages"
MODEL_FEATURE = "reranker_tokens"
HEAD = "reranker_head"
HEAD_PATTERN = rf"^{HEAD}/"
# A passage slot without tokens (group padding) gets this score, so softmax gives it ~0 mass.
_EMPTY_SCORE = -1e9


class CrossEncoder(nn.Module):
  """`[N, L]` (question, passage) token ids -> `[N]` float32 relevance scores."""

  config: ModelConfig

  def setup(self):
    self.token_embedder = Embed(self.config.vocab_size, self.config)
    self.encoder = EncoderStack(self.config)
    self.reranker_head = nn.Dense(1, kernel_init=nn.initializers.normal(0.02),
                                  dtype=jnp.float32, name=HEAD)

  def __call__(self, tokens: jax.Array, *, enable_dropout: bool = False) -> jax.Array:
    mask = (tokens > 0).astype(jnp.int32)
    inputs = embedded_from_tokens(self.token_embedder(tokens), mask)
    encoded = self.encoder(inputs, enable_dropout=enable_dropout).astype(jnp.float32)
    weights = mask[..., None].astype(jnp.float32)
    pooled = jnp.sum(encoded * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return self.reranker_head(pooled)[:, 0]


class RerankerFeatureConverter(seqio.FeatureConverter):
  """`passages [(1 + N) * L]` -> `reranker_tokens [(1 + N) * L]` (no packing, zero-padded)."""

  TASK_FEATURES = {TASK_FEATURE: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {MODEL_FEATURE: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, **kwargs):
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths[TASK_FEATURE]

    def convert(example):
      tokens = example[TASK_FEATURE][:length]
      tokens = tf.pad(tokens, [[0, length - tf.shape(tokens)[0]]])
      return {MODEL_FEATURE: tf.ensure_shape(tokens, [length])}

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    if TASK_FEATURE not in task_feature_lengths:
      raise ValueError(f"A re-ranker task needs a {TASK_FEATURE!r} length ((1 + negatives) * "
                       f"passage length); got {dict(task_feature_lengths)}.")
    return {MODEL_FEATURE: int(task_feature_lengths[TASK_FEATURE])}


class RerankerModel:
  """The engine's `ModelWrapper` for a `CrossEncoder` (passage selection, no decoding).

  Args:
    module: the `CrossEncoder`.
    passage_length: L, the tokens of one (question, passage) pair; a batch's
      `reranker_tokens` `[B, G * L]` is read as `[B, G, L]` groups, the positive first.
  """

  def __init__(self, module: CrossEncoder, *, passage_length: int):
    if passage_length < 1:
      raise ValueError(f"passage_length must be positive, got {passage_length}.")
    self.module = module
    self.passage_length = int(passage_length)

  # -- data and parameters -------------------------------------------------------------------

  def feature_converter(self) -> RerankerFeatureConverter:
    return RerankerFeatureConverter()

  def model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    lengths = self.feature_converter().get_model_feature_lengths(task_feature_lengths)
    if lengths[MODEL_FEATURE] % self.passage_length:
      raise ValueError(f"The {TASK_FEATURE!r} length {lengths[MODEL_FEATURE]} is not a multiple "
                       f"of the re-ranker's passage_length {self.passage_length}.")
    return lengths

  def initial_variables(self, rng: jax.Array, lengths: Mapping[str, int]) -> Any:
    del lengths  # parameter shapes do not depend on the group size
    return self.module.init(rng, jnp.ones((1, self.passage_length), jnp.int32))

  def hook_input_specs(self) -> Tuple[()]:
    return ()

  def prompt_export_info(self) -> Optional[Dict[str, Any]]:
    return None

  def max_decode_length(self, task_feature_lengths: Mapping[str, int]) -> int:
    del task_feature_lengths
    return 1

  # -- scores ----------------------------------------------------------------------------------

  def groups(self, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The batch's pairs as `[B, G, L]` token ids."""
    if MODEL_FEATURE not in batch:
      raise ValueError(f"The batch lacks {MODEL_FEATURE!r}; it has {sorted(batch)}.")
    tokens = batch[MODEL_FEATURE]
    if tokens.ndim == 2:
      if tokens.shape[1] % self.passage_length:
        raise ValueError(f"{MODEL_FEATURE} of shape {tokens.shape} does not split into "
                         f"passages of length {self.passage_length}.")
      tokens = tokens.reshape(tokens.shape[0], -1, self.passage_length)
    if tokens.ndim != 3:
      raise ValueError(f"{MODEL_FEATURE} must be [B, G * L] or [B, G, L], got {tokens.shape}.")
    return tokens

  def passage_scores(self, params: Any, tokens: jax.Array,
                     dropout_rng: Optional[jax.Array] = None) -> jax.Array:
    """`[B, G, L]` pairs -> `[B, G]` scores; empty slots (all padding) score `_EMPTY_SCORE`."""
    batch, group, length = tokens.shape
    kwargs = ({"enable_dropout": False} if dropout_rng is None else
              {"enable_dropout": True, "rngs": {"dropout": dropout_rng}})
    scores = self.module.apply({"params": params}, tokens.reshape(batch * group, length),
                               **kwargs).reshape(batch, group)
    return jnp.where(jnp.any(tokens > 0, axis=-1), scores, _EMPTY_SCORE)

  def loss_fn(self, params: Any, batch: Mapping[str, jax.Array],
              dropout_rng: Optional[jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Passage-selection cross-entropy, the positive (slot 0) as the label."""
    scores = self.passage_scores(params, self.groups(batch), dropout_rng)
    log_probs = jax.nn.log_softmax(scores, axis=-1)
    loss = -jnp.mean(log_probs[:, 0])
    # Rank of the positive within its group (0 = first); ties count against it.
    rank = jnp.sum(scores[:, 1:] >= scores[:, :1], axis=-1)
    metrics = {"loss": loss, "cross_ent_loss": loss,
               "accuracy": jnp.mean((rank == 0).astype(jnp.float32)),
               "mean_positive_rank": jnp.mean(rank.astype(jnp.float32))}
    return loss, metrics

  def score_batch(self, params: Any, batch: Mapping[str, jax.Array]) -> jax.Array:
    """`[B]` log-probability the re-ranker gives the positive (slot 0) within its group."""
    scores = self.passage_scores(params, self.groups(batch))
    return jax.nn.log_softmax(scores, axis=-1)[:, 0]

  def predict_batch_with_scores(self, params: Any, batch: Mapping[str, jax.Array],
                                **kwargs) -> Tuple[jax.Array, jax.Array]:
    """The chosen slot `[B, 1, 1]` and its log-probability `[B, 1]`."""
    del kwargs
    log_probs = jax.nn.log_softmax(self.passage_scores(params, self.groups(batch)), axis=-1)
    best = jnp.argmax(log_probs, axis=-1)
    return best[:, None, None].astype(jnp.int32), jnp.max(log_probs, axis=-1)[:, None]

  def predict_batch(self, params: Any, batch: Mapping[str, jax.Array], **kwargs) -> jax.Array:
    decodes, _ = self.predict_batch_with_scores(params, batch, **kwargs)
    return decodes[:, 0]
