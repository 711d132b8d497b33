"""Language-modelling tasks for pre-training a Connector between two frozen LM passes.

Each text (a line of a local file, or a C4 document) is tokenised and cut in two: `inputs` is
the first part (what pass 1 and the Connector read), `targets` the continuation right after it
(what pass 2 predicts). Training LM-C-LM on such a task with both LM passes frozen teaches the
Connector to hand pass 2 input embeddings it can continue from, i.e. the language-modelling
initialisation of the Connector. The cut is at half the text, at most `inputs_length` tokens in,
so that the continuation is adjacent to the kept inputs even for long documents.

  recursion.text_files_lm_task(files=[...], vocabulary=...)   local text files (CPU)
  recursion.c4_lm_task(vocabulary=...)                        C4 (`c4/en:3.0.1`, TFDS)

Both register the task (again, replacing an earlier one) and return its name, so a run file
says `MIXTURE_OR_TASK_NAME = @recursion.text_files_lm_task()`.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import gin
import seqio
import tensorflow as tf

from prompt_tuning.data import registry


def _text_to_both(dataset: tf.data.Dataset) -> tf.data.Dataset:
  return dataset.map(lambda ex: {"inputs": ex["text"], "targets": ex["text"]},
                     num_parallel_calls=tf.data.AUTOTUNE)


def _cut(dataset: tf.data.Dataset, inputs_length: int) -> tf.data.Dataset:
  """Tokenised text in both features -> the first part as inputs, the rest as targets."""
  def cut(ex):
    tokens = ex["targets"]
    point = tf.minimum(tf.size(tokens) // 2, inputs_length)
    return {"inputs": tokens[:point], "targets": tokens[point:]}
  return dataset.map(cut, num_parallel_calls=tf.data.AUTOTUNE).filter(
      lambda ex: tf.logical_and(tf.size(ex["inputs"]) > 0, tf.size(ex["targets"]) > 0))


def _register(name: str, source: seqio.DataSource, vocabulary: seqio.Vocabulary,
              inputs_length: int) -> str:
  if inputs_length < 1:
    raise ValueError(f"inputs_length must be positive, got {inputs_length}.")
  seqio.TaskRegistry.remove(name)
  features = {"inputs": seqio.Feature(vocabulary=vocabulary, add_eos=False),
              "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True)}
  registry.add_task(
      name, source=source,
      preprocessors=[_text_to_both, seqio.preprocessors.tokenize,
                     functools.partial(_cut, inputs_length=inputs_length),
                     seqio.preprocessors.append_eos_after_trim],
      output_features=features, metric_fns=[])
  return name


def _lines(files: Sequence[str]):
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del split, seed
    dataset = tf.data.TextLineDataset(list(files))
    if shuffle_files:
      dataset = dataset.shuffle(1024, seed=0)
    return dataset.filter(lambda line: tf.strings.length(tf.strings.strip(line)) > 0).map(
        lambda line: {"text": line})
  return dataset_fn


def text_files_lm_task(*, files: Sequence[str], vocabulary: seqio.Vocabulary,
                       name: str = "recursion_text_lm", inputs_length: int = 256) -> str:
  """Registers the language-modelling task over the lines of local text `files` (every split
  reads the same files)."""
  files = [files] if isinstance(files, str) else list(files)
  missing = [f for f in files if not os.path.isfile(f)]
  if not files or missing:
    raise FileNotFoundError(f"The language-modelling text files {missing or files} do not "
                            "exist." if missing else "text_files_lm_task got no files.")
  source = seqio.FunctionDataSource(dataset_fn=_lines(files), splits=("train", "validation"))
  return _register(name, source, vocabulary, inputs_length)


def c4_lm_task(*, vocabulary: seqio.Vocabulary, name: str = "recursion_c4_lm",
               tfds_name: str = "c4/en:3.0.1", inputs_length: int = 256) -> str:
  """Registers the language-modelling task over C4's `text` field (TFDS)."""
  source = seqio.TfdsDataSource(tfds_name=tfds_name)
  return _register(name, source, vocabulary, inputs_length)


for _fn in (text_files_lm_task, c4_lm_task):
  try:
    gin.external_configurable(_fn, module="recursion")
  except ValueError:  # registered already in this process
    pass
