"""Metrics out of a run: JSONL files, TensorBoard summaries, learning curves, log lines, progress.

Every scalar a run reports goes to these places (on the primary process only, so a pod writes
each file once):

  <model_dir>/metrics/<kind>.jsonl    one JSON object per report: {"step": N, "name": value, ...}
  <model_dir>/summaries/<kind>/       TensorBoard event files (`clu.metric_writers`), read by
                                      `tensorboard --logdir <model_dir>`
  <model_dir>/metrics/learning_curves.png
                                      training runs only: loss, learning rate and eval metrics
                                      against the step, redrawn at every eval and at the end
  the log                             one line per training report

`kind` is 'train', 'train_eval' or 'infer_eval'. A resumed run replays the steps after its
checkpoint, so when training starts at step S the rows past S (written by the interrupted run)
are moved out of the JSONL files into `<kind>.dropped.jsonl`, and the curves never double back.

Training reports carry loss, accuracy, learning rate, steps/s, examples/s and the ETA. Progress
bars (tqdm) show training, evaluation and inference in an interactive terminal; in a log file
(no TTY) only the periodic report lines appear. `PROMPT_TUNING_PROGRESS=0` hides the bars in a
terminal, `=1` shows them in a pipe.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, TextIO

import numpy as np
import tqdm

_LOG = logging.getLogger("prompt_tuning")
TRAIN = "train"
TRAIN_EVAL = "train_eval"
INFER_EVAL = "infer_eval"
KINDS = (TRAIN, TRAIN_EVAL, INFER_EVAL)
LEARNING_CURVES = "learning_curves.png"
PROGRESS_ENV = "PROMPT_TUNING_PROGRESS"


def format_duration(seconds: float) -> str:
  """`3725` -> `'1:02:05'`; unknown (inf/NaN) -> `'?'`."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def _scalar(value: Any) -> float:
  return float(np.asarray(value))


def _summary_writer(directory: str) -> Any:
  """clu's TensorBoard writer (scalars as TF summaries) for one kind's folder."""
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"TensorBoard summaries need `clu` and `tensorboard` ({e}); install the "
                      "package with `pip install -e .`, or pass tensorboard=False.") from e
  return metric_writers.SummaryWriter(directory)


class MetricsWriter:
  """Writes scalars of one run to JSONL and TensorBoard (primary process only).

  `begin_training(start_step)` (the `TrainingReporter` calls it) marks the writer as a training
  run's: rows past the start step are dropped, and the learning-curve PNG is drawn at every eval
  write and on `close`.
  """

  def __init__(self, *, model_dir: str, is_primary: bool = True, tensorboard: bool = True,
               learning_curves: bool = False):
    self.model_dir = model_dir
    self.is_primary = is_primary
    self.learning_curves = learning_curves
    self._tensorboard = tensorboard
    self._tb: Dict[str, Any] = {}
    self._wrote = False

  def jsonl_path(self, kind: str) -> str:
    return metrics_file(self.model_dir, kind)

  @property
  def learning_curves_path(self) -> str:
    return os.path.join(self.model_dir, "metrics", LEARNING_CURVES)

  def write(self, kind: str, step: int, scalars: Mapping[str, Any]) -> Dict[str, float]:
    """Writes `scalars` (numbers or 0-d arrays) for `step`; returns them as floats."""
    values = {name: _scalar(value) for name, value in scalars.items()}
    if not self.is_primary:
      return values
    path = self.jsonl_path(kind)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"step": int(step),
              **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
    with open(path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    self._wrote = True
    if self._tensorboard:
      if kind not in self._tb:
        self._tb[kind] = _summary_writer(os.path.join(self.model_dir, "summaries", kind))
      self._tb[kind].write_scalars(int(step), values)
      self._tb[kind].flush()
    if kind != TRAIN:
      self.draw_learning_curves()
    return values

  def begin_training(self, start_step: int) -> int:
    """A training run starts (or resumes) at `start_step`: drops later rows, turns on the PNG.

    Returns how many rows were moved to `<kind>.dropped.jsonl`.
    """
    self.learning_curves = True
    return self.drop_rows_after(start_step)

  def drop_rows_after(self, step: int) -> int:
    """Moves rows with a step past `step` (and lines a kill cut short) out of the JSONL files.

    They go, verbatim, to `metrics/<kind>.dropped.jsonl` (nothing is deleted); the kept rows
    are rewritten atomically. Returns the number of rows moved.
    """
    if not self.is_primary:
      return 0
    moved = 0
    for kind in KINDS:
      path = self.jsonl_path(kind)
      if not os.path.exists(path):
        continue
      with open(path) as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
      steps = [_row_step(line) for line in lines]
      keep = [line for line, at in zip(lines, steps) if at is not None and at <= step]
      late = [line for line, at in zip(lines, steps) if at is None or at > step]
      if not late:
        continue
      with open(os.path.join(self.model_dir, "metrics", f"{kind}.dropped.jsonl"), "a") as f:
        f.writelines(line + "\n" for line in late)
      with open(path + ".tmp", "w") as f:
        f.writelines(line + "\n" for line in keep)
      os.replace(path + ".tmp", path)
      moved += len(late)
      _LOG.info("Training starts at step %d: moved %d rows written past it from %s to %s.",
                step, len(late), path, f"{kind}.dropped.jsonl")
    return moved

  def draw_learning_curves(self) -> Optional[str]:
    """Redraws `metrics/learning_curves.png` from the JSONL files (training runs only).

    A picture is not worth stopping a run for: a failure to draw is logged, not raised.
    """
    if not (self.is_primary and self.learning_curves):
      return None
    from prompt_tuning import report  # pylint: disable=g-import-not-at-top
    try:
      run = report.load_run(self.model_dir)
      report.plot_runs([run], self.learning_curves_path)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning("Could not draw %s: %s", self.learning_curves_path, e)
      return None
    return self.learning_curves_path

  def close(self) -> None:
    if self._wrote:
      self.draw_learning_curves()
    for writer in self._tb.values():
      writer.close()
    self._tb.clear()


def _row_step(line: str) -> Optional[int]:
  """The step of one JSONL row, or None for a line that is not a complete record."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def read_jsonl(path: str) -> list:
  """The records of a metrics JSONL file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def metrics_file(model_dir: str, kind: str) -> str:
  """`<model_dir>/metrics/<kind>.jsonl`, where `MetricsWriter` writes a kind's records."""
  return os.path.join(model_dir, "metrics", f"{kind}.jsonl")


def last_eval_metrics(path: str) -> Dict[str, float]:
  """The metrics of the last record of a finished evaluation, without its step, as floats.

  `path` is a metrics JSONL file, or a run folder (its `metrics/infer_eval.jsonl` is read).
  Reports that compare finished eval runs read them here, with one set of error sentences.
  """
  if os.path.isdir(path):
    path = metrics_file(path, "infer_eval")
  if not os.path.isfile(path):
    raise ValueError(f"No evaluation metrics file {path}; has that eval stage finished?")
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  if not lines:
    raise ValueError(f"Evaluation metrics file {path} is empty.")
  try:
    record = json.loads(lines[-1])
  except json.JSONDecodeError:
    raise ValueError(f"The last line of {path} is not a JSON record.") from None
  return {k: float(v) for k, v in record.items() if k != "step"}


def show_progress(stream: Optional[TextIO] = None, *, primary: bool = True) -> bool:
  """Bars on the primary process in a terminal; `PROMPT_TUNING_PROGRESS=0/1` overrides the TTY."""
  if not primary:
    return False
  forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
  if forced in ("0", "false", "no", "off"):
    return False
  if forced in ("1", "true", "yes", "on"):
    return True
  stream = stream or sys.stderr
  return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Any = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             unit: str = "it", initial: int = 0, stream: Optional[TextIO] = None,
             primary: bool = True, leave: bool = True) -> tqdm.tqdm:
  """A tqdm bar on `stream` (stderr), disabled (drawing nothing) where `show_progress` says."""
  stream = stream or sys.stderr
  return tqdm.tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=stream,
                   leave=leave, dynamic_ncols=True, mininterval=0.5,
                   disable=not show_progress(stream, primary=primary))


def known_length(dataset: Any) -> Optional[int]:
  """A tf.data dataset's length when TensorFlow knows it (else None: the bar just counts)."""
  try:
    length = int(dataset.cardinality())
  except (AttributeError, TypeError, ValueError):
    return None
  return length if length >= 0 else None


class TrainingReporter:
  """Turns per-step metric sums into periodic training reports.

  The trainer adds each step's metrics (device arrays; summing them does not wait for the
  device) and calls `report` at log steps, which averages, converts and writes them.
  """

  def __init__(self, *, writer: MetricsWriter, total_steps: int, batch_size: int,
               start_step: int, stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.time):
    self.writer = writer
    self._clock = clock
    self.total_steps = total_steps
    self.batch_size = batch_size
    writer.begin_training(start_step)
    self._bar = progress(total=total_steps, initial=start_step, desc="train", unit="step",
                         stream=stream, primary=writer.is_primary)
    self._sums: Dict[str, Any] = {}
    self._latest: Dict[str, Any] = {}
    self._count = 0
    self._start_time = clock()
    self._start_step = start_step
    self._last_time = self._start_time
    self._last_step = start_step

  def add(self, metrics: Mapping[str, Any]) -> None:
    for name, value in metrics.items():
      if name == "learning_rate":  # reported as the latest step's rate, not an average
        self._latest["learning_rate"] = value
        continue
      self._sums[name] = value if name not in self._sums else self._sums[name] + value
    self._count += 1

  def step_done(self, step: int) -> None:
    self._bar.update(step - self._bar.n)

  def report(self, step: int) -> Dict[str, float]:
    """Writes the averages since the last report plus throughput; returns what it wrote."""
    if not self._count:
      return {}
    now = self._clock()
    means = {name: _scalar(total) / self._count for name, total in self._sums.items()}
    means.update({name: _scalar(value) for name, value in self._latest.items()})
    seconds = max(now - self._last_time, 1e-9)
    steps_per_sec = (step - self._last_step) / seconds
    total_rate = (step - self._start_step) / max(now - self._start_time, 1e-9)
    eta = (self.total_steps - step) / total_rate if total_rate > 0 else float("inf")
    means.update({
        "steps_per_sec": steps_per_sec,
        "examples_per_sec": steps_per_sec * self.batch_size,
    })
    values = self.writer.write(TRAIN, step, means)
    self._bar.clear()
    if self.writer.is_primary:
      _LOG.info("%s", format_train_line(step, self.total_steps, values, eta))
    if step >= self.total_steps:
      self.close()
    else:
      self._bar.refresh()
    self._sums, self._count = {}, 0
    self._last_time, self._last_step = now, step
    return values

  def close(self) -> None:
    """Ends the progress bar (the last report does this itself)."""
    self._bar.close()


def format_train_line(step: int, total: int, values: Mapping[str, float], eta: float) -> str:
  parts = [f"step {step}/{total}"]
  for name, fmt in (("loss", "{:.4f}"), ("accuracy", "{:.3f}"), ("learning_rate", "{:.3g}"),
                    ("steps_per_sec", "{:.2f}"), ("examples_per_sec", "{:.1f}")):
    if name in values:
      parts.append(f"{name} " + fmt.format(values[name]))
  parts.append(f"ETA {format_duration(eta)}")
  return ", ".join(parts)


AVERAGE_PREFIX = "average"


def flatten_eval_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> Dict[str, float]:
  """`{task: {metric: value}}` -> `{'task/metric': value}` for numeric values.

  A metric that two or more tasks report (a mixture's held-out tasks) also gets its plain mean
  over those tasks as `average/<metric>`, so a run can keep its best checkpoint by the average
  dev score (`CheckpointConfig.best_metric = 'average/accuracy'`).
  """
  flat, by_name = {}, {}
  for task, values in (metrics or {}).items():
    for name, value in values.items():
      value = getattr(value, "value", value)  # seqio may wrap values in clu metric objects
      try:
        flat[f"{task}/{name}"] = _scalar(value)
      except (TypeError, ValueError):
        continue
      by_name.setdefault(name, []).append(flat[f"{task}/{name}"])
  for name, values in by_name.items():
    if len(values) > 1 and AVERAGE_PREFIX not in metrics:
      flat[f"{AVERAGE_PREFIX}/{name}"] = float(sum(values) / len(values))
  return flat


class _AboveProgressBars(logging.StreamHandler):
  """Prints each log line above the progress bars on its terminal, not into the middle of one."""

  def emit(self, record: logging.LogRecord) -> None:
    with tqdm.tqdm.external_write_mode(file=self.stream):
      super().emit(record)


def configure_logging(level: int = logging.INFO) -> None:
  """Sends the project's log lines to stderr with timestamps (entry points call this)."""
  if not _LOG.handlers:
    handler = _AboveProgressBars()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    _LOG.addHandler(handler)
  _LOG.setLevel(level)
  _LOG.propagate = False
