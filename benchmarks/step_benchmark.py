"""Prompt-tuning and full fine-tuning step speed, ours against Hugging Face PEFT, in one table.

Run from the repository root:

    python -m benchmarks.step_benchmark                  # small and base shapes
    python -m benchmarks.step_benchmark --shapes small   # one shape
    python -m benchmarks.step_benchmark --quick          # tiny shape, seconds; checks the plumbing

Each shape runs in a fresh subprocess that builds every method, then times them in rounds (one
step of each method per round, plus one matmul-peak sample per framework and dtype), so steps
and peaks all see the same background load. See benchmarks/README.md for the columns and how
FLOPs are counted.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from benchmarks import flops as flops_lib
from benchmarks import shapes as shapes_lib

# method name -> (framework, compute dtype, full fine-tuning)
METHODS = {
    "ours-fp32-prompt": ("ours", "float32", False),
    "ours-bf16-prompt": ("ours", "bfloat16", False),
    "ours-fp32-full": ("ours", "float32", True),
    "ours-bf16-full": ("ours", "bfloat16", True),
    "peft-fp32-prompt": ("peft", "float32", False),
    "peft-bf16-prompt": ("peft", "bfloat16", False),
}
DEFAULT_METHODS = ("ours-fp32-prompt", "ours-bf16-prompt", "ours-fp32-full", "peft-fp32-prompt")
BASELINE_METHOD = "peft-fp32-prompt"
RESULT_MARKER = "BENCHMARK_RESULT "
COLUMNS = ("shape", "method", "s/step", "steps/s", "tokens/s", "GFLOP/s", "MFU %",
           "cpu s/step", "RSS growth MB", "XLA MB", "vs PEFT")


# ------------------------------------------------------------------------------------------------
# The worker: one subprocess per shape.


def _build_ours(shape, methods: Sequence[str]) -> Dict[str, Any]:
  """Compiles our steps two at a time (compilation releases the GIL); they share parameters."""
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top
  params = jax_steps.random_params(shape)

  def build(method):
    _, dtype, full = METHODS[method]
    return jax_steps.build_step(shape, dtype=dtype, full_finetune=full, params=params)

  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    return dict(zip(methods, pool.map(build, methods)))


def _shape_worker(shape_name: str, methods: Sequence[str], *, warmup: int, steps: int,
                  threads: int, peak_size: int) -> Dict[str, Any]:
  """Builds and warms up every method of one shape, then times them in interleaved rounds.

  PEFT is built and warmed up first, alone, so the RSS growth over its warm-up step is neither
  disturbed nor hidden by memory that our steps freed earlier.
  """
  from benchmarks import jax_steps, measure  # pylint: disable=g-import-not-at-top
  shape = shapes_lib.get_shape(shape_name)
  runs: Dict[str, Callable[[], None]] = {}
  results: Dict[str, Dict[str, Any]] = {}

  def warm_up(method: str, run: Callable[[], None], xla_bytes: Optional[int]) -> None:
    warm = measure.time_steps(run, warmup=0, steps=max(warmup, 1))
    runs[method] = run
    results[method] = {"wall_s": [], "cpu_s": [], "rss_growth_bytes": warm.rss_delta_bytes,
                       "xla_bytes": xla_bytes}

  for method in [m for m in methods if METHODS[m][0] == "peft"]:
    from benchmarks import peft_steps  # pylint: disable=g-import-not-at-top
    warm_up(method, peft_steps.build_step(shape, dtype=METHODS[method][1], threads=threads,
                                          batch=jax_steps.random_batch(shape)), None)
  ours = [m for m in methods if METHODS[m][0] == "ours"]
  for method, step in _build_ours(shape, ours).items():
    warm_up(method, step.run, step.xla_bytes)

  peaks = [measure.MatmulPeak(framework, dtype, size=peak_size, threads=threads)
           for framework, dtype in sorted({METHODS[m][:2] for m in methods})]
  for peak in peaks:
    peak.sample(repeats=2)
  for _ in range(steps):
    for method in methods:
      timing = measure.time_steps(runs[method], warmup=0, steps=1)
      results[method]["wall_s"] += timing.wall_s
      results[method]["cpu_s"] += timing.cpu_s
    for peak in peaks:
      peak.sample()
  return {"methods": results,
          "peaks": {peak.name: [peak.best_flops, peak.side] for peak in peaks}}


def _spawn(job: Dict[str, Any]) -> Dict[str, Any]:
  """Runs `job` in a fresh interpreter and returns the JSON it reports."""
  command = [sys.executable, "-m", "benchmarks.step_benchmark", "--worker", json.dumps(job)]
  done = subprocess.run(command, capture_output=True, text=True, check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for line in done.stdout.splitlines():
    if line.startswith(RESULT_MARKER):
      return json.loads(line[len(RESULT_MARKER):])
  raise RuntimeError(f"The benchmark worker for shape {job['shape']!r} failed "
                     f"(exit {done.returncode}):\n{done.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------
# Table.


@dataclasses.dataclass
class Row:
  shape: shapes_lib.BenchShape
  method: str
  result: Dict[str, Any]
  peak_flops: Optional[float]

  @property
  def seconds(self) -> float:
    """Best timed step: background load only ever slows a step down."""
    return min(self.result["wall_s"])

  @property
  def flops(self) -> float:
    counts = flops_lib.step_flops(self.shape)
    return counts.full_step if METHODS[self.method][2] else counts.prompt_step


def _megabytes(value: Optional[float]) -> str:
  if value is None:
    return "-"
  return f"{value / 2**20:.1f}" if value < 10 * 2**20 else f"{value / 2**20:.0f}"


def format_table(rows: Sequence[Row]) -> str:
  """One line per row; columns as in `COLUMNS`."""
  baselines = {row.shape.name: row.seconds for row in rows if row.method == BASELINE_METHOD}
  lines = []
  for row in rows:
    rate = row.flops / row.seconds
    baseline = baselines.get(row.shape.name)
    lines.append((
        row.shape.name, row.method, f"{row.seconds:.4g}", f"{1 / row.seconds:.4g}",
        f"{row.shape.tokens_per_step / row.seconds:.0f}", f"{rate / 1e9:.4g}",
        f"{100 * rate / row.peak_flops:.3g}" if row.peak_flops else "-",
        f"{min(row.result['cpu_s']):.4g}", _megabytes(row.result["rss_growth_bytes"]),
        _megabytes(row.result["xla_bytes"]),
        "-" if baseline is None else f"{baseline / row.seconds:.2f}x"))
  widths = [max(len(str(cells[i])) for cells in [COLUMNS] + lines) for i in range(len(COLUMNS))]
  render = lambda cells: " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))
  return "\n".join([render(COLUMNS), "-+-".join("-" * w for w in widths)]
                   + [render(cells) for cells in lines])


def format_peaks(shape_name: str, peaks: Dict[str, Any]) -> str:
  parts = [f"{name} {value / 1e9:.1f} (n={side})" for name, (value, side) in sorted(peaks.items())]
  return f"Matmul peak GFLOP/s during the {shape_name} rows, best [n, n] @ [n, n]: " + ", ".join(
      parts)


# ------------------------------------------------------------------------------------------------
# Command line.


def _parse_list(text: str, known: Sequence[str], what: str) -> List[str]:
  items = [item.strip() for item in text.split(",") if item.strip()]
  unknown = [item for item in items if item not in known]
  if unknown or not items:
    raise ValueError(f"Unknown {what} {unknown or text!r}; expected a comma-separated subset of "
                     f"{', '.join(known)}.")
  return items


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="small,base", help="comma-separated: tiny,small,base")
  parser.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                      help=f"comma-separated subset of {', '.join(METHODS)}, or 'all'")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (rounds) per method")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
  parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
  parser.add_argument("--peak-size", type=int, default=2048, help="matmul peak side length")
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape, one timed step, small peak matmul: checks the plumbing")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.shapes, args.steps, args.warmup, args.peak_size = "tiny", 1, 1, 256
  args.shapes = _parse_list(args.shapes, shapes_lib.SHAPE_NAMES, "shapes")
  args.methods = list(METHODS) if args.methods == "all" else _parse_list(
      args.methods, tuple(METHODS), "methods")
  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}.")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  try:
    args = parse_args(argv)
  except ValueError as error:
    sys.exit(f"error: {error}")
  if args.worker:
    job = json.loads(args.worker)
    result = _shape_worker(job["shape"], job["methods"], warmup=job["warmup"],
                           steps=job["steps"], threads=job["threads"],
                           peak_size=job["peak_size"])
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return
  rows = []
  for shape_name in args.shapes:
    result = _spawn({"shape": shape_name, "methods": args.methods, "warmup": args.warmup,
                     "steps": args.steps, "threads": args.threads, "peak_size": args.peak_size})
    print(format_peaks(shape_name, result["peaks"]), flush=True)
    for method in args.methods:
      framework, dtype, _ = METHODS[method]
      peak = result["peaks"].get(f"{framework}-{dtype}", [None])[0]
      rows.append(Row(shapes_lib.get_shape(shape_name), method, result["methods"][method], peak))
  print(format_table(rows))


if __name__ == "__main__":
  main()
