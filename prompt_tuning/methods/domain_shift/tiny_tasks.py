"""Generated tasks for the tiny CPU domain-shift pipelines, in the real tasks' text formats.

Reading comprehension, the SQuAD format of tasks/mrqa.py ("question: Q context: C" -> answer):
the context lists `key=value` pairs and the question names one key.

  domain_shift_tiny_qa            keys from a-d, 3 or 4 pairs      (in domain: train, validation)
  domain_shift_tiny_qa_new_keys   keys from w-z, 3 or 4 pairs      (out of domain: validation)
  domain_shift_tiny_qa_long       keys from a-d and e-h, 6 pairs   (out of domain: validation)
  domain_shift_tiny_qa_eval       mixture: the three validation splits

    "question: b context: a=41 b=7 c=93" -> "7"

Paraphrase, the QQP format of tasks/glue.py ("question1: ... question2: ..." -> duplicate /
not_duplicate): two strings, a duplicate when they are equal; a non-duplicate changes one
character.

  domain_shift_tiny_pair_digits   strings of digits                (train, validation)
  domain_shift_tiny_pair_letters  strings of letters               (train, validation)
  domain_shift_tiny_digits_to_letters_eval, domain_shift_tiny_letters_to_digits_eval
                                  mixtures: the source's validation, then the target's

Metrics are the real tasks' own: EM and F1 (`data.metrics.squad`) and F1 and accuracy over
label ids. Byte vocabulary, no files; each split is generated from a fixed seed.
"""
from __future__ import annotations

import string
from typing import Dict, List

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import registry

VOCABULARY = seqio.ByteVocabulary()
SPLIT_SIZES = {"train": 2048, "validation": 128}
QA_LENGTHS = {"inputs": 64, "targets": 4}
PAIR_LENGTHS = {"inputs": 48, "targets": 16}
PAIR_LABELS = ("not_duplicate", "duplicate")

# name: (keys the pairs are drawn from, pair counts, splits)
QA_SETS = {
    "qa": ("abcd", (3, 4), ("train", "validation")),
    "qa_new_keys": ("wxyz", (3, 4), ("validation",)),
    "qa_long": ("abcdefgh", (6,), ("validation",)),
}
PAIR_SETS = {"pair_digits": string.digits, "pair_letters": "abcdefghij"}
QA_EVAL_MIXTURE = "domain_shift_tiny_qa_eval"


def task_name(name: str) -> str:
  if name not in QA_SETS and name not in PAIR_SETS:
    raise ValueError(f"Unknown tiny domain-shift set {name!r}; expected one of "
                     f"{sorted(QA_SETS) + sorted(PAIR_SETS)}.")
  return f"domain_shift_tiny_{name}"


def pair_mixture_name(source: str, target: str) -> str:
  return f"domain_shift_tiny_{source}_to_{target}_eval"


def _rng(name: str, split: str) -> np.random.Generator:
  names = sorted(QA_SETS) + sorted(PAIR_SETS)
  return np.random.default_rng(1000 * (names.index(name) + 1) + sorted(SPLIT_SIZES).index(split))


def generate_qa(name: str, split: str) -> Dict[str, List]:
  """One split of a reading-comprehension set: inputs, first answer, all answers."""
  keys, counts, splits = QA_SETS[name]
  if split not in splits:
    raise ValueError(f"Tiny set {name!r} has no split {split!r}; it has {list(splits)}.")
  rng = _rng(name, split)
  inputs, answers = [], []
  for _ in range(SPLIT_SIZES[split]):
    count = int(rng.choice(counts))
    chosen = rng.choice(list(keys), size=count, replace=False)
    values = [str(int(v)) for v in rng.integers(0, 100, size=count)]
    asked = int(rng.integers(count))
    context = " ".join(f"{k}={v}" for k, v in zip(chosen, values))
    inputs.append(f"question: {chosen[asked]} context: {context}")
    answers.append([values[asked]])
  return {"inputs": inputs, "targets": [a[0] for a in answers], "answers": answers}


def generate_pairs(name: str, split: str) -> Dict[str, List]:
  """One split of a paraphrase set: half duplicates, half strings differing in one place."""
  alphabet = PAIR_SETS[name]
  rng = _rng(name, split)
  inputs, targets = [], []
  for _ in range(SPLIT_SIZES[split]):
    first = "".join(rng.choice(list(alphabet), size=int(rng.integers(3, 7))))
    duplicate = bool(rng.integers(2))
    second = list(first)
    if not duplicate:
      where = int(rng.integers(len(second)))
      second[where] = rng.choice([c for c in alphabet if c != second[where]])
    inputs.append(f"question1: {first} question2: {''.join(second)}")
    targets.append(PAIR_LABELS[int(duplicate)])
  return {"inputs": inputs, "targets": targets}


def _qa_source(name: str) -> seqio.FunctionDataSource:
  splits = QA_SETS[name][2]

  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    data = generate_qa(name, split)
    data["answers"] = tf.ragged.constant(data["answers"])
    return tf.data.Dataset.from_tensor_slices(data)

  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=splits,
                                  num_input_examples={s: SPLIT_SIZES[s] for s in splits})


def _pair_source(name: str) -> seqio.FunctionDataSource:
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices(generate_pairs(name, split))

  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=tuple(SPLIT_SIZES),
                                  num_input_examples=dict(SPLIT_SIZES))


def register() -> None:
  """Registers the tiny tasks and mixtures (idempotent)."""
  features = {name: seqio.Feature(vocabulary=VOCABULARY, add_eos=True)
              for name in ("inputs", "targets")}
  preprocess = [seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim]
  for name in QA_SETS:
    registry.add_task(task_name(name), source=_qa_source(name), preprocessors=preprocess,
                      output_features=features, postprocess_fn=postprocessors.answers_list,
                      metric_fns=[metrics.squad])
  for name in PAIR_SETS:
    registry.add_task(task_name(name), source=_pair_source(name), preprocessors=preprocess,
                      output_features=features,
                      postprocess_fn=postprocessors.label_to_class_id(PAIR_LABELS),
                      metric_fns=[metrics.f1_binary, metrics.accuracy])
  registry.add_mixture(QA_EVAL_MIXTURE, [task_name(n) for n in QA_SETS], default_rate=1.0)
  for source, target in (("digits", "letters"), ("letters", "digits")):
    registry.add_mixture(pair_mixture_name(source, target),
                         [task_name(f"pair_{source}"), task_name(f"pair_{target}")],
                         default_rate=1.0)


register()
