"""Prompt insertion into right-padded batches: exact slots, masks, positions, indices, visibility.

The batch has 4 examples of length 5 with 5, 3, 1 and 0 real tokens. Embeddings encode their
origin: input slot l of example b is [b*10 + l + 1, 0]; prompt row p is [0, 100 + p]. An expected
layout is written as a string per example: 'x3' is input slot 3, 'p1' is prompt row 1.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.prompts import base
from prompt_tuning.prompts import combine

LENGTHS = [5, 3, 1, 0]
L, P = 5, 2


def _batch(positions_offset=0, visibility=None):
  batch = len(LENGTHS)
  mask = np.array([[1] * n + [0] * (L - n) for n in LENGTHS], np.int32)
  emb = np.zeros((batch, L, 2), np.float32)
  emb[..., 0] = np.arange(batch)[:, None] * 10 + np.arange(L)[None, :] + 1
  inputs = base.embedded_from_tokens(jnp.asarray(emb), jnp.asarray(mask))
  inputs = inputs.replace(positions=inputs.positions + positions_offset, visibility=visibility)
  prompt = np.zeros((batch, P, 2), np.float32)
  prompt[..., 1] = 100 + np.arange(P)[None, :]
  return inputs, jnp.asarray(prompt)


def _expected(layouts):
  """Embeddings, input_index and (prompt-row-or--1) arrays from per-example layouts."""
  emb, index = [], []
  for b, layout in enumerate(layouts):
    row_emb, row_index = [], []
    for item in layout.split():
      kind, slot = item[0], int(item[1:])
      if kind == "x":
        row_emb.append([b * 10 + slot + 1, 0])
        row_index.append(slot)
      else:
        row_emb.append([0, 100 + slot])
        row_index.append(-1)
    emb.append(row_emb)
    index.append(row_index)
  return np.array(emb, np.float32), np.array(index, np.int32)


EXPECTED_LAYOUTS = {
    "prefix": ["p0 p1 x0 x1 x2 x3 x4"] * 4,
    "after_bos": ["x0 p0 p1 x1 x2 x3 x4"] * 3 + ["p0 p1 x0 x1 x2 x3 x4"],
    "suffix": [
        "x0 x1 x2 x3 x4 p0 p1",
        "x0 x1 x2 p0 p1 x3 x4",
        "x0 p0 p1 x1 x2 x3 x4",
        "p0 p1 x0 x1 x2 x3 x4",
    ],
    "before_eos": [
        "x0 x1 x2 x3 p0 p1 x4",
        "x0 x1 p0 p1 x2 x3 x4",
        "p0 p1 x0 x1 x2 x3 x4",
        "p0 p1 x0 x1 x2 x3 x4",
    ],
}
# Real tokens (5, 3, 1, 0) plus 2 prompt slots, then padding, whatever the placement.
EXPECTED_MASK = np.array([
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0, 0],
], np.int32)


@pytest.mark.parametrize("placement", combine.PLACEMENTS)
def test_insertion_layout_mask_positions_and_index(placement):
  inputs, prompt = _batch()
  out = jax.jit(combine.insert_prompt, static_argnames="placement")(
      inputs, prompt, placement=placement)
  embeddings, index = _expected(EXPECTED_LAYOUTS[placement])
  np.testing.assert_array_equal(np.asarray(out.embeddings), embeddings)
  np.testing.assert_array_equal(np.asarray(out.input_index), index)
  np.testing.assert_array_equal(np.asarray(out.mask), EXPECTED_MASK)
  np.testing.assert_array_equal(np.asarray(out.positions), np.tile(np.arange(L + P), (4, 1)))
  assert out.visibility is None


def test_insertion_points_per_placement():
  mask = jnp.asarray(_batch()[0].mask)
  got = {p: np.asarray(combine.insertion_points(mask, p)).tolist() for p in combine.PLACEMENTS}
  assert got == {
      "prefix": [0, 0, 0, 0],
      "after_bos": [1, 1, 1, 0],
      "suffix": [5, 3, 1, 0],
      "before_eos": [4, 2, 0, 0],
  }


@pytest.mark.parametrize("placement", ["prefix", "suffix"])
def test_positions_continue_from_non_zero_start(placement):
  inputs, prompt = _batch(positions_offset=10)
  out = combine.insert_prompt(inputs, prompt, placement=placement)
  np.testing.assert_array_equal(np.asarray(out.positions), np.tile(10 + np.arange(L + P), (4, 1)))


@pytest.mark.slow
def test_random_padded_batches_stay_real_then_padding():
  rng = np.random.RandomState(0)
  for trial in range(5):
    batch, length, width, plen = 6, 9, 3, 4
    lengths = rng.randint(0, length + 1, size=batch)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    emb = rng.randn(batch, length, width).astype(np.float32)
    prompt = rng.randn(batch, plen, width).astype(np.float32)
    inputs = base.embedded_from_tokens(jnp.asarray(emb), jnp.asarray(mask))
    for placement in combine.PLACEMENTS:
      out = combine.insert_prompt(inputs, jnp.asarray(prompt), placement=placement)
      out_mask, index = np.asarray(out.mask), np.asarray(out.input_index)
      for b in range(batch):
        n = lengths[b]
        assert out_mask[b].tolist() == [1] * (n + plen) + [0] * (length - n), (trial, placement)
        real_inputs = [i for i in index[b][: n + plen] if i >= 0]
        assert real_inputs == list(range(n))  # input order kept, nothing lost
        prompt_slots = np.flatnonzero(index[b] == -1)
        assert np.all(np.diff(prompt_slots) == 1) and len(prompt_slots) == plen  # contiguous
        np.testing.assert_array_equal(np.asarray(out.embeddings)[b, prompt_slots], prompt[b])
        kept = index[b] >= 0
        np.testing.assert_array_equal(np.asarray(out.embeddings)[b, kept], emb[b, index[b][kept]])


def test_prompt_is_cast_to_the_embedding_dtype():
  inputs, prompt = _batch()
  inputs = inputs.replace(embeddings=inputs.embeddings.astype(jnp.bfloat16))
  for placement in combine.PLACEMENTS:
    out = combine.insert_prompt(inputs, prompt, placement=placement)
    assert out.embeddings.dtype == jnp.bfloat16


def test_bad_prompt_shape_and_placement_raise():
  inputs, prompt = _batch()
  with pytest.raises(ValueError, match=r"must be \[batch=4, prompt_length, embed=2\]"):
    combine.insert_prompt(inputs, prompt[:2])
  with pytest.raises(ValueError, match="Unknown prompt placement 'middle'"):
    combine.insert_prompt(inputs, prompt, placement="middle")


# ------------------------------------------------------------------ visibility

# Example 1 (3 real tokens) with a suffix prompt: slots are x0 x1 x2 p0 p1 x3 x4.
T, F = True, False


def _suffix_visibility(**options):
  inputs, prompt = _batch()
  out = combine.insert_prompt(inputs, prompt, placement="suffix", **options)
  return None if out.visibility is None else np.asarray(out.visibility)


def test_visibility_is_none_when_unrestricted():
  assert _suffix_visibility() is None


def test_prompt_may_not_attend_input():
  vis = _suffix_visibility(prompt_attends_input=False)
  assert vis.shape == (4, 7, 7) and vis.dtype == bool
  np.testing.assert_array_equal(vis[1], np.array([
      [T, T, T, T, T, T, T],
      [T, T, T, T, T, T, T],
      [T, T, T, T, T, T, T],
      [F, F, F, T, T, F, F],
      [F, F, F, T, T, F, F],
      [T, T, T, T, T, T, T],
      [T, T, T, T, T, T, T],
  ]))


def test_causal_among_prompt_tokens():
  vis = _suffix_visibility(causal_prompt=True)
  expected = np.ones((7, 7), bool)
  expected[3] = [T, T, T, T, F, T, T]  # p0 sees the inputs and itself, not p1
  np.testing.assert_array_equal(vis[1], expected)


def test_causal_prompt_that_sees_only_itself():
  vis = _suffix_visibility(causal_prompt=True, prompt_attends_input=False)
  expected = np.ones((7, 7), bool)
  expected[3] = [F, F, F, T, F, F, F]
  expected[4] = [F, F, F, T, T, F, F]
  np.testing.assert_array_equal(vis[1], expected)
  # Example 0 (5 real tokens): the prompt is at slots 5, 6.
  expected0 = np.ones((7, 7), bool)
  expected0[5] = [F, F, F, F, F, T, F]
  expected0[6] = [F, F, F, F, F, T, T]
  np.testing.assert_array_equal(vis[0], expected0)


def test_input_visibility_is_carried_through_the_insertion():
  # A causal pattern among the 5 input slots; after a suffix insertion in example 1 the inputs
  # keep it, inputs see the prompt, and the (unrestricted) prompt sees everything.
  causal = np.tril(np.ones((L, L), bool))
  inputs, prompt = _batch(visibility=jnp.asarray(np.tile(causal, (4, 1, 1))))
  out = combine.insert_prompt(inputs, prompt, placement="suffix")
  np.testing.assert_array_equal(np.asarray(out.visibility)[1], np.array([
      [T, F, F, T, T, F, F],  # x0
      [T, T, F, T, T, F, F],  # x1
      [T, T, T, T, T, F, F],  # x2
      [T, T, T, T, T, T, T],  # p0
      [T, T, T, T, T, T, T],  # p1
      [T, T, T, T, T, T, F],  # x3
      [T, T, T, T, T, T, T],  # x4
  ]))
