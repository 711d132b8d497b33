"""What a pipeline stage is, what each kind of stage makes, and the registry of Python steps.

A stage is either a run of an entry point (`train`, `eval`, `infer`, each a fresh
`python -m prompt_tuning.<entry>` process with the stage's own gin files and bindings) or a
registered Python step (a function called in the pipeline's process). Every kind declares the
outputs it makes, so a pipeline naming an output that no stage makes is refused before any
stage runs.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

NAME = re.compile(r"^[A-Za-z_]\w*$")
# Every stage's own folder, `<pipeline_dir>/<stage>`.
DIR_OUTPUT = "dir"


class PipelineError(ValueError):
  """A pipeline is wrong (or a stage failed); the message is one sentence naming what."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One named stage of a pipeline (a gin configurable: `@name/Stage()`).

  Attributes:
    name: the stage's name: its folder under the pipeline directory and the `name` of
      `{name.output}` references.
    kind: 'train', 'eval', 'infer', or the name of a registered Python step.
    gin_files: entry-point stages: the gin files of the run, in command-line order.
    bindings: entry-point stages: `{gin name: value}` added as `--gin.NAME=VALUE`. A string
      value is gin text, as on the command line: `"'t5_1_1_base'"` is a string,
      `'@optimizers.adam()'` a reference, `'None'` None. Any other value (a number, a list, a
      dict, what a macro holds) is written as its Python literal. A string a macro holds (a
      path the user gave as `--gin.CKPT="'gs://b/ckpt'"`) is a Python string, not gin text:
      wrap it as `@ckpt/literal()` with `ckpt/literal.value = %CKPT` (a `Literal`) so it is
      written quoted, `--gin.NAME='gs://b/ckpt'`.
    inputs: Python steps: the step function's keyword inputs.
    flags: entry-point stages: further command-line flags (e.g. `--host_cpu_devices=4`).
  """

  name: str
  kind: str
  gin_files: Sequence[str] = ()
  bindings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  flags: Sequence[str] = ()


@dataclasses.dataclass(frozen=True)
class Literal:
  """A binding value written as its Python literal (`repr`), a string included.

  A string binding value is gin text, so a Python string (what a macro holds once gin has
  parsed the user's `--gin.LM_CHECKPOINT="'gs://b/ckpt'"`) would reach the run as
  `--gin.NAME=gs://b/ckpt`, which gin cannot parse. A pipeline file marks such a value:

    idpt/Stage.bindings = {'INITIAL_CHECKPOINT_PATH': @lm_checkpoint/literal(), ...}
    lm_checkpoint/literal.value = %LM_CHECKPOINT

  and the run gets `--gin.INITIAL_CHECKPOINT_PATH='gs://b/ckpt'`, quotes and escapes written
  by `repr`, so any path reads back as itself. `{stage.output}` references inside the value
  are filled in first (as text: `'{base.checkpoint}'` stays a string). A Literal in a Python
  step's inputs, or inside a list or dict, is its value.
  """

  value: Any


def plain(value: Any) -> Any:
  """`value` with every Literal (also inside lists, tuples and dicts) replaced by its value."""
  if isinstance(value, Literal):
    return plain(value.value)
  if isinstance(value, (list, tuple)):
    return type(value)(plain(v) for v in value)
  if isinstance(value, dict):
    return {k: plain(v) for k, v in value.items()}
  return value


def literals(value: Any) -> List[Literal]:
  """Every Literal in `value` (a Literal, or lists, tuples and dicts holding them)."""
  if isinstance(value, Literal):
    return [value]
  if isinstance(value, (list, tuple)):
    return [found for item in value for found in literals(item)]
  if isinstance(value, dict):
    return [found for item in value.values() for found in literals(item)]
  return []


def quoted_twice(value: Any) -> bool:
  """A string wrapped in a pair of quotes: gin text where a plain string belongs.

  A Literal holding `'/ckpt'` (the user quoted the path twice on the command line,
  `--gin.CKPT="\"'/ckpt'\""`) would give the run the path `'/ckpt'`, quotes included.
  """
  return isinstance(value, str) and len(value) > 1 and value[0] == value[-1] and \
      value[0] in "'\""


@dataclasses.dataclass(frozen=True)
class EntryKind:
  """A stage kind that runs one of the entry points in a fresh process.

  Attributes:
    module: the entry point, run as `python -m <module>`.
    dir_bindings: the gin names the pipeline points at the stage folder (the run file's macro
      and the entry point's own argument, so either spelling in a run file is covered).
    outputs: `{name: what it is}` of the outputs a finished stage reports.
  """

  module: str
  dir_bindings: Tuple[str, ...]
  outputs: Mapping[str, str]


ENTRY_KINDS: Dict[str, EntryKind] = {
    "train": EntryKind(
        module="prompt_tuning.train", dir_bindings=("MODEL_DIR", "train.model_dir"),
        outputs={
            DIR_OUTPUT: "the stage folder (also the run's model_dir)",
            "model_dir": "the run's model_dir (the stage folder)",
            "checkpoint": "<model_dir>/checkpoints/<step>: the latest complete step, or the best "
                          "one by trainer.CheckpointConfig.best_metric when that is set",
            "step": "that step (an integer)",
            "prompt": "<model_dir>/numpy_checkpoints/checkpoint_<step>/input_hook.prompt.npy, "
                      "the exported prompt of that step (none if the run exported none)",
            "prompts": "<model_dir>/numpy_checkpoints/checkpoint_<step>: every exported .npy",
            "peft_adapter": "<model_dir>/peft_adapters/checkpoint_<step> (none if not exported)",
            "metrics": "<model_dir>/metrics: train.jsonl, train_eval.jsonl, infer_eval.jsonl",
            "config": "<model_dir>/config.gin, the run's operative config",
        }),
    "eval": EntryKind(
        module="prompt_tuning.eval", dir_bindings=("EVAL_OUTPUT_DIR", "evaluate.output_dir"),
        outputs={
            DIR_OUTPUT: "the stage folder (the run's output_dir)",
            "metrics": "<dir>/metrics/infer_eval.jsonl, the task metrics",
            "predictions": "the one <dir>/inference_eval/<task>-<step>.jsonl file, or that "
                           "folder when the run evaluated several tasks",
            "config": "<dir>/config.gin, the run's operative config",
        }),
    "infer": EntryKind(
        module="prompt_tuning.infer", dir_bindings=("INFER_OUTPUT_DIR", "infer.output_dir"),
        outputs={
            DIR_OUTPUT: "the stage folder (the run's output_dir)",
            "predictions": "the one <dir>/inference/<task>-<split>-step_<N>.jsonl file, or that "
                           "folder when the run wrote several tasks",
            "config": "<dir>/config.gin, the run's operative config",
        }),
}


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """A registered Python step: `fn(*, stage_dir, **inputs) -> {output name: value}`."""

  name: str
  fn: Callable[..., Mapping[str, Any]]
  outputs: Tuple[str, ...]
  inputs: Tuple[str, ...]  # every keyword input the function takes (stage_dir excluded)
  required: Tuple[str, ...]  # those without a default
  takes_any: bool  # the function has **kwargs


_STEPS: Dict[str, StepSpec] = {}


def pipeline_step(name: str, *, outputs: Sequence[str]) -> Callable:
  """Registers a function as the Python step `name` with the outputs it returns.

  The function is called with keyword arguments only: `stage_dir` (its own, existing, folder)
  and the stage's `inputs`. It returns a dict with exactly the declared `outputs`, each a
  JSON value (paths as strings, numbers, lists); they are written into the stage's completion
  record, so later stages (and later runs) can read them. Example:

    @pipeline_step('prompt_norm', outputs=('norm',))
    def prompt_norm(*, stage_dir, prompt):
      return {'norm': float(np.linalg.norm(np.load(prompt)))}
  """
  if not NAME.match(name) or name in ENTRY_KINDS:
    raise ValueError(f"Pipeline step name {name!r} must be an identifier other than "
                     f"{', '.join(ENTRY_KINDS)}.")
  outputs = tuple(outputs)
  bad = [o for o in outputs if not NAME.match(o) or o == DIR_OUTPUT]
  if bad or len(set(outputs)) != len(outputs):
    raise ValueError(f"Pipeline step {name!r} declares bad outputs {list(outputs)}: each must "
                     f"be a distinct identifier other than {DIR_OUTPUT!r}.")

  def register(fn: Callable) -> Callable:
    known = _STEPS.get(name)
    if known is not None and _qualified(known.fn) != _qualified(fn):
      raise ValueError(f"Pipeline step {name!r} is already registered by {_qualified(known.fn)}.")
    parameters = inspect.signature(fn).parameters
    if "stage_dir" not in parameters:
      raise ValueError(f"Pipeline step {name!r} ({_qualified(fn)}) must take a `stage_dir` "
                       "keyword argument.")
    named = [p for p in parameters.values()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "stage_dir"]
    _STEPS[name] = StepSpec(
        name=name, fn=fn, outputs=outputs, inputs=tuple(p.name for p in named),
        required=tuple(p.name for p in named if p.default is inspect.Parameter.empty),
        takes_any=any(p.kind == p.VAR_KEYWORD for p in parameters.values()))
    return fn

  return register


def _qualified(fn: Callable) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"


def registered_step(name: str) -> Optional[StepSpec]:
  return _STEPS.get(name)


def registered_step_names() -> Tuple[str, ...]:
  return tuple(sorted(_STEPS))


def outputs_of(kind: str) -> Tuple[str, ...]:
  """The outputs a stage of `kind` makes (its folder, `dir`, included); () if unknown."""
  if kind in ENTRY_KINDS:
    return tuple(ENTRY_KINDS[kind].outputs)
  step = _STEPS.get(kind)
  return (DIR_OUTPUT,) + step.outputs if step is not None else ()
