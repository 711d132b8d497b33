r"""The domain-shift table: per task, prompt tuning and model tuning as mean +- std over seeds.

  python -m prompt_tuning.methods.domain_shift.report --pipeline_dir=/runs/squad_mrqa_xxl \
    [--row="TextbookQA=mrqa_textbook_qa_v100/f1" ...] [--out=table.txt]

A pipeline folder holds one eval stage per method and seed, named `<method>_seed<k>_eval`
(`pt` = prompt tuning, `mt` = model tuning), each with `metrics/infer_eval.jsonl`; the last row
of each file is that run's result. Rows are `label=task/metric` (default: every metric the runs
report, sorted); columns are each method's mean +- standard deviation over its seeds and the
difference of the means (prompt tuning minus model tuning). The standard deviation is the sample
one (ddof=1, the spread an unseen seed would show); with one seed it is not defined and prints
`-`. The pipelines run this as their last stage (`domain_shift_report`, steps.py), which also
writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from prompt_tuning.engine import reporting

METHODS = {"pt": "prompt tuning", "mt": "model tuning"}
STAGE = re.compile(r"^(?P<method>[a-z]+)_seed(?P<seed>\d+)_eval$")


@dataclasses.dataclass(frozen=True)
class Summary:
  """One method's values of one row over its seeds."""

  values: Tuple[float, ...]

  @property
  def mean(self) -> float:
    return sum(self.values) / len(self.values)

  @property
  def std(self) -> float:
    """Sample standard deviation (ddof=1); NaN for fewer than two seeds."""
    n = len(self.values)
    if n < 2:
      return math.nan
    mean = self.mean
    return math.sqrt(sum((v - mean) ** 2 for v in self.values) / (n - 1))


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  key: str  # 'task/metric'
  summaries: Mapping[str, Summary]  # method -> summary

  def difference(self, first: str, second: str) -> float:
    return self.summaries[first].mean - self.summaries[second].mean


# The last row of an eval run's `infer_eval.jsonl` (a file, or the run folder holding it).
read_metrics = reporting.last_eval_metrics


def collect(pipeline_dir: str) -> Dict[str, List[str]]:
  """`{method: [eval folder of each seed, by seed]}` from a pipeline folder's stage names."""
  if not os.path.isdir(pipeline_dir):
    raise ValueError(f"Pipeline folder {pipeline_dir} does not exist.")
  found: Dict[str, List[Tuple[int, str]]] = {}
  for name in sorted(os.listdir(pipeline_dir)):
    match = STAGE.match(name)
    folder = os.path.join(pipeline_dir, name)
    if match and os.path.isfile(reporting.metrics_file(folder, "infer_eval")):
      found.setdefault(match["method"], []).append((int(match["seed"]), folder))
  if not found:
    raise ValueError(f"{pipeline_dir} holds no finished eval stage named <method>_seed<k>_eval.")
  return {method: [path for _, path in sorted(runs)] for method, runs in found.items()}


def summarise(runs: Mapping[str, Sequence[Mapping[str, float]]],
              rows: Optional[Sequence[Tuple[str, str]]] = None) -> List[Row]:
  """Rows of mean/std per method from each seed's `{'task/metric': value}`.

  Args:
    runs: `{method: [metrics of seed 0, seed 1, ...]}`.
    rows: `(label, 'task/metric')` in display order; default every key, sorted, labelled by
      itself.
  """
  if not runs or any(not seeds for seeds in runs.values()):
    raise ValueError("Every method needs the metrics of at least one seed.")
  if rows is None:
    keys = sorted(set().union(*(m for seeds in runs.values() for m in seeds)))
    rows = [(key, key) for key in keys]
  out = []
  for label, key in rows:
    summaries = {}
    for method, seeds in runs.items():
      missing = [i for i, metrics in enumerate(seeds) if key not in metrics]
      if missing:
        raise ValueError(f"Metric {key!r} is missing from {method} run(s) {missing}; it has "
                         f"{sorted(seeds[missing[0]])}.")
      summaries[method] = Summary(tuple(float(metrics[key]) for metrics in seeds))
    out.append(Row(label=label, key=key, summaries=summaries))
  return out


def _cell(summary: Summary) -> str:
  std = summary.std
  return f"{summary.mean:.1f} ± {'-' if math.isnan(std) else f'{std:.1f}'}"


def format_table(rows: Sequence[Row], *, first: str = "pt", second: str = "mt") -> str:
  """Text table: task, first method, second method (mean ± std), difference of the means."""
  name = lambda m: METHODS.get(m, m)
  seeds = {m: len(rows[0].summaries[m].values) for m in (first, second)} if rows else {}
  header = ["task", f"{name(first)} ({seeds.get(first, 0)} seeds)",
            f"{name(second)} ({seeds.get(second, 0)} seeds)", f"{first.upper()} - {second.upper()}"]
  lines = [header] + [[row.label, _cell(row.summaries[first]), _cell(row.summaries[second]),
                       f"{row.difference(first, second):+.1f}"] for row in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
  text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                    enumerate(zip(line, widths))) for line in lines]
  text.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(text)


def as_json(rows: Sequence[Row], *, first: str = "pt", second: str = "mt") -> List[Dict]:
  return [{"label": row.label, "key": row.key,
           **{m: {"values": list(s.values), "mean": s.mean,
                  "std": None if math.isnan(s.std) else s.std}
              for m, s in row.summaries.items()},
           "difference": row.difference(first, second)} for row in rows]


def report(runs: Mapping[str, Sequence[str]], rows: Optional[Sequence[Tuple[str, str]]] = None,
           *, first: str = "pt", second: str = "mt") -> Tuple[List[Row], str]:
  """Reads each run's metrics (`{method: [paths]}`), returns the rows and the text table."""
  for method in (first, second):
    if method not in runs:
      raise ValueError(f"No {METHODS.get(method, method)} runs ({method}) to report; got "
                       f"{sorted(runs)}.")
  metrics = {method: [read_metrics(p) for p in paths] for method, paths in runs.items()}
  summary = summarise(metrics, rows)
  return summary, format_table(summary, first=first, second=second)


def parse_row(text: str) -> Tuple[str, str]:
  label, sep, key = text.partition("=")
  if not sep or "/" not in key or not label:
    raise ValueError(f"Row {text!r} must be LABEL=task/metric.")
  return label, key


def main(argv: Optional[Sequence[str]] = None) -> str:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.domain_shift.report",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--pipeline_dir", required=True,
                      help="the pipeline folder holding <method>_seed<k>_eval stages")
  parser.add_argument("--row", action="append", default=None,
                      help="LABEL=task/metric, repeatable, in display order (default: all)")
  parser.add_argument("--out", default=None, help="also write the table to this file")
  args = parser.parse_args(argv)
  rows = [parse_row(r) for r in args.row] if args.row else None
  _, text = report(collect(args.pipeline_dir), rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return text


if __name__ == "__main__":
  try:
    main()
  except ValueError as error:
    sys.exit(f"domain_shift.report: {error}")
