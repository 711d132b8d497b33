"""Prompt, PromptTable and PromptHook as flax modules; the provider plug-in; ensembles."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prompt_tuning import axes
from prompt_tuning.prompts import base
from prompt_tuning.prompts import combine
from prompt_tuning.prompts import ensemble
from prompt_tuning.prompts import hooks
from prompt_tuning.prompts import initializers
from prompt_tuning.prompts import providers

RNG = jax.random.PRNGKey(0)
VOCAB, WIDTH = 16, 4


class TinyEmbedder(nn.Module):
  """Embeds tokens and applies `input_hook`, the way the models do."""

  input_hook: nn.Module = None

  @nn.compact
  def __call__(self, tokens, hook_inputs=None):
    embeddings = nn.Embed(VOCAB, WIDTH, name="token_embedder")(tokens)
    inputs = base.embedded_from_tokens(embeddings, (tokens > 0).astype(jnp.int32))
    if self.input_hook is None:
      return inputs
    return self.input_hook(inputs, hook_inputs=hook_inputs)


TOKENS = jnp.array([[3, 4, 5, 1, 0], [6, 1, 0, 0, 0], [7, 8, 9, 10, 1]])


def _shapes(tree):
  return jax.tree_util.tree_map(np.shape, nn.meta.unbox(tree))


# ------------------------------------------------------------------ Prompt


def test_prompt_parameter_path_shape_axes_and_dtype():
  model = TinyEmbedder(input_hook=hooks.PromptHook(provider=providers.Prompt(length=3)))
  variables = model.init(RNG, TOKENS)
  assert _shapes(variables["params"]) == {
      "input_hook": {"prompt": (3, WIDTH)}, "token_embedder": {"embedding": (VOCAB, WIDTH)}}
  spec = nn.get_partition_spec(variables)["params"]["input_hook"]["prompt"]
  assert tuple(spec) == (axes.PROMPT_LENGTH, axes.PROMPT_EMBED)
  assert nn.meta.unbox(variables)["params"]["input_hook"]["prompt"].dtype == jnp.float32


def test_prompt_param_dtype_is_explicit():
  model = TinyEmbedder(input_hook=hooks.PromptHook(
      provider=providers.Prompt(length=2, param_dtype=jnp.bfloat16)))
  variables = nn.meta.unbox(model.init(RNG, TOKENS))
  assert variables["params"]["input_hook"]["prompt"].dtype == jnp.bfloat16
  # The inserted prompt takes the embeddings' dtype (float32 here).
  assert model.apply(variables, TOKENS).embeddings.dtype == jnp.float32


def test_prompt_hook_prefix_matches_manual_concatenation():
  model = TinyEmbedder(input_hook=hooks.PromptHook(
      provider=providers.Prompt(length=3, initializer=initializers.random_uniform(0.5))))
  variables = nn.meta.unbox(model.init(RNG, TOKENS))
  out = model.apply(variables, TOKENS)
  prompt = variables["params"]["input_hook"]["prompt"]
  assert float(jnp.abs(prompt).max()) <= 0.5
  embedded = variables["params"]["token_embedder"]["embedding"][TOKENS]
  manual = jnp.concatenate([jnp.broadcast_to(prompt, (3, 3, WIDTH)), embedded], axis=1)
  np.testing.assert_array_equal(np.asarray(out.embeddings), np.asarray(manual))
  np.testing.assert_array_equal(
      np.asarray(out.mask), [[1] * 7 + [0], [1] * 5 + [0] * 3, [1] * 8])
  np.testing.assert_array_equal(np.asarray(out.input_index)[0], [-1, -1, -1, 0, 1, 2, 3, 4])


def test_prompt_hook_forwards_placement_and_visibility():
  model = TinyEmbedder(input_hook=hooks.PromptHook(
      provider=providers.Prompt(length=2), placement="before_eos", prompt_attends_input=False))
  variables = model.init(RNG, TOKENS)
  out = model.apply(variables, TOKENS)
  # Example 1 is [6, EOS]: the prompt goes between them.
  np.testing.assert_array_equal(np.asarray(out.input_index)[1], [0, -1, -1, 1, 2, 3, 4])
  np.testing.assert_array_equal(
      np.asarray(out.visibility)[1, 1], [False, True, True, False, False, False, False])


def test_bad_hook_and_prompt_settings_raise():
  with pytest.raises(ValueError, match="Unknown prompt placement 'prefx'"):
    hooks.PromptHook(provider=providers.Prompt(length=2), placement="prefx")
  with pytest.raises(ValueError, match="Prompt.length must be a positive int, got 0"):
    providers.Prompt(length=0)
  with pytest.raises(ValueError, match="PromptTable.num_prompts must be a positive int"):
    providers.PromptTable(num_prompts=0, length=2)


# ------------------------------------------------------------------ PromptTable


def _table_model(**kwargs):
  return TinyEmbedder(input_hook=hooks.PromptHook(
      provider=providers.PromptTable(num_prompts=3, length=2), **kwargs))


KNOWN_TABLE = jnp.arange(3 * 2 * WIDTH, dtype=jnp.float32).reshape(3, 2, WIDTH)


def _with_known_table(variables):
  variables = nn.meta.unbox(variables)
  params = dict(variables["params"])
  params["input_hook"] = {"prompt_table": KNOWN_TABLE}
  return {"params": params}


def _table_variables(model):
  return _with_known_table(model.init(RNG, TOKENS, hook_inputs={"prompt_ids": jnp.zeros(3, int)}))


def test_prompt_table_path_axes_and_gather():
  model = _table_model()
  variables = model.init(RNG, TOKENS, hook_inputs={"prompt_ids": jnp.array([0, 1, 2])})
  assert _shapes(variables["params"])["input_hook"] == {"prompt_table": (3, 2, WIDTH)}
  spec = nn.get_partition_spec(variables)["params"]["input_hook"]["prompt_table"]
  assert tuple(spec) == (axes.PROMPT_TABLE, axes.PROMPT_LENGTH, axes.PROMPT_EMBED)
  out = model.apply(_with_known_table(variables), TOKENS,
                    hook_inputs={"prompt_ids": jnp.array([2, 0, 1])})
  for b, k in enumerate([2, 0, 1]):
    np.testing.assert_array_equal(np.asarray(out.embeddings[b, :2]), np.asarray(KNOWN_TABLE[k]))


def test_prompt_table_mixed_batch_equals_single_prompt_batches():
  model = _table_model(placement="suffix")
  variables = _table_variables(model)
  mixed = model.apply(variables, TOKENS, hook_inputs={"prompt_ids": jnp.array([1, 2, 0])})
  for b, k in enumerate([1, 2, 0]):
    single = model.apply(variables, TOKENS, hook_inputs={"prompt_ids": jnp.full(3, k)})
    for field in ("embeddings", "mask", "positions", "input_index"):
      np.testing.assert_array_equal(np.asarray(getattr(mixed, field)[b]),
                                    np.asarray(getattr(single, field)[b]))


def test_prompt_table_needs_prompt_ids_of_batch_shape():
  model = _table_model()
  with pytest.raises(ValueError, match=r"needs hook_inputs\['prompt_ids'\]"):
    model.init(RNG, TOKENS)
  with pytest.raises(ValueError, match=r"must have shape \(3,\), got \(2,\)"):
    model.init(RNG, TOKENS, hook_inputs={"prompt_ids": jnp.array([0, 1])})


def test_prompt_table_out_of_range_id_gives_nan_prompt():
  model = _table_model()
  variables = _table_variables(model)
  out = model.apply(variables, TOKENS, hook_inputs={"prompt_ids": jnp.array([0, 3, -1])})
  embeddings = np.asarray(out.embeddings)
  assert np.isfinite(embeddings[0]).all()
  assert np.isnan(embeddings[1, :2]).all() and np.isnan(embeddings[2, :2]).all()
  assert np.isfinite(embeddings[:, 2:]).all()


# ------------------------------------------------------------------ input-dependent provider


class MeanPooledPrompt(nn.Module):
  """p(x) = reshape(W . mean of the real input embeddings): a stand-in for a prompt generator."""

  length: int

  @nn.compact
  def __call__(self, inputs, *, hook_inputs=None, enable_dropout=False):
    batch, _, width = inputs.embeddings.shape
    mask = inputs.mask[..., None].astype(inputs.embeddings.dtype)
    pooled = (inputs.embeddings * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)  # [B, H]
    projected = nn.Dense(self.length * width, use_bias=False, name="projection")(pooled)
    return projected.reshape(batch, self.length, width)


def test_input_dependent_provider_plugs_into_the_hook():
  model = TinyEmbedder(input_hook=hooks.PromptHook(provider=MeanPooledPrompt(length=2)))
  variables = model.init(RNG, TOKENS)
  assert _shapes(variables["params"])["input_hook"] == {
      "projection": {"kernel": (WIDTH, 2 * WIDTH)}}
  out = model.apply(variables, TOKENS)
  table = variables["params"]["token_embedder"]["embedding"]
  kernel = variables["params"]["input_hook"]["projection"]["kernel"]
  for b in range(3):
    real = np.asarray(TOKENS[b])[np.asarray(TOKENS[b]) > 0]
    manual = (np.asarray(table)[real].mean(0) @ np.asarray(kernel)).reshape(2, WIDTH)
    np.testing.assert_allclose(np.asarray(out.embeddings[b, :2]), manual, rtol=1e-5, atol=1e-6)
  # Different inputs, different prompts.
  assert not np.allclose(np.asarray(out.embeddings[0, :2]), np.asarray(out.embeddings[1, :2]))


def test_gradients_reach_the_provider_parameters_only():
  model = TinyEmbedder(input_hook=hooks.PromptHook(provider=MeanPooledPrompt(length=2)))
  variables = model.init(RNG, TOKENS)
  frozen = variables["params"]["token_embedder"]

  def loss(hook_params):
    out = model.apply({"params": {"token_embedder": frozen, "input_hook": hook_params}}, TOKENS)
    return jnp.sum(out.embeddings[:, :2] ** 2)

  grads = jax.grad(loss)(variables["params"]["input_hook"])
  hook_params = variables["params"]["input_hook"]
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(hook_params)
  assert float(jnp.abs(grads["projection"]["kernel"]).max()) > 0


# ------------------------------------------------------------------ ensembles


def test_expand_for_ensemble_is_prompt_major():
  batch = {"inputs": np.array([[1, 2], [3, 4], [5, 6]]), "weights": jnp.array([1.0, 0.5, 0.0])}
  expanded = ensemble.expand_for_ensemble(batch, 2)
  np.testing.assert_array_equal(expanded["inputs"],
                                [[1, 2], [3, 4], [5, 6], [1, 2], [3, 4], [5, 6]])
  assert isinstance(expanded["weights"], jax.Array)
  np.testing.assert_array_equal(np.asarray(expanded["weights"]), [1.0, 0.5, 0.0, 1.0, 0.5, 0.0])
  np.testing.assert_array_equal(expanded["prompt_ids"], [0, 0, 0, 1, 1, 1])
  assert expanded["prompt_ids"].dtype == np.int32
  chosen = ensemble.expand_for_ensemble(batch, 2, prompt_ids=[4, 1])
  np.testing.assert_array_equal(chosen["prompt_ids"], [4, 4, 4, 1, 1, 1])


def test_expand_for_ensemble_bad_inputs_raise():
  with pytest.raises(ValueError, match="already has 'prompt_ids'"):
    ensemble.expand_for_ensemble({"prompt_ids": np.zeros(2)}, 2)
  with pytest.raises(ValueError, match="same leading size"):
    ensemble.expand_for_ensemble({"a": np.zeros(2), "b": np.zeros(3)}, 2)
  with pytest.raises(ValueError, match="must list 3 ids"):
    ensemble.expand_for_ensemble({"a": np.zeros(2)}, 3, prompt_ids=[0, 1])


# Four prompts, three examples, predictions in expanded order (prompt-major).
VOTES = [
    # prompt 0, 1, 2, 3 for example 0: 'b' wins 2-1-1.
    # example 1: 'x' 2 vs 'y' 2, tie -> prompt 0's answer 'y' wins.
    # example 2: all different -> prompt 0's answer.
    "a", "y", "p",  # prompt 0
    "b", "x", "q",  # prompt 1
    "b", "y", "r",  # prompt 2
    "c", "x", "s",  # prompt 3
]


def test_majority_vote_with_deterministic_ties():
  assert ensemble.majority_vote(VOTES, 4) == ["b", "y", "p"]
  # Reordering the prompts changes the tie-break: the lowest-numbered prompt's answer wins.
  reordered = VOTES[3:6] + VOTES[0:3] + VOTES[6:]
  assert ensemble.majority_vote(reordered, 4) == ["b", "x", "q"]
  with pytest.raises(ValueError, match="12 predictions cannot be split evenly among 5 prompts"):
    ensemble.majority_vote(VOTES, 5)


@pytest.mark.parametrize("xp", [np, jnp])
def test_majority_vote_tokens_matches_string_vote(xp):
  codes = {c: [ord(c), ord(c) % 3, 0] for c in set(VOTES)}
  tokens = xp.asarray([codes[c] for c in VOTES])  # [12, 3]
  winners = ensemble.majority_vote_tokens(tokens, 4)
  np.testing.assert_array_equal(np.asarray(winners), [codes["b"], codes["y"], codes["p"]])


@pytest.mark.slow
def test_ensemble_pass_equals_each_prompt_alone():
  model = _table_model()
  variables = _table_variables(model)
  expanded = ensemble.expand_for_ensemble({"tokens": np.asarray(TOKENS)}, 3)
  out = model.apply(variables, jnp.asarray(expanded["tokens"]),
                    hook_inputs={"prompt_ids": jnp.asarray(expanded["prompt_ids"])})
  for k in range(3):
    alone = model.apply(variables, TOKENS, hook_inputs={"prompt_ids": jnp.full(3, k)})
    np.testing.assert_array_equal(np.asarray(out.embeddings[3 * k:3 * k + 3]),
                                  np.asarray(alone.embeddings))


def test_insertion_is_shared_by_every_provider():
  """The hook's output is exactly combine.insert_prompt of what the provider returns."""
  provider = providers.Prompt(length=2)
  model = TinyEmbedder(input_hook=hooks.PromptHook(provider=provider, placement="after_bos"))
  variables = nn.meta.unbox(model.init(RNG, TOKENS))
  plain = TinyEmbedder().apply(variables, TOKENS)
  prompt = jnp.broadcast_to(variables["params"]["input_hook"]["prompt"], (3, 2, WIDTH))
  expected = combine.insert_prompt(plain, prompt, placement="after_bos")
  out = model.apply(variables, TOKENS)
  for field in ("embeddings", "mask", "positions", "input_index"):
    np.testing.assert_array_equal(np.asarray(getattr(out, field)),
                                  np.asarray(getattr(expected, field)))
