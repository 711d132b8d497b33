"""The ID-PT prompt generator on the real T5X tiny checkpoint.

The frozen LM and the generator's frozen small encoder are both read from the real T5X legacy
checkpoint of T5 1.1 tiny (the small encoder through the prefix map from its `encoder/...` and
`token_embedder/...` names); the generator trains on the `idpt_digits` mixture through the real
train entry point.
"""
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio

from prompt_tuning import train as train_lib
from prompt_tuning.engine import checkpoint_import, data, models, params, partitioning
from prompt_tuning.engine import run_setup, train_state, trainer
from prompt_tuning.methods.idpt import generator as generator_lib
from prompt_tuning.methods.idpt import groups as groups_lib
from prompt_tuning.methods.idpt import tasks
from prompt_tuning.models import config as config_lib
from prompt_tuning.models import t5
from prompt_tuning.prompts import base, hooks

REPO = Path(__file__).resolve().parents[3]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
LENGTHS = {"inputs": 16, "targets": 4}
PROMPT_LENGTH = 5
ENCODER_PROMPT_LENGTH = 3
STEPS = 4


def _generator(**overrides):
  settings = dict(encoder_config=config_lib.get_config("t5_1_1_tiny"), length=PROMPT_LENGTH,
                  encoder_prompt_length=ENCODER_PROMPT_LENGTH)
  return generator_lib.PromptGenerator(**{**settings, **overrides})


def _wrapper():
  module = t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"),
                             input_hook=hooks.PromptHook(provider=_generator()))
  return models.EncoderDecoderModel(module)


def _flat(tree):
  return {k: np.asarray(v) for k, v in run_setup.flat(tree).items()}


def _batch(size=6):
  model = _wrapper()
  dataset = seqio.get_mixture_or_task(tasks.task_name("last")).get_dataset(
      LENGTHS, split="validation", shuffle=False)
  batch = next(model.feature_converter()(dataset, LENGTHS).batch(size).as_numpy_iterator())
  return {key: np.array(value) for key, value in batch.items()}


def _prompts(params_tree, batch):
  """The prompt slots of the encoder input (the generator's output, cast by the hook)."""
  model = _wrapper()
  embedded = model.module.apply({"params": params_tree}, batch["encoder_input_tokens"],
                                hook_inputs=model._hook_inputs(batch), method=_embed_and_hook)
  return np.asarray(embedded.embeddings[:, :PROMPT_LENGTH])


def _embed_and_hook(module, tokens, hook_inputs):
  inputs = base.embedded_from_tokens(module.token_embedder(tokens), tokens > 0)
  return module.input_hook(inputs, hook_inputs=hook_inputs)


def _load(groups):
  mesh_config = partitioning.MeshConfig()
  model = _wrapper()
  placed, _ = run_setup.load_params(
      model=model, lengths=model.model_feature_lengths(LENGTHS),
      restore=trainer.RestoreConfig(path=str(T5X_TINY)), mesh=mesh_config.make_mesh(),
      rules=mesh_config.axis_rules(), rng=jax.random.PRNGKey(0), groups=groups)
  return placed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("idpt_run")
  result = train_lib.train(
      model=_wrapper(),
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=tasks.MIXTURE,
                                           task_feature_lengths=LENGTHS, split="train",
                                           batch_size=8),
      model_dir=str(model_dir), total_steps=STEPS, optimizer=optax.adam(3e-2),
      param_groups=groups_lib.idpt_groups(str(T5X_TINY)),
      restore_cfg=trainer.RestoreConfig(path=str(T5X_TINY)),
      checkpoint_cfg=trainer.CheckpointConfig(period=2), log_period=1, random_seed=3)
  merged = train_state.merge_params(trainable=result.state.params, frozen=result.frozen)
  return result, model_dir, merged


# ------------------------------------------------------------------------------------------------
# Shape and parameters.


def test_output_is_batch_by_prompt_length_by_lm_width_from_a_narrower_encoder():
  # Small encoder width 4, LM width 12: the projection maps one onto the other.
  provider = _generator()
  tokens = jnp.array([[5, 6, 7, 1, 0], [8, 9, 1, 0, 0], [5, 6, 7, 1, 0]], jnp.int32)
  inputs = base.embedded_from_tokens(jnp.zeros((3, 7, 12)), jnp.ones((3, 7), jnp.int32))
  variables = provider.init(jax.random.PRNGKey(0), inputs,
                            hook_inputs={generator_lib.GENERATOR_TOKENS: tokens})
  prompt = provider.apply(variables, inputs, hook_inputs={generator_lib.GENERATOR_TOKENS: tokens})
  assert prompt.shape == (3, PROMPT_LENGTH, 12)
  flat = _flat(nn.meta.unbox(variables["params"]))
  assert flat["projection/kernel"].shape == (4, 12)
  assert flat["queries"].shape == (PROMPT_LENGTH, 4)
  assert flat["encoder_prompt"].shape == (ENCODER_PROMPT_LENGTH, 4)
  np.testing.assert_array_equal(prompt[0], prompt[2])  # same tokens, same prompt
  assert np.abs(np.asarray(prompt[0] - prompt[1])).max() > 1e-3


def test_every_parameter_has_logical_axis_names():
  provider = _generator()
  tokens = jnp.ones((1, 4), jnp.int32)
  inputs = base.embedded_from_tokens(jnp.zeros((1, 3, 8)), jnp.ones((1, 3), jnp.int32))
  variables = jax.eval_shape(lambda: provider.init(
      jax.random.PRNGKey(0), inputs, hook_inputs={generator_lib.GENERATOR_TOKENS: tokens}))
  leaves = jax.tree_util.tree_leaves_with_path(
      variables["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert len(leaves) > 30
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), jax.tree_util.keystr(path)
    assert len(leaf.names) == len(leaf.value.shape) and all(leaf.names), path


def test_a_batch_without_generator_tokens_is_one_sentence():
  provider = _generator()
  inputs = base.embedded_from_tokens(jnp.zeros((2, 3, 8)), jnp.ones((2, 3), jnp.int32))
  with pytest.raises(ValueError, match=r"needs the hook input 'generator_tokens' .* has "
                                       r"\['prompt_ids'\]\."):
    provider.init(jax.random.PRNGKey(0), inputs, hook_inputs={"prompt_ids": jnp.zeros((2,))})
  with pytest.raises(ValueError, match=r"must be \[batch=2, length\] tokens, got shape \(3, 4\)"):
    provider.init(jax.random.PRNGKey(0), inputs,
                  hook_inputs={generator_lib.GENERATOR_TOKENS: jnp.ones((3, 4), jnp.int32)})
  with pytest.raises(ValueError, match="PromptGenerator.length must be a positive int"):
    _generator(length=0)


def test_groups_split_generator_small_encoder_and_lm():
  model = _wrapper()
  variables = jax.eval_shape(lambda r: model.initial_variables(
      r, model.model_feature_lengths(LENGTHS)), jax.random.PRNGKey(0))
  paths = list(run_setup.flat(nn.meta.unbox(variables["params"])))
  assignment = params.resolve(groups_lib.idpt_groups("/unused"), paths)
  trainable = assignment.trainable_paths
  assert trainable == assignment.leaves("generator")
  assert all(p.startswith("input_hook/") and "small_encoder" not in p for p in trainable)
  assert len(trainable) == 36  # prompt, queries, 3 blocks, norm, projection
  encoder = assignment.leaves("small_encoder")
  assert len(encoder) == 21 and all(p.startswith("input_hook/small_encoder/") for p in encoder)
  assert not any(p.startswith("input_hook/") for p in assignment.leaves("model"))


# ------------------------------------------------------------------------------------------------
# Training, export, reload.


def test_small_encoder_is_read_from_the_t5_checkpoint_and_bit_identical_after_training(run):
  result, _, merged = run
  reference = checkpoint_import.open_checkpoint(str(T5X_TINY))
  encoder = _flat(merged["input_hook"]["small_encoder"])
  assert len(encoder) == 21
  for name, value in encoder.items():
    np.testing.assert_array_equal(value, np.asarray(reference.read(name)), err_msg=name)
  # The LM too.
  for name in ("encoder/layers_0/mlp/wi_0/kernel", "decoder/logits_dense/kernel"):
    np.testing.assert_array_equal(_flat(merged)[name], np.asarray(reference.read(name)))
  trained = _flat(result.state.params)
  assert len(trained) == 36 and not any("small_encoder" in p for p in trained)
  losses = [h["loss"] for h in result.train_history]
  assert len(losses) == STEPS and all(np.isfinite(losses))


def test_generator_trains_and_is_exported_without_the_small_encoder(run):
  result, model_dir, _ = run
  npz = model_dir / "group_exports" / f"checkpoint_{STEPS}" / "generator.npz"
  earlier = model_dir / "group_exports" / "checkpoint_2" / "generator.npz"
  with np.load(npz) as final, np.load(earlier) as step2:
    assert sorted(final.files) == sorted(_flat(result.state.params))
    assert not any("small_encoder" in name for name in final.files)
    for name, value in _flat(result.state.params).items():
      np.testing.assert_array_equal(final[name], value)
    # Adam at 3e-2 moves the queries between step 2 and the last step.
    assert np.abs(final["input_hook/queries"] - step2["input_hook/queries"]).max() > 1e-3
  assert not (model_dir / "numpy_checkpoints").exists()


def test_the_exported_group_loads_back_and_reproduces_the_prompts(run):
  _, model_dir, merged = run
  npz = model_dir / "group_exports" / f"checkpoint_{STEPS}" / "generator.npz"
  loaded = _load(groups_lib.idpt_groups(str(T5X_TINY), generator_npz=str(npz),
                                        train_generator=False))
  batch = _batch()
  np.testing.assert_array_equal(_prompts(loaded, batch), _prompts(merged, batch))


def test_prompts_differ_across_inputs_and_repeat_for_identical_inputs(run):
  _, _, merged = run
  batch = _batch(6)
  tokens = batch["generator_tokens"]
  assert not np.array_equal(tokens[0], tokens[1])
  batch["generator_tokens"][3] = tokens[0]  # row 3 now reads what row 0 reads
  prompts = _prompts(merged, batch)
  assert prompts.shape == (6, PROMPT_LENGTH, 4)
  np.testing.assert_array_equal(prompts[3], prompts[0])
  spread = np.abs(prompts[0] - prompts[1]).max()
  assert spread > 1e-3, spread
  # The LM's own input does not reach the generator: row 3 keeps its own LM tokens.
  assert not np.array_equal(batch["encoder_input_tokens"][3], batch["encoder_input_tokens"][0])


def test_greedy_decoding_with_the_kv_cache_matches_full_recomputation(run):
  _, _, merged = run
  model = _wrapper()
  batch = _batch(6)
  steps = 6
  cached = np.asarray(model.predict_batch(merged, batch, max_decode_length=steps))

  # No cache: run the whole model on the tokens so far and take the argmax of the last one.
  hook_inputs = model._hook_inputs(batch)
  rows = batch["encoder_input_tokens"].shape[0]
  decoded = np.zeros((rows, steps), np.int32)
  for t in range(steps):
    decoder_inputs = np.concatenate([np.zeros((rows, 1), np.int32), decoded[:, :t]], axis=1)
    logits = model.module.apply({"params": merged}, batch["encoder_input_tokens"],
                                jnp.asarray(decoder_inputs), hook_inputs=hook_inputs)
    decoded[:, t] = np.argmax(np.asarray(logits[:, t]), axis=-1)
  # predict_batch writes 0 after the first EOS.
  for row in range(rows):
    ends = np.flatnonzero(decoded[row] == model.eos_id)
    if ends.size:
      decoded[row, ends[0] + 1:] = 0
  np.testing.assert_array_equal(cached, decoded)
  assert (decoded != 0).any()  # something was decoded, not only padding
