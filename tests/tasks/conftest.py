"""Shared fixtures: the real T5 vocabulary from `tests/fixtures/`, and a mocked TFDS.

The vocabulary override must happen before `tasks` registers anything, hence at import.
"""
import pytest

from prompt_tuning.data import testing

FIXTURE_VOCAB = testing.use_fixture_vocabulary()

import tasks  # noqa: E402  pylint: disable=g-import-not-at-top,unused-import


@pytest.fixture(scope="session", autouse=True)
def registered_with_fixture_vocabulary():
  """Fails loudly if something imported `tasks` before this conftest chose the vocabulary."""
  import seqio  # pylint: disable=g-import-not-at-top
  vocabulary = seqio.get_mixture_or_task("super_glue_rte_v102").output_features["inputs"].vocabulary
  if vocabulary.sentencepiece_model_file != FIXTURE_VOCAB:
    pytest.fail("tasks were registered before tests/tasks/conftest.py set the fixture vocabulary "
                f"(got {vocabulary.sentencepiece_model_file}); set PROMPT_TUNING_VOCAB first.")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """One scratch TFDS metadata folder for the whole session."""
  return str(tmp_path_factory.mktemp("tfds"))
