"""Makes ID-PT configurable from gin: a gin file's `import prompt_tuning.methods.idpt.configurables`
registers the generator and its parameter groups under the module name `idpt` (and the tiny
tasks of tasks.py).

  idpt.PromptGenerator   the prompt provider (generator.py)
  idpt.idpt_groups       generator trained + exported, small encoder and LM frozen (groups.py)

Kept apart from the library modules, which never import gin (as `engine/gin_utils.py`).
"""
import gin

from prompt_tuning.methods.idpt import generator, groups
from prompt_tuning.methods.idpt import tasks  # noqa: F401  (registers the tiny tasks)


def _register(fn_or_cls, name=None):
  try:
    gin.external_configurable(fn_or_cls, name=name, module="idpt")
  except ValueError:  # already registered in this process
    pass


_register(generator.PromptGenerator)
_register(groups.idpt_groups)
