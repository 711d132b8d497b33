"""The step benchmark's plumbing: its FLOP count and the table it prints (never its timings).

The FLOP count that model FLOPs utilisation divides is checked against the matrix products JAX
actually traces for the same steps, and the script is run end to end on its tiny `--quick` shape.
"""
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks import flops, jax_steps, shapes, step_benchmark

pytestmark = pytest.mark.slow  # runs the step benchmark, in subprocesses for host devices

REPO = Path(__file__).resolve().parents[1]
HAS_PEFT = all(importlib.util.find_spec(name) for name in ("torch", "transformers", "peft"))


@pytest.fixture(scope="module")
def tiny():
  return shapes.get_shape("tiny")


@pytest.mark.parametrize("full_finetune", [False, True], ids=["prompt", "full"])
def test_analytic_flops_match_the_traced_step(tiny, full_finetune):
  step_fn, state, frozen, batch = jax_steps.make_step(tiny, dtype="float32",
                                                      full_finetune=full_finetune)
  traced = flops.jaxpr_matmul_flops(jax.make_jaxpr(step_fn)(state, frozen, batch))
  counted = flops.step_flops(tiny)
  assert traced == pytest.approx(counted.full_step if full_finetune else counted.prompt_step,
                                 rel=1e-9)


def test_flop_count_at_the_small_shape():
  # T5 1.1 small, batch 8, 100 + 256 encoder tokens, 32 targets: forward by hand.
  enc, dec, e, inner, f, v, layers = 356, 32, 512, 384, 1024, 32128, 8
  encoder = enc * (4 * e * inner + 3 * e * f) + 2 * enc * enc * inner
  decoder = (dec * (6 * e * inner + 3 * e * f) + 2 * enc * e * inner
             + 2 * dec * dec * inner + 2 * dec * enc * inner)
  forward = 2 * 8 * (layers * (encoder + decoder) + dec * e * v)
  counted = flops.step_flops(shapes.get_shape("small"))
  assert counted.forward == forward
  assert counted.full_step == 3 * forward
  assert 2.0 * forward < counted.prompt_step < 2.2 * forward


def _run_quick(methods, *extra):
  done = subprocess.run(
      [sys.executable, "-m", "benchmarks.step_benchmark", "--quick", "--methods",
       ",".join(methods), *extra],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_quick_run_prints_one_well_formed_row_per_method():
  methods = ["ours-fp32-prompt", "ours-fp32-full"] + (["peft-fp32-prompt"] if HAS_PEFT else [])
  out = _run_quick(methods)
  assert re.search(r"Matmul peak GFLOP/s.*ours-float32 [\d.]+ \(n=\d+\)", out)
  # Each framework ran in its own worker, ours under the reuse allocator, PEFT as users run it.
  expected_allocators = "ours reuse, peft system" if HAS_PEFT else "ours reuse"
  assert f"(host allocator: {expected_allocators})" in out
  lines = out.splitlines()
  header_at = next(i for i, line in enumerate(lines) if line.startswith("shape"))
  header = [cell.strip() for cell in lines[header_at].split("|")]
  assert header == list(step_benchmark.COLUMNS)
  rows = [[cell.strip() for cell in line.split("|")] for line in lines[header_at + 2:]]
  assert [row[1] for row in rows] == methods
  for row in rows:
    assert len(row) == len(header) and row[0] == "tiny"
    seconds, steps_per_s, tokens_per_s = float(row[2]), float(row[3]), float(row[4])
    # Seconds and steps/s are printed to 4 significant digits, tokens/s to the unit.
    assert seconds > 0 and steps_per_s == pytest.approx(1 / seconds, rel=2e-3)
    assert tokens_per_s == pytest.approx(
        shapes.get_shape("tiny").tokens_per_step / seconds, rel=2e-3, abs=1)
    assert float(row[5]) > 0 and 0 < float(row[6])  # GFLOP/s, MFU %
    assert float(row[7]) >= 0 and float(row[8]) >= 0  # CPU seconds, RSS growth
  by_method = {row[1]: row for row in rows}
  assert float(by_method["ours-fp32-prompt"][9]) > 0  # XLA's memory analysis is reported
  if HAS_PEFT:
    assert by_method["peft-fp32-prompt"][10] == "1.00x" == by_method["peft-fp32-prompt"][11]
    assert float(by_method["ours-fp32-prompt"][11].rstrip("x")) > 0
    ratio = float(by_method["ours-fp32-prompt"][10].rstrip("x"))
    peft_s = float(by_method["peft-fp32-prompt"][2])
    ours_s = float(by_method["ours-fp32-prompt"][2])
    assert ratio == pytest.approx(peft_s / ours_s, rel=0.05)
  else:
    assert by_method["ours-fp32-prompt"][10] == "-" == by_method["ours-fp32-prompt"][11]


@pytest.mark.parametrize("argv, message", [
    (["--methods", "ours-fp64-prompt"], "Unknown methods ['ours-fp64-prompt']"),
    (["--shapes", "huge"], "Unknown shapes ['huge']"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--host_devices", "0"], "--host_devices must be >= 1"),
    (["--shapes", "small", "--host_devices", "3"], "Batch 8 of shape 'small' does not split"),
    (["--device", "gpu", "--host_devices", "2"], "cannot be used with --device gpu"),
])
def test_bad_arguments_stop_with_one_clear_sentence(argv, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    step_benchmark.parse_args(argv)


@pytest.mark.parametrize("mode, jax_precision, torch_tf32", [("ieee", "highest", False),
                                                             ("tf32", "tensorfloat32", True)])
def test_gpu_float32_mode_sets_both_frameworks_alike(mode, jax_precision, torch_tf32):
  """`--gpu_float32` gives JAX and PyTorch the same float32 matmul arithmetic."""
  import jax  # pylint: disable=g-import-not-at-top
  old = jax.config.jax_default_matmul_precision
  try:
    step_benchmark._set_gpu_float32_matmuls("ours", mode)  # pylint: disable=protected-access
    assert jax.config.jax_default_matmul_precision == jax_precision
  finally:
    jax.config.update("jax_default_matmul_precision", old)
  if HAS_PEFT:
    import torch  # pylint: disable=g-import-not-at-top
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
      step_benchmark._set_gpu_float32_matmuls("peft", mode)  # pylint: disable=protected-access
      assert torch.backends.cuda.matmul.allow_tf32 is torch_tf32
      assert torch.backends.cudnn.allow_tf32 is torch_tf32
    finally:
      torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
  assert step_benchmark.parse_args(["--gpu_float32", mode]).gpu_float32 == mode


def test_paired_ratio_is_the_median_of_per_round_ratios():
  shape = shapes.get_shape("tiny")
  row = lambda method, walls: step_benchmark.Row(shape, method, {"wall_s": walls}, None)
  peft = row("peft-fp32-prompt", [2.0, 3.0, 2.2, 2.0])
  ours = row("ours-fp32-prompt", [1.0, 3.0, 2.0, 1.6])  # round ratios 2.0, 1.0, 1.1, 1.25
  assert step_benchmark.paired_ratio(peft, ours) == pytest.approx((1.1 + 1.25) / 2)
  assert step_benchmark.paired_ratio(peft, row("ours-fp32-prompt", [1.0, 1.5, 1.1])) == \
      pytest.approx(2.0)  # odd count: the middle one of 2.0, 2.0, 2.0


# One step of the tiny model on one device and data-parallel over 2 host devices, from the same
# parameters and batch; run in a fresh process because the device count must precede JAX.
_DATA_PARALLEL_PROBE = """
import json
from prompt_tuning.engine import host_devices
host_devices.configure(2)
import jax
import numpy as np
from benchmarks import jax_steps, shapes
shape = shapes.get_shape("tiny")
params = jax_steps.random_params(shape)
one = jax_steps.build_step(shape, dtype="float32", full_finetune=False, params=params)
two = jax_steps.build_step(shape, dtype="float32", full_finetune=False, params=params,
                           mesh=jax_steps.data_parallel_mesh(2))
losses = [[float(step.run()["loss"]) for _ in range(3)] for step in (one, two)]
print(json.dumps({"losses": losses, "devices": len(jax.devices()),
                  "bytes": [one.xla_bytes, two.xla_bytes]}))
"""


def test_data_parallel_step_over_host_devices_matches_one_device():
  done = subprocess.run([sys.executable, "-c", _DATA_PARALLEL_PROBE], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["devices"] == 2
  one, two = result["losses"]
  assert one[0] > one[2]  # the prompt trains: three steps lower the loss
  np.testing.assert_allclose(two, one, rtol=1e-5)
  # Each device holds the replicated parameters, so the process-wide figure is larger.
  assert result["bytes"][1] > result["bytes"][0] > 0


def test_quick_run_over_two_host_devices_says_so():
  out = _run_quick(["ours-fp32-prompt"], "--host_devices", "2")
  assert "our steps data-parallel over 2 host CPU devices" in out
  row = next(line for line in out.splitlines() if line.lstrip().startswith("tiny |"))
  assert float(row.split("|")[2]) > 0
