"""Print a task's (or mixture's) splits and a few processed examples, as text and as tokens.

  python -m prompt_tuning.data.show super_glue_rte_v102 --split validation --num_examples 3
  python -m prompt_tuning.data.show natural_questions_open_reader_v100 --inputs_length 512
  python -m prompt_tuning.data.show p3_super_glue_rte_GPT_3_style --p3_dir gs://.../P3/data
  python -m prompt_tuning.data.show smoke_last_digit --module prompt_tuning.smoke_data.tasks

Reading a TFDS task needs its data (prepared locally or on GCS, see TFDS_DATA_DIR); when it is
not prepared, `show` says so in one sentence instead of trying to download it.
"""
import argparse
import importlib
import sys
from typing import Any, List, Optional, TextIO

import numpy as np

from prompt_tuning.engine import quiet


def inspection_view(dataset):
  """The dataset without tf.data's graph optimisations and autotuning.

  Those pay off over long runs but dominate the cost of reading a handful of examples
  (iterator creation drops from about 0.5 s to 0.1 s per pipeline on a small CPU).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.experimental_optimization.apply_default_optimizations = False
  options.autotune.enabled = False
  return dataset.with_options(options)


def _format_value(value: Any) -> str:
  if isinstance(value, bytes):
    return repr(value.decode("utf-8"))
  if isinstance(value, np.ndarray) and value.dtype == object:
    return repr([v.decode("utf-8") if isinstance(v, bytes) else v for v in value.tolist()])
  if isinstance(value, np.ndarray):
    return str(value.tolist())
  return repr(value.item() if isinstance(value, np.generic) else value)


def describe(name: str, *, split: Optional[str], num_examples: int,
             sequence_length: Optional[dict], out: TextIO) -> None:
  """Writes the provider's splits and `num_examples` processed examples of `split` to `out`."""
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import availability  # pylint: disable=g-import-not-at-top
  provider = seqio.get_mixture_or_task(name)
  if isinstance(provider, seqio.Mixture):
    out.write(f"mixture {name}: {len(provider.tasks)} tasks\n")
    for task in provider.tasks:
      out.write(f"  {task.name}\n")
  else:
    out.write(f"task {name}\n  source: {provider.source!r}\n")
  splits = list(provider.splits)
  out.write(f"  splits: {', '.join(splits)}\n")
  split = split or ("validation" if "validation" in splits else splits[0])
  if split not in splits:
    raise ValueError(f"{name} has no split {split!r}; it has {splits}.")
  if num_examples <= 0:
    return
  availability.check_prepared(provider)
  dataset = provider.get_dataset(sequence_length=sequence_length, split=split, shuffle=False)
  for i, example in enumerate(inspection_view(dataset.take(num_examples)).as_numpy_iterator()):
    out.write(f"\nexample {i} ({split})\n")
    for key in sorted(example):
      out.write(f"  {key}: {_format_value(example[key])}\n")


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("name", help="a registered task or mixture name")
  parser.add_argument("--split", default=None, help="default: validation if present")
  parser.add_argument("--num_examples", type=int, default=3)
  parser.add_argument("--inputs_length", type=int, default=None)
  parser.add_argument("--targets_length", type=int, default=None)
  parser.add_argument("--p3_dir", default=None, help="register P3 tasks from this folder")
  parser.add_argument("--module", action="append", default=[],
                      help="a Python module to import first for its task registrations, e.g. "
                           "prompt_tuning.smoke_data.tasks (repeatable)")
  args = parser.parse_args(argv)

  quiet.quiet_libraries()
  import seqio  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top,unused-import  (registers everything)
  for module in args.module:
    try:
      importlib.import_module(module)
    except ImportError as error:
      out.write(f"error: cannot import task module {module!r}: {error}.\n")
      return 2
  if args.p3_dir:
    from tasks import p3  # pylint: disable=g-import-not-at-top
    p3.register(data_dir=args.p3_dir)
  if args.name not in seqio.TaskRegistry.names() and args.name not in seqio.MixtureRegistry.names():
    out.write(f"error: {args.name!r} is not a registered task or mixture.\n")
    return 2
  lengths = None
  if args.inputs_length or args.targets_length:
    lengths = {"inputs": args.inputs_length, "targets": args.targets_length}
  try:
    describe(args.name, split=args.split, num_examples=args.num_examples,
             sequence_length=lengths, out=out)
  except ValueError as error:  # an unknown split, data not prepared
    out.write(f"error: {str(error).splitlines()[0]}\n")
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
