"""Model wrappers: the loss, scores and predictions a trainer and evaluator need from a module.

A wrapper holds a flax module (`EncoderDecoder` or `DecoderOnly`) and the few settings that
turn its logits into a training signal. It is plain Python, not a flax module: its methods are
pure functions of `(params, batch, ...)` that a trainer jits; `decoder_params` and
`max_decode_length` shape the compiled search, so bind them outside the jitted arguments
(e.g. with `functools.partial`). `params` is the full parameter tree, frozen and trainable
parts merged; the trainer decides what is differentiated.

Batches are dicts of `[B, ...]` arrays with the feature converters' names:
  encoder-decoder: `encoder_input_tokens [B, L]`, `decoder_input_tokens [B, T]`,
                   `decoder_target_tokens [B, T]`, `decoder_loss_weights [B, T]`;
  decoder-only:    `decoder_input_tokens`, `decoder_target_tokens`, `decoder_loss_weights`
                   (`[B, T]`) and `decoder_causal_attention [B, T]`, 1 on the inputs part
                   (start token included), which prediction uses as the prompt and which a
                   prefix-LM also uses as its bidirectional prefix. The start token is 0 for
                   the T5-style decoder (seqio's layout) and the model's BOS (or none) for
                   the rotary families (`prompt_tuning.data.sequence_start`).
Per-example side inputs for the input hook (e.g. `prompt_ids [B]` for a prompt table, `[B, L]`
token ids for a prompt generator) are declared as `HookInput`s, by the hook itself or by the
wrapper's `hook_inputs` argument, and routed from the batch by name, in their declared shape.
Packed batches (segment ids) are not supported.

`ModelWrapper` is the protocol the trainer, data pipeline and evaluator use; they never ask
which wrapper they hold. A new kind of model (a re-ranker, a two-pass model) plugs in by
implementing it.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping, Optional, Protocol, Sequence, Tuple, Union

import flax.traverse_util
import jax
from jax import lax
import jax.numpy as jnp

from prompt_tuning.engine import decoding
from prompt_tuning.models.decoder_only import init_decoder_only_cache
from prompt_tuning.models.hook_inputs import HookInput
from prompt_tuning.models.t5 import init_decoder_cache

Batch = Mapping[str, jax.Array]
PyTree = Any
NUM_REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"
_METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecoderParams:
  """How `predict_batch` searches.

  Attributes:
    method: 'greedy', 'beam' (length-penalised beam search) or 'sample'.
    num_decodes: beams for 'beam', samples per example for 'sample' (1 for 'greedy').
    alpha: beam search length-penalty exponent, `((5 + |y|) / 6) ** alpha`.
    temperature, topk, topp: sampling controls (see `decoding.temperature_sample`).
  """

  method: str = "greedy"
  num_decodes: int = 1
  alpha: float = 0.6
  temperature: float = 1.0
  topk: int = 0
  topp: float = 0.0

  def __post_init__(self):
    if self.method not in _METHODS:
      raise ValueError(f"decoder_params method must be one of {_METHODS}, got {self.method!r}.")
    if self.method == "greedy" and self.num_decodes != 1:
      raise ValueError(f"greedy decoding gives one decode, got num_decodes={self.num_decodes}.")

  @classmethod
  def create(cls, value: Union[None, "DecoderParams", Mapping[str, Any]]) -> "DecoderParams":
    """Accepts None (greedy), a `DecoderParams` or a dict of its fields."""
    if value is None:
      return cls()
    if isinstance(value, cls):
      return value
    unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"decoder_params has unknown keys {sorted(unknown)}; expected some of "
                       f"{[f.name for f in dataclasses.fields(cls)]}.")
    return cls(**value)


def cross_entropy_with_z_loss(
    logits: jax.Array, targets: jax.Array, *, label_smoothing: float, z_loss: float
) -> Tuple[jax.Array, jax.Array]:
  """Per-token loss `[B, T]` (z-loss included) and its z-loss part `[B, T]`.

  With smoothing s the target distribution puts `1 - s` on the target and `s / (V - 1)` on
  every other token; the entropy of that distribution is subtracted so a perfect prediction
  scores 0. The z-loss `z_loss * logsumexp(logits) ** 2` keeps the softmax normaliser near 1,
  which bfloat16 training needs. Computed in float32.
  """
  logits = logits.astype(jnp.float32)
  vocab = logits.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  log_probs = logits - log_z[..., None]
  target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  if label_smoothing:
    confidence, other = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
    # sum_v q_v log p_v with q = other everywhere plus (confidence - other) on the target.
    expected = other * jnp.sum(log_probs, axis=-1) + (confidence - other) * target_log_prob
    entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * other * jnp.log(other + 1e-20))
    loss = -expected - entropy
  else:
    loss = -target_log_prob
  token_z_loss = z_loss * jnp.square(log_z)
  return loss + token_z_loss, token_z_loss


def _check_loss_normalizing_factor(value: Union[None, str, float]) -> None:
  if value is None or value == NUM_REAL_TARGET_TOKENS:
    return
  if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
    return
  raise ValueError(
      f"loss_normalizing_factor must be None, '{NUM_REAL_TARGET_TOKENS}' or a positive number, "
      f"got {value!r}.")


def loss_normalizer(weights: jax.Array, loss_normalizing_factor: Union[None, str, float]):
  """What the summed token loss is divided by: a constant, or the count of weighted tokens."""
  _check_loss_normalizing_factor(loss_normalizing_factor)
  if loss_normalizing_factor is None or loss_normalizing_factor == NUM_REAL_TARGET_TOKENS:
    return jnp.maximum(jnp.sum(weights > 0), 1).astype(jnp.float32)
  return jnp.asarray(loss_normalizing_factor, jnp.float32)


def weighted_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, *, label_smoothing: float,
    z_loss: float, loss_normalizing_factor: Union[None, str, float]
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """The training loss of `[B, S, V]` logits against `[B, S]` targets and weights.

  Returns the summed weighted token loss (z-loss included) divided by `loss_normalizer`, and
  scalar metrics: `loss` (what is minimised), `cross_ent_loss` (the loss without z-loss),
  `z_loss` (divided like the loss), `accuracy` (argmax hits over tokens with positive weight)
  and `num_tokens` (tokens with positive weight).
  """
  weights = weights.astype(jnp.float32)
  token_loss, token_z_loss = cross_entropy_with_z_loss(
      logits, targets, label_smoothing=label_smoothing, z_loss=z_loss)
  normalizer = loss_normalizer(weights, loss_normalizing_factor)
  loss = jnp.sum(token_loss * weights) / normalizer
  z_part = jnp.sum(token_z_loss * weights) / normalizer
  real = weights > 0
  num_tokens = jnp.sum(real)
  hits = jnp.sum((jnp.argmax(logits, axis=-1) == targets) & real)
  metrics = {
      "loss": loss,
      "cross_ent_loss": loss - z_part,
      "z_loss": z_part,
      "accuracy": hits / jnp.maximum(num_tokens, 1),
      "num_tokens": num_tokens,
  }
  return loss, metrics


class ModelWrapper(Protocol):
  """What the engine needs from a model wrapper.

  Data: `feature_converter()` turns task examples into the batches the wrapper reads, and
  `model_feature_lengths(task_feature_lengths)` gives their lengths. Parameters:
  `initial_variables(rng, lengths)` returns the module's variables (boxed with logical axes)
  for those lengths, and `hook_input_specs()` the side inputs its input hook reads. Training
  and evaluation: `loss_fn`, `score_batch`, `predict_batch_with_scores`, and
  `max_decode_length(task_feature_lengths)`. Export: `prompt_export_info()` describes the model
  for a PEFT prompt adapter (None when that format does not apply).
  """

  def feature_converter(self) -> Any: ...

  def model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]: ...

  def initial_variables(self, rng: jax.Array, lengths: Mapping[str, int]) -> PyTree: ...

  def hook_input_specs(self) -> Tuple[HookInput, ...]: ...

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]: ...

  def score_batch(self, params: PyTree, batch: Batch) -> jax.Array: ...

  def predict_batch_with_scores(self, params: PyTree, batch: Batch, **kwargs
                                ) -> Tuple[jax.Array, jax.Array]: ...

  def max_decode_length(self, task_feature_lengths: Mapping[str, int]) -> int: ...

  def prompt_export_info(self) -> Optional[Dict[str, Any]]: ...


class BaseModel:
  """Loss, scoring and rank classification shared by both wrappers.

  Subclasses provide `_logits(params, batch, *, dropout_rng) -> (logits [B, S, V], targets
  [B, S], weights [B, S])`, the teacher-forced logits with targets and weights aligned to them,
  and `_search(...)` for prediction.
  """

  def __init__(self, module, *, label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: Union[None, str, float] = None,
               hook_inputs: Optional[Sequence[HookInput]] = None,
               hook_input_keys: Optional[Sequence[str]] = None, eos_id: int = 1):
    """Args:
      module: the flax model (its `config.vocab_size` is the output size).
      label_smoothing: mass in [0, 1) spread over the non-target tokens.
      z_loss: coefficient of `logsumexp(logits) ** 2` added to each token's loss.
      loss_normalizing_factor: the summed weighted token loss is divided by this constant
        when it is a number; None or 'NUM_REAL_TARGET_TOKENS' divides by the number of
        target tokens whose loss weight is positive.
      hook_inputs: the side inputs the input hook reads; default: what the hook declares
        (`hook.hook_input_specs()`), else a per-example `prompt_ids` id.
      hook_input_keys: older form of `hook_inputs`: names of per-example scalar int32 inputs.
      eos_id: the token that ends a decode.
    """
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
    _check_loss_normalizing_factor(loss_normalizing_factor)
    self.module = module
    self.label_smoothing = label_smoothing
    self.z_loss = z_loss
    self.loss_normalizing_factor = loss_normalizing_factor
    if hook_inputs is not None and hook_input_keys is not None:
      raise ValueError("Give either hook_inputs or hook_input_keys, not both.")
    if hook_input_keys is not None:
      hook_inputs = tuple(HookInput(name=key) for key in hook_input_keys)
    self._declared_hook_inputs = None if hook_inputs is None else tuple(hook_inputs)
    self.eos_id = eos_id

  @property
  def vocab_size(self) -> int:
    return self.module.config.vocab_size

  # -- protocol: data and parameters -------------------------------------------------------

  def hook_input_specs(self) -> Tuple[HookInput, ...]:
    """The side inputs the input hook reads (declared by the wrapper or by the hook)."""
    if self._declared_hook_inputs is not None:
      return self._declared_hook_inputs
    declare = getattr(getattr(self.module, "input_hook", None), "hook_input_specs", None)
    if callable(declare):
      return tuple(declare())
    return (HookInput(name="prompt_ids"),)

  @property
  def hook_input_keys(self) -> Tuple[str, ...]:
    return tuple(spec.name for spec in self.hook_input_specs())

  def _converter_class(self):
    raise NotImplementedError

  def feature_converter(self):
    """The seqio converter (no packing) that also carries the hook inputs the task provides."""
    from prompt_tuning.engine import data  # pylint: disable=g-import-not-at-top
    return data.HookInputConverter(self._converter_class(), self._data_hook_inputs())

  def _data_hook_inputs(self) -> Tuple[HookInput, ...]:
    """Hook inputs the data must provide: the declared ones, unless only the default
    (`prompt_ids`, which a plain prompt ignores) is assumed."""
    if self._declared_hook_inputs is None and not callable(
        getattr(getattr(self.module, "input_hook", None), "hook_input_specs", None)):
      return ()
    return self.hook_input_specs()

  def model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    return dict(self.feature_converter().get_model_feature_lengths(task_feature_lengths))

  def max_decode_length(self, task_feature_lengths: Mapping[str, int]) -> int:
    """How many tokens prediction generates: the targets' length."""
    if "targets" not in task_feature_lengths:
      raise ValueError("task_feature_lengths needs a 'targets' length to decode predictions.")
    return int(task_feature_lengths["targets"])

  def _hook_placeholders(self, batch_size: int, lengths: Mapping[str, int]):
    placeholders = {spec.name: jnp.asarray(spec.placeholder(batch_size, lengths))
                    for spec in self.hook_input_specs()}
    return placeholders or None

  def _hook_inputs(self, batch: Batch) -> Optional[Dict[str, jax.Array]]:
    """The batch's hook inputs in their declared per-example shapes (data carries them flat)."""
    routed = {}
    for spec in self.hook_input_specs():
      if spec.name not in batch:
        continue
      value = batch[spec.name]
      rows = value.shape[0]
      if value.ndim != 1 + len(spec.shape):
        shape = tuple(-1 if d is None else d for d in spec.shape)
        value = value.reshape((rows,) + shape)
      routed[spec.name] = value
    return routed or None

  @staticmethod
  def _require(batch: Batch, *keys: str) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
      raise ValueError(f"The batch lacks {missing}; it has {sorted(batch)}.")

  def loss_fn(self, params: PyTree, batch: Batch,
              dropout_rng: Optional[jax.Array]) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Scalar training loss and metrics (see `weighted_loss`); dropout is on exactly when
    `dropout_rng` is given."""
    logits, targets, weights = self._logits(params, batch, dropout_rng=dropout_rng)
    return weighted_loss(
        logits, targets, weights, label_smoothing=self.label_smoothing, z_loss=self.z_loss,
        loss_normalizing_factor=self.loss_normalizing_factor)

  def score_batch(self, params: PyTree, batch: Batch) -> jax.Array:
    """`[B]` sum over target tokens of `log p(target) * decoder_loss_weights` (no dropout)."""
    logits, targets, weights = self._logits(params, batch, dropout_rng=None)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(token_scores * weights, axis=-1)

  def rank_classification(self, params: PyTree, batch: Batch, *, num_examples: int,
                          index_key: str = "idx") -> Tuple[jax.Array, jax.Array]:
    """Picks, for each example, the answer choice the model scores highest.

    The batch is flattened (example, choice) pairs, as seqio's rank classification writes
    them: `batch[index_key]` is `[N, 2]` int (example index, choice index), and each row's
    targets hold that choice. Rows with no positive loss weight (batch padding) are ignored.

    Returns:
      `[num_examples]` int32 winning choice index (the lowest on ties, -1 for an example
      without rows) and the `[N]` row scores from `score_batch`.
    """
    index = batch[index_key]
    if index.ndim != 2 or index.shape[1] != 2:
      raise ValueError(f"batch['{index_key}'] must be [N, 2] (example, choice), got "
                       f"shape {index.shape}.")
    scores = self.score_batch(params, batch)
    example, choice = index[:, 0], index[:, 1].astype(jnp.int32)
    real = jnp.any(batch["decoder_loss_weights"] > 0, axis=-1)
    masked = jnp.where(real, scores, -jnp.inf)
    best = jax.ops.segment_max(masked, example, num_segments=num_examples)
    is_best = real & (masked == best[example])
    unset = jnp.iinfo(jnp.int32).max
    winner = jax.ops.segment_min(jnp.where(is_best, choice, unset), example,
                                 num_segments=num_examples)
    return jnp.where(winner == unset, -1, winner).astype(jnp.int32), scores

  def predict_batch(self, params: PyTree, batch: Batch, *,
                    decoder_params: Union[None, DecoderParams, Mapping[str, Any]] = None,
                    rng: Optional[jax.Array] = None,
                    max_decode_length: Optional[int] = None) -> jax.Array:
    """`[B, max_decode_length]` int32 best decode (0 after EOS); see `predict_batch_with_scores`."""
    decodes, _ = self.predict_batch_with_scores(
        params, batch, decoder_params=decoder_params, rng=rng,
        max_decode_length=max_decode_length)
    return decodes[:, 0]

  def predict_batch_with_scores(
      self, params: PyTree, batch: Batch, *,
      decoder_params: Union[None, DecoderParams, Mapping[str, Any]] = None,
      rng: Optional[jax.Array] = None,
      max_decode_length: Optional[int] = None) -> Tuple[jax.Array, jax.Array]:
    """All decodes `[B, N, max_decode_length]` best first, and their scores `[B, N]`.

    Scores are length-penalised log-probabilities for beam search and summed token
    log-probabilities (before temperature and filtering) for greedy and sampling.
    `max_decode_length` defaults to the batch's `decoder_input_tokens` length.
    """
    decoder_params = DecoderParams.create(decoder_params)
    if max_decode_length is None:
      self._require(batch, "decoder_input_tokens")
      max_decode_length = batch["decoder_input_tokens"].shape[1]
    if decoder_params.method == "sample" and rng is None:
      raise ValueError("predict_batch with method='sample' needs an rng.")
    return self._search(params, batch, decoder_params, rng, max_decode_length)

  def _run_search(self, inputs, cache, tokens_to_logits, decoder_params, rng):
    """Dispatches to the search; returns decodes `[B, N, L]` sorted best first and scores."""
    if decoder_params.method == "beam":
      return decoding.beam_search(
          inputs, cache, tokens_to_logits, eos_id=self.eos_id,
          num_decodes=decoder_params.num_decodes, alpha=decoder_params.alpha)
    greedy = decoder_params.method == "greedy"
    decodes, log_probs = decoding.temperature_sample(
        inputs, cache, tokens_to_logits, eos_id=self.eos_id, rng=rng,
        num_decodes=decoder_params.num_decodes,
        temperature=0.0 if greedy else decoder_params.temperature,
        topk=decoder_params.topk, topp=decoder_params.topp)
    order = jnp.argsort(-log_probs, axis=1)
    return (jnp.take_along_axis(decodes, order[:, :, None], axis=1),
            jnp.take_along_axis(log_probs, order, axis=1))

  def _dropout_kwargs(self, dropout_rng):
    if dropout_rng is None:
      return {"enable_dropout": False}
    return {"enable_dropout": True, "rngs": {"dropout": dropout_rng}}


def _split_cross_attention_cache(cache: PyTree) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`(rest, cross)`: the decoder cache without and with only its cross-attention entries."""
  flat = flax.traverse_util.flatten_dict(dict(cache))
  cross = {k: v for k, v in flat.items() if "encoder_decoder_attention" in k}
  rest = {k: v for k, v in flat.items() if k not in cross}
  return (flax.traverse_util.unflatten_dict(rest), cross)


def _merge_caches(rest: PyTree, cross: Dict[Tuple[str, ...], Any]) -> Dict[str, Any]:
  return flax.traverse_util.unflatten_dict({**flax.traverse_util.flatten_dict(dict(rest)),
                                            **cross})


class EncoderDecoderModel(BaseModel):
  """Wraps an `EncoderDecoder`: the input hook applies to the encoder input."""

  def _converter_class(self):
    import seqio  # pylint: disable=g-import-not-at-top
    return seqio.EncDecFeatureConverter

  def initial_variables(self, rng: jax.Array, lengths: Mapping[str, int]) -> PyTree:
    """The module's variables for model-feature `lengths` (encoder and decoder tokens)."""
    return self.get_initial_variables(
        rng, batch_size=1, encoder_length=lengths["encoder_input_tokens"],
        decoder_length=lengths["decoder_input_tokens"], lengths=lengths)

  def get_initial_variables(self, rng: jax.Array, *, batch_size: int, encoder_length: int,
                            decoder_length: int,
                            lengths: Optional[Mapping[str, int]] = None) -> PyTree:
    """The module's variables (boxed with their logical axes) for these shapes."""
    enc = jnp.ones((batch_size, encoder_length), jnp.int32)
    dec = jnp.ones((batch_size, decoder_length), jnp.int32)
    return self.module.init(rng, enc, dec,
                            hook_inputs=self._hook_placeholders(batch_size, lengths or {}))

  def prompt_export_info(self) -> Optional[Dict[str, Any]]:
    config = self.module.config
    return {"task_type": "SEQ_2_SEQ_LM", "num_layers": config.num_encoder_layers,
            "num_attention_heads": config.num_heads}

  def _logits(self, params, batch, *, dropout_rng):
    self._require(batch, "encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")
    logits = self.module.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        hook_inputs=self._hook_inputs(batch), **self._dropout_kwargs(dropout_rng))
    return logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]

  def _encode(self, params, batch):
    """`(encoded [B, L', E], mask [B, L'])` the decoder attends to while searching (a wrapper
    with another encoder side overrides this alone)."""
    return self.module.apply({"params": params}, batch["encoder_input_tokens"],
                             hook_inputs=self._hook_inputs(batch), method="encode")

  def _search(self, params, batch, decoder_params, rng, length):
    """Encodes once, caches the decoder, and searches from the start token 0."""
    self._require(batch, "encoder_input_tokens")
    encoded, mask = self._encode(params, batch)
    cache = init_decoder_cache(self.module, params, encoded, mask, length)
    # Rows of the search are example-major copies: b * N + n (see `decoding.repeat_batch`).
    copies = decoder_params.num_decodes
    encoded, mask = decoding.repeat_batch((encoded, mask), copies)
    # The cross-attention keys and values never change while decoding and are equal across an
    # example's beams, so they stay out of the searched cache: beam search would otherwise
    # gather them (all encoder positions, every layer) at every step.
    cache, cross = _split_cross_attention_cache(cache)
    cross = decoding.repeat_batch(cross, copies)

    def tokens_to_logits(state: decoding.DecodingState):
      logits, variables = self.module.apply(
          {"params": params, "cache": _merge_caches(state.cache, cross)}, encoded, mask,
          state.cur_token, decode=True, method="decode", mutable=["cache"])
      return logits[:, 0], _split_cross_attention_cache(variables["cache"])[0]

    inputs = jnp.zeros((batch["encoder_input_tokens"].shape[0], length), jnp.int32)
    return self._run_search(inputs, cache, tokens_to_logits, decoder_params, rng)


class DecoderOnlyModel(BaseModel):
  """Wraps a `DecoderOnly` LM (causal, or prefix-LM with `inputs_bidirectional_attention`).

  When the hook inserts prompt slots, the module's output is longer than the batch; each
  slot's `input_index` says which input position it holds (-1 for prompt slots), and the
  loss reads targets and weights through it, so prompt slots carry no loss.
  """

  def __init__(self, module, *, inputs_bidirectional_attention: bool = False,
               start_token: Union[None, int, str] = "from_config", **kwargs):
    """Args:
      module: the decoder-only flax module.
      inputs_bidirectional_attention: pass `decoder_causal_attention` to the module as the
        bidirectional prefix (prefix-LM); otherwise it only marks the prompt for prediction.
      start_token: what every sequence starts with. 'from_config' (default): the module
        config's `bos_token_id` when the config has that field (the rotary families: their
        BOS id, or None when the model has none), else the T5X convention. 't5x': id 0 as
        start token and padding, masks from `token != 0` (`seqio.PrefixLMFeatureConverter`;
        right for the T5 vocabulary). An int: that BOS id; None: no start token. With a BOS
        id or None, batches come from `StartTokenPrefixLMConverter` and the attention mask
        from its loss weights and causal-attention lengths, so a real token 0 is kept.
      Other arguments as `BaseModel`.
    """
    super().__init__(module, **kwargs)
    self.inputs_bidirectional_attention = inputs_bidirectional_attention
    if start_token == "from_config":
      config = getattr(module, "config", None)
      start_token = (config.bos_token_id if hasattr(config, "bos_token_id") else "t5x")
    if not (start_token is None or start_token == "t5x" or (
        isinstance(start_token, int) and not isinstance(start_token, bool)
        and start_token >= 0)):
      raise ValueError(f"start_token must be 'from_config', 't5x', a token id >= 0 or None, "
                       f"got {start_token!r}.")
    self.start_token = start_token

  @property
  def t5x_start(self) -> bool:
    """Whether batches follow the T5X convention (start token 0 doubling as padding)."""
    return self.start_token == "t5x"

  def _converter_class(self):
    import seqio  # pylint: disable=g-import-not-at-top
    if self.t5x_start:
      return seqio.PrefixLMFeatureConverter
    from prompt_tuning.data import sequence_start  # pylint: disable=g-import-not-at-top
    return functools.partial(sequence_start.StartTokenPrefixLMConverter,
                             start_token=self.start_token)

  def _decoder_mask(self, batch: Batch) -> jax.Array:
    """`[B, T]` 1 on the slots holding real tokens."""
    if self.t5x_start:
      return (batch["decoder_target_tokens"] > 0).astype(jnp.int32)
    from prompt_tuning.data import sequence_start  # pylint: disable=g-import-not-at-top
    self._require(batch, "decoder_causal_attention", "decoder_loss_weights")
    return sequence_start.real_positions(batch).astype(jnp.int32)

  def initial_variables(self, rng: jax.Array, lengths: Mapping[str, int]) -> PyTree:
    """The module's variables for model-feature `lengths` (decoder tokens)."""
    return self.get_initial_variables(rng, batch_size=1,
                                      decoder_length=lengths["decoder_input_tokens"],
                                      lengths=lengths)

  def get_initial_variables(self, rng: jax.Array, *, batch_size: int, decoder_length: int,
                            lengths: Optional[Mapping[str, int]] = None) -> PyTree:
    """The module's variables (boxed with their logical axes) for these shapes."""
    tokens = jnp.ones((batch_size, decoder_length), jnp.int32)
    return self.module.init(rng, tokens,
                            hook_inputs=self._hook_placeholders(batch_size, lengths or {}))

  def prompt_export_info(self) -> Optional[Dict[str, Any]]:
    config = self.module.config
    return {"task_type": "CAUSAL_LM", "num_layers": config.num_decoder_layers,
            "num_attention_heads": config.num_heads}

  def _prefix(self, batch):
    if self.inputs_bidirectional_attention:
      self._require(batch, "decoder_causal_attention")
      return batch["decoder_causal_attention"]
    return None

  def _logits(self, params, batch, *, dropout_rng):
    self._require(batch, "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    out = self.module.apply(
        {"params": params}, batch["decoder_input_tokens"],
        decoder_mask=self._decoder_mask(batch),
        decoder_causal_attention=self._prefix(batch),
        hook_inputs=self._hook_inputs(batch), **self._dropout_kwargs(dropout_rng))
    # [B, T] targets -> [B, T'] slots of the (possibly prompted) sequence.
    index = out.inputs.input_index
    inserted = index < 0
    gather = lambda x: jnp.take_along_axis(x, jnp.maximum(index, 0), axis=1)
    return (out.logits, jnp.where(inserted, 0, gather(targets)),
            jnp.where(inserted, 0, gather(weights)))

  def _search(self, params, batch, decoder_params, rng, length):
    """Prefills the prompt (the causal-attention part) and continues for `length` tokens
    (`_search_after_prefill`); the prefill runs the hook."""
    self._require(batch, "decoder_input_tokens", "decoder_causal_attention")
    prompt_mask = batch["decoder_causal_attention"].astype(jnp.int32)
    tokens = batch["decoder_input_tokens"] * prompt_mask
    apply_kwargs = dict(decoder_mask=prompt_mask, decoder_causal_attention=self._prefix(batch),
                        hook_inputs=self._hook_inputs(batch))
    batch_size = tokens.shape[0]
    # The cache must also hold the slots the hook inserts: learn their number from shapes.
    prompted = jax.eval_shape(
        lambda p, t, kwargs: self.module.apply({"params": p}, t, **kwargs).logits,
        params, tokens, apply_kwargs)
    cache = init_decoder_only_cache(self.module, params, batch_size, prompted.shape[1] + length)
    out, variables = self.module.apply(
        {"params": params, "cache": cache}, tokens, decode=True, prefill=True,
        mutable=["cache"], **apply_kwargs)
    return self._search_after_prefill(self.module, params, out, variables["cache"],
                                      decoder_params, rng, length)

  def _search_after_prefill(self, module, params, out, cache, decoder_params, rng, length):
    """The search that follows a prefill call of `module` (`out`, its filled `cache`).

    The first step reads the prefill's logits at each example's last real slot instead of
    calling the model; every later step feeds one generated token through the cache.
    """
    slots = out.inputs.mask.shape[1]
    last_real = slots - 1 - jnp.argmax(out.inputs.mask[:, ::-1] > 0, axis=1)
    first_logits = jnp.take_along_axis(out.logits, last_real[:, None, None], axis=1)[:, 0]

    def tokens_to_logits(state: decoding.DecodingState):
      def prefilled(_):
        return state.cache["first_logits"], state.cache["model"]

      def step(_):
        out, variables = module.apply(
            {"params": params, "cache": state.cache["model"]}, state.cur_token, decode=True,
            mutable=["cache"])
        return out.logits[:, 0], variables["cache"]

      logits, model_cache = lax.cond(state.cur_index == 0, prefilled, step, None)
      return logits, {"model": model_cache, "first_logits": state.cache["first_logits"]}

    search_cache = {"model": cache, "first_logits": first_logits}
    inputs = jnp.zeros((out.logits.shape[0], length), jnp.int32)
    return self._run_search(inputs, search_cache, tokens_to_logits, decoder_params, rng)
