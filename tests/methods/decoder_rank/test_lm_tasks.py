"""SuperGLUE in a rotary decoder's own tokenizer: a `tokenizer.json` (BPE, as Llama 3 and Qwen2
ship) trained here on a few sentences, read through seqio in Python and in tf.data alike, and
the `lm_`-style tasks it registers, processed from mocked TFDS."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import testing
from prompt_tuning.methods.decoder_rank import json_vocabulary
from prompt_tuning.methods.decoder_rank import tasks as rank_tasks
from tasks import super_glue

pytest.importorskip("tokenizers", reason="tokenizer.json files need `tokenizers`")


def test_ids_round_trip_in_python_and_tf_data(tokenizer_json):
  path, tokenizer, eos = tokenizer_json
  vocabulary = json_vocabulary.TokenizerJsonVocabulary(path)
  assert (vocabulary.eos_id, vocabulary.vocab_size) == (eos, tokenizer.get_vocab_size())
  text = "rte hypothesis: Cats bark. premise: Dogs bark."
  ids = vocabulary.encode(text)
  assert ids == tokenizer.encode(text).ids and len(ids) < len(text)  # merged pieces
  assert vocabulary.decode(ids + [eos, 7, 8]) == text  # decoding stops at EOS
  in_graph = tf.data.Dataset.from_tensor_slices([text, "entailment"]).map(vocabulary.encode_tf)
  assert [list(x) for x in in_graph.as_numpy_iterator()] == [ids,
                                                             vocabulary.encode("entailment")]
  batched = vocabulary.encode_tf(tf.constant([text, "neutral"]))
  assert batched.to_list() == [ids, vocabulary.encode("neutral")]
  short = ids[:2] + [eos] + [0] * (len(ids) - 2)  # EOS, then padding
  decoded = vocabulary.decode_tf(tf.constant([ids + [eos], short]))
  assert [s.decode() for s in decoded.numpy()] == [text, vocabulary.decode(ids[:2])]


def test_bad_tokenizer_files_are_one_sentence(tmp_path, tokenizer_json):
  with pytest.raises(FileNotFoundError, match="Tokenizer file .*missing.json does not exist"):
    json_vocabulary.TokenizerJsonVocabulary(str(tmp_path / "missing.json"))
  lone = tmp_path / "tokenizer.json"
  lone.write_text(open(tokenizer_json.path).read())
  with pytest.raises(ValueError, match="no config.json beside .* to read eos_token_id"):
    json_vocabulary.TokenizerJsonVocabulary(str(lone))
  with pytest.raises(ValueError, match="eos_id 99999 is outside the vocabulary"):
    json_vocabulary.TokenizerJsonVocabulary(str(lone), eos_id=99999)


RTE = [{"premise": "The cat sat.", "hypothesis": "A cat sat.", "idx": 0, "label": 0},
       {"premise": "Dogs bark.", "hypothesis": "Cats bark.", "idx": 1, "label": 1}]


def test_registered_tasks_read_superglue_in_the_checkpoints_tokenizer(tokenizer_json, tmp_path):
  path, tokenizer, eos = tokenizer_json
  rank_tasks.register_lm(path, name_prefix="jsontok_")
  train = "jsontok_super_glue_v102_proportional"
  rank = rank_tasks.rank_mixture_name("jsontok_")
  assert {t.name for t in seqio.get_mixture_or_task(rank).tasks} == {
      super_glue.task_name(b, rank_classification=True, name_prefix="jsontok_")
      for b in ("boolq", "cb", "copa", "multirc", "record", "rte", "wic", "wsc_fixed")}
  assert len(seqio.get_mixture_or_task(train).tasks) == 8
  name = super_glue.task_name("rte", rank_classification=True, name_prefix="jsontok_")
  with testing.mock_tfds(str(tmp_path), examples={"super_glue/rte": {"validation": RTE}},
                         task_names=[name]):
    rows = testing.process(name, split="validation")
  assert len(rows) == 4  # two examples x two choices
  first = rows[1]
  assert first["inputs_pretokenized"] == "rte hypothesis: A cat sat. premise: The cat sat."
  assert first["targets_pretokenized"] == "not_entailment"
  np.testing.assert_array_equal(
      first["targets"], tokenizer.encode("not_entailment").ids + [eos])
  np.testing.assert_array_equal(
      first["inputs"], tokenizer.encode(first["inputs_pretokenized"]).ids + [eos])
  assert [bool(r["is_correct"]) for r in rows] == [True, False, False, True]
