"""The CPU smoke job: prompt-tune a tiny frozen model end to end, with no download.

  python -m prompt_tuning.smoke [--work_dir DIR] [--base_steps 400] [--prompt_steps 150]

Two runs of the real train entry point, composed from the project's gin files:

1. Base: `byte_t5_tiny` (a 0.25M-parameter T5 1.1-style model over bytes) is trained from
   scratch, all parameters, on `smoke_skills`: digit strings with an instruction ("first:",
   "last:", "second:") or none (then the answer is the first digit).
2. Prompt: that checkpoint is restored *frozen* and an 8-vector prompt is tuned on
   `smoke_last_digit`: the last digit, asked without any instruction. The frozen model alone
   answers the first digit there (right ~10% of the time, chance for ten digits); the learned
   prompt has to stand in for the missing instruction.

The SeqIO Evaluator measures held-out accuracy before and after prompt tuning; the prompt is
exported as `.npy` and as a PEFT adapter; a short report is printed. See
prompt_tuning/smoke_data/tasks.py for the data.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

CHANCE_ACCURACY = 10.0  # percent: ten possible digits
TARGET_TASK = "smoke_last_digit"
BASE_MODEL_GIN = "gin/models/byte_t5_tiny.gin"
BASE_TASK = "smoke_skills"


@dataclasses.dataclass
class SmokeReport:
  """What the smoke job measured (accuracies in percent)."""

  base_loss: tuple
  base_accuracy: float
  prompt_loss: tuple
  accuracy_before: float
  accuracy_after: float
  seconds: float
  base_checkpoint: str
  prompt_dir: str
  exports: List[str]
  commands: List[str] = dataclasses.field(default_factory=list)
  hf_base: Optional[str] = None

  def lines(self) -> List[str]:
    npy = [p for p in self.exports if p.endswith(".npy")]
    peft = [p for p in self.exports if not p.endswith(".npy")]
    return [
        "prompt_tuning smoke report",
        f"  base model (all parameters, '{BASE_TASK}'): loss {self.base_loss[0]:.3f} -> "
        f"{self.base_loss[1]:.3f}, held-out accuracy {self.base_accuracy:.1f}%",
        f"  prompt tuning (model frozen, '{TARGET_TASK}'): loss {self.prompt_loss[0]:.3f} -> "
        f"{self.prompt_loss[1]:.3f}",
        f"  held-out accuracy: {self.accuracy_before:.1f}% before -> {self.accuracy_after:.1f}% "
        f"after (chance {CHANCE_ACCURACY:.0f}%)",
        f"  time: {self.seconds:.0f} s",
        f"  frozen base checkpoint: {self.base_checkpoint}",
        f"  prompt run: {self.prompt_dir}",
        f"  prompt .npy: {npy[-1] if npy else 'none'}",
        f"  PEFT adapter: {peft[-1] if peft else 'none'}",
        f"  Hugging Face base (for the adapter): {self.hf_base or 'none'}",
    ] + (["  the same runs from the command line (run from the repository root):"]
         + [f"    {command}" for command in self.commands] if self.commands else [])


def _gin_args(files: Sequence[str], bindings: Dict[str, str]) -> List[str]:
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={v}" for k, v in bindings.items()]


def base_args(*, model_dir: str, steps: int) -> List[str]:
  """Command-line arguments of stage 1 (also printable as a `prompt_tuning.train` command)."""
  return _gin_args(
      [BASE_MODEL_GIN, "gin/runs/finetune.gin", "gin/runs/smoke.gin"],
      {"MODEL_DIR": repr(model_dir), "INITIAL_CHECKPOINT_PATH": "None",
       "MIXTURE_OR_TASK_NAME": repr(BASE_TASK), "TRAIN_STEPS": str(steps),
       "EVAL_PERIOD": str(steps), "CHECKPOINT_PERIOD": str(steps),
       # From scratch, Adam trains the tiny model faster than fine-tuning Adafactor.
       "train.optimizer": "@optimizers.adam()", "optimizers.adam.learning_rate": "3e-3"})


def prompt_args(*, model_dir: str, base_checkpoint: str, steps: int,
                prompt_length: int) -> List[str]:
  """Command-line arguments of stage 2: the paper's Adafactor settings, a sampled-vocab init."""
  return _gin_args(
      ["gin/models/byte_t5_tiny.gin", "gin/prompts/sampled_vocabulary.gin",
       "gin/runs/prompt_tuning.gin", "gin/runs/smoke.gin"],
      {"MODEL_DIR": repr(model_dir), "INITIAL_CHECKPOINT_PATH": repr(base_checkpoint),
       "MIXTURE_OR_TASK_NAME": repr(TARGET_TASK), "TRAIN_STEPS": str(steps),
       "EVAL_PERIOD": str(steps), "CHECKPOINT_PERIOD": str(steps),
       "PROMPT_LENGTH": str(prompt_length),
       "PROMPT_VOCAB_POPULATION": "260",
       "train.run_eval_before_training": "True"})


def eval_args(*, prompt_dir: str, output_dir: str, prompt_length: int) -> List[str]:
  """Command-line arguments that evaluate the prompt run's latest step (`prompt_tuning.eval`)."""
  return _gin_args(
      ["gin/models/byte_t5_tiny.gin", "gin/prompts/prompt.gin", "gin/runs/eval.gin",
       "gin/runs/smoke.gin"],
      {"CHECKPOINT_DIR": repr(prompt_dir), "EVAL_OUTPUT_DIR": repr(output_dir),
       "MIXTURE_OR_TASK_NAME": repr(TARGET_TASK), "PROMPT_LENGTH": str(prompt_length)})


def _shell_quote(arg: str) -> str:
  """POSIX-shell quoting that keeps gin strings readable: `--gin.X="'value'"`."""
  name, equals, value = arg.partition("=")
  if shlex.quote(arg) == arg:
    return arg
  if equals and shlex.quote(name) == name and not any(c in value for c in '"$`\\!'):
    return f'{name}="{value}"'
  return shlex.quote(arg)


def command_line(module: str, args: Sequence[str]) -> str:
  """`python -m module args...`, quoted for a POSIX shell."""
  return " ".join(["python", "-m", module] + [_shell_quote(a) for a in args])


def _loss_range(history: List[Dict[str, float]]) -> tuple:
  losses = [h["loss"] for h in history if "loss" in h]
  return (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))


def _accuracy(model_dir: str, task: str, step: int) -> float:
  from prompt_tuning.engine import reporting  # pylint: disable=g-import-not-at-top
  path = os.path.join(model_dir, "metrics", f"{reporting.INFER_EVAL}.jsonl")
  for record in reversed(reporting.read_jsonl(path)):
    if record["step"] == step and f"{task}/accuracy" in record:
      return float(record[f"{task}/accuracy"])
  raise ValueError(f"No {task} accuracy at step {step} in {path}.")


def run(*, work_dir: Optional[str] = None, base_steps: int = 400, prompt_steps: int = 150,
        prompt_length: int = 8) -> SmokeReport:
  """Runs both stages in `work_dir` (a new temporary folder by default)."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import export_hf, train as train_lib
  from prompt_tuning.engine import hf_export
  # pylint: enable=g-import-not-at-top

  start = time.time()
  work_dir = work_dir or tempfile.mkdtemp(prefix="prompt_tuning_smoke_")
  if os.path.isdir(work_dir) and os.listdir(work_dir):
    raise ValueError(f"Smoke work dir {work_dir} is not empty; pass a new --work_dir.")
  base_dir, prompt_dir = os.path.join(work_dir, "base"), os.path.join(work_dir, "prompt")
  base_cli = base_args(model_dir=base_dir, steps=base_steps)
  base = train_lib.main(base_cli)
  base_checkpoint = os.path.join(base.checkpoint_dir, str(base.step), "params")
  # Exported before the prompt run, so its PEFT adapters name this folder as their base.
  hf_base = hf_export.export_checkpoint(
      config=export_hf.model_config([BASE_MODEL_GIN], []), checkpoint_path=base_checkpoint,
      directory=hf_export.default_directory(base_checkpoint))
  prompt_cli = prompt_args(model_dir=prompt_dir, base_checkpoint=base_checkpoint,
                           steps=prompt_steps, prompt_length=prompt_length)
  prompt = train_lib.main(prompt_cli)
  eval_cli = eval_args(prompt_dir=prompt_dir, output_dir=os.path.join(work_dir, "eval"),
                       prompt_length=prompt_length)
  return SmokeReport(
      base_loss=_loss_range(base.train_history),
      base_accuracy=_accuracy(base_dir, BASE_TASK, base.step),
      prompt_loss=_loss_range(prompt.train_history),
      accuracy_before=_accuracy(prompt_dir, TARGET_TASK, 0),
      accuracy_after=_accuracy(prompt_dir, TARGET_TASK, prompt.step),
      seconds=time.time() - start, base_checkpoint=base_checkpoint, prompt_dir=prompt_dir,
      exports=prompt.exports, hf_base=hf_base,
      commands=[command_line("prompt_tuning.train", base_cli),
                command_line("prompt_tuning.train", prompt_cli),
                command_line("prompt_tuning.eval", eval_cli)])


def shows_learning(report: SmokeReport) -> bool:
  """The signal the job must show: loss falls clearly, accuracy ends far above chance."""
  return (report.prompt_loss[1] < 0.7 * report.prompt_loss[0]
          and report.accuracy_after >= report.accuracy_before + 30
          and report.accuracy_after >= 4 * CHANCE_ACCURACY)


def main(argv: Sequence[str]) -> SmokeReport:
  """Parses flags, runs the job and prints its report."""
  parser = argparse.ArgumentParser(prog="prompt_tuning.smoke", description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default=None, help="new folder for both runs (default: temp)")
  parser.add_argument("--base_steps", type=int, default=400)
  parser.add_argument("--prompt_steps", type=int, default=150)
  parser.add_argument("--prompt_length", type=int, default=8)
  args = parser.parse_args(argv)
  from prompt_tuning.engine import quiet  # pylint: disable=g-import-not-at-top
  quiet.quiet_libraries()
  report = run(work_dir=args.work_dir, base_steps=args.base_steps,
               prompt_steps=args.prompt_steps, prompt_length=args.prompt_length)
  print("\n".join(report.lines()), flush=True)
  return report


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`pt-smoke` / `python -m prompt_tuning.smoke`: exit status 1 without a learning signal."""
  try:
    report = main(sys.argv[1:] if argv is None else argv)
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None
  if not shows_learning(report):
    print("Smoke job FAILED: prompt tuning showed no clear learning signal.", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
  console_main()
