"""ID-PT pipeline steps (registered with `pipeline_step` when the pipeline imports this module).

  idpt_prompt_distances   generates prompts with a trained generator (its exported
                          `generator.npz` and the small encoder's checkpoint, no LM needed) for
                          examples of several tasks, prints the cosine-distance table of
                          `analysis.py` and writes it to `<stage_dir>/prompt_distances.json`.

The generator's shapes (P, Pe, E', H, number of self-attention blocks) are read from the
`.npz`, so only the small encoder's configuration is given.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import numpy as np

from prompt_tuning.methods.idpt import analysis
from prompt_tuning.methods.idpt.generator import GENERATOR_TOKENS, PromptGenerator
from prompt_tuning.methods.idpt.groups import SMALL_ENCODER_PREFIX_MAP
from prompt_tuning.pipelines.stages import pipeline_step

HOOK_PREFIX = "input_hook/"
DISTANCES_FILE = "prompt_distances.json"


def _unflatten(flat: Mapping[str, np.ndarray]) -> Dict[str, Any]:
  tree: Dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value)
  return tree


def load_generator(generator_npz: str, encoder_checkpoint: str, encoder_config):
  """`(PromptGenerator, params, lm_width)` from an exported group and the encoder checkpoint."""
  from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  if not os.path.exists(generator_npz):
    raise FileNotFoundError(f"Generator export {generator_npz} does not exist.")
  with np.load(generator_npz) as archive:
    flat = {name[len(HOOK_PREFIX):]: archive[name] for name in archive.files
            if name.startswith(HOOK_PREFIX)}
  if "queries" not in flat or "projection/kernel" not in flat:
    raise ValueError(f"{generator_npz} holds no generator (no input_hook/queries or "
                     f"input_hook/projection/kernel).")
  blocks = {m.group(1) for name in flat for m in [re.match(r"self_block_(\d+)/", name)] if m}
  generator = PromptGenerator(
      encoder_config=encoder_config, length=int(flat["queries"].shape[0]),
      encoder_prompt_length=int(flat["encoder_prompt"].shape[0]) if "encoder_prompt" in flat
      else 0, num_self_attention_blocks=len(blocks))
  checkpoint = checkpoint_import.open_checkpoint(encoder_checkpoint)
  template = jax.eval_shape(lambda: generator.init(
      jax.random.PRNGKey(0), _dummy_inputs(1, 1, int(flat["projection/kernel"].shape[1])),
      hook_inputs={GENERATOR_TOKENS: np.ones((1, 4), np.int32)}))
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import run_setup  # pylint: disable=g-import-not-at-top
  for path in run_setup.flat(nn.meta.unbox(template["params"])):
    if path.startswith("small_encoder/"):
      ours = HOOK_PREFIX + path
      theirs = next(t + ours[len(o):] for o, t in SMALL_ENCODER_PREFIX_MAP if ours.startswith(o))
      flat[path] = np.asarray(checkpoint.read(theirs))
  return generator, _unflatten(flat), int(flat["projection/kernel"].shape[1])


def _dummy_inputs(batch: int, length: int, width: int):
  from prompt_tuning.prompts import base  # pylint: disable=g-import-not-at-top
  return base.embedded_from_tokens(np.zeros((batch, length, width), np.float32),
                                   np.ones((batch, length), np.int32))


def generate_prompts(generator: PromptGenerator, params, lm_width: int,
                     tokens: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """`[N, P, H]` prompts for the generator tokens `[N, L']`."""
  apply = jax.jit(lambda p, t: generator.apply(
      {"params": p}, _dummy_inputs(t.shape[0], 1, lm_width),
      hook_inputs={GENERATOR_TOKENS: t}))
  out = [np.asarray(apply(params, tokens[i:i + batch_size]))
         for i in range(0, len(tokens), batch_size)]
  return np.concatenate(out, axis=0)


def task_generator_tokens(task: str, *, split: str, examples: int, length: int) -> np.ndarray:
  """The first `examples` `generator_tokens` of a task, padded/trimmed to `length`."""
  import seqio  # pylint: disable=g-import-not-at-top
  dataset = seqio.get_mixture_or_task(task).get_dataset(None, split=split, shuffle=False)
  rows = []
  for example in dataset.take(examples).as_numpy_iterator():
    if GENERATOR_TOKENS not in example:
      raise ValueError(f"Task {task!r} has no {GENERATOR_TOKENS!r} feature for the generator.")
    ids = np.asarray(example[GENERATOR_TOKENS], np.int32)[:length]
    rows.append(np.pad(ids, (0, length - len(ids))))
  if not rows:
    raise ValueError(f"Task {task!r} has no {split} examples.")
  return np.stack(rows)


@pipeline_step("idpt_prompt_distances", outputs=("table",))
def prompt_distances(*, stage_dir: str, generator_npz: str, encoder_checkpoint: str,
                     tasks: Mapping[str, str], encoder_config: Mapping[str, Any],
                     examples_per_task: int = 64, length: int = 256, split: str = "validation",
                     task_module: Optional[str] = None) -> Dict[str, Any]:
  """Prints and writes the cosine-distance table for prompts of `tasks` `{task: dataset}`
  (each task is one template of its dataset).

  `encoder_config` holds `models.config.get_config` keyword arguments, e.g.
  `{'name': 't5_1_1_base'}`.
  """
  import importlib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.models import config as config_lib  # pylint: disable=g-import-not-at-top
  if task_module:
    importlib.import_module(task_module)
  settings = dict(encoder_config)
  generator, params, lm_width = load_generator(
      generator_npz, encoder_checkpoint, config_lib.get_config(settings.pop("name"), **settings))
  prompts, datasets, templates = [], [], []
  for task, dataset in tasks.items():
    tokens = task_generator_tokens(task, split=split, examples=examples_per_task, length=length)
    prompts.append(generate_prompts(generator, params, lm_width, tokens))
    datasets += [dataset] * len(tokens)
    templates += [task] * len(tokens)
  table = analysis.distance_table(np.concatenate(prompts), datasets, templates)
  print("\n".join(analysis.format_table(table, "Generated prompts: cosine distance")),
        flush=True)
  with open(os.path.join(stage_dir, DISTANCES_FILE), "w") as f:
    json.dump(table, f, indent=1)
  return {"table": table}


def _p3_groups(task_names: Sequence[str]) -> Dict[str, list]:
  """Held-out P3 dataset -> its template tasks, from the task names (`[idpt_]p3_<folder>`)."""
  from prompt_tuning.data import p3  # pylint: disable=g-import-not-at-top
  groups: Dict[str, list] = {}
  for task in task_names:
    folder = re.sub(r"^(idpt_)?p3_", "", task)
    key = p3.dataset_of(folder, p3.T0_EVAL)
    if key is not None:
      groups.setdefault(key, []).append(task)
  return groups


@pipeline_step("idpt_median_over_templates", outputs=("medians", "average"))
def median_over_templates(*, stage_dir: str, metrics: str,
                          groups: Optional[Mapping[str, Sequence[str]]] = None,
                          metric: str = "accuracy") -> Dict[str, Any]:
  """T0's report from an eval stage's metrics: per dataset the median over its templates, and
  their average; printed and written to `<stage_dir>/median_over_templates.json`.

  `metrics` is the eval stage's `metrics` output (`infer_eval.jsonl`, its last record is read);
  `groups` maps dataset -> template task names (default: held-out P3 datasets by task name).
  """
  from prompt_tuning.data import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import reporting  # pylint: disable=g-import-not-at-top
  path = os.path.join(metrics, "infer_eval.jsonl") if os.path.isdir(metrics) else metrics
  if not os.path.exists(path):
    raise FileNotFoundError(f"Evaluation metrics {path} do not exist.")
  records = reporting.read_jsonl(path)
  if not records:
    raise ValueError(f"Evaluation metrics {path} hold no record.")
  suffix = f"/{metric}"
  results = {key[:-len(suffix)]: {metric: value} for key, value in records[-1].items()
             if key.endswith(suffix)}
  groups = dict(groups) if groups is not None else _p3_groups(sorted(results))
  if not groups:
    raise ValueError(f"No dataset groups for the tasks of {path}: {sorted(results)}.")
  medians = metrics_lib.median_over_templates(results, groups, metric=metric)
  average = float(np.mean(list(medians.values())))
  for dataset, value in sorted(medians.items()):
    print(f"  {dataset:<30} median {metric} over {len(groups[dataset])} templates: {value:.2f}")
  print(f"  {'average':<30} {average:.2f}", flush=True)
  with open(os.path.join(stage_dir, "median_over_templates.json"), "w") as f:
    json.dump({"medians": medians, "average": average}, f, indent=1)
  return {"medians": medians, "average": average}
