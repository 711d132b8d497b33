"""The decoders' causal relative-position buckets, checked against a table worked out by hand.

With 8 buckets reaching distance 16 (the T5 test model's `_small` settings), a causal stack has
max_exact = 4 exact buckets for distances 0-3; a distance d >= 4 goes to
4 + floor(log(d / 4) / log(16 / 4) * 4) = 4 + floor(2 * log2(d / 4)), capped at bucket 7:
  d = 4, 5 -> 4 (2*log2(1.25) = 0.64);  d = 6, 7 -> 5 (1.17, 1.61);  d = 8..11 -> 6 (2.0 .. 2.92);
  d >= 12 -> 7 (2*log2(3) = 3.17).
Keys after the query (masked anyway) all share bucket 0.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning.models import DecoderOnly, EncoderDecoder, get_config
from prompt_tuning.models.layers import relative_position_bucket

NUM_BUCKETS, MAX_DISTANCE = 8, 16
# Bucket of a key d positions before the query, d = 0 .. 19.
CAUSAL_BUCKETS = [0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7]
LENGTH = len(CAUSAL_BUCKETS)


def test_causal_bucket_function_matches_the_hand_table():
  distance = np.arange(LENGTH)
  past = relative_position_bucket(jnp.asarray(-distance), bidirectional=False,
                                  num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE)
  future = relative_position_bucket(jnp.asarray(distance), bidirectional=False,
                                    num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE)
  assert past.tolist() == CAUSAL_BUCKETS
  assert future.tolist() == [0] * LENGTH


def _expected_bias(num_heads):
  """`[heads, q, k]` bias when head h's table entry for bucket j is 100 * h + j."""
  q, k = np.meshgrid(np.arange(LENGTH), np.arange(LENGTH), indexing="ij")
  buckets = np.asarray(CAUSAL_BUCKETS)[np.maximum(q - k, 0)]
  return np.stack([100 * h + buckets for h in range(num_heads)])


def _decoder_bias(model, params, args):
  """The decoder stack's position bias `[B, heads, q, k]`, with the table set to 100 * h + j."""
  heads = params["decoder"]["relpos_bias"]["rel_embedding"].shape[0]
  table = 100 * np.arange(heads)[:, None] + np.arange(NUM_BUCKETS)[None, :]
  params = jax.tree_util.tree_map(lambda x: x, params)
  params["decoder"]["relpos_bias"]["rel_embedding"] = jnp.asarray(table, jnp.float32)
  _, state = model.apply({"params": params}, *args, capture_intermediates=True,
                         mutable=["intermediates"])
  return np.asarray(state["intermediates"]["decoder"]["relpos_bias"]["__call__"][0])


@pytest.mark.parametrize("family", ["encoder_decoder", "decoder_only"])
def test_decoder_position_bias_follows_the_causal_bucket_table(family):
  """A query at position q sees a key at k < q through bucket(q - k), in every head."""
  tokens = jnp.arange(1, LENGTH + 1)[None, :]
  if family == "encoder_decoder":
    cfg = get_config("t5_1_1_tiny", vocab_size=32, relative_attention_num_buckets=NUM_BUCKETS,
                     relative_attention_max_distance=MAX_DISTANCE)
    model, args = EncoderDecoder(cfg), (tokens[:, :5], tokens)
  else:
    cfg = get_config("decoder_only_tiny", vocab_size=32,
                     relative_attention_num_buckets=NUM_BUCKETS,
                     relative_attention_max_distance=MAX_DISTANCE)
    model, args = DecoderOnly(cfg), (tokens,)
  params = nn.meta.unbox(model.init(jax.random.PRNGKey(0), *args)["params"])
  bias = _decoder_bias(model, params, args)
  assert bias.shape == (1, cfg.num_heads, LENGTH, LENGTH)
  np.testing.assert_array_equal(bias[0], _expected_bias(cfg.num_heads))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_bias_is_the_table_entry_of_each_pairs_bucket_for_any_positions(bidirectional):
  """Per-example positions that are not a range (packed or prompted inputs) pick, for every head
  and (query, key) pair, exactly `table[head, bucket(key - query)]`."""
  from prompt_tuning.models.layers import RelativePositionBias  # pylint: disable=g-import-not-at-top
  cfg = get_config("t5_1_1_tiny", vocab_size=32, relative_attention_num_buckets=NUM_BUCKETS,
                   relative_attention_max_distance=MAX_DISTANCE)
  rng = np.random.default_rng(0)
  queries = jnp.asarray(rng.integers(0, 40, size=(3, 7)), jnp.int32)
  keys = jnp.asarray(rng.integers(0, 40, size=(3, 9)), jnp.int32)
  module = RelativePositionBias(cfg, bidirectional=bidirectional)
  params = module.init(jax.random.PRNGKey(1), queries, keys)
  table = np.asarray(nn.meta.unbox(params)["params"]["rel_embedding"])
  bias = np.asarray(module.apply(params, queries, keys))
  bucket = np.asarray(relative_position_bucket(
      keys[:, None, :] - queries[:, :, None], bidirectional=bidirectional,
      num_buckets=NUM_BUCKETS, max_distance=MAX_DISTANCE))
  assert bias.shape == (3, cfg.num_heads, 7, 9) and bias.dtype == np.float32
  assert len(np.unique(bucket)) > 3
  np.testing.assert_array_equal(bias, np.transpose(table[:, bucket], (1, 0, 2, 3)))
