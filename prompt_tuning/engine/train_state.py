"""Trainable/frozen parameter split, the train state, and the pure train step.

A prompt-tuning run trains kilobytes while the model it adapts holds gigabytes, so the step is
built around the split:

  * `split_params` divides the parameter tree by regexes over '/'-joined paths (default: the
    input hook's variables). The trainable part lives in `TrainState`; the frozen part is passed
    to the step as a separate argument, so it is never copied, donated or differentiated.
  * `make_train_step` differentiates only with respect to the trainable tree; the optimizer
    state exists only for trainable leaves.

Full fine-tuning is the same code with the selector `('.*',)`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from prompt_tuning.engine import params as params_lib
from prompt_tuning.engine import trees

PROMPT_ONLY = (params_lib.HOOK_PATTERN,)  # the default selection: the input hook
EVERYTHING = (r".*",)

Params = Mapping[str, Any]
LossFn = Callable[[Params, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


# ------------------------------------------------------------------------------------------------
# Selecting trainable parameters.


_flatten = trees.flat


def trainable_paths(*, params: Params, patterns: Sequence[str] = PROMPT_ONLY) -> list[str]:
  """The '/'-joined paths of the leaves selected by any of `patterns` (`re.search` semantics).

  `params` is the 'params' collection, so paths look like '<hook>/prompt' or
  'encoder/layers_0/mlp/wi_0/kernel'.

  Raises:
    ValueError: if a pattern is not a valid regex or selects no parameter; a pattern that
      selects nothing is almost always a typo that would otherwise train nothing.
  """
  paths = list(_flatten(params))
  selected: set[str] = set()
  for pattern in patterns:
    try:
      compiled = re.compile(pattern)
    except re.error as error:
      raise ValueError(f"Trainable-parameter pattern {pattern!r} is not a valid regex: {error}.")
    matches = {p for p in paths if compiled.search(p)}
    if not matches:
      examples = ", ".join(repr(p) for p in paths[:3])
      raise ValueError(
          f"Trainable-parameter pattern {pattern!r} selects no parameter; paths look like "
          f"{examples}."
      )
    selected |= matches
  return [p for p in paths if p in selected]


def split_params(*, params: Params, patterns: Sequence[str] = PROMPT_ONLY) -> tuple[dict, dict]:
  """Splits a nested parameter dict into (trainable, frozen) nested dicts.

  Works on any tree whose leaves are not dicts (arrays, ShapeDtypeStructs, shardings, boxed
  params), so the same call splits parameters and their shardings consistently.
  """
  selected = set(trainable_paths(params=params, patterns=patterns))
  flat = _flatten(params)
  trainable = {k: v for k, v in flat.items() if k in selected}
  frozen = {k: v for k, v in flat.items() if k not in selected}
  return (
      trees.unflat(trainable),
      trees.unflat(frozen),
  )


def merge_params(*, trainable: Params, frozen: Params) -> dict:
  """Inverse of `split_params`: the full nested parameter dict.

  Raises:
    ValueError: if a path appears in both parts.
  """
  flat_trainable, flat_frozen = _flatten(trainable), _flatten(frozen)
  both = flat_trainable.keys() & flat_frozen.keys()
  if both:
    raise ValueError(f"Parameter {sorted(both)[0]!r} is both trainable and frozen.")
  return trees.unflat({**flat_frozen, **flat_trainable})


# ------------------------------------------------------------------------------------------------
# State.


@flax.struct.dataclass
class TrainState:
  """Everything a resumed run needs, except the frozen parameters.

  Attributes:
    step: number of optimizer updates applied (int32 scalar).
    params: the trainable parameters only.
    opt_state: optimizer state for `params` only.
    rng: raw uint32 PRNG key (`jax.random.PRNGKey` layout, so checkpoints store plain arrays);
      split once per step for dropout.
    data_position: number of batches consumed; a resumed input pipeline skips this many.
  """

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  data_position: jax.Array


def create_train_state(
    *,
    trainable_params: Params,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    step: int = 0,
    data_position: int = 0,
) -> TrainState:
  """Builds the initial state; works under `jax.jit` / `jax.eval_shape` as well."""
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return TrainState(
      step=jnp.asarray(step, jnp.int32),
      params=trainable_params,
      opt_state=optimizer.init(trainable_params),
      rng=rng,
      data_position=jnp.asarray(data_position, jnp.int32),
  )


def state_shardings(
    *,
    optimizer: optax.GradientTransformation,
    trainable_params: Any,
    trainable_shardings: Any,
    mesh: jax.sharding.Mesh,
) -> TrainState:
  """Shardings for a `TrainState`: optimizer slots shaped like a parameter follow it.

  Optimizer leaves that are not parameter-shaped (counts, Adafactor's factored row/column
  statistics) and the scalars are replicated.

  Args:
    optimizer: the optimizer the state was (or will be) built with.
    trainable_params: trainable parameters, arrays or `jax.ShapeDtypeStruct`s.
    trainable_shardings: NamedShardings with the same structure.
    mesh: the device mesh.
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_opt_state = jax.eval_shape(optimizer.init, trainable_params)
  try:
    opt_shardings = optax.tree_utils.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_opt_state,
        trainable_shardings,
        transform_non_params=lambda _: replicated,
    )
  except (ValueError, TypeError):  # e.g. per-group optimizers (masked inner states)
    opt_shardings = _shardings_by_path(abstract_opt_state, trainable_params,
                                       trainable_shardings, replicated)
  return TrainState(
      step=replicated,
      params=trainable_shardings,
      opt_state=opt_shardings,
      rng=replicated,
      data_position=replicated,
  )


def _shardings_by_path(abstract_opt_state, trainable_params, trainable_shardings, replicated):
  """Optimizer-state shardings for states `tree_map_params` cannot walk: a state leaf whose key
  path ends with a parameter's path and has that parameter's shape takes its sharding; every
  other leaf (counts, factored statistics, masked placeholders) is replicated."""
  params = _flatten(trainable_params)
  shardings = _flatten(trainable_shardings)

  def key_name(key):
    return str(getattr(key, "key", getattr(key, "name", getattr(key, "idx", key))))

  def pick(path, leaf):
    names = [key_name(k) for k in path]
    for end in range(len(names)):
      candidate = "/".join(names[end:])
      if candidate in params and tuple(params[candidate].shape) == tuple(leaf.shape):
        return shardings[candidate]
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_opt_state)


# ------------------------------------------------------------------------------------------------
# Step.


def _split_microbatches(batch: Any, num_microbatches: int) -> Any:
  """[B, ...] -> [M, B/M, ...], microbatch i taking rows i, i+M, i+2M, ...

  Strided rows keep every microbatch spread over all data shards of a batch-sharded array.
  """

  def split(x):
    if x.shape[0] % num_microbatches:
      raise ValueError(
          f"Batch size {x.shape[0]} is not divisible by num_microbatches={num_microbatches}."
      )
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)

  return jax.tree.map(split, batch)


def make_train_step(
    *,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    num_microbatches: int = 1,
    max_grad_norm: Optional[float] = None,
    loss_reduction: str = "mean",
    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
) -> Callable[[TrainState, Params, Any], tuple[TrainState, dict[str, jax.Array]]]:
  """Builds the pure function `train_step(state, frozen, batch) -> (state, metrics)`.

  Args:
    loss_fn: `loss_fn(params_full, batch, dropout_rng) -> (loss, metrics)`, where
      `params_full` is the merged trainable+frozen tree and `metrics` a dict of scalars.
    optimizer: optax transformation whose state is `state.opt_state`.
    num_microbatches: split the batch into this many parts and accumulate gradients over them
      (sequentially, so activations of only one part are live at a time).
    max_grad_norm: clip the gradients to this global norm before the optimizer; None = no clip.
    loss_reduction: how microbatch losses, gradients and metrics combine: 'mean' when
      `loss_fn` returns a mean over its (equal-sized) microbatch, 'sum' when it returns a sum
      or a sum divided by a constant. Either way the result equals one full-batch call.
    learning_rate_fn: if given, `metrics['learning_rate'] = learning_rate_fn(state.step)`.

  Returns:
    The step function; jit it with the frozen tree as a non-donated argument. Metrics always
    contain 'loss' and 'grad_norm' (before clipping) plus whatever `loss_fn` reports.
  """
  if num_microbatches < 1:
    raise ValueError(f"num_microbatches must be at least 1, got {num_microbatches}.")
  if loss_reduction not in ("mean", "sum"):
    raise ValueError(f"loss_reduction must be 'mean' or 'sum', got {loss_reduction!r}.")

  def grads_and_metrics(trainable, frozen, batch, rng):
    def loss_of_trainable(params):
      return loss_fn(merge_params(trainable=params, frozen=frozen), batch, rng)

    (loss, metrics), grads = jax.value_and_grad(loss_of_trainable, has_aux=True)(trainable)
    return grads, {**metrics, "loss": loss}

  def accumulate(trainable, frozen, batch, rng):
    if num_microbatches == 1:
      return grads_and_metrics(trainable, frozen, batch, rng)
    microbatches = _split_microbatches(batch, num_microbatches)

    def body(carry, index_and_batch):
      index, microbatch = index_and_batch
      grads, metrics = grads_and_metrics(
          trainable, frozen, microbatch, jax.random.fold_in(rng, index)
      )
      return jax.tree.map(jnp.add, carry, (grads, metrics)), None

    first = jax.tree.map(lambda x: x[0], microbatches)
    shapes = jax.eval_shape(grads_and_metrics, trainable, frozen, first, rng)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), shapes)
    (grads, metrics), _ = jax.lax.scan(
        body, zeros, (jnp.arange(num_microbatches), microbatches)
    )
    if loss_reduction == "mean":
      grads, metrics = jax.tree.map(lambda x: x / num_microbatches, (grads, metrics))
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, trainable)
    return grads, metrics

  def train_step(state: TrainState, frozen: Params, batch: Any):
    rng, step_rng = jax.random.split(state.rng)
    grads, metrics = accumulate(state.params, frozen, batch, step_rng)
    grad_norm = optax.global_norm(grads)
    if max_grad_norm is not None:
      scale = jnp.minimum(1.0, max_grad_norm / jnp.maximum(grad_norm, 1e-12))
      grads = jax.tree.map(lambda g: (g * scale).astype(g.dtype), grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "grad_norm": grad_norm}
    if learning_rate_fn is not None:
      metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        rng=rng,
        data_position=state.data_position + 1,
    )
    return new_state, metrics

  return train_step
