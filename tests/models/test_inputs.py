"""The hook contract lives with the models: the model package imports nothing from `prompts/`."""
import json
import os
import pathlib
import subprocess
import sys

from prompt_tuning.models import inputs
from prompt_tuning.prompts import base

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_importing_the_models_does_not_import_the_prompts():
  # A fresh interpreter: this test process has long since imported `prompts` for other tests.
  code = ("import json, sys, prompt_tuning.models, prompt_tuning.models.llama; "
          "print(json.dumps(sorted(m for m in sys.modules if m.startswith('prompt_tuning'))))")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True, timeout=300)
  modules = json.loads(result.stdout.strip().splitlines()[-1])
  assert {"prompt_tuning.models.t5", "prompt_tuning.models.decoder_only",
          "prompt_tuning.models.llama", "prompt_tuning.models.inputs"} <= set(modules)
  assert [m for m in modules if m.startswith("prompt_tuning.prompts")] == []


def test_prompts_base_re_exports_the_same_objects():
  assert base.EmbeddedInputs is inputs.EmbeddedInputs
  assert base.InputHook is inputs.InputHook
  assert base.embedded_from_tokens is inputs.embedded_from_tokens
