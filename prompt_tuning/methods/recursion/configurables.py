"""Gin names of neural recursion, registered on import (a gin file says
`import prompt_tuning.methods.recursion.configurables`), so the engine never imports a method.

  recursion.LMConnectorLMModel, recursion.EncoderConnectorModel, recursion.Connector,
  recursion.recursion_groups, recursion.warmup_linear_decay, recursion.warmup_constant,
  recursion.lm_layer_prefix_map,
  recursion.text_files_lm_task, recursion.c4_lm_task
"""
import gin
import optax

from prompt_tuning.methods.recursion import lm_corpus  # noqa: F401  (registers its tasks)
from prompt_tuning.methods.recursion.connector import Connector, lm_layer_prefix_map
from prompt_tuning.methods.recursion.encdec import EncoderConnectorModel
from prompt_tuning.methods.recursion.model import LMConnectorLMModel, recursion_groups


def warmup_linear_decay(*, peak_value: float, total_steps: int,
                        warmup_fraction: float = 0.005) -> optax.Schedule:
  """Linear warm-up over `warmup_fraction` of `total_steps` to `peak_value`, then linear decay
  to 0 at `total_steps` (the paper's Connector schedule: 0.5% warm-up, linear decay)."""
  if total_steps < 1 or not 0.0 <= warmup_fraction < 1.0:
    raise ValueError(f"warmup_linear_decay needs total_steps >= 1 and warmup_fraction in [0, 1), "
                     f"got {total_steps} and {warmup_fraction}.")
  warmup = max(1, int(round(total_steps * warmup_fraction)))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_value, warmup),
       optax.linear_schedule(peak_value, 0.0, max(1, total_steps - warmup))], [warmup])


def warmup_constant(*, peak_value: float, total_steps: int,
                    warmup_fraction: float = 0.005) -> optax.Schedule:
  """Linear warm-up over `warmup_fraction` of `total_steps` to `peak_value`, then constant (the
  paper's prompt schedule for textual recursion: 0.5% warm-up, no decay)."""
  if total_steps < 1 or not 0.0 <= warmup_fraction < 1.0:
    raise ValueError(f"warmup_constant needs total_steps >= 1 and warmup_fraction in [0, 1), "
                     f"got {total_steps} and {warmup_fraction}.")
  warmup = max(1, int(round(total_steps * warmup_fraction)))
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_value, warmup), optax.constant_schedule(peak_value)],
      [warmup])


for _item in (LMConnectorLMModel, EncoderConnectorModel, Connector, recursion_groups,
              warmup_linear_decay, warmup_constant, lm_layer_prefix_map):
  try:
    gin.external_configurable(_item, module="recursion")
  except ValueError:  # registered already in this process
    pass
