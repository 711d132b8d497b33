"""Analytic matmul FLOPs of one T5 training step (what model FLOPs utilisation divides).

Only matrix products are counted (projections, attention scores and mixing, logits); norms,
activations, softmax and the optimizer are not. One multiply-accumulate is 2 FLOPs.

Backward passes:
  * a full fine-tuning step needs, for every product, the gradient of both operands: 2x its
    forward cost, so the step is 3x the forward;
  * a prompt-tuning step needs only gradients with respect to activations, never weights:
    1x the forward cost of each weight product and 2x that of each attention product (both of
    whose operands are activations). In the decoder's first layer, the self-attention block and
    the cross-attention queries do not depend on the prompt: the first has no backward at all,
    and only the keys' side of the query-key product is differentiated. The step is therefore a
    little over 2x the forward.
"""
from __future__ import annotations

import dataclasses

from benchmarks.shapes import BenchShape


@dataclasses.dataclass(frozen=True)
class StepFlops:
  """FLOPs of one step of each kind (per batch)."""

  forward: float
  prompt_step: float
  full_step: float


def _self_attention_macs(length: int, emb: int, inner: int) -> tuple[float, float]:
  """(weight, attention) multiply-accumulates of one self-attention block per example."""
  return 4 * length * emb * inner, 2 * length * length * inner


def step_flops(shape: BenchShape) -> StepFlops:
  """Counts the forward, prompt-tuning step and full fine-tuning step FLOPs of `shape`."""
  cfg = shape.config
  inner, emb, mlp = cfg.num_heads * cfg.head_dim, cfg.emb_dim, cfg.mlp_dim
  enc, dec = shape.encoder_length, shape.target_length
  mlp_macs_per_token = (len(cfg.mlp_activations) + 1) * emb * mlp

  enc_w, enc_a = _self_attention_macs(enc, emb, inner)
  enc_w += enc * mlp_macs_per_token
  self_w, self_a = _self_attention_macs(dec, emb, inner)
  cross_w = 2 * dec * emb * inner + 2 * enc * emb * inner  # q, out over targets; k, v over inputs
  cross_a = 2 * dec * enc * inner
  dec_w = self_w + cross_w + dec * mlp_macs_per_token
  dec_a = self_a + cross_a
  logits_w = dec * emb * cfg.vocab_size

  weight_macs = cfg.num_encoder_layers * enc_w + cfg.num_decoder_layers * dec_w + logits_w
  attention_macs = cfg.num_encoder_layers * enc_a + cfg.num_decoder_layers * dec_a
  forward = weight_macs + attention_macs
  first_decoder_layer_constant = (self_w + 2 * self_a  # self-attention: no backward
                                  + dec * emb * inner  # cross-attention query projection
                                  + dec * enc * inner)  # query side of the query-key product
  prompt_backward = weight_macs + 2 * attention_macs - first_decoder_layer_constant
  scale = 2 * shape.batch  # FLOPs per multiply-accumulate, times the batch
  return StepFlops(forward=scale * forward,
                   prompt_step=scale * (forward + prompt_backward),
                   full_step=scale * 3 * forward)


def jaxpr_matmul_flops(jaxpr) -> float:
  """FLOPs of every `dot_general` in a (closed) jaxpr, nested jaxprs included.

  This counts what JAX will actually run (after autodiff has dropped the gradients nobody asked
  for), so comparing it with `step_flops` checks the analytic count above.
  """
  import jax.extend.core  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  total = 0.0
  for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      contracted = np.prod([lhs_shape[d] for d in lhs_contract], dtype=np.float64)
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape, dtype=np.float64) * contracted
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += jaxpr_matmul_flops(sub)
  return total
