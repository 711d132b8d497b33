"""Where a compiled training step's time goes, by kind of XLA operation.

    python -m benchmarks.profile_step                          # small shape, bf16 and fp32 prompt
    python -m benchmarks.profile_step --dtypes bfloat16 --top 15
    python -m benchmarks.profile_step --quick                  # tiny shape: plumbing only

The step is the benchmark's own (`benchmarks.jax_steps.build_step` arguments, compiled ahead of
time). It is run under `jax.profiler.trace`; XLA:CPU's thunk runtime records one event per
executed operation (its `hlo_op` stat names the HLO instruction). Each instruction is classed
from the compiled module's text (`compiled.as_text()`): a fusion by what its fused computation
contains. Classes:

  dot          products (`dot`, `convolution`, custom calls), fused or not
  convert      fusions that only change dtypes (e.g. frozen float32 weights to bf16)
  layout       transposes and copies, with or without a convert fused in
  reduce       fusions with a reduction (softmax and norm statistics, the loss, Adafactor)
  gather/scatter  embedding lookups, their gradients, dynamic (update) slices
  elementwise  every other fusion (activations, residual adds, masks)
  other        everything else (random bits, parameters' plumbing, ...)

Shares are of the summed operation time (operations on XLA:CPU run one at a time per device,
except for concurrent thunks; the `busy` column compares the sum with the wall time). For the
slowest products it also prints their achieved GFLOP/s. No profiling library beyond JAX's own is
needed: `jaxlib`'s `ProfileData` reads the trace it writes.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import re
import tempfile
import time
from typing import Dict, Iterable, List, Optional, Tuple

CLASSES = ("dot", "convert", "layout", "reduce", "gather/scatter", "elementwise", "other")
_SHAPE = re.compile(r"(bf16|f32|f16|s32|u32|u8|s8|pred|u64|s64)\[([\d,]*)\]")
_LAYOUT_OPS = {"transpose", "copy", "bitcast", "reshape", "broadcast", "slice", "concatenate",
               "pad", "reverse"}
_GATHER_OPS = {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}
_DOT_OPS = {"dot", "convolution", "custom-call"}
_TRIVIAL = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}


@dataclasses.dataclass
class Instruction:
  name: str
  opcode: str
  result: str  # the result type text, e.g. 'f32[8,356,512]{2,1,0}'
  line: str
  calls: Optional[str]


def _split_instruction(line: str) -> Optional[Instruction]:
  """Parses `  [ROOT] %name = TYPE opcode(...), attrs` (the '%' is optional)."""
  body = line.strip()
  if body.startswith("ROOT "):
    body = body[5:]
  if " = " not in body:
    return None
  name, rest = body.split(" = ", 1)
  if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        break
    result, rest = rest[:i + 1], rest[i + 1:].lstrip()
  else:
    result, _, rest = rest.partition(" ")
  opcode = rest.split("(", 1)[0].strip()
  calls = re.search(r"calls=%?([\w.\-]+)", rest)
  return Instruction(name.lstrip("%"), opcode, result, line, calls and calls.group(1))


def parse_module(text: str) -> Tuple[Dict[str, List[Instruction]], Dict[str, Instruction]]:
  """Computations (name -> instructions) and every instruction by name."""
  computations: Dict[str, List[Instruction]] = {}
  by_name: Dict[str, Instruction] = {}
  current = None
  for line in text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and not line.startswith(" "):
      current = computations.setdefault(header.group(1), [])
      continue
    if current is None or not line.startswith(" "):
      continue
    inst = _split_instruction(line)
    if inst is not None:
      current.append(inst)
      by_name[inst.name] = inst
  return computations, by_name


def _fused_opcodes(inst: Instruction, computations) -> List[str]:
  ops: List[str] = []
  todo = [inst.calls]
  while todo:
    for sub in computations.get(todo.pop(), []):
      if sub.opcode == "fusion" and sub.calls:
        todo.append(sub.calls)
      elif sub.opcode not in _TRIVIAL:
        ops.append(sub.opcode)
  return ops


def classify(inst: Instruction, computations) -> str:
  """One of `CLASSES` for an executed instruction (see the module docstring)."""
  ops = _fused_opcodes(inst, computations) if inst.opcode == "fusion" else [inst.opcode]
  kinds = set(ops)
  if kinds & _DOT_OPS:
    return "dot"
  if kinds & _GATHER_OPS or inst.opcode in ("sort",):
    return "gather/scatter"
  if kinds & {"reduce", "reduce-window", "all-reduce"}:
    return "reduce"
  if not kinds:
    return "other"
  if kinds <= {"convert"} | (_LAYOUT_OPS - {"transpose", "copy"}):
    return "convert"
  if kinds <= _LAYOUT_OPS | {"convert"}:
    return "layout"
  if inst.opcode == "fusion":
    return "elementwise"
  if inst.opcode in _LAYOUT_OPS:
    return "layout"
  if inst.opcode == "convert":
    return "convert"
  return "other"


def _dims(text: str) -> List[Tuple[str, Tuple[int, ...]]]:
  return [(d, tuple(int(n) for n in s.split(",") if n)) for d, s in _SHAPE.findall(text)]


def dot_flops(inst: Instruction, computations, by_name) -> Tuple[float, str]:
  """FLOPs of the (first) product inside `inst` and a short `dtype shapes` description."""
  dots = [inst] if inst.opcode in ("dot", "convolution") else [
      sub for sub in computations.get(inst.calls or "", []) if sub.opcode == "dot"]
  if not dots:
    return 0.0, "?"
  dot = dots[0]
  args = re.search(r"dot\(([^)]*)\)", dot.line)
  operands = [a.strip().lstrip("%") for a in args.group(1).split(",")] if args else []
  shapes = []
  for op in operands:
    src = by_name.get(op)
    if src is None:  # a fused computation's parameter: 'name: type' in its header
      continue
    shapes.extend(_dims(src.result)[:1])
  out = _dims(dot.result)[:1]
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", dot.line)
  if not shapes or not out or not contracting:
    return 0.0, "?"
  lhs = shapes[0][1]
  k = 1
  for axis in (int(a) for a in contracting.group(1).split(",") if a):
    k *= lhs[axis]
  n_out = 1
  for n in out[0][1]:
    n_out *= n
  desc = " x ".join(f"{d}{list(s)}" for d, s in shapes) + f" -> {out[0][0]}{list(out[0][1])}"
  return 2.0 * n_out * k, desc


def dot_spec(inst: Instruction, computations, by_name):
  """`(lhs, rhs, dimension_numbers, out_dtype)` of the product in `inst`, or None."""
  dots = [inst] if inst.opcode == "dot" else [
      sub for sub in computations.get(inst.calls or "", []) if sub.opcode == "dot"]
  if not dots:
    return None
  dot = dots[0]
  args = re.search(r"dot\(([^)]*)\)", dot.line)
  operands = [by_name.get(a.strip().lstrip("%")) for a in args.group(1).split(",")]
  if len(operands) != 2 or None in operands:
    return None
  shapes = [_dims(op.result)[0] for op in operands]

  def axes(key):
    found = re.search(key + r"=\{([\d,]*)\}", dot.line)
    return tuple(int(a) for a in found.group(1).split(",") if a) if found else ()

  numbers = ((axes("lhs_contracting_dims"), axes("rhs_contracting_dims")),
             (axes("lhs_batch_dims"), axes("rhs_batch_dims")))
  return shapes[0], shapes[1], numbers, _dims(dot.result)[0][0]


_DTYPES = {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}


@functools.lru_cache(maxsize=None)
def standalone_seconds(spec, repeats: int = 3) -> float:
  """Best time of the same product jitted on its own (XLA picks its own layouts).

  Cached: the product table and the products-only estimate time the same shapes.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  (ld, ls), (rd, rs), numbers, out = spec
  lhs = jnp.ones(ls, _DTYPES[ld])
  rhs = jnp.ones(rs, _DTYPES[rd])
  fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, numbers,
                                                preferred_element_type=_DTYPES[out]))
  fn(lhs, rhs).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn(lhs, rhs).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return best


def product_groups(rows: Iterable[OpTime], computations, by_name) -> Dict[str, List]:
  """Products grouped by operand shapes: `{desc: [seconds, count, flops, spec]}` per step."""
  groups: Dict[str, List] = {}
  for r in rows:
    if r.klass != "dot" or r.name not in by_name:
      continue
    flops, desc = dot_flops(by_name[r.name], computations, by_name)
    group = groups.setdefault(desc, [0.0, 0, 0.0, dot_spec(by_name[r.name], computations,
                                                            by_name)])
    group[0] += r.seconds
    group[1] += r.count
    group[2] += flops * r.count
  return groups


def product_table(groups: Dict[str, List], top: int) -> str:
  """The `top` product groups by time: achieved GFLOP/s, and a standalone same dot."""
  lines = ["| operands -> result | x/step | ms/step | GFLOP/s in step | GFLOP/s standalone |",
           "|---|---|---|---|---|"]
  for desc, (seconds, count, flops, spec) in sorted(groups.items(), key=lambda kv: -kv[1][0]
                                                    )[:top]:
    alone = ""
    if spec is not None and flops:
      alone = f"{flops / count / standalone_seconds(spec) / 1e9:.0f}"
    rate = f"{flops / seconds / 1e9:.0f}" if seconds else ""
    lines.append(f"| {desc} | {count} | {seconds * 1e3:.1f} | {rate} | {alone} |")
  return "\n".join(lines)


def product_ceiling(groups: Dict[str, List]) -> Tuple[float, float, float]:
  """`(flops, seconds in the step, seconds at standalone rates)` per step over every product.

  The third figure is what the step's products would take if each ran as fast as the same
  product jitted alone: `flops / it` estimates the MFU a step made only of its products could
  reach with XLA:CPU's kernels. An estimate, not a strict bound: in the step a product can run
  a little faster or slower than alone (thread-pool state, another op sharing the cores).
  """
  flops_total = seconds_total = standalone_total = 0.0
  for seconds, count, flops, spec in groups.values():
    flops_total += flops
    seconds_total += seconds
    if spec is None or not flops:
      standalone_total += seconds  # not reproducible alone: counted at its in-step time
    else:
      standalone_total += standalone_seconds(spec) * count
  return flops_total, seconds_total, standalone_total


@dataclasses.dataclass
class OpTime:
  name: str
  klass: str
  seconds: float
  count: int
  source: str


def op_times(trace_dir: str, module_text: str, steps: int) -> Tuple[List[OpTime], float]:
  """Per-instruction seconds per step from the trace, and the summed time of every op."""
  from jaxlib._profile_data import ProfileData  # pylint: disable=g-import-not-at-top
  computations, by_name = parse_module(module_text)
  files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
  if not files:
    raise RuntimeError(f"The profiler wrote no trace under {trace_dir}.")
  totals: Dict[str, float] = collections.defaultdict(float)
  counts: Dict[str, int] = collections.defaultdict(int)
  for plane in ProfileData.from_file(files[0]).planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_module", "").startswith("jit_train_step") and "hlo_op" in stats:
          totals[stats["hlo_op"]] += event.duration_ns * 1e-9 / steps
          counts[stats["hlo_op"]] += 1
  rows = []
  for name, seconds in totals.items():
    inst = by_name.get(name)
    if inst is None:
      rows.append(OpTime(name, "other", seconds, counts[name], ""))
      continue
    source = re.search(r'op_name="([^"]*)"', inst.line)
    if source is None and inst.calls:
      for sub in computations.get(inst.calls, []):
        source = re.search(r'op_name="([^"]*)"', sub.line) or source
    rows.append(OpTime(name, classify(inst, computations), seconds, counts[name] // steps,
                       source.group(1) if source else ""))
  return sorted(rows, key=lambda r: -r.seconds), sum(totals.values())


def profile(shape_name: str, dtype: str, steps: int, compiler_options=None,
            frozen_compute_copies: bool = False):
  """Compiles, warms up and traces `steps` prompt-tuning steps; returns what `main` prints."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import jax_steps, shapes  # pylint: disable=g-import-not-at-top
  shape = shapes.get_shape(shape_name)
  extra = {"frozen_compute_copies": True} if frozen_compute_copies else {}
  step_fn, state, frozen, batch = jax_steps.make_step(shape, dtype=dtype, full_finetune=False,
                                                      **extra)
  compiled = jax.jit(step_fn, donate_argnums=(0,)).lower(state, frozen, batch).compile(
      compiler_options=compiler_options)
  state, metrics = compiled(state, frozen, batch)
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    start = time.perf_counter()
    with jax.profiler.trace(trace_dir):
      for _ in range(steps):
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready(metrics)
    wall = (time.perf_counter() - start) / steps
    text = compiled.as_text()
    rows, busy = op_times(trace_dir, text, steps)
  _, by_name = parse_module(text)
  computations, _ = parse_module(text)
  flops = {r.name: dot_flops(by_name[r.name], computations, by_name)
           for r in rows if r.klass == "dot" and r.name in by_name}
  return rows, busy, wall, flops, (computations, by_name)


def share_table(results: Dict[str, Tuple[List[OpTime], float, float]]) -> str:
  """Markdown table: one column per profiled step, one row per class (ms and % of busy time)."""
  names = list(results)
  lines = ["| class | " + " | ".join(f"{n} ms/step (%)" for n in names) + " |",
           "|---|" + "---|" * len(names)]
  for klass in CLASSES:
    cells = []
    for n in names:
      rows, busy, _ = results[n]
      ms = sum(r.seconds for r in rows if r.klass == klass) * 1e3
      cells.append(f"{ms:.1f} ({100 * ms / (busy * 1e3):.1f}%)")
    lines.append(f"| {klass} | " + " | ".join(cells) + " |")
  lines.append("| sum of ops | " + " | ".join(f"{results[n][1] * 1e3:.1f}" for n in names)
               + " |")
  lines.append("| wall (traced) | " + " | ".join(f"{results[n][2] * 1e3:.1f}" for n in names)
               + " |")
  return "\n".join(lines)


def top_table(rows: Iterable[OpTime], flops, top: int) -> str:
  lines = ["| op | class | ms/step | x/step | GFLOP/s | operands | source |",
           "|---|---|---|---|---|---|---|"]
  for r in list(rows)[:top]:
    f, desc = flops.get(r.name, (0.0, ""))
    rate = f"{f * r.count / r.seconds / 1e9:.0f}" if f and r.seconds else ""
    lines.append(f"| {r.name} | {r.klass} | {r.seconds * 1e3:.2f} | {r.count} | {rate} | {desc} "
                 f"| {r.source[-70:]} |")
  return "\n".join(lines)


@functools.lru_cache(maxsize=None)  # a frozen-copies run reuses its dtype's peak
def _peak(dtype: str, size: int) -> Optional[float]:
  """Best FLOP/s of `[size, size]` products in `dtype` (the step benchmark's MFU peak)."""
  if not size:
    return None
  from benchmarks import measure  # pylint: disable=g-import-not-at-top
  peak = measure.MatmulPeak("ours", dtype, size=size, threads=0)
  return peak.sample(repeats=5)


def ceiling_line(ceiling: Tuple[float, float, float], wall: float,
                 peak: Optional[float]) -> str:
  """The step's products against the same products at their standalone rates, as text."""
  flops, in_step, alone = ceiling
  line = (f"\nProducts: {flops / 1e9:.4g} GFLOP a step, {in_step * 1e3:.0f} ms in the traced "
          f"step ({wall * 1e3:.0f} ms wall); at their standalone rates {alone * 1e3:.0f} ms, "
          f"{flops / alone / 1e9:.0f} GFLOP/s")
  if peak:
    line += (f" = {100 * flops / alone / peak:.1f}% of the {peak / 1e9:.0f} GFLOP/s matmul peak "
             f"(the MFU of a step made of nothing but its products)")
  return line + "."


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="small", help="tiny, small or base")
  parser.add_argument("--dtypes", default="bfloat16,float32")
  parser.add_argument("--steps", type=int, default=2, help="traced steps (after one warm-up)")
  parser.add_argument("--top", type=int, default=12, help="slowest operations listed per step")
  parser.add_argument("--quick", action="store_true", help="tiny shape, one step")
  parser.add_argument("--peak_size", type=int, default=2048,
                      help="side of the [n, n] @ [n, n] product whose best rate is the MFU peak "
                           "(as in step_benchmark; 0 skips it)")
  parser.add_argument("--frozen_compute_copies", action="store_true",
                      help="also profile each non-float32 step given compute-dtype copies of "
                           "its frozen weights (jax_steps.make_step(frozen_compute_copies=True))")
  args = parser.parse_args(argv)
  shape, steps = ("tiny", 1) if args.quick else (args.shape, args.steps)
  peak_size = min(args.peak_size, 256) if args.quick else args.peak_size
  # The allocator policy the trainer and the step benchmark run with (set before JAX starts):
  # under glibc's defaults every step page-faults its temporaries back in.
  from prompt_tuning.engine import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.configure("reuse")
  results = {}
  runs = []
  for dtype in args.dtypes.split(","):
    runs.append((dtype, dtype, False))
    if args.frozen_compute_copies and dtype != "float32":
      runs.append((f"{dtype}+frozen copies", dtype, True))
  for label, dtype, copies in runs:
    rows, busy, wall, flops, (computations, by_name) = profile(shape, dtype, steps,
                                                               frozen_compute_copies=copies)
    results[label] = (rows, busy, wall)
    dtype = label
    print(f"\n## {shape} prompt step, {dtype}: slowest operations\n")
    print(top_table(rows, flops, args.top))
    print(f"\n## {shape} {dtype}: products by shape\n")
    groups = product_groups(rows, computations, by_name)
    print(product_table(groups, args.top))
    print(ceiling_line(product_ceiling(groups), wall, _peak(dtype.split("+")[0], peak_size)))
    by_source = collections.defaultdict(float)
    for r in rows:
      by_source[(r.klass, "/".join(r.source.split("/")[-3:]))] += r.seconds
    print(f"\n## {shape} {dtype}: non-product time by source op (top {args.top})\n")
    for (klass, src), s in sorted(by_source.items(), key=lambda kv: -kv[1])[:3 * args.top]:
      if klass != "dot":
        print(f"  {s * 1e3:8.2f} ms  {klass:14s} {src}")
  print(f"\n## {shape} prompt step: time by class\n")
  print(share_table(results))


if __name__ == "__main__":
  main()
