"""LM adaptation pipeline steps (registered when a pipeline lists this module).

  lm_adaptation_base     checks that the checkpoint to adapt exists: output `checkpoint`.
  lm_adaptation_corpus   writes the generated corpus (corpus.py) into the stage folder:
                         outputs `train` and `validation`, the two text files.
"""
import os
from typing import Dict

from prompt_tuning.methods.lm_adaptation import corpus
from prompt_tuning.pipelines.stages import PipelineError, pipeline_step


def _exists(path: str) -> bool:
  if "://" not in path:
    return os.path.exists(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (remote paths only: slow import)
  return tf.io.gfile.exists(path)


@pipeline_step("lm_adaptation_corpus", outputs=("train", "validation"))
def write_corpus(*, stage_dir: str, train_documents: int = corpus.SPLIT_DOCUMENTS["train"],
                 validation_documents: int = corpus.SPLIT_DOCUMENTS["validation"]
                 ) -> Dict[str, str]:
  return corpus.write(stage_dir, {"train": train_documents, "validation": validation_documents})


@pipeline_step("lm_adaptation_base", outputs=("checkpoint",))
def check_base(*, stage_dir: str, checkpoint: str) -> Dict[str, str]:
  """Names the checkpoint to adapt (a plain path, so a command line needs no gin quoting) and
  stops the pipeline, before any training, when nothing is there."""
  del stage_dir
  if not checkpoint or not _exists(checkpoint):
    raise PipelineError(f"The base checkpoint to adapt, {checkpoint!r}, does not exist.")
  return {"checkpoint": checkpoint if "://" in checkpoint else os.path.abspath(checkpoint)}
