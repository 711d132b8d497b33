"""SPoT's pipeline steps (`pipeline.step_modules = ['prompt_tuning.methods.spot.pipeline_steps']`).

Registers the functions of `steps.py` (which stay free of the pipeline package, so they can be
called and tested alone) under the step names SPoT's pipelines use:

  spot_add_source    steps.add_source    outputs entry, value_prompt
  spot_add_sources   steps.add_sources   outputs library, entries
  spot_retrieve      steps.retrieve      outputs weighted_average, candidates, candidate_names,
                                                 mixture_tasks, top_prompt
  spot_candidate     steps.candidate     outputs prompt, name
  spot_pick_best     steps.pick_best     outputs model_dir, step, score
"""
from __future__ import annotations

from prompt_tuning.methods.spot import steps
from prompt_tuning.pipelines.stages import pipeline_step

STEPS = {
    "spot_add_source": (steps.add_source, steps.ADD_SOURCE_OUTPUTS),
    "spot_add_sources": (steps.add_sources, steps.ADD_SOURCES_OUTPUTS),
    "spot_retrieve": (steps.retrieve, steps.RETRIEVE_OUTPUTS),
    "spot_candidate": (steps.candidate, steps.CANDIDATE_OUTPUTS),
    "spot_pick_best": (steps.pick_best, steps.PICK_BEST_OUTPUTS),
}

for _name, (_fn, _outputs) in STEPS.items():
  pipeline_step(_name, outputs=_outputs)(_fn)
