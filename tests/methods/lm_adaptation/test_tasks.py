"""Prefix-LM tasks: C4 on mocked TFDS, local text files, the loss metric."""
import numpy as np
import pytest
import seqio

from prompt_tuning.data import testing
from prompt_tuning.data import vocabularies
from prompt_tuning.methods.lm_adaptation import tasks as lm_tasks
from tasks import lm_adaptation

LENGTHS = {"inputs": 16, "targets": 24}
C4_TEXT = ("The river flows past the old mill and the children watch the boats go by. "
           "In the evening the lights of the town shine on the water.")


@pytest.fixture(scope="module")
def vocabulary():
  return vocabularies.get_vocabulary(testing.fixture_vocab_path())


def test_c4_tasks_are_registered_by_importing_tasks():
  names = set(seqio.TaskRegistry.names())
  assert {"c4_en_v220_prefix_lm", "c4_en_v310_prefix_lm"} <= names
  source = seqio.get_mixture_or_task("c4_en_v220_prefix_lm").source
  assert source.tfds_dataset.name == "c4/en:2.2.0"


def test_c4_task_reads_tfds_and_splits_each_segment(tmp_path, vocabulary):
  lm_adaptation.register(vocabulary=vocabulary, name_prefix="fixture_", versions=("2.2.0",))
  name = lm_adaptation.c4_task_name("2.2.0", name_prefix="fixture_")
  example = {"text": C4_TEXT, "url": "http://example.com", "timestamp": "2019-04-25",
             "content-length": "140", "content-type": "text/plain"}
  with testing.mock_tfds(str(tmp_path), examples={"c4/en": {"validation": [example]}},
                         task_names=[name]):
    rows = seqio.get_mixture_or_task(name).get_dataset(
        LENGTHS, split="validation", shuffle=False, seed=3)
    rows = list(rows.as_numpy_iterator())
  ids = vocabulary.encode(C4_TEXT)
  eos = vocabulary.eos_id
  # Segments of 15 tokens (16 less EOS); each row is prefix + EOS, continuation + EOS.
  assert len(ids) == 29 and len(rows) == 2  # 15 + 14 tokens
  rebuilt = []
  for row in rows:
    inputs, targets = row["inputs"].tolist(), row["targets"].tolist()
    assert inputs[-1] == eos and targets[-1] == eos
    assert 2 <= len(inputs) <= LENGTHS["inputs"] and 2 <= len(targets) <= LENGTHS["targets"]
    rebuilt += inputs[:-1] + targets[:-1]
  assert rebuilt == ids


def _bytes(ids) -> str:
  return "".join(chr(int(i) - 3) for i in ids)  # byte ids are UTF-8 bytes + 3


def test_text_files_task_one_document_per_line(tmp_path):
  path = tmp_path / "train.txt"
  path.write_text("abcdefghijklmnopqrstuvwxyz\n\n   \nhello world\n", encoding="utf-8")
  name = lm_tasks.register_text_files("fixture_text_lm", {"train": str(path)},
                                      vocabulary=seqio.ByteVocabulary())
  task = seqio.get_mixture_or_task(name)
  rows = list(task.get_dataset({"inputs": 11, "targets": 11}, split="train", shuffle=False,
                               seed=0).as_numpy_iterator())
  text = [_bytes(r["inputs"][:-1]) + "|" + _bytes(r["targets"][:-1]) for r in rows]
  # Blank lines are dropped; 26 letters -> 10 + 10 + 6, "hello world" -> 10 + 1.
  assert [t.replace("|", "") for t in text] == ["abcdefghij", "klmnopqrst", "uvwxyz",
                                                "hello worl", "d"]
  assert all(len(r["inputs"]) <= 11 and len(r["targets"]) <= 11 for r in rows)
  assert text[-1] == "|d"  # a lone token is all target
  assert [r["inputs_pretokenized"].decode() + "|" + r["targets_pretokenized"].decode()
          for r in rows] == text


def test_text_files_task_rereads_new_files_under_the_same_name(tmp_path):
  first, second = tmp_path / "a.txt", tmp_path / "b.txt"
  first.write_text("aaaa\n"), second.write_text("bbbb\n")
  for path, letter in ((first, "a"), (second, "b")):
    lm_tasks.register_text_files("fixture_text_lm_again", {"train": str(path)},
                                 vocabulary=seqio.ByteVocabulary())
    row = next(seqio.get_mixture_or_task("fixture_text_lm_again").get_dataset(
        {"inputs": 8, "targets": 8}, split="train", shuffle=False, seed=0).as_numpy_iterator())
    assert chr(int(row["targets"][0]) - 3) == letter


def test_missing_text_file_is_named(tmp_path):
  missing = str(tmp_path / "nowhere" / "*.txt")
  with pytest.raises(FileNotFoundError, match="No text file matches .*nowhere"):
    lm_tasks.register_text_files("fixture_text_lm_missing", {"train": missing},
                                 vocabulary=seqio.ByteVocabulary())
  assert "fixture_text_lm_missing" not in seqio.TaskRegistry.names()


def test_loss_metric_is_nll_per_target_token():
  # Two examples, 3 and 1 target tokens, log-likelihoods -6 and -2: 8 nats over 4 tokens.
  assert lm_tasks.prefix_lm_loss([3, 1], [-6.0, -2.0]) == {"prefix_lm_loss": 2.0}
  assert lm_tasks.target_token_count("text", example={"targets": np.arange(5)},
                                     is_target=True) == 5
  assert lm_tasks.target_token_count("prediction") == "prediction"
  with pytest.raises(ValueError, match="at least one target token"):
    lm_tasks.prefix_lm_loss([], [])
