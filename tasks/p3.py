"""P3 tasks and the T0 mixtures, registered from a P3 data directory (local or GCS).

P3 task names come from the folders found, so registration needs the directory:
`register(data_dir=...)`, or set $PROMPT_TUNING_P3_DIR before `import tasks`.

  p3_<folder>                     one task per (dataset, template) folder, e.g.
                                  p3_super_glue_rte_GPT_3_style; stored token ids by default
                                  (`retokenize=True` re-tokenizes the text with our vocabulary)
  p3_<folder>_score_eval          score-eval folders: one row per answer choice, metric =
                                  rank-classification accuracy
  p3_t0_train, p3_t0plus_train,   T0 / T0+ / T0++ training mixtures: every template of every
  p3_t0plusplus_train             listed dataset; rate = the dataset's training examples,
                                  or 500,000 / number of templates above 500,000
  p3_eval_<dataset>_score_eval    the score-eval templates of a held-out dataset;
  p3_t0_eval_score_eval           all of them. `median_accuracy` turns Evaluator results
                                  into T0's report: the median over each dataset's templates.
"""
import dataclasses
import os
from typing import Dict, List, Mapping, Optional

import seqio

from prompt_tuning.data import metrics
from prompt_tuning.data import p3
from prompt_tuning.data import postprocessors
from prompt_tuning.data import preprocessors
from prompt_tuning.data import registry
from prompt_tuning.data import vocabularies

DATA_DIR_ENV = "PROMPT_TUNING_P3_DIR"
NAME_PREFIX = "p3_"


@dataclasses.dataclass
class Registration:
  """What `register` added: task names, mixture names, and eval dataset -> template tasks."""
  tasks: List[str]
  mixtures: List[str]
  eval_groups: Dict[str, List[str]]


def task_name(folder: str, *, name_prefix: str = NAME_PREFIX) -> str:
  return name_prefix + registry.clean_name(folder)


def _use_text(x):
  """Swaps stored ids for the text, so `tokenize_and_append_eos` encodes it with our vocabulary."""
  out = {k: v for k, v in x.items() if k not in ("inputs", "targets")}
  out["inputs"] = x["inputs_pretokenized"]
  out["targets"] = x["targets_pretokenized"]
  del out["inputs_pretokenized"], out["targets_pretokenized"]
  return out


def _register_folder(folder: str, source: p3.P3Source, *, vocabulary: seqio.Vocabulary,
                     retokenize: bool, name_prefix: str) -> str:
  if retokenize:
    steps = [preprocessors.map_examples(_use_text)]
  else:
    steps = [preprocessors.drop_trailing_eos]
  if p3.is_score_eval(folder):
    postprocess_fn, metric_fns = postprocessors.rank_classification, [metrics.rank_classification]
  else:
    postprocess_fn, metric_fns = postprocessors.strip, [metrics.accuracy]
  name = task_name(folder, name_prefix=name_prefix)
  registry.add_task(
      name,
      source=source,
      preprocessors=[*steps, preprocessors.tokenize_and_append_eos],
      output_features=vocabularies.text_to_text_features(vocabulary),
      postprocess_fn=postprocess_fn,
      metric_fns=metric_fns,
  )
  return name


def register(
    *,
    data_dir: str,
    vocabulary: Optional[seqio.Vocabulary] = None,
    retokenize: bool = False,
    name_prefix: str = NAME_PREFIX,
) -> Registration:
  """Registers a task per template folder of `data_dir`, the T0 mixtures and eval mixtures.

  Args:
    data_dir: the folder holding P3's template folders (P3's `data/`).
    vocabulary: used to decode (and, with `retokenize`, encode); default: T5's, which is
      the vocabulary P3's stored ids were made with.
    retokenize: encode the `*_pretokenized` text instead of using the stored ids.
    name_prefix: prefix of every registered name.
  """
  vocabulary = vocabulary or vocabularies.get_vocabulary()
  folders = p3.list_template_folders(data_dir)
  sources = {f: p3.P3Source(os.path.join(data_dir, f)) for f in folders}
  names = {f: _register_folder(f, sources[f], vocabulary=vocabulary, retokenize=retokenize,
                               name_prefix=name_prefix) for f in folders}
  mixtures = []
  for mixture, datasets in p3.MIXTURES.items():
    groups = p3.training_groups(folders, sources, datasets)
    if not groups:
      continue
    entries = []
    for group in groups.values():
      for source in group.sources:
        folder = os.path.basename(source.directory)
        # Rates are read from the stats files when the mixture is first used.
        entries.append((names[folder], lambda task, group=group: group.rate))
    mixtures.append(registry.add_mixture(name_prefix + mixture, entries).name)
  eval_groups: Dict[str, List[str]] = {}
  for folder in folders:
    key = p3.dataset_of(folder, p3.T0_EVAL)
    if key is not None and p3.is_score_eval(folder):
      eval_groups.setdefault(key, []).append(names[folder])
  for key, group_tasks in eval_groups.items():
    mixtures.append(registry.add_mixture(
        f"{name_prefix}eval_{key}_score_eval", group_tasks, default_rate=1.0).name)
  if eval_groups:
    mixtures.append(registry.add_mixture(
        f"{name_prefix}t0_eval_score_eval", sum(eval_groups.values(), []), default_rate=1.0).name)
  return Registration(tasks=list(names.values()), mixtures=mixtures, eval_groups=eval_groups)


def median_accuracy(results: Mapping[str, Mapping[str, float]],
                    eval_groups: Mapping[str, List[str]]) -> Dict[str, float]:
  """T0's report: per held-out dataset, the median accuracy over its templates."""
  return metrics.median_over_templates(results, eval_groups, metric="accuracy")


if os.environ.get(DATA_DIR_ENV):
  register(data_dir=os.environ[DATA_DIR_ENV])
