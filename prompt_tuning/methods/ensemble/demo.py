"""CPU demonstration: 5 prompts on a tiny task, their ensemble, and a look inside one prompt.

  python -m prompt_tuning.methods.ensemble.demo [--work_dir DIR] [--prompt_steps 150]

1. The smoke job's frozen base: `byte_t5_tiny` trained from scratch on `smoke_skills`.
2. Five prompts (length 8) tuned on `smoke_last_digit` (the last digit, asked without an
   instruction), each with its own seed for the sampled-vocabulary initialisation and its own
   data order.
3. All five evaluated on the 256 validation examples in one batched pass: each prompt's
   accuracy, their mean and best, the majority vote and the score-averaged ensemble.
4. The first prompt's nearest vocabulary neighbours, its norms against the embedding table's,
   whether digits (the class labels) are among the neighbours, a similarity heatmap and the
   order ablations.

No download; about 5 minutes on 2 idle cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from prompt_tuning import smoke

NUM_PROMPTS = 5
DIGITS = ",".join(str(d) for d in range(10))


def prompt_run_args(*, model_dir: str, base_checkpoint: str, steps: int, seed: int) -> List[str]:
  """The smoke job's prompt run with its own initialisation seed and data order."""
  return smoke.prompt_args(model_dir=model_dir, base_checkpoint=base_checkpoint, steps=steps,
                           prompt_length=8) + [
      f"--gin.RANDOM_SEED={seed}", f"--gin.train/data.DatasetConfig.seed={100 + seed}",
      "--gin.train.run_eval_before_training=False"]


def shared_args(base_checkpoint: str) -> List[str]:
  return ["--model_gin=gin/models/byte_t5_tiny.gin", f"--base={base_checkpoint}",
          "--task_module=prompt_tuning.smoke_data.tasks", "--lengths=inputs:16,targets:4"]


def run(*, work_dir: Optional[str] = None, base_steps: int = 400, prompt_steps: int = 150,
        num_prompts: int = NUM_PROMPTS) -> List[str]:
  """Trains the base and the prompts in `work_dir`, then prints and returns the report."""
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import evaluate as ens  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.interpret import report  # pylint: disable=g-import-not-at-top
  start = time.time()
  work_dir = work_dir or tempfile.mkdtemp(prefix="prompt_ensemble_demo_")
  if os.path.isdir(work_dir) and os.listdir(work_dir):
    raise ValueError(f"Demo work dir {work_dir} is not empty; pass a new --work_dir.")
  base = train_lib.main(smoke.base_args(model_dir=os.path.join(work_dir, "base"),
                                        steps=base_steps))
  base_checkpoint = os.path.join(base.checkpoint_dir, str(base.step), "params")
  runs = []
  for seed in range(num_prompts):
    runs.append(os.path.join(work_dir, f"prompt_{seed}"))
    train_lib.main(prompt_run_args(model_dir=runs[-1], base_checkpoint=base_checkpoint,
                                   steps=prompt_steps, seed=seed))
  trained = time.time() - start
  lines = [f"== {num_prompts} prompts on {smoke.TARGET_TASK} (validation, accuracy %) =="]
  result = ens.main(shared_args(base_checkpoint) + [
      "--prompts", *runs, f"--task={smoke.TARGET_TASK}", "--batch_size=64",
      f"--output={os.path.join(work_dir, 'ensemble.json')}"])
  lines += ens.table_lines(result)
  lines.append(f"== inside {os.path.basename(runs[0])} ==")
  lines += report.main(shared_args(base_checkpoint) + [
      f"--prompt={runs[0]}", f"--out_dir={os.path.join(work_dir, 'interpret')}",
      f"--labels={DIGITS}", f"--task={smoke.TARGET_TASK}", "--batch_size=64"])
  lines.append(f"time: {trained:.0f} s training, {time.time() - start:.0f} s in all; "
               f"work dir {work_dir}")
  print("\n".join(["", "prompt ensemble demo report"] + lines), flush=True)
  return lines


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.ensemble.demo",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default=None)
  parser.add_argument("--base_steps", type=int, default=400)
  parser.add_argument("--prompt_steps", type=int, default=150)
  parser.add_argument("--num_prompts", type=int, default=NUM_PROMPTS)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  smoke._quiet_libraries()  # pylint: disable=protected-access
  return run(work_dir=args.work_dir, base_steps=args.base_steps,
             prompt_steps=args.prompt_steps, num_prompts=args.num_prompts)


if __name__ == "__main__":
  try:
    main()
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None
