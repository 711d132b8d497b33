"""`infer(*, model, dataset_cfg, ...)`: what the infer entry point runs, configured by gin.

Plain Python with keyword arguments; `prompt_tuning/infer.py` is its command line
(`python -m prompt_tuning.infer`), which parses flags and gin and calls it. Kept apart from
the command line so the gin glue (`engine/gin_utils.py`) can register it without importing
the entry points that import the glue.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

MODES = ("predict", "score")


def _text(value: Any) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def infer(
    *,
    model: Any,
    dataset_cfg: Any,
    output_dir: str,
    mode: str = "predict",
    restore_cfg: Any = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_step: Optional[int] = None,
    mesh_config: Any = None,
    trainable_patterns: Optional[Sequence[str]] = None,
    param_groups: Optional[Sequence[Any]] = None,
    decoder_params: Optional[Mapping[str, Any]] = None,
    num_examples: Optional[int] = None,
    summarize_config_fn: Any = None,
) -> List[str]:
  """Runs the model over each task of `dataset_cfg`; returns the JSONL files written.

  Arguments as in `prompt_tuning.eval.evaluate`, plus `mode` ('predict' or 'score').
  """
  if mode not in MODES:
    raise ValueError(f"infer mode must be one of {MODES}, got {mode!r}.")
  import jax  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import data, evaluation  # pylint: disable=g-import-not-at-top
  from prompt_tuning.jobs import inference  # pylint: disable=g-import-not-at-top

  setup, runner = inference.prepare(
      model=model, dataset_cfg=dataset_cfg, output_dir=output_dir, purpose="before inference",
      restore_cfg=restore_cfg, checkpoint_dir=checkpoint_dir, checkpoint_step=checkpoint_step,
      mesh_config=mesh_config, trainable_patterns=trainable_patterns, param_groups=param_groups,
      decoder_params=decoder_params, summarize_config_fn=summarize_config_fn)
  written = []
  for task in seqio.get_subtasks(data.get_mixture_or_task(dataset_cfg)):
    if dataset_cfg.split not in task.splits:
      continue
    records = _infer_task(task, dataset_cfg, runner, setup, mode=mode, num_examples=num_examples)
    path = os.path.join(output_dir, "inference", evaluation.inference_file_name(
        task.name, dataset_cfg.split, setup.step or 0))
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path + ".tmp", "w") as f:
        for record in records:
          f.write(json.dumps(record) + "\n")
      os.replace(path + ".tmp", path)
      print(f"Wrote {len(records)} {mode} results to {path}")
    written.append(path)
  return written


def _infer_task(task, dataset_cfg, runner, setup, *, mode: str,
                num_examples: Optional[int]) -> List[Dict[str, Any]]:
  """Raw examples and model features in lockstep (no packing keeps them one-to-one)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import data, reporting  # pylint: disable=g-import-not-at-top

  lengths = dict(dataset_cfg.task_feature_lengths)
  raw = task.get_dataset(sequence_length=lengths, split=dataset_cfg.split, shuffle=False,
                         num_epochs=1, use_cached=dataset_cfg.use_cached, seed=dataset_cfg.seed)
  if num_examples is not None:
    raw = raw.take(num_examples)
  converted = data.feature_converter_for(runner.model)(raw, lengths)
  texts = raw.map(lambda x: {"inputs": x.get("inputs_pretokenized", tf.constant("")),
                             "targets": x.get("targets_pretokenized", tf.constant(""))})
  vocabulary = task.output_features["targets"].vocabulary
  records: List[Dict[str, Any]] = []
  rng = jax.random.PRNGKey(0)
  size = dataset_cfg.batch_size
  bar = reporting.progress(total=reporting.known_length(raw) or num_examples,
                           desc=f"{mode} {task.name}", unit="example",
                           primary=jax.process_index() == 0)
  batches = tf.data.Dataset.zip((texts, converted)).batch(size).as_numpy_iterator()
  for examples, features in batches:
    batch = data.pad_rows({k: np.asarray(v) for k, v in features.items()}, size)
    real = len(next(iter(features.values())))
    if mode == "score":
      outputs = runner.score(setup.placed.trainable, setup.placed.frozen, batch)[:real]
      rows = [{"score": float(s)} for s in outputs]
    else:
      rng, step_rng = jax.random.split(rng)
      decodes, scores = runner.predict_with_scores(setup.placed.trainable, setup.placed.frozen,
                                                   batch, step_rng)
      rows = [_decodes_record(d, s, vocabulary) for d, s in zip(decodes[:real], scores[:real])]
    for text, target, row in zip(examples["inputs"], examples["targets"], rows):
      records.append({"index": len(records), "inputs": _text(text), "targets": _text(target),
                      **row})
    bar.update(real)
  bar.close()
  return records


def _decodes_record(decodes, scores, vocabulary) -> Dict[str, Any]:
  """The best decode (`prediction`, `tokens`, `score`), and all of them when there are more."""
  all_decodes = []
  for row, score in zip(decodes, scores):
    tokens = [int(t) for t in row]
    all_decodes.append({"prediction": vocabulary.decode(tokens),
                        "tokens": [t for t in tokens if t], "score": float(score)})
  record = dict(all_decodes[0])
  if len(all_decodes) > 1:
    record["decodes"] = all_decodes
  return record
