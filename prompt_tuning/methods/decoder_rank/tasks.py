"""SuperGLUE for decoder-only prompt tuning, scored by rank classification.

A decoder-only model trains on a benchmark's text-to-text task (`super_glue_<b>_v102`: the
feature converter concatenates inputs and targets and puts the loss on the targets) and is
evaluated on its `_rank_classification` twin, where every answer choice is one row whose
target log-likelihood is its score and the best-scoring choice is the prediction. Both come
from tasks/super_glue.py; this module adds what decoder-only runs need on top:

  <prefix>super_glue_v102_rank_classification   the eight training benchmarks' rank
                                                 classification tasks, evaluated together
  lm_super_glue_*       every SuperGLUE task in a rotary decoder's own tokenizer, registered
                        when gin binds LM_TOKENIZER (gin/methods/decoder_rank/tasks/
                        super_glue_lm.gin, through `configurables.lm_task_module`) or the
                        environment variable PROMPT_TUNING_LM_TOKENIZER names it: a
                        SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma) or a Hugging
                        Face `tokenizer.json` (Llama 3 / 3.1, Qwen2; EOS from the
                        `config.json` beside it)
  tiny_super_glue_{rte,boolq}_v102[...]   generated examples in the raw RTE / BoolQ fields,
                        formatted exactly as the real benchmarks, over `seqio.ByteVocabulary`
                        (the tiny CPU pipeline; no download)

The T5-style decoder-only model reads the T5 vocabulary and uses the plain `super_glue_*`
names. The tiny rule: a passage / premise of digit words and a question / hypothesis about
one digit; the answer is whether that digit occurs (half of the examples, by construction).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies
from prompt_tuning.methods.decoder_rank import json_vocabulary
from tasks import super_glue

LM_TOKENIZER_ENV = "PROMPT_TUNING_LM_TOKENIZER"
LM_PREFIX = "lm_"
TINY_PREFIX = "tiny_"
TINY_BENCHMARKS = ("rte", "boolq")
TINY_SPLIT_SIZES = {"train": 2048, "validation": 128}
_TINY_SEEDS = {"train": 11, "validation": 12}
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def rank_mixture_name(name_prefix: str = "", *, taskless: bool = False) -> str:
  """The evaluation mixture of the rank-classification tasks, e.g.
  `super_glue_v102_rank_classification`."""
  return f"{name_prefix}{'taskless_' if taskless else ''}super_glue_v102_rank_classification"


def register_rank_mixtures(name_prefix: str = "",
                           benchmarks: Optional[List[str]] = None) -> None:
  """Mixtures of the rank-classification tasks of `benchmarks` (default: the eight training
  benchmarks), each task evaluated on its own; idempotent."""
  names = benchmarks or [b.name for b in super_glue.BENCHMARKS.values() if b.in_mixture]
  for taskless in (False, True):
    registry.add_mixture(
        rank_mixture_name(name_prefix, taskless=taskless),
        [super_glue.task_name(n, taskless=taskless, rank_classification=True,
                              name_prefix=name_prefix) for n in names],
        default_rate=1.0)


def lm_vocabulary(path: str) -> seqio.Vocabulary:
  """A rotary decoder's tokenizer as a seqio vocabulary (no T5 extra ids): `tokenizer.json`
  through `tokenizers`, anything else as a SentencePiece model."""
  if path.endswith(".json"):
    return json_vocabulary.TokenizerJsonVocabulary(path)
  return vocabularies.SentencePieceVocabulary(path, extra_ids=0)


def register_lm(path: str, *, name_prefix: str = LM_PREFIX,
                source: str = LM_TOKENIZER_ENV) -> None:
  """Every SuperGLUE task in the tokenizer `path` as `<name_prefix>...`, plus the mixtures;
  `source` names the setting that gave `path` (for the error when it does not exist)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{source}={path} does not exist; point it at the "
                            "checkpoint's tokenizer.model or tokenizer.json.")
  super_glue.register(vocabulary=lm_vocabulary(path), name_prefix=name_prefix)
  register_rank_mixtures(name_prefix)
  _REGISTERED_LM[name_prefix] = path


_REGISTERED_LM: Dict[str, str] = {}


def register_lm_once(path: str, *, name_prefix: str = LM_PREFIX,
                     source: str = LM_TOKENIZER_ENV) -> None:
  """`register_lm`, skipped when `name_prefix` already reads this same tokenizer file; a
  different file under the same names is an error (tasks cannot change tokenizer midway)."""
  registered = _REGISTERED_LM.get(name_prefix)
  if registered is not None and os.path.abspath(registered) == os.path.abspath(path):
    return
  if registered is not None:
    raise ValueError(f"The {name_prefix}super_glue_* tasks already read {registered}; they "
                     f"cannot also read {path} in the same process.")
  register_lm(path, name_prefix=name_prefix, source=source)


def unregistered_task_message(name: str) -> Optional[str]:
  """Why the task `name` is not registered, when this module can tell (the data pipeline
  asks before its generic "unknown task" error)."""
  if not name.startswith(LM_PREFIX) or LM_PREFIX in _REGISTERED_LM:
    return None
  return (f"The task {name!r} is read in the checkpoint's own tokenizer, which is not set: "
          "bind it in gin with --gin.LM_TOKENIZER=\"'/ckpt/tokenizer.json'\" (a run using "
          "gin/methods/decoder_rank/tasks/super_glue_lm.gin) or set the environment variable "
          f"{LM_TOKENIZER_ENV} to the checkpoint's tokenizer.model or tokenizer.json.")


# ------------------------------------------------------------------------------------------------
# The tiny generated stand-in.


def generate_tiny(benchmark: str, *, split: str) -> Dict[str, list]:
  """Raw examples of one split in the benchmark's TFDS fields (`label` as TFDS numbers it).

  RTE: premise "five two seven", hypothesis "There is a two." -> 0 (entailment) when the digit
  occurs, else 1. BoolQ: passage "five two seven", question "is there a two" -> 1 (True) when
  it occurs, else 0.
  """
  if benchmark not in TINY_BENCHMARKS:
    raise ValueError(f"No tiny stand-in for {benchmark!r}; have {list(TINY_BENCHMARKS)}.")
  if split not in TINY_SPLIT_SIZES:
    raise ValueError(f"Unknown split {split!r} for the tiny SuperGLUE tasks; expected one of "
                     f"{sorted(TINY_SPLIT_SIZES)}.")
  rng = np.random.default_rng(_TINY_SEEDS[split] + 100 * TINY_BENCHMARKS.index(benchmark))
  passages, questions, labels = [], [], []
  for _ in range(TINY_SPLIT_SIZES[split]):
    digits = [int(d) for d in rng.integers(0, 10, size=int(rng.integers(2, 5)))]
    present = bool(rng.integers(2))
    absent = [d for d in range(10) if d not in digits]
    asked = int(rng.choice(digits if present else absent))
    passages.append(" ".join(_DIGIT_WORDS[d] for d in digits))
    if benchmark == "rte":
      questions.append(f"There is a {_DIGIT_WORDS[asked]}.")
      labels.append(0 if present else 1)
    else:
      questions.append(f"is there a {_DIGIT_WORDS[asked]}")
      labels.append(1 if present else 0)
  if benchmark == "rte":
    fields = {"premise": passages, "hypothesis": questions}
  else:
    fields = {"passage": passages, "question": questions}
  return {**fields, "idx": list(range(len(labels))), "label": labels}


def _tiny_source(benchmark: str) -> seqio.DataSource:
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    examples = generate_tiny(benchmark, split=split)
    return tf.data.Dataset.from_tensor_slices(
        {k: np.asarray(v, np.int32 if k in ("idx", "label") else object)
         for k, v in examples.items()})

  return seqio.FunctionDataSource(dataset_fn, splits=tuple(TINY_SPLIT_SIZES),
                                  num_input_examples=dict(TINY_SPLIT_SIZES))


def register_tiny(name_prefix: str = TINY_PREFIX) -> None:
  """The tiny RTE and BoolQ stand-ins (all four task forms each) and their rank mixture."""
  vocabulary = seqio.ByteVocabulary()
  for name in TINY_BENCHMARKS:
    super_glue.register_benchmark(super_glue.BENCHMARKS[name], vocabulary=vocabulary,
                                  name_prefix=name_prefix, source=_tiny_source(name))
  register_rank_mixtures(name_prefix, benchmarks=list(TINY_BENCHMARKS))


register_rank_mixtures()
register_tiny()
if os.environ.get(LM_TOKENIZER_ENV):
  register_lm(os.environ[LM_TOKENIZER_ENV])
