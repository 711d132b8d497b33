"""Tiny generated tasks where the right answer depends on something only the generator sees.

Each example is a short digit string; three skills read one digit of it (first / last /
second, as in `prompt_tuning/smoke_data/tasks.py`). The frozen LM sees only the digits
(`inputs = "58213"`), so it cannot know which digit is asked; the instruction word is in a
separate field that only the prompt generator's encoder reads (`generator_tokens =
"last: 58213"` or `"final: 58213"`: two templates per skill).

The same examples come in three variants, one per kind of hook, because a hook input must be an
output feature (a mixture keeps only those) and a model must declare every output feature it is
evaluated on (seqio's Evaluator gives each one a length):

  idpt_digits_<skill>, idpt_digits         + `generator_tokens`, for the prompt generator;
  idpt_digits_ids_<skill>, idpt_digits_ids + `prompt_ids` (the skill's index), for per-task
                                             prompts (a prompt table);
  idpt_digits_plain_<skill>, ..._plain     inputs and targets only, for one shared prompt.

Each task has 4096 train / 256 validation examples (fixed seeds); each mixture mixes the three
skills at equal rates.

Text is encoded with `seqio.ByteVocabulary` for both the LM and the generator.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import registry
from prompt_tuning.methods.idpt.generator import GENERATOR_TOKENS
from prompt_tuning.smoke_data import tasks as smoke_tasks

SKILLS = ("first", "last", "second")
# Two instruction words per skill: the LM was pretrained with the first word only; the second
# is new to the frozen encoder, so the generator must learn what it means.
TEMPLATES = {"first": ("first", "1st"), "last": ("last", "final"), "second": ("second", "2nd")}
MIXTURE = "idpt_digits"
# Variant -> (name infix, the extra feature it carries).
VARIANTS = {"generator": ("", GENERATOR_TOKENS), "ids": ("ids_", "prompt_ids"),
            "plain": ("plain_", None)}
SPLIT_SIZES = {"train": 4096, "validation": 256}
_SEEDS = {"train": 11, "validation": 12}
VOCABULARY = smoke_tasks.VOCABULARY


def task_name(skill: str, variant: str = "generator") -> str:
  return f"{MIXTURE}_{VARIANTS[variant][0]}{skill}"


def mixture_name(variant: str = "generator") -> str:
  return f"{MIXTURE}_{VARIANTS[variant][0]}".rstrip("_")


def generate(skill: str, split: str) -> Dict[str, List]:
  """One skill's examples: LM input (digits), generator text, target, skill index, template.

  Each skill is asked with one of two instruction words (its templates, `TEMPLATES`), drawn per
  example.
  """
  if skill not in SKILLS:
    raise ValueError(f"Unknown skill {skill!r}; expected one of {list(SKILLS)}.")
  if split not in SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r}; expected one of {sorted(SPLIT_SIZES)}.")
  index = SKILLS.index(skill)
  rng = np.random.default_rng(_SEEDS[split] * 10 + index)
  out = {"inputs": [], GENERATOR_TOKENS: [], "targets": [], "prompt_ids": [], "template": []}
  for _ in range(SPLIT_SIZES[split]):
    digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    word = TEMPLATES[skill][int(rng.integers(len(TEMPLATES[skill])))]
    out["inputs"].append(digits)
    out[GENERATOR_TOKENS].append(f"{word}: {digits}")
    out["targets"].append({"first": digits[0], "last": digits[-1], "second": digits[1]}[skill])
    out["prompt_ids"].append(np.array([index], np.int32))
    out["template"].append(word)
  return out


def _dataset_fn(skill: str, variant: str):
  keep = {"inputs", "targets", VARIANTS[variant][1]}

  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    examples = generate(skill, split)
    return tf.data.Dataset.from_tensor_slices({k: v for k, v in examples.items() if k in keep})
  return dataset_fn


def register() -> None:
  """Registers the tasks and mixtures of every variant (idempotent)."""
  all_features = {
      "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
      "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
      GENERATOR_TOKENS: seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
      "prompt_ids": seqio.Feature(vocabulary=seqio.PassThroughVocabulary(len(SKILLS)),
                                  add_eos=False, dtype=tf.int32),
  }
  for variant, (_, extra) in VARIANTS.items():
    features = {k: v for k, v in all_features.items() if k in ("inputs", "targets", extra)}
    for skill in SKILLS:
      registry.add_task(
          task_name(skill, variant),
          source=seqio.FunctionDataSource(dataset_fn=_dataset_fn(skill, variant),
                                          splits=tuple(SPLIT_SIZES),
                                          num_input_examples=dict(SPLIT_SIZES)),
          preprocessors=[seqio.preprocessors.tokenize,
                         seqio.preprocessors.append_eos_after_trim],
          output_features=features,
          postprocess_fn=smoke_tasks._strip,  # pylint: disable=protected-access
          metric_fns=[metrics.accuracy])
    registry.add_mixture(mixture_name(variant), [task_name(s, variant) for s in SKILLS],
                         default_rate=1.0)


register()
