"""ID-PT versions of registered mixtures (e.g. P3's T0++): generator tokens and length limits.

`register_idpt_mixture('p3_t0plusplus_train')` registers, for every task of the mixture, a task
`idpt_<task>` that reads the same source with the same preprocessors, then

  * drops examples longer than `max_input_length` input / `max_target_length` target tokens
    (the paper's 1024 / 256; counted after tokenisation, EOS included), before any trimming;
  * adds `generator_tokens` (a copy of the LM's input ids when the generator's encoder shares
    the LM's vocabulary, as T5 1.1 base and T5 1.1 XXL do; else the input text re-encoded
    with `generator_vocabulary`) as an output feature, so the mixture keeps it;

and a mixture `idpt_<mixture>` with the original mixing rates. P3's T0 mixtures already give a
dataset over 500,000 examples the rate 500,000 / number of templates per template
(`prompt_tuning/data/p3.py`), so those rates carry the cap over unchanged. Evaluation mixtures
(e.g. `p3_t0_eval_score_eval`) are converted the same way, with no length limit.
"""
from __future__ import annotations

from typing import Optional

import seqio
import tensorflow as tf

from prompt_tuning.data import registry
from prompt_tuning.methods.idpt.generator import GENERATOR_TOKENS
from prompt_tuning.methods.idpt.preprocessors import (copy_inputs_as_generator_tokens,
                                                      tokenize_for_generator)

PREFIX = "idpt_"


def drop_long_examples(max_input_length: Optional[int], max_target_length: Optional[int]):
  """A preprocessor keeping examples with at most that many `inputs` / `targets` tokens."""
  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def short_enough(example):
      keep = tf.constant(True)
      if max_input_length is not None:
        keep = keep & (tf.size(example["inputs"]) <= max_input_length)
      if max_target_length is not None:
        keep = keep & (tf.size(example["targets"]) <= max_target_length)
      return keep
    return dataset.filter(short_enough)
  return preprocess


def idpt_task(task_name: str, *, max_input_length: Optional[int] = 1024,
              max_target_length: Optional[int] = 256,
              generator_vocabulary: Optional[seqio.Vocabulary] = None,
              prefix: str = PREFIX) -> str:
  """Registers `<prefix><task_name>` (see the module docstring); returns its name."""
  task = seqio.get_mixture_or_task(task_name)
  if not isinstance(task, seqio.Task):
    raise ValueError(f"{task_name!r} is a mixture; idpt_task converts one task.")
  add_tokens = (tokenize_for_generator(generator_vocabulary)
                if generator_vocabulary is not None else copy_inputs_as_generator_tokens)
  features = dict(task.output_features)
  features[GENERATOR_TOKENS] = seqio.Feature(
      vocabulary=generator_vocabulary or features["inputs"].vocabulary, add_eos=False)
  registry.add_task(
      prefix + task_name, source=task.source,
      preprocessors=[*task.preprocessors,
                     drop_long_examples(max_input_length, max_target_length), add_tokens],
      output_features=features, postprocess_fn=task.postprocessor,
      metric_fns=task.metric_fns)
  return prefix + task_name


def register_idpt_mixture(mixture_name: str, *, max_input_length: Optional[int] = 1024,
                          max_target_length: Optional[int] = 256,
                          generator_vocabulary: Optional[seqio.Vocabulary] = None,
                          prefix: str = PREFIX) -> str:
  """Registers `<prefix><mixture_name>` over converted tasks, same rates; returns its name."""
  if mixture_name not in seqio.MixtureRegistry.names():
    raise ValueError(f"Unknown mixture {mixture_name!r}; register it first (for P3: "
                     f"tasks.p3.register(data_dir=...)).")
  mixture = seqio.get_mixture_or_task(mixture_name)
  entries = []
  for task in mixture.tasks:
    name = idpt_task(task.name, max_input_length=max_input_length,
                     max_target_length=max_target_length,
                     generator_vocabulary=generator_vocabulary, prefix=prefix)
    # The original rate, evaluated when the new mixture is first used (P3 rates read stats).
    entries.append((name, lambda _, original=task: mixture.get_rate(original)))
  return registry.add_mixture(prefix + mixture_name, entries).name
