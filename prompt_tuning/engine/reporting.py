"""Metrics out of a run: JSONL files, TensorBoard summaries, log lines and a progress bar.

Every scalar a run reports goes to three places (on the primary process only, so a pod writes
each file once):

  <model_dir>/metrics/<kind>.jsonl    one JSON object per report: {"step": N, "name": value, ...}
  <model_dir>/summaries/<kind>/       TensorBoard event files (scalar summaries)
  the log                             one line per training report

`kind` is 'train', 'train_eval' or 'infer_eval'. TensorBoard files are written with TensorFlow's
low-level summary op and the scalar plugin's metadata, which TensorBoard reads like any scalar
summary; the `tensorboard` package itself is not needed to write them.

Training reports carry loss, accuracy, learning rate, steps/s, examples/s and the ETA. In an
interactive terminal a one-line progress bar is redrawn after every step; in a log file (no
TTY) only the periodic report lines appear.
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

_LOG = logging.getLogger("prompt_tuning")
TRAIN = "train"
TRAIN_EVAL = "train_eval"
INFER_EVAL = "infer_eval"


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


class _TensorBoardWriter:
  """Scalar summaries in TensorBoard's event-file format, one writer per kind."""

  def __init__(self, directory: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top

    self._tf = tf
    self._writer = tf.summary.create_file_writer(directory)
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
        data_class=summary_pb2.DATA_CLASS_SCALAR)

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    tf = self._tf
    with self._writer.as_default():
      for name, value in scalars.items():
        tf.summary.write(name, tf.constant(value, tf.float32), step=step,
                         metadata=self._metadata)
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class MetricsWriter:
  """Writes scalars of one run to JSONL and TensorBoard (primary process only)."""

  def __init__(self, *, model_dir: str, is_primary: bool = True, tensorboard: bool = True):
    self.model_dir = model_dir
    self.is_primary = is_primary
    self._tensorboard = tensorboard
    self._tb: Dict[str, _TensorBoardWriter] = {}

  def jsonl_path(self, kind: str) -> str:
    return os.path.join(self.model_dir, "metrics", f"{kind}.jsonl")

  def write(self, kind: str, step: int, scalars: Mapping[str, Any]) -> Dict[str, float]:
    """Writes `scalars` (numbers or 0-d arrays) for `step`; returns them as floats."""
    values = {name: _scalar(value) for name, value in scalars.items()}
    if not self.is_primary:
      return values
    path = self.jsonl_path(kind)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = {"step": int(step), **{k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}
    with open(path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
    if self._tensorboard:
      if kind not in self._tb:
        self._tb[kind] = _TensorBoardWriter(os.path.join(self.model_dir, "summaries", kind))
      self._tb[kind].write(int(step), values)
    return values

  def close(self) -> None:
    for writer in self._tb.values():
      writer.close()
    self._tb.clear()


def read_jsonl(path: str) -> list:
  """The records of a metrics JSONL file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class ProgressBar:
  """A one-line bar redrawn in place; draws nothing when the stream is not a terminal."""

  def __init__(self, *, total: int, stream: Optional[TextIO] = None, width: int = 30):
    self.stream = stream or sys.stdout
    self.total = max(total, 1)
    self.width = width
    self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
    self._drawn = False

  def update(self, step: int, suffix: str = "") -> None:
    if not self.enabled:
      return
    filled = int(self.width * min(step, self.total) / self.total)
    bar = "#" * filled + "-" * (self.width - filled)
    self.stream.write(f"\r[{bar}] {step}/{self.total} {suffix}\033[K")
    self.stream.flush()
    self._drawn = True

  def clear(self) -> None:
    """Ends the bar's line so that a log line does not overwrite it."""
    if self._drawn:
      self.stream.write("\n")
      self.stream.flush()
      self._drawn = False


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
    self._bar = ProgressBar(total=total_steps, stream=stream)
    self._bar.enabled = self._bar.enabled and writer.is_primary
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
    elapsed = self._clock() - self._start_time
    done = step - self._start_step
    eta = (self.total_steps - step) * elapsed / done if done else float("inf")
    self._bar.update(step, f"ETA {format_duration(eta)}")

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
    self._sums, self._count = {}, 0
    self._last_time, self._last_step = now, step
    return values


def format_train_line(step: int, total: int, values: Mapping[str, float], eta: float) -> str:
  parts = [f"step {step}/{total}"]
  for name, fmt in (("loss", "{:.4f}"), ("accuracy", "{:.3f}"), ("learning_rate", "{:.3g}"),
                    ("steps_per_sec", "{:.2f}"), ("examples_per_sec", "{:.1f}")):
    if name in values:
      parts.append(f"{name} " + fmt.format(values[name]))
  parts.append(f"ETA {format_duration(eta)}")
  return ", ".join(parts)


def flatten_eval_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> Dict[str, float]:
  """`{task: {metric: value}}` -> `{'task/metric': value}` for numeric values."""
  flat = {}
  for task, values in (metrics or {}).items():
    for name, value in values.items():
      value = getattr(value, "value", value)  # seqio may wrap values in clu metric objects
      try:
        flat[f"{task}/{name}"] = _scalar(value)
      except (TypeError, ValueError):
        continue
  return flat


def configure_logging(level: int = logging.INFO) -> None:
  """Sends the project's log lines to stderr with timestamps (entry points call this)."""
  if not _LOG.handlers:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    _LOG.addHandler(handler)
  _LOG.setLevel(level)
  _LOG.propagate = False
