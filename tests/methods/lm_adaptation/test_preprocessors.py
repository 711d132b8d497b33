"""The prefix-LM preprocessor: uniform split points, exact reconstruction, lengths, seeds."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.methods.lm_adaptation import preprocessors

VOCAB = seqio.ByteVocabulary()
FEATURES = {"inputs": seqio.Feature(VOCAB, add_eos=True),
            "targets": seqio.Feature(VOCAB, add_eos=True)}


def _split_lengths(n: int, seeds: int) -> np.ndarray:
  """Prefix lengths of an n-token segment under seeds [s, 7], s < seeds (checks both parts)."""
  tokens = tf.range(10, 10 + n)

  def split(s):
    prefix, continuation = preprocessors.split_at_uniform_point(
        tokens, tf.stack([tf.cast(s, tf.int32), 7]))
    return tf.size(prefix), tf.concat([prefix, continuation], 0)

  lengths = []
  for length, rebuilt in tf.data.Dataset.range(seeds).map(split).as_numpy_iterator():
    assert rebuilt.tolist() == list(range(10, 10 + n))
    lengths.append(int(length))
  return np.array(lengths)


def test_split_point_is_uniform_over_one_to_n_minus_one():
  # 9 possible prefix lengths (1..9) for a 10-token segment, 2700 seeds: 300 expected each.
  lengths = _split_lengths(10, 2700)
  assert lengths.min() == 1 and lengths.max() == 9
  counts = np.bincount(lengths, minlength=10)[1:]
  assert counts.sum() == 2700
  chi2 = float(((counts - 300.0) ** 2 / 300.0).sum())
  # 8 degrees of freedom: P(chi2 > 26.1) = 0.001.
  assert chi2 < 26.1, counts
  assert np.all(np.abs(counts - 300) < 70), counts  # ~4 standard deviations (sd ~16)
  assert abs(lengths.mean() - 5.0) < 0.15  # the mean of 1..9


def test_short_segments_keep_at_least_one_target_token():
  assert set(_split_lengths(2, 50)) == {1}
  assert set(_split_lengths(1, 20)) == {0}  # a lone token is all target


def test_chunk_starts_on_a_chunk_boundary_and_covers_every_chunk():
  tokens = tf.range(25)
  starts = {int(preprocessors.chunk_of(tokens, tf.constant([s, 1]), 10)[0]) for s in range(200)}
  assert starts == {0, 10, 20}
  whole = preprocessors.chunk_of(tokens, tf.constant([3, 1]), 100)
  assert whole.numpy().tolist() == list(range(25))


def _documents(*docs):
  ragged = tf.ragged.constant([list(d) for d in docs], dtype=tf.int32)
  return tf.data.Dataset.from_tensor_slices(ragged).map(lambda t: {"targets": t})


def _run(dataset, lengths, seed):
  with seqio.utils.map_seed_manager(seed):
    return list(preprocessors.prefix_lm(dataset, lengths, FEATURES).as_numpy_iterator())


def test_inputs_and_targets_reconstruct_the_segments_in_order():
  docs = [list(range(3, 40)), [50, 51], [], [60]]
  out = _run(_documents(*docs), {"inputs": 11, "targets": 11}, seed=5)
  # Segments of 10 tokens (11 less one for EOS): 37 tokens -> 10+10+10+7, then 2, then 1.
  rebuilt = [x["inputs"].tolist() + x["targets"].tolist() for x in out]
  assert rebuilt == [list(range(3, 13)), list(range(13, 23)), list(range(23, 33)),
                     list(range(33, 40)), [50, 51], [60]]
  assert all(len(x["inputs"]) <= 10 and len(x["targets"]) >= 1 for x in out)
  assert [len(x["inputs"]) for x in out][-2:] == [1, 0]


def test_long_documents_keep_one_random_chunk():
  doc = list(range(3, 103))  # 100 tokens
  with seqio.utils.map_seed_manager(1):
    out = list(preprocessors.prefix_lm(_documents(doc), {"inputs": 11, "targets": 11}, FEATURES,
                                       max_chunk_length=30).as_numpy_iterator())
  rebuilt = sum((x["inputs"].tolist() + x["targets"].tolist() for x in out), [])
  assert len(rebuilt) in (30, 10) and rebuilt[0] in (3, 33, 63, 93)
  assert rebuilt == list(range(rebuilt[0], rebuilt[0] + len(rebuilt)))


def test_same_seed_same_splits_other_seed_other_splits():
  docs = [list(range(3, 200))] * 4
  lengths = {"inputs": 16, "targets": 16}

  def prefixes(seed):
    return [len(x["inputs"]) for x in _run(_documents(*docs), lengths, seed)]

  assert prefixes(3) == prefixes(3)
  assert prefixes(3) != prefixes(4)
  assert len(prefixes(3)) == 4 * 14  # 197 tokens -> 13 segments of 15 and one of 2


def test_missing_inputs_length_is_refused():
  with pytest.raises(ValueError, match="sequence_length\\['inputs'\\]"):
    preprocessors.prefix_lm(_documents([1, 2]), {"targets": 8}, FEATURES)
