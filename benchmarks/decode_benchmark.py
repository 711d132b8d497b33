"""Decoding throughput: ours against Hugging Face `generate`, and mixed-prompt batches.

Run from the repository root:

    python -m benchmarks.decode_benchmark               # T5 1.1 small shape
    python -m benchmarks.decode_benchmark --quick       # tiny model, seconds; checks the plumbing

Rows (each one decode of a whole batch: encode, then `--new_tokens` steps):
  * `ours-greedy`, `ours-beam4`: `EncoderDecoderModel.predict_batch_with_scores`, jitted;
  * `hf-greedy`, `hf-beam4`: `transformers` `T5ForConditionalGeneration.generate` on a random
    model of the same configuration, in PyTorch;
  * `ours-shared-prompt`: greedy decode of a model whose input hook inserts one learned prompt;
  * `ours-mixed-prompts`: the same batch where every example picks its own prompt from a
    `PromptTable` (per-example `prompt_ids`), at equal batch size and prompt length.
Every decode runs exactly `--new_tokens` steps: our EOS id is set outside the vocabulary and
`generate` gets `min_new_tokens`, so neither stops early on a random model's EOS.

As in `step_benchmark`, each framework runs in its own worker process and the workers take
turns in lockstep rounds, so paired ratios (median over rounds of the two decodes of a round)
see the same background load.
"""
from __future__ import annotations

# pylint: disable=protected-access  (shares step_benchmark's list parsing)

import argparse
import dataclasses
import json
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from benchmarks import shapes as shapes_lib
from benchmarks import step_benchmark

# row name -> (framework, search, prompt setting)
METHODS = {
    "ours-greedy": ("ours", "greedy", None),
    "hf-greedy": ("hf", "greedy", None),
    "ours-beam4": ("ours", "beam", None),
    "hf-beam4": ("hf", "beam", None),
    "ours-shared-prompt": ("ours", "greedy", "shared"),
    "ours-mixed-prompts": ("ours", "greedy", "mixed"),
}
BASELINES = {"ours-greedy": "hf-greedy", "ours-beam4": "hf-beam4",
             "ours-mixed-prompts": "ours-shared-prompt"}
BEAMS = 4
COLUMNS = ("shape", "method", "s/decode", "new tokens/s", "baseline", "paired ratio")


@dataclasses.dataclass(frozen=True)
class DecodeShape:
  """A benchmark shape's model with the decode batch: `batch` inputs of `input_length` tokens."""

  name: str
  config: Any
  batch: int
  input_length: int
  new_tokens: int
  prompt_length: int


def get_shape(name: str, new_tokens: Optional[int] = None) -> DecodeShape:
  """T5 1.1 small: batch 8, 256 input tokens, 64 new tokens, 100-token prompts."""
  base = shapes_lib.get_shape(name)
  default_new = 8 if name == "tiny" else 64
  return DecodeShape(name, base.config, base.batch, base.input_length,
                     new_tokens or default_new, base.prompt_length)


def random_inputs(shape: DecodeShape, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(2, shape.config.vocab_size, (shape.batch, shape.input_length),
                      dtype=np.int32)


# ------------------------------------------------------------------------------------------------
# Our decodes.


def build_ours(shape: DecodeShape, methods: Sequence[str]) -> Dict[str, Callable[[], Any]]:
  """Compiles one jitted decode per row; returns `run()` functions returning the decodes."""
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import jax.numpy as jnp
  from benchmarks import jax_steps
  from prompt_tuning.engine.models import EncoderDecoderModel
  from prompt_tuning.models.t5 import EncoderDecoder
  from prompt_tuning.prompts import hooks, providers

  inputs = jnp.asarray(random_inputs(shape))
  frozen = jax_steps.random_params(shapes_lib.get_shape(shape.name))
  frozen = {k: v for k, v in frozen.items() if k != "input_hook"}
  never = shape.config.vocab_size  # an EOS id no argmax can produce: every decode runs to the end
  rng = np.random.default_rng(1)
  runs = {}
  for method in methods:
    _, search, prompts = METHODS[method]
    batch = {"encoder_input_tokens": inputs}
    params = dict(frozen)
    hook = None
    if prompts == "shared":
      hook = hooks.PromptHook(provider=providers.Prompt(length=shape.prompt_length))
      params["input_hook"] = {"prompt": jnp.asarray(rng.standard_normal(
          (shape.prompt_length, shape.config.emb_dim), np.float32))}
    elif prompts == "mixed":
      hook = hooks.PromptHook(provider=providers.PromptTable(num_prompts=shape.batch,
                                                             length=shape.prompt_length))
      params["input_hook"] = {"prompt_table": jnp.asarray(rng.standard_normal(
          (shape.batch, shape.prompt_length, shape.config.emb_dim), np.float32))}
      batch["prompt_ids"] = jnp.arange(shape.batch, dtype=jnp.int32)
    model = EncoderDecoderModel(EncoderDecoder(config=shape.config, input_hook=hook), eos_id=never)
    decoder_params = {"method": search, "num_decodes": BEAMS if search == "beam" else 1}
    decode = jax.jit(functools.partial(model.predict_batch_with_scores,
                                       decoder_params=decoder_params,
                                       max_decode_length=shape.new_tokens))
    compiled = decode.lower(params, batch).compile()
    runs[method] = functools.partial(
        lambda c, p, b: jax.block_until_ready(c(p, b))[0][:, 0], compiled, params, batch)
  return runs


# ------------------------------------------------------------------------------------------------
# Hugging Face `generate`.


def build_hf(shape: DecodeShape, methods: Sequence[str], threads: int
             ) -> Dict[str, Callable[[], Any]]:
  """A random `T5ForConditionalGeneration` of the same configuration, float32, eval mode."""
  # pylint: disable=g-import-not-at-top
  import torch
  import transformers
  from benchmarks import peft_steps

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = peft_steps._t5_config(shapes_lib.get_shape(shape.name), transformers)
  model = transformers.T5ForConditionalGeneration(config).eval()
  input_ids = torch.from_numpy(random_inputs(shape).astype(np.int64))
  attention_mask = torch.ones_like(input_ids)
  runs = {}
  for method in methods:
    beams = BEAMS if METHODS[method][1] == "beam" else 1

    def run(beams=beams):
      with torch.inference_mode():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             max_new_tokens=shape.new_tokens, min_new_tokens=shape.new_tokens,
                             num_beams=beams, do_sample=False, early_stopping=False)
      return out.numpy()[:, 1:]  # drop the start token

    runs[method] = run
  return runs


# ------------------------------------------------------------------------------------------------
# Worker and driver (the protocol of `step_benchmark`'s workers).


def _serve(job: Dict[str, Any], commands, replies) -> None:
  from prompt_tuning.engine import host_memory  # pylint: disable=g-import-not-at-top
  host_memory.configure(job["host_allocator"])
  shape = get_shape(job["shape"], job["new_tokens"])
  if job["framework"] == "hf":
    runs = build_hf(shape, job["methods"], job["threads"])
  else:
    runs = build_ours(shape, job["methods"])
  lengths = {}
  for method, run in runs.items():
    for _ in range(max(job["warmup"], 1)):
      out = run()
    lengths[method] = int(np.asarray(out).shape[-1])

  def reply(message):
    replies.write(step_benchmark.REPLY_MARKER + json.dumps(message) + "\n")
    replies.flush()

  reply({"ready": True, "host_allocator": host_memory.applied_policy(), "lengths": lengths})
  for line in commands:
    command = json.loads(line)
    if "step" in command:
      start = time.perf_counter()
      runs[command["step"]]()
      reply({"wall_s": time.perf_counter() - start})
    else:
      reply({"done": True})
      return


def run_shape(shape_name: str, methods: Sequence[str], *, rounds: int, warmup: int,
              threads: int, new_tokens: Optional[int]) -> Dict[str, Any]:
  """Times every row of one shape in lockstep rounds; returns per-row seconds and lengths."""
  jobs = {}
  for framework in ("hf", "ours"):
    mine = [m for m in methods if METHODS[m][0] == framework]
    if mine:
      jobs[framework] = {
          "framework": framework, "shape": shape_name, "methods": mine, "warmup": warmup,
          "threads": threads, "host_allocator": "reuse", "new_tokens": new_tokens}
  done = step_benchmark.run_lockstep_rounds(
      jobs, methods, lambda method: METHODS[method][0], rounds=rounds,
      label=f"{shape_name} decode", module="benchmarks.decode_benchmark")
  lengths = {}
  for ready in done.ready.values():
    lengths.update(ready["lengths"])
  timings = {m: [reply["wall_s"] for reply in replies] for m, replies in done.steps.items()}
  return {"timings": timings, "lengths": lengths}


def format_table(shape: DecodeShape, result: Dict[str, Any]) -> str:
  """One line per row; `paired ratio` = median over rounds of baseline seconds / row seconds."""
  timings, lengths = result["timings"], result["lengths"]
  lines = []
  for method, walls in timings.items():
    best = min(walls)
    tokens = shape.batch * lengths[method]
    baseline = BASELINES.get(method)
    ratio = "-"
    if baseline in timings:
      ratio = f"{step_benchmark.paired_median(timings[baseline], walls):.2f}x"
    lines.append((shape.name, method, f"{best:.4g}", f"{tokens / best:.0f}",
                  baseline if baseline in timings else "-", ratio))
  widths = [max(len(str(c[i])) for c in [COLUMNS] + lines) for i in range(len(COLUMNS))]
  render = lambda cells: " | ".join(str(c).rjust(w) for c, w in zip(cells, widths))
  return "\n".join([render(COLUMNS), "-+-".join("-" * w for w in widths)]
                   + [render(c) for c in lines])


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="small", help="comma-separated: tiny,small,base")
  parser.add_argument("--methods", default=",".join(METHODS),
                      help=f"comma-separated subset of {', '.join(METHODS)}")
  parser.add_argument("--rounds", type=int, default=3, help="timed rounds")
  parser.add_argument("--warmup", type=int, default=1, help="untimed decodes after compiling")
  parser.add_argument("--threads", type=int, default=2, help="PyTorch intra-op threads")
  parser.add_argument("--new_tokens", type=int, default=None,
                      help="tokens decoded per example (default 64; 8 for tiny)")
  parser.add_argument("--quick", action="store_true",
                      help="tiny model, one round: prints every row, checks the plumbing")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.quick:
    args.shapes, args.rounds = "tiny", 1
  args.shapes = step_benchmark._parse_list(args.shapes, shapes_lib.SHAPE_NAMES, "shapes")
  args.methods = step_benchmark._parse_list(args.methods, tuple(METHODS), "methods")
  if args.rounds < 1 or args.warmup < 0:
    raise ValueError(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds}, "
                     f"{args.warmup}.")
  if args.new_tokens is not None and args.new_tokens < 1:
    raise ValueError(f"--new_tokens must be >= 1, got {args.new_tokens}.")
  return args


def main(argv: Optional[Sequence[str]] = None) -> None:
  try:
    args = parse_args(argv)
  except ValueError as error:
    sys.exit(f"error: {error}")
  if args.worker:
    _serve(json.loads(args.worker), sys.stdin, sys.stdout)
    return
  for shape_name in args.shapes:
    shape = get_shape(shape_name, args.new_tokens)
    result = run_shape(shape_name, args.methods, rounds=args.rounds, warmup=args.warmup,
                       threads=args.threads, new_tokens=args.new_tokens)
    print(f"Decode of batch {shape.batch} x {shape.input_length} input tokens, "
          f"{shape.new_tokens} new tokens each (prompt rows: {shape.prompt_length}-token "
          f"prompts); float32", flush=True)
    print(format_table(shape, result), flush=True)


if __name__ == "__main__":
  main()
