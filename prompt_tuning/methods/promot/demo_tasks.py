"""The CPU demonstration's tasks: digit strings in several instruction formats, generated.

Each input is an instruction word and 3 to 7 digits; each format asks something else:

  first: 58213  -> 5        last: 58213  -> 3        second: 58213 -> 8
  count: 58213  -> 5        big: 58213   -> yes  (is the first digit 5 or more?)

The tiny base is trained on all five (`promot_demo_formats`); the task it is then adapted to is a
new classification format, `odd: 58213 -> yes` (is the last digit odd?), `promot_demo_odd`.
`promot_demo_<format>` holds one format alone (evaluation), `promot_demo_formats_eval` all five
as one evaluation mixture. Byte vocabulary, no files; fixed seeds per split and format.
"""
from __future__ import annotations

import functools
from typing import Dict, List

import numpy as np

from prompt_tuning.data import registry
from prompt_tuning.methods import demo_common

FORMATS = ("first", "last", "second", "count", "big")
TARGET_FORMAT = "odd"
TARGET_TASK = "promot_demo_odd"
TRAIN_MIXTURE = "promot_demo_formats"
EVAL_MIXTURE = "promot_demo_formats_eval"
SPLIT_SIZES = {"train": 4096, "validation": 256}
LENGTHS = {"inputs": 16, "targets": 4}


def answer(fmt: str, digits: str) -> str:
  if fmt == "first":
    return digits[0]
  if fmt == "last":
    return digits[-1]
  if fmt == "second":
    return digits[1]
  if fmt == "count":
    return str(len(digits))
  if fmt == "big":
    return "yes" if int(digits[0]) >= 5 else "no"
  if fmt == "odd":
    return "yes" if int(digits[-1]) % 2 else "no"
  raise ValueError(f"Unknown demo format {fmt!r}; expected one of {FORMATS + (TARGET_FORMAT,)}.")


def task_name(fmt: str) -> str:
  return f"promot_demo_{fmt}"


def generate(fmt: str, split: str) -> Dict[str, List[str]]:
  if split not in SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}.")
  seed = (FORMATS + (TARGET_FORMAT,)).index(fmt) * 10 + (1 if split == "train" else 2)
  rng = np.random.default_rng(seed)
  inputs, targets = [], []
  for _ in range(SPLIT_SIZES[split]):
    digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    inputs.append(f"{fmt}: {digits}")
    targets.append(answer(fmt, digits))
  return {"inputs": inputs, "targets": targets}


def register() -> None:
  """Registers the six tasks and both mixtures (idempotent)."""
  for fmt in FORMATS + (TARGET_FORMAT,):
    registry.add_task(task_name(fmt), source=demo_common.generated_source(
        functools.partial(generate, fmt), SPLIT_SIZES), **demo_common.text_task_kwargs())
  registry.add_mixture(TRAIN_MIXTURE, [task_name(f) for f in FORMATS], default_rate=1.0)
  registry.add_mixture(EVAL_MIXTURE, [task_name(f) for f in FORMATS], default_rate=1.0)


register()
