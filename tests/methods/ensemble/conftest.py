"""A tiny random frozen base (as an `.npz`) and prompts, shared by the toolkit tests.

The base is untrained: its outputs are arbitrary but deterministic, which is all that tests of
"one batched pass equals separate passes" or "the server answers as infer does" need.
"""
import os

import flax
import jax
import numpy as np
import pytest

from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine.param_loading import flat
from prompt_tuning.methods.ensemble import bank as bank_lib
from prompt_tuning.models.config import get_config
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

PROMPT_LENGTH = 3
LENGTHS = {"inputs": 16, "targets": 4}


def tiny_config():
  """byte_t5_tiny's vocabulary (260 byte ids) with a smaller stack, for fast compiles."""
  return get_config("t5_1_1_tiny", vocab_size=260, emb_dim=32, num_heads=2, head_dim=16,
                    mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1,
                    relative_attention_num_buckets=8, relative_attention_max_distance=16)


def single_prompt_model(config, prompt_length=PROMPT_LENGTH):
  """The ordinary one-prompt model (the path `infer` takes), for comparisons."""
  return model_wrappers.EncoderDecoderModel(EncoderDecoder(
      config=config, input_hook=PromptHook(provider=Prompt(length=prompt_length))))


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
  """(config, frozen params tree, path of the same params as an .npz keyed by leaf path)."""
  config = tiny_config()
  model = bank_lib.table_model(config, capacity=1, prompt_length=PROMPT_LENGTH)
  variables = model.get_initial_variables(jax.random.PRNGKey(7), batch_size=1,
                                          encoder_length=8, decoder_length=4,
                                          lengths={"encoder_input_tokens": 8})
  params = flax.core.meta.unbox(variables["params"])
  frozen = {k: v for k, v in params.items() if k != "input_hook"}
  folder = tmp_path_factory.mktemp("base")
  path = os.path.join(folder, "base.npz")
  np.savez(path, **{k: np.asarray(v) for k, v in flat(frozen).items()})
  return config, frozen, path


def random_prompts(count, width, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(scale=2.0, size=(PROMPT_LENGTH, width)).astype(np.float32)
          for _ in range(count)]


@pytest.fixture
def bank_of(tiny_base):
  """bank_of(prompts) -> a PromptBank over the tiny base holding them as 'p0', 'p1', ..."""
  config, frozen, _ = tiny_base

  def make(prompts, capacity=None):
    bank = bank_lib.PromptBank(config=config, frozen_params=frozen, prompt_length=PROMPT_LENGTH,
                               capacity=capacity or len(prompts))
    for i, prompt in enumerate(prompts):
      bank.add(f"p{i}", prompt)
    return bank
  return make
