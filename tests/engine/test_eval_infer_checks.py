"""eval and infer check the task (registered, data prepared) before reading any checkpoint.

The checkpoint folder given here does not exist: if anything were restored first, the error
would be about the checkpoint instead of the task.
"""
import pytest

from prompt_tuning import eval as eval_lib
from prompt_tuning import infer as infer_lib

FILES = ["gin/models/t5_1_1_tiny.gin", "gin/prompts/prompt.gin"]


def args(entry, tmp_path, task, module):
  run_file, output = {"eval": ("eval.gin", "EVAL_OUTPUT_DIR"),
                      "infer": ("infer.gin", "INFER_OUTPUT_DIR")}[entry]
  bindings = {"CHECKPOINT_DIR": repr(str(tmp_path / "no_such_run")),
              output: repr(str(tmp_path / "out")), "MIXTURE_OR_TASK_NAME": repr(task),
              "TASK_MODULE": repr(module), "PROMPT_LENGTH": "8"}
  return ([f"--gin_file={f}" for f in FILES + [f"gin/runs/{run_file}"]]
          + [f"--gin.{k}={v}" for k, v in bindings.items()])


@pytest.mark.parametrize("entry, main, purpose", [
    ("eval", eval_lib.main, "before evaluating"), ("infer", infer_lib.main, "before inference")])
def test_unknown_task_is_named_before_any_checkpoint_is_read(tmp_path, entry, main, purpose):
  with pytest.raises(ValueError) as error:
    main(args(entry, tmp_path, "no_such_task", "prompt_tuning.smoke_data.tasks"))
  assert str(error.value).splitlines()[0] == (
      "Unknown SeqIO task or mixture 'no_such_task'; register it (set TASK_MODULE, the dataset "
      f"config's module, to the Python module that registers it) {purpose}.")
  assert not (tmp_path / "out").exists()


def test_unprepared_tfds_data_is_named_before_any_checkpoint_is_read(tmp_path, monkeypatch):
  import seqio  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import constants  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(constants, "DATA_DIR", str(tmp_path / "tfds"))  # an empty TFDS_DATA_DIR
  seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  try:
    with pytest.raises(ValueError) as error:
      eval_lib.main(args("eval", tmp_path, "super_glue_rte_v102", "tasks.super_glue"))
  finally:
    seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  assert str(error.value).splitlines()[0].startswith(
      "The data of task 'super_glue_rte_v102' (TFDS 'super_glue/rte:1.0.2') is not prepared in "
      f"{tmp_path / 'tfds'} (TFDS_DATA_DIR)")
