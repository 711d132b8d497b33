"""Optimizers and learning-rate schedules, built from plain keyword arguments.

Defaults follow prompt tuning as published for T5: Adafactor with factored second moments,
decay rate 0.8, update clipping at RMS 1.0, no parameter-scale multiplication (a prompt's scale
is not meaningful the way a weight matrix's is), weight decay 1e-5 and a constant learning rate
of 0.3. Every factory takes either a float or a schedule (a function of the step) as its
learning rate, so gin can bind e.g. `adafactor.learning_rate = @rsqrt_decay()`.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]
LearningRate = Union[float, Schedule]


# ------------------------------------------------------------------------------------------------
# Schedules.


def constant(*, value: float = 0.3) -> Schedule:
  """`value` at every step."""
  return optax.constant_schedule(value)


def linear_warmup(*, peak_value: float, warmup_steps: int, init_value: float = 0.0) -> Schedule:
  """Linear ramp from `init_value` at step 0 to `peak_value` at `warmup_steps`, then constant."""
  return optax.join_schedules(
      [
          optax.linear_schedule(init_value, peak_value, warmup_steps),
          optax.constant_schedule(peak_value),
      ],
      [warmup_steps],
  )


def rsqrt_decay(
    *, scale: float = 1.0, warmup_steps: int = 10_000, max_value: Optional[float] = None
) -> Schedule:
  """T5's inverse square root: `scale / sqrt(max(step, warmup_steps))`, capped at `max_value`.

  Constant at `scale / sqrt(warmup_steps)` during warm-up (T5 pre-training: 0.01 for 10k steps),
  then decays as 1/sqrt(step).
  """
  if warmup_steps < 1:
    raise ValueError(f"rsqrt_decay needs warmup_steps >= 1, got {warmup_steps}.")

  def schedule(step):
    step = jnp.maximum(jnp.asarray(step, jnp.float32), warmup_steps)
    value = scale * jax.lax.rsqrt(step)
    return value if max_value is None else jnp.minimum(value, max_value)

  return schedule


def cosine_decay(
    *,
    peak_value: float,
    decay_steps: int,
    warmup_steps: int = 0,
    init_value: float = 0.0,
    end_value: float = 0.0,
) -> Schedule:
  """Linear warm-up to `peak_value`, then half-cosine down to `end_value` at `decay_steps`.

  `decay_steps` counts from step 0 and includes the warm-up.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=init_value,
      peak_value=peak_value,
      warmup_steps=warmup_steps,
      decay_steps=decay_steps,
      end_value=end_value,
  )


# ------------------------------------------------------------------------------------------------
# Optimizers.


def adafactor(
    *,
    learning_rate: LearningRate = 0.3,
    decay_rate: float = 0.8,
    clipping_threshold: Optional[float] = 1.0,
    multiply_by_parameter_scale: bool = False,
    weight_decay_rate: Optional[float] = 1e-5,
    momentum: Optional[float] = None,
    factored: bool = True,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
) -> optax.GradientTransformation:
  """Adafactor with T5 prompt-tuning defaults.

  Weight decay is applied after the learning-rate scaling, so each step subtracts
  `weight_decay_rate * param` regardless of the learning rate (the T5 Adafactor convention).
  For full fine-tuning T5 uses `multiply_by_parameter_scale=True` and learning rate 1e-3.
  """
  return optax.adafactor(
      learning_rate=learning_rate,
      min_dim_size_to_factor=min_dim_size_to_factor,
      decay_rate=decay_rate,
      multiply_by_parameter_scale=multiply_by_parameter_scale,
      clipping_threshold=clipping_threshold,
      momentum=momentum,
      weight_decay_rate=weight_decay_rate,
      eps=epsilon,
      factored=factored,
  )


def adam(
    *,
    learning_rate: LearningRate = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
  """Adam (no weight decay)."""
  return optax.adam(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps)


def adamw(
    *,
    learning_rate: LearningRate = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
) -> optax.GradientTransformation:
  """AdamW: decoupled weight decay, scaled by the learning rate (`lr * weight_decay * param`)."""
  return optax.adamw(
      learning_rate=learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay
  )


OPTIMIZERS = {"adafactor": adafactor, "adam": adam, "adamw": adamw}


def get_optimizer(*, name: str, **kwargs) -> optax.GradientTransformation:
  """The optimizer registered under `name` ('adafactor', 'adam', 'adamw'), built with kwargs."""
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)}.")
  return OPTIMIZERS[name](**kwargs)
