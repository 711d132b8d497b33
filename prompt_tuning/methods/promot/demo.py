"""CPU demonstration: full fine-tuning vs ProMoT on a tiny model, the paper's table in small.

  python -m prompt_tuning.methods.promot.demo [--work_dir DIR] [--base_steps 1000]
      [--prompt_steps 300] [--tune_steps 300]

1. A tiny base (`byte_t5_tiny`, from scratch) learns five instruction formats on digit strings
   (`demo_tasks.py`: first / last / second digit, digit count, "is the first digit big").
2. It is adapted to a new classification format, `odd: 58213 -> yes`, two ways, each with the
   same stage-2 recipe (Adafactor 1e-3, label smoothing 0.1, `--tune_steps` steps):
   * full fine-tuning (`gin/runs/finetune.gin` + `gin/methods/promot/runs/finetune.gin`);
   * ProMoT: a prompt tuned first with the base frozen (`runs/stage1.gin`), then the model tuned
     with that prompt frozen and prepended (`runs/stage2.gin`).
3. Every model is evaluated on the target format (ProMoT with its prompt) and on the five
   pretraining formats (ProMoT with the prompt removed: the same weights, no input hook), and
   the comparison table of `report.py` is printed (accuracy, %).

All runs go through the project's train and eval entry points with the ProMoT gin files, in this
process (no download). On two idle cores it takes a few minutes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from prompt_tuning.methods import demo_common
from prompt_tuning.methods.promot import demo_tasks
from prompt_tuning.methods.promot import evaluation
from prompt_tuning.methods.promot import report

MODULE = "prompt_tuning.methods.promot.demo_tasks"
MODEL_GIN = demo_common.MODEL_GIN
PROMPT_GIN = "gin/prompts/random_uniform.gin"
PROMPT_LENGTH = 8
TARGET_METRIC = f"{demo_tasks.TARGET_TASK}/accuracy"


def _common(model_dir: str, task: str, steps: int) -> Dict[str, object]:
  return demo_common.run_bindings(model_dir, task, MODULE, demo_tasks.LENGTHS, steps)


def base_args(model_dir: str, steps: int) -> List[str]:
  return demo_common.base_args(model_dir, task=demo_tasks.TRAIN_MIXTURE, module=MODULE,
                               lengths=demo_tasks.LENGTHS, steps=steps)


def stage1_args(model_dir: str, base: str, steps: int) -> List[str]:
  files = [MODEL_GIN, PROMPT_GIN, "gin/runs/prompt_tuning.gin",
           "gin/methods/promot/runs/stage1.gin", "gin/runs/smoke.gin"]
  return demo_common.gin_args(files, {
      **_common(model_dir, demo_tasks.TARGET_TASK, steps), "INITIAL_CHECKPOINT_PATH": repr(base),
      "BEST_METRIC": repr(TARGET_METRIC), "PROMPT_LENGTH": PROMPT_LENGTH,
      "DECODER_PARAMS": "None", "CHECKPOINT_PERIOD": max(1, steps // 3),
      "EVAL_PERIOD": max(1, steps // 3), "optimizers.adafactor.learning_rate": 0.3})


def stage2_args(model_dir: str, base: str, prompt_checkpoint: str, steps: int) -> List[str]:
  files = [MODEL_GIN, PROMPT_GIN, "gin/runs/prompt_tuning.gin",
           "gin/methods/promot/runs/stage2.gin", "gin/runs/smoke.gin"]
  return demo_common.gin_args(files, {
      **_common(model_dir, demo_tasks.TARGET_TASK, steps), "INITIAL_CHECKPOINT_PATH": repr(base),
      "PROMPT_CHECKPOINT": repr(prompt_checkpoint), "BEST_METRIC": repr(TARGET_METRIC),
      "PROMPT_LENGTH": PROMPT_LENGTH, "DECODER_PARAMS": "None"})


def finetune_args(model_dir: str, base: str, steps: int) -> List[str]:
  files = [MODEL_GIN, "gin/runs/finetune.gin", "gin/methods/promot/runs/finetune.gin",
           "gin/runs/smoke.gin"]
  return demo_common.gin_args(files, {
      **_common(model_dir, demo_tasks.TARGET_TASK, steps), "INITIAL_CHECKPOINT_PATH": repr(base),
      "BEST_METRIC": repr(TARGET_METRIC), "DECODER_PARAMS": "None"})


def _evaluate(run_dir: str, output_dir: str, task: str, *, prompt: bool) -> Dict[str, float]:
  from prompt_tuning import eval as eval_lib  # pylint: disable=g-import-not-at-top
  entry = evaluation.EvalEntry(task=task, module=MODULE, lengths=demo_tasks.LENGTHS)
  command = evaluation.eval_command(
      entry=entry, run_dir=run_dir, step=None, output_dir=output_dir,
      gin_files=[MODEL_GIN] + ([PROMPT_GIN] if prompt else []),
      bindings={"PROMPT_LENGTH": PROMPT_LENGTH, "BATCH_SIZE": 128}, prompt=prompt)
  return eval_lib.main(command[3:])  # the argv after `python -m prompt_tuning.eval`


def _train(args: List[str]):
  return demo_common.train(args)[1]


def run(*, work_dir: Optional[str] = None, base_steps: int = 1000, prompt_steps: int = 300,
        tune_steps: int = 300) -> str:
  """Runs every stage and evaluation in `work_dir`; returns the printed table."""
  start = time.time()
  work_dir = work_dir or tempfile.mkdtemp(prefix="promot_demo_")
  if os.path.isdir(work_dir) and os.listdir(work_dir):
    raise ValueError(f"Demo work dir {work_dir} is not empty; pass a new --work_dir.")
  d = lambda name: os.path.join(work_dir, name)
  base = _train(base_args(d("base"), base_steps))
  stage1 = _train(stage1_args(d("stage1"), base["checkpoint"], prompt_steps))
  _train(stage2_args(d("stage2"), base["checkpoint"], stage1["checkpoint"], tune_steps))
  _train(finetune_args(d("finetune"), base["checkpoint"], tune_steps))

  target, others = demo_tasks.TARGET_TASK, demo_tasks.EVAL_MIXTURE
  ev = lambda run_dir, name, task, prompt: _evaluate(run_dir, d(f"eval/{name}"), task,
                                                     prompt=prompt)
  base_metrics = ev(d("base"), "base_all", others, False)
  rows = [
      ("pretrained", {"with_prompt": {},
                      "without_prompt": {**ev(d("base"), "base_target", target, False),
                                         **base_metrics}}),
      ("fine-tuning", {"with_prompt": {},
                       "without_prompt": {**ev(d("finetune"), "ft_target", target, False),
                                          **ev(d("finetune"), "ft_all", others, False)}}),
      ("prompt tuning (stage 1)", {"with_prompt": ev(d("stage1"), "pt_target", target, True),
                                   "without_prompt": base_metrics}),
      ("ProMoT", {"with_prompt": ev(d("stage2"), "promot_target", target, True),
                  "without_prompt": ev(d("stage2"), "promot_all", others, False)}),
  ]
  columns = [(fmt, f"{demo_tasks.task_name(fmt)}/accuracy") for fmt in demo_tasks.FORMATS]
  table = report.format_table(report.table(rows, target=TARGET_METRIC, columns=columns))
  lines = [
      "ProMoT CPU demonstration (byte_t5_tiny; accuracy %, 256 held-out examples per format)",
      f"  base: {base_steps} steps on 5 formats; target format 'odd: <digits> -> yes/no'",
      f"  stage 1 (prompt, base frozen): {prompt_steps} steps, best step {stage1['step']}; "
      f"stage 2 and fine-tuning: {tune_steps} steps each",
      "  other formats: ProMoT evaluated with the prompt removed (the same weights, no hook)",
      "", table, "", f"  time: {time.time() - start:.0f} s, runs in {work_dir}"]
  text = "\n".join(lines)
  print(text, flush=True)
  return text


def main(argv: Sequence[str]) -> str:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.promot.demo",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default=None)
  parser.add_argument("--base_steps", type=int, default=1000)
  parser.add_argument("--prompt_steps", type=int, default=300)
  parser.add_argument("--tune_steps", type=int, default=300)
  args = parser.parse_args(list(argv))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import absl.logging  # pylint: disable=g-import-not-at-top
  absl.logging.set_verbosity(absl.logging.ERROR)
  return run(work_dir=args.work_dir, base_steps=args.base_steps,
             prompt_steps=args.prompt_steps, tune_steps=args.tune_steps)


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
