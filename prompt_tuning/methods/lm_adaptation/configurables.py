"""Gin names of LM adaptation, registered when a gin file says
`import prompt_tuning.methods.lm_adaptation.configurables`: `lm_adaptation.text_files_task`.
The library modules themselves stay free of gin."""
from typing import Mapping

from prompt_tuning.engine import gin_utils
from prompt_tuning.methods.lm_adaptation import preprocessors
from prompt_tuning.methods.lm_adaptation import tasks


def text_files_task(*, name: str = "lm_adaptation_text_files", files: Mapping[str, object],
                    vocabulary=None,
                    max_chunk_length: int = preprocessors.DEFAULT_MAX_CHUNK_LENGTH) -> str:
  """Registers the prefix-LM task over local text files (`{split: pattern}`); its name."""
  return tasks.register_text_files(name, files, vocabulary=vocabulary,
                                   max_chunk_length=max_chunk_length)


gin_utils.register_configurables()
gin_utils._register(text_files_task, "lm_adaptation")  # pylint: disable=protected-access
