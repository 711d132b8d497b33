"""The Connector's language-modelling tasks: each text cut into a first part and its
continuation, from local text files."""
import pytest
import seqio

from prompt_tuning.methods.recursion import lm_corpus

CORPUS = "tests/fixtures/recursion/lm_corpus.txt"


def rows(name, lengths):
  task = seqio.get_mixture_or_task(name)
  return list(task.get_dataset(lengths, split="train", shuffle=False).as_numpy_iterator())


def test_each_line_is_cut_into_inputs_and_the_continuation_right_after_them(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("abcdefgh\n\n  \nhello world!\n")
  name = lm_corpus.text_files_lm_task(files=[str(path)], vocabulary=seqio.ByteVocabulary(),
                                      name="recursion_lm_test", inputs_length=4)
  examples = rows(name, {"inputs": 16, "targets": 16})
  vocab = seqio.ByteVocabulary()
  assert len(examples) == 2  # blank lines are skipped
  decoded = [(vocab.decode(list(e["inputs"])), vocab.decode(list(e["targets"][:-1])))
             for e in examples]
  # Cut at half the text, at most inputs_length tokens in; targets end with EOS.
  assert decoded == [("abcd", "efgh"), ("hell", "o world!")]
  assert all(e["targets"][-1] == 1 for e in examples)


def test_the_fixture_corpus_registers_and_a_missing_file_is_named(tmp_path):
  name = lm_corpus.text_files_lm_task(files=CORPUS, vocabulary=seqio.ByteVocabulary(),
                                      name="recursion_lm_fixture")
  examples = rows(name, {"inputs": 64, "targets": 64})
  assert len(examples) == 100
  with pytest.raises(FileNotFoundError, match="nowhere.txt"):
    lm_corpus.text_files_lm_task(files=[str(tmp_path / "nowhere.txt")],
                                 vocabulary=seqio.ByteVocabulary())
  with pytest.raises(ValueError, match="inputs_length must be positive"):
    lm_corpus.text_files_lm_task(files=CORPUS, vocabulary=seqio.ByteVocabulary(),
                                 inputs_length=0)
