"""Checks a pipeline before anything runs: names, kinds, settings, references, the selection.

Each problem stops with one sentence naming the stage and what is wrong, so a typo in the last
stage of a long pipeline costs nothing rather than the hours the first stages took.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.pipelines import placeholders
from prompt_tuning.pipelines import stages as stages_lib
from prompt_tuning.pipelines.stages import PipelineError, Stage

_GIN_NAME = re.compile(r"^[\w.%/]+$")


@dataclasses.dataclass(frozen=True)
class Plan:
  """A checked pipeline.

  Attributes:
    directory: the pipeline's folder (absolute); stage `s` works in `<directory>/s`.
    stages: every stage, in run order.
    selected: the names of the stages to run (all by default), in run order.
  """

  directory: str
  stages: Tuple[Stage, ...]
  selected: Tuple[str, ...]

  def folder(self, name: str) -> str:
    return os.path.join(self.directory, name)

  def stage(self, name: str) -> Stage:
    return next(s for s in self.stages if s.name == name)

  def needed_records(self) -> List[Tuple[str, str, str]]:
    """`(stage, reader, output)` for each output a selected stage reads from an unselected one."""
    found = []
    for stage in self.stages:
      if stage.name in self.selected:
        found += [(source, stage.name, output) for source, output in stage_references(stage)
                  if source not in self.selected]
    return found


def stage_references(stage: Stage) -> List[Tuple[str, str]]:
  """Every `(stage, output)` the stage names, in its files, bindings, flags and inputs."""
  return placeholders.references([list(stage.gin_files), dict(stage.bindings),
                                  list(stage.flags), dict(stage.inputs)])


def make_plan(stages: Sequence[Stage], *, directory: Optional[str],
              selected: Optional[Sequence[str]] = None) -> Plan:
  """Checks `stages` (and the `--stages` selection); returns the plan or raises PipelineError."""
  stages = tuple(stages)
  if not stages:
    raise PipelineError("The pipeline has no stages; bind pipeline.stages = [@name/Stage(), ...].")
  if not directory:
    raise PipelineError("The pipeline has no directory; pass --pipeline_dir=DIR or bind "
                        "pipeline.directory.")
  _check_names(stages)
  for stage in stages:
    _check_settings(stage)
  _check_references(stages)
  names = [s.name for s in stages]
  if selected:
    unknown = [n for n in selected if n not in names]
    if unknown:
      raise PipelineError(f"--stages names {unknown[0]!r}, which is not a stage of this pipeline "
                          f"(stages: {', '.join(names)}).")
    chosen = tuple(n for n in names if n in selected)
  else:
    chosen = tuple(names)
  return Plan(directory=os.path.abspath(os.path.expanduser(directory)), stages=stages,
              selected=chosen)


def _check_names(stages: Sequence[Stage]) -> None:
  seen = set()
  for stage in stages:
    if not isinstance(stage, Stage):
      raise PipelineError(f"pipeline.stages holds {stage!r}, not a Stage; write @name/Stage().")
    if not isinstance(stage.name, str) or not stages_lib.NAME.match(stage.name):
      raise PipelineError(f"Stage name {stage.name!r} is not an identifier (letters, digits and "
                          "underscores, not starting with a digit).")
    if stage.name in seen:
      raise PipelineError(f"Stage name {stage.name!r} is used twice; stage names must be unique.")
    seen.add(stage.name)


def _check_settings(stage: Stage) -> None:
  """The kind exists and the stage sets only what its kind reads."""
  entry = stages_lib.ENTRY_KINDS.get(stage.kind)
  step = stages_lib.registered_step(stage.kind)
  where = f"Stage {stage.name!r} ({stage.kind})"
  settings = [dict(d) for d in (stage.bindings, stage.inputs) if isinstance(d, Mapping)]
  for setting, value in [item for d in settings for item in d.items()]:
    doubled = [lit.value for lit in stages_lib.literals(value)
               if stages_lib.quoted_twice(lit.value)]
    if doubled:
      raise PipelineError(
          f"{where} sets {setting} to the string {doubled[0]} with its quotes, where a plain "
          f"string belongs (literal() quotes it for the run); quote it once, as "
          f"--gin.MACRO=\"{doubled[0]}\" on the command line.")
  if entry is None and step is None:
    known = list(stages_lib.ENTRY_KINDS) + list(stages_lib.registered_step_names())
    raise PipelineError(f"Stage {stage.name!r} has unknown kind {stage.kind!r}; expected one of "
                        f"{', '.join(known)} (Python steps register with @pipeline_step and are "
                        "imported through pipeline.step_modules).")
  if entry is not None:
    if stage.inputs:
      raise PipelineError(f"{where} sets inputs, which only Python steps take; use bindings.")
    if not stage.gin_files:
      raise PipelineError(f"{where} lists no gin_files.")
    for name in stage.bindings:
      if not isinstance(name, str) or not _GIN_NAME.match(name):
        raise PipelineError(f"{where} has a malformed binding name {name!r}; expected a gin name "
                            "like TRAIN_STEPS or train.total_steps.")
      if name in entry.dir_bindings:
        raise PipelineError(f"{where} binds {name}, which the pipeline sets to the stage folder; "
                            "remove that binding.")
    for flag in stage.flags:
      if not isinstance(flag, str) or not flag.startswith("--") or \
          flag.startswith(("--gin.", "--gin_file", "--gin_bindings")):
        raise PipelineError(f"{where} has flag {flag!r}; flags start with '--', and gin files and "
                            "bindings go in gin_files and bindings.")
    return
  if stage.gin_files or stage.bindings or stage.flags:
    raise PipelineError(f"{where} is a Python step and takes inputs, not gin_files, bindings or "
                        "flags.")
  unknown = [n for n in stage.inputs if n not in step.inputs]
  if "stage_dir" in stage.inputs or (unknown and not step.takes_any):
    bad = "stage_dir" if "stage_dir" in stage.inputs else unknown[0]
    raise PipelineError(f"{where} gives input {bad!r}, which step {step.name!r} does not take "
                        f"(it takes: {', '.join(step.inputs) or 'nothing'}).")
  missing = [n for n in step.required if n not in stage.inputs]
  if missing:
    raise PipelineError(f"{where} lacks input {missing[0]!r}, which step {step.name!r} requires.")


def _check_references(stages: Sequence[Stage]) -> None:
  """Every reference names an earlier stage and an output that stage's kind makes."""
  order = {s.name: i for i, s in enumerate(stages)}
  edges: Dict[str, List[str]] = {s.name: [] for s in stages}
  for stage in stages:
    for source, output in stage_references(stage):
      ref = placeholders.text(source, output)
      if source not in order:
        raise PipelineError(f"Stage {stage.name!r} names {ref}, but the pipeline has no stage "
                            f"{source!r} (stages: {', '.join(order)}).")
      if source == stage.name:
        raise PipelineError(f"Stage {stage.name!r} names its own output {ref}; a stage reads "
                            "only earlier stages' outputs.")
      edges[stage.name].append(source)
  cycle = _find_cycle(edges)
  if cycle:
    raise PipelineError(f"Stages {' -> '.join(cycle)} read each other's outputs in a cycle, so "
                        "no order can run them.")
  for stage in stages:
    for source, output in stage_references(stage):
      ref = placeholders.text(source, output)
      if order[source] > order[stage.name]:
        raise PipelineError(f"Stage {stage.name!r} names {ref}, but stage {source!r} runs after "
                            f"it; list {source!r} first.")
      made = stages_lib.outputs_of(stages[order[source]].kind)
      if output not in made:
        raise PipelineError(f"Stage {stage.name!r} names {ref}, but no earlier stage makes it: a "
                            f"{stages[order[source]].kind} stage makes {', '.join(made)}.")


def _find_cycle(edges: Dict[str, List[str]]) -> Optional[List[str]]:
  """A cycle in the 'reads from' graph as `[a, b, ..., a]`, or None."""
  state: Dict[str, int] = {}  # 1: on the current path, 2: done
  path: List[str] = []

  def visit(node: str) -> Optional[List[str]]:
    state[node] = 1
    path.append(node)
    for target in edges[node]:
      if state.get(target) == 1:
        return path[path.index(target):] + [target]
      if target not in state:
        found = visit(target)
        if found:
          return found
    path.pop()
    state[node] = 2
    return None

  for node in edges:
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None
