r"""Learning curves of one or several runs side by side, and a table of final / best values.

  python -m prompt_tuning.report MODEL_DIR [MODEL_DIR ...] [--out FILE.png] [--metrics NAME ...]

Reads each run's `metrics/*.jsonl` (what `engine.reporting.MetricsWriter` writes) and draws one
panel per metric with one line per run, labelled by the run's folder name. Metric names are
those of the JSONL files, as `CheckpointConfig.best_metric` names them: training metrics as
they are (`loss`, `learning_rate`, ...), infer-eval metrics as `task/metric`, train-eval ones as
`train_eval/task/metric`. `--metrics` takes names or shell patterns (`'*/accuracy'`); the
default is loss, learning rate and every eval metric. A training run draws the same picture of
itself into `metrics/learning_curves.png` as it goes.

Drawing uses matplotlib's Agg canvas directly (no pyplot, so no global backend or GUI state).
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from prompt_tuning.engine import reporting

DEFAULT_TRAIN_METRICS = ("loss", "learning_rate")
PANEL_INCHES = (5.0, 3.5)
DPI = 100
MAX_COLUMNS = 3
# Best = the minimum for these (matched against the metric's last path component) ...
_LOWER_IS_BETTER = ("loss", "perplexity", "error")
# ... no "best" at all for these; the maximum for everything else (accuracy, F1, log-likelihood).
_NO_BEST = ("learning_rate", "steps_per_sec", "examples_per_sec")
_PREFIX = {reporting.TRAIN: "", reporting.TRAIN_EVAL: "train_eval/", reporting.INFER_EVAL: ""}


@dataclasses.dataclass
class Run:
  """One run's metrics: `series[name] = (steps, values)`, steps increasing."""
  name: str
  model_dir: str
  series: Dict[str, Tuple[List[int], List[float]]]


def _number(value) -> Optional[float]:
  try:
    return float(value)  # the writer stores non-finite values as "nan" / "inf" text
  except (TypeError, ValueError):
    return None


def load_run(model_dir: str, name: Optional[str] = None) -> Run:
  """Reads a run's metrics; a row repeated at a step (a replayed step) keeps its last values."""
  by_name: Dict[str, Dict[int, float]] = {}
  found = False
  for kind in reporting.KINDS:
    path = os.path.join(model_dir, "metrics", f"{kind}.jsonl")
    if not os.path.exists(path):
      continue
    found = True
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
          step = int(record.pop("step"))
        except (ValueError, KeyError, TypeError, AttributeError):
          continue  # an empty line, or one a kill cut short
        for metric, value in record.items():
          value = _number(value)
          if value is not None:
            by_name.setdefault(_PREFIX[kind] + metric, {})[step] = value
  if not found:
    raise FileNotFoundError(
        f"No metrics in {model_dir!r}: expected metrics/train.jsonl, train_eval.jsonl or "
        "infer_eval.jsonl (written by a training run) under it.")
  series = {metric: (sorted(points), [points[s] for s in sorted(points)])
            for metric, points in by_name.items()}
  return Run(name=name or os.path.basename(os.path.normpath(model_dir)), model_dir=model_dir,
             series=series)


def load_runs(model_dirs: Sequence[str]) -> List[Run]:
  """Runs named by folder; folders of the same name are told apart by their whole path."""
  names = [os.path.basename(os.path.normpath(d)) for d in model_dirs]
  if len(set(names)) < len(names):
    names = [os.path.normpath(d) for d in model_dirs]
  return [load_run(d, name) for d, name in zip(model_dirs, names)]


def _is_eval(metric: str) -> bool:
  return "/" in metric


def select_metrics(runs: Sequence[Run], patterns: Optional[Sequence[str]] = None) -> List[str]:
  """The metrics to show, in order: the patterns' matches, or loss, learning rate and evals."""
  available: List[str] = []
  for run in runs:
    available += [m for m in run.series if m not in available]
  if not patterns:
    train = [m for m in DEFAULT_TRAIN_METRICS if m in available]
    return train + sorted(m for m in available if _is_eval(m))
  chosen: List[str] = []
  for pattern in patterns:
    matches = [m for m in available if fnmatch.fnmatchcase(m, pattern)]
    if not matches:
      raise ValueError(f"No metric matches {pattern!r}; the runs have: "
                       f"{', '.join(sorted(available))}.")
    chosen += [m for m in matches if m not in chosen]
  return chosen


def figure_size(num_metrics: int) -> Tuple[int, int]:
  """The PNG's `(width, height)` in pixels for this many panels."""
  columns = max(1, min(MAX_COLUMNS, num_metrics))
  rows = max(1, math.ceil(num_metrics / columns))
  return (round(columns * PANEL_INCHES[0] * DPI), round(rows * PANEL_INCHES[1] * DPI))


def plot_runs(runs: Sequence[Run], path: str,
              metrics: Optional[Sequence[str]] = None) -> Tuple[int, int]:
  """Draws one panel per metric, one line per run; writes `path` atomically; returns its size."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  metrics = list(metrics) if metrics is not None else select_metrics(runs)
  width, height = figure_size(len(metrics))
  figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
  FigureCanvasAgg(figure)
  columns = max(1, min(MAX_COLUMNS, len(metrics)))
  axes = figure.subplots(max(1, math.ceil(len(metrics) / columns)), columns, squeeze=False)
  for index, ax in enumerate(axes.flat):
    if index >= len(metrics):
      ax.set_visible(False)
      continue
    metric = metrics[index]
    for run in runs:
      if metric in run.series:
        steps, values = run.series[metric]
        ax.plot(steps, values, label=run.name, marker="o" if len(steps) < 30 else None,
                markersize=3)
    ax.set_title(metric, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  if not metrics:
    axes.flat[0].set_visible(True)
    axes.flat[0].text(0.5, 0.5, "no metrics yet", ha="center", va="center")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = os.path.join(directory, f".{os.path.basename(path)}.tmp.png")
  figure.savefig(temporary, dpi=DPI)
  os.replace(temporary, path)
  return width, height


def best_direction(metric: str) -> Optional[str]:
  """'min', 'max', or None where 'best' means nothing (the learning rate, throughput)."""
  last = metric.rsplit("/", 1)[-1]
  if last in _NO_BEST:
    return None
  return "min" if any(word in last for word in _LOWER_IS_BETTER) else "max"


def summary_rows(runs: Sequence[Run], metrics: Sequence[str]) -> List[Dict[str, object]]:
  """Per run and metric: the final value and step, the best value and step (None: no best)."""
  rows = []
  for run in runs:
    for metric in metrics:
      if metric not in run.series:
        continue
      steps, values = run.series[metric]
      row = {"run": run.name, "metric": metric, "final": values[-1], "final_step": steps[-1],
             "best": None, "best_step": None}
      direction = best_direction(metric)
      finite = [(v, s) for s, v in zip(steps, values) if math.isfinite(v)]
      if direction and finite:
        pick = min if direction == "min" else max  # ties: the earliest step
        value, step = pick(finite, key=lambda pair: pair[0])
        row.update(best=value, best_step=step)
      rows.append(row)
  return rows


def format_table(rows: Sequence[Dict[str, object]]) -> str:
  """An aligned text table: run, metric, final (step), best (step)."""
  def cell(value, step):
    return "-" if value is None else f"{value:.4g} (step {step})"
  table = [("run", "metric", "final", "best")]
  table += [(str(r["run"]), str(r["metric"]), cell(r["final"], r["final_step"]),
             cell(r["best"], r["best_step"])) for r in rows]
  widths = [max(len(line[i]) for line in table) for i in range(4)]
  return "\n".join("  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip()
                   for line in table)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, object]]:
  """Plots the runs, prints the table; returns the table's rows."""
  parser = argparse.ArgumentParser(
      prog="prompt_tuning.report",
      description="Plot the learning curves of one or several runs side by side and print "
                  "their final and best values.")
  parser.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR",
                      help="training runs' folders (each holds metrics/*.jsonl)")
  parser.add_argument("--out", default="report.png", help="the PNG to write (default: %(default)s)")
  parser.add_argument("--metrics", nargs="+", metavar="NAME",
                      help="metric names or shell patterns such as '*/accuracy' (default: loss, "
                           "learning_rate and every eval metric)")
  args = parser.parse_args(argv)
  runs = load_runs(args.model_dirs)
  metrics = select_metrics(runs, args.metrics)
  width, height = plot_runs(runs, args.out, metrics)
  rows = summary_rows(runs, metrics)
  print(format_table(rows))
  print(f"Wrote {args.out} ({width}x{height}, {len(metrics)} metrics, {len(runs)} runs)")
  return rows


def console_main(argv: Optional[Sequence[str]] = None) -> None:
  """`python -m prompt_tuning.report`: a bad folder or pattern prints one sentence, exit 1."""
  try:
    main(sys.argv[1:] if argv is None else argv)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  console_main()
