"""Tests for prompt_tuning.engine.optimizers: schedule values, Adafactor behaviour, gin files."""

import pathlib

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.engine import optimizers

REPO = pathlib.Path(__file__).resolve().parents[2]


def _values(schedule, steps):
  return [float(schedule(jnp.asarray(s))) for s in steps]


# ------------------------------------------------------------------------------------------------
# Schedules.


def test_constant_schedule():
  np.testing.assert_allclose(_values(optimizers.constant(value=0.3), [0, 1, 10_000]), [0.3] * 3)


def test_linear_warmup_ramps_then_holds():
  schedule = optimizers.linear_warmup(peak_value=1.0, warmup_steps=10, init_value=0.0)
  np.testing.assert_allclose(_values(schedule, [0, 5, 10, 11, 1000]), [0.0, 0.5, 1.0, 1.0, 1.0],
                             atol=1e-7)


def test_rsqrt_decay_is_flat_during_warmup_then_inverse_sqrt():
  schedule = optimizers.rsqrt_decay(scale=1.0, warmup_steps=10_000)
  np.testing.assert_allclose(_values(schedule, [0, 5_000, 10_000, 40_000, 1_000_000]),
                             [0.01, 0.01, 0.01, 0.005, 0.001], rtol=1e-6)


def test_rsqrt_decay_cap():
  schedule = optimizers.rsqrt_decay(scale=1.0, warmup_steps=100, max_value=0.05)
  np.testing.assert_allclose(_values(schedule, [0, 400, 1600]), [0.05, 0.05, 0.025], rtol=1e-6)


def test_rsqrt_decay_rejects_zero_warmup():
  with pytest.raises(ValueError, match="warmup_steps >= 1"):
    optimizers.rsqrt_decay(warmup_steps=0)


def test_cosine_decay_warms_up_then_follows_half_cosine():
  schedule = optimizers.cosine_decay(peak_value=1.0, warmup_steps=10, decay_steps=110,
                                     end_value=0.1)
  # Warm-up 0 -> 1 over 10 steps; then cosine over the remaining 100 steps down to 0.1.
  np.testing.assert_allclose(_values(schedule, [0, 5, 10, 60, 110, 500]),
                             [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Optimizers.


def _quadratic_run(optimizer, steps):
  target = jnp.linspace(-2.0, 2.0, 32).reshape(4, 8)
  loss = lambda p: jnp.sum((p - target) ** 2)
  params = jnp.zeros((4, 8))
  state = optimizer.init(params)
  initial = float(loss(params))

  @jax.jit
  def step(params, state):
    updates, state = optimizer.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return initial, float(loss(params))


def test_adafactor_minimises_a_quadratic():
  initial, final = _quadratic_run(optimizers.adafactor(learning_rate=0.1), steps=60)
  assert initial == pytest.approx(45.419, rel=1e-4)
  assert final < 1e-3 * initial


def test_adafactor_weight_decay_is_independent_of_learning_rate():
  params = {"prompt": jnp.full((4, 8), 2.0)}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for learning_rate in (0.3, 0.01):
    optimizer = optimizers.adafactor(learning_rate=learning_rate)  # weight decay 1e-5 default
    updates, _ = optimizer.update(zero_grads, optimizer.init(params), params)
    np.testing.assert_allclose(np.asarray(updates["prompt"]), -2.0 * 1e-5, rtol=1e-6)


def test_adamw_weight_decay_scales_with_learning_rate():
  params = {"w": jnp.full((3,), 2.0)}
  optimizer = optimizers.adamw(learning_rate=0.1, weight_decay=0.01)
  updates, _ = optimizer.update(jax.tree.map(jnp.zeros_like, params), optimizer.init(params),
                                params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.01 * 2.0, rtol=1e-6)


def test_adam_first_step_moves_each_value_by_the_learning_rate():
  params = {"w": jnp.array([1.0, -3.0, 0.5])}
  grads = {"w": jnp.array([0.2, -5.0, 1e-3])}
  optimizer = optimizers.adam(learning_rate=0.01)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), [-0.01, 0.01, -0.01], rtol=1e-4)


def test_adafactor_factors_only_large_matrices():
  optimizer = optimizers.adafactor()
  state = optimizer.init({"prompt": jnp.zeros((100, 768)), "kernel": jnp.zeros((256, 512))})
  factored = state[0]
  assert factored.v_row["kernel"].shape == (256,) and factored.v_col["kernel"].shape == (512,)
  assert factored.v["prompt"].shape == (100, 768)  # 100 < 128: full second moment
  assert factored.v_row["prompt"].shape == (1,)


def test_prompt_tuning_default_ignores_parameter_scale():
  grads = {"small": jnp.full((4, 8), 0.1), "large": jnp.full((4, 8), 0.1)}
  params = {"small": jnp.full((4, 8), 0.01), "large": jnp.full((4, 8), 100.0)}
  plain = optimizers.adafactor(weight_decay_rate=None)
  updates, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["small"]), np.asarray(updates["large"]))
  np.testing.assert_allclose(np.asarray(updates["small"]), -0.3, rtol=1e-5)  # RMS-normalised
  scaled = optimizers.adafactor(weight_decay_rate=None, multiply_by_parameter_scale=True)
  updates, _ = scaled.update(grads, scaled.init(params), params)
  ratio = float(updates["large"][0, 0] / updates["small"][0, 0])
  assert ratio == pytest.approx(100.0 / 0.01, rel=1e-4)  # updates scale with parameter RMS


def test_get_optimizer_by_name():
  optimizer = optimizers.get_optimizer(name="adamw", learning_rate=0.1, weight_decay=0.0)
  params = {"w": jnp.ones((2,))}
  updates, _ = optimizer.update({"w": jnp.ones((2,))}, optimizer.init(params), params)
  np.testing.assert_allclose(np.asarray(updates["w"]), -0.1, rtol=1e-4)
  with pytest.raises(ValueError, match="Unknown optimizer 'lamb'; expected one of"):
    optimizers.get_optimizer(name="lamb")


# ------------------------------------------------------------------------------------------------
# Gin files.


def _register():
  for fn in (optimizers.adafactor, optimizers.adam, optimizers.adamw, optimizers.constant,
             optimizers.linear_warmup, optimizers.rsqrt_decay, optimizers.cosine_decay):
    try:
      gin.external_configurable(fn, module="optimizers")
    except ValueError:  # already registered by the entry points or an earlier test
      pass


def _run_from_gin(name):
  _register()
  gin.clear_config()
  try:
    gin.parse_config_file(str(REPO / "gin" / "optimizers" / name))
    return _quadratic_run(gin.get_configurable("optimizers.adafactor")(), steps=1)
  finally:
    gin.clear_config()


def test_prompt_tuning_gin_binds_the_paper_settings():
  _register()
  gin.clear_config()
  try:
    gin.parse_config_file(str(REPO / "gin" / "optimizers" / "adafactor_prompt_tuning.gin"))
    assert gin.query_parameter("optimizers.adafactor.learning_rate") == 0.3
    assert gin.query_parameter("optimizers.adafactor.decay_rate") == 0.8
    assert gin.query_parameter("optimizers.adafactor.weight_decay_rate") == 1e-5
    assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is False
  finally:
    gin.clear_config()
  initial, after_one_step = _run_from_gin("adafactor_prompt_tuning.gin")
  assert after_one_step < initial


def test_fine_tuning_gin_builds_a_working_optimizer():
  _register()
  gin.clear_config()
  try:
    gin.parse_config_file(str(REPO / "gin" / "optimizers" / "adafactor_fine_tuning.gin"))
    assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is True
    assert gin.query_parameter("optimizers.adafactor.learning_rate") == 1e-3
  finally:
    gin.clear_config()
  initial, after_one_step = _run_from_gin("adafactor_fine_tuning.gin")
  assert after_one_step < initial


def test_every_optimizer_gin_file_is_tested():
  files = {p.name for p in (REPO / "gin" / "optimizers").glob("*.gin")}
  assert files == {"adafactor_prompt_tuning.gin", "adafactor_fine_tuning.gin"}
