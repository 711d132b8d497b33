"""Hand-made prompt runs and prompt libraries for the SPoT tests (numpy only, no model)."""
import json
import os

import numpy as np
import pytest

from prompt_tuning.methods.spot import library as library_lib


def write_run(model_dir, prompts, evals=None, seed=None, prompt="input_hook.prompt"):
  """A finished run's files: `prompts` {step: [P, H]}, `evals` {step: {'task/metric': v}}."""
  for step, value in prompts.items():
    folder = os.path.join(model_dir, "numpy_checkpoints", f"checkpoint_{step}")
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, f"{prompt}.npy"), np.asarray(value, np.float32))
  if evals is not None:
    os.makedirs(os.path.join(model_dir, "metrics"), exist_ok=True)
    with open(os.path.join(model_dir, "metrics", "infer_eval.jsonl"), "w") as f:
      for step, values in evals.items():
        f.write(json.dumps({"step": step, **values}) + "\n")
  if seed is not None:
    with open(os.path.join(model_dir, "config.gin"), "w") as f:
      f.write(f"RANDOM_SEED = {seed}\ntrain.random_seed = %RANDOM_SEED\n")
  return str(model_dir)


def make_library(root, sources, model="tiny", key_step=10):
  """A library with one entry per `sources[name] = (task, key [P, H], value [P, H])`."""
  embed = next(iter(sources.values()))[1].shape[1]
  lib = library_lib.Library(str(root), library_lib.ModelInfo(model, embed), [])
  for name, (task, key, value) in sources.items():
    lib.add(library_lib.Entry(
        name=name, task=task, model=model, prompt_shape=tuple(np.shape(value)), seed=0,
        steps=100, key_step=key_step, value_step=50, metric=f"{task}/accuracy", metric_value=1.0,
        key_prompt=f"prompts/{name}/key_{key_step}.npy",
        value_prompt=f"prompts/{name}/value_50.npy"),
        key=np.asarray(key, np.float32), value=np.asarray(value, np.float32))
  return lib


@pytest.fixture
def hand_library(tmp_path):
  """Four sources whose key prompts have cosine 1, 1/sqrt(2), 0, -1 to `TARGET` (both measures).

  Every key prompt repeats one token, so the two measures agree; value prompts are constant
  tables (a: 1, b: 2, c: 3, d: 4) so an average's numbers can be worked out by hand.
  """
  def rows(token):
    return np.tile(np.asarray(token, np.float32), (2, 1))

  sources = {
      "c.seed0": ("task_c", rows([0, 1, 0]), np.full((2, 3), 3.0)),
      "a.seed0": ("task_a", rows([2, 0, 0]), np.full((2, 3), 1.0)),
      "d.seed0": ("task_d", rows([-1, 0, 0]), np.full((2, 3), 4.0)),
      "b.seed0": ("task_b", rows([1, 1, 0]), np.full((2, 3), 2.0)),
  }
  return make_library(tmp_path / "library", sources)


@pytest.fixture
def target():
  """The target's prompt [3, 3] (a different length from the sources'): token [1, 0, 0]."""
  return np.tile(np.asarray([1, 0, 0], np.float32), (3, 1))


@pytest.fixture
def run_writer():
  return write_run


@pytest.fixture
def library_maker():
  return make_library
