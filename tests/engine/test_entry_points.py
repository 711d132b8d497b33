"""The train / eval / infer entry points: flags, gin errors, kill-and-resume, eval and infer.

The kill test runs `python -m prompt_tuning.train` as a subprocess, SIGKILLs it at a random
step, resumes it, and compares the final prompt with an uninterrupted run's.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import infer as infer_lib
from prompt_tuning import train as train_lib
from prompt_tuning.engine import checkpoints, gin_utils, reporting

REPO = Path(__file__).resolve().parents[2]
# A real T5X checkpoint (legacy msgpack + zarr) of T5 1.1 tiny: width 4, 2+2 layers.
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
STEPS = 60


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
  """Identical programs compiled by several runs (and the subprocess) are compiled once."""
  cache = tmp_path_factory.getbasetemp() / "jax_compilation_cache"
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return cache


def gin_args(files, bindings):
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def prompt_args(model_dir, **bindings):
  """Prompt tuning of the frozen T5X tiny checkpoint on the generated last-digit task."""
  return gin_args(
      ["gin/models/t5_1_1_tiny.gin", "gin/prompts/random_uniform.gin",
       "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"],
      {"MODEL_DIR": repr(str(model_dir)), "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)),
       "MIXTURE_OR_TASK_NAME": "'smoke_last_digit'", "TRAIN_STEPS": str(STEPS),
       "BATCH_SIZE": "8", "CHECKPOINT_PERIOD": "5", "train.log_period": "1",
       "train.infer_eval_dataset_cfg": "None", **bindings})


def eval_bindings(checkpoint_dir):
  return {"CHECKPOINT_DIR": repr(str(checkpoint_dir)),
          "MIXTURE_OR_TASK_NAME": "'smoke_last_digit_scored'",
          "TASK_MODULE": "'prompt_tuning.smoke_data.tasks'",
          "TASK_FEATURE_LENGTHS": "{'inputs': 16, 'targets': 4}", "BATCH_SIZE": "16",
          "PROMPT_LENGTH": "8"}


# ------------------------------------------------------------------------------------------------
# Flags and gin errors: one sentence naming the problem, before any model is built.


@pytest.mark.parametrize("extra, message", [
    (["--gin.train.total_steps"],
     "Gin flag '--gin.train.total_steps' is malformed; expected --gin.NAME=VALUE."),
    (["--gin_file=gin/runs/no_such_run.gin"],
     "Gin file 'gin/runs/no_such_run.gin' was not found in the search paths"),
    (["--gin.prompts.Prompt.lenght=3"],
     "Gin binding 'prompts.Prompt.lenght=3' is invalid: Configurable 'prompts.Prompt' doesn't "
     "have a parameter named 'lenght'."),
    (["--gin.TRAIN_STEPS=[1"], "Gin binding 'TRAIN_STEPS=[1' is invalid"),
    (["--gin.=3"], "Gin binding '=3' is malformed; expected NAME=VALUE."),
    (["--gin.MIXTURE_OR_TASK_NAME='no_such_task'"],
     "Unknown SeqIO task or mixture 'no_such_task'"),
])
def test_bad_flags_and_bindings_stop_with_one_sentence(tmp_path, extra, message):
  args = prompt_args(tmp_path / "run") + extra
  with pytest.raises(ValueError) as error:
    train_lib.main(args)
  assert message in str(error.value)
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_unset_required_macro_is_named(tmp_path):
  args = [a for a in prompt_args(tmp_path) if not a.startswith("--gin.MODEL_DIR=")]
  with pytest.raises(ValueError, match="Gin macro MODEL_DIR is required but not set; add "
                     "--gin.MODEL_DIR=VALUE"):
    train_lib.main(args)


def test_console_prints_the_sentence_and_exits_1(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train_lib.console_main(prompt_args(tmp_path) + ["--gin_file=nope.gin"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("Error: Gin file 'nope.gin' was not found") and "\n" not in err


def test_gin_search_paths_resolve_files_and_includes(tmp_path):
  experiment = tmp_path / "exp"
  experiment.mkdir()
  (experiment / "my_run.gin").write_text(
      "include 'gin/models/byte_t5_tiny.gin'\nPROMPT_LENGTH = 5\n")
  flags = gin_utils.parse_flags(
      [f"--gin_search_paths={experiment},{REPO}", "--gin_file=my_run.gin",
       "--gin.DROPOUT_RATE=0.25"], prog="t", description="t")
  gin_utils.register_configurables()
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_utils.parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings,
                        gin_search_paths=flags.gin_search_paths)
    assert gin.query_parameter("network.get_config.emb_dim") == 64
    assert gin.query_parameter("%PROMPT_LENGTH") == 5
    assert gin.query_parameter("%DROPOUT_RATE") == 0.25
  finally:
    gin.clear_config()


# ------------------------------------------------------------------------------------------------
# Kill at a random step, resume, compare; then eval and infer on the result.


def _kill_at_random_step(model_dir, env):
  kill_step = random.Random(os.getpid()).randint(12, 30)
  process = subprocess.Popen(
      [sys.executable, "-m", "prompt_tuning.train", *prompt_args(model_dir)],
      cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  metrics = Path(model_dir) / "metrics" / "train.jsonl"
  deadline = time.time() + 300
  seen = 0
  while time.time() < deadline and process.poll() is None:
    if metrics.exists():
      seen = max([0] + [r["step"] for r in reporting.read_jsonl(str(metrics))])
      if seen >= kill_step:
        process.send_signal(signal.SIGKILL)
        break
    time.sleep(0.02)
  process.wait(timeout=60)
  stderr = process.stderr.read().decode()[-2000:]
  assert process.returncode == -signal.SIGKILL, f"the run was not killed mid-way: {stderr}"
  return seen


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, compilation_cache):
  root = tmp_path_factory.mktemp("kill")
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(compilation_cache),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
  killed_at = _kill_at_random_step(root / "resumed", env)
  with checkpoints.CheckpointManager(directory=root / "resumed" / "checkpoints",
                                     read_only=True) as ckpt:
    last_saved = ckpt.latest_step()
  resumed = train_lib.main(prompt_args(root / "resumed"))
  straight = train_lib.main(prompt_args(
      root / "straight", **{"train.infer_eval_dataset_cfg": "@validation/data.DatasetConfig()",
                            "train.infer_eval_examples": "64",
                            "validation/data.DatasetConfig.mixture_or_task_name":
                                "'smoke_last_digit_scored'",
                            "validation/data.DatasetConfig.batch_size": "16",
                            # Keep the 2 latest checkpoints and the best one by the metric.
                            "CHECKPOINT_PERIOD": "10",
                            "trainer.CheckpointConfig.keep": "2",
                            "trainer.CheckpointConfig.keep_best": "1",
                            "trainer.CheckpointConfig.best_metric":
                                "'smoke_last_digit_scored/target_log_likelihood'",
                            "trainer.CheckpointConfig.best_mode": "'max'",
                            "trainer.CheckpointConfig.async_save": "False"}))
  return dict(root=root, killed_at=killed_at, last_saved=last_saved, resumed=resumed,
              straight=straight)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_prompt_as_an_uninterrupted_run(killed_and_resumed):
  run = killed_and_resumed
  assert run["last_saved"] is not None and run["last_saved"] < STEPS
  assert run["last_saved"] <= run["killed_at"]
  resumed, straight = run["resumed"], run["straight"]
  assert resumed.train_history[0]["step"] == run["last_saved"] + 1
  assert resumed.step == straight.step == STEPS
  np.testing.assert_array_equal(np.asarray(resumed.state.params["input_hook"]["prompt"]),
                                np.asarray(straight.state.params["input_hook"]["prompt"]))
  np.testing.assert_allclose([h["loss"] for h in resumed.train_history],
                             [h["loss"] for h in straight.train_history][run["last_saved"]:],
                             rtol=1e-6)
  # Small checkpoints: the trained prompt, plus where the frozen base is.
  with checkpoints.CheckpointManager(directory=resumed.checkpoint_dir, read_only=True) as ckpt:
    record = ckpt.run_record()
  assert record["contents"] == "trainable"
  assert record["base_checkpoint"] == {"path": str(T5X_TINY), "format": "t5x"}


SCORED = "smoke_last_digit_scored/target_log_likelihood"


def training_time_metric(run):
  during_training = run["straight"].eval_history[-1]
  assert during_training["step"] == STEPS
  return during_training[SCORED]


@pytest.mark.slow
def test_eval_entry_point_reproduces_the_training_time_metric(killed_and_resumed, tmp_path):
  run = killed_and_resumed
  metrics = eval_lib.main(gin_args(
      ["gin/models/t5_1_1_tiny.gin", "gin/prompts/prompt.gin", "gin/runs/eval.gin"],
      {**eval_bindings(run["root"] / "resumed"), "EVAL_OUTPUT_DIR": repr(str(tmp_path)),
       "evaluate.num_examples": "64"}))
  # The resumed run's checkpoint scores the held-out targets exactly as the uninterrupted run
  # did during training (a log-likelihood, so any wrongly restored parameter would show).
  assert metrics[SCORED] == pytest.approx(training_time_metric(run), rel=1e-6)
  assert metrics[SCORED] < 0
  records = reporting.read_jsonl(str(tmp_path / "metrics" / "infer_eval.jsonl"))
  assert records == [{"step": STEPS, SCORED: metrics[SCORED]}]
  assert "evaluate.checkpoint_dir = %CHECKPOINT_DIR" in (tmp_path / "config.gin").read_text()
  logged = reporting.read_jsonl(str(
      tmp_path / "inference_eval" / f"smoke_last_digit_scored-validation-step_{STEPS}.jsonl"))
  assert len(logged) == 64 and logged[0]["input"]["inputs_pretokenized"] == "2124840"


@pytest.mark.slow
def test_infer_entry_point_writes_predictions_and_scores(killed_and_resumed, tmp_path):
  from prompt_tuning.smoke_data import tasks  # pylint: disable=g-import-not-at-top
  run = killed_and_resumed
  files = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/prompt.gin", "gin/runs/infer.gin"]
  common = {**eval_bindings(run["root"] / "resumed"), "infer.num_examples": "64"}
  [predicted] = infer_lib.main(gin_args(files, {**common, "INFER_OUTPUT_DIR":
                                                repr(str(tmp_path / "p"))}))
  [scored] = infer_lib.main(gin_args(files, {**common, "INFER_MODE": "'score'",
                                             "INFER_OUTPUT_DIR": repr(str(tmp_path / "s"))}))
  assert predicted.endswith(f"smoke_last_digit_scored-validation-step_{STEPS}.jsonl")
  predictions = [json.loads(line) for line in open(predicted)]
  scores = [json.loads(line) for line in open(scored)]
  truth = tasks.generate(split="validation", instructed=False)
  assert [p["inputs"] for p in predictions] == truth["inputs"][:64]
  assert [p["index"] for p in predictions] == list(range(64))
  assert all(isinstance(p["prediction"], str) and len(p["tokens"]) <= 4 for p in predictions)
  assert [s["inputs"] for s in scores] == truth["inputs"][:64]
  assert np.mean([s["score"] for s in scores]) == pytest.approx(training_time_metric(run),
                                                                 rel=1e-5)


@pytest.mark.slow
def test_an_exported_npy_prompt_evaluates_like_the_checkpoint(killed_and_resumed, tmp_path):
  run = killed_and_resumed
  npy = run["root"] / "resumed" / "numpy_checkpoints" / f"checkpoint_{STEPS}" / "input_hook.prompt.npy"
  metrics = eval_lib.main(gin_args(
      ["gin/models/t5_1_1_tiny.gin", "gin/prompts/from_file.gin", "gin/runs/eval.gin"],
      {**eval_bindings(run["root"] / "resumed"), "CHECKPOINT_DIR": "None",
       "INITIAL_CHECKPOINT_PATH": repr(str(T5X_TINY)), "PROMPT_FILE": repr(str(npy)),
       "EVAL_OUTPUT_DIR": repr(str(tmp_path)), "evaluate.num_examples": "64"}))
  assert metrics[SCORED] == pytest.approx(training_time_metric(run), rel=1e-6)


@pytest.mark.slow
def test_keep_latest_and_keep_best_by_the_eval_metric(killed_and_resumed):
  straight = killed_and_resumed["straight"]
  # best_metric makes every checkpoint step an eval step.
  evals = {h["step"]: h[SCORED] for h in straight.eval_history}
  assert sorted(evals) == list(range(10, STEPS + 1, 10))
  best = max(evals, key=evals.get)
  with checkpoints.CheckpointManager(directory=straight.checkpoint_dir, read_only=True) as ckpt:
    kept = ckpt.all_steps()
  assert kept == sorted({best, STEPS - 10, STEPS})
