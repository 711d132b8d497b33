"""What evaluation and inference both do first: check the data, place the parameters of a run
(or of a base and its initialisers), and compile the model's inference functions for them."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple


def prepare(*, model: Any, dataset_cfg: Any, output_dir: str, purpose: str,
            restore_cfg: Any = None, checkpoint_dir: Optional[str] = None,
            checkpoint_step: Optional[int] = None, mesh_config: Any = None,
            trainable_patterns: Optional[Sequence[str]] = None,
            param_groups: Optional[Sequence[Any]] = None,
            decoder_params: Optional[Mapping[str, Any]] = None,
            summarize_config_fn: Optional[Callable[[str], Any]] = None) -> Tuple[Any, Any]:
  """Returns the placed parameters (`run_setup.InferenceSetup`) and an `evaluation.ModelRunner`.

  An unknown task or unprepared data stops with one sentence (ending with `purpose`, e.g.
  'before evaluating') before any checkpoint is read.
  """
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.data import availability
  from prompt_tuning.engine import data, evaluation, partitioning, trainer
  # pylint: enable=g-import-not-at-top

  availability.check_prepared(availability.require_task(
      dataset_cfg.mixture_or_task_name, module=dataset_cfg.module, purpose=purpose))
  setup = trainer.load_for_inference(
      model=model, lengths=data.model_feature_lengths(model, dataset_cfg.task_feature_lengths),
      mesh_config=mesh_config or partitioning.MeshConfig(),
      restore=restore_cfg or trainer.RestoreConfig(), checkpoint_dir=checkpoint_dir,
      step=checkpoint_step, patterns=trainable_patterns, groups=param_groups)
  if summarize_config_fn is not None:
    summarize_config_fn(output_dir)
  runner = evaluation.ModelRunner(
      model=model, mesh=setup.mesh, rules=setup.rules,
      trainable_shardings=setup.placed.trainable_shardings,
      frozen_shardings=setup.placed.frozen_shardings,
      max_decode_length=evaluation.max_decode_length_for(model, dataset_cfg.task_feature_lengths),
      decoder_params=decoder_params)
  return setup, runner
