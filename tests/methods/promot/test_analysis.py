"""The format-learning analysis: format-only batches, the cosine, the curve, CSV and PNG."""
import csv

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import sequence_start
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


def _prefix_lm(pairs, lengths, converter=None):
  """The batch seqio's PrefixLMFeatureConverter (unpacked; or `converter`) makes of (inputs,
  targets) pairs."""
  dataset = tf.data.Dataset.from_generator(
      lambda: ({"inputs": i, "targets": t} for i, t in pairs),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32)})
  converter = converter or seqio.PrefixLMFeatureConverter(pack=False)
  converted = converter(dataset, lengths)
  rows = list(converted.as_numpy_iterator())
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def test_format_only_on_a_prefix_lm_batch_joins_each_input_to_the_other_target():
  """Decoder-only rows hold input and target together: with two rows (the only derangement is
  the swap) the result is exactly what the converter makes of the swapped pairs."""
  a_in, a_tgt, b_in, b_tgt = [7, 8, 1], [3, 1], [5, 1], [4, 9, 6, 1]
  lengths = {"inputs": 4, "targets": 5}
  batch = _prefix_lm([(a_in, a_tgt), (b_in, b_tgt)], lengths)
  expected = _prefix_lm([(a_in, b_tgt), (b_in, a_tgt)], lengths)
  shuffled = analysis.format_only(batch, np.random.default_rng(0))
  assert sorted(shuffled) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(shuffled[key], value, err_msg=key)
  np.testing.assert_array_equal(shuffled["decoder_target_tokens"][0],
                                [7, 8, 1, 4, 9, 6, 1, 0, 0])


def test_format_only_keeps_a_real_token_0_and_the_start_token_of_a_bos_batch():
  """Llama-style batches (BOS 9, masks from lengths): the targets [4, 0, 6] and [0] hold a
  real token 0, which must travel with its target; the rows still start with the BOS."""
  converter = sequence_start.StartTokenPrefixLMConverter(start_token=9, pack=False)
  a_in, a_tgt, b_in, b_tgt = [7, 8, 1], [0], [5, 1], [4, 0, 6]
  lengths = {"inputs": 4, "targets": 5}
  batch = _prefix_lm([(a_in, a_tgt), (b_in, b_tgt)], lengths, converter)
  expected = _prefix_lm([(a_in, b_tgt), (b_in, a_tgt)], lengths, converter)
  shuffled = analysis.format_only(batch, np.random.default_rng(0))
  for key, value in expected.items():
    np.testing.assert_array_equal(shuffled[key], value, err_msg=key)
  np.testing.assert_array_equal(shuffled["decoder_target_tokens"][0],
                                [7, 8, 1, 4, 0, 6, 0, 0, 0])
  np.testing.assert_array_equal(shuffled["decoder_input_tokens"][0],
                                [9, 7, 8, 1, 4, 0, 0, 0, 0])
  np.testing.assert_array_equal(shuffled["decoder_loss_weights"].sum(axis=1), [3, 1])


def test_format_only_refuses_batches_it_cannot_split():
  with pytest.raises(ValueError, match="neither 'encoder_input_tokens' nor"):
    analysis.format_only({"decoder_target_tokens": np.ones((2, 3))}, np.random.default_rng(0))
  packed = {**_batch(2), "decoder_segment_ids": np.array([[1, 2], [1, 1]])}
  with pytest.raises(ValueError, match="unpacked batches; this one is packed"):
    analysis.format_only(packed, np.random.default_rng(0))


def test_gradient_cosine_on_a_hand_computed_case():
  """pred = w x + b, loss = mean (pred - y)^2, x = (1, -1), y = (3, 1); two examples, so the
  format-only targets are the swapped (1, 3). From w = b = 0:
    step 0: task grad (dw, db) = (-2, -4), format-only (2, -4): cos = 12 / 20 = 0.6;
    SGD 0.1 on the task grad: w = 0.2, b = 0.4, residuals (-2.4, -0.8) and (-0.4, -2.8):
    step 1: task (-1.6, -3.2), format-only (2.4, -3.2): cos = 6.4 / (sqrt(12.8) 4) = 1/sqrt(5);
    losses 5 -> 3.2 (task), 5 -> 4 (format-only)."""
  batch = {"encoder_input_tokens": np.array([1.0, -1.0]),
           "decoder_target_tokens": np.array([3.0, 1.0])}

  def loss_fn(params, b):
    pred = b["encoder_input_tokens"] * params["w"] + params["b"]
    return jnp.mean((pred - b["decoder_target_tokens"]) ** 2)

  rows = analysis.gradient_cosines(
      loss_fn=loss_fn, trainable={"w": jnp.zeros(()), "b": jnp.zeros(())},
      batches=iter([batch] * 2), optimizer=optax.sgd(0.1), steps=1, every=1)
  assert [r["step"] for r in rows] == [0, 1]
  assert rows[0]["cosine"] == pytest.approx(0.6, abs=1e-6)
  assert rows[1]["cosine"] == pytest.approx(5 ** -0.5, abs=1e-6)
  assert [rows[0]["loss"], rows[0]["format_loss"]] == pytest.approx([5.0, 5.0], abs=1e-5)
  assert [rows[1]["loss"], rows[1]["format_loss"]] == pytest.approx([3.2, 4.0], abs=1e-5)


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
      yield {"encoder_input_tokens": x, "decoder_target_tokens": (5.0 + x[:, :1])}

  def loss_fn(params, batch):
    pred = batch["encoder_input_tokens"] @ params["w"] + params["b"]
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
