"""Tests for the ahead-of-time planner (`python -m prompt_tuning.plan`, engine/planning.py).

The planner needs a fresh JAX (the host's device count, or the TPU plugin, is chosen before JAX
starts), so each run is a subprocess that writes the plan as JSON; the tests assert on its
numbers. The expected per-device bytes are counted by hand from the tiny model's shapes
(gin/models/byte_t5_tiny.gin: vocab 260, width 64, 4 heads x 16, MLP 128, 2 + 2 layers,
16 relative-position buckets) on the 4 (data) x 2 (model) mesh of gin/partitioning/cpu_8.gin,
where vocab, heads (joined_kv) and MLP dimensions split over `model` and the rest is replicated.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from prompt_tuning.engine import planning
from prompt_tuning.engine import topologies

REPO = pathlib.Path(__file__).resolve().parents[2]
PROMPT = 4
BATCH, INPUTS, TARGETS = 8, 12, 4
F32 = 4

# Elements per device, model axis of 2. Encoder layer: q, k, v, o (64 x 64, split) + wi_0, wi_1,
# wo (64 x 128, split) + 2 norms (64); decoder layer adds cross-attention and a third norm.
ENCODER_LAYER = 4 * 64 * 64 // 2 + 3 * 64 * 128 // 2 + 2 * 64
DECODER_LAYER = 8 * 64 * 64 // 2 + 3 * 64 * 128 // 2 + 3 * 64
MODEL_ELEMENTS = (260 * 64 // 2  # token embedding, vocab split
                  + 2 * ENCODER_LAYER + 2 * DECODER_LAYER
                  + 2 * (4 * 16 // 2)  # relative-position biases, heads split
                  + 2 * 64  # final norms
                  + 64 * 260 // 2)  # untied logits, vocab split
PROMPT_ELEMENTS = PROMPT * 64  # replicated
STATE_SCALARS = 4 + 8 + 4  # step (int32), rng (uint32[2]), data position (int32)
# Each device holds BATCH / 4 rows of int32 features: the encoder's inputs and the decoder's
# inputs, targets and loss weights.
BATCH_BYTES = BATCH // 4 * (INPUTS + 3 * TARGETS) * 4

TINY = ["--gin_file=gin/models/byte_t5_tiny.gin", "--gin_file=gin/prompts/random_uniform.gin",
        "--gin_file=gin/runs/prompt_tuning.gin", "--gin_file=gin/partitioning/cpu_8.gin",
        f"--gin.PROMPT_LENGTH={PROMPT}", f"--gin.BATCH_SIZE={BATCH}",
        f"--gin.TASK_FEATURE_LENGTHS={{'inputs': {INPUTS}, 'targets': {TARGETS}}}",
        "--gin.train.optimizer=@optimizers.adam()"]


def _plan(args, tmp_path, *, timeout=600):
  """Runs the planner CLI in a fresh process; returns (returncode, stdout, stderr, plan)."""
  env = dict(os.environ)
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env.pop("XLA_FLAGS", None)
  env.pop("JAX_PLATFORMS", None)
  out = tmp_path / "plan.json"
  process = subprocess.run([sys.executable, "-m", "prompt_tuning.plan", *args, f"--json={out}"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
  plan = json.loads(out.read_text()) if out.exists() else None
  return process.returncode, process.stdout, process.stderr, plan


def _step(plan, name):
  return next(s for s in plan["steps"] if s["name"] == name)


def test_arguments_of_full_fine_tuning_counted_from_the_shardings(tmp_path):
  """Every parameter trainable with Adam: optimizer state is two sharded copies and a count."""
  code, _, err, plan = _plan(TINY + ["--gin.train.trainable_patterns=['.*']", "--steps=",
                                     "--topology=cpu:8"], tmp_path)
  assert code == 0, err[-3000:]
  params = (MODEL_ELEMENTS + PROMPT_ELEMENTS) * F32
  assert plan["mesh"] == {"data": 4, "model": 2}
  assert plan["arguments"] == {
      "frozen parameters": 0, "trainable parameters": params,
      "optimizer state": 2 * params + 4, "step, rng, data position": STATE_SCALARS,
      "batch": BATCH_BYTES}
  assert params == 464128
  assert plan["steps"] == []


@pytest.mark.slow
def test_cpu_plan_compiles_the_train_step_and_its_arguments_match_the_hand_count(tmp_path):
  code, out, err, plan = _plan(TINY + ["--topology=cpu:8"], tmp_path)
  assert code == 0, err[-3000:]
  expected = {"frozen parameters": MODEL_ELEMENTS * F32,  # 463104
              "trainable parameters": PROMPT_ELEMENTS * F32,  # 1024
              "optimizer state": 2 * PROMPT_ELEMENTS * F32 + 4,  # Adam's mu, nu and count
              "step, rng, data position": STATE_SCALARS, "batch": BATCH_BYTES}
  assert plan["arguments"] == expected
  assert sum(expected.values()) == 466388
  train = _step(plan, "train")
  # XLA:CPU's own account of the step's arguments is exactly the shardings' account.
  assert train["arguments"] == 466388
  # The donated state comes back in place: outputs alias at least the state's bytes.
  assert train["aliased"] >= 1024 + 2052 + STATE_SCALARS
  assert train["temporaries"] > 0 and train["flops"] > 0
  assert train["fits"] is None  # CPU devices have no HBM limit to check
  assert "| train |" in out and "frozen parameters" in out


@pytest.mark.slow
@pytest.mark.skipif(not topologies.libtpu_available(),
                    reason="libtpu not installed (pip install .[tpu])")
def test_tpu_plan_compiles_train_and_eval_for_a_v3_8(tmp_path):
  code, out, err, plan = _plan(TINY + ["--topology=v3-8", "--steps=train,eval"], tmp_path)
  assert code == 0, err[-3000:]
  assert plan["platform"] == "tpu" and plan["num_devices"] == 8
  assert plan["hbm_bytes"] == 16 << 30
  assert plan["arguments"]["frozen parameters"] == MODEL_ELEMENTS * F32
  for name in ("train", "eval"):
    step = _step(plan, name)
    # The TPU compiler pads small arrays to its tiles: at least the unpadded bytes.
    assert step["arguments"] >= (MODEL_ELEMENTS + PROMPT_ELEMENTS) * F32 + BATCH_BYTES
    assert step["fits"] is True and step["flops"] > 0
  assert "compiler: XLA:TPU" in out


def test_unknown_topology_is_one_sentence(tmp_path):
  code, _, err, plan = _plan(TINY + ["--topology=v9-8"], tmp_path, timeout=120)
  assert code == 1 and plan is None
  assert err.strip().splitlines() == [
      "Error: Unknown topology 'v9-8'; expected v3-N, v4-N, v5e-N (e.g. v3-32, v4-32, v5e-16), "
      "v3:2x2-style layouts or cpu:N."]


@pytest.mark.slow
def test_mesh_that_does_not_divide_the_devices_is_one_sentence(tmp_path):
  code, _, err, plan = _plan(TINY + ["--gin.partitioning.MeshConfig.data=3",
                                     "--topology=cpu:8"], tmp_path, timeout=300)
  assert code == 1 and plan is None
  assert err.strip().splitlines()[-1] == (
      "Error: Mesh replica=1 x data=3 x model=2 does not use exactly the 8 available devices.")


@pytest.mark.skipif(topologies.libtpu_available(), reason="libtpu is installed here")
def test_tpu_topology_without_libtpu_says_how_to_install_it(tmp_path):
  code, _, err, _ = _plan(TINY + ["--topology=v3-32"], tmp_path, timeout=120)
  assert code == 1
  assert err.strip().splitlines() == [
      "Error: libtpu not installed (pip install .[tpu]); it is needed to compile for v3-32."]


def test_slice_names_map_to_device_counts_layouts_and_memory():
  v3_32, v4_32, v5e_16 = (topologies.parse(n) for n in ("v3-32", "v4-32", "v5e-16"))
  assert (v3_32.num_devices, v3_32.layout, v3_32.hbm_bytes) == (32, "v3:4x4", 16 << 30)
  assert (v4_32.num_devices, v4_32.layout, v4_32.hbm_bytes) == (16, "v4:2x2x4", 32 << 30)
  assert (v5e_16.num_devices, v5e_16.layout, v5e_16.hbm_bytes) == (16, "v5e:4x4", 16 << 30)
  assert topologies.parse("v3-8").layout == "v3:2x2"
  assert topologies.parse("v4-128").layout == "v4:4x4x4"
  with pytest.raises(ValueError, match="power-of-two number of chips"):
    topologies.parse("v3-12")


def test_total_and_fit_of_a_step():
  step = planning.StepMemory(name="train", arguments=10, outputs=4, aliased=3, temporaries=5,
                             generated_code=1, flops=None, compile_seconds=0.0)
  assert step.total == 17
  plan = planning.Plan(topology=topologies.parse("v5e-16"), mesh_shape={}, arguments={},
                       steps=[step], hbm_bytes=17)
  assert plan.fits(step) is True
  plan.hbm_bytes = 16
  assert plan.fits(step) is False


def test_abstract_setup_has_the_shapes_dtypes_and_shardings_of_the_real_setup(tmp_path):
  """The planner's setup is the trainer's on abstract values: same trees, nothing allocated;
  a bfloat16 read of the base (RestoreConfig.dtype) makes the frozen leaves bfloat16."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import models, optimizers, partitioning, run_setup, trainer
  from prompt_tuning.models import config as config_lib, t5
  from prompt_tuning.prompts import hooks, providers

  module = t5.EncoderDecoder(config=config_lib.get_config("t5_1_1_tiny"),
                             input_hook=hooks.PromptHook(provider=providers.Prompt(length=3)))
  model = models.EncoderDecoderModel(module)
  lengths = model.model_feature_lengths({"inputs": 8, "targets": 4})
  mesh_config = partitioning.MeshConfig()
  real = run_setup.setup(model=model, lengths=lengths, mesh_config=mesh_config,
                         restore=trainer.RestoreConfig(), optimizer=optimizers.adafactor(),
                         checkpoint=trainer.CheckpointConfig(async_save=False),
                         model_dir=str(tmp_path), seed=0)
  real.checkpoints.close()
  mesh = mesh_config.make_mesh()
  abstract = run_setup.abstract_setup(model=model, lengths=lengths, mesh=mesh,
                                      rules=mesh_config.axis_rules(),
                                      restore=trainer.RestoreConfig(),
                                      optimizer=optimizers.adafactor(), seed=0)
  def describe(tree):
    return jax.tree.map(lambda x: (x.shape, str(x.dtype), x.sharding.spec), tree)

  assert describe(abstract.state) == describe(real.state)
  assert describe(abstract.placed.frozen) == describe(real.placed.frozen)
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves((abstract.state, abstract.placed.trainable,
                                            abstract.placed.frozen)))
  bf16 = run_setup.abstract_setup(
      model=model, lengths=lengths, mesh=mesh, rules=mesh_config.axis_rules(),
      restore=trainer.RestoreConfig(path="/not/read", dtype="bfloat16"),
      optimizer=optimizers.adafactor(), seed=0)
  assert {str(x.dtype) for x in jax.tree.leaves(bf16.placed.frozen)} == {"bfloat16"}
  assert {str(x.dtype) for x in jax.tree.leaves(bf16.placed.trainable)} == {"float32"}

