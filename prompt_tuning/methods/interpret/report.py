r"""One command to read a learned prompt: neighbours, norms, labels, heatmap, order ablations.

  python -m prompt_tuning.methods.interpret.report \
    --model_gin=gin/models/byte_t5_tiny.gin --base=/tmp/smoke/base/checkpoints/400/params \
    --prompt=/tmp/smoke/prompt --out_dir=/tmp/interpret [--labels=0,1,2] \
    [--task=smoke_last_digit --task_module=prompt_tuning.smoke_data.tasks \
     --lengths=inputs:16,targets:4 --num_examples=256]

Writes `<out_dir>/report.txt` (also printed) and `<out_dir>/similarity.png`:
* each prompt token's top-5 nearest vocabulary embeddings by cosine similarity, decoded;
* the prompt tokens' norms against the embedding table's;
* for each `--labels` class label, the prompt positions whose neighbours include its tokens;
* the prompt-token cosine similarity heatmap;
* with `--task`: the task metric with the prompt as learned, reversed and shuffled (3 fixed
  permutations), all in one batched pass through a prompt table.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from prompt_tuning.methods.interpret import analysis

SHUFFLE_SEEDS = (0, 1, 2)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.interpret.report",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--model_gin", action="append", required=True)
  parser.add_argument("--gin", action="append", default=[])
  parser.add_argument("--base", required=True, help="frozen base checkpoint or .npz")
  parser.add_argument("--prompt", required=True, help=".npy prompt or run folder")
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--labels", default="", help="comma-separated class labels")
  parser.add_argument("--task", default=None, help="run order ablations on this task")
  parser.add_argument("--task_module", default=None)
  parser.add_argument("--split", default="validation")
  parser.add_argument("--lengths", default="inputs:512,targets:16")
  parser.add_argument("--num_examples", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=32)
  return parser.parse_args(argv)


def unused_ids(vocabulary, table_rows: int) -> List[int]:
  """Padding and embedding rows past the vocabulary (never a meaningful neighbour)."""
  size = int(getattr(vocabulary, "vocab_size", table_rows))
  return [0] + list(range(size, table_rows))


def describe(prompt: np.ndarray, embeddings: np.ndarray, vocabulary, *, k: int = 5,
             labels: Sequence[str] = (), heatmap_path: Optional[str] = None) -> List[str]:
  """The text report of one prompt (and its heatmap when `heatmap_path` is given)."""
  ids, sims = analysis.nearest_neighbours(prompt, embeddings, k=k,
                                          exclude=unused_ids(vocabulary, embeddings.shape[0]))
  lines = [f"prompt {prompt.shape[0]} x {prompt.shape[1]}; top-{k} vocabulary neighbours "
           "(cosine):"]
  lines += analysis.neighbour_lines(ids, sims, vocabulary)
  lines += analysis.norms(prompt, embeddings).lines()
  if labels:
    hits = analysis.label_hits(ids, {l: list(vocabulary.encode(l)) for l in labels})
    for label, positions in hits.items():
      lines.append(f"label {label!r} among the neighbours of prompt positions: "
                   f"{positions if positions else 'none'}")
  similarity = analysis.similarity_matrix(prompt)
  off = similarity[~np.eye(len(similarity), dtype=bool)]
  if off.size:
    lines.append(f"prompt token cosine similarity (off-diagonal): mean {off.mean():+.3f}, "
                 f"max {off.max():+.3f}")
  if heatmap_path:
    analysis.save_heatmap(similarity, heatmap_path)
    lines.append(f"heatmap: {heatmap_path}")
  return lines


def order_ablation_lines(bank, data, prompt: np.ndarray, *, batch_size: int,
                         max_decode_length: int) -> List[str]:
  """The task metrics with the prompt learned / reversed / shuffled, in one batched pass."""
  from prompt_tuning.methods.ensemble import evaluate as ens  # pylint: disable=g-import-not-at-top
  variants = {"learned": prompt, "reversed": analysis.reorder(prompt, "reversed")}
  for seed in SHUFFLE_SEEDS:
    variants[f"shuffled(seed {seed})"] = analysis.reorder(prompt, "shuffled", seed)
  for name, value in variants.items():
    bank.add(name, value)
  report = ens.evaluate(bank, list(variants), data, batch_size=batch_size,
                        max_decode_length=max_decode_length, rules=())
  keys = list(report["mean"])
  lines = ["order ablations (" + ", ".join(keys) + f", {report['num_examples']} examples):"]
  for name, values in report["per_prompt"].items():
    lines.append(f"  {name:<18} " + "  ".join(f"{values[k]:8.2f}" for k in keys))
  return lines


def main(argv: Sequence[str]) -> List[str]:
  from prompt_tuning.methods.ensemble import bank as bank_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import evaluate as ens  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  prompt = loading.load_prompt(args.prompt)
  lengths = ens.parse_lengths(args.lengths)
  data = None
  if args.task:
    if args.task_module:
      importlib.import_module(args.task_module)
    data = ens.read_task(args.task, split=args.split, lengths=lengths,
                         num_examples=args.num_examples)
  model, vocabulary = loading.model_from_gin(args.model_gin, args.gin)
  config = model.module.config
  frozen = loading.frozen_params(config, args.base, prompt_length=prompt.shape[0], lengths={
      "encoder_input_tokens": lengths["inputs"], "decoder_input_tokens": lengths["targets"]})
  embeddings = np.asarray(frozen["token_embedder"]["embedding"])
  os.makedirs(args.out_dir, exist_ok=True)
  labels = [l for l in args.labels.split(",") if l]
  lines = describe(prompt, embeddings, vocabulary, k=args.k, labels=labels,
                   heatmap_path=os.path.join(args.out_dir, "similarity.png"))
  if data is not None:
    bank = bank_lib.PromptBank(config=config, frozen_params=frozen,
                               prompt_length=prompt.shape[0], capacity=2 + len(SHUFFLE_SEEDS))
    lines += order_ablation_lines(bank, data, prompt, batch_size=args.batch_size,
                                  max_decode_length=lengths["targets"])
  with open(os.path.join(args.out_dir, "report.txt"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  return lines


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None
