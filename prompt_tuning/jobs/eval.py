"""`evaluate(*, model, dataset_cfg, ...)`: what the eval entry point runs, configured by gin.

Plain Python with keyword arguments; `prompt_tuning/eval.py` is its command line
(`python -m prompt_tuning.eval`), which parses flags and gin and calls it. Kept apart from
the command line so the gin glue (`engine/gin_utils.py`) can register it without importing
the entry points that import the glue.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional, Sequence


def evaluate(
    *,
    model: Any,
    dataset_cfg: Any,
    output_dir: str,
    restore_cfg: Any = None,
    checkpoint_dir: Optional[str] = None,
    checkpoint_step: Optional[int] = None,
    mesh_config: Any = None,
    trainable_patterns: Optional[Sequence[str]] = None,
    param_groups: Optional[Sequence[Any]] = None,
    decoder_params: Optional[Mapping[str, Any]] = None,
    num_examples: Optional[int] = None,
    summarize_config_fn: Any = None,
) -> Dict[str, float]:
  """Evaluates `model` on `dataset_cfg`'s task(s) and split; returns `{'task/metric': value}`.

  Args:
    model: the model wrapper (with the same input hook as in training).
    dataset_cfg: `data.DatasetConfig` (split, lengths, batch size) of the evaluated data.
    output_dir: where metrics (and config.gin) are written.
    restore_cfg: `trainer.RestoreConfig` of the base; default: the base recorded in the run.
    checkpoint_dir: a training run's model dir (or its checkpoints folder); None evaluates
      the base plus initialisers (e.g. a prompt from `gin/prompts/from_file.gin`).
    checkpoint_step: the step to evaluate (default: the latest).
    mesh_config: `partitioning.MeshConfig`.
    trainable_patterns: which parameters the run trained (default: recorded in the run).
    param_groups: the run's parameter groups (default: recorded in the run).
    decoder_params: e.g. `{'method': 'beam', 'num_decodes': 4, 'alpha': 0.6}`.
    num_examples: evaluate only the first examples of each task.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import evaluation, reporting  # pylint: disable=g-import-not-at-top
  from prompt_tuning.jobs import inference  # pylint: disable=g-import-not-at-top

  setup, runner = inference.prepare(
      model=model, dataset_cfg=dataset_cfg, output_dir=output_dir, purpose="before evaluating",
      restore_cfg=restore_cfg, checkpoint_dir=checkpoint_dir, checkpoint_step=checkpoint_step,
      mesh_config=mesh_config, trainable_patterns=trainable_patterns, param_groups=param_groups,
      decoder_params=decoder_params, summarize_config_fn=summarize_config_fn)
  log_dir = (os.path.join(output_dir, evaluation.INFERENCE_LOG_SUBDIR)
             if jax.process_index() == 0 else None)
  evaluator = evaluation.build_evaluator(dataset_cfg, model=model, num_examples=num_examples,
                                         log_dir=log_dir)
  if evaluator is None:
    raise ValueError(f"Task {dataset_cfg.mixture_or_task_name!r} has no metrics on split "
                     f"{dataset_cfg.split!r}.")
  step = setup.step or 0
  metrics = evaluation.run_infer_eval(evaluator, runner, setup.placed.trainable,
                                      setup.placed.frozen, batch_size=dataset_cfg.batch_size,
                                      step=step)
  writer = reporting.MetricsWriter(model_dir=output_dir, is_primary=jax.process_index() == 0)
  flat = writer.write(reporting.INFER_EVAL, step, reporting.flatten_eval_metrics(metrics))
  writer.close()
  if jax.process_index() == 0:
    for name, value in sorted(flat.items()):
      print(f"{name} = {value:.4f} (step {step})")
  return flat
