"""SuperGLUE (`super_glue/*:1.0.2`) in the T5 text-to-text format.

For each benchmark B (boolq, cb, copa, multirc, record, rte, wic, wsc_fixed, axb, axg):

  super_glue_B_v102                           "rte hypothesis: ... premise: ..." -> label
  taskless_super_glue_B_v102                  the same without the leading task name
  super_glue_B_v102_rank_classification       one row per answer choice, scored
  taskless_super_glue_B_v102_rank_classification

plus the examples-proportional mixtures `super_glue_v102_proportional` and
`taskless_super_glue_v102_proportional` over the eight training benchmarks (not AX-b/AX-g,
which only have a test split). `mt5_`-prefixed RTE tasks use the mT5 vocabulary.
"""
import dataclasses
from typing import Callable, Optional, Sequence, Tuple

import seqio

from prompt_tuning.data import glue_formats
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

TFDS_VERSION = "1.0.2"
_SPLITS = ("train", "validation", "test")
_TEST_ONLY = ("test",)


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """How one SuperGLUE dataset is read, formatted and scored."""
  name: str  # as it appears in task names
  config: str  # TFDS config
  prefix: str  # task name written at the start of the input
  label_names: Tuple[str, ...]
  fields: Tuple[Tuple[str, str], ...] = ()
  splits: Tuple[str, ...] = _SPLITS
  in_mixture: bool = True

  @property
  def tfds_name(self) -> str:
    return f"super_glue/{self.config}:{TFDS_VERSION}"


def _fields(*names: str) -> Tuple[Tuple[str, str], ...]:
  return tuple((n, n) for n in names)


_TF = ("False", "True")
_ENTAIL = ("entailment", "not_entailment")
BENCHMARKS = {
    b.name: b for b in (
        Benchmark("boolq", "boolq", "boolq", _TF, _fields("passage", "question")),
        Benchmark("cb", "cb", "cb", ("entailment", "contradiction", "neutral"),
                  _fields("hypothesis", "premise")),
        Benchmark("copa", "copa", "copa", ("choice1", "choice2"),
                  _fields("choice1", "choice2", "premise", "question")),
        Benchmark("multirc", "multirc", "multirc", _TF),
        Benchmark("record", "record", "record", ()),
        Benchmark("rte", "rte", "rte", _ENTAIL, _fields("hypothesis", "premise")),
        Benchmark("wic", "wic", "wic", _TF, _fields("sentence1", "sentence2", "word")),
        Benchmark("wsc_fixed", "wsc.fixed", "wsc", _TF),
        # The diagnostics are read as RTE, as a model trained on RTE would see them.
        Benchmark("axb", "axb", "rte", _ENTAIL, _fields("sentence1", "sentence2"),
                  splits=_TEST_ONLY, in_mixture=False),
        Benchmark("axg", "axg", "rte", _ENTAIL, _fields("hypothesis", "premise"),
                  splits=_TEST_ONLY, in_mixture=False),
    )
}


def task_name(benchmark: str, *, taskless: bool = False, rank_classification: bool = False,
              name_prefix: str = "") -> str:
  """The registered name, e.g. `taskless_super_glue_rte_v102_rank_classification`."""
  name = f"{name_prefix}{'taskless_' if taskless else ''}super_glue_{benchmark}_v102"
  return name + ("_rank_classification" if rank_classification else "")


def mixture_name(*, taskless: bool = False, name_prefix: str = "") -> str:
  return f"{name_prefix}{'taskless_' if taskless else ''}super_glue_v102_proportional"


def _formatter(b: Benchmark, task_prefix: Optional[str]) -> Callable:
  if b.name == "multirc":
    return glue_formats.multirc(task_prefix=task_prefix, label_names=b.label_names)
  if b.name == "record":
    return glue_formats.record(task_prefix=task_prefix)
  if b.name == "wsc_fixed":
    return glue_formats.wsc(task_prefix=task_prefix, label_names=b.label_names)
  return glue_formats.key_value(task_prefix=task_prefix, fields=b.fields, label_names=b.label_names)


def _generation_scoring(b: Benchmark) -> Tuple[Callable, Sequence[Callable]]:
  """(postprocessor, metric functions) of the text-generation task."""
  if b.name == "multirc":
    return postprocessors.multirc(b.label_names), [metrics.multirc]
  if b.name == "record":
    return postprocessors.record, [metrics.record]
  to_id = postprocessors.label_to_class_id(b.label_names)
  if b.name == "cb":
    return to_id, [metrics.accuracy, metrics.macro_f1(3)]
  if b.name == "axb":
    return to_id, [metrics.matthews_corrcoef]
  return to_id, [metrics.accuracy]


def register_benchmark(b: Benchmark, *, vocabulary: seqio.Vocabulary, name_prefix: str,
                       source: Optional[seqio.DataSource] = None) -> None:
  """Registers one benchmark's four tasks; `source` replaces TFDS (e.g. generated examples in
  the benchmark's raw fields, for a tiny stand-in that goes through the same formatting)."""
  features = vocabularies.text_to_text_features(vocabulary)
  if source is None:
    source = seqio.TfdsDataSource(tfds_name=b.tfds_name, splits=b.splits)
  tail = [preprocessors.tokenize_and_append_eos]
  for taskless in (False, True):
    format_fn = preprocessors.map_examples(_formatter(b, None if taskless else b.prefix))
    # Generation: ReCoRD trains on every answer; its metric keeps one row per query.
    expand = [glue_formats.one_example_per_answer] if b.name == "record" else []
    postprocess_fn, metric_fns = _generation_scoring(b)
    registry.add_task(
        task_name(b.name, taskless=taskless, name_prefix=name_prefix),
        source=source,
        preprocessors=[format_fn, *expand, *tail],
        output_features=features,
        postprocess_fn=postprocess_fn,
        metric_fns=metric_fns,
    )
    choices = (glue_formats.record_choices if b.name == "record"
               else glue_formats.label_choices(b.label_names))
    registry.add_task(
        task_name(b.name, taskless=taskless, rank_classification=True, name_prefix=name_prefix),
        source=source,
        preprocessors=[
            format_fn,
            preprocessors.map_examples(choices),
            preprocessors.select(("inputs", "choices", "correct")),
            preprocessors.rank_classification,
            *tail,
        ],
        output_features=features,
        postprocess_fn=postprocessors.rank_classification,
        metric_fns=[metrics.rank_classification],
    )


def register(
    *,
    vocabulary: Optional[seqio.Vocabulary] = None,
    kind: str = vocabularies.T5,
    name_prefix: str = "",
    benchmarks: Optional[Sequence[str]] = None,
) -> None:
  """Registers the SuperGLUE tasks (and, with all benchmarks, the mixtures); idempotent."""
  names = list(benchmarks or BENCHMARKS)
  unknown = sorted(set(names) - set(BENCHMARKS))
  if unknown:
    raise ValueError(f"Unknown SuperGLUE benchmark(s) {unknown}; known: {sorted(BENCHMARKS)}.")
  vocabulary = vocabulary or vocabularies.get_vocabulary(kind=kind)
  for name in names:
    register_benchmark(BENCHMARKS[name], vocabulary=vocabulary, name_prefix=name_prefix)
  mixed = [n for n in names if BENCHMARKS[n].in_mixture]
  if len(mixed) == sum(b.in_mixture for b in BENCHMARKS.values()):
    for taskless in (False, True):
      registry.add_mixture(
          mixture_name(taskless=taskless, name_prefix=name_prefix),
          [task_name(n, taskless=taskless, name_prefix=name_prefix) for n in mixed],
          default_rate=seqio.mixing_rate_num_examples,
      )


register()
register(kind=vocabularies.MT5, name_prefix="mt5_", benchmarks=("rte",))
