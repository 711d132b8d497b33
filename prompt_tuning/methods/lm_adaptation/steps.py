"""LM adaptation pipeline steps (registered when a pipeline lists this module).

  lm_adaptation_corpus   writes the generated corpus (corpus.py) into the stage folder:
                         outputs `train` and `validation`, the two text files.
"""
from typing import Dict

from prompt_tuning.methods.lm_adaptation import corpus
from prompt_tuning.pipelines.stages import pipeline_step


@pipeline_step("lm_adaptation_corpus", outputs=("train", "validation"))
def write_corpus(*, stage_dir: str, train_documents: int = corpus.SPLIT_DOCUMENTS["train"],
                 validation_documents: int = corpus.SPLIT_DOCUMENTS["validation"]
                 ) -> Dict[str, str]:
  return corpus.write(stage_dir, {"train": train_documents, "validation": validation_documents})
