r"""Pipeline entry point: runs named stages in order, each reading earlier stages' outputs.

  python -m prompt_tuning.pipeline --gin_file=gin/methods/<name>/<pipeline>.gin \
    [--gin.NAME=VALUE ...] [--pipeline_dir=DIR] [--stages=a,b] [--dry_run]

A pipeline is a gin file. It lists its stages; each is a train / eval / infer run (a fresh
`python -m prompt_tuning.<entry>` process with the stage's own gin files and bindings) or a
registered Python step (`@pipeline_step`, see prompt_tuning/pipelines/stages.py). A stage reads
an earlier stage's output through `{stage.output}` anywhere in its gin files, bindings, flags
or inputs. Two stages, a base trained from scratch and a prompt tuned on it frozen:

  pipeline.directory = '/tmp/two_stages'
  pipeline.stages = [@base/Stage(), @prompt/Stage()]

  base/Stage.name = 'base'
  base/Stage.kind = 'train'
  base/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/runs/finetune.gin',
                          'gin/runs/smoke.gin']
  base/Stage.bindings = {'INITIAL_CHECKPOINT_PATH': 'None', 'TRAIN_STEPS': 400,
                         'MIXTURE_OR_TASK_NAME': "'smoke_skills'"}

  prompt/Stage.name = 'prompt'
  prompt/Stage.kind = 'train'
  prompt/Stage.gin_files = ['gin/models/byte_t5_tiny.gin', 'gin/prompts/sampled_vocabulary.gin',
                            'gin/runs/prompt_tuning.gin', 'gin/runs/smoke.gin']
  prompt/Stage.bindings = {'INITIAL_CHECKPOINT_PATH': "'{base.checkpoint}'",
                           'MIXTURE_OR_TASK_NAME': "'smoke_last_digit'", 'TRAIN_STEPS': 150}

Binding values that are strings are gin text, as on the command line (`"'smoke_skills'"` is a
string, `'@optimizers.adam()'` a reference); numbers, lists and macros (`%STEPS`) are written
as literals. A macro holding a string the user gave (`--gin.CKPT="'gs://b/ckpt'"`) is a Python
string, not gin text: bind it as `@ckpt/literal()` with `ckpt/literal.value = %CKPT`, which
writes it quoted (`--gin.INITIAL_CHECKPOINT_PATH='gs://b/ckpt'`; stages.Literal). The pipeline
sets each run's folder itself (`MODEL_DIR`, `EVAL_OUTPUT_DIR`, `INFER_OUTPUT_DIR`):
`<pipeline_dir>/<stage>/`. The outputs each kind makes are listed in
`pipelines/stages.py` (`ENTRY_KINDS`); a Python step makes the outputs it declares.

Each stage's folder keeps its run (checkpoints, metrics, `config.gin`) and, once it finished,
`completed.json` with its resolved settings and outputs. Running the command again skips the
finished stages and resumes an interrupted one in place (the train entry point continues from
its latest checkpoint). `--stages=a,b` runs only those stages; the outputs they read from
other stages come from those stages' records. `--dry_run` prints every stage's status,
resolved command line and outputs, and runs nothing. `--host_cpu_devices`, `--host_allocator`
and `--gin_search_paths` are passed on to every train / eval / infer stage.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from prompt_tuning.engine import gin_utils
from prompt_tuning.pipelines import plan as plan_lib
from prompt_tuning.pipelines import runner as runner_lib
from prompt_tuning.pipelines.stages import (  # noqa: F401
    Literal, PipelineError, Stage, pipeline_step)

CONFIG_FILE = "pipeline.gin"


@dataclasses.dataclass(frozen=True)
class PipelineSpec:
  stages: Sequence[Stage]
  directory: Optional[str]
  step_modules: Sequence[str]


def pipeline(*, stages: Sequence[Stage] = (), directory: Optional[str] = None,
             step_modules: Sequence[str] = ()) -> PipelineSpec:
  """What a pipeline gin file configures.

  Args:
    stages: `[@name/Stage(), ...]` in run order.
    directory: the pipeline's folder (`--pipeline_dir` overrides it).
    step_modules: Python modules to import first; importing one registers its steps.
  """
  return PipelineSpec(stages=tuple(stages), directory=directory,
                      step_modules=tuple(step_modules))


def _parse_own_flags(argv: Sequence[str]):
  parser = argparse.ArgumentParser(prog="prompt_tuning.pipeline", allow_abbrev=False,
                                   description="Run a pipeline of train/eval/infer/step stages.")
  parser.add_argument("--pipeline_dir", default=None,
                      help="the pipeline's folder (default: pipeline.directory of the gin file)")
  parser.add_argument("--stages", default=None,
                      help="comma-separated stage names to run (default: all)")
  parser.add_argument("--dry_run", action="store_true",
                      help="print the plan with resolved paths and commands; run nothing")
  return parser.parse_known_args(list(argv))


def _configured_pipeline(flags: gin_utils.Flags) -> PipelineSpec:
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  for configurable, name in ((Stage, "Stage"), (Literal, "literal")):
    try:
      gin.external_configurable(configurable, name=name, module="pipeline")
    except ValueError:  # registered by an earlier call in this process
      pass
  configured = gin_utils.configurable_entry(pipeline, "pipeline")
  gin_utils.parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings,
                      gin_search_paths=flags.gin_search_paths)
  return gin_utils.call_configured(configured)


def _import_step_modules(names: Sequence[str]) -> None:
  for name in names:
    try:
      importlib.import_module(name)
    except ImportError as error:
      raise PipelineError(f"Step module {name!r} could not be imported: {error}.") from None


def _passed_on(flags: gin_utils.Flags) -> list:
  """The pipeline's flags that every entry-point stage gets too."""
  args = [f"--gin_search_paths={os.path.abspath(p)}" for p in flags.gin_search_paths]
  if flags.host_cpu_devices is not None:
    args.append(f"--host_cpu_devices={flags.host_cpu_devices}")
  if flags.host_allocator != "reuse":
    args.append(f"--host_allocator={flags.host_allocator}")
  return args


def plan_pipeline(argv: Sequence[str], *,
                  commands: Optional[Mapping[str, Sequence[str]]] = None,
                  say: Optional[Callable[[str], None]] = None):
  """Parses the command line and the pipeline's gin into a plan, running nothing.

  This is everything `main` does before it runs or prints: the pipeline's own flags, the gin
  files and bindings, the step modules imported (which registers their steps), the stages
  selected and the runner that resolves each stage's command line. Tests and tools that
  inspect a pipeline (`runner.resolve(stage, dry_run=True)`) call it instead of `main`.

  Returns `(spec, runner, own_flags)`: the configured `PipelineSpec`, a `runner.Runner` over
  the plan (`runner.plan`), and the parsed `--pipeline_dir` / `--stages` / `--dry_run`.
  `commands` and `say` are passed on to the runner (see `main`).
  """
  own, rest = _parse_own_flags(argv)
  flags = gin_utils.parse_flags(rest, prog="prompt_tuning.pipeline",
                                description="Run a pipeline.")
  if flags.coordinator_address or flags.num_processes or flags.process_id is not None:
    raise PipelineError("A pipeline runs on one host; give multi-process flags to its stages "
                        "(Stage.flags) instead.")
  spec = _configured_pipeline(flags)
  _import_step_modules(spec.step_modules)
  selected = [s for s in (own.stages or "").split(",") if s]
  plan = plan_lib.make_plan(spec.stages, directory=own.pipeline_dir or spec.directory,
                            selected=selected)
  runner = runner_lib.Runner(plan, extra_args=_passed_on(flags), commands=commands, say=say)
  return spec, runner, own


def main(argv: Sequence[str], *, commands: Optional[Mapping[str, Sequence[str]]] = None,
         say: Optional[Callable[[str], None]] = None) -> Dict[str, Dict[str, Any]]:
  """Parses flags and the pipeline's gin, then runs (or with --dry_run, prints) the plan.

  Returns `{stage: outputs}` of the stages it ran or skipped ({} for a dry run). `commands`
  replaces the entry points' command lines (`{kind: argv prefix}`), for tests.
  """
  _, runner, own = plan_pipeline(argv, commands=commands, say=say)
  plan = runner.plan
  say = say or (lambda line: print(line, flush=True))
  if own.dry_run:
    say(runner.describe())
    return {}
  runner.check_needed_records()
  os.makedirs(plan.directory, exist_ok=True)
  import gin  # pylint: disable=g-import-not-at-top
  with open(os.path.join(plan.directory, CONFIG_FILE), "w") as f:
    f.write(gin.config_str())
  return runner.run()


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-pipeline` / `python -m prompt_tuning.pipeline`: errors print as one sentence, exit 1."""
  try:
    main(sys.argv[1:] if argv is None else argv)
  except (ValueError, FileNotFoundError) as error:
    lines = str(error).strip().splitlines()
    print(f"Error: {lines[0] if lines else type(error).__name__}", file=sys.stderr)
    raise SystemExit(1) from None


if __name__ == "__main__":
  console_main()
