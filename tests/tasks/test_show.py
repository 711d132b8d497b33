"""The `python -m prompt_tuning.data.show` inspection tool."""
import io

from prompt_tuning.data import show
from prompt_tuning.data import testing

EXAMPLES = {"super_glue/rte": {"validation": [
    {"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
    {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1}]}}


def test_prints_splits_and_processed_examples(tfds_dir):
  out = io.StringIO()
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    code = show.main(["super_glue_rte_v102", "--num_examples", "1"], out=out)
  text = out.getvalue()
  assert code == 0
  assert "task super_glue_rte_v102" in text
  assert "splits: train, validation, test" in text
  assert "example 0 (validation)" in text and "example 1" not in text
  assert "inputs_pretokenized: 'rte hypothesis: A cat sat. premise: The cat sat.'" in text
  assert "targets_pretokenized: 'entailment'" in text
  vocab = testing.seqio.get_mixture_or_task("super_glue_rte_v102").output_features[
      "targets"].vocabulary
  assert f"targets: {vocab.encode('entailment') + [1]}" in text


def test_mixture_lists_its_tasks(tfds_dir):
  out = io.StringIO()
  with testing.mock_tfds(tfds_dir, examples=EXAMPLES):
    code = show.main(["super_glue_v102_proportional", "--num_examples", "0"], out=out)
  assert code == 0
  assert "mixture super_glue_v102_proportional: 8 tasks" in out.getvalue()
  assert "  super_glue_wsc_fixed_v102\n" in out.getvalue()


def test_unknown_name_is_an_error():
  out = io.StringIO()
  assert show.main(["no_such_task"], out=out) == 2
  assert "'no_such_task' is not a registered task or mixture" in out.getvalue()


def test_smoke_tasks_are_shown_with_module():
  out = io.StringIO()
  code = show.main(["smoke_last_digit", "--module", "prompt_tuning.smoke_data.tasks",
                    "--num_examples", "1"], out=out)
  text = out.getvalue()
  assert code == 0
  assert "task smoke_last_digit" in text and "example 0 (validation)" in text
  assert "example 1" not in text


def test_unimportable_module_is_one_sentence():
  out = io.StringIO()
  assert show.main(["smoke_last_digit", "--module", "no_such_module_xyz"], out=out) == 2
  assert out.getvalue() == ("error: cannot import task module 'no_such_module_xyz': No module "
                            "named 'no_such_module_xyz'.\n")


def test_unprepared_tfds_data_is_one_sentence_not_a_download(tmp_path, monkeypatch):
  """An empty TFDS_DATA_DIR: no download attempt (that would hang offline), one sentence."""
  import seqio  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path))  # what TFDS_DATA_DIR sets
  seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  out = io.StringIO()
  try:
    code = show.main(["super_glue_rte_v102", "--num_examples", "1"], out=out)
  finally:
    seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  lines = out.getvalue().splitlines()
  assert code == 2
  assert lines[-1] == (
      f"error: The data of task 'super_glue_rte_v102' (TFDS 'super_glue/rte:1.0.2') is not "
      f"prepared in {tmp_path} (TFDS_DATA_DIR); prepare it where the network is reachable with "
      "tensorflow_datasets.builder('super_glue/rte:1.0.2', data_dir=...).download_and_prepare() "
      "and point TFDS_DATA_DIR at that folder.")
  assert "example 0" not in out.getvalue()


def test_offline_command_with_an_empty_tfds_data_dir(tmp_path):
  """The reported case, as a user runs it: no data in TFDS_DATA_DIR, exit 2, one sentence."""
  import os  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  repo = pathlib.Path(__file__).resolve().parents[2]
  env = {**os.environ, "TFDS_DATA_DIR": str(tmp_path), "PYTHONPATH": str(repo)}
  done = subprocess.run([sys.executable, "-m", "prompt_tuning.data.show", "super_glue_rte_v102"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                        check=False)
  assert done.returncode == 2
  assert done.stderr == ""
  assert done.stdout.splitlines()[-1].startswith(
      f"error: The data of task 'super_glue_rte_v102' (TFDS 'super_glue/rte:1.0.2') is not "
      f"prepared in {tmp_path} (TFDS_DATA_DIR); prepare it where the network is reachable")
