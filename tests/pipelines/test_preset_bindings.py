"""Every pipeline under gin/methods passes user-given strings to its runs as gin strings.

A string binding value is gin text, so a path a macro holds (`--gin.LM_CHECKPOINT="'gs://..'"`
parses to the Python string `gs://..`) must be bound through `literal()` to reach the run
quoted. Each pipeline is dry-run with every required macro set to an awkward path (a quote and
a space in it), and every `--gin.NAME=VALUE` of every run is parsed back with gin: each must
parse, and each string in it that holds a given path must hold exactly that path.
"""
import glob
import json
import os
import re
import shlex
import textwrap

import gin
import pytest
from gin import config_parser

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.pipelines import outputs
from prompt_tuning.pipelines import plan as plan_lib
from prompt_tuning.pipelines import runner as runner_lib
from prompt_tuning.pipelines.stages import Literal, PipelineError, Stage, pipeline_step
from tests.pipelines import dry_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GCS = "gs://bucket/ckpt/checkpoint_1100000"
LOCAL = "/ckpts/o'brien run/checkpoint_1100000"  # a quote and a space: repr must escape them
AWKWARD = "gs://bucket/o'brien run"  # each required macro gets <AWKWARD>/<MACRO>
_REQUIRED = re.compile(r"Gin macro (\w+) is required but not set")
_INCLUDE = re.compile(r"^include '([^']+)'", re.M)
_STAGES = re.compile(r"^pipeline\.stages\s*=", re.M)
_DIRECTORY = re.compile(r"^pipeline\.directory\s*=", re.M)
_PREDICTED = re.compile(r"<\w+ of step \w+>")


def _pipelines():
  """Every gin file under gin/methods that lists stages (itself or through its includes), less
  the shared pieces: a file another one includes is a pipeline only if it sets its own
  `pipeline.directory` (the presets' shared stage files leave macros such as MODEL_GIN or a
  list of gin files to the files that include them)."""
  texts = {}
  for found in glob.glob(os.path.join(ROOT, "gin", "methods", "**", "*.gin"), recursive=True):
    with open(found) as f:
      texts[os.path.relpath(found, ROOT)] = f.read()

  def lists_stages(path, seen=()):
    text = texts.get(path) or open(os.path.join(ROOT, path)).read()
    return bool(_STAGES.search(text)) or any(
        lists_stages(child, seen + (path,)) for child in _INCLUDE.findall(text)
        if child not in seen)
  included = {child for text in texts.values() for child in _INCLUDE.findall(text)}
  return sorted(p for p, text in texts.items() if lists_stages(p) and (
      p not in included or _DIRECTORY.search(text)))


PIPELINES = _pipelines()


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def _runner(argv):
  return dry_run.plan(argv)[1]


def _with_required(name, tmp_path, path):
  """The runner of pipeline `name` with each required macro set to `path/<MACRO>`, and those
  values `{macro: value}`."""
  given = {}
  while True:
    argv = [f"--gin_file={name}", f"--pipeline_dir={tmp_path / 'pipe'}"] + [
        f"--gin.{macro}={value!r}" for macro, value in given.items()]
    try:
      return _runner(argv), given, argv
    except (ValueError, PipelineError) as error:  # gin's ConfigError is a ValueError
      missing = _REQUIRED.search(str(error))
      if not missing or missing.group(1) in given:
        raise
      given[missing.group(1)] = f"{path}/{missing.group(1)}"


def _parsed(text):
  """A command-line binding value as gin parses it (configurables need not be registered)."""
  return config_parser.ConfigParser(text, gin.config.ParserDelegate(skip_unknown=True)) \
      .parse_value()


def _strings(value):
  if isinstance(value, str):
    yield value
  elif isinstance(value, (list, tuple)):
    for item in value:
      yield from _strings(item)
  elif isinstance(value, dict):
    for key, item in value.items():
      yield from _strings(key)
      yield from _strings(item)


def _bindings(args):
  return dict(a[len("--gin."):].split("=", 1) for a in args if a.startswith("--gin."))


def test_the_pipelines_of_every_method_are_found():
  folders = {p.split(os.sep)[2] for p in PIPELINES}
  assert {"idpt", "promot", "decoder_rank", "reader", "lm_adaptation", "ensemble",
          "domain_shift", "spot", "recursion"} <= folders
  assert {"gin/methods/idpt/idpt_t5_1_1_xxl.gin", "gin/methods/reader/reader_t5_1_1_xxl.gin",
          "gin/methods/lm_adaptation/lm_adaptation_t5_1_1_xxl_10k.gin",
          "gin/methods/promot/promot_pretrained_rte_mt5_xxl.gin",
          "gin/methods/decoder_rank/decoder_rank_llama3_1_8b_v5e_16.gin"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_every_binding_parses_and_carries_the_given_paths(name, tmp_path):
  path = AWKWARD
  runner, given, _ = _with_required(name, tmp_path, path)
  reached = set()
  for stage in runner.plan.stages:
    resolved = runner.resolve(stage, dry_run=True)
    if resolved.args is None:  # a Python step gets the values themselves
      reached |= {m for m, v in given.items() for s in _strings(resolved.inputs) if v in s}
      continue
    reached |= {m for m, v in given.items() for a in resolved.args
                if a.startswith("--gin_file=") and v in a}
    for binding, text in _bindings(resolved.args).items():
      # The step a run will reach is not known before it ran; any number stands in for it.
      text = re.sub(rf"(?<![\w/]){re.escape(outputs.STEP)}(?![\w/])", "1000", text)
      # Nor what a Python step will return (`outputs.predicted`: `<tasks of step kind>`), bound
      # as the whole value (a list of task names, say): a string stands in for it.
      if _PREDICTED.fullmatch(text):
        text = repr(text)
      try:
        value = _parsed(text)
      except (SyntaxError, ValueError) as error:
        pytest.fail(f"{name}: stage {stage.name!r} binds {binding}={text}, which gin cannot "
                    f"parse ({error})")
      for string in _strings(value):
        carried = {macro for macro, expected in given.items() if expected in string}
        assert carried or path not in string, \
            f"{name}: stage {stage.name!r} binds {binding} to {string!r}, a given path mangled"
        reached |= carried
  assert reached == set(given), f"{name}: {sorted(set(given) - reached)} reached no stage"


def test_the_idpt_xxl_preset_quotes_its_checkpoints(tmp_path):
  """The printed command and the recorded arguments carry the checkpoints as gin strings."""
  for lm, encoder in [(GCS, "gs://bucket/base/checkpoint_1000000"), (LOCAL, "/ckpts/base")]:
    argv = ["--gin_file=gin/methods/idpt/idpt_t5_1_1_xxl.gin",
            f"--pipeline_dir={tmp_path / 'pipe'}", f"--gin.LM_CHECKPOINT={lm!r}",
            f"--gin.ENCODER_CHECKPOINT={encoder!r}"]
    lines = []
    assert pipeline_lib.main(argv + ["--dry_run"], say=lines.append) == {}
    said = "\n".join(lines)
    if lm == GCS:  # as the docs write a gin string on a command line
      assert f"--gin.INITIAL_CHECKPOINT_PATH=\"'{GCS}'\" \\\n" in said
    words = shlex.split(said.replace("\\\n", " "))
    printed = [w for w in words if w.startswith("--gin.INITIAL_CHECKPOINT_PATH=")]
    # idpt, idpt_eval, baseline, baseline_eval
    assert printed == [f"--gin.INITIAL_CHECKPOINT_PATH={lm!r}"] * 4
    assert {_parsed(w.split("=", 1)[1]) for w in printed} == {lm}
    encoders = [w for w in words if w.startswith("--gin.ENCODER_CHECKPOINT_PATH=")]
    assert [_parsed(w.split("=", 1)[1]) for w in encoders] == [encoder] * 2
    assert f"input encoder_checkpoint = {encoder!r}" in said  # the distance step: the path
    runner = _runner(argv)
    for stage in runner.plan.stages:
      if stage.kind == "train":
        bindings = _bindings(runner.resolve(stage).args)  # what the run gets and records
        assert _parsed(bindings["INITIAL_CHECKPOINT_PATH"]) == lm
        assert _parsed(bindings["TASK_MODULE"]) == "prompt_tuning.methods.idpt.p3_tasks"


# -- the mechanism ---------------------------------------------------------------------------

@pipeline_step("test_literal_echo", outputs=("got",))
def _echo(*, stage_dir, value):
  del stage_dir
  return {"got": value}


def _resolved(tmp_path, stages, name):
  runner = runner_lib.Runner(plan_lib.make_plan(stages, directory=str(tmp_path)))
  return runner.resolve(next(s for s in stages if s.name == name), dry_run=True)


@pytest.mark.parametrize("value", [
    GCS, LOCAL, 'say "hi" it\'s', "back\\slash\\", "ünïcode/пути", "None", "", 12, 1e-6, None,
    ["a b", "c'd"], {"inputs": 16, "path": "/x y"}])
def test_a_literal_reaches_the_run_as_the_same_value(value, tmp_path):
  stage = Stage(name="s", kind="train", gin_files=["m.gin"], bindings={"X": Literal(value)})
  text = _bindings(_resolved(tmp_path, [stage], "s").args)["X"]
  assert _parsed(text) == value
  # The printed command line splits back into the same argument.
  assert shlex.split(runner_lib.shell_word(f"--gin.X={text}")) == [f"--gin.X={text}"]


def test_gin_text_bindings_are_written_as_they_are(tmp_path):
  bindings = {"A": "'t5_1_1_base'", "B": "@optimizers.adamw()", "C": "None", "D": 3,
              "E": "%MACRO", "F": ["gin/x.gin"], "G": Literal(["@not_a_reference()"])}
  got = _bindings(_resolved(tmp_path, [Stage(name="s", kind="train", gin_files=["m.gin"],
                                             bindings=bindings)], "s").args)
  assert {k: got[k] for k in bindings} == {
      "A": "'t5_1_1_base'", "B": "@optimizers.adamw()", "C": "None", "D": "3", "E": "%MACRO",
      "F": "['gin/x.gin']", "G": "['@not_a_reference()']"}


def test_references_inside_a_literal_are_filled_before_it_is_quoted(tmp_path):
  base = Stage(name="base", kind="train", gin_files=["m.gin"])
  tuned = Stage(name="tuned", kind="train", gin_files=["m.gin"],
                bindings={"INITIAL_CHECKPOINT_PATH": Literal("{base.checkpoint}"),
                          "STEP_TEXT": Literal("step {base.step}")})
  step = Stage(name="echo", kind="test_literal_echo",
               inputs={"value": Literal("{base.checkpoint}")})
  # A finished base whose checkpoint path holds a quote and a space.
  folder = tmp_path / "base"
  folder.mkdir()
  checkpoint = "/runs/o'brien base/checkpoints/7"
  (folder / runner_lib.RECORD_FILE).write_text(json.dumps(
      {"outputs": {"checkpoint": checkpoint, "step": 7}}))
  got = _bindings(_resolved(tmp_path, [base, tuned, step], "tuned").args)
  assert _parsed(got["INITIAL_CHECKPOINT_PATH"]) == checkpoint
  assert _parsed(got["STEP_TEXT"]) == "step 7"
  assert _resolved(tmp_path, [base, tuned, step], "echo").inputs == {"value": checkpoint}


def test_a_pipeline_file_binds_a_macro_through_literal(tmp_path):
  """The gin spelling, and a path quoted twice (gin text where a path belongs) refused."""
  (tmp_path / "p.gin").write_text(textwrap.dedent("""\
      CKPT = %gin.REQUIRED
      pipeline.stages = [@run/Stage(), @echo/Stage()]
      run/Stage.name = 'run'
      run/Stage.kind = 'train'
      run/Stage.gin_files = ['m.gin']
      run/Stage.bindings = {'INITIAL_CHECKPOINT_PATH': @ckpt/literal(), 'A': "'text'"}
      ckpt/literal.value = %CKPT
      echo/Stage.name = 'echo'
      echo/Stage.kind = 'test_literal_echo'
      echo/Stage.inputs = {'value': @ckpt/literal()}
      """))
  argv = [f"--gin_file={tmp_path / 'p.gin'}", f"--pipeline_dir={tmp_path / 'pipe'}"]
  runner = _runner(argv + [f"--gin.CKPT={GCS!r}"])
  run, echo = runner.plan.stages
  assert _parsed(_bindings(runner.resolve(run).args)["INITIAL_CHECKPOINT_PATH"]) == GCS
  assert _bindings(runner.resolve(run).args)["A"] == "'text'"
  assert runner.resolve(echo).inputs == {"value": GCS}
  with pytest.raises(PipelineError, match=(
      r"^Stage 'run' \(train\) sets INITIAL_CHECKPOINT_PATH to the string '/ckpt' with its "
      r"quotes, where a plain string belongs .*--gin.MACRO=\"'/ckpt'\"")):
    _runner(argv + ["--gin.CKPT=\"'/ckpt'\""])
