"""Neural recursion on a frozen T5 encoder-decoder: encoder, Connector, encoder again, decoder.

  lm_c_lm  pass 1: the encoder (with its input hook, e.g. a prompt) reads the question; its
           final states, realigned to the question's positions (prompt slots dropped), go
           through the Connector; pass 2: the same frozen encoder, without the hook, reads the
           Connector's outputs as its input embeddings (the token embedder is bypassed); the
           frozen decoder cross-attends to pass 2's states and generates the answer.
  c_lm     the Connector on the question's token embeddings, then the (hooked) encoder and
           the decoder (Connector-LM).
  lm_c     the (hooked) encoder, the Connector on its states, then the decoder (LM-Connector).

Why pass 2 re-enters the encoder: the encoder is the part of T5 that reads a question, so a
second pass through it is what "reading the question again, with the first reading's
conclusions as input" means; the decoder keeps its ordinary job (cross-attend, generate). The
second pass's input therefore sits exactly where token embeddings sit in a plain T5, like the
decoder-only form. Decoding is unchanged: the two encoder passes and the Connector run once per
example, then the decoder searches with its usual KV cache over the second pass's states.

The Connector here is bidirectional (`Connector(causal=False)`: the encoder's own layer type,
names and logical axes), since both passes it sits between are bidirectional.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from prompt_tuning.engine.models import EncoderDecoderModel
from prompt_tuning.methods.recursion.model import (check_connector, split_connector_params,
                                                   to_input_positions, with_connector)
from prompt_tuning.models.inputs import embedded_from_tokens


class EncoderConnectorModel(EncoderDecoderModel):
  """The `ModelWrapper` of neural recursion around an `EncoderDecoder` and a `Connector`."""

  def __init__(self, module, *, connector, mode: str = "lm_c_lm", **kwargs):
    """Args:
      module: the frozen `EncoderDecoder` (its input hook, if any, applies to the first pass).
      connector: a `Connector` at the model's width (`causal=False` is the natural form).
      mode: 'lm_c_lm', 'c_lm' or 'lm_c' (see the module docstring).
      **kwargs: as `EncoderDecoderModel`.
    """
    check_connector(mode, connector, module, owner="encoder-decoder")
    super().__init__(module, **kwargs)
    self.connector = connector
    self.mode = mode
    self.bare_model = module.clone(input_hook=None)

  def get_initial_variables(self, rng, *, batch_size: int, encoder_length: int,
                            decoder_length: int, lengths=None):
    model_rng, connector_rng = jax.random.split(rng)
    variables = super().get_initial_variables(
        model_rng, batch_size=batch_size, encoder_length=encoder_length,
        decoder_length=decoder_length, lengths=lengths)
    return with_connector(variables, self.connector, connector_rng, batch_size=batch_size,
                          length=encoder_length, owner="model")

  split_params = staticmethod(split_connector_params)

  def _connect(self, connector_params, states, mask, dropout_kwargs):
    return self.connector.apply({"params": connector_params}, states, mask, **dropout_kwargs)

  def pass_one(self, model_params, tokens, hook_inputs, dropout_kwargs):
    """The hooked encoder over `tokens`: `[B, T, E]` final states at the tokens' positions."""
    enable = dropout_kwargs.get("enable_dropout", False)

    def run(module, tokens):
      inputs = embedded_from_tokens(module.token_embedder(tokens),
                                    (tokens > 0).astype(jnp.int32))
      if module.input_hook is not None:
        inputs = module.input_hook(inputs, hook_inputs=hook_inputs, enable_dropout=enable)
      return module.encoder(inputs, enable_dropout=enable), inputs.input_index

    rngs = {"rngs": dropout_kwargs["rngs"]} if "rngs" in dropout_kwargs else {}
    states, index = self.module.apply({"params": model_params}, tokens, method=run, **rngs)
    return to_input_positions(states, index, tokens.shape[1])

  def encode(self, params, tokens, hook_inputs=None, dropout_rng=None):
    """What the decoder attends to: `(encoded [B, L', E], mask [B, L'])` for `mode`."""
    dropout_kwargs = self._dropout_kwargs(dropout_rng)
    model_params, connector_params = self.split_params(params)
    mask = (tokens > 0).astype(jnp.int32)
    if self.mode == "lm_c_lm":
      # Each pass draws its own dropout masks (the two passes share module paths).
      second_kwargs = self._dropout_kwargs(
          None if dropout_rng is None else jax.random.fold_in(dropout_rng, 1))
      states = self.pass_one(model_params, tokens, hook_inputs, dropout_kwargs)
      connected = self._connect(connector_params, states, mask, dropout_kwargs)
      return self.bare_model.apply({"params": model_params}, None,
                                   encoder_input_embeddings=connected, encoder_mask=mask,
                                   method="encode", **second_kwargs)
    if self.mode == "c_lm":
      embedded = self.module.apply({"params": model_params}, tokens,
                                   method=lambda m, t: m.token_embedder(t))
      connected = self._connect(connector_params, embedded, mask, dropout_kwargs)
      return self.module.apply({"params": model_params}, None,
                               encoder_input_embeddings=connected, encoder_mask=mask,
                               hook_inputs=hook_inputs, method="encode", **dropout_kwargs)
    encoded, encoded_mask = self.module.apply({"params": model_params}, tokens,
                                              hook_inputs=hook_inputs, method="encode",
                                              **dropout_kwargs)
    return self._connect(connector_params, encoded, encoded_mask, dropout_kwargs), encoded_mask

  def _logits(self, params, batch, *, dropout_rng):
    self._require(batch, "encoder_input_tokens", "decoder_input_tokens",
                  "decoder_target_tokens", "decoder_loss_weights")
    encoded, mask = self.encode(params, batch["encoder_input_tokens"], self._hook_inputs(batch),
                                dropout_rng)
    model_params, _ = self.split_params(params)
    logits = self.bare_model.apply({"params": model_params}, encoded, mask,
                                   batch["decoder_input_tokens"], method="decode",
                                   **self._dropout_kwargs(dropout_rng))
    return logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"]

  def _encode(self, params, batch):
    """The base class's search (the decoder's usual KV cache) runs over these states."""
    return self.encode(params, batch["encoder_input_tokens"], self._hook_inputs(batch))
