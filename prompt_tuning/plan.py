r"""Plan entry point: `python -m prompt_tuning.plan <train's gin flags> --topology=v3-32`.

Compiles the run's train step (and, with `--steps=train,eval,decode`, its evaluation and
decoding functions) ahead of time for a TPU slice with the real TPU compiler, on abstract
parameters and no data, and prints per-device memory (frozen / trainable parameters, optimizer
state, batch; the compiler's arguments, outputs, temporaries, generated code), the step's FLOPs
and whether it fits the device's HBM (see `engine/planning.py`). No TPU is needed; libtpu is
(`pip install .[tpu]`). `--topology=cpu:N` compiles for N XLA:CPU devices of this host instead.

It reads the same gin files and bindings as `prompt_tuning.train`; macros a run file requires
that a plan does not use (MODEL_DIR, INITIAL_CHECKPOINT_PATH, MIXTURE_OR_TASK_NAME) may be left
unset. Nothing is read from the checkpoint, the task or the model dir, and nothing is written.

  python -m prompt_tuning.plan \
    --gin_file=gin/models/t5_1_1_xxl.gin --gin_file=gin/prompts/random_uniform.gin \
    --gin_file=gin/runs/prompt_tuning.gin --gin_file=gin/partitioning/v3_32.gin \
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 512, 'targets': 32}" --topology=v3-32
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

# Macros of the run files that name things a plan never opens.
UNUSED_REQUIRED = {"MODEL_DIR": "'/nonexistent/plan'",
                   "INITIAL_CHECKPOINT_PATH": "'/nonexistent/base_checkpoint'",
                   "MIXTURE_OR_TASK_NAME": "'unused_by_the_plan'"}


def _plan_flags(argv: Sequence[str]):
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top

  class Parser(argparse.ArgumentParser):
    def error(self, message):
      raise gin_utils.ConfigError(f"Bad command line: {message}.")

  parser = Parser(prog="prompt_tuning.plan", add_help=False)
  parser.add_argument("--topology", required=True,
                      help="v3-N, v4-N, v5e-N (e.g. v3-32), a layout such as v4:2x2x4, or cpu:N.")
  parser.add_argument("--steps", default="train",
                      help="Comma-separated steps to compile: train, eval, decode ('' compiles "
                           "nothing and prints the arguments' account only).")
  parser.add_argument("--hbm_gib", type=float, default=None,
                      help="Memory per device to check against (default: the device's HBM).")
  parser.add_argument("--json", default=None,
                      help="Also write the plan's numbers (bytes per device) to this JSON file.")
  return parser.parse_known_args(list(argv))


def main(argv: Sequence[str]):
  """Parses flags and gin, compiles for the topology, prints the plan and returns it."""
  # pylint: disable=g-import-not-at-top
  import gin
  from prompt_tuning.engine import gin_utils, host_memory, topologies
  # pylint: enable=g-import-not-at-top
  own, rest = _plan_flags(argv)
  topology = topologies.parse(own.topology)  # an unknown topology fails before anything else
  steps = tuple(s.strip() for s in own.steps.split(",") if s.strip())
  flags = gin_utils.parse_flags(rest, prog="prompt_tuning.plan",
                                description="Plan a run's memory on a TPU slice.")
  gin_utils.check_gin_early(flags, defaults=UNUSED_REQUIRED)
  host_memory.configure(flags.host_allocator)
  topologies.prepare(topology)  # before JAX starts
  from prompt_tuning.engine import planning, quiet, reporting  # pylint: disable=g-import-not-at-top
  quiet.quiet_libraries()
  reporting.configure_logging()
  gin_utils.register_configurables()
  gin.clear_config()
  gin_utils.parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings,
                      gin_search_paths=flags.gin_search_paths, strict=flags.strict_gin,
                      defaults=UNUSED_REQUIRED)
  try:
    bindings = gin.get_bindings("train")
  except (ValueError, TypeError) as error:
    first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else "error"
    raise gin_utils.ConfigError(f"The train configuration cannot be built: {first}.") from None
  missing = [name for name in ("model", "train_dataset_cfg", "optimizer") if name not in bindings]
  if missing:
    raise gin_utils.ConfigError(f"The gin files bind no train.{missing[0]}; give the same gin "
                                "files as for prompt_tuning.train.")
  bindings.setdefault("learning_rate_fn", gin_utils.learning_rate_fn("train.optimizer"))
  hbm = None if own.hbm_gib is None else int(own.hbm_gib * (1 << 30))
  plan = planning.plan_run(topology=topology, steps=steps, hbm_bytes=hbm, **bindings)
  print(plan.table())
  if own.json:
    with open(own.json, "w") as f:
      json.dump(plan.as_dict(), f, indent=1)
  return plan


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-plan` / `python -m prompt_tuning.plan`: errors print as one sentence, exit 1."""
  from prompt_tuning.engine import gin_utils  # pylint: disable=g-import-not-at-top
  gin_utils.console(main, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
  console_main()
