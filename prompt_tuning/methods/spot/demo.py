"""CPU demonstration of SPoT on a tiny frozen model: prompt similarity and prompt transfer.

  python -m prompt_tuning.methods.spot.demo [--work_dir DIR] [--base_steps 800]
      [--source_steps 300] [--target_steps 150] [--key_step 30] [--threshold 60]

1. A tiny base (`byte_t5_tiny`, from scratch, through the train entry point) learns five
   digit skills announced by an instruction word (`demo_tasks.py`: `last: 58213 -> 3`).
2. Soft prompts (length 8, sampled-vocabulary init, Adafactor lr 0.3, the model frozen) are tuned
   on the *uninstructed* source tasks `spot_demo_<skill>_a` (3-5 digits), two seeds each.
   (i) The prompt similarity matrix (both SPoT measures over the prompts after `--source_steps`)
   shows whether prompts of one task from different seeds are closer than prompts of different
   tasks; the heatmap is written as a PNG.
3. Each target task `spot_demo_<skill>_b` (5-7 digits) is tuned from sampled-vocabulary init
   (the baseline; its prompt at `--key_step` is its task embedding) and from every source's
   prompt. (ii) The accuracy curves of the related source (same skill) against sampled-vocabulary
   init, and the steps each needs to reach `--threshold` % accuracy. (iii) The Spearman
   correlation between a source's similarity to the target (task embeddings at `--key_step`)
   and the transfer gain (mean accuracy over the target run minus the baseline's).

The prompt runs do not go through the train entry point: the demo trains about thirty prompts of
one shape on one frozen model, and a train process each would recompile the same step thirty
times, which alone would exceed the ten-minute budget on two cores. They share one jitted
Adafactor step over the model wrapper's own `loss_fn` instead, with the settings of
gin/optimizers/adafactor_prompt_tuning.gin. Accuracy is the first answer token's argmax under
teacher forcing (every answer is a single character), on the 256 validation examples.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from prompt_tuning.methods import demo_common
from prompt_tuning.methods.spot import demo_tasks
from prompt_tuning.methods.spot import similarity as similarity_lib

MODEL_GIN = demo_common.MODEL_GIN
PROMPT_LENGTH = 8
BATCH_SIZE = 32
SEEDS = (0, 1)
EVAL_EVERY = 10


def base_args(model_dir: str, steps: int) -> List[str]:
  """The base run: byte_t5_tiny from scratch on the instructed skills (gin/runs/finetune.gin)."""
  return demo_common.base_args(model_dir, task=demo_tasks.BASE_TASK, module=demo_tasks.MODULE,
                               lengths=demo_tasks.LENGTHS, steps=steps)


def pretrain_base(model_dir: str, steps: int) -> Tuple[str, float]:
  """Trains the base; returns its checkpoint and its held-out accuracy on the instructed skills."""
  from prompt_tuning.methods.spot import runs  # pylint: disable=g-import-not-at-top
  run_dir, outputs = demo_common.train(base_args(model_dir, steps))
  evals = runs.eval_metrics(run_dir)
  accuracy = evals[max(evals)].get(f"{demo_tasks.BASE_TASK}/accuracy", float("nan")) \
      if evals else float("nan")
  return outputs["checkpoint"], accuracy


class PromptTrainer:
  """Tunes prompts of one shape on one frozen model with a single compiled step."""

  def __init__(self, base_checkpoint: str):
    import gin  # pylint: disable=g-import-not-at-top
    # pylint: disable=g-import-not-at-top  (JAX and the engine load only when a demo runs)
    import jax
    import jax.numpy as jnp
    import optax
    from prompt_tuning.engine import data, gin_utils, optimizers, params
    from prompt_tuning.engine import partitioning, run_setup, train_state
    # pylint: enable=g-import-not-at-top
    gin.clear_config()
    gin_utils.register_configurables()
    gin_utils.parse_gin(gin_files=[MODEL_GIN, "gin/prompts/random_uniform.gin"],
                        gin_bindings=[f"PROMPT_LENGTH = {PROMPT_LENGTH}"])
    self.model = gin.query_parameter("%MODEL").scoped_configurable_fn()
    setup = run_setup.load_for_inference(
        model=self.model, lengths=data.model_feature_lengths(self.model, demo_tasks.LENGTHS),
        mesh_config=partitioning.MeshConfig(),
        restore=run_setup.RestoreConfig(path=base_checkpoint),
        groups=params.prompt_tuning_groups())
    self.frozen = setup.placed.frozen
    self.template = setup.placed.trainable
    self.embedding = self._embedding(self.frozen)
    self._data: Dict[Tuple[str, str], Dict[str, np.ndarray]] = {}
    self.optimizer = optimizers.adafactor(learning_rate=0.3, decay_rate=0.8,
                                          clipping_threshold=1.0, weight_decay_rate=1e-5,
                                          multiply_by_parameter_scale=False)
    model, optimizer = self.model, self.optimizer

    def loss(prompt, frozen, batch):
      merged = train_state.merge_params(trainable=self._wrap(prompt), frozen=frozen)
      return model.loss_fn(merged, batch, None)[0]

    def step(prompt, state, frozen, batch):
      value, grads = jax.value_and_grad(loss)(prompt, frozen, batch)
      updates, state = optimizer.update(grads, state, prompt)
      return optax.apply_updates(prompt, updates), state, value

    def accuracy(prompt, frozen, batch):
      merged = train_state.merge_params(trainable=self._wrap(prompt), frozen=frozen)
      # The teacher-forced logits; the wrapper's public methods return only scores.
      logits, targets, _ = model._logits(  # pylint: disable=protected-access
          merged, batch, dropout_rng=None)
      return jnp.mean(jnp.argmax(logits[:, 0, :], axis=-1) == targets[:, 0])

    self._step, self._accuracy = jax.jit(step), jax.jit(accuracy)

  @staticmethod
  def _embedding(frozen) -> np.ndarray:
    return np.asarray(frozen["token_embedder"]["embedding"], np.float32)

  def _wrap(self, prompt):
    """The trainable tree (`input_hook/prompt`) holding `prompt`."""
    return {"input_hook": {**self.template["input_hook"], "prompt": prompt}}

  def sampled_vocabulary(self, seed: int) -> np.ndarray:
    """SPoT's baseline init: distinct rows of the frozen model's embedding table."""
    rows = np.random.default_rng(10_000 + seed).choice(
        self.embedding.shape[0], PROMPT_LENGTH, replace=False)
    return self.embedding[rows].copy()

  def data(self, task: str, split: str) -> Dict[str, np.ndarray]:
    """The task's split as model features, all examples, cached."""
    if (task, split) not in self._data:
      import seqio  # pylint: disable=g-import-not-at-top
      dataset = seqio.get_mixture_or_task(task).get_dataset(
          dict(demo_tasks.LENGTHS), split=split, shuffle=False, num_epochs=1)
      converted = self.model.feature_converter()(dataset, dict(demo_tasks.LENGTHS))
      self._data[(task, split)] = next(converted.batch(1 << 16).as_numpy_iterator())
    return self._data[(task, split)]

  def evaluate(self, prompt, task: str) -> float:
    return 100.0 * float(self._accuracy(prompt, self.frozen, self.data(task, "validation")))

  def train(self, init: np.ndarray, task: str, *, steps: int, seed: int,
            keep: Sequence[int] = (), eval_every: int = 0) -> Dict[str, object]:
    """Tunes a prompt from `init`; returns the final prompt, the prompts at the `keep` steps
    and `curve` = [(step, accuracy %)] every `eval_every` steps (step 0 included)."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    train = self.data(task, "train")
    size = len(train["encoder_input_tokens"])
    rng = np.random.default_rng(seed)
    prompt = jnp.asarray(init, jnp.float32)
    state = self.optimizer.init(prompt)
    kept, curve, order = {}, [], rng.permutation(size)
    for step in range(steps + 1):
      if eval_every and step % eval_every == 0:
        curve.append((step, self.evaluate(prompt, task)))
      if step in keep:
        kept[step] = np.asarray(prompt)
      if step == steps:
        break
      start = (step * BATCH_SIZE) % size
      if start + BATCH_SIZE > size:
        order = rng.permutation(size)
      index = order[start:start + BATCH_SIZE] if start + BATCH_SIZE <= size else \
          order[:BATCH_SIZE]
      prompt, state, _ = self._step(prompt, state, self.frozen,
                                    {k: v[index] for k, v in train.items()})
    return {"prompt": np.asarray(prompt), "kept": kept, "curve": curve}


def steps_to(curve: Sequence[Tuple[int, float]], threshold: float) -> Optional[int]:
  """The first evaluated step whose accuracy reaches `threshold`; None if none does."""
  return next((step for step, value in curve if value >= threshold), None)


def sooner(steps: Optional[int], other: Optional[int]) -> bool:
  """Whether a run that reached the threshold at `steps` (None: never) did so before `other`."""
  never = lambda step: float("inf") if step is None else step  # step 0 counts as reached
  return never(steps) < never(other)


def mean_accuracy(curve: Sequence[Tuple[int, float]]) -> float:
  """The mean accuracy over the evaluations after step 0 (an area under the curve)."""
  return float(np.mean([value for step, value in curve if step > 0]))


def spearman(x: Sequence[float], y: Sequence[float]) -> Tuple[float, float]:
  from scipy import stats  # pylint: disable=g-import-not-at-top
  result = stats.spearmanr(x, y)
  return float(result.statistic), float(result.pvalue)


def _matrix_text(names: Sequence[str], matrix: np.ndarray) -> List[str]:
  width = max(len(n) for n in names)
  lines = [" " * (width + 2) + " ".join(f"{i:>6}" for i in range(len(names)))]
  for i, name in enumerate(names):
    lines.append(f"{name:>{width}} {i:>1} " + " ".join(f"{v:+.3f}" for v in matrix[i]))
  return lines


def seed_similarity(names: Sequence[str], matrix: np.ndarray) -> Tuple[float, float]:
  """Mean similarity of same-task/different-seed pairs and of different-task pairs."""
  same, different = [], []
  for i in range(len(names)):
    for j in range(i + 1, len(names)):
      (same if names[i].split("/")[0] == names[j].split("/")[0] else different).append(
          matrix[i, j])
  return float(np.mean(same)), float(np.mean(different))


def run(*, work_dir: Optional[str] = None, base_steps: int = 800, source_steps: int = 300,
        target_steps: int = 150, key_step: int = 30, threshold: float = 60.0,
        skills: Sequence[str] = demo_tasks.SOURCE_SKILLS) -> Dict[str, object]:
  """Runs the demonstration in `work_dir`; prints and returns its results."""
  start = time.time()
  work_dir = work_dir or tempfile.mkdtemp(prefix="spot_demo_")
  if os.path.isdir(work_dir) and os.listdir(work_dir):
    raise ValueError(f"Demo work dir {work_dir} is not empty; pass a new --work_dir.")
  if not 0 < key_step <= target_steps or key_step % EVAL_EVERY:
    raise ValueError(f"--key_step must be a multiple of {EVAL_EVERY} in (0, --target_steps], "
                     f"got {key_step}.")
  out: List[str] = []
  say = lambda line="": (out.append(line), print(line, flush=True))
  base, base_accuracy = pretrain_base(os.path.join(work_dir, "base"), base_steps)
  trainer = PromptTrainer(base)
  say(f"SPoT CPU demonstration (byte_t5_tiny, prompt length {PROMPT_LENGTH}, Adafactor lr 0.3, "
      f"model frozen)")
  say(f"  base: {base_steps} steps on the instructed skills, held-out accuracy "
      f"{base_accuracy:.1f}%")

  # Sources: every skill on domain a, two seeds each.
  source_prompts, source_keys, source_acc = {}, {}, {}
  for skill in skills:
    for seed in SEEDS:
      task = demo_tasks.task_name(skill, "a")
      result = trainer.train(trainer.sampled_vocabulary(seed), task, steps=source_steps,
                             seed=seed, keep=(key_step,))
      name = f"{skill}_a/seed{seed}"
      source_prompts[name] = result["prompt"]
      source_keys[name] = result["kept"][key_step]
      source_acc[name] = trainer.evaluate(result["prompt"], task)
  say()
  say(f"(i) Source prompts after {source_steps} steps (validation accuracy %): " + ", ".join(
      f"{n} {a:.0f}" for n, a in source_acc.items()))
  summary: Dict[str, object] = {"base_accuracy": base_accuracy, "source_accuracy": source_acc}
  for measure in (similarity_lib.AVERAGE_TOKENS, similarity_lib.PER_TOKEN):
    names, matrix = similarity_lib.similarity_matrix(source_prompts, measure)
    same, different = seed_similarity(names, matrix)
    summary[f"same_task_{measure}"], summary[f"different_task_{measure}"] = same, different
    say(f"  {measure}: same task, different seed {same:+.3f}; different tasks {different:+.3f}")
    if measure == similarity_lib.AVERAGE_TOKENS:
      for line in _matrix_text(names, matrix):
        say("    " + line)
      png = os.path.join(work_dir, f"similarity_{measure}.png")
      with open(os.path.join(work_dir, f"similarity_{measure}.csv"), "w") as f:
        f.write(similarity_lib.matrix_csv(names, matrix))
      similarity_lib.write_heatmap(png, names, matrix, f"Source prompts ({measure})")
      say(f"    heatmap: {png}")
      summary["heatmap"] = png
  init_names = {"sampled vocabulary": None}
  init_names.update({f"from {s}_a": f"{s}_a/seed0" for s in skills})

  # Targets: domain b, from sampled-vocabulary init and from every source (seed 0).
  rows, pairs = [], []
  curves: Dict[str, Dict[str, List[Tuple[int, float]]]] = {}
  for skill in skills:
    task = demo_tasks.task_name(skill, "b")
    curves[skill] = {}
    baseline = trainer.train(trainer.sampled_vocabulary(0), task, steps=target_steps, seed=0,
                             keep=(key_step,), eval_every=EVAL_EVERY)
    curves[skill]["sampled vocabulary"] = baseline["curve"]
    embedding = baseline["kept"][key_step]
    base_mean = mean_accuracy(baseline["curve"])
    for source in skills:
      name = f"{source}_a/seed0"
      result = trainer.train(source_prompts[name], task, steps=target_steps, seed=0,
                             eval_every=EVAL_EVERY)
      curves[skill][f"from {source}_a"] = result["curve"]
      sim = similarity_lib.average_tokens(embedding, source_keys[name])
      gain = mean_accuracy(result["curve"]) - base_mean
      pairs.append({"target": f"{skill}_b", "source": f"{source}_a", "similarity": sim,
                    "gain": gain, "related": source == skill})
    rows.append(skill)

  say()
  say(f"(ii) Target accuracy % every {EVAL_EVERY} steps (validation), related source vs "
      f"sampled-vocabulary init; steps to reach {threshold:.0f}%:")
  header = "step " + " ".join(f"{s:>5}" for s, _ in curves[rows[0]]["sampled vocabulary"])
  summary["steps_to_threshold"] = {}
  for skill in rows:
    say(f"  target {skill}_b     {header}")
    for label in ("sampled vocabulary", f"from {skill}_a"):
      curve = curves[skill][label]
      reached = steps_to(curve, threshold)
      summary["steps_to_threshold"][(skill, label)] = reached
      say(f"    {label:<18} " + " ".join(f"{v:5.1f}" for _, v in curve) +
          f"   -> {reached if reached is not None else 'not reached'}")
  related_faster = sum(
      1 for s in rows if sooner(summary["steps_to_threshold"][(s, f"from {s}_a")],
                                summary["steps_to_threshold"][(s, "sampled vocabulary")]))
  say(f"  related source reaches {threshold:.0f}% in fewer steps for {related_faster} of "
      f"{len(rows)} targets")
  summary["related_faster"] = related_faster
  summary["curves"] = curves

  say()
  say(f"(iii) Similarity (average_tokens, task embeddings at step {key_step}) vs transfer gain "
      f"(mean accuracy over the run minus sampled-vocabulary init's, points):")
  for target_skill in rows:
    items = sorted((p for p in pairs if p["target"] == f"{target_skill}_b"),
                   key=lambda p: -p["similarity"])
    say(f"  {target_skill}_b: " + "; ".join(
        f"{p['source']}{'*' if p['related'] else ''} {p['similarity']:+.3f} / "
        f"{p['gain']:+.1f}" for p in items))
  rho, p_value = spearman([p["similarity"] for p in pairs], [p["gain"] for p in pairs])
  per_target = [spearman([p["similarity"] for p in pairs if p["target"] == f"{s}_b"],
                         [p["gain"] for p in pairs if p["target"] == f"{s}_b"])[0] for s in rows]
  top1 = sum(1 for s in rows if max((p for p in pairs if p["target"] == f"{s}_b"),
                                    key=lambda p: p["similarity"])["related"])
  say(f"  Spearman over all {len(pairs)} pairs: rho {rho:+.3f} (p = {p_value:.3g}); "
      f"mean per-target rho {np.nanmean(per_target):+.3f}")
  say(f"  the most similar source is the related one for {top1} of {len(rows)} targets "
      f"(* marks it)")
  summary.update({"pairs": pairs, "spearman": rho, "spearman_p": p_value,
                  "spearman_per_target": per_target, "top1_related": top1})
  say()
  say(f"  time: {time.time() - start:.0f} s, runs in {work_dir}")
  summary["text"] = "\n".join(out)
  return summary


def main(argv: Sequence[str]) -> Dict[str, object]:
  parser = argparse.ArgumentParser(prog="prompt_tuning.methods.spot.demo",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default=None)
  parser.add_argument("--base_steps", type=int, default=800)
  parser.add_argument("--source_steps", type=int, default=300)
  parser.add_argument("--target_steps", type=int, default=150)
  parser.add_argument("--key_step", type=int, default=30)
  parser.add_argument("--threshold", type=float, default=60.0)
  args = parser.parse_args(list(argv))
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import absl.logging  # pylint: disable=g-import-not-at-top
  absl.logging.set_verbosity(absl.logging.ERROR)
  return run(work_dir=args.work_dir, base_steps=args.base_steps,
             source_steps=args.source_steps, target_steps=args.target_steps,
             key_step=args.key_step, threshold=args.threshold)


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    sys.exit(1)
