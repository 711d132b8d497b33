"""`{stage.output}` references: where a stage reads an earlier stage's outputs.

A reference may stand anywhere inside a binding value, a gin-file name, a flag or a Python
step's input (strings, and strings inside lists, dicts and `Literal`s). Gin's own braces (dict
literals like `{'inputs': 16}`) never match: a reference is exactly `{identifier.identifier}`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, List, Tuple

from prompt_tuning.pipelines.stages import Literal

REFERENCE = re.compile(r"\{([A-Za-z_]\w*)\.([A-Za-z_]\w*)\}")

Lookup = Callable[[str, str], Any]  # (stage, output) -> value


def references(value: Any) -> List[Tuple[str, str]]:
  """Every `(stage, output)` named in `value`, in order of appearance."""
  if isinstance(value, str):
    return [(m.group(1), m.group(2)) for m in REFERENCE.finditer(value)]
  if isinstance(value, Literal):
    return references(value.value)
  if isinstance(value, (list, tuple)):
    return [ref for item in value for ref in references(item)]
  if isinstance(value, dict):
    return [ref for item in value.values() for ref in references(item)]
  return []


def substitute(value: Any, lookup: Lookup, *, textual: bool) -> Any:
  """`value` with each reference replaced by `lookup(stage, output)`.

  Args:
    value: a string, or lists / tuples / dicts / Literals holding strings (other values pass
      through).
    lookup: returns an output's value.
    textual: True for command-line text (every value becomes text, e.g. a path or `12`);
      False for Python inputs, where a string that is exactly one reference becomes the output's
      own value (a number stays a number, a list a list).
  """
  if isinstance(value, str):
    whole = REFERENCE.fullmatch(value)
    if whole and not textual:
      return lookup(whole.group(1), whole.group(2))
    return REFERENCE.sub(lambda m: str(lookup(m.group(1), m.group(2))), value)
  if isinstance(value, Literal):
    return Literal(substitute(value.value, lookup, textual=textual))
  if isinstance(value, (list, tuple)):
    return type(value)(substitute(v, lookup, textual=textual) for v in value)
  if isinstance(value, dict):
    return {k: substitute(v, lookup, textual=textual) for k, v in value.items()}
  return value


def text(stage: str, output: str) -> str:
  return "{%s.%s}" % (stage, output)
