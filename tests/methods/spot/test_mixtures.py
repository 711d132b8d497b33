"""The top-k mixture of targeted transfer (c): registered from a task list when a run is
configured, examples-proportional with SPoT's cap."""
import os

import gin
import pytest
import seqio

from prompt_tuning.engine import gin_utils
from prompt_tuning.methods.spot import demo_tasks
from prompt_tuning.methods.spot import mixtures

MODULE = "prompt_tuning.methods.spot.demo_tasks"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))))


@pytest.fixture(autouse=True)
def _in_repo_root(monkeypatch):
  monkeypatch.chdir(ROOT)


def test_topk_mixture_mixes_the_tasks_examples_proportionally():
  tasks = [demo_tasks.task_name("last", "a"), demo_tasks.task_name("max", "a")]
  name = mixtures.topk_mixture(tasks=tasks, module=MODULE)
  assert name == mixtures.mixture_name(list(reversed(tasks))) and name.startswith(mixtures.PREFIX)
  mixture = seqio.get_mixture_or_task(name)
  assert sorted(t.name for t in mixture.tasks) == sorted(tasks)
  # 2048 training examples each, under the cap: equal rates.
  assert [mixture.get_rate(t) for t in mixture.tasks] == [2048.0, 2048.0]
  small = mixtures.topk_mixture(tasks=tasks[::-1] + [demo_tasks.task_name("count", "a")],
                                module=MODULE, maximum=1000)
  assert {seqio.get_mixture_or_task(small).get_rate(t) for t in
          seqio.get_mixture_or_task(small).tasks} == {1000.0}
  assert mixtures.topk_mixture(tasks=[tasks[0], tasks[0]], module=MODULE) == tasks[0]


def test_topk_mixture_refuses_bad_input():
  with pytest.raises(ValueError, match=r"^The top-k mixture needs at least one task"):
    mixtures.topk_mixture(tasks=[], module=MODULE)
  with pytest.raises(ValueError, match=r"^Top-k mixture task 'nope_task' is not registered"):
    mixtures.topk_mixture(tasks=["nope_task"], module=MODULE)
  with pytest.raises(ValueError, match=r"^Cannot import task module 'no_such_module'"):
    mixtures.topk_mixture(tasks=["x"], module="no_such_module")


def test_the_run_file_binds_the_mixture_as_the_task():
  gin.clear_config()
  gin_utils.register_configurables()
  gin_utils.parse_gin(
      gin_files=["gin/models/byte_t5_tiny.gin", "gin/prompts/random_uniform.gin",
                 "gin/runs/prompt_tuning.gin", "gin/methods/spot/runs/topk_mixture.gin"],
      gin_bindings=[f"TASK_MODULE = '{MODULE}'", "MODEL_DIR = '/tmp/x'",
                    "INITIAL_CHECKPOINT_PATH = None",
                    "MIXTURE_TASKS = ['spot_demo_second_a', 'spot_demo_last_a']"])
  value = gin.query_parameter("train/data.DatasetConfig.mixture_or_task_name")
  while isinstance(value, gin.config.ConfigurableReference) and not value.evaluate:
    value = gin.query_parameter(f"%{value.name}")  # a macro
  assert value.evaluate and value.scoped_configurable_fn() == mixtures.mixture_name(
      ["spot_demo_last_a", "spot_demo_second_a"])
