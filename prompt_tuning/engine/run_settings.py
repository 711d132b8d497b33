"""A trained run's model and prompt shapes, for evaluating or inferring with the run.

A run folder holds the parameters of the shapes it was trained with; an eval or infer command
that builds the model from the default gin files (a 100-token prompt, say) would not fit them.
The entry points therefore read the run's saved operative config (`<model_dir>/config.gin`)
and bind, before the command line's own bindings (which still win), the settings that fix
parameter shapes: the prompt's length and placement macros and the model architecture
(`MODEL/get_config.*`, the scope the model gin files give `network.get_config`).
"""
from __future__ import annotations

import ast
import os
from typing import List, Optional, Sequence

from prompt_tuning.engine import resume_check

CONFIG_FILE = "config.gin"
SHAPE_MACROS = ("PROMPT_LENGTH", "PROMPT_PLACEMENT", "NUM_PROMPTS")
MODEL_CONFIG_SCOPE = "MODEL/get_config."
# Architecture fields only: run-time settings (dropout, dtypes, kernels) stay the command's.
_NOT_SHAPES = ("dropout_rate", "dtype", "attention_impl", "mlp_impl", "remat_policy")


def run_folder(checkpoint_dir: str) -> str:
  """A run's model dir, given it or its `checkpoints/` folder."""
  path = os.path.abspath(checkpoint_dir)
  return os.path.dirname(path) if os.path.basename(path) == "checkpoints" else path


def shape_bindings(checkpoint_dir: str) -> List[str]:
  """`NAME=VALUE` bindings of the run's shape settings (empty without a saved config)."""
  path = os.path.join(run_folder(checkpoint_dir), CONFIG_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    settings = resume_check.parse_config(f.read())
  bindings = []
  for name, value in settings.items():
    literal = not isinstance(value, (resume_check._Macro, resume_check._Reference))  # pylint: disable=protected-access
    if name in SHAPE_MACROS and literal:
      bindings.append(f"{name}={value!r}")
    elif (name.startswith(MODEL_CONFIG_SCOPE) and literal
          and name[len(MODEL_CONFIG_SCOPE):] not in _NOT_SHAPES):
      bindings.append(f"{name}={value!r}")
  return bindings


def checkpoint_dir_from(argv: Sequence[str]) -> Optional[str]:
  """The CHECKPOINT_DIR a command line binds (`--gin.CHECKPOINT_DIR='...'`), if any."""
  found = None
  for arg in argv:
    for prefix in ("--gin.CHECKPOINT_DIR=", "--gin.evaluate.checkpoint_dir=",
                   "--gin.infer.checkpoint_dir="):
      if arg.startswith(prefix):
        try:
          found = ast.literal_eval(arg[len(prefix):])
        except (ValueError, SyntaxError):
          found = None
  return found if isinstance(found, str) else None


def with_run_shapes(argv: Sequence[str]) -> List[str]:
  """`argv` with the run's shape bindings placed before the command line's own bindings."""
  checkpoint_dir = checkpoint_dir_from(argv)
  if checkpoint_dir is None:
    return list(argv)
  inherited = [f"--gin.{binding}" for binding in shape_bindings(checkpoint_dir)]
  first_binding = next((i for i, a in enumerate(argv) if a.startswith("--gin.")
                        or a.startswith("--gin_bindings")), len(argv))
  return list(argv[:first_binding]) + inherited + list(argv[first_binding:])
