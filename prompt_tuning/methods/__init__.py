"""Research methods built on the engine, one subpackage each.

A method is what the engine's mechanisms (parameter groups, the wrapper protocol, the input hook,
pipelines) cannot express by configuration alone. Each method lives in three places, all named
after it:

  prompt_tuning/methods/<name>/   its module(s) (and a model wrapper if it needs one), any
                                  `@pipeline_step` functions (a `steps.py` that its pipelines
                                  list in `pipeline.step_modules`), `demo.py` (the CPU
                                  demonstration, runnable as `python -m
                                  prompt_tuning.methods.<name>.demo`) and a README.md: what it
                                  is, the paper, the gin entry, the CPU demonstration command.
  gin/methods/<name>/             its pipelines (`python -m prompt_tuning.pipeline
                                  --gin_file=gin/methods/<name>/<file>.gin`): presets for real
                                  models on TPU slices and a `*_tiny.gin` variant that runs on a
                                  laptop CPU with the tiny smoke model and tasks.
  tests/methods/<name>/           unit tests, and one end-to-end test of the tiny pipeline.

A method imports the engine; the engine never imports a method. See gin/methods/README.md.
"""
