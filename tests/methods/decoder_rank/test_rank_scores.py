"""Rank classification on decoder-only models with a prompt, against a hand computation.

A row's score is the sum of `log p(target token | everything before it)` over the target's
tokens, with inputs and target concatenated into one causal sequence behind the prompt. The
hand computation runs each row alone, unpadded, through the module and reads the targets'
log-probabilities off its logits; the engine scores padded batches of rows of different
lengths (plus empty padding rows), so any misalignment or padding leak changes the numbers.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics
from prompt_tuning.engine import data as data_lib
from prompt_tuning.engine import evaluation
from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.engine import partitioning
from prompt_tuning.engine import trainer
from prompt_tuning.methods.decoder_rank import tasks as rank_tasks
from prompt_tuning.models import get_config
from prompt_tuning.models.decoder_only import DecoderOnly
from prompt_tuning.models.llama import LlamaDecoder
from prompt_tuning.models.llama_config import get_llama_config
from prompt_tuning.prompts import hooks, providers
from tasks import super_glue

PROMPT_LENGTH = 3
LENGTHS = {"inputs": 6, "targets": 4}
# (inputs, [choice targets]) of two examples; EOS (1) ends every sequence, as the tasks write.
EXAMPLES = [([5, 6, 7, 1], [[9, 1], [10, 11, 1]]),
            ([8, 1], [[12, 1], [13, 14, 15, 1]])]
VOCABULARY = seqio.ByteVocabulary()


def _module(name):
  hook = hooks.PromptHook(provider=providers.Prompt(length=PROMPT_LENGTH))
  if name == "decoder_only_tiny":
    return DecoderOnly(config=get_config(name, vocab_size=260), input_hook=hook)
  return LlamaDecoder(config=get_llama_config(name, vocab_size=260), input_hook=hook)


@functools.lru_cache(maxsize=None)
def _engine(name, lengths=tuple(sorted(LENGTHS.items())), batch_size=4):
  """The wrapper, its randomly initialised parameters (seeded) and the engine's runner."""
  lengths = dict(lengths)
  model = model_wrappers.DecoderOnlyModel(_module(name), eos_id=1)
  mesh_config = partitioning.MeshConfig()
  mesh, rules = mesh_config.make_mesh(), mesh_config.axis_rules()
  params, shardings = trainer.load_params(
      model=model, lengths=data_lib.model_feature_lengths(model, lengths),
      restore=trainer.RestoreConfig(), mesh=mesh, rules=rules, rng=jax.random.PRNGKey(3))
  placed = trainer.split_placed(params=params, shardings=shardings,
                                patterns=("^input_hook/",))
  runner = evaluation.ModelRunner(
      model=model, mesh=mesh, rules=rules, trainable_shardings=placed.trainable_shardings,
      frozen_shardings=placed.frozen_shardings,
      max_decode_length=evaluation.max_decode_length_for(model, lengths))
  return model, nn.meta.unbox(params), runner, placed


def hand_score(module, params, inputs, target):
  """The target's summed log-likelihood after the prompt and the inputs, one row, no padding."""
  sequence = np.asarray(list(inputs) + list(target), np.int32)
  shifted = np.concatenate([[0], sequence[:-1]])[None]  # the start token is 0
  out = module.apply({"params": params}, jnp.asarray(shifted))
  index = np.asarray(out.inputs.input_index[0])
  # The prompt takes the first slots; token t sits right behind it.
  np.testing.assert_array_equal(index, [-1] * PROMPT_LENGTH + list(range(len(sequence))))
  log_probs = np.asarray(jax.nn.log_softmax(out.logits[0, PROMPT_LENGTH:].astype(jnp.float32)))
  positions = range(len(inputs), len(sequence))
  return float(sum(log_probs[t, sequence[t]] for t in positions))


def _rows():
  """The (example, choice) rows as the decoder-only feature converter batches them."""
  flat = [(inputs, target) for inputs, choices in EXAMPLES for target in choices]

  def gen():
    for inputs, target in flat:
      yield {"inputs": np.asarray(inputs, np.int32), "targets": np.asarray(target, np.int32)}

  spec = {"inputs": tf.TensorSpec([None], tf.int32), "targets": tf.TensorSpec([None], tf.int32)}
  dataset = tf.data.Dataset.from_generator(gen, output_signature=spec)
  converted = seqio.PrefixLMFeatureConverter(pack=False)(dataset, LENGTHS)
  batch = next(converted.batch(len(flat)).as_numpy_iterator())
  batch["idx"] = np.asarray([[e, c] for e, (_, choices) in enumerate(EXAMPLES)
                             for c in range(len(choices))], np.int32)
  return flat, batch


@pytest.mark.parametrize("name", ["llama_tiny", "decoder_only_tiny"])
def test_scores_equal_the_hand_computed_target_log_likelihoods(name):
  model, params, runner, placed = _engine(name)
  flat, batch = _rows()
  # Rows of different lengths share one padded batch; the last row is pure padding.
  assert batch["decoder_target_tokens"].shape == (4, 10)
  np.testing.assert_array_equal(batch["decoder_loss_weights"].sum(axis=1), [2, 3, 2, 4])
  padded = data_lib.pad_rows(batch, 5)
  scores = model.score_batch(params, padded)
  expected = [hand_score(model.module, params, inputs, target) for inputs, target in flat]
  np.testing.assert_allclose(np.asarray(scores[:4]), expected, rtol=1e-5, atol=1e-5)
  assert float(scores[4]) == 0.0  # padding scores nothing
  assert max(expected) < -1.0 and len(set(np.round(expected, 4))) == 4  # real, distinct numbers
  # The engine's jitted, sharded scorer gives the same numbers.
  engine_scores = runner.score(placed.trainable, placed.frozen,
                               {k: v for k, v in data_lib.pad_rows(batch, 4).items()
                                if k != "idx"})
  np.testing.assert_allclose(engine_scores, expected, rtol=1e-5, atol=1e-5)


def test_the_predicted_choice_is_the_argmax_and_padding_rows_never_win():
  model, params, _, _ = _engine("llama_tiny")
  flat, batch = _rows()
  expected = np.asarray([hand_score(model.module, params, i, t) for i, t in flat])
  # A padding row claiming to be choice 7 of example 0 would win on its score of 0.
  padded = data_lib.pad_rows(batch, 5)
  padded["idx"][4] = [0, 7]
  winners, scores = model.rank_classification(params, padded, num_examples=3)
  hand_winners = [int(np.argmax(expected[:2])), int(np.argmax(expected[2:]))]
  np.testing.assert_array_equal(np.asarray(winners), hand_winners + [-1])  # example 2: no rows
  np.testing.assert_allclose(np.asarray(scores[:4]), expected, rtol=1e-5, atol=1e-5)
  # The metric the tasks use picks the same choices: mark the hand winners correct.
  targets = [(e, c == hand_winners[e]) for e, c in batch["idx"]]
  assert metrics.rank_classification(targets, list(expected))["accuracy"] == 100.0


RTE_HANDMADE = [("A cat sat on the mat.", "The cat sat."),
                ("Dogs bark at night.", "Cats bark."),
                ("It is noon now.", "It is day.")]


def _rte_text(premise, hypothesis):
  return f"rte hypothesis: {hypothesis} premise: {premise}"


@pytest.mark.slow  # compiles the engine's runner for 64 + 16 tokens and runs the evaluator
def test_accuracy_of_a_hand_made_eval_through_the_evaluator(tmp_path):
  """Three RTE examples, each choice scored by hand; the labels make the model right on the
  first and third and wrong on the second, so the evaluator must report 2/3."""
  lengths = {"inputs": 64, "targets": 16}
  model, params, runner, placed = _engine("llama_tiny", tuple(sorted(lengths.items())), 4)
  choices = super_glue.BENCHMARKS["rte"].label_names
  winners = []
  for premise, hypothesis in RTE_HANDMADE:
    inputs = VOCABULARY.encode(_rte_text(premise, hypothesis)) + [1]
    row = [hand_score(model.module, params, inputs, VOCABULARY.encode(c) + [1])
           for c in choices]
    assert row[0] != row[1]
    winners.append(int(np.argmax(row)))
  labels = [winners[0], 1 - winners[1], winners[2]]

  def dataset_fn(split, shuffle_files=False, seed=None):
    del split, shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({
        "premise": [p for p, _ in RTE_HANDMADE], "hypothesis": [h for _, h in RTE_HANDMADE],
        "idx": np.arange(3, dtype=np.int32), "label": np.asarray(labels, np.int32)})

  super_glue.register_benchmark(
      super_glue.BENCHMARKS["rte"], vocabulary=VOCABULARY, name_prefix="handmade_",
      source=seqio.FunctionDataSource(dataset_fn, splits=("validation",)))
  name = super_glue.task_name("rte", rank_classification=True, name_prefix="handmade_")
  config = data_lib.DatasetConfig(mixture_or_task_name=name, task_feature_lengths=lengths,
                                  split="validation", batch_size=4, shuffle=False)
  evaluator = evaluation.build_evaluator(config, model=model, log_dir=str(tmp_path))
  examples = list(evaluator.cached_task_datasets[name].as_numpy_iterator())
  assert [ex["inputs_pretokenized"].decode() for ex in examples[::2]] == [
      _rte_text(p, h) for p, h in RTE_HANDMADE]
  results = evaluation.run_infer_eval(evaluator, runner, placed.trainable, placed.frozen,
                                      batch_size=4, step=0)
  assert results == {name: {"accuracy": pytest.approx(200 / 3)}}


def test_tiny_stand_in_tasks_follow_the_superglue_formats():
  from prompt_tuning.data import testing  # pylint: disable=g-import-not-at-top
  rows = testing.process("tiny_super_glue_rte_v102_rank_classification", split="validation")
  assert len(rows) == 2 * rank_tasks.TINY_SPLIT_SIZES["validation"]
  first = rows[:2]
  assert [r["targets_pretokenized"] for r in first] == ["entailment", "not_entailment"]
  assert first[0]["inputs_pretokenized"].startswith("rte hypothesis: There is a ")
  assert [bool(r["is_correct"]) for r in rows].count(True) == len(rows) // 2
  raw = rank_tasks.generate_tiny("boolq", split="train")
  present = [q.split()[-1] in p.split() for p, q in zip(raw["passage"], raw["question"])]
  assert present == [bool(label) for label in raw["label"]]
  assert 0.4 < np.mean(raw["label"]) < 0.6
  with pytest.raises(ValueError, match="No tiny stand-in for 'cb'"):
    rank_tasks.generate_tiny("cb", split="train")


def test_a_missing_tokenizer_is_one_sentence(tmp_path):
  with pytest.raises(FileNotFoundError, match="PROMPT_TUNING_LM_TOKENIZER=.*does not exist"):
    rank_tasks.register_lm(str(tmp_path / "tokenizer.model"))
