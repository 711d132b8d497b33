"""The neural-recursion gin entry builds the wrapper, freezes the LM and sets the paper's Adam."""
import gin
import jax
import numpy as np
import pytest

from prompt_tuning.engine import gin_utils
from prompt_tuning.engine import params as params_lib
from prompt_tuning.engine import train_state
from prompt_tuning.methods.recursion.configurables import warmup_linear_decay
from prompt_tuning.methods.recursion.encdec import EncoderConnectorModel
from prompt_tuning.methods.recursion.model import LMConnectorLMModel

REQUIRED = ["MODEL_DIR='/tmp/unused'", "INITIAL_CHECKPOINT_PATH='/tmp/unused'",
            "MIXTURE_OR_TASK_NAME='unused'", "TRAIN_STEPS=1000"]


def parse(preset, *bindings):
  gin.clear_config()
  gin_utils.register_configurables()
  gin.parse_config_files_and_bindings(
      ["gin/models/decoder_only_tiny.gin", "gin/runs/prompt_tuning.gin",
       f"gin/methods/recursion/{preset}.gin"], REQUIRED + list(bindings))


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def build(name):
  return gin.query_parameter(name).scoped_configurable_fn()


@pytest.mark.parametrize("mode", ["lm_c_lm", "c_lm", "lm_c"])
def test_the_gin_entry_builds_a_two_pass_model_whose_lm_is_frozen(mode):
  parse("neural_lm", f"RECURSION_MODE='{mode}'", "CONNECTOR_LAYERS=2")
  model = build("train.model")
  assert isinstance(model, LMConnectorLMModel) and model.mode == mode
  assert model.connector.num_layers == 2
  assert model.connector.config.emb_dim == model.module.config.emb_dim == 32
  variables = model.initial_variables(jax.random.PRNGKey(0), {"decoder_input_tokens": 8})
  paths = list(train_state._flatten(variables["params"]))
  groups = [group.scoped_configurable_fn() for group in gin.query_parameter("train.param_groups")]
  assignment = params_lib.resolve(groups, paths)
  trainable = assignment.trainable_paths
  assert trainable and all(p.startswith("connector/") for p in trainable)
  assert {p for p in paths if p.startswith("connector/")} == set(trainable)
  assert any(p.startswith("decoder/layers_1/") for p in paths)


@pytest.mark.parametrize("preset,peak", [("neural_lm_lr1e-5", 1e-5), ("neural_lm_lr1e-4", 1e-4),
                                         ("neural_lm_lr3e-4", 3e-4)])
def test_presets_set_adam_095_eps_1e6_wd_01_with_warmup_and_linear_decay(preset, peak):
  parse(preset)
  assert gin.query_parameter("optimizers.adamw.b1") == 0.9
  assert gin.query_parameter("optimizers.adamw.b2") == 0.95
  assert gin.query_parameter("optimizers.adamw.eps") == 1e-6
  assert gin.query_parameter("optimizers.adamw.weight_decay") == 0.1
  schedule = build("optimizers.adamw.learning_rate")
  # 0.5% of 1000 steps = 5 warm-up steps.
  np.testing.assert_allclose([float(schedule(s)) for s in (0, 5, 500, 1000)],
                             [0.0, peak, peak * (1000 - 500) / 995, 0.0], rtol=1e-5,
                             atol=1e-12)


def test_a_bad_schedule_is_refused():
  with pytest.raises(ValueError, match="warmup_fraction"):
    warmup_linear_decay(peak_value=1e-4, total_steps=10, warmup_fraction=1.5)


def test_the_second_stage_run_file_registers_the_candidates_task(tmp_path):
  (tmp_path / "train.jsonl").write_text(
      '{"question": "q", "answer": "a", "candidates": ["a", "b"]}\n')
  gin.clear_config()
  gin_utils.register_configurables()
  gin.parse_config_files_and_bindings(
      ["gin/models/byte_t5_tiny.gin", "gin/runs/prompt_tuning.gin",
       "gin/methods/recursion/candidates_task.gin"],
      ["MODEL_DIR='/tmp/unused'", "INITIAL_CHECKPOINT_PATH='/tmp/unused'",
       "MIXTURE_OR_TASK_NAME=@recursion.candidates_task()", f"CANDIDATES_DIR='{tmp_path}'"])
  import seqio  # pylint: disable=g-import-not-at-top
  name = gin.query_parameter("%MIXTURE_OR_TASK_NAME").scoped_configurable_fn()
  task = seqio.get_mixture_or_task(name)
  row = next(task.get_dataset({"inputs": 64, "targets": 4}, split="train",
                              shuffle=False).as_numpy_iterator())
  assert row["inputs_pretokenized"].decode() == "question: q candidates: (1) a (2) b"


def test_the_encoder_decoder_gin_entry_builds_a_bidirectional_connector_model():
  gin.clear_config()
  gin_utils.register_configurables()
  gin.parse_config_files_and_bindings(
      ["gin/models/byte_t5_tiny.gin", "gin/runs/prompt_tuning.gin",
       "gin/methods/recursion/neural_encdec.gin"], REQUIRED)
  model = build("train.model")
  assert isinstance(model, EncoderConnectorModel) and model.mode == "lm_c_lm"
  assert model.connector.causal is False and model.connector.config.emb_dim == 64
  variables = model.initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": 8,
                                                              "decoder_input_tokens": 4})
  paths = list(train_state._flatten(variables["params"]))
  groups = [group.scoped_configurable_fn() for group in gin.query_parameter("train.param_groups")]
  trainable = params_lib.resolve(groups, paths).trainable_paths
  assert trainable and {p for p in paths if p.startswith("connector/")} == set(trainable)
  assert "connector/layers_0/attention/query/kernel" in trainable


@pytest.mark.parametrize("preset,stack", [("neural_lm", "decoder"), ("neural_encdec", "encoder")])
def test_connector_from_lm_layers_reads_the_stacks_layers_from_the_base(preset, stack):
  model_file = "decoder_only_tiny" if stack == "decoder" else "byte_t5_tiny"
  gin.clear_config()
  gin_utils.register_configurables()
  gin.parse_config_files_and_bindings(
      [f"gin/models/{model_file}.gin", "gin/runs/prompt_tuning.gin",
       f"gin/methods/recursion/{preset}.gin",
       "gin/methods/recursion/connector_from_lm_layers.gin"],
      REQUIRED + ["CONNECTOR_LM_LAYERS = (1,)", "CONNECTOR_LAYERS = 1"])
  connector = gin.query_parameter("train.param_groups")[0].scoped_configurable_fn()
  assert connector.source.path == "/tmp/unused"
  assert connector.source.prefix_map == (
      ("connector/layers_0/", f"{stack}/layers_1/"),
      ("connector/connector_norm/", f"{stack}/{stack}_norm/"),
      ("connector/relpos_bias/", f"{stack}/relpos_bias/"))
  assert build("train.model").connector.residual is False
