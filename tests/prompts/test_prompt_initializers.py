"""Prompt initializers and `.npy` prompt files, checked against hand-computed values."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from prompt_tuning.prompts import initializers
from prompt_tuning.prompts import npy_io

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "t5x_reference"
RNG = jax.random.PRNGKey(0)


def _identifiable_table(rows=100, width=3):
  """Row i is [i, -i, 2i, ...], so a row's value names its index."""
  signs = np.array([1.0, -1.0, 2.0, -2.0, 3.0, -3.0])[:width]
  return np.arange(rows, dtype=np.float32)[:, None] * signs[None, :]


def _row_ids(prompt):
  return np.asarray(prompt)[:, 0].round().astype(int)


# ------------------------------------------------------------------ random_uniform


def test_random_uniform_default_fills_minus_half_to_half_evenly():
  prompt = np.asarray(initializers.random_uniform()(RNG, (200, 64), jnp.float32))
  assert prompt.shape == (200, 64) and prompt.dtype == np.float32
  assert prompt.min() >= -0.5 and prompt.max() < 0.5
  assert prompt.min() < -0.49 and prompt.max() > 0.49  # the whole interval is used
  assert abs(prompt.mean()) < 0.01
  assert abs(prompt.std() - 0.5 / np.sqrt(3)) < 0.005  # std of U(-a, a) is a / sqrt(3)


def test_random_uniform_scale_and_dtype():
  prompt = initializers.random_uniform(scale=0.1)(RNG, (50, 8), jnp.bfloat16)
  assert prompt.dtype == jnp.bfloat16
  values = np.asarray(prompt, np.float32)
  bound = float(jnp.asarray(0.1, jnp.bfloat16))  # 0.1 rounded to bfloat16: 0.10009765625
  assert values.min() >= -bound and values.max() <= bound and values.max() > 0.09


def test_random_uniform_rejects_non_positive_scale():
  with pytest.raises(ValueError, match="positive scale"):
    initializers.random_uniform(scale=0.0)


# ------------------------------------------------------------------ sampled_vocabulary


def test_sampled_vocabulary_draws_distinct_rows_from_the_first_n():
  table = _identifiable_table(rows=100)
  prompt = initializers.sampled_vocabulary(table, population_size=60)(RNG, (50, 3), jnp.float32)
  ids = _row_ids(prompt)
  assert len(set(ids.tolist())) == 50  # without replacement
  assert ids.min() >= 0 and ids.max() < 60
  np.testing.assert_array_equal(np.asarray(prompt), table[ids])  # rows copied exactly


def test_sampled_vocabulary_full_population_is_a_permutation():
  table = _identifiable_table(rows=100)
  prompt = initializers.sampled_vocabulary(table, population_size=20)(RNG, (20, 3), jnp.float32)
  assert sorted(_row_ids(prompt).tolist()) == list(range(20))


def test_sampled_vocabulary_default_population_is_5000_rows():
  table = _identifiable_table(rows=8000)
  prompt = initializers.sampled_vocabulary(table)(RNG, (1000, 3), jnp.float32)
  ids = _row_ids(prompt)
  assert ids.max() < 5000 and ids.max() > 4000 and len(set(ids.tolist())) == 1000


def test_sampled_vocabulary_depends_on_rng_and_accepts_a_loader():
  table = _identifiable_table(rows=100)
  init = initializers.sampled_vocabulary(lambda: table, population_size=100)
  a = _row_ids(init(jax.random.PRNGKey(1), (10, 3)))
  b = _row_ids(init(jax.random.PRNGKey(2), (10, 3)))
  assert a.tolist() != b.tolist()


@pytest.mark.parametrize(
    "population, shape, message",
    [
        (10, (11, 3), "cannot draw 11 distinct rows"),
        (101, (5, 3), "exceeds the embedding table's 100 rows"),
        (50, (5, 4), "prompt width 4 differs from the embedding width 3"),
    ],
)
def test_sampled_vocabulary_bad_requests_raise(population, shape, message):
  init = initializers.sampled_vocabulary(_identifiable_table(rows=100), population_size=population)
  with pytest.raises(ValueError, match=message):
    init(RNG, shape)


# ------------------------------------------------------------------ class_labels and from_string


@pytest.fixture(scope="module")
def t5_vocab():
  return sentencepiece.SentencePieceProcessor(model_file=str(FIXTURES / "t5_vocab"))


@pytest.fixture(scope="module")
def tiny_embeddings():
  return np.load(FIXTURES / "tiny_embeddings_32128x4.npy")


def test_class_labels_mean_pool_each_labels_pieces(t5_vocab, tiny_embeddings):
  labels = ["positive", "negative", "not_entailment"]
  pieces = [t5_vocab.encode(label) for label in labels]
  assert len(pieces[2]) > 1  # so the mean pooling is really exercised
  init = initializers.class_labels(tiny_embeddings, t5_vocab, labels)
  prompt = np.asarray(init(RNG, (6, 4), jnp.float32))
  for row, ids in enumerate(pieces):
    manual = sum(tiny_embeddings[i].astype(np.float64) for i in ids) / len(ids)
    np.testing.assert_allclose(prompt[row], manual, rtol=1e-6, atol=1e-7)
  # The other rows come from the default fallback: distinct rows of the first 5000 embeddings.
  rest = prompt[3:]
  matches = [np.flatnonzero((tiny_embeddings[:5000] == r).all(axis=1)) for r in rest]
  assert all(len(m) >= 1 for m in matches)


def test_class_labels_use_the_given_fallback_for_the_remaining_rows(t5_vocab, tiny_embeddings):
  init = initializers.class_labels(
      tiny_embeddings, t5_vocab.encode, ["yes"], fallback=initializers.random_uniform(0.01))
  prompt = np.asarray(init(RNG, (5, 4), jnp.float32))
  expected = tiny_embeddings[t5_vocab.encode("yes")].mean(axis=0)
  np.testing.assert_allclose(prompt[0], expected, rtol=1e-6)
  assert np.abs(prompt[1:]).max() <= 0.01


def test_class_labels_more_labels_than_rows_raise(t5_vocab, tiny_embeddings):
  init = initializers.class_labels(tiny_embeddings, t5_vocab, ["a", "b", "c"])
  with pytest.raises(ValueError, match="3 labels but the prompt has only 2 rows"):
    init(RNG, (2, 4))


def test_class_labels_label_without_tokens_raises(tiny_embeddings):
  init = initializers.class_labels(tiny_embeddings, lambda s: [], ["x"])
  with pytest.raises(ValueError, match="encodes to no tokens"):
    init(RNG, (2, 4))


def _char_vocab(text):
  return [ord(c) - ord("a") for c in text]


def test_from_string_tiles_short_text_to_the_prompt_length():
  table = _identifiable_table(rows=30)
  prompt = initializers.from_string(table, _char_vocab, "cab")(RNG, (7, 3))
  assert _row_ids(prompt).tolist() == [2, 0, 1, 2, 0, 1, 2]
  np.testing.assert_array_equal(np.asarray(prompt), table[[2, 0, 1, 2, 0, 1, 2]])


def test_from_string_truncates_long_text():
  table = _identifiable_table(rows=30)
  prompt = initializers.from_string(table, _char_vocab, "abcdefgh")(RNG, (3, 3))
  assert _row_ids(prompt).tolist() == [0, 1, 2]


def test_from_string_uses_a_real_vocabulary(t5_vocab, tiny_embeddings):
  ids = t5_vocab.encode("Classify the sentiment")
  init = initializers.from_string(tiny_embeddings, t5_vocab, "Classify the sentiment")
  prompt = init(RNG, (len(ids), 4))
  np.testing.assert_array_equal(np.asarray(prompt), tiny_embeddings[ids])


# ------------------------------------------------------------------ from_npy and checkpoints


@pytest.mark.parametrize("name", ["sst2", "mrpc", "rte"])
def test_from_npy_loads_reference_prompts_exactly(name):
  path = FIXTURES / "pretrained_prompts" / f"{name}.npy"
  prompt = initializers.from_npy(str(path))(RNG, (100, 768), jnp.float32)
  expected = np.load(path)
  assert expected.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(prompt), expected)


def test_from_npy_casts_float64_reference_to_the_param_dtype():
  path = FIXTURES / "prompt_5x256.npy"
  raw = np.load(path)
  assert raw.dtype == np.float64
  prompt = initializers.from_npy(str(path))(RNG, (5, 256), jnp.float32)
  assert prompt.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(prompt), raw.astype(np.float32))
  assert float(prompt[0, 0]) == pytest.approx(0.29594052, abs=1e-7)
  as_bf16 = initializers.from_npy(str(path))(RNG, (5, 256), jnp.bfloat16)
  assert as_bf16.dtype == jnp.bfloat16


def test_from_npy_shape_mismatch_names_file_and_shapes():
  path = str(FIXTURES / "prompt_5x256.npy")
  init = initializers.from_npy(path)
  with pytest.raises(ValueError) as error:
    init(RNG, (5, 768), jnp.float32)
  message = str(error.value)
  assert path in message and "(5, 256)" in message and "(5, 768)" in message


def test_from_npy_missing_file_fails_at_construction(tmp_path):
  with pytest.raises(FileNotFoundError, match="does_not_exist.npy does not exist"):
    initializers.from_npy(str(tmp_path / "does_not_exist.npy"))


def test_from_checkpoint_variable_reads_npz_key(tmp_path):
  value = np.arange(12, dtype=np.float64).reshape(3, 4)
  path = tmp_path / "ckpt.npz"
  np.savez(path, **{"input_hook/prompt": value, "other": np.zeros(2)})
  prompt = initializers.from_checkpoint_variable(str(path))(RNG, (3, 4), jnp.float32)
  np.testing.assert_array_equal(np.asarray(prompt), value.astype(np.float32))
  missing = initializers.from_checkpoint_variable(str(path), param_path="input_hook/nope")
  with pytest.raises(ValueError, match="has no array 'input_hook/nope'"):
    missing(RNG, (3, 4))


def test_from_checkpoint_variable_calls_reader_once_with_the_param_path():
  calls = []

  def reader(param_path):
    calls.append(param_path)
    return np.full((2, 3), 7.0)

  init = initializers.from_checkpoint_variable(param_path="input_hook/prompt_table",
                                               read_array_fn=reader)
  assert calls == []  # nothing read before init runs
  first = init(RNG, (2, 3), jnp.float32)
  init(RNG, (2, 3), jnp.float32)
  assert calls == ["input_hook/prompt_table"]
  np.testing.assert_array_equal(np.asarray(first), np.full((2, 3), 7.0, np.float32))


T5X_TINY_CHECKPOINT = FIXTURES / "test_t5_1_1_tiny" / "checkpoint_3"


def test_from_checkpoint_variable_reads_a_real_t5x_checkpoint(tiny_embeddings):
  # The fixture's .npy holds the same table as the checkpoint's token embedding.
  init = initializers.from_checkpoint_variable(str(T5X_TINY_CHECKPOINT),
                                               param_path="token_embedder/embedding")
  np.testing.assert_array_equal(np.asarray(init(RNG, (32128, 4), jnp.float32)), tiny_embeddings)


def test_sampled_vocabulary_from_a_checkpoint_embedding_table(tiny_embeddings):
  table = initializers.checkpoint_array(str(T5X_TINY_CHECKPOINT), "token_embedder/embedding")
  prompt = np.asarray(initializers.sampled_vocabulary(table)(RNG, (10, 4), jnp.float32))
  for row in prompt:
    assert (tiny_embeddings[:5000] == row).all(axis=1).any()


def test_checkpoint_array_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
    initializers.checkpoint_array(str(tmp_path / "nowhere"), "token_embedder/embedding")()
  with pytest.raises(ValueError, match="no checkpoint path was given"):
    initializers.checkpoint_array(None, "token_embedder/embedding")()


def test_from_checkpoint_variable_needs_exactly_one_source():
  with pytest.raises(ValueError, match="exactly one"):
    initializers.from_checkpoint_variable()
  with pytest.raises(ValueError, match="exactly one"):
    initializers.from_checkpoint_variable("a.npz", read_array_fn=lambda p: None)


# ------------------------------------------------------------------ prompt tables


def test_per_prompt_gives_each_table_entry_its_own_draw():
  table = _identifiable_table(rows=100)
  init = initializers.per_prompt(initializers.sampled_vocabulary(table, population_size=100))
  prompts = np.asarray(init(RNG, (3, 10, 3), jnp.float32))
  assert prompts.shape == (3, 10, 3)
  ids = [_row_ids(p).tolist() for p in prompts]
  assert all(len(set(i)) == 10 for i in ids)
  assert ids[0] != ids[1] != ids[2]


def test_stack_initializers_puts_each_file_in_its_row():
  names = ["sst2", "mrpc", "rte"]
  init = initializers.stack_initializers(
      [initializers.from_npy(str(FIXTURES / "pretrained_prompts" / f"{n}.npy")) for n in names])
  table = np.asarray(init(RNG, (3, 100, 768), jnp.float32))
  for k, name in enumerate(names):
    expected = np.load(FIXTURES / "pretrained_prompts" / f"{name}.npy")
    np.testing.assert_array_equal(table[k], expected)
  with pytest.raises(ValueError, match="3 initializers but the table shape is"):
    init(RNG, (2, 100, 768))


# ------------------------------------------------------------------ .npy save / load


def test_save_then_load_roundtrip_in_reference_layout(tmp_path):
  value = jnp.asarray(np.random.RandomState(0).randn(5, 8), jnp.bfloat16)
  path = npy_io.save_prompt_npy(str(tmp_path / "prompt.npy"), value)
  raw = np.load(path)
  assert raw.shape == (5, 8) and raw.dtype == np.float32
  np.testing.assert_array_equal(raw, np.asarray(value, np.float32))
  np.testing.assert_array_equal(npy_io.load_prompt_npy(path, expected_shape=(5, 8)), raw)
  # And the saved file is a valid initializer input.
  np.testing.assert_array_equal(np.asarray(initializers.from_npy(path)(RNG, (5, 8))), raw)


def test_load_reference_float64_prompt_as_float32():
  loaded = npy_io.load_prompt_npy(str(FIXTURES / "prompt_5x256.npy"))
  assert loaded.dtype == np.float32 and loaded.shape == (5, 256)


def test_load_with_wrong_expected_shape_raises():
  path = str(FIXTURES / "pretrained_prompts" / "rte.npy")
  with pytest.raises(ValueError, match=r"has shape \(100, 768\) but \(20, 768\) was expected"):
    npy_io.load_prompt_npy(path, expected_shape=(20, 768))


def test_failed_save_leaves_the_existing_prompt_untouched(tmp_path):
  path = str(tmp_path / "prompt.npy")
  npy_io.save_prompt_npy(path, np.ones((2, 3)))
  with pytest.raises(ValueError, match="must be 2-D"):
    npy_io.save_prompt_npy(path, np.zeros((1, 2, 3)))
  np.testing.assert_array_equal(np.load(path), np.ones((2, 3), np.float32))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["prompt.npy"]  # no temporary left behind
