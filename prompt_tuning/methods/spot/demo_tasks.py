"""Tiny generated task families for SPoT's CPU pipelines, tests and demonstration (no files).

Every input is a string of digits; each *skill* reads something else from it:

  first  -> the first digit      58213 -> 5        last   -> the last digit   58213 -> 3
  second -> the second digit     58213 -> 8        count  -> how many digits  58213 -> 5
  max    -> the largest digit    58213 -> 8

`spot_demo_base` is what the tiny frozen model is pretrained on: every skill announced by its
instruction word (`last: 58213 -> 3`). The prompt-tuning tasks carry *no* instruction, so the
learned prompt has to stand in for it, in two domains that differ in the digit strings' length:

  spot_demo_<skill>_a   3 to 5 digits: the source tasks
  spot_demo_<skill>_b   5 to 7 digits: the target tasks

So `spot_demo_last_a` is the related source of the target `spot_demo_last_b`, and the other
skills' sources are unrelated to it. `spot_demo_sources` mixes the sources of SOURCE_SKILLS
examples-proportionally (K = 2^19, as SPoT's mixtures), the generic-transfer source of the tiny
pipelines. Byte vocabulary; a fixed seed per task and split, so every process sees the same data.
"""
from __future__ import annotations

import functools
from typing import Dict, List

import numpy as np
import seqio

from prompt_tuning.data import registry
from prompt_tuning.methods import demo_common

SKILLS = ("first", "last", "second", "count", "max")
SOURCE_SKILLS = ("last", "second", "count", "max")  # the prompt-tuning families
DOMAINS = {"a": (3, 5), "b": (5, 7)}  # digit-string lengths, inclusive
BASE_TASK = "spot_demo_base"
SOURCES_MIXTURE = "spot_demo_sources"
SPLIT_SIZES = {"train": 2048, "validation": 256}
BASE_SPLIT_SIZES = {"train": 8192, "validation": 256}
LENGTHS = {"inputs": 16, "targets": 4}
MODULE = "prompt_tuning.methods.spot.demo_tasks"
MIXTURE_MAXIMUM = 2 ** 19


def answer(skill: str, digits: str) -> str:
  if skill == "first":
    return digits[0]
  if skill == "last":
    return digits[-1]
  if skill == "second":
    return digits[1]
  if skill == "count":
    return str(len(digits))
  if skill == "max":
    return max(digits)
  raise ValueError(f"Unknown demo skill {skill!r}; expected one of {SKILLS}.")


def task_name(skill: str, domain: str) -> str:
  return f"spot_demo_{skill}_{domain}"


def _digits(rng: np.random.Generator, low: int, high: int) -> str:
  return "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(low, high + 1))))


def generate(skill: str, domain: str, split: str) -> Dict[str, List[str]]:
  """One uninstructed task's split: `{'inputs': ['58213', ...], 'targets': ['3', ...]}`."""
  if split not in SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}.")
  if domain not in DOMAINS:
    raise ValueError(f"Unknown demo domain {domain!r}; expected one of {sorted(DOMAINS)}.")
  seed = 1000 + 100 * SKILLS.index(skill) + 10 * sorted(DOMAINS).index(domain) + \
      (1 if split == "train" else 2)
  rng = np.random.default_rng(seed)
  digits = [_digits(rng, *DOMAINS[domain]) for _ in range(SPLIT_SIZES[split])]
  return {"inputs": digits, "targets": [answer(skill, d) for d in digits]}


def generate_base(split: str) -> Dict[str, List[str]]:
  """The pretraining data: every skill with its instruction word, 3 to 7 digits."""
  if split not in BASE_SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r}; expected one of {sorted(BASE_SPLIT_SIZES)}.")
  rng = np.random.default_rng(7 if split == "train" else 8)
  inputs, targets = [], []
  for _ in range(BASE_SPLIT_SIZES[split]):
    skill, digits = SKILLS[int(rng.integers(len(SKILLS)))], _digits(rng, 3, 7)
    inputs.append(f"{skill}: {digits}")
    targets.append(answer(skill, digits))
  return {"inputs": inputs, "targets": targets}


def register() -> None:
  """Registers the base task, every skill in both domains and the sources' mixture."""
  common = demo_common.text_task_kwargs()
  source = demo_common.generated_source
  registry.add_task(BASE_TASK, source=source(generate_base, BASE_SPLIT_SIZES), **common)
  for skill in SKILLS:
    for domain in DOMAINS:
      registry.add_task(task_name(skill, domain), source=source(
          functools.partial(generate, skill, domain), SPLIT_SIZES), **common)
  registry.add_mixture(SOURCES_MIXTURE, [task_name(s, "a") for s in SOURCE_SKILLS],
                       default_rate=functools.partial(seqio.mixing_rate_num_examples,
                                                      maximum=MIXTURE_MAXIMUM))


register()
