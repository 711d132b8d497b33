"""GLUE (`glue/*:2.0.0`) in the T5 text-to-text format, and the SPoT source mixture.

  glue_B_v200, taskless_glue_B_v200    B in cola, sst2, mrpc, qqp, stsb, mnli,
                                       mnli_matched, mnli_mismatched, qnli, rte, wnli, ax
  glue_v200_proportional               examples-proportional mixture of the eight GLUE
  taskless_glue_v200_proportional      training tasks (all but WNLI), SPoT's GLUE source
  glue_mrpc_as_qqp_v200                MRPC written as QQP ("qqp question1: ... question2:
                                       ..." -> duplicate / not_duplicate), for zero-shot
                                       transfer of a QQP-trained prompt; and the reverse,
  glue_qqp_as_mrpc_v200                each also taskless_.
"""
import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Tuple, Union

import seqio

from prompt_tuning.data import glue_formats
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

TFDS_VERSION = "2.0.0"
_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Benchmark:
  name: str
  config: str
  prefix: str
  label_names: Tuple[str, ...]
  fields: Tuple[Tuple[str, str], ...]
  metric_fns: Tuple[Callable, ...]
  splits: Union[Tuple[str, ...], Mapping[str, str]] = _SPLITS
  in_mixture: bool = True

  @property
  def tfds_name(self) -> str:
    return f"glue/{self.config}:{TFDS_VERSION}"


def _fields(*names: str) -> Tuple[Tuple[str, str], ...]:
  return tuple((n, n) for n in names)


_ENTAIL = ("entailment", "not_entailment")
_MNLI = ("entailment", "neutral", "contradiction")
_MRPC = ("not_equivalent", "equivalent")
_QQP = ("not_duplicate", "duplicate")
_ACC = (metrics.accuracy,)
_F1_ACC = (metrics.f1_binary, metrics.accuracy)
_MNLI_FIELDS = _fields("hypothesis", "premise")
BENCHMARKS = {
    b.name: b for b in (
        Benchmark("cola", "cola", "cola", ("unacceptable", "acceptable"), _fields("sentence"),
                  (metrics.matthews_corrcoef,)),
        Benchmark("sst2", "sst2", "sst2", ("negative", "positive"), _fields("sentence"), _ACC),
        Benchmark("mrpc", "mrpc", "mrpc", _MRPC, _fields("sentence1", "sentence2"), _F1_ACC),
        Benchmark("qqp", "qqp", "qqp", _QQP, _fields("question1", "question2"), _F1_ACC),
        Benchmark("stsb", "stsb", "stsb", (), _fields("sentence1", "sentence2"),
                  (metrics.pearson_spearman,)),
        Benchmark("mnli", "mnli", "mnli", _MNLI, _MNLI_FIELDS, _ACC,
                  splits=("train", "validation_matched", "validation_mismatched",
                          "test_matched", "test_mismatched")),
        Benchmark("mnli_matched", "mnli", "mnli", _MNLI, _MNLI_FIELDS, _ACC,
                  splits={"validation": "validation_matched", "test": "test_matched"},
                  in_mixture=False),
        Benchmark("mnli_mismatched", "mnli", "mnli", _MNLI, _MNLI_FIELDS, _ACC,
                  splits={"validation": "validation_mismatched", "test": "test_mismatched"},
                  in_mixture=False),
        Benchmark("qnli", "qnli", "qnli", _ENTAIL, _fields("question", "sentence"), _ACC),
        Benchmark("rte", "rte", "rte", _ENTAIL, _fields("sentence1", "sentence2"), _ACC),
        # SPoT's GLUE mixture leaves WNLI out (as T5 does: its dev set is adversarial).
        Benchmark("wnli", "wnli", "wnli", ("not_entailment", "entailment"),
                  _fields("sentence1", "sentence2"), _ACC, in_mixture=False),
        # The diagnostic set is read as MNLI, the task a model would be trained on.
        Benchmark("ax", "ax", "mnli", _MNLI, _MNLI_FIELDS, (metrics.matthews_corrcoef,),
                  splits=("test",), in_mixture=False),
    )
}


@dataclasses.dataclass(frozen=True)
class Transfer:
  """One GLUE dataset dressed as another: the target task's prefix, field names and labels."""
  source: str
  target: str
  fields: Tuple[Tuple[str, str], ...]  # (target's field name, source feature)


TRANSFERS = (
    Transfer("mrpc", "qqp", (("question1", "sentence1"), ("question2", "sentence2"))),
    Transfer("qqp", "mrpc", (("sentence1", "question1"), ("sentence2", "question2"))),
)


def task_name(benchmark: str, *, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}glue_{benchmark}_v200"


def transfer_task_name(source: str, target: str, *, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}glue_{source}_as_{target}_v200"


def mixture_name(*, taskless: bool = False) -> str:
  return f"{'taskless_' if taskless else ''}glue_v200_proportional"


def _postprocessor(b: Benchmark) -> Callable:
  if b.name == "stsb":
    return postprocessors.string_to_float
  return postprocessors.label_to_class_id(b.label_names)


def _register_task(name: str, *, tfds_name: str, splits, format_fn: Callable,
                   postprocess_fn: Callable, metric_fns: Sequence[Callable],
                   vocabulary: seqio.Vocabulary) -> None:
  registry.add_task(
      name,
      source=seqio.TfdsDataSource(tfds_name=tfds_name, splits=splits),
      preprocessors=[
          preprocessors.map_examples(format_fn),
          preprocessors.tokenize_and_append_eos,
      ],
      output_features=vocabularies.text_to_text_features(vocabulary),
      postprocess_fn=postprocess_fn,
      metric_fns=list(metric_fns),
  )


def register(*, vocabulary: Optional[seqio.Vocabulary] = None,
             kind: str = vocabularies.T5) -> None:
  """Registers every GLUE task, the transfer tasks and the mixtures; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary(kind=kind)
  for b in BENCHMARKS.values():
    for taskless in (False, True):
      prefix = None if taskless else b.prefix
      if b.name == "stsb":
        format_fn = glue_formats.stsb(task_prefix=prefix)
      else:
        format_fn = glue_formats.key_value(
            task_prefix=prefix, fields=b.fields, label_names=b.label_names)
      _register_task(task_name(b.name, taskless=taskless), tfds_name=b.tfds_name,
                     splits=b.splits, format_fn=format_fn, postprocess_fn=_postprocessor(b),
                     metric_fns=b.metric_fns, vocabulary=vocabulary)
  for t in TRANSFERS:
    source, target = BENCHMARKS[t.source], BENCHMARKS[t.target]
    for taskless in (False, True):
      # Label ids keep their meaning (1 = paraphrase in both), only the words change.
      format_fn = glue_formats.key_value(
          task_prefix=None if taskless else target.prefix, fields=t.fields,
          label_names=target.label_names)
      _register_task(transfer_task_name(t.source, t.target, taskless=taskless),
                     tfds_name=source.tfds_name, splits=source.splits, format_fn=format_fn,
                     postprocess_fn=_postprocessor(target), metric_fns=target.metric_fns,
                     vocabulary=vocabulary)
  for taskless in (False, True):
    registry.add_mixture(
        mixture_name(taskless=taskless),
        [task_name(b.name, taskless=taskless) for b in BENCHMARKS.values() if b.in_mixture],
        default_rate=seqio.mixing_rate_num_examples,
    )


register()
