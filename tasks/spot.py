"""SPoT source tasks that GLUE/SuperGLUE do not cover, read from their TFDS datasets.

  [taskless_]spot_docnli_v100          doc_nli:1.0.0                premise, hypothesis -> label
  [taskless_]spot_yelp2_v020           yelp_polarity_reviews:0.2.0  text -> negative/positive
  [taskless_]spot_squad_v300           squad/v1.1:3.0.0             question, context -> answer
  [taskless_]spot_drop_v200            drop:2.0.0                   question, passage -> answer
  [taskless_]spot_winogrande_v120      winogrande:1.2.0 (train_xl)  sentence, options -> option
  [taskless_]spot_hellaswag_v110       hellaswag:1.1.0              context, endings -> ending
  [taskless_]spot_cosmosqa_v100        cosmos_qa:1.0.0              context, question -> answer
  [taskless_]spot_race_{high,middle}_v200  race/{high,middle}:2.0.0  one example per question
  [taskless_]spot_sources_proportional  these and the GLUE/SuperGLUE sources SPoT uses
                                        (examples-proportional, K = 2^19)

Multiple-choice tasks answer with the text of the correct option (every option is in the
input), which is the form a text-to-text prompt model generates; accuracy compares texts.
Unlabelled test examples get the target `<unk>`, as in tasks/glue.py. Yelp-2 has no validation
split, so its TFDS test split serves as validation. Not registered (no TFDS dataset, or an
objective this project lacks): see prompt_tuning/methods/spot/README.md.
"""
import functools
from typing import Callable, Dict, Optional, Sequence

import seqio
import tensorflow as tf

from prompt_tuning.data import glue_formats
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies
from tasks import glue
from tasks import super_glue

Example = Dict[str, tf.Tensor]
MIXTURE_MAXIMUM = 2 ** 19  # SPoT's examples-proportional cap K
_UNK = glue_formats.UNKNOWN_LABEL


def _join(parts):
  return tf.strings.join(list(parts), separator=" ")


def _pick(options: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
  """options[index], or `<unk>` when the index is negative or past the end (no label)."""
  index = tf.cast(index, tf.int32)
  padded = tf.concat([options, tf.constant([_UNK])], axis=0)
  inside = (index >= 0) & (index < tf.size(options))
  return tf.gather(padded, tf.where(inside, index, tf.size(options)))


def _inputs(prefix: Optional[str], fields: Sequence[tf.Tensor]) -> tf.Tensor:
  return _join(([tf.constant(prefix)] if prefix else []) + list(fields))


def _choice_example(prefix: Optional[str], text: Sequence[tf.Tensor], choices: tf.Tensor,
                    label: tf.Tensor) -> Example:
  """`text` and the numbered choices in, the text of choice `label` out."""
  numbered = tf.strings.join(
      [tf.strings.as_string(tf.range(tf.size(choices))), tf.constant(": "), choices])
  options = [tf.constant("options:"), tf.strings.reduce_join(numbered, separator=" ")]
  return {"inputs": _inputs(prefix, list(text) + options), "targets": _pick(choices, label)}


def _choice(prefix, *, text: Callable[[Example], Sequence[tf.Tensor]],
            options: Callable[[Example], tf.Tensor], label: Callable[[Example], tf.Tensor]):
  """Multiple choice over one example's fields (see `_choice_example`)."""
  return lambda x: _choice_example(prefix, text(x), options(x), label(x))


def _extractive(prefix, *, context_key: str, answers: Callable[[Example], tf.Tensor]):
  """Reading comprehension: question and context in, the first answer out (all kept)."""

  def format_example(x: Example) -> Example:
    all_answers = answers(x)
    return {"inputs": _inputs(prefix, [tf.constant("question:"), x["question"],
                                       tf.constant(f"{context_key}:"), x[context_key]]),
            "targets": tf.concat([all_answers, tf.constant([""])], axis=0)[0],
            "answers": all_answers}

  return format_example


def _race_questions(prefix: Optional[str]) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
  """RACE stores one article with several questions; this yields one example per question."""
  letters = tf.constant(["A", "B", "C", "D", "E"])

  def expand(x: Example) -> tf.data.Dataset:
    options = x["options"]
    if isinstance(options, tf.RaggedTensor):
      options = options.to_tensor(default_value="")
    count = tf.minimum(tf.minimum(tf.size(x["questions"]), tf.size(x["answers"])),
                       tf.shape(options)[0])

    def one(i):
      answer = tf.where(tf.equal(letters, x["answers"][i]))
      index = tf.cond(tf.size(answer) > 0, lambda: tf.cast(answer[0, 0], tf.int32),
                      lambda: tf.constant(-1))
      text = [tf.constant("question:"), x["questions"][i], tf.constant("article:"), x["article"]]
      return _choice_example(prefix, text, options[i], index)

    return tf.data.Dataset.range(tf.cast(count, tf.int64)).map(
        lambda i: one(tf.cast(i, tf.int32)))

  def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.flat_map(tf.autograph.experimental.do_not_convert(expand))

  return preprocess


def _label(x):
  return x["label"]


SOURCES = {
    # name: (TFDS name, splits, format (prefix -> fn) or preprocessor, postprocess, metrics)
    "docnli": ("doc_nli:1.0.0", ("train", "validation", "test"),
               lambda p: glue_formats.key_value(
                   task_prefix=p, fields=(("premise", "premise"), ("hypothesis", "hypothesis")),
                   label_names=("not_entailment", "entailment")),
               postprocessors.label_to_class_id(("not_entailment", "entailment")),
               (metrics.accuracy,)),
    "yelp2": ("yelp_polarity_reviews:0.2.0", {"train": "train", "validation": "test"},
              lambda p: glue_formats.key_value(task_prefix=p, fields=(("review", "text"),),
                                               label_names=("negative", "positive")),
              postprocessors.label_to_class_id(("negative", "positive")), (metrics.accuracy,)),
    "squad": ("squad/v1.1:3.0.0", ("train", "validation"),
              lambda p: _extractive(p, context_key="context",
                                    answers=lambda x: x["answers"]["text"]),
              postprocessors.answers_list, (metrics.squad,)),
    "drop": ("drop:2.0.0", {"train": "train", "validation": "dev"},
             lambda p: _extractive(p, context_key="passage", answers=lambda x: tf.concat(
                 [[x["answer"]], x["validated_answers"]], axis=0)),
             postprocessors.answers_list, (metrics.squad,)),
    "winogrande": ("winogrande:1.2.0", {"train": "train_xl", "validation": "validation",
                                        "test": "test"},
                   lambda p: _choice(p, text=lambda x: [tf.constant("sentence:"), x["sentence"]],
                                     options=lambda x: tf.stack([x["option1"], x["option2"]]),
                                     label=_label),
                   postprocessors.strip, (metrics.accuracy,)),
    "hellaswag": ("hellaswag:1.1.0", ("train", "validation", "test"),
                  lambda p: _choice(p, text=lambda x: [tf.constant("context:"), x["context"]],
                                    options=lambda x: x["endings"], label=_label),
                  postprocessors.strip, (metrics.accuracy,)),
    "cosmosqa": ("cosmos_qa:1.0.0", ("train", "validation", "test"),
                 lambda p: _choice(p, text=lambda x: [tf.constant("question:"), x["question"],
                                                      tf.constant("context:"), x["context"]],
                                   options=lambda x: tf.stack([x[f"answer{i}"] for i in range(4)]),
                                   label=_label),
                 postprocessors.strip, (metrics.accuracy,)),
}
RACE_VERSION = "2.0.0"
RACE_SPLITS = {"train": "train", "validation": "dev", "test": "test"}
_VERSIONS = {"docnli": "v100", "yelp2": "v020", "squad": "v300", "drop": "v200",
             "winogrande": "v120", "hellaswag": "v110", "cosmosqa": "v100"}
# The paper's sources that GLUE/SuperGLUE register (C4 and CxC are not registered).
GLUE_SOURCES = ("mnli", "qqp", "qnli", "sst2")
SUPER_GLUE_SOURCES = ("record", "multirc")


def task_name(source: str, *, taskless: bool = False) -> str:
  version = _VERSIONS.get(source, "v200")  # race_high, race_middle: race 2.0.0
  return f"{'taskless_' if taskless else ''}spot_{source}_{version}"


def mixture_name(*, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}spot_sources_proportional"


def source_task_names(*, taskless: bool = False):
  """Every registered SPoT source task: this module's, then the GLUE and SuperGLUE ones."""
  own = [task_name(s, taskless=taskless) for s in list(SOURCES) + ["race_high", "race_middle"]]
  return (own + [glue.task_name(b, taskless=taskless) for b in GLUE_SOURCES]
          + [super_glue.task_name(b, taskless=taskless) for b in SUPER_GLUE_SOURCES])


def register(*, vocabulary: Optional[seqio.Vocabulary] = None) -> None:
  """Registers the SPoT source tasks and their mixture; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  features = vocabularies.text_to_text_features(vocabulary)
  for taskless in (False, True):
    for source, (tfds_name, splits, format_for, postprocess, metric_fns) in SOURCES.items():
      registry.add_task(
          task_name(source, taskless=taskless),
          source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
          preprocessors=[preprocessors.map_examples(format_for(None if taskless else source)),
                         preprocessors.tokenize_and_append_eos],
          output_features=features, postprocess_fn=postprocess, metric_fns=list(metric_fns))
    for level in ("high", "middle"):
      registry.add_task(
          task_name(f"race_{level}", taskless=taskless),
          source=seqio.TfdsDataSource(tfds_name=f"race/{level}:{RACE_VERSION}",
                                      splits=RACE_SPLITS),
          preprocessors=[_race_questions(None if taskless else "race"),
                         preprocessors.tokenize_and_append_eos],
          output_features=features, postprocess_fn=postprocessors.strip,
          metric_fns=[metrics.accuracy])
    registry.add_mixture(
        mixture_name(taskless=taskless), source_task_names(taskless=taskless),
        default_rate=functools.partial(seqio.mixing_rate_num_examples, maximum=MIXTURE_MAXIMUM))


register()
