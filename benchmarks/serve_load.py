r"""Load test of `prompt_tuning.serve` on 127.0.0.1: requests/s and p50/p99 latency, 1 task vs 8.

  python -m benchmarks.serve_load [--requests 200] [--concurrency 16] [--max_seconds 60]
      [--model_gin gin/models/byte_t5_tiny.gin] [--base BASE.npz|checkpoint]

Starts the server in this process on a free local port with 8 prompts (random, or the base's
model with random prompts; the answers' quality does not matter here, their cost does), warms
it up (the first pass compiles), then, per scenario, sends `--requests` greedy requests from
`--concurrency` client threads: every request for one task, or requests spread round-robin over
8 tasks. Each scenario stops after `--max_seconds` even if requests remain. The table shows
how many forward passes served them (`passes`, `rows/pass`): the micro-batcher merges
concurrent requests whatever their task, so the two scenarios should cost about the same.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Sequence

import numpy as np

NUM_TASKS = 8


def _post(url: str, body: Dict) -> int:
  request = urllib.request.Request(url + "/predict", data=json.dumps(body).encode(),
                                   method="POST")
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      response.read()
      return response.status
  except urllib.error.HTTPError as error:
    return error.code


def _random_base(config, folder: str, prompt_length: int) -> str:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine.param_loading import flat  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import bank as bank_lib  # pylint: disable=g-import-not-at-top
  model = bank_lib.table_model(config, capacity=1, prompt_length=prompt_length)
  variables = model.get_initial_variables(jax.random.PRNGKey(0), batch_size=1, encoder_length=8,
                                          decoder_length=4, lengths={"encoder_input_tokens": 8})
  params = flax.core.meta.unbox(variables["params"])
  path = os.path.join(folder, "base.npz")
  np.savez(path, **{k: np.asarray(v) for k, v in flat(params).items()
                    if not k.startswith("input_hook/")})
  return path


def scenario(url: str, tasks: Sequence[str], *, requests: int, concurrency: int,
             max_seconds: float, seed: int) -> Dict[str, float]:
  """Sends the requests; returns counts, requests/s and latency percentiles (ms)."""
  rng = np.random.default_rng(seed)
  bodies = [{"task": tasks[i % len(tasks)],
             "inputs": "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(3, 8))))}
            for i in range(requests)]
  latencies: List[float] = []
  statuses: List[int] = []
  start = time.perf_counter()
  deadline = start + max_seconds

  def one(body):
    if time.perf_counter() > deadline:
      return None
    began = time.perf_counter()
    status = _post(url, body)
    return status, time.perf_counter() - began

  with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    for result in pool.map(one, bodies):
      if result is not None:
        statuses.append(result[0])
        latencies.append(result[1])
  elapsed = time.perf_counter() - start
  ok = [lat for lat, status in zip(latencies, statuses) if status == 200]
  return {"sent": len(statuses), "ok": len(ok), "seconds": elapsed,
          "rps": len(ok) / elapsed if elapsed else 0.0,
          "p50_ms": 1000 * float(np.percentile(ok, 50)) if ok else float("nan"),
          "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else float("nan")}


def main(argv: Sequence[str] = None) -> List[str]:
  parser = argparse.ArgumentParser(prog="benchmarks.serve_load", description=__doc__.split("\n")[0])
  parser.add_argument("--model_gin", action="append", default=None)
  parser.add_argument("--base", default=None, help="frozen base (default: random weights)")
  parser.add_argument("--prompt_length", type=int, default=8)
  parser.add_argument("--requests", type=int, default=200)
  parser.add_argument("--concurrency", type=int, default=16)
  parser.add_argument("--max_batch", type=int, default=16)
  parser.add_argument("--max_wait_ms", type=float, default=5.0)
  parser.add_argument("--max_seconds", type=float, default=60.0)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from prompt_tuning import serve  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import bank as bank_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
  from prompt_tuning.serving import engine as engine_lib  # pylint: disable=g-import-not-at-top

  model, vocabulary = loading.model_from_gin(args.model_gin or ["gin/models/byte_t5_tiny.gin"])
  config = model.module.config
  lengths = {"encoder_input_tokens": 16, "decoder_input_tokens": 4}
  with tempfile.TemporaryDirectory() as folder:
    base = args.base or _random_base(config, folder, args.prompt_length)
    frozen = loading.frozen_params(config, base, prompt_length=args.prompt_length,
                                   lengths=lengths)
  bank = bank_lib.PromptBank(config=config, frozen_params=frozen,
                             prompt_length=args.prompt_length, capacity=NUM_TASKS)
  rng = np.random.default_rng(0)
  tasks = [f"task{i}" for i in range(NUM_TASKS)]
  for task in tasks:
    bank.add(task, rng.uniform(-0.5, 0.5, (args.prompt_length, config.emb_dim)))
  engine = engine_lib.Engine(bank, vocabulary, max_input_length=16, max_decode_length=4,
                             max_rows=args.max_batch)
  server = serve.start(engine, max_wait_s=args.max_wait_ms / 1000,
                       max_queue=max(256, args.concurrency))
  try:
    scenario(server.url, tasks, requests=4, concurrency=2, max_seconds=300, seed=99)  # compile
    rows = []
    for label, chosen in (("1 task", tasks[:1]), (f"{NUM_TASKS} mixed tasks", tasks)):
      before = (server.batcher.batches, server.batcher.rows)
      result = scenario(server.url, chosen, requests=args.requests,
                        concurrency=args.concurrency, max_seconds=args.max_seconds, seed=1)
      passes = server.batcher.batches - before[0]
      result["passes"] = passes
      result["rows_per_pass"] = (server.batcher.rows - before[1]) / passes if passes else 0.0
      rows.append((label, result))
  finally:
    server.close()
  lines = [f"serve load test: {args.requests} greedy requests, {args.concurrency} clients, "
           f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, model "
           f"{config.emb_dim}-wide, {config.num_encoder_layers}+{config.num_decoder_layers} "
           f"layers, prompt length {args.prompt_length}",
           f"| scenario | sent | ok | req/s | p50 ms | p99 ms | passes | rows/pass |",
           "|---|---|---|---|---|---|---|---|"]
  for label, r in rows:
    lines.append(f"| {label} | {r['sent']} | {r['ok']} | {r['rps']:.1f} | {r['p50_ms']:.1f} | "
                 f"{r['p99_ms']:.1f} | {r['passes']} | {r['rows_per_pass']:.1f} |")
  print("\n".join(lines), flush=True)
  return lines


if __name__ == "__main__":
  main()
