"""Natural Questions (open): closed-book QA and an open-book reader over retrieved passages.

  natural_questions_open_v100            "nq question: Q" -> first answer
  taskless_natural_questions_open_v100   "Q" -> first answer
      splits: train = TFDS train minus its last 8,757 questions, validation = those
      8,757 (the usual dev set carved from train), test = TFDS validation (3,610).
      Metrics: EM and F1 with SQuAD normalisation, max over all reference answers.
  natural_questions_open_reader_v100     "question: Q title: T context: X ..." -> answer,
      passages from DPR/FiD retrieval JSON packed greedily by score into the input
      length; reports recall_at_input next to EM/F1. Files `train.json`, `dev.json`,
      `test.json` are read from $PROMPT_TUNING_NQ_READER_DIR when a dataset is requested;
      `register_reader(name=..., files=...)` registers a reader over any other files.
"""
from typing import Mapping, Optional

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import reader
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

TFDS_NAME = "natural_questions_open:1.0.0"
DEV_SIZE = 8757
SPLITS = {"train": f"train[:-{DEV_SIZE}]", "validation": f"train[-{DEV_SIZE}:]",
          "test": "validation"}
READER_DIR_ENV = "PROMPT_TUNING_NQ_READER_DIR"
READER_FILES = {"train": "train.json", "validation": "dev.json", "test": "test.json"}
READER_TASK = "natural_questions_open_reader_v100"


def task_name(*, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}natural_questions_open_v100"


def _answers(x):
  return x["answer"]


def register_reader(
    *,
    name: str = READER_TASK,
    files: Optional[Mapping[str, str]] = None,
    vocabulary: Optional[seqio.Vocabulary] = None,
) -> None:
  """Registers an open-book reader task over retrieval JSON files (split -> path).

  Without `files`, paths are resolved from $PROMPT_TUNING_NQ_READER_DIR at dataset time.
  The task's preprocessing needs `sequence_length["inputs"]`, the packing budget.
  """
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  retrieval = (reader.RetrievalFiles(files=files) if files is not None else
               reader.RetrievalFiles(directory_env=READER_DIR_ENV, file_names=READER_FILES))
  registry.add_task(
      name,
      source=seqio.FunctionDataSource(retrieval.dataset_fn, splits=retrieval.splits),
      preprocessors=[
          reader.pack_passages,
          preprocessors.tokenize_and_append_eos,
      ],
      output_features=vocabularies.text_to_text_features(vocabulary),
      postprocess_fn=postprocessors.reader_answers,
      metric_fns=[metrics.reader],
  )


def register(*, vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers the closed-book tasks and the default reader task; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  source = seqio.TfdsDataSource(tfds_name=TFDS_NAME, splits=SPLITS)
  for taskless in (False, True):
    format_fn = preprocessors.question_answer(
        question_key="question", answers_fn=_answers, prefix="" if taskless else "nq question: ")
    registry.add_task(
        task_name(taskless=taskless),
        source=source,
        preprocessors=[
            preprocessors.map_examples(format_fn),
            preprocessors.tokenize_and_append_eos,
        ],
        output_features=vocabularies.text_to_text_features(vocabulary),
        postprocess_fn=postprocessors.answers_list,
        metric_fns=[metrics.squad],
    )
  register_reader(vocabulary=vocabulary)


register()
