"""Timing, memory and matmul-peak measurement shared by every benchmark row.

Memory is the process's resident set size (RSS): a background thread samples it while the
warm-up and timed steps run, and the row reports the highest sample minus the RSS just before
the first step (model, batch and compiled executable already resident). That delta is the step's
working memory (activations, gradients, temporaries and any allocator growth), measured the same
way for both frameworks. Our rows also report XLA's own accounting of the compiled step.
"""
from __future__ import annotations

import dataclasses
import statistics
import threading
import time
from typing import Callable, List

import psutil


class RssSampler:
  """Samples this process's RSS every `interval_s` seconds until stopped; keeps the maximum."""

  def __init__(self, interval_s: float = 0.005):
    self._process = psutil.Process()
    self._interval_s = interval_s
    self._stop = threading.Event()
    self.baseline = self._process.memory_info().rss
    self.peak = self.baseline
    self._thread = threading.Thread(target=self._loop, daemon=True)

  def _loop(self) -> None:
    while not self._stop.is_set():
      self.peak = max(self.peak, self._process.memory_info().rss)
      self._stop.wait(self._interval_s)

  def __enter__(self) -> "RssSampler":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, self._process.memory_info().rss)

  @property
  def delta_bytes(self) -> int:
    return self.peak - self.baseline


@dataclasses.dataclass
class Timing:
  """Wall-clock and process-CPU seconds of each timed step, and the RSS delta over all steps."""

  wall_s: List[float]
  cpu_s: List[float]
  rss_delta_bytes: int

  @property
  def best_wall_s(self) -> float:
    return min(self.wall_s)

  @property
  def median_wall_s(self) -> float:
    return statistics.median(self.wall_s)


def time_steps(run: Callable[[], None], *, warmup: int, steps: int) -> Timing:
  """Runs `warmup` untimed then `steps` timed calls of `run`, sampling RSS throughout."""
  wall, cpu = [], []
  with RssSampler() as sampler:
    for _ in range(warmup):
      run()
    for _ in range(steps):
      start_wall, start_cpu = time.perf_counter(), time.process_time()
      run()
      wall.append(time.perf_counter() - start_wall)
      cpu.append(time.process_time() - start_cpu)
  return Timing(wall_s=wall, cpu_s=cpu, rss_delta_bytes=sampler.delta_bytes)


def _affordable_size(seconds_at: Callable[[int], float], size: int, budget_s: float) -> int:
  """`size`, or a smaller side whose product should take about `budget_s` seconds.

  A product without native hardware support (bfloat16 on a CPU without AVX-512 BF16) can be
  100x slower than float32; a 512^3 probe keeps the peak measurement from taking minutes. The
  probe overestimates (small products run below peak), so the budget is generous.
  """
  probe = 512
  probe_s = seconds_at(probe)
  if probe_s * (size / probe) ** 3 <= budget_s:
    return size
  return max(probe, int(probe * (budget_s / probe_s) ** (1 / 3)) // 64 * 64)


class MatmulPeak:
  """Times `[n, n] @ [n, n]` products in one framework and dtype; keeps the best FLOP/s.

  Samples are taken between the steps being benchmarked, so the peak sees the same background
  load as they do. bfloat16 products accumulate in float32, as the models' matmuls do.
  """

  def __init__(self, framework: str, dtype: str, *, size: int, threads: int,
               budget_s: float = 3.0, device: str = "cpu"):
    self.name = f"{framework}-{dtype}"
    if framework == "peft":
      self._product = lambda n, d, t: _torch_product(n, d, t, device)
    else:
      self._product = _jax_product  # on the worker's JAX platform
    self._dtype, self._threads = dtype, threads
    self.side = _affordable_size(self._seconds_at, size, budget_s)
    self._run = self._product(self.side, dtype, threads)
    self._run()  # warm-up (and compilation)
    self.best_flops = 0.0

  def _seconds_at(self, n: int) -> float:
    """Seconds of one `[n, n] @ [n, n]` product, compilation and first-call costs excluded."""
    run = self._product(n, self._dtype, self._threads)
    run()
    start = time.perf_counter()
    run()
    return time.perf_counter() - start

  def sample(self, repeats: int = 1) -> float:
    """Times `repeats` products; returns the best FLOP/s seen so far."""
    for _ in range(repeats):
      start = time.perf_counter()
      self._run()
      seconds = time.perf_counter() - start
      self.best_flops = max(self.best_flops, 2 * self.side ** 3 / seconds)
    return self.best_flops


def _jax_product(n: int, dtype: str, threads: int) -> Callable[[], None]:
  del threads  # XLA uses every core it is given.
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  keys = jax.random.split(jax.random.PRNGKey(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in keys)
  dot = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  return lambda: dot(a, b).block_until_ready()


def _torch_product(n: int, dtype: str, threads: int, device: str = "cpu") -> Callable[[], None]:
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  torch_device = "cuda" if device == "gpu" else "cpu"
  a, b = (torch.randn(n, n, device=torch_device).to(getattr(torch, dtype)) for _ in range(2))

  def run():
    torch.mm(a, b)
    if torch_device == "cuda":
      torch.cuda.synchronize()

  return run
