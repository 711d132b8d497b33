"""Keeps the libraries' start-up and routine chatter out of the command-line tools' output.

On a CPU machine TensorFlow (used for the data pipelines) prints its oneDNN and CPU-feature
notices and a CUDA-driver error when it probes for GPUs; its C++ logging writes these before
its log-level setting applies, so they are filtered from the process's stderr while TensorFlow
starts. Orbax repeats "Metadata file does not exist" when restoring from a step folder and
notes that a checkpoint folder opened for reading is read-only, and SeqIO warns that function
tasks are not cached and that evaluation lengths exceed the data; these routine messages are
dropped from absl's logger by their text. Every other Python log message, warnings included,
still shows.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Iterator, Sequence

# Lines TensorFlow's C++ start-up writes straight to file descriptor 2.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "Unable to register cuDNN factory",
    "Unable to register cuFFT factory",
    "Unable to register cuBLAS factory",
    "computation placer already registered",
    "TF-TRT Warning: Could not find TensorRT",
)

# Routine Python log messages (absl's logger), matched by their format string's start.
ROUTINE_MESSAGES = (
    "Metadata file does not exist",
    "Using an uncached FunctionDataset",
    "does not support caching. Switching to on-the-fly",
    "Given sequence lengths are longer than necessary",
    "CheckpointManagerOptions.read_only=True, setting save_interval_steps=0",
    "Given directory is read only",
)

_STARTED = False


class RoutineMessageFilter(logging.Filter):
  """Drops the routine messages of `ROUTINE_MESSAGES`; keeps everything else."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not any(pattern in text for pattern in ROUTINE_MESSAGES)


@contextlib.contextmanager
def filtered_stderr(patterns: Sequence[str]) -> Iterator[None]:
  """Captures file descriptor 2 (C++ libraries write there directly) and writes back the
  lines that match none of `patterns` when the block ends."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      capture.seek(0)
      text = capture.read().decode("utf-8", errors="replace")
      kept = [line for line in text.splitlines(keepends=True)
              if not any(pattern in line for pattern in patterns)]
      if kept:
        sys.stderr.write("".join(kept))
        sys.stderr.flush()


def quiet_libraries() -> None:
  """Starts TensorFlow with its start-up notices filtered and filters routine log messages.

  Idempotent; call it after flags are checked (importing TensorFlow takes seconds) and before
  the data pipelines or checkpoints are touched.
  """
  global _STARTED
  if _STARTED:
    return
  _STARTED = True
  # TensorFlow's and XLA's C++ INFO and WARNING lines (e.g. tf.data's routine notice that an
  # evaluation read part of a cached dataset), as the smoke job always did; Python warnings show.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import absl.logging  # pylint: disable=g-import-not-at-top
  absl_logger = absl.logging.get_absl_logger()
  if not any(isinstance(f, RoutineMessageFilter) for f in absl_logger.filters):
    absl_logger.addFilter(RoutineMessageFilter())
  with filtered_stderr(STARTUP_NOISE):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # TensorFlow probes CUDA once, when its devices are first listed; do it here, filtered.
    tf.config.list_physical_devices("GPU")
