"""The prompt library: adding a finished run, listing, validating, and its one-sentence errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from prompt_tuning.methods.spot import library as library_lib
from prompt_tuning.methods.spot import runs

LibraryError = library_lib.LibraryError


def _prompt(step, shape=(4, 8)):
  """A prompt whose every value is its step, so a copied file shows which step it came from."""
  return np.full(shape, float(step), np.float32)


def _finished_run(run_writer, model_dir, shape=(4, 8), seed=3):
  steps = (5, 10, 20, 30)
  evals = {10: {"rte/accuracy": 70.0}, 20: {"rte/accuracy": 80.0},
           30: {"rte/accuracy": 75.0}, 25: {"rte/accuracy": 99.0}}  # step 25 was not exported
  return run_writer(str(model_dir), {s: _prompt(s, shape) for s in steps}, evals, seed=seed)


def _one_sentence(message):
  return "\n" not in message and message.endswith(".")


def test_add_copies_key_and_best_value_prompt_with_a_manifest_entry(tmp_path, run_writer):
  run = _finished_run(run_writer, tmp_path / "run")
  root = str(tmp_path / "lib")
  entry = library_lib.add_run(library=root, model_dir=run, task="rte", model="tiny", key_step=10)
  assert (entry.name, entry.seed, entry.steps, entry.key_step, entry.value_step) == (
      "rte.seed3", 3, 30, 10, 20)
  assert (entry.metric, entry.metric_value) == ("rte/accuracy", 80.0)
  lib = library_lib.Library.open(root)
  assert (lib.model.name, lib.model.embed_dim) == ("tiny", 8)
  np.testing.assert_array_equal(lib.key_prompt("rte.seed3"), _prompt(10))
  np.testing.assert_array_equal(lib.value_prompt("rte.seed3"), _prompt(20))
  manifest = json.loads((tmp_path / "lib" / "manifest.json").read_text())
  assert manifest["entries"][0]["model"] == {"name": "tiny", "prompt_shape": [4, 8]}
  assert manifest["entries"][0]["key_prompt"] == "prompts/rte.seed3/key_10.npy"
  assert manifest["entries"][0]["value_prompt"] == "prompts/rte.seed3/value_20.npy"
  assert lib.problems() == []
  lib.validate(expected_model="tiny")


def test_add_takes_an_explicit_value_step_seed_and_name(tmp_path, run_writer):
  run = run_writer(str(tmp_path / "run"), {10: _prompt(10), 30: _prompt(30)})  # no metrics
  entry = library_lib.add_run(library=str(tmp_path / "lib"), model_dir=run, task="mnli",
                              model="tiny", key_step=10, value_step=30, seed=7, name="mnli-x")
  assert (entry.name, entry.seed, entry.value_step, entry.metric_value) == ("mnli-x", 7, 30, None)


def test_best_step_is_the_earliest_on_a_tie_and_honours_min():
  metrics = {1: {"m": 2.0}, 2: {"m": 3.0}, 3: {"m": 3.0}, 4: {"m": 1.0}}
  assert runs.best_step(metrics, "m", [1, 2, 3, 4]) == 2
  assert runs.best_step(metrics, "m", [1, 2, 3, 4], mode="min") == 4
  assert runs.best_step(metrics, "m", [1, 3]) == 3


def test_list_prints_one_row_per_entry(tmp_path, run_writer, capsys):
  run = _finished_run(run_writer, tmp_path / "run")
  root = str(tmp_path / "lib")
  library_lib.main(["add", "--library", root, "--model_dir", run, "--task", "rte", "--model",
                    "tiny", "--key_step", "10"])
  library_lib.main(["add", "--library", root, "--model_dir", run, "--task", "rte", "--model",
                    "tiny", "--key_step", "5", "--name", "rte.early"])
  capsys.readouterr()
  assert library_lib.main(["list", "--library", root]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(f"Prompt library {root}: 2 entries, model tiny (embed 8)")
  assert lines[2].split() == ["rte.seed3", "rte", "4x8", "3", "30", "10", "20", "rte/accuracy=80"]
  assert lines[3].split()[0] == "rte.early" and lines[3].split()[5] == "5"
  assert library_lib.main(["validate", "--library", root, "--model", "tiny"]) == 0


# ------------------------------------------------------------------ errors, one sentence each


def _library_with_one_entry(tmp_path, run_writer):
  run = _finished_run(run_writer, tmp_path / "run")
  root = str(tmp_path / "lib")
  library_lib.add_run(library=root, model_dir=run, task="rte", model="tiny", key_step=10)
  return root


def _edit_manifest(root, edit):
  path = os.path.join(root, "manifest.json")
  with open(path) as f:
    data = json.load(f)
  edit(data)
  with open(path, "w") as f:
    json.dump(data, f)


def test_a_missing_prompt_file_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  missing = os.path.join(root, "prompts", "rte.seed3", "key_10.npy")
  os.remove(missing)
  lib = library_lib.Library.open(root)
  with pytest.raises(LibraryError) as error:
    lib.validate()
  assert str(error.value) == f"The key prompt file {missing} of entry 'rte.seed3' is missing."
  with pytest.raises(LibraryError, match="key_10.npy of entry 'rte.seed3' is missing"):
    lib.key_prompts()


def test_a_prompt_file_of_the_wrong_shape_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  path = os.path.join(root, "prompts", "rte.seed3", "value_20.npy")
  np.save(path, np.zeros((3, 8), np.float32))
  with pytest.raises(LibraryError) as error:
    library_lib.Library.open(root).value_prompt("rte.seed3")
  assert str(error.value) == (f"The value prompt file {path} of entry 'rte.seed3' has shape "
                              "(3, 8), but the manifest says (4, 8).")


def test_an_entry_with_the_wrong_model_shape_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  _edit_manifest(root, lambda d: d["entries"][0]["model"].update(prompt_shape=[4, 16]))
  lib = library_lib.Library.open(root)
  problems = lib.problems()
  assert problems[0] == ("Entry 'rte.seed3' has prompt shape (4, 16), whose embedding size is "
                         "not the library model's 8.")
  assert len(problems) == 3  # the model and both files (their shape is (4, 8), not (4, 16))
  assert all(_one_sentence(p) for p in problems)
  with pytest.raises(LibraryError, match=r"^Entry 'rte.seed3' has prompt shape \(4, 16\).* "
                                         r"\(2 more problems; `validate` lists them\)$"):
    lib.validate()
  with pytest.raises(LibraryError, match=r"^Entry 'rte.seed3' has prompt shape"):
    lib.key_prompts()  # retrieval refuses it before comparing anything


def test_an_entry_of_another_model_or_a_library_of_another_model_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  _edit_manifest(root, lambda d: d["entries"][0]["model"].update(name="t5_base"))
  lib = library_lib.Library.open(root)
  assert lib.problems() == [f"Entry 'rte.seed3' was trained on model 't5_base', but library "
                            f"{root} holds 'tiny' prompts."]
  _edit_manifest(root, lambda d: d["entries"][0]["model"].update(name="tiny"))
  assert library_lib.Library.open(root).problems("t5_base") == [
      f"Library {root} holds 'tiny' prompts, not 't5_base' ones."]


@pytest.mark.parametrize("text, message", [
    ("{not json", r"^Manifest .*manifest.json is not valid JSON \(Expecting property name"),
    ("[]", r"^Manifest .*manifest.json must hold a JSON object, got list\.$"),
    ('{"format_version": 1, "model": {"name": "tiny", "embed_dim": 8}}',
     r"^Manifest .*manifest.json has no 'entries' field\.$"),
    ('{"format_version": 9, "entries": []}', r"has format_version 9; this version reads 1\.$"),
])
def test_a_corrupt_manifest_is_named(tmp_path, text, message):
  (tmp_path / "manifest.json").write_text(text)
  with pytest.raises(LibraryError, match=message) as error:
    library_lib.Library.open(str(tmp_path))
  assert _one_sentence(str(error.value))


def test_a_manifest_entry_missing_a_field_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  _edit_manifest(root, lambda d: d["entries"][0].pop("seed"))
  with pytest.raises(LibraryError, match=r"^Manifest .*manifest.json entry 0 \('rte.seed3'\) "
                                         r"has no 'seed' field\.$"):
    library_lib.Library.open(root)
  _edit_manifest(root, lambda d: d["entries"][0].update(seed="three"))
  with pytest.raises(LibraryError, match=r"entry 0 \('rte.seed3'\) field 'seed' must be an "
                                         r"integer, got 'three'\.$"):
    library_lib.Library.open(root)


def test_a_manifest_listing_an_entry_twice_is_named(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  _edit_manifest(root, lambda d: d["entries"].append(dict(d["entries"][0])))
  with pytest.raises(LibraryError, match=r"^Manifest .*manifest.json lists entry 'rte.seed3' "
                                         r"more than once\.$"):
    library_lib.Library.open(root)


def test_an_entry_name_that_is_not_a_folder_name_is_refused(tmp_path, run_writer):
  run = _finished_run(run_writer, tmp_path / "run")
  with pytest.raises(LibraryError, match=r"^Entry name '../rte' may hold only letters"):
    library_lib.add_run(library=str(tmp_path / "lib"), model_dir=run, task="rte", model="tiny",
                        key_step=10, name="../rte")
  assert not (tmp_path / "rte").exists() and not (tmp_path / "lib").exists()


def test_a_folder_without_manifest_is_named(tmp_path):
  with pytest.raises(LibraryError, match=rf"^Prompt library {tmp_path} has no manifest.json"):
    library_lib.Library.open(str(tmp_path))


def test_adding_refuses_other_models_duplicates_and_unknown_steps(tmp_path, run_writer):
  root = _library_with_one_entry(tmp_path, run_writer)
  before = (tmp_path / "lib" / "manifest.json").read_text()
  with pytest.raises(LibraryError, match=r"already has an entry 'rte.seed3'; pass another"):
    library_lib.add_run(library=root, model_dir=str(tmp_path / "run"), task="rte",
                        model="tiny", key_step=10)
  wide = _finished_run(run_writer, tmp_path / "wide", shape=(4, 16))
  with pytest.raises(LibraryError, match=r"^Entry 'rte.seed3' was trained on model 'big', but"):
    library_lib.add_run(library=root, model_dir=wide, task="rte", model="big", key_step=10)
  with pytest.raises(LibraryError, match=r"^Entry 'w.seed3' has prompt shape \(4, 16\), whose "
                                         r"embedding size is not the library model's 8\.$"):
    library_lib.add_run(library=root, model_dir=wide, task="w", model="tiny", key_step=10)
  with pytest.raises(ValueError, match=r"has no prompt exported at key step 10000 \(exported "
                                       r"steps: \[5, 10, 20, 30\]\); pass --key_step"):
    library_lib.add_run(library=root, model_dir=wide, task="w", model="tiny")
  assert (tmp_path / "lib" / "manifest.json").read_text() == before  # nothing was changed
  assert not (tmp_path / "lib" / "prompts" / "w.seed3").exists()


def test_adding_a_run_needs_its_metric_and_seed(tmp_path, run_writer):
  evals = {10: {"rte/accuracy": 1.0, "rte/f1": 2.0}}
  run = run_writer(str(tmp_path / "run"), {10: _prompt(10)}, evals)
  with pytest.raises(ValueError, match=r"holds metrics \['rte/accuracy', 'rte/f1'\]; pass "
                                       r"--metric"):
    runs.read_run(model_dir=run, key_step=10)
  with pytest.raises(ValueError, match=r"^The random seed of run .* is not in .*config.gin; "
                                       r"pass --seed\.$"):
    runs.read_run(model_dir=run, key_step=10, metric="rte/f1")
  with pytest.raises(FileNotFoundError, match=r"^Run folder .*nowhere does not exist\.$"):
    runs.read_run(model_dir=str(tmp_path / "nowhere"), key_step=10)


def test_the_command_prints_one_error_line(tmp_path):
  (tmp_path / "manifest.json").write_text("{broken")
  result = subprocess.run(
      [sys.executable, "-m", "prompt_tuning.methods.spot.library", "list", "--library",
       str(tmp_path)], capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      f"error: Manifest {tmp_path}/manifest.json is not valid JSON (Expecting property name "
      "enclosed in double quotes: line 1 column 2 (char 1))."]


def test_validate_command_lists_every_problem_and_fails(tmp_path, run_writer, capsys):
  root = _library_with_one_entry(tmp_path, run_writer)
  os.remove(os.path.join(root, "prompts", "rte.seed3", "key_10.npy"))
  os.remove(os.path.join(root, "prompts", "rte.seed3", "value_20.npy"))
  assert library_lib.main(["validate", "--library", root]) == 1
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 3 and lines[2] == f"{root}: 1 entries, 2 problems."
  assert "key_10.npy" in lines[0] and "value_20.npy" in lines[1]


def test_a_library_on_a_gfile_filesystem_works_like_a_local_one(tmp_path, run_writer):
  """`ram://` is TensorFlow's in-memory filesystem: the same tf.io.gfile path `gs://` takes."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  run = _finished_run(run_writer, tmp_path / "run")
  root = f"ram://{tmp_path.name}/lib"
  library_lib.add_run(library=root, model_dir=run, task="rte", model="tiny", key_step=10)
  assert tf.io.gfile.exists(f"{root}/prompts/rte.seed3/value_20.npy")
  lib = library_lib.Library.open(root)
  np.testing.assert_array_equal(lib.value_prompt("rte.seed3"), _prompt(20))
  assert lib.problems("tiny") == []
  tf.io.gfile.remove(f"{root}/prompts/rte.seed3/key_10.npy")
  assert lib.problems() == [f"The key prompt file {root}/prompts/rte.seed3/key_10.npy of entry "
                            "'rte.seed3' is missing."]
