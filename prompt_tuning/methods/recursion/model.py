"""A frozen decoder-only LM run twice with a trained Connector between: LM-C-LM (and C-LM, LM-C).

Layout (prefix-LM batches, `decoder_causal_attention` marking start + question):

  lm_c_lm  pass 1: the LM (with its input hook, e.g. a prompt) reads the question; its final
           hidden states (before the vocabulary projection), realigned to the question's
           positions, go through the Connector; pass 2: the same LM, with the same frozen
           parameters and without the hook, reads the Connector's outputs as the question's
           input embeddings (bypassing the token embedder), followed by the answer tokens'
           ordinary embeddings, and predicts the answer.
  c_lm     one LM pass over the Connector's outputs on the token embeddings (Connector-LM).
  lm_c     one LM pass, the Connector on its final hidden states, then the LM's own vocabulary
           projection (LM-Connector).

The parameter tree is the LM's own tree plus a `connector` entry, so a base checkpoint restores
the LM under its own names; train only `^connector/` (and `^input_hook/`), see
`recursion_groups`. Prediction for `lm_c_lm` runs pass 1 and the Connector once, prefills the
second pass's KV cache with the Connector's outputs and then feeds one token per step; `c_lm`
and `lm_c` re-run the model on the whole history at each step (their Connector has no cache).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp

from prompt_tuning.engine import decoding
from prompt_tuning.engine import params as param_groups
from prompt_tuning.engine.models import DecoderOnlyModel
from prompt_tuning.models.decoder_only import init_decoder_only_cache
from prompt_tuning.models.layers import Dense, Embed
from prompt_tuning import axes

MODES = ("lm_c_lm", "c_lm", "lm_c")
CONNECTOR = "connector"


def recursion_groups(train_prompt: bool = False):
  """Parameter groups: the Connector trainable from init; the LM frozen from the base; the
  input hook (a prompt on pass 1) trainable when `train_prompt`, else frozen."""
  groups = [param_groups.ParamGroup(name=CONNECTOR, pattern=f"^{CONNECTOR}/", trainable=True,
                                    source=param_groups.FromInit(), export="npz")]
  if train_prompt:
    groups.append(param_groups.ParamGroup(name="prompt", pattern="^input_hook/", trainable=True,
                                          source=param_groups.FromInit(), export="prompt"))
  groups.append(param_groups.ParamGroup(name="model"))
  return groups


def to_input_positions(states: jax.Array, input_index: jax.Array, length: int) -> jax.Array:
  """`[B, L', E]` states of a hooked sequence -> `[B, length, E]` at the caller's positions;
  inserted (prompt) slots are dropped, positions no slot holds are zero."""
  def one(row_states, row_index):
    target = jnp.where(row_index >= 0, row_index, length)
    return jnp.zeros((length,) + row_states.shape[1:], row_states.dtype).at[target].set(
        row_states, mode="drop")
  return jax.vmap(one)(states, input_index)


def check_connector(mode: str, connector, module, *, owner: str) -> None:
  """Refuses an unknown `mode`, or a `connector` whose width differs from `module`'s (named
  `owner` in the sentence: 'LM', 'encoder-decoder')."""
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
  if connector.config.emb_dim != module.config.emb_dim:
    raise ValueError(f"The Connector's width {connector.config.emb_dim} differs from the "
                     f"{owner}'s {module.config.emb_dim}.")


def with_connector(variables, connector, rng: jax.Array, *, batch_size: int, length: int,
                   owner: str) -> Dict[str, Any]:
  """`variables` of the base model (its `owner` name in errors: 'LM', 'model') with a freshly
  initialised `connector` (states `[batch_size, length, E]`) added under `CONNECTOR`."""
  variables = flax.core.unfreeze(variables)
  if CONNECTOR in variables["params"]:
    raise ValueError(f"The {owner} already has a top-level '{CONNECTOR}' parameter entry.")
  states = jnp.zeros((batch_size, length, connector.config.emb_dim))
  mask = jnp.ones((batch_size, length), jnp.int32)
  initialised = flax.core.unfreeze(connector.init(rng, states, mask))
  return {**variables, "params": {**variables["params"], CONNECTOR: initialised["params"]}}


def split_connector_params(params) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`(base_params, connector_params)` from a recursion wrapper's tree (the base model's own
  entries, and the `CONNECTOR` entry)."""
  if CONNECTOR not in params:
    raise ValueError(f"The parameters lack the '{CONNECTOR}' entry; they have "
                     f"{sorted(params)}.")
  return {k: v for k, v in params.items() if k != CONNECTOR}, params[CONNECTOR]


class LMConnectorLMModel(DecoderOnlyModel):
  """The `ModelWrapper` of neural recursion around a `DecoderOnly` LM and a `Connector`."""

  def __init__(self, module, *, connector, mode: str = "lm_c_lm", **kwargs):
    """Args:
      module: the frozen `DecoderOnly` LM (its input hook, if any, applies to the first pass).
      connector: a `Connector` at the LM's width.
      mode: 'lm_c_lm', 'c_lm' or 'lm_c' (see the module docstring).
      **kwargs: as `DecoderOnlyModel`.
    """
    check_connector(mode, connector, module, owner="LM")
    super().__init__(module, **kwargs)
    self.connector = connector
    self.mode = mode
    self.bare_lm = module.clone(input_hook=None)

  # -- parameters ---------------------------------------------------------------------------

  def get_initial_variables(self, rng, *, batch_size: int, decoder_length: int, lengths=None):
    lm_rng, connector_rng = jax.random.split(rng)
    lm = super().get_initial_variables(lm_rng, batch_size=batch_size,
                                       decoder_length=decoder_length, lengths=lengths)
    return with_connector(lm, self.connector, connector_rng, batch_size=batch_size,
                          length=decoder_length, owner="LM")

  split_params = staticmethod(split_connector_params)

  # -- forward ------------------------------------------------------------------------------

  def _embed(self, lm_params, tokens):
    return self.bare_lm.apply({"params": lm_params}, tokens,
                              method=lambda m, t: m.token_embedder(t))

  def _head(self, lm_params, hidden):
    """The LM's vocabulary projection of `[B, L, E]` states (float32 logits)."""
    cfg = self.module.config
    if cfg.logits_via_embedding:
      table = Embed(cfg.vocab_size, cfg)
      return table.apply({"params": lm_params["token_embedder"]},
                         hidden * (cfg.emb_dim ** -0.5), method="attend")
    dense = Dense(cfg.vocab_size, (axes.EMBED, axes.VOCAB), cfg, float32_output=True)
    return dense.apply({"params": lm_params["decoder"]["logits_dense"]}, hidden)

  def _connect(self, connector_params, states, mask, dropout_kwargs):
    return self.connector.apply({"params": connector_params}, states, mask,
                                **dropout_kwargs)

  def pass_one(self, lm_params, tokens, prompt_mask, prefix, hook_inputs, dropout_kwargs):
    """Pass 1 over the prompt part: `[B, T, E]` final hidden states at the caller's positions."""
    out = self.module.apply({"params": lm_params}, tokens * prompt_mask,
                            decoder_mask=prompt_mask, decoder_causal_attention=prefix,
                            hook_inputs=hook_inputs, **dropout_kwargs)
    return to_input_positions(out.hidden, out.inputs.input_index, tokens.shape[1])

  def second_pass_embeddings(self, params, tokens, prompt_mask, prefix, hook_inputs,
                             dropout_kwargs):
    """The LM-C-LM second pass's input embeddings: the Connector's outputs on the prompt part,
    the ordinary token embeddings after it."""
    lm_params, connector_params = self.split_params(params)
    states = self.pass_one(lm_params, tokens, prompt_mask, prefix, hook_inputs, dropout_kwargs)
    connected = self._connect(connector_params, states, prompt_mask, dropout_kwargs)
    embedded = self._embed(lm_params, tokens)
    return jnp.where(prompt_mask[..., None] > 0, connected.astype(embedded.dtype), embedded)

  def sequence_logits(self, params, tokens, mask, prompt_mask, hook_inputs=None,
                      dropout_rng=None):
    """Teacher-forced `[B, T', V]` logits and the `[B, T']` input index of each slot."""
    dropout_kwargs = self._dropout_kwargs(dropout_rng)
    prefix = prompt_mask if self.inputs_bidirectional_attention else None
    lm_params, connector_params = self.split_params(params)
    if self.mode == "lm_c_lm":
      embeddings = self.second_pass_embeddings(params, tokens, prompt_mask, prefix,
                                               hook_inputs, dropout_kwargs)
      out = self.bare_lm.apply({"params": lm_params}, None, decoder_input_embeddings=embeddings,
                               decoder_mask=mask, decoder_causal_attention=prefix,
                               **dropout_kwargs)
      return out.logits, out.inputs.input_index
    if self.mode == "c_lm":
      embeddings = self._connect(connector_params, self._embed(lm_params, tokens), mask,
                                 dropout_kwargs)
      out = self.module.apply({"params": lm_params}, None, decoder_input_embeddings=embeddings,
                              decoder_mask=mask, decoder_causal_attention=prefix,
                              hook_inputs=hook_inputs, **dropout_kwargs)
      return out.logits, out.inputs.input_index
    out = self.module.apply({"params": lm_params}, tokens, decoder_mask=mask,
                            decoder_causal_attention=prefix, hook_inputs=hook_inputs,
                            **dropout_kwargs)
    hidden = self._connect(connector_params, out.hidden, out.inputs.mask, dropout_kwargs)
    return self._head(lm_params, hidden), out.inputs.input_index

  def _logits(self, params, batch, *, dropout_rng):
    self._require(batch, "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                  "decoder_causal_attention")
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    logits, index = self.sequence_logits(
        params, batch["decoder_input_tokens"], self._decoder_mask(batch),
        batch["decoder_causal_attention"].astype(jnp.int32), self._hook_inputs(batch),
        dropout_rng)
    inserted = index < 0
    gather = lambda x: jnp.take_along_axis(x, jnp.maximum(index, 0), axis=1)
    return (logits, jnp.where(inserted, 0, gather(targets)),
            jnp.where(inserted, 0, gather(weights)))

  # -- prediction ---------------------------------------------------------------------------

  def _search(self, params, batch, decoder_params, rng, length):
    self._require(batch, "decoder_input_tokens", "decoder_causal_attention")
    if self.mode == "lm_c_lm":
      return self._cached_search(params, batch, decoder_params, rng, length)
    return self._recompute_search(params, batch, decoder_params, rng, length)

  def _cached_search(self, params, batch, decoder_params, rng, length):
    """LM-C-LM: pass 1 and the Connector once, the second pass's cache prefilled with the
    Connector's outputs, then one generated token per step."""
    prompt_mask = batch["decoder_causal_attention"].astype(jnp.int32)
    tokens = batch["decoder_input_tokens"] * prompt_mask
    prefix = prompt_mask if self.inputs_bidirectional_attention else None
    lm_params, _ = self.split_params(params)
    embeddings = self.second_pass_embeddings(params, tokens, prompt_mask, prefix,
                                             self._hook_inputs(batch), {"enable_dropout": False})
    batch_size, prompt_length = tokens.shape
    cache = init_decoder_only_cache(self.bare_lm, lm_params, batch_size, prompt_length + length)
    out, variables = self.bare_lm.apply(
        {"params": lm_params, "cache": cache}, None, decoder_input_embeddings=embeddings,
        decoder_mask=prompt_mask, decoder_causal_attention=prefix, decode=True, prefill=True,
        mutable=["cache"])
    return self._search_after_prefill(self.bare_lm, lm_params, out, variables["cache"],
                                      decoder_params, rng, length)

  def _recompute_search(self, params, batch, decoder_params, rng, length):
    """C-LM and LM-C: each step writes the last token after the example's prompt and re-runs
    the whole model (no KV cache: the Connector keeps none), reading the last slot's logits."""
    prompt_mask = batch["decoder_causal_attention"].astype(jnp.int32)
    batch_size, prompt_length = prompt_mask.shape
    prompt_lengths = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
    sequence = jnp.zeros((batch_size, prompt_length + length), jnp.int32)
    sequence = sequence.at[:, :prompt_length].set(batch["decoder_input_tokens"] * prompt_mask)
    slots = jnp.arange(prompt_length + length)
    hook_inputs = self._hook_inputs(batch) or {}

    def tokens_to_logits(state: decoding.DecodingState):
      cache = state.cache
      index = state.cur_index
      sequence, lengths = cache["sequence"], cache["prompt_lengths"]
      write = jnp.where(index > 0, lengths + index - 1, sequence.shape[1])
      rows = jnp.arange(sequence.shape[0])
      sequence = sequence.at[rows, write].set(state.cur_token[:, 0], mode="drop")
      mask = (slots[None] < (lengths + index)[:, None]).astype(jnp.int32)
      prompt = (slots[None] < lengths[:, None]).astype(jnp.int32)
      logits, input_index = self.sequence_logits(params, sequence, mask, prompt,
                                                 cache["hook_inputs"] or None)
      last = jnp.where(index > 0, lengths + index - 1, lengths - 1)[:, None]
      slot = jnp.argmax(input_index == last, axis=1)
      return (jnp.take_along_axis(logits, slot[:, None, None], axis=1)[:, 0],
              {**cache, "sequence": sequence})

    search_cache = {"sequence": sequence, "prompt_lengths": prompt_lengths,
                    "hook_inputs": hook_inputs}
    inputs = jnp.zeros((batch_size, length), jnp.int32)
    return self._run_search(inputs, search_cache, tokens_to_logits, decoder_params, rng)
