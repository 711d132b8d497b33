"""CPU demonstration: packing passages by retriever score vs by re-ranker score.

  python -m prompt_tuning.methods.reader.demo [--quick] [--workdir DIR]

A synthetic retrieval set (`synthetic.py`: each question's answer lives in one of 20
look-alike passages; the retriever score is relevance plus Gaussian noise), a tiny re-ranker
trained from scratch with the unchanged trainer (passage-selection cross-entropy, groups of
1 positive + 7 negatives from the top 20), and a tiny reader. No pre-trained tiny LM can read
these passages, so the reader is first trained (all its weights, as a stand-in for
pre-training) on inputs that always hold the answer passage in one of the first three packed
places; it is then frozen and given the 64 dev questions (names never trained on) packed by
each score into the same token budget (about four passages). Printed: recall-at-input and
exact match for retriever packing, re-ranker packing, and the answer passage forced in.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import tempfile
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.data import metrics, testing, vocabularies
from prompt_tuning.methods.reader import crossfit
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import packing, reranker, synthetic

NUM_PASSAGES = 20
PASSAGE_LENGTH = 32
INPUTS_LENGTH = 76
TARGETS_LENGTH = 4


def _small_config(**overrides):
  from prompt_tuning.models import config as config_lib  # pylint: disable=g-import-not-at-top
  settings = dict(emb_dim=32, num_heads=4, head_dim=8, mlp_dim=64,
                  relative_attention_num_buckets=16, relative_attention_max_distance=64)
  settings.update(overrides)
  return config_lib.get_config("t5_1_1_tiny", **settings)


def _load(model, lengths, checkpoint):
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import partitioning, run_setup, trainer
  mesh_config = partitioning.MeshConfig()
  params, _ = run_setup.load_params(
      model=model, lengths=lengths, restore=trainer.RestoreConfig(path=checkpoint),
      mesh=mesh_config.make_mesh(), rules=mesh_config.axis_rules(), rng=jax.random.PRNGKey(0))
  return params


def oracle_records(records: List[Dict[str, Any]], seed: int) -> List[Dict[str, Any]]:
  """Copies whose answer passage is scored into a random one of the top three places."""
  rng = random.Random(seed)
  out = copy.deepcopy(records)
  for record in out:
    ctxs = sorted(record["ctxs"], key=lambda c: -c["score"])
    positive = next(c for c in ctxs if c["has_answer"])
    ctxs.remove(positive)
    ctxs.insert(rng.randrange(3), positive)
    for rank, ctx in enumerate(ctxs):
      ctx["score"] = float(len(ctxs) - rank)
    record["ctxs"] = ctxs
  return out


def train_reranker(train_file, workdir, vocabulary, steps):
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import data, trainer  # pylint: disable=g-import-not-at-top
  task = data_lib.register_reranker_task("demo_reranker", files={"train": train_file},
                                         vocabulary=vocabulary, num_negatives=7,
                                         top_k=NUM_PASSAGES, passage_length=PASSAGE_LENGTH)
  model = reranker.RerankerModel(reranker.CrossEncoder(_small_config()),
                                 passage_length=PASSAGE_LENGTH)
  result = train_lib.train(
      model=model, model_dir=os.path.join(workdir, "reranker"), total_steps=steps,
      optimizer=optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 10, steps)),
      trainable_patterns=[".*"], log_period=max(steps // 5, 1),
      train_dataset_cfg=data.DatasetConfig(
          mixture_or_task_name=task, split="train", batch_size=8,
          task_feature_lengths={"passages": 8 * PASSAGE_LENGTH}),
      checkpoint_cfg=trainer.CheckpointConfig(period=steps))
  params = _load(model, {reranker.MODEL_FEATURE: PASSAGE_LENGTH},
                 os.path.join(result.checkpoint_dir, str(steps)))
  return model, params, result.train_history


def train_reader(files, workdir, vocabulary, steps):
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib
  from prompt_tuning.engine import data, models, trainer
  from prompt_tuning.methods.reader import configurables
  from prompt_tuning.models import t5
  task = configurables.reader_task(name="demo_reader", files=files, vocabulary=vocabulary)
  model = models.EncoderDecoderModel(t5.EncoderDecoder(config=_small_config()))
  lengths = {"inputs": INPUTS_LENGTH, "targets": TARGETS_LENGTH}
  result = train_lib.train(
      model=model, model_dir=os.path.join(workdir, "reader"), total_steps=steps,
      optimizer=optax.adam(optax.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 10, steps)),
      trainable_patterns=[".*"], log_period=max(steps // 5, 1),
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=task, split="train",
                                           batch_size=16, task_feature_lengths=lengths),
      checkpoint_cfg=trainer.CheckpointConfig(period=steps))
  params = _load(model, model.model_feature_lengths(lengths),
                 os.path.join(result.checkpoint_dir, str(steps)))
  return model, params, result.train_history


def exact_match(model, params, path, vocabulary) -> Dict[str, float]:
  """Greedy answers of the frozen reader on `path` packed by its scores: EM and recall."""
  rows = packing.packed_examples(path, vocabulary, INPUTS_LENGTH)
  tokens = np.zeros((len(rows), INPUTS_LENGTH), np.int32)
  for i, row in enumerate(rows):
    ids = list(row["inputs"]) + [vocabulary.eos_id]
    tokens[i, :len(ids)] = ids
  predict = jax.jit(lambda p, x: model.predict_batch(p, {"encoder_input_tokens": x},
                                                     max_decode_length=TARGETS_LENGTH))
  decodes = np.asarray(predict(params, jnp.asarray(tokens)))
  hits = 0
  for row, decode in zip(rows, decodes):
    ids = [int(t) for t in decode if t > 1]
    answer = vocabulary.decode(ids)
    gold = [a.decode() for a in row["answers"]]
    hits += any(metrics.normalize_answer(answer) == metrics.normalize_answer(g) for g in gold)
  recall = sum(bool(r["answer_in_input"]) for r in rows)
  return {"recall_at_input": 100.0 * recall / len(rows), "em": 100.0 * hits / len(rows),
          "questions": len(rows)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
  parser.add_argument("--workdir", default=None)
  args = parser.parse_args(argv)
  start = time.time()
  reranker_steps, reader_steps = (20, 20) if args.quick else (300, 1500)
  workdir = args.workdir or tempfile.mkdtemp(prefix="reader_demo_")
  os.makedirs(workdir, exist_ok=True)
  vocabulary = vocabularies.get_vocabulary(testing.fixture_vocab_path())
  records = synthetic.make_records(256, num_passages=NUM_PASSAGES, noise=1.0, seed=0)
  dev = records[192:]
  # Training questions: the other 192 names, each drawn again with new codes, passages and
  # noise (seeds 0-3 for the re-ranker, 4-9 for the reader), so neither model can memorise
  # a name's answer; dev names are never trained on.
  names = {r["question"] for r in records[:192]}

  def redraw(seeds):
    return [r for seed in seeds for r in synthetic.make_records(
        256, num_passages=NUM_PASSAGES, noise=1.0, seed=seed) if r["question"] in names]

  train, reader_train = redraw(range(4)), redraw(range(4, 10))
  paths = {name: os.path.join(workdir, f"{name}.json") for name in
           ("train", "dev", "oracle_train", "dev_reranked")}
  data_lib.write_records(paths["train"], train)
  data_lib.write_records(paths["dev"], dev)
  data_lib.write_records(paths["oracle_train"], oracle_records(reader_train, seed=1))

  rr_model, rr_params, rr_history = train_reranker(paths["train"], workdir, vocabulary,
                                                   reranker_steps)
  crossfit.check_not_trained_on(paths["dev"], [paths["train"]])
  data_lib.write_records(paths["dev_reranked"], crossfit.score_records(
      rr_model, rr_params, dev, vocabulary, batch_size=128))
  reader_model, reader_params, reader_history = train_reader(
      {"train": paths["oracle_train"], "validation": paths["dev"]}, workdir, vocabulary,
      reader_steps)
  rows = {"retriever score": exact_match(reader_model, reader_params, paths["dev"], vocabulary),
          "re-ranker score": exact_match(reader_model, reader_params, paths["dev_reranked"],
                                         vocabulary)}
  oracle_dev = os.path.join(workdir, "dev_oracle.json")
  data_lib.write_records(oracle_dev, oracle_records(dev, seed=2))
  rows["answer passage forced in"] = exact_match(reader_model, reader_params, oracle_dev,
                                                 vocabulary)
  print(f"\nre-ranker: {reranker_steps} steps, loss {rr_history[0]['loss']:.3f} -> "
        f"{rr_history[-1]['loss']:.3f}; reader: {reader_steps} steps, loss "
        f"{reader_history[0]['loss']:.3f} -> {reader_history[-1]['loss']:.3f}")
  print(f"dev: {len(dev)} questions, {NUM_PASSAGES} passages each, input budget "
        f"{INPUTS_LENGTH} tokens (T5 SentencePiece)\n")
  print(f"| {'packing':<26} | recall-at-input | EM    |")
  print(f"|{'-' * 28}|-----------------|-------|")
  for name, row in rows.items():
    print(f"| {name:<26} | {row['recall_at_input']:15.1f} | {row['em']:5.1f} |")
  print(f"\n(total {time.time() - start:.0f} s)")
  return rows


if __name__ == "__main__":
  main()
