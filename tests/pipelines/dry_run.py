"""Shared helpers for tests that inspect a pipeline without running it.

`plan` builds a pipeline's spec and runner as `python -m prompt_tuning.pipeline` does;
`parse_train_stage` / `parse_eval_stage` parse a resolved stage's command line into gin as
its entry point would; `gin_value` reads a parsed value through references and macros.
"""
from typing import Optional, Sequence

import gin

from prompt_tuning import pipeline as pipeline_lib
from prompt_tuning.engine import gin_utils


def plan(argv: Sequence[str]):
  """`(spec, runner, own_flags)` of the pipeline `argv` names (see pipeline.plan_pipeline)."""
  return pipeline_lib.plan_pipeline(argv)


def stages(runner):
  """`{name: stage}` of a runner's plan."""
  return {s.name: s for s in runner.plan.stages}


def parse_stage(args: Sequence[str], entry: Optional[str] = None) -> None:
  """Parses a stage's command line (files, then bindings) into a cleared gin config.

  `entry` ('train' or 'evaluate') also registers that entry point's function first, as the
  entry point itself does; None registers only the library's configurables.
  """
  flags = gin_utils.parse_flags(list(args), prog="test", description="test")
  gin.clear_config()
  gin_utils.register_configurables()
  if entry == "train":
    from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
    gin_utils.configurable_entry(train_lib.train, "train")
  elif entry == "evaluate":
    from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
    gin_utils.configurable_entry(eval_lib.evaluate, "evaluate")
  elif entry is not None:
    raise ValueError(f"Unknown entry {entry!r}; expected 'train', 'evaluate' or None.")
  gin_utils.parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings)


def parse_train_stage(args: Sequence[str]) -> None:
  """Parses a train stage's command line like the train entry point."""
  parse_stage(args, "train")


def parse_eval_stage(args: Sequence[str]) -> None:
  """Parses an eval stage's command line like the eval entry point."""
  parse_stage(args, "evaluate")


def gin_value(name: str):
  """The value bound to `name`, with `@f()` references called and macros followed."""
  value = gin.query_parameter(name)
  while isinstance(value, gin.config.ConfigurableReference) and value.evaluate:
    value = value.scoped_configurable_fn()
  if isinstance(value, gin.config.ConfigurableReference):  # a macro
    value = gin_value(f"%{value.name}")
  return value
