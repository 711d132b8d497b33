"""Prefix-LM SeqIO tasks: any text source -> tokenized documents -> prefix / continuation.

`add_prefix_lm_task` builds one from a source whose examples carry the document text under
`text_key` (TFDS C4: `text`); `register_text_files` reads local text files, one document per
non-empty line. Their metric is the prefix-LM loss on the evaluated split: the mean negative
log-likelihood per target token (EOS included), from the model's target scores, so it is the
number the training loss estimates.
"""
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import preprocessors as data_preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies
from prompt_tuning.methods.lm_adaptation import preprocessors

_plain = tf.autograph.experimental.do_not_convert
LOSS_METRIC = "prefix_lm_loss"


def target_token_count(value: Any, example: Optional[Mapping[str, Any]] = None,
                       is_target: bool = False) -> Any:
  """Postprocessor: a target becomes its number of tokens (EOS included), for the loss metric.

  Predictions (never made: the task has only a score metric) pass through unchanged.
  """
  if is_target and example is not None:
    return int(np.asarray(example["targets"]).size)
  return value


def prefix_lm_loss(targets: Sequence[int], scores: Sequence[float]) -> Dict[str, float]:
  """Mean NLL per target token: -(sum of the targets' log-likelihoods) / (their token count)."""
  tokens = float(np.sum(targets))
  if tokens <= 0:
    raise ValueError("The prefix-LM loss needs at least one target token; the split is empty.")
  return {LOSS_METRIC: float(-np.sum(scores) / tokens)}


def _text_as_targets(text_key: Optional[str]):
  def rekey(x):
    return {preprocessors.FEATURE: x if text_key is None else x[text_key]}
  return data_preprocessors.map_examples(rekey)


def _drop_blank(dataset: tf.data.Dataset) -> tf.data.Dataset:
  keep = _plain(lambda x: tf.strings.length(tf.strings.strip(x[preprocessors.FEATURE])) > 0)
  return dataset.filter(keep)


def add_prefix_lm_task(
    name: str,
    source: seqio.DataSource,
    *,
    vocabulary: seqio.Vocabulary,
    text_key: Optional[str] = "text",
    max_chunk_length: int = preprocessors.DEFAULT_MAX_CHUNK_LENGTH,
    replace: bool = False,
) -> seqio.Task:
  """Registers a prefix-LM task over `source` (idempotent unless `replace`).

  Args:
    name: the task name.
    source: examples with the document text under `text_key` (None: the examples are the
      text itself, as `seqio.TextLineDataSource` yields them).
    vocabulary: tokenizes the text; inputs and targets share it and end with its EOS.
    max_chunk_length: longest chunk of a document kept per pass (see preprocessors.py).
    replace: re-register a task of this name (its files may have changed).
  """
  if replace and name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)

  def objective(dataset, sequence_length, output_features):
    return preprocessors.prefix_lm(dataset, sequence_length, output_features,
                                   max_chunk_length=max_chunk_length)

  return registry.add_task(
      name,
      source=source,
      preprocessors=[
          _text_as_targets(text_key),
          _drop_blank,
          # Token ids from here on: the split is in tokens, and tokenizing is the costly part.
          # The same tokenized text comes out in a different split at every pass.
          _tokenize_targets,
          seqio.CacheDatasetPlaceholder(),
          objective,
          _decode_pretokenized,
          data_preprocessors.tokenize_and_append_eos,
      ],
      output_features=vocabularies.text_to_text_features(vocabulary),
      postprocess_fn=target_token_count,
      metric_fns=[prefix_lm_loss],
  )


def _tokenize_targets(dataset: tf.data.Dataset,
                      output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  vocabulary = output_features[preprocessors.FEATURE].vocabulary
  encode = _plain(lambda x: {preprocessors.FEATURE: vocabulary.encode_tf(
      x[preprocessors.FEATURE])})
  return dataset.map(encode, num_parallel_calls=tf.data.AUTOTUNE)


def _decode_pretokenized(dataset: tf.data.Dataset,
                         output_features: Mapping[str, seqio.Feature]) -> tf.data.Dataset:
  """Adds `inputs_pretokenized` / `targets_pretokenized`, the text of each side of the split,
  as every other task has them (inspection, inference files, the evaluator's targets)."""

  def decode(x):
    out = dict(x)
    for name in ("inputs", "targets"):
      out[f"{name}_pretokenized"] = output_features[name].vocabulary.decode_tf(x[name])
    return out

  return dataset.map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE)


Files = Union[str, Iterable[str]]


def _expand(split: str, files: Files) -> list:
  patterns = [files] if isinstance(files, str) else list(files)
  if not patterns:
    raise ValueError(f"Split {split!r} of the prefix-LM text task names no files.")
  found = []
  for pattern in patterns:
    matches = sorted(tf.io.gfile.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"No text file matches {pattern!r} (split {split!r} of the "
                              "prefix-LM text task).")
    found.extend(matches)
  return found


def register_text_files(
    name: str,
    files: Mapping[str, Files],
    *,
    vocabulary: Optional[seqio.Vocabulary] = None,
    max_chunk_length: int = preprocessors.DEFAULT_MAX_CHUNK_LENGTH,
) -> str:
  """Registers (or re-registers) a prefix-LM task over local text files; returns its name.

  Args:
    name: the task name.
    files: `{split: path, glob pattern or list of them}`; every pattern must match a file,
      checked here, before any training starts. Each non-empty line is one document.
    vocabulary: default: the T5 SentencePiece vocabulary (prompt_tuning.data.vocabularies).
  """
  registry.check_name(name)
  if not files:
    raise ValueError(f"The prefix-LM text task {name!r} needs files for at least one split.")
  expanded = {split: _expand(split, patterns) for split, patterns in files.items()}
  source = seqio.TextLineDataSource(split_to_filepattern=expanded)
  add_prefix_lm_task(name, source, vocabulary=vocabulary or vocabularies.get_vocabulary(),
                     text_key=None, max_chunk_length=max_chunk_length, replace=True)
  return name
