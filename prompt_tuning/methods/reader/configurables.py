"""Gin names of the reader method, registered when a gin file says
`import prompt_tuning.methods.reader.configurables`: `reader.CrossEncoder`,
`reader.RerankerModel`, `reader.reranker_task`, `reader.group_lengths`, `reader.reader_task`,
`reader.linear_warmup_decay`. The library modules themselves stay free of gin."""
import functools

import gin
import optax

from prompt_tuning.engine import gin_utils
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import reranker


def reranker_task(*, name: str = "reader_reranker", train_file: str, vocabulary,
                  num_negatives: int = 23, top_k: int = 100, passage_length: int = 256) -> str:
  """Registers the re-ranker's training task over `train_file` and returns its name."""
  return data_lib.register_reranker_task(
      name, files={"train": train_file}, vocabulary=vocabulary, num_negatives=num_negatives,
      top_k=top_k, passage_length=passage_length)


def group_lengths(*, num_negatives: int = 23, passage_length: int = 256):
  """The re-ranker task's feature lengths: one group of `1 + num_negatives` pairs."""
  return {reranker.TASK_FEATURE: (1 + num_negatives) * passage_length}


def reader_task(*, name: str = "reader_packed", files, vocabulary,
                split_last_passage: bool = False) -> str:
  """Registers the frozen reader's task (passages packed by score, best first, into the
  inputs length; NQ-open EM/F1 with SQuAD normalisation and recall-at-input) and returns its
  name. The same task as `tasks.natural_questions.register_reader`, plus the split option."""
  # pylint: disable=g-import-not-at-top
  import seqio
  from prompt_tuning.data import metrics, postprocessors, preprocessors, reader, vocabularies
  # pylint: enable=g-import-not-at-top
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  retrieval = reader.RetrievalFiles(files=dict(files))
  seqio.TaskRegistry.add(
      name, source=seqio.FunctionDataSource(retrieval.dataset_fn, splits=retrieval.splits),
      preprocessors=[functools.partial(reader.pack_passages,
                                       split_last_passage=split_last_passage),
                     preprocessors.tokenize_and_append_eos],
      output_features=vocabularies.text_to_text_features(vocabulary),
      postprocess_fn=postprocessors.reader_answers, metric_fns=[metrics.reader])
  return name


def linear_warmup_decay(*, peak_value: float, warmup_steps: int, total_steps: int):
  """DPR's schedule: linear warm-up to `peak_value`, then linear decay to 0 at `total_steps`."""
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak_value, warmup_steps),
       optax.linear_schedule(peak_value, 0.0, max(total_steps - warmup_steps, 1))],
      [warmup_steps])


gin_utils.register_configurables()
for _item in (reranker.CrossEncoder, reranker.RerankerModel, reranker_task, group_lengths,
              reader_task, linear_warmup_decay):
  gin_utils._register(_item, "reader")  # pylint: disable=protected-access
