"""Parameter groups: assignment rules, sources, exports, per-group optimizers, hook inputs.

The end-to-end test trains a hook that owns a frozen sub-network (a small "encoder" reading the
example's tokens, a `[B, L]` hook input) restored from a second checkpoint, on top of the real
T5X tiny checkpoint as the frozen base, through the real train entry point.
"""
import os
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import seqio

from prompt_tuning import train as train_lib
from prompt_tuning.data import registry
from prompt_tuning.engine import data, models, params, partitioning, run_setup, train_state
from prompt_tuning.engine import trainer, trees
from prompt_tuning.models import config as config_lib
from prompt_tuning.models import t5
from prompt_tuning.models.hook_inputs import HookInput
from prompt_tuning.prompts import hooks, providers
from prompt_tuning.smoke_data import tasks as smoke_tasks

REPO = Path(__file__).resolve().parents[2]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
TASK = "param_groups_last_digit"
LENGTHS = {"inputs": 16, "targets": 4}
PROMPT_LENGTH = 3
ENCODER_WIDTH = 6


# ------------------------------------------------------------------------------------------------
# A hook provider that owns a frozen sub-network and reads a [B, L] hook input.


class TinyEncoder(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    embedded = nn.Embed(smoke_tasks.MODEL_VOCAB_SIZE, ENCODER_WIDTH, name="embed")(tokens)
    return nn.Dense(ENCODER_WIDTH, name="mix")(embedded)


class EncoderConditionedPrompt(nn.Module):
  """`prompt[b] = queries + proj(mean over tokens of encoder(tokens[b]))`."""

  length: int = PROMPT_LENGTH

  def hook_input_specs(self):
    return (HookInput(name="encoder_tokens", shape=(None,), dtype="int32", length_from="inputs"),)

  @nn.compact
  def __call__(self, inputs, *, hook_inputs=None, enable_dropout=False):
    del enable_dropout
    tokens = hook_inputs["encoder_tokens"]
    batch, _, width = inputs.embeddings.shape
    assert tokens.shape[0] == batch and tokens.ndim == 2, tokens.shape
    encoded = TinyEncoder(name="encoder")(tokens)
    mask = (tokens > 0)[..., None].astype(encoded.dtype)
    pooled = jnp.sum(encoded * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    queries = self.param("queries", nn.initializers.normal(0.5), (self.length, width))
    shift = nn.Dense(width, name="proj")(pooled)
    return queries[None] + shift[:, None, :]


def _copy_inputs_as_encoder_tokens(dataset):
  return dataset.map(lambda ex: {**ex, "encoder_tokens": ex["inputs"]})


def _register_task():
  source = seqio.TaskRegistry.get(smoke_tasks.LAST_DIGIT_TASK)
  features = dict(source.output_features)
  registry.add_task(
      TASK, source=source.source,
      preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim,
                     _copy_inputs_as_encoder_tokens],
      output_features=features, postprocess_fn=source.postprocessor,
      metric_fns=source.metric_fns)


_register_task()


def _wrapper():
  provider = EncoderConditionedPrompt()
  module = t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"),
                             input_hook=hooks.PromptHook(provider=provider))
  return models.EncoderDecoderModel(module)


def _groups(encoder_checkpoint, export="npz"):
  return [
      params.ParamGroup(name="generator", pattern=r"^input_hook/(queries|proj)/?", trainable=True,
                        source=params.FromInit(), export=export),
      params.ParamGroup(name="encoder", pattern=r"^input_hook/encoder/",
                        source=params.FromCheckpoint(
                            path=str(encoder_checkpoint),
                            prefix_map=(("input_hook/encoder/", "encoder/"),))),
      params.ParamGroup(name="model", pattern=None, source=params.FromBase()),
  ]


@pytest.fixture(scope="module")
def encoder_checkpoint(tmp_path_factory):
  """A second checkpoint holding only the encoder, under its own names (an orbax PyTree)."""
  values = TinyEncoder().init(jax.random.PRNGKey(42), jnp.ones((1, 4), jnp.int32))["params"]
  values = jax.tree.map(np.asarray, values)
  path = tmp_path_factory.mktemp("encoder") / "encoder_ckpt"
  ocp.PyTreeCheckpointer().save(str(path), {"encoder": values})
  return path, values


def _flat(tree):
  return {k: np.asarray(v) for k, v in trees.flat(tree).items()}


@pytest.fixture(scope="module")
def generator_run(encoder_checkpoint, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("generator_run")
  model = _wrapper()
  result = train_lib.train(
      model=model,
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=TASK, task_feature_lengths=LENGTHS,
                                           split="train", batch_size=8),
      model_dir=str(model_dir), total_steps=4, optimizer=optax.adam(3e-2),
      param_groups=_groups(encoder_checkpoint[0]),
      restore_cfg=trainer.RestoreConfig(path=str(T5X_TINY)),
      checkpoint_cfg=trainer.CheckpointConfig(period=2), log_period=1, random_seed=3)
  return result, model_dir


# ------------------------------------------------------------------------------------------------
# Assignment rules.


def _tiny_prompt_tree():
  module = t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"),
                             input_hook=hooks.PromptHook(provider=providers.Prompt(length=5)))
  lengths = {"encoder_input_tokens": 8, "decoder_input_tokens": 4}
  variables = jax.eval_shape(
      lambda rng: models.EncoderDecoderModel(module).initial_variables(rng, lengths),
      jax.random.PRNGKey(0))
  return trees.flat(nn.meta.unbox(variables["params"]))


def test_default_groups_select_exactly_the_prompt_of_a_real_t5_tree():
  paths = list(_tiny_prompt_tree())
  assert len(paths) > 20 and any("decoder_norm" in p for p in paths)
  assignment = params.resolve(params.choose_groups(), paths)
  assert assignment.trainable_paths == ["input_hook/prompt"]
  assert assignment.leaves("model") == [p for p in paths if p != "input_hook/prompt"]
  # The older selector is the same single definition.
  assert train_state.trainable_paths(params=trees.unflat(dict.fromkeys(paths, 0)),
                                     patterns=train_state.PROMPT_ONLY) == ["input_hook/prompt"]


@pytest.mark.parametrize("groups, message", [
    ([params.ParamGroup("a", r"^nothing/"), params.ParamGroup("rest")],
     r"Parameter group 'a': pattern '\^nothing/' matches no parameter"),
    ([params.ParamGroup("a", r"^encoder/"), params.ParamGroup("b", r"layers_0/mlp"),
      params.ParamGroup("rest")],
     r"Parameter 'encoder/layers_0/mlp/wi_0/kernel' is matched by both parameter groups 'a' "
     r"and 'b'"),
    ([params.ParamGroup("a", r"^encoder/")],
     r"Parameter 'decoder/.*' is matched by no parameter group"),
    ([params.ParamGroup("a"), params.ParamGroup("a", "x")], r"name 'a' is used twice"),
    ([params.ParamGroup("a"), params.ParamGroup("b")], r"'a' and 'b' both take the rest"),
])
def test_bad_groups_stop_with_one_sentence_naming_the_leaf_or_group(groups, message):
  with pytest.raises(ValueError, match=message):
    params.resolve(groups, list(_tiny_prompt_tree()))


def test_an_invalid_regex_and_a_frozen_group_with_an_optimizer_are_refused():
  with pytest.raises(ValueError, match=r"Parameter group 'g' has an invalid regex '\('"):
    params.ParamGroup("g", "(")
  with pytest.raises(ValueError, match="is frozen but has its own optimizer"):
    params.ParamGroup("g", "x", optimizer=optax.sgd(1.0))


def test_group_records_round_trip():
  group = params.ParamGroup("enc", r"^e/", source=params.FromCheckpoint(
      path="/c", prefix_map=(("e/", "encoder/"),)), export="npz")
  back = params.group_from_record(group.describe())
  assert back == group
  assert back.source.source_name("e/layer/kernel") == "encoder/layer/kernel"


def test_each_group_trains_with_its_own_optimizer():
  tree = {"a": jnp.ones((2,)), "b": jnp.ones((2,))}
  assignment = params.resolve(
      [params.ParamGroup("a", "^a", trainable=True, optimizer=optax.sgd(0.1)),
       params.ParamGroup("b", "^b", trainable=True)], ["a", "b"])
  optimizer = run_setup.group_optimizer(assignment, optax.sgd(1.0))
  grads = {"a": jnp.ones((2,)), "b": jnp.ones((2,))}
  updates, _ = optimizer.update(grads, optimizer.init(tree), tree)
  np.testing.assert_allclose(updates["a"], -0.1)
  np.testing.assert_allclose(updates["b"], -1.0)
  # Without per-group optimizers the run's optimizer is used unchanged (same state layout).
  plain = params.resolve(params.prompt_tuning_groups(), ["input_hook/prompt", "x"])
  default = optax.sgd(1.0)
  assert run_setup.group_optimizer(plain, default) is default


# ------------------------------------------------------------------------------------------------
# Sources.


def _load(groups, restore=None):
  mesh_config = partitioning.MeshConfig()
  return run_setup.load_params(
      model=_wrapper(), lengths=_wrapper().model_feature_lengths(LENGTHS),
      restore=restore or trainer.RestoreConfig(path=str(T5X_TINY)),
      mesh=mesh_config.make_mesh(), rules=mesh_config.axis_rules(), rng=jax.random.PRNGKey(0),
      groups=groups)


@pytest.mark.slow
def test_a_group_is_read_from_its_own_checkpoint_through_the_prefix_map(encoder_checkpoint):
  path, values = encoder_checkpoint
  placed, _ = _load(_groups(path))
  got = _flat(placed["input_hook"]["encoder"])
  want = _flat(values)
  assert sorted(got) == sorted(want) == ["embed/embedding", "mix/bias", "mix/kernel"]
  for name in want:
    np.testing.assert_array_equal(got[name], want[name])


@pytest.mark.slow
def test_a_source_missing_the_groups_leaves_is_one_sentence(encoder_checkpoint):
  path, _ = encoder_checkpoint
  groups = _groups(path)
  groups[1] = params.ParamGroup(name="encoder", pattern=r"^input_hook/encoder/",
                                source=params.FromCheckpoint(path=str(path)))  # no prefix map
  with pytest.raises(ValueError, match=r"^Parameter group 'encoder': .*'input_hook/encoder/"):
    _load(groups)


@pytest.mark.slow
def test_a_source_with_the_wrong_shape_is_one_sentence(tmp_path):
  wrong = tmp_path / "wrong.npz"
  np.savez(wrong, **{"input_hook/queries": np.zeros((PROMPT_LENGTH + 1, 4), np.float32),
                     "input_hook/proj/kernel": np.zeros((ENCODER_WIDTH, 4), np.float32),
                     "input_hook/proj/bias": np.zeros((4,), np.float32)})
  groups = [params.ParamGroup("generator", r"^input_hook/(queries|proj)", trainable=True,
                              source=params.FromNpy(str(wrong))),
            params.ParamGroup("rest", None, source=params.FromBase(
                allow_missing=params.HOOK_PATTERN))]
  with pytest.raises(ValueError, match=r"^Parameter group 'generator': 'input_hook/queries' has "
                                       r"shape \(4, 4\) in .*wrong.npz but the model expects "
                                       r"\(3, 4\)\.$"):
    _load(groups)


@pytest.mark.slow
def test_a_missing_source_checkpoint_is_one_sentence(tmp_path):
  groups = _groups(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=r"Parameter group 'encoder': checkpoint .*nowhere "
                                              r"does not exist\."):
    _load(groups)


# ------------------------------------------------------------------------------------------------
# End to end: a hook with a frozen sub-network from a second checkpoint.


@pytest.mark.slow
def test_the_frozen_sub_network_is_bit_identical_after_training(generator_run, encoder_checkpoint):
  result, _ = generator_run
  trained_encoder = _flat(result.frozen["input_hook"]["encoder"])
  for name, value in _flat(encoder_checkpoint[1]).items():
    np.testing.assert_array_equal(trained_encoder[name], value)
  assert sorted(_flat(result.state.params)) == [
      "input_hook/proj/bias", "input_hook/proj/kernel", "input_hook/queries"]
  losses = [h["loss"] for h in result.train_history]
  assert len(losses) == 4 and all(np.isfinite(losses))


@pytest.mark.slow
def test_the_frozen_base_is_bit_identical_after_training(generator_run):
  result, _ = generator_run
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  base = checkpoint_import.open_checkpoint(str(T5X_TINY))
  frozen = _flat(result.frozen)
  for name in ("encoder/layers_0/mlp/wi_0/kernel", "token_embedder/embedding"):
    np.testing.assert_array_equal(frozen[name], np.asarray(base.read(name)))


@pytest.mark.slow
def test_only_the_exported_group_is_written_and_it_loads_back(generator_run, encoder_checkpoint):
  result, model_dir = generator_run
  exports = sorted(os.path.relpath(p, model_dir) for p in result.exports)
  assert exports == ["group_exports/checkpoint_2/generator.npz",
                     "group_exports/checkpoint_4/generator.npz"]
  assert not (model_dir / "numpy_checkpoints").exists()
  with np.load(model_dir / "group_exports/checkpoint_4/generator.npz") as archive:
    assert sorted(archive.files) == ["input_hook/proj/bias", "input_hook/proj/kernel",
                                     "input_hook/queries"]
    for name, value in _flat(result.state.params).items():
      np.testing.assert_array_equal(archive[name], value)
  groups = _groups(encoder_checkpoint[0])
  groups[0] = params.ParamGroup(
      name="generator", pattern=r"^input_hook/(queries|proj)/?",
      source=params.FromNpy(str(model_dir / "group_exports/checkpoint_4/generator.npz")))
  loaded, _ = _load(groups)
  for name, value in _flat(result.state.params).items():
    np.testing.assert_array_equal(_flat(loaded)[name], value)


@pytest.mark.slow
def test_hook_inputs_reach_the_hook_in_their_declared_shape_and_change_the_prompt(generator_run):
  result, _ = generator_run
  model = _wrapper()
  converter = model.feature_converter()
  lengths = model.model_feature_lengths(LENGTHS)
  assert lengths["encoder_tokens"] == LENGTHS["inputs"]  # a (None,) input takes its task length
  dataset = seqio.get_mixture_or_task(TASK).get_dataset(LENGTHS, split="validation",
                                                          shuffle=False)
  batch = next(converter(dataset, LENGTHS).batch(4).as_numpy_iterator())
  assert batch["encoder_tokens"].shape == (4, LENGTHS["inputs"])
  np.testing.assert_array_equal(batch["encoder_tokens"], batch["encoder_input_tokens"])
  merged = train_state.merge_params(trainable=result.state.params, frozen=result.frozen)
  embedded = model.module.apply({"params": merged}, batch["encoder_input_tokens"],
                                hook_inputs=model._hook_inputs(batch), method="encode")
  prompts = np.asarray(embedded[0][:, :PROMPT_LENGTH])
  assert not np.allclose(prompts[0], prompts[1])  # different inputs, different prompts
  again = model.module.apply({"params": merged}, batch["encoder_input_tokens"],
                             hook_inputs=model._hook_inputs(batch), method="encode")
  np.testing.assert_array_equal(np.asarray(again[0]), np.asarray(embedded[0]))


@pytest.mark.slow
def test_a_task_without_a_declared_hook_input_is_one_sentence():
  converter = _wrapper().feature_converter()
  dataset = seqio.get_mixture_or_task(smoke_tasks.LAST_DIGIT_TASK).get_dataset(
      LENGTHS, split="validation", shuffle=False)
  with pytest.raises(ValueError, match=r"The task's examples lack the hook input "
                                       r"'encoder_tokens' that the model declares"):
    converter(dataset, LENGTHS)


def test_scalar_and_matrix_hook_inputs_travel_flat_and_come_back_shaped():
  model = models.EncoderDecoderModel(
      t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny")),
      hook_inputs=(HookInput("prompt_ids"), HookInput("features", (2, 3), "float32")))
  batch = {"prompt_ids": np.array([[4], [7]]), "features": np.arange(12.).reshape(2, 6)}
  routed = model._hook_inputs(batch)
  assert routed["prompt_ids"].shape == (2,) and routed["prompt_ids"].tolist() == [4, 7]
  assert routed["features"].shape == (2, 2, 3) and routed["features"][1, 1, 2] == 11.0


# ------------------------------------------------------------------------------------------------
# The wrapper protocol: a model the engine has never seen plugs in without engine changes.


class BagOfBytesClassifier(nn.Module):
  """Mean of byte embeddings -> logits over the first target token (a re-ranker-like head)."""

  @nn.compact
  def __call__(self, tokens):
    embedded = nn.Embed(smoke_tasks.MODEL_VOCAB_SIZE, 16, name="embed")(tokens)
    mask = (tokens > 0)[..., None].astype(jnp.float32)
    pooled = jnp.sum(embedded * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    hidden = nn.relu(nn.Dense(32, name="hidden")(pooled))
    return nn.Dense(smoke_tasks.MODEL_VOCAB_SIZE, name="head")(hidden)


class ClassifierWrapper:
  """Implements `models.ModelWrapper` from scratch (no BaseModel)."""

  def __init__(self):
    self.module = BagOfBytesClassifier()

  def feature_converter(self):
    return seqio.EncDecFeatureConverter(pack=False)

  def model_feature_lengths(self, task_feature_lengths):
    return dict(self.feature_converter().get_model_feature_lengths(task_feature_lengths))

  def initial_variables(self, rng, lengths):
    return self.module.init(rng, jnp.ones((1, lengths["encoder_input_tokens"]), jnp.int32))

  def hook_input_specs(self):
    return ()

  def _logits_and_labels(self, params, batch):
    logits = self.module.apply({"params": params}, batch["encoder_input_tokens"])
    return logits, batch["decoder_target_tokens"][:, 0]

  def loss_fn(self, params, batch, dropout_rng):
    del dropout_rng
    logits, labels = self._logits_and_labels(params, batch)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return jnp.mean(losses), {"accuracy": accuracy}

  def score_batch(self, params, batch):
    logits, labels = self._logits_and_labels(params, batch)
    return jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]

  def predict_batch_with_scores(self, params, batch, **kwargs):
    del kwargs
    logits, _ = self._logits_and_labels(params, batch)
    best = jnp.argmax(logits, -1)
    return best[:, None, None], jnp.max(jax.nn.log_softmax(logits), -1)[:, None]

  def predict_batch(self, params, batch, **kwargs):
    decodes, _ = self.predict_batch_with_scores(params, batch, **kwargs)
    return decodes[:, 0]

  def max_decode_length(self, task_feature_lengths):
    del task_feature_lengths
    return 1

  def prompt_export_info(self):
    return None


@pytest.mark.slow
def test_a_new_wrapper_trains_and_evaluates_through_the_protocol(tmp_path):
  model = ClassifierWrapper()
  dataset_cfg = data.DatasetConfig(mixture_or_task_name=smoke_tasks.LAST_DIGIT_TASK,
                                   task_feature_lengths=LENGTHS, split="train", batch_size=32)
  eval_cfg = data.DatasetConfig(mixture_or_task_name=smoke_tasks.LAST_DIGIT_TASK,
                                task_feature_lengths=LENGTHS, split="validation", batch_size=64,
                                shuffle=False)
  result = train_lib.train(
      model=model, train_dataset_cfg=dataset_cfg, model_dir=str(tmp_path), total_steps=60,
      optimizer=optax.adam(1e-2), trainable_patterns=[".*"], train_eval_dataset_cfg=eval_cfg,
      infer_eval_dataset_cfg=eval_cfg, eval_period=60, eval_steps=2, log_period=10,
      checkpoint_cfg=trainer.CheckpointConfig(period=60))
  losses = [h["loss"] for h in result.train_history]
  assert losses[-1] < 0.75 * losses[0], losses
  final = result.eval_history[-1]
  # The byte classifier learns the last-digit task well above chance (10%) in 60 steps.
  assert final["smoke_last_digit/accuracy"] > 20.0, final
  assert os.path.isdir(os.path.join(result.checkpoint_dir, "60"))


@pytest.mark.slow
def test_a_group_with_its_own_optimizer_trains_through_the_entry_point(tmp_path):
  """The prompt with Adam at 0.3 and the model with Adam at 1e-3 in one run."""
  groups = [params.ParamGroup("prompt", params.HOOK_PATTERN, trainable=True,
                              source=params.FromInit(), optimizer=optax.adam(0.3)),
            params.ParamGroup("model", None, trainable=True)]
  module = t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"),
                             input_hook=hooks.PromptHook(provider=providers.Prompt(length=3)))
  result = train_lib.train(
      model=models.EncoderDecoderModel(module),
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=smoke_tasks.LAST_DIGIT_TASK,
                                           task_feature_lengths=LENGTHS, split="train",
                                           batch_size=8),
      model_dir=str(tmp_path), total_steps=2, optimizer=optax.adam(1e-3), param_groups=groups,
      restore_cfg=trainer.RestoreConfig(path=str(T5X_TINY)),
      checkpoint_cfg=trainer.CheckpointConfig(period=2), log_period=1)
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  base = checkpoint_import.open_checkpoint(str(T5X_TINY))
  kernel = "encoder/layers_0/mlp/wi_0/kernel"
  moved = np.abs(_flat(result.state.params)[kernel] - np.asarray(base.read(kernel))).max()
  # Adam moves each weight by about its learning rate per step: 2 steps of 1e-3 for the model.
  assert 1e-4 < moved < 3e-3, moved
