"""Tests for prompt_tuning.engine.train_state on a toy Flax model with an `input_hook`.

The sharded (4 x 2 mesh) version of the train step is compared with one device in
test_partitioning.py, which runs it in an 8-device subprocess.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import train_state

# A frozen kernel shape that occurs nowhere else, so the jaxpr can be searched for its gradient.
FROZEN_KERNEL_SHAPE = (6, 7)


class Hook(nn.Module):
  """Adds the mean of a [3, 6] prompt to every input row."""

  @nn.compact
  def __call__(self, x):  # [B, 6] -> [B, 6]
    prompt = self.param("prompt", nn.initializers.normal(0.5), (3, 6))
    return x + prompt.mean(0)


class Toy(nn.Module):

  @nn.compact
  def __call__(self, x):  # [B, 6] -> [B, 2]
    x = Hook(name="input_hook")(x)
    x = jnp.tanh(nn.Dense(FROZEN_KERNEL_SHAPE[1], name="hidden")(x))
    return nn.Dense(2, name="out")(x)


MODEL = Toy()


def _params():
  return MODEL.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))["params"]


def _batch(size=8, seed=1):
  rng = np.random.default_rng(seed)
  return {
      "x": rng.normal(size=(size, 6)).astype(np.float32),
      "y": rng.normal(size=(size, 2)).astype(np.float32),
  }


def mean_loss(params, batch, dropout_rng):
  del dropout_rng
  error = MODEL.apply({"params": params}, batch["x"]) - batch["y"]
  return jnp.mean(error**2), {"abs_error": jnp.mean(jnp.abs(error))}


def _train(*, patterns, optimizer, steps=5, loss_fn=mean_loss, **step_kwargs):
  params = _params()
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optimizer, rng=jax.random.PRNGKey(2)
  )
  step = jax.jit(train_state.make_train_step(loss_fn=loss_fn, optimizer=optimizer, **step_kwargs))
  losses = []
  for i in range(steps):
    state, metrics = step(state, frozen, _batch(seed=i))
    losses.append(float(metrics["loss"]))
  return params, frozen, state, losses


# ------------------------------------------------------------------------------------------------
# Selector.


@pytest.mark.slow
def test_default_selector_picks_only_the_hook():
  trainable, frozen = train_state.split_params(params=_params())
  assert list(trainable) == ["input_hook"]
  assert set(frozen) == {"hidden", "out"}
  assert trainable["input_hook"]["prompt"].shape == (3, 6)


def test_several_patterns_union_and_paths_are_slash_joined():
  paths = train_state.trainable_paths(
      params=_params(), patterns=(r"^input_hook/", r"^out/bias$")
  )
  assert paths == ["input_hook/prompt", "out/bias"]


def test_split_then_merge_restores_the_tree():
  params = _params()
  trainable, frozen = train_state.split_params(params=params, patterns=(r"bias",))
  merged = train_state.merge_params(trainable=trainable, frozen=frozen)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(merged), jax.tree.leaves(params)):
    assert a is b


def test_pattern_that_selects_nothing_is_an_error_naming_it():
  with pytest.raises(ValueError, match=r"'\^prompt/' selects no parameter; paths look like"):
    train_state.split_params(params=_params(), patterns=(r"^input_hook/", r"^prompt/"))


def test_invalid_regex_is_an_error():
  with pytest.raises(ValueError, match="not a valid regex"):
    train_state.split_params(params=_params(), patterns=("input_hook/(",))


def test_merging_overlapping_parts_is_an_error():
  params = _params()
  with pytest.raises(ValueError, match="'hidden/bias' is both trainable and frozen"):
    train_state.merge_params(trainable=params, frozen=params)


# ------------------------------------------------------------------------------------------------
# What is and is not trained.


def _arrays_with_shape(jaxpr, shape):
  """Counts equation outputs of `shape` in a closed jaxpr, including nested jaxprs."""
  count = 0
  for eqn in jaxpr.eqns:
    count += sum(1 for v in eqn.outvars if getattr(v.aval, "shape", None) == shape)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, "jaxpr", None)
        if inner is not None:
          count += _arrays_with_shape(getattr(inner, "jaxpr", inner), shape)
  return count


@pytest.mark.parametrize("patterns, expect_kernel_gradient", [(train_state.PROMPT_ONLY, False),
                                                               (train_state.EVERYTHING, True)])
def test_no_gradient_is_computed_for_frozen_leaves(patterns, expect_kernel_gradient):
  params = _params()
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  optimizer = optax.sgd(0.1)
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optimizer, rng=jax.random.PRNGKey(0)
  )
  step = train_state.make_train_step(loss_fn=mean_loss, optimizer=optimizer)
  jaxpr = jax.make_jaxpr(step)(state, frozen, _batch())
  # The only way to produce a (6, 7) array is the hidden kernel's gradient (or its update).
  assert (_arrays_with_shape(jaxpr.jaxpr, FROZEN_KERNEL_SHAPE) > 0) == expect_kernel_gradient


def test_frozen_leaves_are_bit_identical_after_training_and_prompt_moves():
  params, frozen, state, losses = _train(patterns=train_state.PROMPT_ONLY,
                                         optimizer=optax.adam(0.05), steps=6)
  for path in ("hidden", "out"):
    for name in ("kernel", "bias"):
      np.testing.assert_array_equal(np.asarray(frozen[path][name]),
                                    np.asarray(params[path][name]))
  moved = np.abs(np.asarray(state.params["input_hook"]["prompt"]) -
                 np.asarray(params["input_hook"]["prompt"])).max()
  assert moved > 0.05
  assert int(state.step) == 6 and int(state.data_position) == 6


def test_optimizer_state_holds_only_trainable_leaves():
  trainable, _ = train_state.split_params(params=_params())
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optax.adam(1e-3), rng=jax.random.PRNGKey(0)
  )
  adam_state = state.opt_state[0]
  assert jax.tree.structure(adam_state.mu) == jax.tree.structure(trainable)
  # mu + nu for the 18 prompt values, plus the step count.
  assert sum(np.size(x) for x in jax.tree.leaves(state.opt_state)) == 2 * 18 + 1


def test_full_fine_tuning_trains_every_leaf():
  params, frozen, state, losses = _train(patterns=train_state.EVERYTHING,
                                         optimizer=optax.adam(0.05), steps=6)
  assert frozen == {}
  for before, after in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-3
  assert losses[-1] < losses[0]


def test_typed_key_is_stored_as_raw_key_data():
  trainable, _ = train_state.split_params(params=_params())
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optax.sgd(1.0), rng=jax.random.key(3)
  )
  np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(jax.random.PRNGKey(3)))


# ------------------------------------------------------------------------------------------------
# Microbatching, clipping and metrics.


def _one_step(*, num_microbatches, loss_fn=mean_loss, loss_reduction="mean", patterns=(".*",)):
  params = _params()
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  optimizer = optax.sgd(1.0)  # the update is exactly -grad
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optimizer, rng=jax.random.PRNGKey(0)
  )
  step = jax.jit(train_state.make_train_step(
      loss_fn=loss_fn, optimizer=optimizer, num_microbatches=num_microbatches,
      loss_reduction=loss_reduction,
  ))
  return step(state, frozen, _batch(size=8))


@pytest.mark.slow
@pytest.mark.parametrize("num_microbatches", [2, 4, 8])
def test_microbatched_step_equals_one_big_batch(num_microbatches):
  full_state, full_metrics = _one_step(num_microbatches=1)
  micro_state, micro_metrics = _one_step(num_microbatches=num_microbatches)
  for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(micro_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  for name in ("loss", "abs_error", "grad_norm"):
    np.testing.assert_allclose(float(micro_metrics[name]), float(full_metrics[name]), rtol=1e-5)


@pytest.mark.slow
def test_microbatching_with_summed_loss():
  def sum_loss(params, batch, rng):
    loss, metrics = mean_loss(params, batch, rng)
    return loss * batch["x"].shape[0], metrics

  full_state, full_metrics = _one_step(num_microbatches=1, loss_fn=sum_loss, loss_reduction="sum")
  micro_state, micro_metrics = _one_step(num_microbatches=4, loss_fn=sum_loss,
                                         loss_reduction="sum")
  np.testing.assert_allclose(float(micro_metrics["loss"]), float(full_metrics["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full_state.params), jax.tree.leaves(micro_state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_batch_not_divisible_by_microbatches_is_an_error():
  with pytest.raises(ValueError, match="Batch size 8 is not divisible by num_microbatches=3"):
    _one_step(num_microbatches=3)


def test_each_microbatch_gets_its_own_dropout_key():
  seen = []

  def recording_loss(params, batch, rng):
    jax.debug.callback(lambda k: seen.append(np.asarray(k).tobytes()), rng)
    return mean_loss(params, batch, rng)

  _one_step(num_microbatches=4, loss_fn=recording_loss)
  assert len(seen) == 4 and len(set(seen)) == 4


@pytest.mark.slow
def test_global_norm_clipping_limits_the_update_and_reports_the_raw_norm():
  params = _params()
  trainable, frozen = train_state.split_params(params=params)
  expected_norm = float(optax.global_norm(jax.grad(
      lambda t: mean_loss(train_state.merge_params(trainable=t, frozen=frozen), _batch(), None)[0]
  )(trainable)))
  optimizer = optax.sgd(1.0)
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optimizer, rng=jax.random.PRNGKey(0)
  )
  max_norm = expected_norm / 10
  step = train_state.make_train_step(loss_fn=mean_loss, optimizer=optimizer,
                                     max_grad_norm=max_norm)
  new_state, metrics = jax.jit(step)(state, frozen, _batch())
  update = new_state.params["input_hook"]["prompt"] - trainable["input_hook"]["prompt"]
  np.testing.assert_allclose(float(jnp.linalg.norm(update)), max_norm, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), expected_norm, rtol=1e-5)


def test_learning_rate_metric_follows_the_schedule():
  schedule = optax.linear_schedule(0.0, 1.0, 10)
  trainable, frozen = train_state.split_params(params=_params())
  optimizer = optax.sgd(schedule)
  state = train_state.create_train_state(
      trainable_params=trainable, optimizer=optimizer, rng=jax.random.PRNGKey(0), step=4
  )
  step = train_state.make_train_step(loss_fn=mean_loss, optimizer=optimizer,
                                     learning_rate_fn=schedule)
  _, metrics = jax.jit(step)(state, frozen, _batch())
  np.testing.assert_allclose(float(metrics["learning_rate"]), 0.4, rtol=1e-6)


def test_bad_step_options_are_errors():
  with pytest.raises(ValueError, match="num_microbatches must be at least 1"):
    train_state.make_train_step(loss_fn=mean_loss, optimizer=optax.sgd(1.0), num_microbatches=0)
  with pytest.raises(ValueError, match="loss_reduction must be 'mean' or 'sum'"):
    train_state.make_train_step(loss_fn=mean_loss, optimizer=optax.sgd(1.0),
                                loss_reduction="avg")
