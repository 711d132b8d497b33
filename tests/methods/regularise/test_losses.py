"""The wayward regulariser and the ranking loss: their values by hand, and the gin options."""
import flax
import jax
import numpy as np
import pytest
import seqio

from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.methods.regularise.models import PromptLossModel
from prompt_tuning.models.config import get_config
from prompt_tuning.models.t5 import EncoderDecoder
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

VOCAB = seqio.ByteVocabulary()


def _module(length=3):
  config = get_config("t5_1_1_tiny", vocab_size=260, emb_dim=16, num_heads=2, head_dim=8,
                      mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16)
  return EncoderDecoder(config=config, input_hook=PromptHook(provider=Prompt(length=length)))


def _batch(targets, inputs=("12", "345", "6789")):
  enc = np.zeros((len(targets), 8), np.int32)
  for i, text in enumerate(inputs[:len(targets)]):
    ids = list(VOCAB.encode(text)) + [1]
    enc[i, :len(ids)] = ids
  dec = np.zeros((len(targets), 3), np.int32)
  for i, text in enumerate(targets):
    ids = (list(VOCAB.encode(text)) + [1])[:3]
    dec[i, :len(ids)] = ids
  return {"encoder_input_tokens": enc, "decoder_target_tokens": dec,
          "decoder_input_tokens": np.concatenate([np.zeros((len(targets), 1), np.int32),
                                                  dec[:, :-1]], axis=1),
          "decoder_loss_weights": (dec > 0).astype(np.float32)}


@pytest.fixture(scope="module")
def params():
  base = model_wrappers.EncoderDecoderModel(_module())
  variables = base.get_initial_variables(jax.random.PRNGKey(0), batch_size=1, encoder_length=8,
                                         decoder_length=3)
  return flax.core.meta.unbox(variables["params"])


def test_wayward_adds_gamma_times_squared_distance_to_the_discrete_prompt(params):
  base = model_wrappers.EncoderDecoderModel(_module())
  model = PromptLossModel(_module(), vocabulary=VOCAB, wayward_prompt="abc")
  assert model.wayward_gamma == 0.01
  batch = _batch(["1", "2", "3"])
  table = np.asarray(params["token_embedder"]["embedding"])
  prompt = np.asarray(params["input_hook"]["prompt"])
  expected = 0.01 * np.sum((prompt - table[VOCAB.encode("abc")]) ** 2)
  loss, metrics = model.loss_fn(params, batch, None)
  plain, _ = base.loss_fn(params, batch, None)
  assert float(metrics["wayward"]) == pytest.approx(expected, rel=1e-5)
  assert float(loss) == pytest.approx(float(plain) + expected, rel=1e-5)
  # Its gradient on the prompt is 2 * gamma * (p - e); the embedding table gets none.
  grads = jax.grad(model.wayward)(params)
  np.testing.assert_allclose(grads["input_hook"]["prompt"],
                             0.02 * (prompt - table[VOCAB.encode("abc")]), rtol=1e-5)
  assert float(np.abs(grads["token_embedder"]["embedding"]).max()) == 0.0
  # Sitting on the discrete prompt costs nothing.
  on_text = {**params, "input_hook": {"prompt": table[VOCAB.encode("abc")]}}
  assert float(model.wayward(on_text)) == 0.0


def test_wayward_prompt_of_the_wrong_length_is_refused(params):
  model = PromptLossModel(_module(), vocabulary=VOCAB, wayward_prompt="abcd")
  with pytest.raises(ValueError, match="4 tokens but the soft prompt has 3"):
    model.loss_fn(params, _batch(["1"]), None)


@pytest.mark.parametrize("margin", [1.0, 0.0], ids=["hinge", "perceptron"])
def test_ranking_loss_is_the_hinge_over_class_choices(params, margin):
  base = model_wrappers.EncoderDecoderModel(_module())
  model = PromptLossModel(_module(), vocabulary=VOCAB, class_choices=["1", "2"],
                          ranking_weight=0.5, ranking_margin=margin)
  batch = _batch(["1", "2", "9"])  # the third target is no choice: no ranking term
  scores = np.stack([np.asarray(base.score_batch(params, _batch([c] * 3))) for c in "12"], 1)
  hinge = [max(0.0, margin - (scores[0, 0] - scores[0, 1])),
           max(0.0, margin - (scores[1, 1] - scores[1, 0]))]
  loss, metrics = model.loss_fn(params, batch, None)
  plain, _ = base.loss_fn(params, batch, None)
  assert int(metrics["ranking_examples"]) == 2
  assert float(metrics["ranking_loss"]) == pytest.approx(np.mean(hinge), rel=1e-4, abs=1e-6)
  assert float(loss) == pytest.approx(float(plain) + 0.5 * np.mean(hinge), rel=1e-4)


def test_settings_are_checked():
  with pytest.raises(ValueError, match="at least two class_choices"):
    PromptLossModel(_module(), vocabulary=VOCAB, class_choices=["1"], ranking_weight=1.0)
  with pytest.raises(ValueError, match="needs a vocabulary"):
    PromptLossModel(_module(), wayward_prompt="abc")
  with pytest.raises(ValueError, match=">= 0"):
    PromptLossModel(_module(), vocabulary=VOCAB, wayward_prompt="abc", wayward_gamma=-1.0)


def test_gin_options_of_a_prompt_run():
  from prompt_tuning.engine.gin_utils import ConfigError
  from prompt_tuning.methods.ensemble import loading
  files = ["gin/models/byte_t5_tiny.gin", "gin/prompts/prompt.gin",
           "gin/methods/regularise/wayward.gin"]
  model, _ = loading.model_from_gin(files, ["WAYWARD_PROMPT = 'last:'", "PROMPT_LENGTH = 5"])
  assert isinstance(model, PromptLossModel)
  assert model.wayward_gamma == 0.01 and model.wayward_ids.tolist() == VOCAB.encode("last:")
  with pytest.raises(ConfigError, match="WAYWARD_PROMPT"):
    loading.model_from_gin(files)
  model, _ = loading.model_from_gin(
      ["gin/models/byte_t5_tiny.gin", "gin/prompts/prompt.gin",
       "gin/methods/regularise/ranking.gin"], ["CLASS_CHOICES = ['yes', 'no']",
                                               "RANKING_MARGIN = 0.0"])
  assert model.ranking_weight == 1.0 and model.ranking_margin == 0.0
  assert model.choice_ids == [VOCAB.encode("yes") + [1], VOCAB.encode("no") + [1]]
