"""Prefix-LM tasks for LM adaptation (continuing a T5 1.1 checkpoint as a language model).

  c4_en_v220_prefix_lm, c4_en_v310_prefix_lm   TFDS `c4/en` (2.2.0 is the version T5's own
                                               prefix-LM task read; 3.1.0 the current one)

Each C4 document is tokenized, cut into segments of the inputs length (less one for EOS), and
each segment is split at a uniformly drawn point: the prefix is the input, the rest the target
(prompt_tuning/methods/lm_adaptation/preprocessors.py). Metric: `prefix_lm_loss`, the mean
negative log-likelihood per target token. For local text files (one document per line) call
`register_text_files(name, {split: pattern})`, or in gin
`MIXTURE_OR_TASK_NAME = @lm_adaptation.text_files_task()`.
"""
from typing import Optional, Sequence

import seqio

from prompt_tuning.data import vocabularies
from prompt_tuning.methods.lm_adaptation import tasks as lm_tasks
from prompt_tuning.methods.lm_adaptation.tasks import register_text_files  # noqa: F401

C4_VERSIONS = ("2.2.0", "3.1.0")


def c4_task_name(version: str = "2.2.0", *, name_prefix: str = "") -> str:
  return f"{name_prefix}c4_en_v{version.replace('.', '')}_prefix_lm"


def register(*, vocabulary: Optional[seqio.Vocabulary] = None, kind: str = vocabularies.T5,
             name_prefix: str = "", versions: Sequence[str] = C4_VERSIONS) -> None:
  """Registers the C4 prefix-LM tasks (idempotent); reads no data."""
  vocabulary = vocabulary or vocabularies.get_vocabulary(kind=kind)
  for version in versions:
    lm_tasks.add_prefix_lm_task(
        c4_task_name(version, name_prefix=name_prefix),
        seqio.TfdsDataSource(tfds_name=f"c4/en:{version}", splits=("train", "validation")),
        vocabulary=vocabulary, text_key="text")


register()
