"""Is a task registered, and is its TFDS data on disk? Checked before any heavy work.

The entry points resolve the task before loading a checkpoint, so a misspelled name costs
seconds, not a checkpoint restore. Reading a TFDS-backed SeqIO task whose data is not prepared
makes TFDS try to download and build it; without network access that hangs for minutes and
ends in a ConnectionError traceback. The check looks at the builder's folder only (no
network, well under a second).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Any, Iterator, Optional

import seqio


def require_task(name: str, *, module: Optional[str] = None, purpose: str) -> Any:
  """The registered task or mixture `name`, after importing `module`; else one sentence.

  `purpose` ends the sentence ("before evaluating", "before inference"), saying when the
  registration must happen.
  """
  if module:
    try:
      importlib.import_module(module)
    except ImportError as error:
      raise ValueError(f"Cannot import task module {module!r}: {error}.") from None
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    raise ValueError(f"Unknown SeqIO task or mixture {name!r}; register it (set TASK_MODULE, "
                     f"the dataset config's module, to the Python module that registers it) "
                     f"{purpose}.")
  return seqio.get_mixture_or_task(name)


def _tfds_loader(source: Any) -> Optional[Any]:
  """The `LazyTfdsLoader` behind a task's source (few-shot sources wrap the one they read)."""
  while not isinstance(source, seqio.TfdsDataSource):
    source = getattr(source, "_original_source", None)
    if source is None:
      return None
  return source.tfds_dataset


class _NoDatasetInfoFilter(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "has no dataset_info.json" not in record.getMessage()


@contextlib.contextmanager
def _without_tfds_folder_warning() -> Iterator[None]:
  """TFDS warns that an unprepared dataset's folder has no dataset_info.json; the sentence
  `unprepared_message` returns says so already."""
  import absl.logging  # pylint: disable=g-import-not-at-top
  logger, quiet = absl.logging.get_absl_logger(), _NoDatasetInfoFilter()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def unprepared_message(task_or_mixture: Any) -> Optional[str]:
  """One sentence naming the first TFDS dataset of the task(s) that is not prepared, or None."""
  for task in seqio.get_subtasks(task_or_mixture):
    loader = _tfds_loader(task.source)
    if loader is None:
      continue
    with _without_tfds_folder_warning():
      try:
        builder = loader.builder
      except Exception:  # pylint: disable=broad-except  (per-split maps etc.: SeqIO will say)
        continue
      if builder.is_prepared():
        continue
    folder = str(builder.data_dir)
    suffix = os.sep + builder.info.full_name
    root = folder[:-len(suffix)] if folder.endswith(suffix) else folder
    return (f"The data of task {task.name!r} (TFDS {loader.name!r}) is not prepared in {root} "
            f"(TFDS_DATA_DIR); prepare it where the network is reachable with "
            f"tensorflow_datasets.builder({loader.name!r}, data_dir=...).download_and_prepare() "
            "and point TFDS_DATA_DIR at that folder.")
  return None


def check_prepared(task_or_mixture: Any) -> None:
  """Raises ValueError (one sentence) when a TFDS dataset the task reads is not prepared."""
  message = unprepared_message(task_or_mixture)
  if message is not None:
    raise ValueError(message)
