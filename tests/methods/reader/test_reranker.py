"""The re-ranker: T5 encoder names (importable from a T5 checkpoint), groups, trainer plug-in."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prompt_tuning import train as train_lib
from prompt_tuning.engine import data, models, params, partitioning, run_setup, trainer, trees
from prompt_tuning.methods.reader import crossfit
from prompt_tuning.methods.reader import data as data_lib
from prompt_tuning.methods.reader import reranker
from prompt_tuning.models import config as config_lib
from prompt_tuning.models import t5
from tests.methods.reader.conftest import planted_records, write_json

REPO = Path(__file__).resolve().parents[3]
T5X_TINY = REPO / "tests" / "fixtures" / "t5x_reference" / "test_t5_1_1_tiny" / "checkpoint_3"
LENGTH = 24


def _model(**overrides):
  config = config_lib.get_config("t5_1_1_tiny", **overrides)
  return reranker.RerankerModel(reranker.CrossEncoder(config), passage_length=LENGTH)


def _load(model, groups, path, task_lengths=None):
  mesh_config = partitioning.MeshConfig()
  placed, _ = run_setup.load_params(
      model=model, lengths=model.model_feature_lengths(task_lengths or {"passages": 2 * LENGTH}),
      restore=trainer.RestoreConfig(path=str(path)), mesh=mesh_config.make_mesh(),
      rules=mesh_config.axis_rules(), rng=jax.random.PRNGKey(0), groups=groups)
  return {k: np.asarray(v) for k, v in trees.flat(placed).items()}


def test_the_encoder_is_read_from_a_t5_checkpoint_by_its_own_names():
  groups = [params.ParamGroup("head", reranker.HEAD_PATTERN, trainable=True,
                              source=params.FromInit()),
            params.ParamGroup("encoder", None, trainable=True, source=params.FromBase())]
  got = _load(_model(), groups, T5X_TINY)
  full = models.EncoderDecoderModel(t5.EncoderDecoder(config_lib.get_config("t5_1_1_tiny")))
  want = _load(full, None, T5X_TINY, {"inputs": 8, "targets": 4})
  encoder = {k for k in want if k.startswith(("encoder/", "token_embedder/"))}
  assert set(got) - encoder == {"reranker_head/kernel", "reranker_head/bias"}
  assert encoder <= set(got) and len(encoder) > 10
  for name in encoder:
    np.testing.assert_array_equal(got[name], want[name])
  assert got["reranker_head/kernel"].shape == (4, 1)


def test_loss_is_group_softmax_cross_entropy_and_empty_slots_get_no_mass():
  model = _model()
  variables = model.initial_variables(jax.random.PRNGKey(1), {})
  tokens = np.zeros((2, 3, LENGTH), np.int32)
  tokens[:, :2, :5] = np.arange(1, 11).reshape(2, 1, 5)  # slot 2 is padding
  tokens[1, 1, :5] = [7, 7, 7, 7, 7]
  p = variables["params"]
  scores = model.passage_scores(p, jnp.asarray(tokens))
  assert scores.shape == (2, 3) and np.all(np.asarray(scores[:, 2]) < -1e8)
  loss, metrics = model.loss_fn(p, {"reranker_tokens": tokens.reshape(2, -1)}, None)
  s = np.asarray(scores[:, :2], np.float64)
  want = np.mean(np.log(np.exp(s).sum(1)) - s[:, 0])
  assert float(loss) == pytest.approx(want, rel=1e-5)
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0


def test_groups_put_the_positive_first_with_negatives_from_the_top_k(vocabulary, tmp_path):
  records = planted_records(3, 10, seed=0)
  source = data_lib.RerankerGroups({"train": write_json(tmp_path / "t.json", records)},
                                   vocabulary, num_negatives=3, top_k=6, passage_length=LENGTH)
  for epoch in (0, 1):
    for record, example in zip(records, source.examples(records, seed=1, epoch=epoch)):
      groups = example["passages"].reshape(4, LENGTH)
      top = data_lib.ranked(record["ctxs"])[:6]
      ids = {tuple(data_lib.pair_ids(vocabulary, record["question"], c, LENGTH)): c for c in top}
      chosen = [ids.get(tuple(g)) for g in groups]  # None: not from the top 6
      assert None not in chosen
      assert chosen[0]["has_answer"] and not any(c["has_answer"] for c in chosen[1:])


def test_training_through_the_trainer_ranks_the_planted_positive_first(vocabulary, tmp_path):
  """Eight Adam steps of the unchanged trainer; held-out questions' positives rank first."""
  train_file = write_json(tmp_path / "train.json", planted_records(64, 8, seed=2))
  task = data_lib.register_reranker_task("test_reader_reranker", files={"train": train_file},
                                         vocabulary=vocabulary, num_negatives=3, top_k=8,
                                         passage_length=LENGTH)
  model = _model(emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32)
  held_out = planted_records(16, 8, seed=3, start=1000)
  result = train_lib.train(
      model=model, model_dir=str(tmp_path / "run"), total_steps=8,
      optimizer=optax.adam(3e-2), trainable_patterns=[".*"],
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=task, split="train",
                                           task_feature_lengths={"passages": 4 * LENGTH},
                                           batch_size=8),
      checkpoint_cfg=trainer.CheckpointConfig(period=8), log_period=1)
  losses = [h["loss"] for h in result.train_history]
  assert losses[-1] < losses[0], losses
  trained, p = crossfit.load_reranker(str(Path(result.checkpoint_dir) / "8"), preset="t5_1_1_tiny",
                                      passage_length=LENGTH, emb_dim=16, num_heads=2, head_dim=8,
                                      mlp_dim=32)
  scored = crossfit.score_records(trained, p, held_out, vocabulary, batch_size=32)
  firsts = [r["ctxs"][0]["has_answer"] for r in scored]
  # Before training the positive is first in about 1 of 8 questions (2 of 16); after: all.
  assert sum(firsts) == 16, firsts
  # Re-scored files keep the format: retriever scores kept, best first.
  assert all("retriever_score" in c for r in scored for c in r["ctxs"])
  json.dumps(scored)
