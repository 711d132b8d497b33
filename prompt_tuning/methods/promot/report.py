r"""ProMoT's comparison table: one row per method, the target metric, each other task, the mean.

  python -m prompt_tuning.methods.promot.report \
    --row="pretrained=/runs/pretrained/evaluate/metrics.json" \
    --row="fine-tuning=/runs/finetune/evaluate/metrics.json" \
    --row="ProMoT=/runs/promot/evaluate/metrics.json" \
    --target=mt5_super_glue_rte_v102/accuracy --fewshot_suite=mt5_:1

Each row reads the `metrics.json` of a `promot_eval` stage (`{'with_prompt': {...},
'without_prompt': {...}}`; a metric is looked up in both, the prompted one first for the target,
the prompt-free one for the other tasks). Columns: `--target` (the fine-tuned task's metric), then
each `--column=name=task/metric`, or the few-shot suite's headline metrics for one prefix and shot
count (`--fewshot_suite=mt5_:1`, tasks/fewshot.py), then the normalised average of those columns
(the plain mean of 0-100 scores, `data.metrics.normalized_average`). A missing value prints `-`
and leaves the row without an average.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.data import metrics as metrics_lib


def read_row(path: str) -> Dict[str, Dict[str, float]]:
  if not os.path.isfile(path):
    raise ValueError(f"No ProMoT metrics file {path}.")
  with open(path) as f:
    record = json.load(f)
  if not isinstance(record, dict) or not {"with_prompt", "without_prompt"} <= set(record):
    raise ValueError(f"{path} is not a promot_eval metrics file (no with_prompt/without_prompt).")
  return record


def lookup(record: Mapping[str, Mapping[str, float]], key: str, *,
           prefer_prompt: bool) -> Optional[float]:
  order = ("with_prompt", "without_prompt") if prefer_prompt else ("without_prompt",
                                                                     "with_prompt")
  for kind in order:
    if key in record.get(kind, {}):
      return float(record[kind][key])
  return None


def fewshot_columns(prefix: str, num_shots: int) -> List[Tuple[str, str]]:
  """`(name, 'task/metric')` of the headline metrics of the paper's eight suite tasks."""
  from tasks import fewshot  # pylint: disable=g-import-not-at-top
  suite = [fewshot.SUITE[name] for name in fewshot.PAPER_SUITE]
  return [(t.name, f"{fewshot.task_name(t.name, num_shots, name_prefix=prefix)}/{t.headline}")
          for t in suite]


def table(rows: Sequence[Tuple[str, Mapping[str, Mapping[str, float]]]], *, target: str,
          columns: Sequence[Tuple[str, str]]) -> List[List[str]]:
  """The table as text cells: a header, then one line per row."""
  header = ["method", f"target ({target})"] + [name for name, _ in columns] + ["norm. avg"]
  lines = [header]
  for label, record in rows:
    value = lookup(record, target, prefer_prompt=True)
    cells = [label, "-" if value is None else f"{value:.1f}"]
    scores = {}
    for name, key in columns:
      value = lookup(record, key, prefer_prompt=False)
      cells.append("-" if value is None else f"{value:.1f}")
      if value is not None:
        scores[name] = value
    complete = columns and len(scores) == len(columns)
    cells.append(f"{metrics_lib.normalized_average(scores):.1f}" if complete else "-")
    lines.append(cells)
  return lines


def format_table(lines: Sequence[Sequence[str]]) -> str:
  widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
  text = [" | ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
  text.insert(1, "-+-".join("-" * w for w in widths))
  return "\n".join(text)


def _split_pair(text: str, flag: str) -> Tuple[str, str]:
  name, equals, value = text.partition("=")
  if not equals or not name or not value:
    raise ValueError(f"{flag} must be NAME=VALUE, got {text!r}.")
  return name, value


def main(argv: Sequence[str]) -> str:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.promot.report",
                                   description="Print ProMoT's comparison table.")
  parser.add_argument("--row", action="append", default=[], help="LABEL=path/to/metrics.json")
  parser.add_argument("--target", required=True, help="the target task's 'task/metric'")
  parser.add_argument("--column", action="append", default=[], help="NAME=task/metric")
  parser.add_argument("--fewshot_suite", default=None,
                      help="PREFIX:SHOTS, the few-shot suite's columns (e.g. 'mt5_:1', ':4')")
  args = parser.parse_args(list(argv))
  if not args.row:
    raise ValueError("Give at least one --row=LABEL=path/to/metrics.json.")
  rows = [(label, read_row(path)) for label, path in
          (_split_pair(r, "--row") for r in args.row)]
  columns = [_split_pair(c, "--column") for c in args.column]
  if args.fewshot_suite:
    prefix, _, shots = args.fewshot_suite.partition(":")
    if not shots.isdigit():
      raise ValueError(f"--fewshot_suite must be PREFIX:SHOTS, got {args.fewshot_suite!r}.")
    columns += fewshot_columns(prefix, int(shots))
  text = format_table(table(rows, target=args.target, columns=columns))
  print(text)
  return text


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except ValueError as error:
    print(f"Error: {error}", file=sys.stderr)
    sys.exit(1)
