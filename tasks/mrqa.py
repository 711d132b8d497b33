"""MRQA 2019 (`mrqa/*:1.0.0`) in T5's SQuAD text format, for domain-shift evaluation.

  mrqa_squad_v100                 SQuAD in MRQA's release: train and validation (SQuAD dev),
                                  the in-domain training and checkpoint-selection task
  mrqa_{textbook_qa,bio_asq,race,relation_extraction,duo_rc,drop}_v100
                                  the six out-of-domain sets (TFDS split `test`, which MRQA
                                  published as their dev files), evaluation only
  mrqa_ood_v100                   the six out-of-domain tasks, one evaluation mixture
  mrqa_squad_and_ood_v100         SQuAD dev and the six, one evaluation mixture (split
                                  `validation`)

Every task reads `question` and `context` and answers with the first of `answers` (all are kept
for scoring): "question: <question> context: <context>" -> "<answer>", the format of T5's
SQuAD task, with no task prefix, so one prompt or one fine-tuned model reads every set the
same way. MRQA keeps its context markers ([PAR], [TLE], [DOC], [SEP]) as plain text.
Metrics: exact match and token F1 after SQuAD normalisation, the max over a question's
answers (`data.metrics.squad`), as MRQA's official evaluation computes them.

The out-of-domain sets have only the TFDS `test` split; it is registered under `validation`
too, so a mixture of SQuAD dev and them evaluates with one split name. BioASQ's TFDS download
URL is a web page, so its data must be placed in TFDS_DATA_DIR by hand before use.
"""
from typing import Dict, Optional

import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

TFDS_VERSION = "1.0.0"
IN_DOMAIN = "squad"
# The paper's order (Lester et al. 2021, Table 1); names are the TFDS config names.
OUT_OF_DOMAIN = ("textbook_qa", "bio_asq", "race", "relation_extraction", "duo_rc", "drop")
DISPLAY_NAMES = {"squad": "SQuAD", "textbook_qa": "TextbookQA", "bio_asq": "BioASQ",
                 "race": "RACE", "relation_extraction": "RE", "duo_rc": "DuoRC", "drop": "DROP"}
_IN_DOMAIN_SPLITS = ("train", "validation")
_OUT_OF_DOMAIN_SPLITS = {"validation": "test", "test": "test"}

Example = Dict[str, tf.Tensor]


def tfds_name(config: str) -> str:
  return f"mrqa/{config}:{TFDS_VERSION}"


def task_name(config: str) -> str:
  if config != IN_DOMAIN and config not in OUT_OF_DOMAIN:
    raise ValueError(f"Unknown MRQA set {config!r}; expected one of "
                     f"{(IN_DOMAIN,) + OUT_OF_DOMAIN}.")
  return f"mrqa_{config}_v100"


OOD_MIXTURE = "mrqa_ood_v100"
EVAL_MIXTURE = "mrqa_squad_and_ood_v100"


def format_example(x: Example) -> Example:
  """`question: Q context: C` -> the first answer; `answers` keeps them all for scoring."""
  answers = x["answers"]
  return {
      "inputs": tf.strings.join(["question: ", x["question"], " context: ", x["context"]]),
      "targets": tf.concat([answers, tf.constant([""])], axis=0)[0],
      "answers": answers,
  }


def register(*, vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers SQuAD, the six out-of-domain tasks and the two mixtures; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  features = vocabularies.text_to_text_features(vocabulary)
  for config in (IN_DOMAIN,) + OUT_OF_DOMAIN:
    splits = _IN_DOMAIN_SPLITS if config == IN_DOMAIN else _OUT_OF_DOMAIN_SPLITS
    registry.add_task(
        task_name(config),
        source=seqio.TfdsDataSource(tfds_name=tfds_name(config), splits=splits),
        preprocessors=[preprocessors.map_examples(format_example),
                       preprocessors.tokenize_and_append_eos],
        output_features=features,
        postprocess_fn=postprocessors.answers_list,
        metric_fns=[metrics.squad],
    )
  # Evaluation mixtures: the rate only matters for training, which they are not used for.
  registry.add_mixture(OOD_MIXTURE, [task_name(c) for c in OUT_OF_DOMAIN], default_rate=1.0)
  registry.add_mixture(EVAL_MIXTURE, [task_name(c) for c in (IN_DOMAIN,) + OUT_OF_DOMAIN],
                       default_rate=1.0)


register()
