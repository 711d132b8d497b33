"""The format-learning analysis: format-only batches, the cosine, the curve, CSV and PNG."""
import csv

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning.methods.promot import analysis


def _batch(n=6):
  return {"encoder_input_tokens": np.arange(n * 3).reshape(n, 3),
          "decoder_target_tokens": np.arange(n * 2).reshape(n, 2) + 100,
          "decoder_input_tokens": np.arange(n * 2).reshape(n, 2) + 200,
          "decoder_loss_weights": np.ones((n, 2))}


def test_format_only_moves_every_target_and_keeps_the_inputs():
  batch = _batch()
  shuffled = analysis.format_only(batch, np.random.default_rng(0))
  np.testing.assert_array_equal(shuffled["encoder_input_tokens"], batch["encoder_input_tokens"])
  assert sorted(map(tuple, shuffled["decoder_target_tokens"])) == \
      sorted(map(tuple, batch["decoder_target_tokens"]))
  moved = (shuffled["decoder_target_tokens"] != batch["decoder_target_tokens"]).any(axis=1)
  assert moved.all()
  # the decoder inputs travel with their targets
  np.testing.assert_array_equal(shuffled["decoder_input_tokens"] - 100,
                                shuffled["decoder_target_tokens"])


def test_cosine_of_trees():
  a = {"x": np.array([1.0, 0.0]), "y": np.array([[0.0]])}
  assert analysis.cosine(a, a) == pytest.approx(1.0)
  assert analysis.cosine(a, {"x": np.array([0.0, 2.0]), "y": np.array([[0.0]])}) == \
      pytest.approx(0.0)
  assert analysis.cosine(a, {"x": -a["x"], "y": a["y"]}) == pytest.approx(-1.0)
  with pytest.raises(ValueError, match="zero or not finite"):
    analysis.cosine(a, {"x": np.zeros(2), "y": np.zeros((1, 1))})


def test_curve_of_a_model_that_learns_format_then_content(tmp_path):
  """A linear model y = w.x + b on targets 5 + x0: the bias (format: the answers' level)
  dominates both gradients at first, so the cosine starts near 1 and falls as it is learned."""
  rng = np.random.default_rng(0)

  def batches():
    while True:
      x = rng.normal(size=(32, 2))
      yield {"x": x, "decoder_target_tokens": (5.0 + x[:, :1])}

  def loss_fn(params, batch):
    pred = batch["x"] @ params["w"] + params["b"]
    return jnp.mean((pred - batch["decoder_target_tokens"]) ** 2)

  rows = analysis.gradient_cosines(
      loss_fn=loss_fn, trainable={"w": jnp.zeros((2, 1)), "b": jnp.zeros((1,))},
      batches=batches(), optimizer=optax.sgd(0.1), steps=60, every=20)
  assert [r["step"] for r in rows] == [0, 20, 40, 60]
  assert rows[0]["cosine"] > 0.9
  assert rows[-1]["cosine"] < rows[0]["cosine"] - 0.3
  assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]
  path = analysis.write_csv([{"run": "x", **r} for r in rows], str(tmp_path / "c.csv"))
  with open(path) as f:
    read = list(csv.DictReader(f))
  assert [int(r["step"]) for r in read] == [0, 20, 40, 60]
  png = analysis.plot({"x": rows}, str(tmp_path / "c.png"), "t")
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
