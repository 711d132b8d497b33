"""ID-PT's P3 mixtures, registered on import (a run's TASK_MODULE):

  idpt_p3_t0plusplus_train     T0++'s training mixture (T0 rates, 500,000 / templates cap),
                               examples over 1024 input / 256 target tokens dropped;
  idpt_p3_t0_eval_score_eval   the held-out datasets' score-eval templates (no length limit).

P3 is read from $PROMPT_TUNING_P3_DIR (see tasks/p3.py). The generator's encoder (T5 1.1) shares
the LM's T5 vocabulary, so `generator_tokens` copy the LM's input ids.
"""
import os

from prompt_tuning.methods.idpt import mixture

TRAIN_MIXTURE = "p3_t0plusplus_train"
EVAL_MIXTURE = "p3_t0_eval_score_eval"


def register(data_dir: str) -> None:
  """Registers P3 from `data_dir`, then the two ID-PT mixtures."""
  from tasks import p3  # pylint: disable=g-import-not-at-top
  p3.register(data_dir=data_dir)
  mixture.register_idpt_mixture(TRAIN_MIXTURE, max_input_length=1024, max_target_length=256)
  mixture.register_idpt_mixture(EVAL_MIXTURE, max_input_length=None, max_target_length=None)


if not os.environ.get("PROMPT_TUNING_P3_DIR"):
  raise ValueError("ID-PT's P3 mixtures need $PROMPT_TUNING_P3_DIR, the folder of P3's "
                   "template folders.")
register(os.environ["PROMPT_TUNING_P3_DIR"])
