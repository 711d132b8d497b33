"""Evaluation mixtures of the domain-shift pipelines that the task modules do not define.

  domain_shift_qqp_to_mrpc_eval_v200   QQP validation (in domain) and MRPC validation written
                                       as QQP (`taskless_glue_mrpc_as_qqp_v200`, zero-shot)
  domain_shift_mrpc_to_qqp_eval_v200   the reverse

The SQuAD -> MRQA evaluation mixture is `tasks.mrqa.EVAL_MIXTURE`. Importing this module
registers those too (it imports tasks.glue and tasks.mrqa).
"""
from prompt_tuning.data import registry
from tasks import glue
from tasks import mrqa  # noqa: F401  pylint: disable=unused-import

PARAPHRASE = ("qqp", "mrpc")


def paraphrase_mixture_name(source: str, target: str) -> str:
  return f"domain_shift_{source}_to_{target}_eval_v200"


def paraphrase_task_names(source: str, target: str):
  """The source task itself, then the target's data in the source's words (taskless both)."""
  return [glue.task_name(source, taskless=True),
          glue.transfer_task_name(target, source, taskless=True)]


def register() -> None:
  for source, target in (PARAPHRASE, PARAPHRASE[::-1]):
    registry.add_mixture(paraphrase_mixture_name(source, target),
                         paraphrase_task_names(source, target), default_rate=1.0)


register()
