"""Gin names of decoder-rank, registered when a gin file says
`import prompt_tuning.methods.decoder_rank.configurables`: `decoder_rank.lm_task_module`.
The task module itself stays free of gin."""
from typing import Optional

from prompt_tuning.engine import gin_utils
from prompt_tuning.methods.decoder_rank import tasks


def lm_task_module(tokenizer: Optional[str] = None) -> str:
  """Registers the `lm_super_glue_*` tasks in `tokenizer` (the checkpoint's `tokenizer.model`
  or `tokenizer.json`; None: only what PROMPT_TUNING_LM_TOKENIZER registers) and returns the
  task module's name, for the run's `DatasetConfig.module`.

  Gin evaluates it when the run builds its dataset configs, before any data or model work, so
  a missing tokenizer file stops the run there.
  """
  if tokenizer:
    tasks.register_lm_once(tokenizer, source="LM_TOKENIZER")
  return tasks.__name__


gin_utils.register_configurables()
gin_utils._register(lm_task_module, "decoder_rank")  # pylint: disable=protected-access
