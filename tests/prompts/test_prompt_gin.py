"""The gin files of gin/prompts/ build the hook and initializer they promise."""
import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece

from prompt_tuning.engine import gin_utils
from prompt_tuning.prompts import base
from prompt_tuning.prompts import hooks
from prompt_tuning.prompts import providers

REPO = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "t5x_reference"
EMBEDDINGS = FIXTURES / "tiny_embeddings_32128x4.npy"
MODEL_FILE = "gin/models/t5_1_1_tiny.gin"
VOCABULARY_BINDINGS = [
    "VOCABULARY = @seqio.SentencePieceVocabulary()",
    f"seqio.SentencePieceVocabulary.sentencepiece_model_file = '{FIXTURES / 't5_vocab'}'",
]


@pytest.fixture(autouse=True)
def _clean_gin():
  gin_utils.register_configurables()
  gin.clear_config()
  yield
  gin.clear_config()


def _hook(prompt_file, *bindings):
  """The configured model input hook after parsing the model file, `prompt_file`, `bindings`."""
  gin_utils.parse_gin(gin_files=[MODEL_FILE, prompt_file], gin_bindings=list(bindings),
                      gin_search_paths=[str(REPO)])
  reference = gin.query_parameter("network.EncoderDecoder.input_hook")
  return reference.scoped_configurable_fn()


def _init_prompt(hook, width=4, hook_inputs=None):
  """The hook's parameters (plain numpy arrays) for a [3, 2, width] input."""
  inputs = base.embedded_from_tokens(jnp.ones((3, 2, width)), jnp.ones((3, 2), jnp.int32))
  params = hook.init(jax.random.PRNGKey(0), inputs, hook_inputs=hook_inputs)["params"]
  return jax.tree_util.tree_map(np.asarray, nn.meta.unbox(params))


@pytest.mark.slow
def test_prompt_gin_gives_a_uniform_prefix_prompt_of_prompt_length():
  hook = _hook("gin/prompts/prompt.gin", "PROMPT_LENGTH = 20")
  assert isinstance(hook, hooks.PromptHook) and isinstance(hook.provider, providers.Prompt)
  assert hook.placement == "prefix" and hook.provider.length == 20
  prompt = _init_prompt(hook)["prompt"]
  assert prompt.shape == (20, 4)
  assert prompt.min() >= -0.5 and prompt.max() < 0.5 and prompt.std() > 0.2


@pytest.mark.slow
def test_placement_and_scale_are_overridable():
  hook = _hook("gin/prompts/random_uniform.gin", "PROMPT_LENGTH = 50",
               "PROMPT_PLACEMENT = 'suffix'", "PROMPT_INIT_SCALE = 0.01")
  assert hook.placement == "suffix"
  assert np.abs(_init_prompt(hook)["prompt"]).max() <= 0.01


@pytest.mark.slow
def test_prompt_table_gin_gives_one_prompt_per_row():
  hook = _hook("gin/prompts/prompt_table.gin", "PROMPT_LENGTH = 6", "NUM_PROMPTS = 4")
  assert isinstance(hook.provider, providers.PromptTable)
  table = _init_prompt(hook, hook_inputs={"prompt_ids": jnp.zeros(3, int)})["prompt_table"]
  assert table.shape == (4, 6, 4) and np.abs(table).max() < 0.5
  assert not np.allclose(table[0], table[1])


@pytest.mark.slow
def test_sampled_vocabulary_gin_reads_the_embedding_table():
  hook = _hook("gin/prompts/sampled_vocabulary.gin", "PROMPT_LENGTH = 30",
               f"INITIAL_CHECKPOINT_PATH = '{EMBEDDINGS}'")
  prompt = _init_prompt(hook)["prompt"]
  table = np.load(EMBEDDINGS)[:5000]
  rows = [np.flatnonzero((table == row).all(axis=1)) for row in prompt]
  assert all(len(r) >= 1 for r in rows)
  assert len({int(r[0]) for r in rows}) == 30


def test_class_labels_gin_puts_the_labels_first():
  hook = _hook("gin/prompts/class_labels.gin", "PROMPT_LENGTH = 5",
               f"INITIAL_CHECKPOINT_PATH = '{EMBEDDINGS}'",
               "CLASS_LABELS = ['entailment', 'not_entailment']", *VOCABULARY_BINDINGS)
  prompt = _init_prompt(hook)["prompt"]
  table = np.load(EMBEDDINGS)
  vocab = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURES / "t5_vocab"))
  for row, label in enumerate(["entailment", "not_entailment"]):
    np.testing.assert_allclose(prompt[row], table[vocab.encode(label)].mean(axis=0), rtol=1e-6)
  assert all(((table[:5000] == row).all(axis=1)).any() for row in prompt[2:])


def test_from_string_gin_tiles_the_text():
  text = "Is the second sentence implied by the first?"
  hook = _hook("gin/prompts/from_string.gin", "PROMPT_LENGTH = 30",
               f"INITIAL_CHECKPOINT_PATH = '{EMBEDDINGS}'", f"PROMPT_TEXT = '{text}'",
               *VOCABULARY_BINDINGS)
  ids = sentencepiece.SentencePieceProcessor(model_file=str(FIXTURES / "t5_vocab")).encode(text)
  expected = np.load(EMBEDDINGS)[np.asarray(ids)[np.arange(30) % len(ids)]]
  np.testing.assert_array_equal(_init_prompt(hook)["prompt"], expected)


def test_from_file_gin_loads_the_reference_prompt():
  path = FIXTURES / "prompt_5x256.npy"
  hook = _hook("gin/prompts/from_file.gin", "PROMPT_LENGTH = 5", f"PROMPT_FILE = '{path}'")
  prompt = _init_prompt(hook, width=256)["prompt"]
  np.testing.assert_array_equal(prompt, np.load(path).astype(np.float32))


def test_from_checkpoint_gin_reads_the_source_prompt(tmp_path):
  value = np.random.RandomState(0).randn(7, 4).astype(np.float32)
  np.savez(tmp_path / "source.npz", **{"input_hook/prompt": value})
  hook = _hook("gin/prompts/from_checkpoint.gin", "PROMPT_LENGTH = 7",
               f"SOURCE_PROMPT_CHECKPOINT = '{tmp_path / 'source.npz'}'")
  np.testing.assert_array_equal(_init_prompt(hook)["prompt"], value)


@pytest.mark.parametrize("prompt_file, macro", [
    ("gin/prompts/from_file.gin", "PROMPT_FILE"),
    ("gin/prompts/class_labels.gin", "CLASS_LABELS"),
    ("gin/prompts/from_string.gin", "PROMPT_TEXT"),
    ("gin/prompts/from_checkpoint.gin", "SOURCE_PROMPT_CHECKPOINT"),
])
def test_missing_required_value_is_named(prompt_file, macro):
  with pytest.raises(gin_utils.ConfigError, match=f"Gin macro {macro} is required but not set"):
    gin_utils.parse_gin(gin_files=[MODEL_FILE, prompt_file], gin_bindings=[],
                        gin_search_paths=[str(REPO)])
