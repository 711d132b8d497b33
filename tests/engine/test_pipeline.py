"""Pipelines: plans, references, errors, dry runs, skip-finished, subsets, resume after a crash.

The fast tests run the real pipeline command against a fake entry point (a small script that
trains a deterministic scalar "parameter" with checkpoints, and resumes like the real train
entry point) and registered Python steps. One slow test runs a two-stage pipeline of the real
train entry point on the tiny byte-level model, kills it during the second stage, runs it
again, and compares the result with an uninterrupted pipeline's.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.pipelines import outputs, placeholders, runner, stages

REPO = Path(__file__).resolve().parents[2]

# A stand-in for `python -m prompt_tuning.<entry>`: argv[1] is the kind. "train" makes steps
# 1..TRAIN_STEPS of `value = 1.5 * value + step` (value 0 at step 0), saving every step as
# checkpoints/<step>/{value.json, commit_success.txt} and a [2, 3] prompt .npy; it resumes
# from the latest complete step and exits 3 before step $FAKE_CRASH_AT. "eval" reads
# CHECKPOINT_DIR's latest value and writes metrics and one predictions file.
FAKE_ENTRY = '''
import ast, json, os, sys
import numpy as np
kind, args = sys.argv[1], sys.argv[2:]
bindings = dict(a[len("--gin."):].split("=", 1) for a in args if a.startswith("--gin."))
files = [a[len("--gin_file="):] for a in args if a.startswith("--gin_file=")]
out = ast.literal_eval(bindings[{"train": "train.model_dir", "eval": "evaluate.output_dir",
                                 "infer": "infer.output_dir"}[kind]])
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "invocations.jsonl"), "a") as f:
  f.write(json.dumps({"args": args}) + "\\n")
with open(os.path.join(out, "config.gin"), "w") as f:
  f.write("\\n".join(files + [k + " = " + v for k, v in bindings.items()]) + "\\n")

def latest(model_dir):
  folder = os.path.join(model_dir, "checkpoints")
  steps = [int(s) for s in os.listdir(folder)
           if os.path.isfile(os.path.join(folder, s, "commit_success.txt"))] \\
      if os.path.isdir(folder) else []
  if not steps:
    return 0, 0.0
  with open(os.path.join(folder, str(max(steps)), "value.json")) as f:
    return max(steps), json.load(f)

if kind == "train":
  step, value = latest(out)
  crash_at = int(os.environ.get("FAKE_CRASH_AT", "0"))
  for step in range(step + 1, int(bindings.get("TRAIN_STEPS", "4")) + 1):
    if step == crash_at:
      sys.exit(3)
    value = 1.5 * value + step
    folder = os.path.join(out, "checkpoints", str(step))
    os.makedirs(folder)
    with open(os.path.join(folder, "value.json"), "w") as f:
      json.dump(value, f)
    exports = os.path.join(out, "numpy_checkpoints", "checkpoint_%d" % step)
    os.makedirs(exports)
    np.save(os.path.join(exports, "input_hook.prompt.npy"), np.full((2, 3), value))
    open(os.path.join(folder, "commit_success.txt"), "w").close()
else:
  step, value = latest(ast.literal_eval(bindings["CHECKPOINT_DIR"]))
  os.makedirs(os.path.join(out, "metrics"))
  with open(os.path.join(out, "metrics", "infer_eval.jsonl"), "w") as f:
    f.write(json.dumps({"step": step, "task/value": value}) + "\\n")
  os.makedirs(os.path.join(out, "inference_eval"))
  with open(os.path.join(out, "inference_eval", "task-%d.jsonl" % step), "w") as f:
    f.write(json.dumps({"prediction": str(value)}) + "\\n")
'''


def fake_value(steps):
  value = 0.0
  for step in range(1, steps + 1):
    value = 1.5 * value + step
  return value


@pytest.fixture
def commands(tmp_path):
  script = tmp_path / "fake_entry.py"
  script.write_text(FAKE_ENTRY)
  return {kind: [sys.executable, str(script), kind] for kind in ("train", "eval", "infer")}


@stages.pipeline_step("scale_prompt", outputs=("scaled", "norm"))
def scale_prompt(*, stage_dir, prompt, factor, step):
  """A Python step: reads a train stage's prompt, writes a scaled copy into its own folder."""
  scaled = np.load(prompt) * factor
  path = os.path.join(stage_dir, "scaled.npy")
  np.save(path, scaled)
  assert step[0] == 4 and step[1] == 1  # a tuple of the train stage's step (an int) and 1
  return {"scaled": path, "norm": float(np.linalg.norm(scaled))}


@stages.pipeline_step("records_step", outputs=("step_type", "step"))
def records_step(*, stage_dir, step):
  return {"step_type": type(step).__name__, "step": step}


@stages.pipeline_step("bad_return", outputs=("path",))
def bad_return(*, stage_dir):
  return {"paths": stage_dir}


TWO_STAGES = """
pipeline.stages = [@a/Stage(), @b/Stage()]
a/Stage.name = 'a'
a/Stage.kind = 'train'
a/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/runs/finetune.gin']
a/Stage.bindings = {'TRAIN_STEPS': %STEPS_A, 'TASK_FEATURE_LENGTHS': {'inputs': 16}}
b/Stage.name = 'b'
b/Stage.kind = 'train'
b/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/runs/prompt_tuning.gin']
b/Stage.bindings = {'TRAIN_STEPS': 5, 'INITIAL_CHECKPOINT_PATH': "'{a.checkpoint}'",
                    'prompt_init.from_npy.path': "'{a.prompt}'"}
STEPS_A = 4
"""


def write_pipeline(tmp_path, text, name="pipeline.gin"):
  path = tmp_path / name
  path.write_text(textwrap.dedent(text))
  return path


def run(tmp_path, commands, text, *extra, name="pipeline.gin"):
  lines = []
  path = write_pipeline(tmp_path, text, name)
  result = pipeline_lib.main([f"--gin_file={path}", f"--pipeline_dir={tmp_path / 'pipe'}",
                              *extra], commands=commands, say=lines.append)
  return result, "\n".join(lines)


def invocations(folder):
  path = Path(folder) / "invocations.jsonl"
  return [json.loads(line)["args"] for line in path.read_text().splitlines()] \
      if path.exists() else []


# ------------------------------------------------------------------------------------------------
# References and plans.


def test_references_are_found_and_filled_but_gin_dicts_are_left_alone():
  value = {"a": "'{s1.checkpoint}'", "b": ["x{s2.prompt}y", 3], "c": "{'inputs': 16}"}
  assert placeholders.references(value) == [("s1", "checkpoint"), ("s2", "prompt")]
  lookup = {("s1", "checkpoint"): "/p/s1/checkpoints/7", ("s2", "prompt"): "/p.npy",
            ("s1", "step"): 7}
  filled = placeholders.substitute(value, lambda s, o: lookup[(s, o)], textual=True)
  assert filled == {"a": "'/p/s1/checkpoints/7'", "b": ["x/p.npyy", 3], "c": "{'inputs': 16}"}
  # A Python input that is exactly one reference keeps the output's own type.
  get = lambda s, o: lookup[(s, o)]  # noqa: E731
  assert placeholders.substitute("{s1.step}", get, textual=False) == 7
  assert placeholders.substitute("{s1.step}", get, textual=True) == "7"
  assert placeholders.substitute("step {s1.step}", get, textual=False) == "step 7"


def test_two_train_stages_chain_checkpoint_and_prompt(tmp_path, commands):
  result, said = run(tmp_path, commands, TWO_STAGES)
  pipe = tmp_path / "pipe"
  a, b = result["a"], result["b"]
  assert a["checkpoint"] == str(pipe / "a" / "checkpoints" / "4") and a["step"] == 4
  assert a["prompt"] == str(pipe / "a" / "numpy_checkpoints" / "checkpoint_4" /
                            "input_hook.prompt.npy")
  assert a["model_dir"] == a["dir"] == str(pipe / "a")
  assert b["step"] == 5 and b["checkpoint"] == str(pipe / "b" / "checkpoints" / "5")
  [args] = invocations(pipe / "b")
  assert args == [
      "--gin_file=gin/models/byte_t5_tiny.gin", "--gin_file=gin/runs/prompt_tuning.gin",
      "--gin.TRAIN_STEPS=5", f"--gin.INITIAL_CHECKPOINT_PATH='{a['checkpoint']}'",
      f"--gin.prompt_init.from_npy.path='{a['prompt']}'",
      f"--gin.MODEL_DIR='{pipe / 'b'}'", f"--gin.train.model_dir='{pipe / 'b'}'"]
  # Non-string values (a macro, a dict) are written as gin literals.
  [args_a] = invocations(pipe / "a")
  assert "--gin.TRAIN_STEPS=4" in args_a and "--gin.TASK_FEATURE_LENGTHS={'inputs': 16}" in args_a
  record = json.loads((pipe / "b" / runner.RECORD_FILE).read_text())
  assert record["outputs"] == b and record["settings"]["args"] == args
  assert "pipeline.stages = [@a/Stage(), @b/Stage()]" in (pipe / "pipeline.gin").read_text()
  assert said.count("finished.") == 2


def test_command_line_bindings_override_the_pipeline_file(tmp_path, commands):
  result, _ = run(tmp_path, commands, TWO_STAGES, "--gin.STEPS_A=2")
  assert result["a"]["step"] == 2
  assert json.loads(Path(result["a"]["dir"], "checkpoints", "2", "value.json").read_text()) == \
      fake_value(2)


def test_python_steps_get_typed_inputs_and_their_outputs_feed_later_stages(tmp_path, commands):
  text = TWO_STAGES + """
pipeline.stages = [@a/Stage(), @scale/Stage(), @check/Stage()]
scale/Stage.name = 'scale'
scale/Stage.kind = 'scale_prompt'
scale/Stage.inputs = {'prompt': '{a.prompt}', 'factor': 2.0, 'step': ('{a.step}', 1)}
check/Stage.name = 'check'
check/Stage.kind = 'records_step'
check/Stage.inputs = {'step': '{a.step}'}
"""
  result, _ = run(tmp_path, commands, text)
  scaled = np.load(result["scale"]["scaled"])
  np.testing.assert_array_equal(scaled, np.full((2, 3), 2 * fake_value(4)))
  assert result["scale"]["norm"] == pytest.approx(np.sqrt(6) * 2 * fake_value(4))
  assert result["scale"]["dir"] == str(tmp_path / "pipe" / "scale")
  assert result["check"]["step_type"] == "int" and result["check"]["step"] == 4
  # Inputs as the record keeps them (a tuple as a list): a re-run skips every stage.
  again, said = run(tmp_path, commands, text)
  assert again == result and said.count("finished earlier, skipped.") == 3


def test_a_step_returning_other_outputs_than_declared_stops(tmp_path, commands):
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, """
pipeline.stages = [@x/Stage()]
x/Stage.name = 'x'
x/Stage.kind = 'bad_return'
""")
  assert str(error.value) == ("Step 'bad_return' of stage 'x' returned ['paths'], not a dict of "
                              "its declared outputs ['path'].")
  assert not (tmp_path / "pipe" / "x" / runner.RECORD_FILE).exists()


# ------------------------------------------------------------------------------------------------
# Bad pipelines: one sentence, before anything runs.

ONE = """
pipeline.stages = [@a/Stage()]
a/Stage.name = 'a'
a/Stage.kind = 'train'
a/Stage.gin_files = ['m.gin']
"""


BAD_PIPELINE_IDS = ["unknown_stage", "unknown_output", "duplicate_name", "cycle", "later_stage",
                    "own_output", "unknown_kind", "binds_stage_folder", "no_gin_files",
                    "gin_flag", "unknown_input", "missing_input", "bad_name", "no_stages",
                    "step_module"]


@pytest.mark.parametrize("text, message", ids=BAD_PIPELINE_IDS, argvalues=[
    (TWO_STAGES.replace("{a.checkpoint}", "{c.checkpoint}"),
     "Stage 'b' names {c.checkpoint}, but the pipeline has no stage 'c' (stages: a, b)."),
    (TWO_STAGES.replace("{a.checkpoint}", "{a.chekpoint}"),
     "Stage 'b' names {a.chekpoint}, but no earlier stage makes it: a train stage makes dir, "
     "model_dir, checkpoint, step, prompt, prompts, peft_adapter, metrics, config."),
    (TWO_STAGES.replace("b/Stage.name = 'b'", "b/Stage.name = 'a'"),
     "Stage name 'a' is used twice; stage names must be unique."),
    (TWO_STAGES + "a/Stage.bindings = {'X': \"'{b.checkpoint}'\"}",
     "Stages a -> b -> a read each other's outputs in a cycle, so no order can run them."),
    (TWO_STAGES + "pipeline.stages = [@b/Stage(), @a/Stage()]",
     "Stage 'b' names {a.checkpoint}, but stage 'a' runs after it; list 'a' first."),
    (TWO_STAGES + "a/Stage.bindings = {'X': \"'{a.checkpoint}'\"}",
     "Stage 'a' names its own output {a.checkpoint}; a stage reads only earlier stages' "
     "outputs."),
    (ONE + "a/Stage.kind = 'trian'",
     "Stage 'a' has unknown kind 'trian'; expected one of train, eval, infer,"),
    (ONE + "a/Stage.bindings = {'MODEL_DIR': \"'/elsewhere'\"}",
     "Stage 'a' (train) binds MODEL_DIR, which the pipeline sets to the stage folder; remove "
     "that binding."),
    (ONE + "a/Stage.gin_files = []", "Stage 'a' (train) lists no gin_files."),
    (ONE + "a/Stage.flags = ['--gin.X=1']",
     "Stage 'a' (train) has flag '--gin.X=1'; flags start with '--', and gin files and bindings "
     "go in gin_files and bindings."),
    (ONE + "a/Stage.kind = 'scale_prompt'\na/Stage.gin_files = []\n"
           "a/Stage.inputs = {'prompt': 'p', 'factor': 1, 'step': 0, 'scale': 2}",
     "Stage 'a' (scale_prompt) gives input 'scale', which step 'scale_prompt' does not take "
     "(it takes: prompt, factor, step)."),
    (ONE + "a/Stage.kind = 'scale_prompt'\na/Stage.gin_files = []\n"
           "a/Stage.inputs = {'prompt': 'p', 'step': 0}",
     "Stage 'a' (scale_prompt) lacks input 'factor', which step 'scale_prompt' requires."),
    (ONE + "a/Stage.name = 'a-1'",
     "Stage name 'a-1' is not an identifier (letters, digits and underscores, not starting with "
     "a digit)."),
    ("pipeline.stages = []",
     "The pipeline has no stages; bind pipeline.stages = [@name/Stage(), ...]."),
    (ONE + "pipeline.step_modules = ['no_such_module_of_steps']",
     "Step module 'no_such_module_of_steps' could not be imported: No module named "
     "'no_such_module_of_steps'."),
])
def test_bad_pipelines_stop_with_one_sentence_before_anything_runs(tmp_path, commands, text,
                                                                  message):
  with pytest.raises(ValueError) as error:
    run(tmp_path, commands, text)
  assert str(error.value).startswith(message)
  assert len(str(error.value).splitlines()) == 1
  assert not (tmp_path / "pipe").exists()


def test_console_prints_the_sentence_and_exits_1(tmp_path, capsys):
  path = write_pipeline(tmp_path, TWO_STAGES.replace("{a.checkpoint}", "{c.checkpoint}"))
  with pytest.raises(SystemExit) as exit_info:
    pipeline_lib.console_main([f"--gin_file={path}", f"--pipeline_dir={tmp_path / 'pipe'}"])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      "Error: Stage 'b' names {c.checkpoint}, but the pipeline has no stage 'c' (stages: a, "
      "b).\n")


def test_a_missing_pipeline_directory_and_unknown_stages_flag_are_named(tmp_path, commands):
  path = write_pipeline(tmp_path, TWO_STAGES)
  with pytest.raises(stages.PipelineError, match=r"^The pipeline has no directory; pass "
                     r"--pipeline_dir=DIR or bind pipeline.directory.$"):
    pipeline_lib.main([f"--gin_file={path}"], commands=commands)
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, TWO_STAGES, "--stages=b,z")
  assert str(error.value) == ("--stages names 'z', which is not a stage of this pipeline "
                              "(stages: a, b).")


# ------------------------------------------------------------------------------------------------
# Dry run, skip-finished, subsets, resume.


def test_dry_run_prints_resolved_commands_and_runs_nothing(tmp_path, commands):
  _, said = run(tmp_path, commands, TWO_STAGES, "--dry_run", "--host_cpu_devices=2")
  pipe = tmp_path / "pipe"
  assert not pipe.exists()
  assert "[1/2] stage 'a' (train): to run" in said
  assert f"  folder: {pipe / 'a'}" in said
  # Outputs of a stage that has not run show where they will be; <step> is the step reached.
  assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{pipe}/a/checkpoints/<step>'\" \\\n" in said
  assert f"  output {{a.prompt}} = {pipe}/a/numpy_checkpoints/checkpoint_<step>/" \
         "input_hook.prompt.npy" in said
  assert said.count("--host_cpu_devices=2") == 2
  # After stage a has run, the dry run shows its real outputs and that it will be skipped.
  run(tmp_path, commands, TWO_STAGES, "--stages=a")
  _, said = run(tmp_path, commands, TWO_STAGES, "--dry_run")
  assert "[1/2] stage 'a' (train): finished (skipped)" in said
  assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{pipe}/a/checkpoints/4'\" \\\n" in said
  assert invocations(pipe / "b") == []


@pytest.mark.parametrize("arg", [
    "--gin.MODEL_DIR='/tmp/a b'", "--gin.X=@optimizers.adam()", "--gin.X={'inputs': 16}",
    "--gin.X='it\"s'", "--gin.X='$HOME'", "--gin_file=gin/x.gin", "--flag=a b", "--gin.X=3"])
def test_dry_run_command_words_split_back_into_the_same_arguments(arg):
  assert shlex.split(runner.shell_word(arg)) == [arg]


def test_a_rerun_skips_finished_stages_and_refuses_changed_ones(tmp_path, commands):
  first, _ = run(tmp_path, commands, TWO_STAGES)
  record = (tmp_path / "pipe" / "a" / runner.RECORD_FILE).read_text()
  again, said = run(tmp_path, commands, TWO_STAGES)
  assert again == first
  assert said.count("finished earlier, skipped.") == 2
  assert len(invocations(tmp_path / "pipe" / "a")) == len(invocations(tmp_path / "pipe" / "b")) == 1
  assert (tmp_path / "pipe" / "a" / runner.RECORD_FILE).read_text() == record
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, TWO_STAGES, "--gin.STEPS_A=6")
  assert str(error.value) == (
      f"Stage 'a' finished earlier with other settings than the pipeline gives it now (see "
      f"{tmp_path / 'pipe' / 'a' / runner.RECORD_FILE}); delete {tmp_path / 'pipe' / 'a'} to run "
      "it again, or use a new --pipeline_dir.")
  # A stage whose source ran again (its folder deleted) is not silently kept.
  shutil.rmtree(tmp_path / "pipe" / "a")
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, TWO_STAGES)
  assert str(error.value) == (
      "Stage 'b' finished earlier on outputs of stage 'a', which has just run again; delete "
      f"{tmp_path / 'pipe' / 'b'} to run 'b' on the new outputs.")


def test_stages_subset_reads_earlier_outputs_from_their_records(tmp_path, commands):
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, TWO_STAGES, "--stages=b")
  assert str(error.value) == (
      f"Stage 'b' needs {{a.checkpoint}}, but stage 'a' is not in --stages and has not finished "
      f"(no {tmp_path / 'pipe' / 'a' / runner.RECORD_FILE}); run it first or add it to --stages.")
  assert not (tmp_path / "pipe" / "b").exists()
  only_a, _ = run(tmp_path, commands, TWO_STAGES, "--stages=a")
  assert list(only_a) == ["a"] and not (tmp_path / "pipe" / "b").exists()
  only_b, said = run(tmp_path, commands, TWO_STAGES, "--stages=b")
  assert list(only_b) == ["b"] and "[1/1] stage 'b' (train): running" in said
  assert f"--gin.INITIAL_CHECKPOINT_PATH='{only_a['a']['checkpoint']}'" in \
      invocations(tmp_path / "pipe" / "b")[0]
  assert len(invocations(tmp_path / "pipe" / "a")) == 1


def test_a_crashed_train_stage_resumes_to_the_uninterrupted_result(tmp_path, commands,
                                                                  monkeypatch):
  text = TWO_STAGES.replace("'TRAIN_STEPS': 5", "'TRAIN_STEPS': 9")
  monkeypatch.setenv("FAKE_CRASH_AT", "6")
  with pytest.raises(stages.PipelineError) as error:
    run(tmp_path, commands, text)
  pipe = tmp_path / "pipe"
  assert str(error.value) == (f"Stage 'b' (train) failed with exit status 3; {pipe / 'b'} keeps "
                              "what it wrote, and running the pipeline again resumes it.")
  assert outputs.complete_steps(str(pipe / "b")) == [1, 2, 3, 4, 5]
  assert not (pipe / "b" / runner.RECORD_FILE).exists()
  monkeypatch.setenv("FAKE_CRASH_AT", "0")
  _, said = run(tmp_path, commands, text, "--dry_run")
  assert "[2/2] stage 'b' (train): interrupted (resumes from step 5)" in said
  resumed, said = run(tmp_path, commands, text)
  assert "stage 'a' (train): finished earlier, skipped." in said
  assert "stage 'b' (train): resuming in" in said
  assert len(invocations(pipe / "a")) == 1 and len(invocations(pipe / "b")) == 2
  (tmp_path / "straight").mkdir()
  straight, _ = run(tmp_path / "straight", commands, text)
  assert resumed["b"]["step"] == straight["b"]["step"] == 9
  np.testing.assert_array_equal(np.load(resumed["b"]["prompt"]), np.load(straight["b"]["prompt"]))
  assert np.load(resumed["b"]["prompt"])[0, 0] == fake_value(9)


def test_eval_and_infer_outputs_name_their_files(tmp_path, commands):
  result, _ = run(tmp_path, commands, TWO_STAGES + """
pipeline.stages = [@a/Stage(), @e/Stage()]
e/Stage.name = 'e'
e/Stage.kind = 'eval'
e/Stage.gin_files = ['gin/runs/eval.gin']
e/Stage.bindings = {'CHECKPOINT_DIR': "'{a.model_dir}'"}
""")
  pipe = tmp_path / "pipe"
  assert result["e"]["metrics"] == str(pipe / "e" / "metrics" / "infer_eval.jsonl")
  assert result["e"]["predictions"] == str(pipe / "e" / "inference_eval" / "task-4.jsonl")
  assert json.loads(Path(result["e"]["metrics"]).read_text())["task/value"] == fake_value(4)
  assert f"--gin.evaluate.output_dir='{pipe / 'e'}'" in invocations(pipe / "e")[0]


def test_best_step_settings_are_read_from_the_operative_config():
  config = textwrap.dedent("""
      BEST = 'rte/accuracy'
      CheckpointConfig.best_metric = %BEST
      CheckpointConfig.best_mode = 'min'
      trainer.CheckpointConfig.keep_best = 2
  """)
  value = outputs._config_value  # pylint: disable=protected-access
  assert value(config, "best_metric") == "rte/accuracy"
  assert value(config, "best_mode") == "min"
  assert value(config, "keep_best") == 2
  assert value(config, "keep") is None


def test_folder_names_agree_with_the_trainer_and_entry_points():
  # pylint: disable-next=g-import-not-at-top
  from prompt_tuning.engine import checkpoints, evaluation, gin_utils, params, reporting, trainer
  assert outputs.CHECKPOINTS_SUBDIR == trainer.CHECKPOINTS_SUBDIR
  assert outputs.NUMPY_EXPORT_SUBDIR == trainer.NUMPY_EXPORT_SUBDIR
  assert outputs.PEFT_EXPORT_SUBDIR == trainer.PEFT_EXPORT_SUBDIR
  assert outputs.COMMIT_MARKER == checkpoints._COMMIT_MARKER  # pylint: disable=protected-access
  assert outputs.CONFIG_FILE == gin_utils.OPERATIVE_CONFIG_FILE
  assert outputs.INFER_EVAL_METRICS == reporting.INFER_EVAL + ".jsonl"
  assert outputs.EVAL_PREDICTIONS_SUBDIR == evaluation.INFERENCE_LOG_SUBDIR
  # pylint: disable-next=protected-access
  assert outputs.PROMPT_FILE == params.PROMPT_PATH.replace("/", ".") + ".npy"


# ------------------------------------------------------------------------------------------------
# End to end on the tiny byte-level model: base, then a prompt on it, then a Python step.

E2E_STEPS_MODULE = '''
import numpy as np
from prompt_tuning.pipelines.stages import pipeline_step

@pipeline_step("prompt_norm", outputs=("norm",))
def prompt_norm(*, stage_dir, prompt):
  return {"norm": float(np.linalg.norm(np.load(prompt)))}
'''

E2E_PIPELINE = """
pipeline.step_modules = ['e2e_pipeline_steps']
pipeline.stages = [@base/Stage(), @prompt/Stage(), @norm/Stage()]

base/Stage.name = 'base'
base/Stage.kind = 'train'
base/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/runs/finetune.gin',
                        'gin/runs/smoke.gin']
base/Stage.bindings = {
    'INITIAL_CHECKPOINT_PATH': 'None', 'MIXTURE_OR_TASK_NAME': "'smoke_skills'",
    'TRAIN_STEPS': 6, 'CHECKPOINT_PERIOD': 6, 'train.log_period': 6,
    'train.infer_eval_dataset_cfg': 'None',
    'train.optimizer': '@optimizers.adam()', 'optimizers.adam.learning_rate': 3e-3}

prompt/Stage.name = 'prompt'
prompt/Stage.kind = 'train'
prompt/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/prompts/sampled_vocabulary.gin',
                          'gin/runs/prompt_tuning.gin', 'gin/runs/smoke.gin']
prompt/Stage.bindings = {
    'INITIAL_CHECKPOINT_PATH': "'{base.checkpoint}'",
    'MIXTURE_OR_TASK_NAME': "'smoke_last_digit'", 'PROMPT_VOCAB_POPULATION': 260,
    'TRAIN_STEPS': %PROMPT_STEPS, 'CHECKPOINT_PERIOD': 4, 'train.log_period': 1,
    'train.infer_eval_dataset_cfg': 'None'}
PROMPT_STEPS = 12

norm/Stage.name = 'norm'
norm/Stage.kind = 'prompt_norm'
norm/Stage.inputs = {'prompt': '{prompt.prompt}'}
"""


def kill_pipeline_during(stage_folder, step, args, env):
  """Starts the pipeline command; SIGKILLs it (and its runs) once `step` of a stage is saved."""
  process = subprocess.Popen([sys.executable, "-m", "prompt_tuning.pipeline", *args], cwd=REPO,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
  marker = stage_folder / "checkpoints" / str(step) / outputs.COMMIT_MARKER
  deadline = time.time() + 900
  while time.time() < deadline and process.poll() is None and not marker.exists():
    time.sleep(0.05)
  if process.poll() is None:
    os.killpg(process.pid, signal.SIGKILL)
  process.wait(timeout=60)
  stderr = process.stderr.read().decode()[-2000:]
  assert process.returncode == -signal.SIGKILL, f"the pipeline was not killed mid-way: {stderr}"


def _losses(result):
  path = Path(result["prompt"]["metrics"], "train.jsonl")
  return {r["step"]: r["loss"] for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.e2e
def test_a_pipeline_killed_in_its_second_stage_resumes_to_the_uninterrupted_result(
    tmp_path, monkeypatch):
  steps_dir = tmp_path / "steps"
  steps_dir.mkdir()
  (steps_dir / "e2e_pipeline_steps.py").write_text(E2E_STEPS_MODULE)
  monkeypatch.syspath_prepend(str(steps_dir))
  env = {"PYTHONPATH": os.pathsep.join([str(REPO), str(steps_dir)]),
         "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.chdir(REPO)
  gin_file = write_pipeline(tmp_path, E2E_PIPELINE)
  killed = tmp_path / "killed"
  args = [f"--gin_file={gin_file}", f"--pipeline_dir={killed}"]

  kill_pipeline_during(killed / "prompt", 4, args, {**os.environ, **env})
  assert (killed / "base" / runner.RECORD_FILE).exists()
  assert not (killed / "prompt" / runner.RECORD_FILE).exists()
  saved = outputs.complete_steps(str(killed / "prompt"))
  assert 4 in saved and saved[-1] < 12
  base_record = (killed / "base" / runner.RECORD_FILE).read_text()

  lines = []
  resumed = pipeline_lib.main(args, say=lines.append)
  said = "\n".join(lines)
  assert "[1/3] stage 'base' (train): finished earlier, skipped." in said
  assert f"[2/3] stage 'prompt' (train): resuming in {killed / 'prompt'}" in said
  assert (killed / "base" / runner.RECORD_FILE).read_text() == base_record
  straight = pipeline_lib.main([f"--gin_file={gin_file}",
                                f"--pipeline_dir={tmp_path / 'straight'}"], say=lines.append)

  assert resumed["prompt"]["step"] == straight["prompt"]["step"] == 12
  assert resumed["prompt"]["checkpoint"] == str(killed / "prompt" / "checkpoints" / "12")
  prompt = np.load(resumed["prompt"]["prompt"])
  assert prompt.shape == (8, 64)
  np.testing.assert_array_equal(prompt, np.load(straight["prompt"]["prompt"]))
  # The resumed stage trained only the steps the killed one had not saved, to the same losses.
  resumed_losses, straight_losses = _losses(resumed), _losses(straight)
  assert sorted(straight_losses) == list(range(1, 13))
  for step in range(saved[-1] + 1, 13):
    assert resumed_losses[step] == pytest.approx(straight_losses[step], rel=1e-6)
  # Stage 2's frozen base is stage 1's step folder; the Python step read stage 2's prompt.
  config = re.sub(r"\\\n\s*", "", Path(resumed["prompt"]["config"]).read_text())  # gin wraps
  assert f"INITIAL_CHECKPOINT_PATH = '{killed / 'base' / 'checkpoints' / '6'}'" in config
  assert resumed["norm"]["norm"] == pytest.approx(float(np.linalg.norm(prompt)), rel=1e-6)


@pytest.mark.parametrize("config, expected", [
    ("CheckpointConfig.best_metric = 'task/accuracy'\nCheckpointConfig.best_mode = 'max'\n", 2),
    ("CheckpointConfig.best_metric = %BEST\nBEST = 'task/accuracy'\n"
     "CheckpointConfig.best_mode = 'min'\n", 1),
    ("CheckpointConfig.best_metric = None\n", 3),
])
def test_the_checkpoint_output_is_the_best_step_when_the_run_ranks_steps(tmp_path, config,
                                                                          expected):
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import checkpoints, train_state  # pylint: disable=g-import-not-at-top
  state = train_state.create_train_state(
      trainable_params={"input_hook": {"prompt": np.zeros((2, 3), np.float32)}},
      optimizer=optax.adam(0.1), rng=jax.random.PRNGKey(0))
  with checkpoints.CheckpointManager(directory=tmp_path / "checkpoints",
                                     best_metric="task/accuracy", best_mode="max",
                                     async_save=False) as manager:
    for step, accuracy in ((1, 0.2), (2, 0.9), (3, 0.5)):
      manager.save(step=step, state=state, metrics={"task/accuracy": accuracy}, force=True)
  (tmp_path / "config.gin").write_text(config)
  assert outputs.complete_steps(str(tmp_path)) == [1, 2, 3]
  assert outputs.chosen_step(str(tmp_path)) == expected
  assert outputs.read("train", str(tmp_path))["checkpoint"] == \
      str(tmp_path / "checkpoints" / str(expected))


def test_the_documented_pipeline_file_dry_runs(tmp_path):
  readme = (REPO / "gin" / "methods" / "README.md").read_text()
  text = readme.split("```gin\n", 1)[1].split("```", 1)[0]
  lines = []
  path = write_pipeline(tmp_path, text)
  assert pipeline_lib.main([f"--gin_file={path}", f"--pipeline_dir={tmp_path / 'pipe'}",
                            "--gin.BASE_STEPS=7", "--dry_run"], say=lines.append) == {}
  said = "\n".join(lines)
  assert "--gin.TRAIN_STEPS=7 \\\n" in said
  assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{tmp_path}/pipe/base/checkpoints/<step>'\"" in said
  assert not (tmp_path / "pipe").exists()
