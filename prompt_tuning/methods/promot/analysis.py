"""Format learning in the gradient: cosine between the task gradient and a format-only gradient.

ProMoT's argument is that early fine-tuning mostly learns the task's *format*. This tool measures
it. At each step of a short fine-tuning run (Adafactor, the model's trainable parameters), two
gradients are taken on the same batch:

  * the task gradient: the batch as it is;
  * the format-only gradient: the same inputs, each given the target of *another* example of the
    batch (a random derangement), so the answers keep their format and distribution but no
    longer depend on the input: for i.i.d. examples, example j's target is independent of
    example i's input, i.e. a random label drawn from the task's own label distribution (the
    paper's "random labels"). A plain permutation would leave ~1/B of the examples with their
    own target and leak content into the format-only gradient.

Their cosine is high while the update teaches mostly format, and falls once the content is
learned. With a frozen prompt prepended (ProMoT stage 2), the prompt already carries the format,
so the cosine should start lower. The run updates with the task gradient; nothing is saved.
"""
from __future__ import annotations

import csv
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

DECODER_KEYS = ("decoder_target_tokens", "decoder_input_tokens", "decoder_loss_weights",
                "decoder_segment_ids", "decoder_positions")


def format_only(batch: Mapping[str, np.ndarray], rng: np.random.Generator) -> Dict[str, Any]:
  """`batch` with every example's target replaced by another example's (a derangement).

  Encoder-decoder batches (`encoder_input_tokens`): the decoder features move, the rest stays.
  Decoder-only prefix-LM batches (`decoder_causal_attention`, no encoder): each row holds input
  and target together, so each row is rebuilt as its own input followed by another row's target.
  """
  size = len(batch["decoder_target_tokens"])
  order = _derangement(size, rng) if size > 1 else np.arange(size)
  segments = batch.get("decoder_segment_ids")
  if segments is not None and np.asarray(segments).max(initial=0) > 1:
    raise ValueError("The format-only gradient needs unpacked batches; this one is packed.")
  if "encoder_input_tokens" in batch:
    return {k: (np.asarray(v)[order] if k in DECODER_KEYS else v) for k, v in batch.items()}
  if "decoder_causal_attention" in batch:
    return _prefix_lm_format_only(batch, order)
  raise ValueError("Cannot tell inputs from targets in this batch: it has neither "
                   "'encoder_input_tokens' nor 'decoder_causal_attention'.")


def _prefix_lm_format_only(batch: Mapping[str, np.ndarray],
                           order: np.ndarray) -> Dict[str, Any]:
  """Row i becomes row i's input then row order[i]'s target, laid out as the batch's converter
  lays out an unpacked example: seqio's `PrefixLMFeatureConverter` (start token 0, inputs,
  targets, zero padding; decoder inputs shifted right by one) or `StartTokenPrefixLMConverter`
  with a start token (the same, that token first, decoder inputs zero past the sequence); causal
  attention over the start slot and the inputs.

  Lengths come from the masks (`decoder_causal_attention`, `decoder_loss_weights`), never from
  token ids: a real token may have id 0 (Llama 3's "!").
  """
  tokens = np.asarray(batch["decoder_target_tokens"])
  weights = np.asarray(batch["decoder_loss_weights"])
  causal = np.asarray(batch["decoder_causal_attention"])
  length = tokens.shape[1]
  n_inputs = causal.sum(axis=1) - 1  # the converter marks one slot past the inputs
  weighted = weights > 0  # a row ends at its last weighted target (or with its inputs)
  last_weighted = np.where(weighted.any(axis=1), length - np.argmax(weighted[:, ::-1], axis=1), 0)
  n_total = np.maximum(n_inputs, last_weighted)
  new_tokens, new_weights = np.zeros_like(tokens), np.zeros_like(weights)
  real = np.zeros(tokens.shape, bool)
  for i, j in enumerate(order):
    ni, nj = n_inputs[i], n_inputs[j]
    row = np.concatenate([tokens[i, :ni], tokens[j, nj:n_total[j]]])[:length]
    row_weights = np.concatenate([weights[i, :ni], weights[j, nj:n_total[j]]])[:length]
    new_tokens[i, :len(row)], new_weights[i, :len(row)] = row, row_weights
    real[i, :len(row)] = True
  starts = np.asarray(batch["decoder_input_tokens"])[:, :1]
  new_inputs = np.concatenate([starts, new_tokens[:, :-1]], axis=1).astype(tokens.dtype)
  if starts.any():  # a start-token layout: nothing past the sequence
    new_inputs = np.where(real, new_inputs, 0)
  out = dict(batch)
  out.update(decoder_target_tokens=new_tokens, decoder_input_tokens=new_inputs,
             decoder_loss_weights=new_weights)
  if "decoder_segment_ids" in batch:
    out["decoder_segment_ids"] = real.astype(tokens.dtype)
  if "decoder_positions" in batch:
    out["decoder_positions"] = np.where(real, np.arange(length)[None], 0)
  return out


def _derangement(size: int, rng: np.random.Generator) -> np.ndarray:
  """A permutation moving every index (a random shift of a random order)."""
  order = rng.permutation(size)
  shifted = np.empty(size, dtype=int)
  shifted[order] = np.roll(order, 1)
  return shifted


def cosine(a: Any, b: Any) -> float:
  """Cosine between two parameter trees, over all their leaves flattened together."""
  import jax  # pylint: disable=g-import-not-at-top
  la = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(a)]
  lb = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(b)]
  va, vb = np.concatenate(la), np.concatenate(lb)
  norm = np.linalg.norm(va) * np.linalg.norm(vb)
  if not np.isfinite(norm) or norm == 0:
    raise ValueError("A gradient is zero or not finite; the cosine is undefined.")
  return float(va @ vb / norm)


def gradient_cosines(*, loss_fn: Callable, trainable: Any, batches: Iterator[Mapping[str, Any]],
                     optimizer: Any, steps: int, every: int = 1,
                     seed: int = 0) -> List[Dict[str, float]]:
  """Trains `trainable` for `steps` steps on `batches`; every `every` steps (and at step 0)
  records `{'step', 'cosine', 'loss', 'format_loss'}`.

  `loss_fn(trainable, batch) -> scalar loss` (the frozen parameters bound inside).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  if steps < 1 or every < 1:
    raise ValueError(f"steps and every must be positive, got {steps} and {every}.")
  grad_fn = jax.jit(jax.value_and_grad(loss_fn))
  rng = np.random.default_rng(seed)
  state = optimizer.init(trainable)
  rows = []
  for step in range(steps + 1):
    batch = next(batches)
    loss, grads = grad_fn(trainable, batch)
    if step % every == 0 or step == steps:
      format_loss, format_grads = grad_fn(trainable, format_only(batch, rng))
      rows.append({"step": step, "cosine": cosine(grads, format_grads), "loss": float(loss),
                   "format_loss": float(format_loss)})
    if step == steps:
      break
    updates, state = optimizer.update(grads, state, trainable)
    trainable = optax.apply_updates(trainable, updates)
  return rows


def write_csv(rows: Sequence[Mapping[str, float]], path: str) -> str:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return path


def plot(curves: Mapping[str, Sequence[Mapping[str, float]]], path: str, title: str) -> str:
  """One line per curve: cosine against step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axis = plt.subplots(figsize=(6, 4))
  for label, rows in curves.items():
    axis.plot([r["step"] for r in rows], [r["cosine"] for r in rows], marker="o", label=label)
  axis.set_xlabel("fine-tuning step")
  axis.set_ylabel("cos(task gradient, format-only gradient)")
  axis.set_title(title)
  axis.axhline(0.0, color="grey", linewidth=0.5)
  axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def load_model_and_params(*, model_gin_files: Sequence[str], base_checkpoint: str,
                          prompt_checkpoint: Optional[str] = None,
                          bindings: Mapping[str, Any] = None, lengths: Mapping[str, int]):
  """The gin-built model, its trainable (every non-prompt) parameters from the base, and the
  frozen ones (the prompt from `prompt_checkpoint`, when given)."""
  import gin  # pylint: disable=g-import-not-at-top
  from prompt_tuning.engine import data, gin_utils, params, partitioning, run_setup  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.register_configurables()
  text = lambda v: v if isinstance(v, str) else repr(v)  # gin text, as on the command line
  gin_utils.parse_gin(gin_files=list(model_gin_files),
                      gin_bindings=[f"{k} = {text(v)}" for k, v in (bindings or {}).items()])
  model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  groups = [params.ParamGroup(name="model", trainable=True)]
  if prompt_checkpoint is not None:
    groups.insert(0, params.ParamGroup(name="prompt", pattern=params.HOOK_PATTERN,
                                       source=params.FromCheckpoint(path=prompt_checkpoint)))
  setup = run_setup.load_for_inference(
      model=model, lengths=data.model_feature_lengths(model, lengths),
      mesh_config=partitioning.MeshConfig(),
      restore=run_setup.RestoreConfig(path=base_checkpoint), groups=groups)
  return model, setup.placed.trainable, setup.placed.frozen


def task_batches(model: Any, *, task: str, module: Optional[str], lengths: Mapping[str, int],
                 batch_size: int, seed: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  import importlib  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  if module:
    importlib.import_module(module)
  dataset = seqio.get_mixture_or_task(task).get_dataset(
      dict(lengths), split="train", shuffle=True, seed=seed, num_epochs=None)
  converted = model.feature_converter()(dataset, dict(lengths))
  return converted.batch(batch_size, drop_remainder=True).as_numpy_iterator()


def run(*, output_dir: str, model_gin_files: Sequence[str], base_checkpoint: str, task: str,
        module: Optional[str], lengths: Mapping[str, int],
        prompt_gin_files: Sequence[str] = (), prompt_checkpoint: Optional[str] = None,
        bindings: Optional[Mapping[str, Any]] = None, steps: int = 100, every: int = 10,
        batch_size: int = 32,
        learning_rate: float = 1e-3) -> Dict[str, str]:
  """Fine-tuning without a prompt and (with `prompt_checkpoint`) with the frozen prompt;
  writes `gradient_cosine.csv` (column `run`: 'fine-tuning' / 'ProMoT stage 2') and `.png`."""
  from prompt_tuning.engine import optimizers, train_state  # pylint: disable=g-import-not-at-top
  variants = [("fine-tuning", list(model_gin_files), None)]
  if prompt_checkpoint is not None:
    variants.append(("ProMoT stage 2", list(model_gin_files) + list(prompt_gin_files),
                     prompt_checkpoint))
  curves = {}
  for label, files, prompt in variants:
    model, trainable, frozen = load_model_and_params(
        model_gin_files=files, base_checkpoint=base_checkpoint, prompt_checkpoint=prompt,
        bindings=bindings, lengths=lengths)

    def loss_fn(trainable_params, batch, model=model, frozen=frozen):
      merged = train_state.merge_params(trainable=trainable_params, frozen=frozen)
      return model.loss_fn(merged, batch, None)[0]

    curves[label] = gradient_cosines(
        loss_fn=loss_fn, trainable=trainable, steps=steps, every=every,
        batches=task_batches(model, task=task, module=module, lengths=lengths,
                             batch_size=batch_size),
        optimizer=optimizers.adafactor(learning_rate=learning_rate, decay_rate=0.8,
                                       multiply_by_parameter_scale=True,
                                       weight_decay_rate=None))
  rows = [{"run": label, **row} for label, rs in curves.items() for row in rs]
  os.makedirs(output_dir, exist_ok=True)
  return {"csv": write_csv(rows, os.path.join(output_dir, "gradient_cosine.csv")),
          "png": plot(curves, os.path.join(output_dir, "gradient_cosine.png"),
                      f"Format learning on {task}")}
