"""The gin library: every model and run file parses and builds what it says.

Building a model wrapper constructs the flax modules but does not initialise them, so these
checks are fast; the runs themselves are exercised by the trainer and entry-point tests.
"""
from pathlib import Path

import gin
import pytest

from prompt_tuning.engine import gin_utils
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.models import config as model_config

REPO = Path(__file__).resolve().parents[2]

MODEL_FILES = {
    **{f"t5_1_1_{s}.gin": f"t5_1_1_{s}" for s in ("small", "base", "large", "xl", "xxl", "tiny")},
    **{f"t5_1_1_lm100k_{s}.gin": f"t5_1_1_lm100k_{s}" for s in ("small", "base", "large", "xl",
                                                                 "xxl")},
    **{f"mt5_{s}.gin": f"mt5_{s}" for s in ("small", "base", "large", "xl", "xxl")},
    **{f"t5_1_0_{s}.gin": f"t5_1_0_{s}" for s in ("small", "base", "large")},
    "byte_t5_tiny.gin": "t5_1_1_tiny",
    "decoder_only_tiny.gin": "decoder_only_tiny",
}
# pod_scale.gin: the bfloat16-activation and remat settings the XL and XXL size files include.
SHARED_MODEL_FILES = {"encoder_decoder.gin", "decoder_only.gin", "pod_scale.gin"}
POD_SCALE_FILES = {name for name in MODEL_FILES
                   if "include 'gin/models/pod_scale.gin'"
                   in (REPO / "gin" / "models" / name).read_text()}
# The rotary decoder family's files, tested in tests/models/test_llama_presets.py.
ROTARY_MODEL_FILES = {p.name for p in (REPO / "gin" / "models").glob("*.gin")
                      if "include 'gin/models/rotary_decoder.gin'" in p.read_text()
                      } | {"rotary_decoder.gin"}
RUN_FILES = {"prompt_tuning.gin", "finetune.gin", "eval.gin", "infer.gin", "smoke.gin"}


@pytest.fixture(autouse=True)
def clean_gin():
  gin_utils.register_configurables()
  gin.clear_config()
  yield
  gin.clear_config()


def parse(files, bindings=()):
  gin_utils.parse_gin(gin_files=files, gin_bindings=list(bindings))


def test_every_gin_file_is_covered_here():
  def names(folder):
    return {p.name for p in (REPO / "gin" / folder).glob("*.gin")}
  assert names("models") == set(MODEL_FILES) | SHARED_MODEL_FILES | ROTARY_MODEL_FILES
  assert names("runs") == RUN_FILES  # (gin/prompts/ has its own tests in tests/prompts/)


@pytest.mark.parametrize("name, preset", sorted(MODEL_FILES.items()))
def test_model_file_builds_its_preset(name, preset):
  parse([f"gin/models/{name}"])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  expected = model_config.get_config(preset)
  config = model.module.config
  if name == "byte_t5_tiny.gin":
    assert (config.vocab_size, config.emb_dim, config.num_heads) == (260, 64, 4)
  elif name == "decoder_only_tiny.gin":
    assert config == expected.replace(vocab_size=260)
  elif name in POD_SCALE_FILES:
    assert config == expected.replace(dtype="bfloat16", remat_policy="dots")
  else:
    assert config == expected
  wrapper = (model_wrappers.DecoderOnlyModel if preset.startswith("decoder_only")
             else model_wrappers.EncoderDecoderModel)
  assert isinstance(model, wrapper) and model.module.input_hook is None
  assert config.dropout_rate == 0.0


def test_xl_and_xxl_files_and_only_they_take_the_pod_scale_memory_settings():
  assert POD_SCALE_FILES == {f"{family}_{size}.gin" for size in ("xl", "xxl")
                             for family in ("t5_1_1", "t5_1_1_lm100k", "mt5")}


@pytest.mark.parametrize("bindings, expected", [
    ([], ("bfloat16", "float32", "dots")),
    (["REMAT_POLICY='full'", "ACTIVATION_DTYPE='float32'", "PARAM_DTYPE='bfloat16'"],
     ("float32", "bfloat16", "full")),
])
def test_memory_macros_reach_the_model_config(bindings, expected):
  parse(["gin/models/t5_1_1_xxl.gin"], bindings)
  config = gin.query_parameter("%MODEL").scoped_configurable_fn().module.config
  assert (config.dtype, config.param_dtype, config.remat_policy) == expected


@pytest.mark.parametrize("bindings, expected", [([], None), (["FROZEN_DTYPE='bfloat16'"],
                                                             "bfloat16")])
def test_frozen_dtype_macro_sets_the_cast_of_the_base(bindings, expected):
  parse(["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
         "gin/runs/prompt_tuning.gin"],
        ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH='/ckpt'", "MIXTURE_OR_TASK_NAME='rte'",
         *bindings])
  restore = gin.query_parameter("train.restore_cfg").scoped_configurable_fn()
  assert restore.path == "/ckpt" and restore.dtype == expected


def test_xxl_v3_8_preset_reads_the_base_in_bfloat16_and_remats_whole_layers():
  parse(["gin/models/t5_1_1_xxl.gin", "gin/prompts/random_uniform.gin",
         "gin/runs/prompt_tuning.gin", "gin/partitioning/xxl_v3_8.gin"],
        ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH='/ckpt'", "MIXTURE_OR_TASK_NAME='rte'"])
  config = gin.query_parameter("%MODEL").scoped_configurable_fn().module.config
  restore = gin.query_parameter("train.restore_cfg").scoped_configurable_fn()
  mesh = gin.query_parameter("train.mesh_config").scoped_configurable_fn()
  assert (config.dtype, config.param_dtype, config.remat_policy) == ("bfloat16", "float32", "full")
  assert restore.dtype == "bfloat16" and mesh.mesh_shape(num_devices=8) == (1, 8)


@pytest.mark.parametrize("preset", ["fsdp_tp_70b_v5e_64.gin", "fsdp_tp_70b_v4_128.gin"])
def test_70b_presets_remat_all_but_the_products(preset):
  parse(["gin/models/llama3_1_70b.gin", f"gin/partitioning/{preset}"])
  config = gin.query_parameter("%MODEL").scoped_configurable_fn().module.config
  assert (config.dtype, config.param_dtype, config.remat_policy) == ("bfloat16", "bfloat16",
                                                                     "dots")


def test_prompt_tuning_run_defaults_follow_the_paper():
  parse(["gin/models/t5_1_1_lm100k_base.gin", "gin/prompts/class_labels.gin",
         "gin/runs/prompt_tuning.gin"],
        ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH='/ckpt'", "MIXTURE_OR_TASK_NAME='rte'",
         "CLASS_LABELS=['entailment', 'not_entailment']"])
  assert gin.query_parameter("%PROMPT_LENGTH") == 100
  assert gin.query_parameter("optimizers.adafactor.learning_rate") == 0.3
  assert gin.query_parameter("optimizers.adafactor.decay_rate") == 0.8
  assert gin.query_parameter("optimizers.adafactor.weight_decay_rate") == 1e-5
  assert gin.query_parameter("optimizers.adafactor.multiply_by_parameter_scale") is False
  assert gin.query_parameter("%BATCH_SIZE") == 32
  # What is trained comes from the one default definition (params.prompt_tuning_groups).
  assert "trainable_patterns" not in gin.config_str()
  assert "param_groups" not in gin.config_str()
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  assert model.module.config.dropout_rate == 0.1
  hook = model.module.input_hook
  assert hook.placement == "prefix" and hook.provider.length == 100
  rate = gin_utils.learning_rate_fn("train.optimizer")
  assert rate(0) == 0.3 and rate(1000) == 0.3


def test_finetune_run_trains_everything_with_the_fine_tuning_optimizer():
  parse(["gin/models/t5_1_1_base.gin", "gin/runs/finetune.gin"],
        ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH='/ckpt'", "MIXTURE_OR_TASK_NAME='rte'"])
  assert gin.query_parameter("train.trainable_patterns") == [".*"]
  assert gin.query_parameter("optimizers.adafactor.learning_rate") == 1e-3
  assert gin.query_parameter("trainer.RestoreConfig.allow_missing") is None


@pytest.mark.parametrize("run, macros", [
    ("eval.gin", ["CHECKPOINT_DIR", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME"]),
    ("infer.gin", ["CHECKPOINT_DIR", "INFER_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME"]),
    ("prompt_tuning.gin", ["MODEL_DIR", "INITIAL_CHECKPOINT_PATH", "MIXTURE_OR_TASK_NAME"]),
])
def test_run_files_require_exactly_their_documented_macros(run, macros):
  header = (REPO / "gin" / "runs" / run).read_text().split("# Required:")[1].split("#\n")[0]
  for macro in macros:
    assert macro in header
    others = [f"{m}='x'" for m in macros if m != macro]
    gin.clear_config()
    with pytest.raises(ValueError, match=f"Gin macro {macro} is required but not set"):
      parse(["gin/models/t5_1_1_small.gin", f"gin/runs/{run}"], others)


def test_logged_learning_rate_follows_a_gin_bound_schedule():
  parse(["gin/models/t5_1_1_small.gin", "gin/runs/finetune.gin"],
        ["MODEL_DIR='/tmp/x'", "INITIAL_CHECKPOINT_PATH=None", "MIXTURE_OR_TASK_NAME='rte'",
         "optimizers.adafactor.learning_rate = @optimizers.rsqrt_decay()",
         "optimizers.rsqrt_decay.scale = 1.0", "optimizers.rsqrt_decay.warmup_steps = 100"])
  rate = gin_utils.learning_rate_fn("train.optimizer")
  assert float(rate(0)) == pytest.approx(0.1)  # 1 / sqrt(100) during warm-up
  assert float(rate(400)) == pytest.approx(0.05)  # then 1 / sqrt(step)
