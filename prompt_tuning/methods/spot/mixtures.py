"""The top-k sources' mixture for targeted transfer (c), registered inside the training run.

Retrieval names its sources only once the target's short run is done, so the mixture cannot be
registered in a task module ahead of time. A run file binds instead

  import prompt_tuning.methods.spot.mixtures
  MIXTURE_OR_TASK_NAME = @spot.topk_mixture()
  spot.topk_mixture.tasks = ['glue_mnli_v200', ...]     # the retrieve step's mixture_tasks

and gin calls `topk_mixture` when the run is configured: it imports the task module, registers
an examples-proportional mixture (K = 2^19, as SPoT's source mixtures) and returns its name.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
from typing import Optional, Sequence

import gin
import seqio

from prompt_tuning.data import registry

MIXTURE_MAXIMUM = 2 ** 19  # SPoT's examples-proportional cap K
PREFIX = "spot_topk_mixture_"


def mixture_name(tasks: Sequence[str]) -> str:
  """A stable name for the mixture of `tasks` (the same tasks in any order give one name)."""
  digest = hashlib.sha256("\n".join(sorted(tasks)).encode()).hexdigest()[:12]
  return PREFIX + digest


def topk_mixture(*, tasks: Sequence[str], module: Optional[str] = None,
                 maximum: int = MIXTURE_MAXIMUM) -> str:
  """Registers the examples-proportional mixture of `tasks` (after importing `module`, which
  registers them); returns its name. A single task is returned as it is."""
  tasks = list(dict.fromkeys(tasks))
  if not tasks:
    raise ValueError("The top-k mixture needs at least one task; retrieval returned none.")
  if module:
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise ValueError(f"Cannot import task module {module!r}: {error}.") from None
  unknown = [t for t in tasks if t not in seqio.TaskRegistry.names()]
  if unknown:
    raise ValueError(f"Top-k mixture task {unknown[0]!r} is not registered (module {module!r}).")
  if len(tasks) == 1:
    return tasks[0]
  name = mixture_name(tasks)
  registry.add_mixture(name, tasks, default_rate=functools.partial(
      seqio.mixing_rate_num_examples, maximum=maximum))
  return name


try:
  gin.external_configurable(topk_mixture, module="spot")
except ValueError:  # registered already in this process
  pass
