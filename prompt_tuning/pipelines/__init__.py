"""Multi-stage pipelines: named train / eval / infer runs and Python steps, chained by outputs.

  stages.py        what a stage is, the outputs each kind makes, the Python-step registry
  placeholders.py  `{stage.output}` references inside bindings, gin-file names and inputs
  plan.py          checks a pipeline before anything runs (names, kinds, references, cycles)
  outputs.py       reads a finished stage's outputs from its folder
  runner.py        runs (or dry-runs) the plan: one folder per stage, completion records,
                   skip-finished, resume-interrupted

The command line is `python -m prompt_tuning.pipeline` (prompt_tuning/pipeline.py).
"""
