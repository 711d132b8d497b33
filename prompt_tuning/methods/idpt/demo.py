"""CPU demonstration of input-dependent prompt tuning (ID-PT), no download:

  python -m prompt_tuning.methods.idpt.demo [--work_dir DIR] [--steps 300]

1. A tiny LM (`byte_t5_tiny`) is pretrained from scratch on `smoke_skills` (digit strings with
   an instruction word "first:", "last:", "second:" in the input), as `prompt_tuning.smoke` does.
   It is then frozen.
2. On the `idpt_digits` mixture (prompt_tuning/methods/idpt/tasks.py) the LM sees only the
   digits; which digit is asked is written only in `generator_tokens` ("last: 58213", or a new
   word, "final: 58213"), which only a prompt generator reads. Three hooks of the same prompt
   length P are trained on the same mixture, the LM frozen:
     shared prompt     one prompt for every example (cannot know the skill);
     ID-PT             the generator; its frozen small encoder is the pretrained LM's own
                       encoder, read from the LM checkpoint through the prefix map;
     per-task prompts  one prompt per skill, chosen by the example's task id (upper reference:
                       it is told the skill).
3. Prints held-out accuracy per skill for each, and the cosine distances between the generated
   prompts (same template / other template of the same skill / other skill).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

PROMPT_LENGTH = 8
ENCODER_PROMPT_LENGTH = 4
LENGTHS = {"inputs": 16, "targets": 4}
BATCH_SIZE = 32
BYTE_T5_TINY = dict(vocab_size=260, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                    relative_attention_num_buckets=16, relative_attention_max_distance=32)
METHODS = ("shared prompt", "ID-PT", "per-task prompts")
# The task variant carrying the feature each hook reads (prompt_tuning/methods/idpt/tasks.py).
VARIANT = {"shared prompt": "plain", "ID-PT": "generator", "per-task prompts": "ids"}
LEARNING_RATES = {"shared prompt": 3e-2, "ID-PT": 3e-3, "per-task prompts": 3e-2}


def lm_config():
  from prompt_tuning.models import config as config_lib  # pylint: disable=g-import-not-at-top
  return config_lib.get_config("t5_1_1_tiny", **BYTE_T5_TINY)


def build_model(method: str):
  """The frozen LM with the method's hook."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import models
  from prompt_tuning.methods.idpt import generator
  from prompt_tuning.models import t5
  from prompt_tuning.prompts import hooks, initializers, providers
  # pylint: enable=g-import-not-at-top
  if method == "ID-PT":
    provider = generator.PromptGenerator(encoder_config=lm_config(), length=PROMPT_LENGTH,
                                         encoder_prompt_length=ENCODER_PROMPT_LENGTH)
  elif method == "shared prompt":
    provider = providers.Prompt(length=PROMPT_LENGTH, initializer=initializers.random_uniform())
  elif method == "per-task prompts":
    provider = providers.PromptTable(num_prompts=3, length=PROMPT_LENGTH)
  else:
    raise ValueError(f"Unknown method {method!r}; expected one of {list(METHODS)}.")
  module = t5.EncoderDecoder(config=lm_config(), input_hook=hooks.PromptHook(provider=provider))
  return models.EncoderDecoderModel(module)


def pretrain_lm(work_dir: str, steps: int) -> str:
  """Trains the tiny LM on the instructed skills (as the smoke job); returns its checkpoint."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import smoke
  from prompt_tuning import train as train_lib
  # pylint: enable=g-import-not-at-top
  model_dir = os.path.join(work_dir, "lm")
  result = train_lib.main(smoke.base_args(model_dir=model_dir, steps=steps)
                          + ["--gin.train.infer_eval_dataset_cfg=None"])
  return os.path.join(result.checkpoint_dir, str(result.step), "params")


def train_method(method: str, lm_checkpoint: str, work_dir: str, steps: int):
  """Trains the method's hook on the mixture; returns (model, merged params, seconds)."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning import train as train_lib
  from prompt_tuning.engine import data, optimizers, params, train_state, trainer
  from prompt_tuning.methods.idpt import groups, tasks
  # pylint: enable=g-import-not-at-top
  start = time.time()
  model = build_model(method)
  if method == "ID-PT":
    param_groups = groups.idpt_groups(lm_checkpoint)
  else:
    param_groups = list(params.prompt_tuning_groups())
  result = train_lib.train(
      model=model,
      train_dataset_cfg=data.DatasetConfig(mixture_or_task_name=tasks.mixture_name(VARIANT[method]),
                                           task_feature_lengths=LENGTHS, split="train",
                                           batch_size=BATCH_SIZE, shuffle=True, seed=7),
      model_dir=os.path.join(work_dir, method.replace(" ", "_")), total_steps=steps,
      optimizer=optimizers.adam(learning_rate=LEARNING_RATES[method]),
      param_groups=param_groups, restore_cfg=trainer.RestoreConfig(path=lm_checkpoint),
      checkpoint_cfg=trainer.CheckpointConfig(period=steps), log_period=max(steps // 4, 1),
      random_seed=0)
  merged = train_state.merge_params(trainable=result.state.params, frozen=result.frozen)
  return model, merged, time.time() - start


def _encode(texts: Sequence[str], length: int) -> np.ndarray:
  from prompt_tuning.methods.idpt import tasks  # pylint: disable=g-import-not-at-top
  rows = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = list(tasks.VOCABULARY.encode(text))[:length - 1] + [1]
    rows[i, :len(ids)] = ids
  return rows


def validation_batch(skill: str) -> Dict[str, np.ndarray]:
  from prompt_tuning.methods.idpt import tasks  # pylint: disable=g-import-not-at-top
  examples = tasks.generate(skill, "validation")
  return {"encoder_input_tokens": _encode(examples["inputs"], LENGTHS["inputs"]),
          "generator_tokens": _encode(examples["generator_tokens"], LENGTHS["inputs"]),
          "prompt_ids": np.stack(examples["prompt_ids"]),
          "targets": examples["targets"], "template": examples["template"]}


def accuracy(model, merged, skill: str) -> float:
  """Held-out greedy accuracy (percent) on one skill's 256 validation examples."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.idpt import tasks  # pylint: disable=g-import-not-at-top
  batch = validation_batch(skill)
  model_batch = {k: batch[k] for k in ("encoder_input_tokens", "generator_tokens", "prompt_ids")}
  predict = jax.jit(lambda p, b: model.predict_batch(p, b, max_decode_length=LENGTHS["targets"]))
  decodes = np.asarray(predict(merged, model_batch))
  right = [tasks.VOCABULARY.decode([int(t) for t in row if t > 1]).strip() == target
           for row, target in zip(decodes, batch["targets"])]
  return 100.0 * float(np.mean(right))


def generated_prompt_table(model, merged):
  """The cosine-distance table of the generator's prompts on the validation examples."""
  import jax  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.idpt import analysis, tasks  # pylint: disable=g-import-not-at-top
  from prompt_tuning.prompts import base  # pylint: disable=g-import-not-at-top
  prompts, skills, templates = [], [], []
  for skill in tasks.SKILLS:
    batch = validation_batch(skill)

    def hook(module, tokens, hook_inputs):
      inputs = base.embedded_from_tokens(module.token_embedder(tokens), tokens > 0)
      return module.input_hook(inputs, hook_inputs=hook_inputs).embeddings[:, :PROMPT_LENGTH]
    prompts.append(np.asarray(jax.jit(lambda p, b: model.module.apply(
        {"params": p}, b["encoder_input_tokens"],
        {"generator_tokens": b["generator_tokens"]}, method=hook))(
            merged, {k: batch[k] for k in ("encoder_input_tokens", "generator_tokens")})))
    skills += [skill] * len(batch["targets"])
    templates += batch["template"]
  return analysis.distance_table(np.concatenate(prompts), skills, templates)


def run(*, work_dir: Optional[str] = None, lm_steps: int = 400, steps: int = 300) -> List[str]:
  """Runs the demonstration; returns the printed report's lines."""
  # pylint: disable=g-import-not-at-top
  from prompt_tuning.methods.idpt import analysis, tasks
  # pylint: enable=g-import-not-at-top
  start = time.time()
  work_dir = work_dir or tempfile.mkdtemp(prefix="idpt_demo_")
  if os.path.isdir(work_dir) and os.listdir(work_dir):
    raise ValueError(f"Demo work dir {work_dir} is not empty; pass a new --work_dir.")
  lm_checkpoint = pretrain_lm(work_dir, lm_steps)
  scores, seconds, table = {}, {}, None
  for method in METHODS:
    model, merged, seconds[method] = train_method(method, lm_checkpoint, work_dir, steps)
    scores[method] = {skill: accuracy(model, merged, skill) for skill in tasks.SKILLS}
    if method == "ID-PT":
      table = generated_prompt_table(model, merged)
  lines = [f"ID-PT demo: frozen byte_t5_tiny LM ({lm_steps} pretraining steps), prompt length "
           f"{PROMPT_LENGTH}, {steps} Adam steps of batch {BATCH_SIZE} on idpt_digits",
           "held-out accuracy (%), 256 examples per skill; the LM sees only the digits",
           f"  {'method':<18}" + "".join(f"{s:>8}" for s in tasks.SKILLS) + f"{'mean':>8}"
           + f"{'lr':>8}"]
  for method in METHODS:
    row = scores[method]
    lines.append(f"  {method:<18}" + "".join(f"{row[s]:>8.1f}" for s in tasks.SKILLS)
                 + f"{np.mean(list(row.values())):>8.1f}" + f"{LEARNING_RATES[method]:>8.0e}")
  lines += analysis.format_table(table, "ID-PT generated prompts, cosine distance between pairs "
                                        "(template = instruction word, dataset = skill)")
  lines.append(f"time: {time.time() - start:.0f} s (work dir {work_dir})")
  return lines


def main(argv: Sequence[str]) -> List[str]:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.idpt.demo",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default=None)
  parser.add_argument("--lm_steps", type=int, default=400)
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import absl.logging  # pylint: disable=g-import-not-at-top
  absl.logging.set_verbosity(absl.logging.ERROR)
  lines = run(work_dir=args.work_dir, lm_steps=args.lm_steps, steps=args.steps)
  print("\n".join(lines), flush=True)
  return lines


if __name__ == "__main__":
  main(sys.argv[1:])
