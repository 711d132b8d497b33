"""Prompt-tuning and full fine-tuning step speed, ours against Hugging Face PEFT, in one table.

Run from the repository root:

    python -m benchmarks.step_benchmark                  # small and base shapes
    python -m benchmarks.step_benchmark --shapes small   # one shape
    python -m benchmarks.step_benchmark --quick          # tiny shape, seconds; checks the plumbing

Each framework runs in its own worker process, so neither one's threads, allocator state or
memory growth touch the other's measurements. The workers build and warm up their methods one
after the other, then take turns in lockstep rounds: one step of each method per round, plus
one matmul-peak sample per framework and dtype, while the other worker waits idle. Steps and
peaks thus see the same background load. See benchmarks/README.md for the columns and how
FLOPs are counted.

Host devices: `--host_devices N` splits our worker's CPU host into N XLA devices and runs our
steps data-parallel over them, as `python -m prompt_tuning.train --host_cpu_devices=N` trains
(see `prompt_tuning/engine/host_devices.py`). The default, 1, runs them on one device. PEFT
always runs as one PyTorch process with `--threads` intra-op threads.

Host allocator: our worker uses `--host_allocator` (default `reuse`, as the train/eval/infer
entry points do; see `prompt_tuning/engine/host_memory.py`); the PEFT worker uses
`--peft_host_allocator` (default `system`: PEFT as its users run it). Pass
`--peft_host_allocator=reuse` to give PEFT the same allocator policy.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from benchmarks import flops as flops_lib
from benchmarks import shapes as shapes_lib

# method name -> (framework, compute dtype, full fine-tuning)
METHODS = {
    "ours-fp32-prompt": ("ours", "float32", False),
    "ours-bf16-prompt": ("ours", "bfloat16", False),
    "ours-fp32-full": ("ours", "float32", True),
    "ours-bf16-full": ("ours", "bfloat16", True),
    # The bf16 prompt step given bf16 copies of its frozen kernels and embeddings, made once
    # (`jax_steps.make_step(frozen_compute_copies=True)`); the trainer does not do this yet.
    "ours-bf16-prompt-bf16frozen": ("ours", "bfloat16", False),
    "peft-fp32-prompt": ("peft", "float32", False),
    "peft-bf16-prompt": ("peft", "bfloat16", False),
}
DEFAULT_METHODS = ("ours-fp32-prompt", "ours-bf16-prompt", "ours-fp32-full", "peft-fp32-prompt")
REPLY_MARKER = "BENCHMARK_REPLY "  # worker lines the driver reads; anything else is library noise
COLUMNS = ("shape", "method", "s/step", "steps/s", "tokens/s", "GFLOP/s", "MFU %",
           "cpu s/step", "RSS growth MB", "XLA MB", "vs PEFT", "paired vs PEFT")


# ------------------------------------------------------------------------------------------------
# The worker: one subprocess per (shape, framework), driven over stdin/stdout one JSON line at a
# time.


def _build_ours(shape, methods: Sequence[str], host_devices: int = 1) -> Dict[str, Any]:
  """Compiles our steps; they share one set of parameters (one copy per device)."""
  from benchmarks import jax_steps  # pylint: disable=g-import-not-at-top
  params = jax_steps.random_params(shape)
  mesh = None
  if host_devices > 1:
    mesh = jax_steps.data_parallel_mesh(host_devices)
    params = jax_steps.replicate(params, mesh)  # once, so the steps share one copy per device
  steps = {}
  for method in methods:
    _, dtype, full = METHODS[method]
    steps[method] = jax_steps.build_step(shape, dtype=dtype, full_finetune=full, params=params,
                                         mesh=mesh,
                                         frozen_compute_copies=method.endswith("-bf16frozen"))
  return steps


def _set_gpu_float32_matmuls(framework: str, mode: str) -> None:
  """Both frameworks' float32 GPU matmuls in one mode: 'ieee' (full float32) or 'tf32'.

  Their defaults differ (XLA:GPU may use TF32 for float32 dots, PyTorch does not), which would
  compare different arithmetic under one dtype name.
  """
  if framework == "peft":
    import torch  # pylint: disable=g-import-not-at-top
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
  else:
    import jax  # pylint: disable=g-import-not-at-top
    precision = "highest" if mode == "ieee" else "tensorfloat32"
    jax.config.update("jax_default_matmul_precision", precision)


def _serve(job: Dict[str, Any], commands, replies) -> None:
  """Builds and warms up the job's methods, then runs the steps and peak samples it is sent.

  Commands: {"step": METHOD} -> {"wall_s", "cpu_s"}; {"peak": NAME} -> {"flops"};
  {"finish": true} -> memory figures and peaks, then the worker exits.
  """
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import host_devices, host_memory
  host_memory.configure(job["host_allocator"])  # before JAX or PyTorch allocate anything
  if job["framework"] == "ours" and job["device"] == "cpu":
    host_devices.configure(job["host_devices"])  # before JAX starts its CPU backend
  if job["device"] == "gpu":
    _set_gpu_float32_matmuls(job["framework"], job["gpu_float32"])
  from benchmarks import jax_steps, measure  # pylint: disable=g-import-not-at-top
  shape = shapes_lib.get_shape(job["shape"])
  methods, threads = job["methods"], job["threads"]
  runs: Dict[str, Callable[[], None]] = {}
  memory: Dict[str, Dict[str, Any]] = {}

  def warm_up(method: str, run: Callable[[], None], xla_bytes: Optional[int]) -> None:
    warm = measure.time_steps(run, warmup=0, steps=max(job["warmup"], 1))
    runs[method] = run
    memory[method] = {"rss_growth_bytes": warm.rss_delta_bytes, "xla_bytes": xla_bytes}

  if job["framework"] == "peft":
    from benchmarks import peft_steps  # pylint: disable=g-import-not-at-top
    for method in methods:
      warm_up(method, peft_steps.build_step(shape, dtype=METHODS[method][1], threads=threads,
                                            batch=jax_steps.random_batch(shape),
                                            device=job["device"]), None)
  else:
    for method, step in _build_ours(shape, methods, job["host_devices"]).items():
      warm_up(method, step.run, step.xla_bytes)
  peaks = {}
  for dtype in sorted({METHODS[m][1] for m in methods}):
    peak = measure.MatmulPeak(job["framework"], dtype, size=job["peak_size"], threads=threads,
                              device=job["device"])
    peak.sample(repeats=2)
    peaks[peak.name] = peak

  def reply(message: Dict[str, Any]) -> None:
    replies.write(REPLY_MARKER + json.dumps(message) + "\n")
    replies.flush()

  reply({"ready": True, "host_allocator": host_memory.applied_policy()})
  for line in commands:
    command = json.loads(line)
    if "step" in command:
      timing = measure.time_steps(runs[command["step"]], warmup=0, steps=1)
      reply({"wall_s": timing.wall_s[0], "cpu_s": timing.cpu_s[0]})
    elif "peak" in command:
      reply({"flops": peaks[command["peak"]].sample()})
    else:
      reply({"memory": memory,
             "peaks": {name: [peak.best_flops, peak.side] for name, peak in peaks.items()}})
      return


class _Worker:
  """The parent's handle on one worker process."""

  def __init__(self, job: Dict[str, Any], module: str = "benchmarks.step_benchmark"):
    """Starts `python -m <module> --worker <job>` (`module` serves the same protocol)."""
    self.job = job
    self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, so chatty libraries never block
    # JAX in the worker sees only the benchmarked platform.
    env = dict(os.environ, JAX_PLATFORMS="cuda" if job.get("device") == "gpu" else "cpu")
    self.process = subprocess.Popen(
        [sys.executable, "-m", module, "--worker", json.dumps(job)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    self.ready = self._receive()

  def _receive(self) -> Dict[str, Any]:
    for line in self.process.stdout:
      if line.startswith(REPLY_MARKER):
        return json.loads(line[len(REPLY_MARKER):])
    self.process.wait()
    self.stderr.seek(0)
    raise RuntimeError(
        f"The benchmark worker for {self.job['framework']} at shape {self.job['shape']!r} "
        f"failed (exit {self.process.returncode}):\n{self.stderr.read()[-3000:]}")

  def ask(self, command: Dict[str, Any]) -> Dict[str, Any]:
    self.process.stdin.write(json.dumps(command) + "\n")
    self.process.stdin.flush()
    return self._receive()

  def finish(self) -> Dict[str, Any]:
    result = self.ask({"finish": True})
    self.process.stdin.close()
    self.process.wait()
    return result


def _progress(message: str) -> None:
  """A line on stderr, so a long run (or one cut off by a time limit) shows how far it got."""
  print(message, file=sys.stderr, flush=True)


@dataclasses.dataclass
class Rounds:
  """What `run_lockstep_rounds` collected.

  Attributes:
    ready: framework -> its worker's ready reply.
    steps: method -> its step replies, one a round.
    finished: framework -> its worker's reply to `{"finish": true}`.
  """

  ready: Dict[str, Dict[str, Any]]
  steps: Dict[str, List[Dict[str, Any]]]
  finished: Dict[str, Dict[str, Any]]


def run_lockstep_rounds(jobs: Dict[str, Dict[str, Any]], methods: Sequence[str],
                        framework_of: Callable[[str], str], *, rounds: int, label: str,
                        module: str = "benchmarks.step_benchmark",
                        every_round: Sequence[Tuple[str, Dict[str, Any]]] = ()) -> Rounds:
  """Starts one worker a framework, then times `methods` in lockstep rounds.

  Workers start one after the other, in the order of `jobs` (framework -> the job its worker
  gets; `module` serves the protocol of `_serve`). Each round sends `{"step": method}` for every
  method in order, to the worker of `framework_of(method)`, then the `every_round` commands
  (`(framework, command)`, replies dropped), while the other workers wait idle: every
  framework's steps see the same background load. Workers are finished afterwards, or killed
  if anything failed.
  """
  workers: Dict[str, _Worker] = {}
  start = time.perf_counter()
  elapsed = lambda: f"({time.perf_counter() - start:.0f} s)"
  try:
    for framework, job in jobs.items():
      workers[framework] = _Worker(job, module=module)
      _progress(f"{label}: {framework} worker built and warmed up "
                f"{', '.join(job['methods'])} {elapsed()}")
    steps: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
    for round_index in range(rounds):
      _progress(f"{label}: round {round_index + 1}/{rounds} {elapsed()}")
      for method in methods:
        steps[method].append(workers[framework_of(method)].ask({"step": method}))
      for framework, command in every_round:
        workers[framework].ask(command)
    finished = {framework: worker.finish() for framework, worker in workers.items()}
  finally:
    for worker in workers.values():
      if worker.process.poll() is None:
        worker.process.kill()
  return Rounds(ready={f: w.ready for f, w in workers.items()}, steps=steps, finished=finished)


def run_shape(shape_name: str, methods: Sequence[str], *, warmup: int, steps: int, threads: int,
              peak_size: int, host_allocator: str = "reuse", peft_host_allocator: str = "system",
              device: str = "cpu", gpu_float32: str = "ieee",
              host_devices: int = 1) -> Dict[str, Any]:
  """Times every method of one shape; returns per-method timings, memory and matmul peaks."""
  allocators = {"ours": host_allocator, "peft": peft_host_allocator}
  jobs = {}
  for framework in ("peft", "ours"):  # PEFT warms up first, on a machine not yet loaded by us
    mine = [m for m in methods if METHODS[m][0] == framework]
    if mine:
      jobs[framework] = {
          "framework": framework, "shape": shape_name, "methods": mine, "warmup": warmup,
          "threads": threads, "peak_size": peak_size, "host_allocator": allocators[framework],
          "device": device, "gpu_float32": gpu_float32, "host_devices": host_devices}
  peak_names = {f"{METHODS[m][0]}-{METHODS[m][1]}": METHODS[m][0] for m in methods}
  rounds = run_lockstep_rounds(
      jobs, methods, lambda method: METHODS[method][0], rounds=steps, label=shape_name,
      every_round=[(framework, {"peak": name}) for name, framework in sorted(peak_names.items())])
  results, peaks = {}, {}
  for framework, done in rounds.finished.items():
    peaks.update(done["peaks"])
    for method, memory in done["memory"].items():
      replies = rounds.steps[method]
      results[method] = {"wall_s": [r["wall_s"] for r in replies],
                         "cpu_s": [r["cpu_s"] for r in replies], **memory}
  return {"methods": results, "peaks": peaks,
          "host_allocators": {f: ready["host_allocator"] for f, ready in rounds.ready.items()}}


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


def paired_median(baseline_s: Sequence[float], row_s: Sequence[float]) -> float:
  """Median over rounds of baseline seconds / row seconds (rounds of `run_lockstep_rounds`).

  Both runs of a round ran back to back, under the same background load, so this ratio moves
  less with a shared machine's load than the ratio of the two best runs does.
  """
  return statistics.median(b / r for b, r in zip(baseline_s, row_s))


def paired_ratio(baseline: Row, row: Row) -> float:
  """`paired_median` of two rows' step times."""
  return paired_median(baseline.result["wall_s"], row.result["wall_s"])


def format_table(rows: Sequence[Row]) -> str:
  """One line per row; columns as in `COLUMNS`."""
  # Each row is compared with PEFT's prompt-tuning step at the same shape and compute dtype.
  baseline_rows = {(row.shape.name, METHODS[row.method][1]): row for row in rows
                   if METHODS[row.method][0] == "peft" and not METHODS[row.method][2]}
  lines = []
  for row in rows:
    rate = row.flops / row.seconds
    baseline_row = baseline_rows.get((row.shape.name, METHODS[row.method][1]))
    baseline = None if baseline_row is None else baseline_row.seconds
    lines.append((
        row.shape.name, row.method, f"{row.seconds:.4g}", f"{1 / row.seconds:.4g}",
        f"{row.shape.tokens_per_step / row.seconds:.0f}", f"{rate / 1e9:.4g}",
        f"{100 * rate / row.peak_flops:.3g}" if row.peak_flops else "-",
        f"{min(row.result['cpu_s']):.4g}", _megabytes(row.result["rss_growth_bytes"]),
        _megabytes(row.result["xla_bytes"]),
        "-" if baseline is None else f"{baseline / row.seconds:.2f}x",
        "-" if baseline_row is None else f"{paired_ratio(baseline_row, row):.2f}x"))
  widths = [max(len(str(cells[i])) for cells in [COLUMNS] + lines) for i in range(len(COLUMNS))]
  render = lambda cells: " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))
  return "\n".join([render(COLUMNS), "-+-".join("-" * w for w in widths)]
                   + [render(cells) for cells in lines])


def format_peaks(shape_name: str, peaks: Dict[str, Any],
                 host_allocators: Optional[Dict[str, str]] = None, host_devices: int = 1) -> str:
  parts = [f"{name} {value / 1e9:.1f} (n={side})" for name, (value, side) in sorted(peaks.items())]
  allocators = ", ".join(f"{framework} {policy}"
                         for framework, policy in sorted((host_allocators or {}).items()))
  setup = [f"host allocator: {allocators}"] if allocators else []
  if host_devices > 1:
    setup.append(f"our steps data-parallel over {host_devices} host CPU devices")
  return (f"Matmul peak GFLOP/s during the {shape_name} rows, best [n, n] @ [n, n]: "
          + ", ".join(parts) + (f" ({'; '.join(setup)})" if setup else ""))


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
  parser.add_argument("--host_allocator", choices=("reuse", "system"), default="reuse",
                      help="C allocator policy of our worker (see host_memory.py)")
  parser.add_argument("--peft_host_allocator", choices=("reuse", "system"), default="system",
                      help="C allocator policy of the PEFT worker")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="where both frameworks run (gpu: JAX on CUDA, PyTorch on cuda:0)")
  parser.add_argument("--gpu_float32", choices=("ieee", "tf32"), default="ieee",
                      help="float32 matmul arithmetic of both frameworks with --device gpu")
  parser.add_argument("--host_devices", type=int, default=1,
                      help="split our worker's CPU host into this many XLA devices and run our "
                           "steps data-parallel over them (the batch must divide)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny shape, one timed step, small peak matmul: checks the plumbing")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.shapes, args.steps, args.warmup, args.peak_size = "tiny", 1, 1, 256
  args.shapes = _parse_list(args.shapes, shapes_lib.SHAPE_NAMES, "shapes")
  args.methods = list(METHODS) if args.methods == "all" else _parse_list(
      args.methods, tuple(METHODS), "methods")
  if args.host_devices < 1:
    raise ValueError(f"--host_devices must be >= 1, got {args.host_devices}.")
  if args.host_devices > 1 and args.device != "cpu":
    raise ValueError("--host_devices splits a CPU host; it cannot be used with --device gpu.")
  for name in args.shapes:
    batch = shapes_lib.get_shape(name).batch
    if batch % args.host_devices:
      raise ValueError(f"Batch {batch} of shape {name!r} does not split over "
                       f"--host_devices={args.host_devices}.")
  if args.steps < 1 or args.warmup < 0:
    raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}.")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  try:
    args = parse_args(argv)
  except ValueError as error:
    sys.exit(f"error: {error}")
  if args.worker:
    _serve(json.loads(args.worker), sys.stdin, sys.stdout)
    return
  rows = []
  for shape_name in args.shapes:
    result = run_shape(shape_name, args.methods, warmup=args.warmup, steps=args.steps,
                       threads=args.threads, peak_size=args.peak_size,
                       host_allocator=args.host_allocator,
                       peft_host_allocator=args.peft_host_allocator, device=args.device,
                       gpu_float32=args.gpu_float32, host_devices=args.host_devices)
    print(format_peaks(shape_name, result["peaks"], result["host_allocators"],
                       args.host_devices), flush=True)
    if args.device == "gpu":
      print(f"GPU float32 matmuls of both frameworks: {args.gpu_float32}", flush=True)
    for method in args.methods:
      framework, dtype, _ = METHODS[method]
      peak = result["peaks"].get(f"{framework}-{dtype}", [None])[0]
      rows.append(Row(shapes_lib.get_shape(shape_name), method, result["methods"][method], peak))
  print(format_table(rows))


if __name__ == "__main__":
  main()
