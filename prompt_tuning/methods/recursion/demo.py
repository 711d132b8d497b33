"""CPU demonstration of LM recursion on a tiny frozen LM and a synthetic closed-book task.

  python -m prompt_tuning.methods.recursion.demo [--quick] [--task lookup|reversed]

Facts: 200 three-digit entities, each with a two-digit value. The LM is pre-trained on the
statements "e1 e2 e3 IS v1 v2" for every entity, and on questions "e1 e2 e3 Q -> v1 v2" for
entities 0-99 only (entity first: the value is then readable from the entity's states, which
makes the facts of entities never asked about extractable). The downstream closed-book task
asks about entities 100-199 with a question marker "Q2" the LM never saw (train: 100-159,
validation: 160-199): the answer is in the frozen LM's weights, the format must be learned.
`--task reversed` asks for the value's two digits in reverse order, which needs computation
beyond recall. Then, with the LM frozen throughout:

  one pass         prompt tuning (p1)
  textual          p1 samples 16 answers per question at temperature 1 (each cut at its EOS,
                   padding dropped); prompt p2 reads up to 8 distinct candidates (best first,
                   each after a separator) followed by the question, and answers
  LM-C-LM / C-LM / LM-C   a one-layer Connector (and a prompt on pass 1) trained

and prints validation exact match, and the recall of candidates for n = 1 / 4 / 16.
Everything is written here in a few dozen lines of optax loops so that the demo runs in one
process in minutes; the gin entries are the same modules.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prompt_tuning.engine import train_state
from prompt_tuning.engine.models import DecoderOnlyModel
from prompt_tuning.methods.recursion.connector import Connector
from prompt_tuning.methods.recursion.model import LMConnectorLMModel
from prompt_tuning.models import DecoderOnly, get_config
from prompt_tuning.prompts.hooks import PromptHook
from prompt_tuning.prompts.providers import Prompt

EOS, IS, Q, C, Q2 = 1, 12, 13, 14, 15
VOCAB = 16
NUM_ENTITIES = 200


def digit(d):
  return 2 + int(d)


def make_facts(seed=0):
  rng = np.random.default_rng(seed)
  codes = rng.choice(1000, size=NUM_ENTITIES, replace=False)
  values = rng.integers(0, 100, size=NUM_ENTITIES)
  entities = [[digit(c // 100), digit(c // 10 % 10), digit(c % 10)] for c in codes]
  answers = [[digit(v // 10), digit(v % 10)] for v in values]
  return entities, answers


def prefix_lm_batch(inputs, targets, length=None):
  """Prefix-LM rows: [0, inputs, targets] with the loss on targets + EOS."""
  rows = [(list(i), list(t) + [EOS]) for i, t in zip(inputs, targets)]
  length = length or max(len(i) + len(t) for i, t in rows)
  batch = {k: np.zeros((len(rows), length), np.int32) for k in
           ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_causal_attention")}
  for r, (i, t) in enumerate(rows):
    seq = i + t
    batch["decoder_target_tokens"][r, :len(seq)] = seq
    batch["decoder_input_tokens"][r, 1:len(seq)] = seq[:-1]
    batch["decoder_loss_weights"][r, len(i):len(seq)] = 1
    batch["decoder_causal_attention"][r, :len(i) + 1] = 1
  return batch


def train(model, params, patterns, batch, *, steps, optimizer, seed=0, batch_size=64):
  trainable, frozen = train_state.split_params(params=params, patterns=patterns)
  state = train_state.create_train_state(trainable_params=trainable, optimizer=optimizer,
                                         rng=jax.random.PRNGKey(seed))
  step_fn = jax.jit(train_state.make_train_step(loss_fn=model.loss_fn, optimizer=optimizer))
  rng = np.random.default_rng(seed)
  rows = len(batch["decoder_input_tokens"])
  for _ in range(steps):
    pick = rng.integers(0, rows, size=batch_size)
    state, metrics = step_fn(state, frozen, {k: jnp.asarray(v[pick]) for k, v in batch.items()})
  return train_state.merge_params(trainable=state.params, frozen=frozen), float(metrics["loss"])


def exact_match(model, params, batch, answers):
  decodes = np.asarray(jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=3))(
      params, {k: jnp.asarray(v) for k, v in batch.items()}))
  hits = [list(d[:3]) == list(a) + [EOS] for d, a in zip(decodes, answers)]
  return 100.0 * float(np.mean(hits))


def candidate_tokens(decode):
  """A sampled decode's answer tokens: up to its EOS, without padding (an early EOS leaves a
  shorter answer; such tokens must never reach the second stage's inputs, where 0 would read
  as padding and 1 as the end of the text)."""
  out = []
  for token in (int(t) for t in decode):
    if token == EOS:
      break
    if token > EOS:
      out.append(token)
  return tuple(out)


def sample_candidates(model, params, batch, n, seed=0):
  """n answers per question at temperature 1, best (most probable) first."""
  decodes, _ = jax.jit(lambda p, b, r: model.predict_batch_with_scores(
      p, b, decoder_params={"method": "sample", "num_decodes": n, "temperature": 1.0}, rng=r,
      max_decode_length=3))(params, {k: jnp.asarray(v) for k, v in batch.items()},
                            jax.random.PRNGKey(seed))
  return [[candidate_tokens(d) for d in row] for row in np.asarray(decodes)]


def unique(candidates, limit):
  """The first `limit` distinct non-empty candidates, in order."""
  seen = []
  for c in candidates:
    if c and c not in seen:
      seen.append(c)
  return seen[:limit]


def second_stage_inputs(question, candidates, limit=8):
  """p2's input: the candidates (best first, each after a separator C), then the question.

  The question comes last so that, as in pre-training and in p1, the answer directly follows
  it: the frozen LM reads the entity at the distances it learnt facts at, and the candidates
  are context before it (the order a frozen LM pre-trained on documents can use).
  """
  listed = [t for candidate in unique(candidates, limit) for t in (C,) + tuple(candidate)]
  return listed + list(question)


def plain_params(model, params_from, key):
  """A fresh init of `model` whose LM leaves are taken from `params_from` (the frozen LM)."""
  variables = model.get_initial_variables(key, batch_size=1, decoder_length=8)
  fresh = jax.tree_util.tree_map(lambda x: x.value if hasattr(x, "value") else x,
                                 variables["params"], is_leaf=lambda x: hasattr(x, "value"))
  flat = train_state._flatten(fresh)  # pylint: disable=protected-access
  base = train_state._flatten(params_from)  # pylint: disable=protected-access
  return train_state.merge_params(trainable={k: v for k, v in flat.items() if k not in base},
                                  frozen={k: base[k] for k in flat if k in base})


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
  parser.add_argument("--task", choices=("lookup", "reversed"), default="lookup",
                      help="answer the value, or its two digits reversed (needs computation "
                           "beyond recall)")
  args = parser.parse_args(argv)
  scale = 0.2 if args.quick else 1.0
  start = time.time()
  cfg = get_config("decoder_only_tiny", vocab_size=VOCAB, emb_dim=64, num_heads=4, head_dim=16,
                   mlp_dim=128, num_decoder_layers=2)
  entities, answers = make_facts()
  # Pre-training: statements for all, Q-questions for entities 0-99.
  pre_in = [e + [IS] for e in entities] + [e + [Q] for e in entities[:100]]
  pre_out = answers + answers[:100]
  pre = prefix_lm_batch(pre_in, pre_out)
  pre["decoder_loss_weights"][:] = pre["decoder_target_tokens"] > 0  # LM loss on every token
  lm = DecoderOnlyModel(DecoderOnly(cfg))
  variables = lm.get_initial_variables(jax.random.PRNGKey(0), batch_size=1, decoder_length=8)
  lm_params = jax.tree_util.tree_map(lambda x: x.value if hasattr(x, "value") else x,
                                     variables["params"], is_leaf=lambda x: hasattr(x, "value"))
  lm_params, loss = train(lm, lm_params, [".*"], pre, steps=int(3000 * scale),
                          optimizer=optax.adam(3e-3))
  print(f"pre-trained the LM (final loss {loss:.3f}) in {time.time() - start:.0f}s")
  statements = prefix_lm_batch([e + [IS] for e in entities[100:]], answers[100:])
  print(f"frozen LM, statement form on entities 100-199: EM "
        f"{exact_match(lm, lm_params, statements, answers[100:]):.1f}")

  q_form = prefix_lm_batch([e + [Q] for e in entities[100:]], answers[100:])
  print(f"frozen LM, Q-question form (seen in pre-training for entities 0-99 only) on entities "
        f"100-199: EM {exact_match(lm, lm_params, q_form, answers[100:]):.1f}")
  train_ids, val_ids = range(100, 160), range(160, 200)
  questions = lambda ids: [entities[i] + [Q2] for i in ids]
  order = -1 if args.task == "reversed" else 1
  gold = lambda ids: [answers[i][::order] for i in ids]
  train_batch = prefix_lm_batch(questions(train_ids), gold(train_ids))
  val_batch = prefix_lm_batch(questions(val_ids), gold(val_ids))
  prompt_steps = int(600 * scale)
  prompt_opt = optax.adam(3e-2)

  def prompted_lm():
    return DecoderOnlyModel(DecoderOnly(cfg, input_hook=PromptHook(Prompt(length=4))))

  p1_model = prompted_lm()
  p1 = plain_params(p1_model, lm_params, jax.random.PRNGKey(1))
  p1, _ = train(p1_model, p1, ["^input_hook/"], train_batch, steps=prompt_steps,
                optimizer=prompt_opt)
  results = {"one pass (prompt tuning p1)": exact_match(p1_model, p1, val_batch, gold(val_ids))}

  # Textual recursion.
  train_cands = sample_candidates(p1_model, p1, train_batch, 16, seed=1)
  val_cands = sample_candidates(p1_model, p1, val_batch, 16, seed=2)
  recall = {n: 100.0 * np.mean([tuple(a) in c[:n] for a, c in zip(gold(val_ids), val_cands)])
            for n in (1, 4, 16)}

  def second_stage(ids, cands):
    return [second_stage_inputs(questions([i])[0], c) for i, c in zip(ids, cands)]

  p2_model = prompted_lm()
  p2 = plain_params(p2_model, lm_params, jax.random.PRNGKey(2))
  s2_train = prefix_lm_batch(second_stage(train_ids, train_cands), gold(train_ids))
  s2_val = prefix_lm_batch(second_stage(val_ids, val_cands), gold(val_ids))
  p2, _ = train(p2_model, p2, ["^input_hook/"], s2_train, steps=prompt_steps,
                optimizer=prompt_opt)
  results["textual recursion (n=16)"] = exact_match(p2_model, p2, s2_val, gold(val_ids))

  # Neural recursion and its one-pass baselines: Connector + a pass-1 prompt trained.
  for mode, label in (("lm_c_lm", "LM-C-LM"), ("c_lm", "C-LM"), ("lm_c", "LM-C")):
    model = LMConnectorLMModel(DecoderOnly(cfg, input_hook=PromptHook(Prompt(length=4))),
                               connector=Connector(cfg, num_layers=1), mode=mode)
    params = plain_params(model, lm_params, jax.random.PRNGKey(3))
    params, _ = train(model, params, ["^connector/", "^input_hook/"], train_batch,
                      steps=prompt_steps,
                      optimizer=optax.adamw(3e-3, b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.1))
    results[label] = exact_match(model, params, val_batch, gold(val_ids))

  print(f"\nvalidation exact match, {len(val_ids)} questions (frozen LM, "
        f"{prompt_steps} steps each):")
  for name, value in results.items():
    print(f"  {name:<30} {value:5.1f}")
  print("recall of candidates (p1 samples, validation): " +
        ", ".join(f"n={n}: {value:.1f}" for n, value in recall.items()))
  print(f"total time {time.time() - start:.0f}s")


if __name__ == "__main__":
  main()
