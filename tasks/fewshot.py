"""The few-shot evaluation suite: what a model can still do in-context after adaptation.

  fewshot_T_Kshot            T in rte, cb, wic, trivia_qa, web_questions, wmt16_ende,
                             wmt16_enro, xsum, wiki_lingua_en; K in 0, 1, 4
  fewshot_suite_Kshot        all nine for one K (evaluation mixture)
  mt5_<the same>             with the mT5 vocabulary

Shots are training examples. Every task has a `train` split (where shots come from) and a
`test` split, the one the suite reports: TFDS validation where the test labels are hidden
(RTE, CB, WiC, TriviaQA), TFDS test otherwise. Evaluate with `eval_split="test"`.
Where the model emits T5 sentinels (`<extra_id_0> answer <extra_id_1> ...`), only the text
between the first two is kept; predictions are then cut where the model starts the next shot
(`Q:`, `Translate`, `Article:`); classification compares the first word with the label words.
`suite_score` averages the headline metrics (accuracy, EM, BLEU, ROUGE-2, all on a 0-100 scale)
of the eight tasks of the ProMoT paper's suite (`PAPER_SUITE`: every task but RTE, which is the
fine-tuning target there). The templates are our own: the paper's template table (its Table 7)
could not be consulted; prompt_tuning/methods/promot/README.md says what was searched.
"""
import dataclasses
import re
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import fewshot
from prompt_tuning.data import metrics
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

SHOTS = (0, 1, 4)
_NLI = "{premise} question: {hypothesis} "
_QA_PREFIXES = ("Q:",)
_TRANSLATE_PREFIXES = ("Translate",)
_SUMMARY_PREFIXES = ("Article:",)


@dataclasses.dataclass(frozen=True)
class SuiteTask:
  name: str
  tfds_name: str
  test_split: str  # the TFDS split reported as `test`
  format_fn: Callable
  postprocess_fn: Callable
  metric_fns: Tuple[Callable, ...]
  headline: str  # the metric that enters the suite average


def _classification(name, tfds_name, template, words) -> SuiteTask:
  return SuiteTask(
      name, tfds_name, "validation",
      fewshot.templated(template, target=fewshot.label_word(words)),
      postprocessors.fewshot_label(words), (metrics.accuracy,), "accuracy")


def _qa(name, tfds_name, test_split, first_answer, all_answers) -> SuiteTask:
  return SuiteTask(
      name, tfds_name, test_split,
      fewshot.templated("Q: {question} A:", target=first_answer, answers=all_answers),
      postprocessors.fewshot_answers(_QA_PREFIXES), (metrics.squad,), "em")


def _translation(name, other, other_name) -> SuiteTask:
  template = f"Translate English to {other_name}: {{en}}"
  return SuiteTask(
      name, f"wmt16_translate/{other}-en:1.0.0", "test",
      fewshot.templated(template, target=fewshot.feature(other)),
      postprocessors.fewshot_generation(_TRANSLATE_PREFIXES), (metrics.bleu,), "bleu")


def _summarization(name, tfds_name, document, summary) -> SuiteTask:
  return SuiteTask(
      name, tfds_name, "test",
      fewshot.templated(f"Article: {{{document}}} One sentence summary:",
                        target=fewshot.feature(summary)),
      postprocessors.fewshot_generation(_SUMMARY_PREFIXES), (metrics.rouge2,), "rouge2")


_SENTINEL = re.compile(r"<extra_id_\d+>")


def between_sentinels(text: str) -> str:
  """The text between the first two sentinels when the prediction holds one, else all of it."""
  text = text.decode("utf-8") if isinstance(text, bytes) else text
  parts = _SENTINEL.split(text)
  return parts[1] if len(parts) > 1 else text


def with_sentinels(postprocess_fn: Callable) -> Callable:
  """`postprocess_fn` applied to predictions after `between_sentinels` (targets unchanged)."""

  def postprocess(text, example=None, is_target: bool = False):
    if not is_target:
      text = between_sentinels(text)
    return postprocess_fn(text, example=example, is_target=is_target)

  return postprocess


def _trivia_qa_answers(x):
  return tf.concat([[x["answer"]["value"]], x["answer"]["aliases"]], axis=0)


SUITE = {
    t.name: t for t in (
        _classification("rte", "super_glue/rte:1.0.2",
                        _NLI + "Is it true or false? answer:", ("true", "false")),
        _classification("cb", "super_glue/cb:1.0.2",
                        _NLI + "Is it true or false or neither? answer:",
                        ("true", "false", "neither")),
        _classification(
            "wic", "super_glue/wic:1.0.2",
            "{sentence1} {sentence2} question: The word {word} is used in the same way in the "
            "two sentences. Is it true or False? answer:", ("false", "true")),
        _qa("trivia_qa", "trivia_qa/rc.nocontext:1.1.0", "validation",
            fewshot.feature("answer/value"), _trivia_qa_answers),
        _qa("web_questions", "web_questions:1.0.0", "test",
            fewshot.first_of("answers"), fewshot.feature("answers")),
        _translation("wmt16_ende", "de", "German"),
        _translation("wmt16_enro", "ro", "Romanian"),
        _summarization("xsum", "xsum:1.1.0", "document", "summary"),
        _summarization("wiki_lingua_en", "gem/wiki_lingua_english_en:1.1.0", "source", "target"),
    )
}


# The eight tasks whose plain mean is the suite's normalised average (the paper's suite).
PAPER_SUITE = ("cb", "wic", "trivia_qa", "web_questions", "wmt16_ende", "wmt16_enro", "xsum",
               "wiki_lingua_en")


def task_name(task: str, num_shots: int, *, name_prefix: str = "") -> str:
  return f"{name_prefix}fewshot_{task}_{num_shots}shot"


def mixture_name(num_shots: int, *, name_prefix: str = "") -> str:
  return f"{name_prefix}fewshot_suite_{num_shots}shot"


def register(*, vocabulary: Optional[seqio.Vocabulary] = None, kind: str = vocabularies.T5,
             name_prefix: str = "", shots: Sequence[int] = SHOTS) -> None:
  """Registers every suite task for each shot count, and one mixture per count; idempotent."""
  vocabulary = vocabulary or vocabularies.get_vocabulary(kind=kind)
  for num_shots in shots:
    for t in SUITE.values():
      source = seqio.TfdsDataSource(
          tfds_name=t.tfds_name, splits={"train": "train", "test": t.test_split})
      registry.add_task(
          task_name(t.name, num_shots, name_prefix=name_prefix),
          source=fewshot.fewshot_source(source, num_shots=num_shots, format_fn=t.format_fn),
          preprocessors=[
              fewshot.join_shots,
              preprocessors.tokenize_and_append_eos,
          ],
          output_features=vocabularies.text_to_text_features(vocabulary),
          postprocess_fn=with_sentinels(t.postprocess_fn),
          metric_fns=list(t.metric_fns),
      )
    registry.add_mixture(
        mixture_name(num_shots, name_prefix=name_prefix),
        [task_name(t, num_shots, name_prefix=name_prefix) for t in SUITE],
        default_rate=1.0,
    )


def suite_score(results: Mapping[str, Mapping[str, float]], *, num_shots: int,
                name_prefix: str = "") -> Dict[str, float]:
  """Headline metric per suite task plus the normalised average of the eight of `PAPER_SUITE`
  (`"average"`); RTE's metric is reported but not averaged.

  Args:
    results: task name -> metrics, as `seqio.Evaluator` (or `evaluation.evaluate`) returns.
  """
  headline = {}
  for t in SUITE.values():
    name = task_name(t.name, num_shots, name_prefix=name_prefix)
    if name not in results or t.headline not in results[name]:
      raise ValueError(f"No {t.headline!r} result for few-shot task {name!r}.")
    headline[t.name] = float(results[name][t.headline])
  averaged = {name: headline[name] for name in PAPER_SUITE}
  return {**headline, "average": metrics.normalized_average(averaged)}


register()
register(kind=vocabularies.MT5, name_prefix="mt5_")
