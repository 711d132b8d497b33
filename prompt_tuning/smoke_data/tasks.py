"""Digit-string skills: tiny generated SeqIO tasks that show whether prompt tuning works.

Each example is a short string of digits (3 to 7 of them). The *skills* read one digit:

  first  -> the first digit        "first: 58213" -> "5"
  last   -> the last digit         "last: 58213"  -> "3"
  second -> the second digit       "second: 58213" -> "8"

`smoke_skills` mixes the three skills, each announced by its instruction word, with examples
that carry no instruction and default to the first digit; a small model trained on it (fully)
learns to follow instructions and, without one, to answer the first digit. `smoke_last_digit`
asks for the last digit *without* any instruction: the frozen model answers the first digit
there, right only when first and last coincide (about 10%, chance for ten digits), and a
learned prompt that plays the role of the missing instruction lifts it far above chance. That
gap is the learning signal the smoke job and the tests assert.

Text is encoded with `seqio.ByteVocabulary` (no vocabulary file). Examples are generated from a
fixed seed per split, so every process and every run sees the same data.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import registry

SKILLS_TASK = "smoke_skills"
LAST_DIGIT_TASK = "smoke_last_digit"
# The same examples, evaluated by scoring the target instead of decoding a prediction.
SCORED_LAST_DIGIT_TASK = "smoke_last_digit_scored"
SKILLS = ("first", "last", "second")
SPLIT_SIZES = {"train": 4096, "validation": 256}
# Byte ids are UTF-8 bytes + 3 (0 pad, 1 EOS, 2 UNK); a model vocabulary of 260 rows covers them
# and divides evenly over a model axis of 2 or 4.
MODEL_VOCAB_SIZE = 260
VOCABULARY = seqio.ByteVocabulary()
_SPLIT_SEEDS = {"train": 1, "validation": 2}


def _answer(skill: str, digits: str) -> str:
  return {"first": digits[0], "last": digits[-1], "second": digits[1], "": digits[0]}[skill]


def generate(*, split: str, instructed: bool) -> Dict[str, List[str]]:
  """The examples of one split: `{'inputs': [...], 'targets': [...]}` as text.

  Skill examples draw a skill (or none: the first digit) per example and prefix its name;
  last-digit examples always ask for the last digit and carry no instruction.
  """
  if split not in SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r} for the smoke tasks; expected one of "
                     f"{sorted(SPLIT_SIZES)}.")
  rng = np.random.default_rng(_SPLIT_SEEDS[split] + (100 if instructed else 0))
  inputs, targets = [], []
  for _ in range(SPLIT_SIZES[split]):
    digits = "".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(3, 8))))
    choices = ("",) + SKILLS if instructed else ("last",)
    skill = choices[int(rng.integers(len(choices)))]
    inputs.append(f"{skill}: {digits}" if instructed and skill else digits)
    targets.append(_answer(skill, digits))
  return {"inputs": inputs, "targets": targets}


def _dataset_fn(instructed: bool):
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # One in-memory "file"; seqio shuffles examples itself.
    return tf.data.Dataset.from_tensor_slices(generate(split=split, instructed=instructed))
  return dataset_fn


def _strip(text, example=None, is_target=False):
  del example, is_target
  return text.strip() if isinstance(text, str) else text.decode("utf-8").strip()


def target_log_likelihood(targets, scores) -> Dict[str, float]:
  """Mean log-likelihood of the targets (a score metric: seqio passes the model's scores)."""
  del targets
  return {"target_log_likelihood": float(np.mean(scores))}


def register() -> None:
  """Registers the tasks (idempotent)."""
  features = {
      "inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
      "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
  }
  for name, instructed, metric in ((SKILLS_TASK, True, metrics.accuracy),
                                   (LAST_DIGIT_TASK, False, metrics.accuracy),
                                   (SCORED_LAST_DIGIT_TASK, False, target_log_likelihood)):
    registry.add_task(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=_dataset_fn(instructed), splits=tuple(SPLIT_SIZES),
            num_input_examples=dict(SPLIT_SIZES)),
        preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim],
        output_features=features,
        postprocess_fn=_strip,
        metric_fns=[metric],
    )


register()
