"""Runs a checked plan: each stage in its own folder, finished stages skipped, interrupted resumed.

Train / eval / infer stages run as `python -m prompt_tuning.<entry> ...` in a fresh process:
gin configuration is global state, and each run needs a clean JAX start (XLA flags such as
`--host_cpu_devices` apply only before JAX starts). A Python step runs in this process.

A stage that finishes writes `<pipeline_dir>/<stage>/completed.json`: its kind, its settings
with every reference resolved (the entry point's arguments, or the step's inputs) and its
outputs. A later run skips a stage with a record (and refuses one whose settings changed), and
re-runs a stage without one in the same folder: the train entry point then resumes from the
latest checkpoint there, so an interrupted stage ends exactly as an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import signal
import subprocess
import sys
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from prompt_tuning.pipelines import outputs as outputs_lib
from prompt_tuning.pipelines import placeholders
from prompt_tuning.pipelines import plan as plan_lib
from prompt_tuning.pipelines import stages as stages_lib
from prompt_tuning.pipelines.plan import Plan
from prompt_tuning.pipelines.stages import DIR_OUTPUT, PipelineError, Stage

RECORD_FILE = "completed.json"
RECORD_VERSION = 1


def default_commands() -> Dict[str, List[str]]:
  """The command that runs each entry-point kind: this interpreter, `-m <entry module>`."""
  return {kind: [sys.executable, "-m", entry.module]
          for kind, entry in stages_lib.ENTRY_KINDS.items()}


def gin_text(value: Any) -> str:
  """A binding value as command-line gin text: strings are gin already, the rest (a `Literal`'s
  value among them, a string included) Python literals."""
  return value if isinstance(value, str) else repr(stages_lib.plain(value))


def shell_word(arg: str) -> str:
  """`arg` quoted for a shell, gin flags as the docs write them: `--gin.NAME="'text'"`."""
  name, equals, value = arg.partition("=")
  if arg.startswith("--gin.") and equals and shlex.quote(value) != value and \
      not any(c in value for c in '"$`\\!'):
    return f'{name}="{value}"'
  return shlex.quote(arg)


def read_record(folder: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(folder, RECORD_FILE)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise PipelineError(f"The completion record {path} is unreadable ({error}); delete it to run "
                        "that stage again.") from None


def _write_record(folder: str, record: Mapping[str, Any]) -> None:
  path = os.path.join(folder, RECORD_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2, sort_keys=True)
  os.replace(path + ".tmp", path)


@dataclasses.dataclass
class Resolved:
  """A stage with every reference replaced by its value."""

  stage: Stage
  folder: str
  args: Optional[List[str]] = None  # entry-point stages: the entry point's arguments
  inputs: Optional[Dict[str, Any]] = None  # Python steps: the step's keyword inputs
  own_args: Optional[List[str]] = None  # `args` less the pipeline-wide ones (host settings)

  @property
  def settings(self) -> Dict[str, Any]:
    """What the completion record compares: a finished stage is skipped only if these match.

    The pipeline-wide arguments (search paths, host devices) are left out: they say where and
    how fast a stage runs, not what it computes.
    """
    if self.args is not None:
      return {"kind": self.stage.kind, "args": self.own_args}
    try:  # as the record will hold them (tuples become lists)
      return {"kind": self.stage.kind, "inputs": json.loads(json.dumps(self.inputs))}
    except (TypeError, ValueError):
      raise PipelineError(f"Stage {self.stage.name!r} has inputs that are not JSON values "
                          f"({self.inputs!r}); give paths, numbers, strings or lists.") from None


def _die_with_parent() -> None:
  """In the child: end when the pipeline process ends, so a killed pipeline leaves no orphan
  still writing into a stage folder that the next run resumes from (Linux only)."""
  import ctypes  # pylint: disable=g-import-not-at-top
  pr_set_pdeathsig = 1
  try:
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
  except (OSError, AttributeError):  # a C library without prctl: the child just runs on
    pass


class Runner:
  """Runs, or describes, a plan.

  Args:
    plan: the checked pipeline.
    extra_args: arguments added to every entry-point stage (before the stage's own flags),
      e.g. the pipeline's `--gin_search_paths` and `--host_cpu_devices`.
    commands: `{kind: argv prefix}` of the entry points (default: `python -m <module>`).
    env: the entry points' environment (default: this process's).
    say: where progress lines go (default: print).
  """

  def __init__(self, plan: Plan, *, extra_args: Sequence[str] = (),
               commands: Optional[Mapping[str, Sequence[str]]] = None,
               env: Optional[Mapping[str, str]] = None,
               say: Optional[Callable[[str], None]] = None):
    self.plan = plan
    self._extra_args = list(extra_args)
    self._commands = {**default_commands(), **dict(commands or {})}
    self._env = dict(os.environ if env is None else env)
    self._say = say or (lambda line: print(line, flush=True))
    self._outputs: Dict[str, Dict[str, Any]] = {}

  # -- references ------------------------------------------------------------------------------

  def _known_outputs(self, source: str, reader: str, dry_run: bool) -> Dict[str, Any]:
    if source in self._outputs:
      return self._outputs[source]
    folder = self.plan.folder(source)
    record = read_record(folder)
    if record is not None:
      return record["outputs"]
    if dry_run:
      kind = self.plan.stage(source).kind
      return outputs_lib.predicted(kind, folder, stages_lib.outputs_of(kind))
    raise PipelineError(f"Stage {reader!r} needs outputs of stage {source!r}, which has not "
                        f"finished (no {os.path.join(folder, RECORD_FILE)}); run it first or add "
                        "it to --stages.")

  def _lookup(self, reader: str, dry_run: bool) -> Callable[[str, str], Any]:
    def lookup(source: str, output: str) -> Any:
      value = self._known_outputs(source, reader, dry_run).get(output)
      if value is None:
        raise PipelineError(f"Stage {reader!r} needs {placeholders.text(source, output)}, but "
                            f"stage {source!r} finished without one (e.g. a train run that "
                            "exported no prompt).")
      return value
    return lookup

  def resolve(self, stage: Stage, *, dry_run: bool = False) -> Resolved:
    """The stage's arguments or inputs with every reference filled in."""
    folder = self.plan.folder(stage.name)
    lookup = self._lookup(stage.name, dry_run)
    entry = stages_lib.ENTRY_KINDS.get(stage.kind)
    if entry is None:
      inputs = placeholders.substitute(dict(stage.inputs), lookup, textual=False)
      return Resolved(stage, folder, inputs=stages_lib.plain(inputs))
    files = placeholders.substitute(list(stage.gin_files), lookup, textual=True)
    # Gin text is filled in as text; a Python value is filled in before `repr` quotes it.
    bindings = {name: (placeholders.substitute(value, lookup, textual=True)
                       if isinstance(value, str) else
                       gin_text(placeholders.substitute(value, lookup, textual=True)))
                for name, value in stage.bindings.items()}
    bindings.update({name: repr(folder) for name in entry.dir_bindings})
    gin_args = ([f"--gin_file={f}" for f in files]
                + [f"--gin.{name}={value}" for name, value in bindings.items()])
    flags = placeholders.substitute(list(stage.flags), lookup, textual=True)
    return Resolved(stage, folder, args=gin_args + self._extra_args + flags,
                    own_args=gin_args + flags)

  def check_needed_records(self) -> None:
    """Stops, before anything runs, if a selected stage reads an unselected unfinished one."""
    for source, reader, output in self.plan.needed_records():
      if read_record(self.plan.folder(source)) is None:
        raise PipelineError(
            f"Stage {reader!r} needs {placeholders.text(source, output)}, but stage {source!r} "
            f"is not in --stages and has not finished (no "
            f"{os.path.join(self.plan.folder(source), RECORD_FILE)}); run it first or add it "
            "to --stages.")

  # -- running ---------------------------------------------------------------------------------

  def run(self) -> Dict[str, Dict[str, Any]]:
    """Runs the selected stages in order; returns `{stage: outputs}` of each."""
    self.check_needed_records()
    os.makedirs(self.plan.directory, exist_ok=True)
    count = len(self.plan.selected)
    ran = set()  # the stages this call ran (rather than skipped)
    for number, name in enumerate(self.plan.selected, 1):
      stage = self.plan.stage(name)
      resolved = self.resolve(stage)
      label = f"[{number}/{count}] stage {name!r} ({stage.kind})"
      record = read_record(resolved.folder)
      if record is not None:
        if record.get("settings") != resolved.settings:
          raise PipelineError(
              f"Stage {name!r} finished earlier with other settings than the pipeline gives it "
              f"now (see {os.path.join(resolved.folder, RECORD_FILE)}); delete "
              f"{resolved.folder} to run it again, or use a new --pipeline_dir.")
        rerun = [s for s, _ in plan_lib.stage_references(stage) if s in ran]
        if rerun:
          raise PipelineError(
              f"Stage {name!r} finished earlier on outputs of stage {rerun[0]!r}, which has just "
              f"run again; delete {resolved.folder} to run {name!r} on the new outputs.")
        self._say(f"{label}: finished earlier, skipped.")
        self._outputs[name] = record["outputs"]
        continue
      resuming = os.path.isdir(resolved.folder) and bool(os.listdir(resolved.folder))
      self._say(f"{label}: {'resuming' if resuming else 'running'} in {resolved.folder}")
      os.makedirs(resolved.folder, exist_ok=True)
      made = self._execute(resolved)
      _write_record(resolved.folder, {
          "version": RECORD_VERSION, "stage": name, "settings": resolved.settings,
          "outputs": made,
          "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
      self._outputs[name] = made
      ran.add(name)
      self._say(f"{label}: finished.")
    return {name: self._outputs[name] for name in self.plan.selected}

  def _execute(self, resolved: Resolved) -> Dict[str, Any]:
    stage = resolved.stage
    if resolved.args is None:
      return self._run_step(resolved)
    command = list(self._commands[stage.kind]) + resolved.args
    env = dict(self._env)
    # The entry points must import this very package, whatever PYTHONPATH says.
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    process = subprocess.run(
        command, env=env, check=False,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    if process.returncode != 0:
      how = (f"was killed by signal {-process.returncode}" if process.returncode < 0
             else f"failed with exit status {process.returncode}")
      raise PipelineError(f"Stage {stage.name!r} ({stage.kind}) {how}; {resolved.folder} keeps "
                          "what it wrote, and running the pipeline again resumes it.")
    return outputs_lib.read(stage.kind, resolved.folder)

  def _run_step(self, resolved: Resolved) -> Dict[str, Any]:
    stage = resolved.stage
    step = stages_lib.registered_step(stage.kind)
    made = step.fn(stage_dir=resolved.folder, **resolved.inputs)
    if not isinstance(made, Mapping) or set(made) != set(step.outputs):
      got = sorted(made) if isinstance(made, Mapping) else type(made).__name__
      raise PipelineError(f"Step {step.name!r} of stage {stage.name!r} returned {got}, not a dict "
                          f"of its declared outputs {list(step.outputs)}.")
    try:
      json.dumps(dict(made))
    except (TypeError, ValueError) as error:
      raise PipelineError(f"Step {step.name!r} of stage {stage.name!r} returned an output that is "
                          f"not a JSON value ({error}); return paths, numbers or lists.") from None
    return {DIR_OUTPUT: resolved.folder, **made}

  # -- describing ------------------------------------------------------------------------------

  def describe(self) -> str:
    """The plan as text: each selected stage's status, folder, command or inputs, outputs."""
    self.check_needed_records()
    lines = [f"pipeline in {self.plan.directory}: "
             f"{len(self.plan.selected)} of {len(self.plan.stages)} stage(s) selected"]
    count = len(self.plan.selected)
    for number, name in enumerate(self.plan.selected, 1):
      stage = self.plan.stage(name)
      resolved = self.resolve(stage, dry_run=True)
      record = read_record(resolved.folder)
      lines.append(f"[{number}/{count}] stage {name!r} ({stage.kind}): "
                   f"{self._status(resolved, record)}")
      lines.append(f"  folder: {resolved.folder}")
      if resolved.args is not None:
        lines.append("  command: " + " \\\n      ".join(
            [" ".join(map(shell_word, self._commands[stage.kind]))]
            + [shell_word(a) for a in resolved.args]))
      else:
        for key, value in resolved.inputs.items():
          lines.append(f"  input {key} = {value!r}")
      made = record["outputs"] if record else outputs_lib.predicted(
          stage.kind, resolved.folder, stages_lib.outputs_of(stage.kind))
      for key, value in made.items():
        lines.append(f"  output {placeholders.text(name, key)} = {value}")
    return "\n".join(lines)

  def _status(self, resolved: Resolved, record: Optional[Mapping[str, Any]]) -> str:
    if record is not None:
      if record.get("settings") != resolved.settings:
        return "finished with other settings (a run stops here)"
      return "finished (skipped)"
    if resolved.stage.kind == "train":
      steps = outputs_lib.complete_steps(resolved.folder)
      if steps:
        return f"interrupted (resumes from step {steps[-1]})"
    if os.path.isdir(resolved.folder) and os.listdir(resolved.folder):
      return "interrupted (runs again in its folder)"
    return "to run"
