"""Every task that `import tasks` registers builds a dataset offline (TFDS mocked)."""
import json

import pytest
import seqio

from prompt_tuning.data import testing
from tasks import natural_questions

# Collected once, at import: the names registered by `import tasks` (conftest).
TASK_NAMES = sorted(seqio.TaskRegistry.names())
MIXTURE_NAMES = sorted(seqio.MixtureRegistry.names())
LENGTHS = {"inputs": 64, "targets": 16}


@pytest.fixture(scope="module")
def offline(tfds_dir, tmp_path_factory):
  reader_dir = tmp_path_factory.mktemp("reader")
  record = {"question": "q?", "answers": ["a"],
            "ctxs": [{"id": "1", "title": "t", "text": "a b", "score": 1.0, "has_answer": True}]}
  for file_name in natural_questions.READER_FILES.values():
    (reader_dir / file_name).write_text(json.dumps([record]))
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv(natural_questions.READER_DIR_ENV, str(reader_dir))
    with testing.mock_tfds(tfds_dir, num_examples=2):
      yield


def test_registry_is_populated():
  assert len(TASK_NAMES) >= 140
  assert {"super_glue_v102_proportional", "glue_v200_proportional",
          "fewshot_suite_4shot"} <= set(MIXTURE_NAMES)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_builds(offline, name):
  task = seqio.get_mixture_or_task(name)
  split = "test" if "test" in task.splits and name.startswith(("fewshot", "mt5_fewshot")) else (
      task.splits[0])
  [example] = testing.process(name, split=split, sequence_length=LENGTHS, num_examples=1)
  for feature in ("inputs", "targets"):
    ids = example[feature]
    assert 0 < len(ids) <= LENGTHS[feature] and ids[-1] == 1, (feature, ids)
    assert isinstance(example[f"{feature}_pretokenized"], str)
