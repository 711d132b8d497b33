"""The trainer on one CPU device: frozen means frozen, exports and metrics, NaN stops cleanly.

(Resumption after a kill is tested in test_entry_points.py, sharding in test_distributed.py.)

Runs go through the real train entry point (`prompt_tuning.train.main`) with the project's gin
files, on the tiny byte-level model and the generated smoke tasks, so nothing is downloaded.
"""
import json
import os
from pathlib import Path

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import train as train_lib
from prompt_tuning.engine import checkpoint_import, checkpoints, export, reporting, trainer

pytestmark = pytest.mark.slow  # whole training runs through the train entry point

REPO = Path(__file__).resolve().parents[2]
# A real T5X checkpoint (legacy msgpack + zarr) of T5 1.1 tiny: width 4, 2+2 layers.
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
SMALL = {"BATCH_SIZE": "8", "train.log_period": "1", "DROPOUT_RATE": "0.0"}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Runs that compile identical programs (same model and shapes) compile them once."""
  jax.config.update("jax_compilation_cache_dir",
                    str(tmp_path_factory.getbasetemp() / "jax_compilation_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def gin_args(files, bindings):
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def finetune_args(model_dir, steps, **bindings):
  return gin_args(
      ["gin/models/t5_1_1_tiny.gin", "gin/runs/finetune.gin", "gin/runs/smoke.gin"],
      {**SMALL, "MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
       "MIXTURE_OR_TASK_NAME": "'smoke_skills'", "TRAIN_STEPS": str(steps),
       "CHECKPOINT_PERIOD": str(steps), "train.infer_eval_dataset_cfg": "None",
       "train.optimizer": "@optimizers.adam()", "optimizers.adam.learning_rate": "3e-2",
       **bindings})


def prompt_args(model_dir, base, steps, **bindings):
  return gin_args(
      ["gin/models/t5_1_1_tiny.gin", "gin/prompts/sampled_vocabulary.gin",
       "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"],
      {**SMALL, "MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(base),
       "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": str(steps),
       "PROMPT_VOCAB_POPULATION": "260",
       "train.infer_eval_dataset_cfg": "None", **bindings})


def flat(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flat(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """The T5X tiny checkpoint fine-tuned (all parameters) for 30 steps, saved in our format."""
  model_dir = tmp_path_factory.mktemp("base")
  result = train_lib.main(finetune_args(model_dir, 30))
  return result, os.path.join(result.checkpoint_dir, "30", "params")


@pytest.fixture(scope="module")
def prompt_run(base, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("prompt")
  result = train_lib.main(prompt_args(model_dir, base[1], 12, CHECKPOINT_PERIOD="6"))
  return result, model_dir


def test_full_fine_tuning_trains_every_parameter_and_reduces_loss(base):
  result, _ = base
  losses = [h["loss"] for h in result.train_history]
  assert len(losses) == 30
  assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
  assert result.frozen == {}  # the selector '.*' leaves nothing frozen
  assert "token_embedder" in result.state.params and "decoder" in result.state.params


def test_a_run_step_folder_is_a_base_like_its_params_item(base):
  """INITIAL_CHECKPOINT_PATH may name the step folder itself; the importer reads its items."""
  _, params_dir = base
  step_dir = os.path.dirname(params_dir)
  entries = checkpoint_import.open_checkpoint(params_dir).entries()
  abstract = {}
  for name, info in entries.items():
    node = abstract
    *parents, leaf = name.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = jax.ShapeDtypeStruct(info.shape, info.dtype)
  record = trainer.base_checkpoint_record(trainer.RestoreConfig(path=step_dir, format="t5x"))
  assert record.format == "orbax"  # our own step folders are orbax whatever the binding says
  from_step = trainer.import_base(restore=trainer.RestoreConfig(path=step_dir),
                                  abstract_params=abstract, shardings=None)
  from_item = trainer.import_base(restore=trainer.RestoreConfig(path=params_dir),
                                  abstract_params=abstract, shardings=None)
  assert len(from_step) == len(entries) > 10
  for name, value in from_item.items():
    np.testing.assert_array_equal(np.asarray(from_step[name]), np.asarray(value))


def test_prompt_tuning_leaves_every_frozen_parameter_bit_identical(base, prompt_run):
  result, _ = prompt_run
  restored_base = flat({k: v for k, v in checkpoint_import.import_checkpoint(
      base[1], abstract_params=result.frozen).items()})
  frozen = flat(result.frozen)
  assert set(frozen) == set(restored_base) and len(frozen) > 20
  for name, value in frozen.items():
    assert value.dtype == restored_base[name].dtype
    assert np.array_equal(value, restored_base[name]), name
  assert set(flat(result.state.params)) == {"input_hook/prompt"}


def test_prompt_tuning_trains_the_prompt(prompt_run):
  # (That the loss falls clearly is asserted with more steps in tests/test_smoke.py.)
  result, model_dir = prompt_run
  assert [h["step"] for h in result.train_history] == list(range(1, 13))
  first = np.load(os.path.join(model_dir, "numpy_checkpoints", "checkpoint_6",
                               "input_hook.prompt.npy"))
  last = np.load(os.path.join(model_dir, "numpy_checkpoints", "checkpoint_12",
                              "input_hook.prompt.npy"))
  assert first.shape == (8, 4) and np.abs(last - first).max() > 1e-3
  np.testing.assert_array_equal(last, np.asarray(result.state.params["input_hook"]["prompt"]))


def test_every_saved_prompt_is_exported_as_npy_and_peft_adapter(prompt_run):
  result, model_dir = prompt_run
  with checkpoints.CheckpointManager(directory=result.checkpoint_dir, read_only=True) as ckpt:
    assert ckpt.all_steps() == [6, 12]
    run = ckpt.run_record(step=12)
  assert run["contents"] == "trainable"
  assert run["run_metadata"]["trainable_patterns"] == ["^input_hook/"]
  groups = {g["name"]: g for g in run["run_metadata"]["param_groups"]}
  assert groups["prompt"]["trainable"] and groups["prompt"]["export"] == "prompt"
  assert not groups["model"]["trainable"] and groups["model"]["pattern"] is None
  assert run["base_checkpoint"]["format"] == "orbax"
  for step in (6, 12):
    npy = np.load(os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}",
                               "input_hook.prompt.npy"))
    adapter = export.load_peft_prompt(
        directory=os.path.join(model_dir, "peft_adapters", f"checkpoint_{step}"))
    np.testing.assert_array_equal(adapter, npy)
  with open(os.path.join(model_dir, "peft_adapters", "checkpoint_12", "adapter_config.json")) as f:
    config = json.load(f)
  assert config["num_virtual_tokens"] == 8 and config["token_dim"] == 4
  assert config["task_type"] == "SEQ_2_SEQ_LM" and config["num_layers"] == 2


def test_operative_config_and_metrics_are_written(prompt_run):
  _, model_dir = prompt_run
  config = (model_dir / "config.gin").read_text()
  assert "train.total_steps = %TRAIN_STEPS" in config and "TRAIN_STEPS = 12" in config
  assert "Prompt.length = %PROMPT_LENGTH" in config
  records = reporting.read_jsonl(os.path.join(model_dir, "metrics", "train.jsonl"))
  assert [r["step"] for r in records] == list(range(1, 13))
  for key in ("loss", "accuracy", "learning_rate", "steps_per_sec", "examples_per_sec"):
    assert key in records[-1]
  assert records[-1]["learning_rate"] == pytest.approx(0.3)
  assert records[-1]["examples_per_sec"] == pytest.approx(8 * records[-1]["steps_per_sec"])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  events = os.listdir(os.path.join(model_dir, "summaries", "train"))
  tags = {}
  for event in tf.compat.v1.train.summary_iterator(
      os.path.join(model_dir, "summaries", "train", events[0])):
    for value in event.summary.value:
      tags.setdefault(value.tag, []).append(
          (event.step, float(tf.make_ndarray(value.tensor))))
  assert [step for step, _ in tags["loss"]] == list(range(1, 13))
  assert tags["loss"][-1][1] == pytest.approx(records[-1]["loss"], rel=1e-6)
  assert tags["loss"][0][1] == pytest.approx(records[0]["loss"], rel=1e-6)


def test_resuming_on_a_different_base_is_refused(base, prompt_run, tmp_path):
  _, model_dir = prompt_run
  other = tmp_path / "other_base"
  other.mkdir()
  with pytest.raises(ValueError, match="were trained on the base .* not on"):
    train_lib.main(prompt_args(model_dir, str(other), 12))


def nan_after(count: int = 4) -> optax.GradientTransformation:
  """Adam whose updates turn NaN from update number `count` on (a gin-bound test optimizer)."""
  def init(params):
    del params
    return jnp.zeros((), jnp.int32)

  def update(updates, state, params=None):
    del params
    scale = jnp.where(state >= count - 1, jnp.nan, 1.0)
    return jax.tree.map(lambda u: u * scale, updates), state + 1

  return optax.chain(optax.adam(1e-3), optax.GradientTransformation(init, update))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(base, tmp_path):
  try:
    gin.external_configurable(nan_after, module="test")
  except ValueError:
    pass  # registered by an earlier run of this test in the same process
  with pytest.raises(trainer.NonFiniteLossError) as error:
    train_lib.main(prompt_args(tmp_path, base[1], 8, CHECKPOINT_PERIOD="2",
                               **{"train.optimizer": "@test.nan_after()"}))
  message = str(error.value).splitlines()[0]
  assert message == (f"Training stopped: the trained parameters became NaN or infinite at step "
                     f"4, and the last good checkpoint (step 2) in {tmp_path}/checkpoints was "
                     "kept.")
  with checkpoints.CheckpointManager(directory=tmp_path / "checkpoints", read_only=True) as ckpt:
    assert ckpt.all_steps() == [2]
  prompt = np.load(tmp_path / "numpy_checkpoints" / "checkpoint_2" / "input_hook.prompt.npy")
  assert np.all(np.isfinite(prompt))
  assert not (tmp_path / "numpy_checkpoints" / "checkpoint_4").exists()


def test_guard_reports_the_first_step_with_a_nan_loss():
  guard = trainer.NonFiniteGuard("/runs/x/checkpoints")
  for step, loss in enumerate([1.0, 0.5, float("nan"), 0.4, float("inf")], start=1):
    guard.update(jnp.asarray(loss), step)
  with pytest.raises(trainer.NonFiniteLossError, match="loss became NaN or infinite at step 3, "
                     "and no checkpoint was written"):
    guard.check(None)


def test_decoder_only_prompt_tuning_runs_through_the_same_trainer(tmp_path):
  result = train_lib.main(gin_args(
      ["gin/models/decoder_only_tiny.gin", "gin/prompts/random_uniform.gin",
       "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"],
      {"MODEL_DIR": repr(str(tmp_path)), "INITIAL_CHECKPOINT_PATH": "None",
       "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": "20",
       "CHECKPOINT_PERIOD": "20", "train.log_period": "1", "train.infer_eval_examples": "32",
       "validation/data.DatasetConfig.batch_size": "16",
       "network.get_config.num_decoder_layers": "1"}))  # one layer: less to compile
  losses = [h["loss"] for h in result.train_history]
  assert np.mean(losses[-5:]) < np.mean(losses[:5])
  # Predictions (prefill with the prompt, then cached decoding) feed the SeqIO metric.
  assert result.eval_history[-1]["step"] == 20
  assert 0.0 <= result.eval_history[-1]["smoke_last_digit/accuracy"] <= 100.0
  with open(tmp_path / "peft_adapters" / "checkpoint_20" / "adapter_config.json") as f:
    assert json.load(f)["task_type"] == "CAUSAL_LM"
  # No base checkpoint: the (randomly initialised) frozen parameters are saved with the step.
  with checkpoints.CheckpointManager(directory=result.checkpoint_dir, read_only=True) as ckpt:
    assert ckpt.run_record()["contents"] == "full"
  assert "decoder/logits_dense/kernel" not in flat(result.state.params)


def test_a_prompt_table_is_exported_one_npy_per_prompt(tmp_path):
  table = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  written = trainer.export_prompts(
      trainable={"input_hook": {"prompt_table": table}, "other": {"w": np.ones((3, 4))}},
      step=7, model_dir=str(tmp_path), model=None, base_path=None, is_primary=True)
  folder = tmp_path / "numpy_checkpoints" / "checkpoint_7"
  assert written == [str(folder / "input_hook.prompt_table.0.npy"),
                     str(folder / "input_hook.prompt_table.1.npy")]
  for k in range(2):
    np.testing.assert_array_equal(np.load(written[k]), table[k])
  assert not (tmp_path / "peft_adapters").exists()  # PEFT holds one [P, H] prompt only
  assert trainer.export_prompts(trainable={"input_hook": {"prompt_table": table}}, step=8,
                                model_dir=str(tmp_path), model=None, base_path=None,
                                is_primary=False) == []
