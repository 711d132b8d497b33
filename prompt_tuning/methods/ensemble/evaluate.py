r"""Evaluate N prompts on one task in one batched pass, and two ensembles of them.

  python -m prompt_tuning.methods.ensemble.evaluate \
    --model_gin=gin/models/byte_t5_tiny.gin --base=/tmp/smoke/base/checkpoints/400/params \
    --prompts /tmp/p0.npy /tmp/run1 /tmp/run2 \
    --task=smoke_last_digit --task_module=prompt_tuning.smoke_data.tasks \
    --lengths=inputs:16,targets:4 [--num_examples=256] [--output=report.json]

Each batch of B examples is expanded N times (`prompts.ensemble.expand_for_ensemble`: row
n * B + b is example b under prompt n) and decoded once through a `PromptTable`. Reported:

* each prompt's metrics, their mean and their best (highest);
* majority vote: per example the postprocessed answer most prompts gave; ties go to the answer
  of the lowest-numbered prompt (the order of `--prompts`) among the tied ones;
* score averaging: per example the candidates are the distinct answers the prompts generated;
  each candidate is scored (summed target log-likelihood) under every prompt, the scores are
  averaged over prompts, and the highest mean wins; ties go to the candidate first generated
  by the lowest-numbered prompt.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from prompt_tuning.methods.ensemble import bank as bank_lib
from prompt_tuning.prompts import ensemble as ensemble_lib

ENSEMBLE_RULES = ("majority_vote", "score_average")


@dataclasses.dataclass
class TaskData:
  """A task split as model features plus what the metrics need (targets, examples)."""

  features: Dict[str, np.ndarray]  # encoder_input_tokens [E, L] (decoder features unused)
  examples: List[Dict[str, Any]]
  targets: List[Any]  # postprocessed targets
  vocabulary: Any
  task: Any


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_task(name: str, *, split: str, lengths: Mapping[str, int],
              num_examples: Optional[int] = None) -> TaskData:
  """The task's examples in order, tokenized and padded to `lengths` (no packing)."""
  import seqio  # pylint: disable=g-import-not-at-top
  task = seqio.get_mixture_or_task(name)
  if split not in task.splits:
    raise ValueError(f"Task {name!r} has no split {split!r}; it has {sorted(task.splits)}.")
  raw = task.get_dataset(sequence_length=dict(lengths), split=split, shuffle=False,
                         num_epochs=1)
  if num_examples is not None:
    raw = raw.take(num_examples)
  converted = seqio.EncDecFeatureConverter(pack=False)(raw, dict(lengths))
  examples = [{k: (_text(v) if isinstance(v, bytes) else v) for k, v in ex.items()}
              for ex in raw.as_numpy_iterator()]
  rows = list(converted.as_numpy_iterator())
  features = {"encoder_input_tokens": np.stack([r["encoder_input_tokens"] for r in rows])}
  targets = [task.postprocess_fn(ex.get("targets_pretokenized", ""), example=ex, is_target=True)
             for ex in examples]
  return TaskData(features=features, examples=examples, targets=targets,
                  vocabulary=task.output_features["targets"].vocabulary, task=task)


def metrics_of(task: Any, targets: Sequence[Any], predictions: Sequence[Any]) -> Dict[str, float]:
  """The task's prediction metrics ({name: value}), all metric functions merged."""
  out: Dict[str, float] = {}
  for fn in task.predict_metric_fns:
    for key, value in fn(list(targets), list(predictions)).items():
      out[key] = float(getattr(value, "value", value))
  return out


def _decode(vocabulary: Any, rows: np.ndarray) -> List[str]:
  return [vocabulary.decode([int(t) for t in row]) for row in rows]


def ensemble_predict(bank: bank_lib.PromptBank, names: Sequence[str], features: Mapping,
                     *, batch_size: int, max_decode_length: int,
                     decoder_params: Any = None) -> np.ndarray:
  """`[N, E, T]` decoded tokens of every prompt on every example, B examples per pass."""
  rows = [bank.row(name) for name in names]
  total = features["encoder_input_tokens"].shape[0]
  out = []
  for start in range(0, total, batch_size):
    chunk = {k: v[start:start + batch_size] for k, v in features.items()}
    real = chunk["encoder_input_tokens"].shape[0]
    if real < batch_size:  # one compiled shape: pad the last batch with empty rows
      chunk = {k: np.concatenate([v, np.zeros((batch_size - real,) + v.shape[1:], v.dtype)])
               for k, v in chunk.items()}
    expanded = ensemble_lib.expand_for_ensemble(chunk, len(rows), prompt_ids=rows)
    ids = expanded.pop("prompt_ids")
    decodes, _ = bank.predict(expanded, ids, max_decode_length=max_decode_length,
                              decoder_params=decoder_params)
    out.append(decodes[:, 0].reshape(len(rows), batch_size, -1)[:, :real])
  return np.concatenate(out, axis=1)


def target_features(vocabulary: Any, texts: Sequence[str], length: int, eos_id: int = 1
                    ) -> Dict[str, np.ndarray]:
  """Teacher-forcing features scoring `texts` as targets (EOS appended, trimmed to `length`)."""
  targets = np.zeros((len(texts), length), np.int32)
  for i, text in enumerate(texts):
    ids = (list(vocabulary.encode(text)) + [eos_id])[:length]
    targets[i, :len(ids)] = ids
  inputs = np.concatenate([np.zeros((len(texts), 1), np.int32), targets[:, :-1]], axis=1)
  return {"decoder_target_tokens": targets, "decoder_input_tokens": inputs,
          "decoder_loss_weights": (targets > 0).astype(np.float32)}


def score_average(bank: bank_lib.PromptBank, names: Sequence[str], features: Mapping,
                  candidates: Sequence[Sequence[str]], *, vocabulary: Any, target_length: int,
                  batch_size: int) -> List[int]:
  """Per example, the index of the candidate with the highest prompt-averaged score."""
  rows = [bank.row(name) for name in names]
  encoder, ids, texts, owner = [], [], [], []
  for example, options in enumerate(candidates):
    for choice, text in enumerate(options):
      for row in rows:
        encoder.append(features["encoder_input_tokens"][example])
        ids.append(row)
        texts.append(text)
        owner.append((example, choice))
  scores = np.zeros(len(texts), np.float32)
  step = batch_size * len(rows)
  for start in range(0, len(texts), step):
    stop = min(start + step, len(texts))
    batch = {"encoder_input_tokens": np.stack(encoder[start:stop]),
             **target_features(vocabulary, texts[start:stop], target_length)}
    pad = step - (stop - start)
    batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
             for k, v in batch.items()}
    scores[start:stop] = bank.score(batch, list(ids[start:stop]) + [rows[0]] * pad)[:stop - start]
  mean = {}
  for (example, choice), score in zip(owner, scores):
    mean.setdefault(example, {}).setdefault(choice, []).append(float(score))
  winners = []
  for example, options in enumerate(candidates):
    averages = [np.mean(mean[example][c]) for c in range(len(options))]
    winners.append(int(np.argmax(averages)))  # first maximum: earliest candidate
  return winners


def _key(value: Any) -> str:
  return json.dumps(value, sort_keys=True, default=str)


def evaluate(bank: bank_lib.PromptBank, names: Sequence[str], data: TaskData, *,
             batch_size: int, max_decode_length: int, rules: Sequence[str] = ENSEMBLE_RULES,
             decoder_params: Any = None) -> Dict[str, Any]:
  """Per-prompt metrics, their mean and best, and each ensemble rule's metrics."""
  for rule in rules:
    if rule not in ENSEMBLE_RULES:
      raise ValueError(f"Unknown ensemble rule {rule!r}; choose from {ENSEMBLE_RULES}.")
  tokens = ensemble_predict(bank, names, data.features, batch_size=batch_size,
                            max_decode_length=max_decode_length, decoder_params=decoder_params)
  texts = [_decode(data.vocabulary, per_prompt) for per_prompt in tokens]  # [N][E]
  post = [[data.task.postprocess_fn(t, example=ex, is_target=False)
           for t, ex in zip(per_prompt, data.examples)] for per_prompt in texts]
  per_prompt = {name: metrics_of(data.task, data.targets, p) for name, p in zip(names, post)}
  keys = list(next(iter(per_prompt.values())))
  report: Dict[str, Any] = {
      "num_examples": len(data.examples), "prompts": list(names), "per_prompt": per_prompt,
      "mean": {k: float(np.mean([m[k] for m in per_prompt.values()])) for k in keys},
      "best": {k: float(np.max([m[k] for m in per_prompt.values()])) for k in keys},
      "predictions": texts}
  flat_keys = [_key(v) for p in post for v in p]
  if "majority_vote" in rules:
    voted = ensemble_lib.majority_vote(flat_keys, len(names))
    lookup = dict(zip(flat_keys, [v for p in post for v in p]))
    report["majority_vote"] = metrics_of(data.task, data.targets, [lookup[k] for k in voted])
  if "score_average" in rules:
    candidates = [list(dict.fromkeys(texts[n][e] for n in range(len(names))))
                  for e in range(len(data.examples))]
    target_length = max_decode_length
    winners = score_average(bank, names, data.features, candidates, vocabulary=data.vocabulary,
                            target_length=target_length, batch_size=batch_size)
    chosen = [data.task.postprocess_fn(candidates[e][w], example=data.examples[e],
                                       is_target=False) for e, w in enumerate(winners)]
    report["score_average"] = metrics_of(data.task, data.targets, chosen)
  return report


def table_lines(report: Mapping[str, Any]) -> List[str]:
  """The report as a fixed-width table: one row per prompt, then mean, best and ensembles."""
  keys = list(report["mean"])
  width = max([len(n) for n in report["prompts"]] + [len("ens:score_average")])
  lines = [f"{'prompt':<{width}}  " + "  ".join(f"{k:>12}" for k in keys)]
  rows = list(report["per_prompt"].items()) + [("mean", report["mean"]), ("best", report["best"])]
  rows += [(f"ens:{r}", report[r]) for r in ENSEMBLE_RULES if r in report]
  for name, values in rows:
    lines.append(f"{name:<{width}}  " + "  ".join(f"{values[k]:>12.2f}" for k in keys))
  return lines


def parse_lengths(text: str) -> Dict[str, int]:
  """'inputs:16,targets:4' -> {'inputs': 16, 'targets': 4}."""
  try:
    pairs = [item.split(":") for item in text.split(",") if item]
    lengths = {k.strip(): int(v) for k, v in pairs}
  except ValueError:
    raise ValueError(f"--lengths {text!r} is malformed; expected e.g. inputs:16,targets:4.") \
        from None
  if set(lengths) != {"inputs", "targets"}:
    raise ValueError(f"--lengths must give inputs and targets, got {sorted(lengths)}.")
  return lengths


def build_parser(prog: str, doc: str) -> argparse.ArgumentParser:
  """Flags shared by the ensemble, ablation and interpretability commands."""
  parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
  parser.add_argument("--model_gin", action="append", required=True,
                      help="model gin file(s), e.g. gin/models/byte_t5_tiny.gin")
  parser.add_argument("--gin", action="append", default=[], help="extra gin binding NAME=VALUE")
  parser.add_argument("--base", required=True, help="frozen base checkpoint or .npz")
  parser.add_argument("--prompts", nargs="+", required=True, help=".npy files or run folders")
  parser.add_argument("--task", required=True)
  parser.add_argument("--task_module", default=None, help="module that registers the task")
  parser.add_argument("--split", default="validation")
  parser.add_argument("--lengths", default="inputs:512,targets:16")
  parser.add_argument("--num_examples", type=int, default=None)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--output", default=None, help="write the report as JSON here")
  return parser


def open_bank(args: argparse.Namespace, prompts: Sequence[np.ndarray],
              names: Sequence[str]) -> bank_lib.PromptBank:
  """Model, base and prompts named by the shared flags, as a bank holding `prompts`."""
  from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
  model, _ = loading.model_from_gin(args.model_gin, args.gin)
  lengths = parse_lengths(args.lengths)
  length, _ = prompts[0].shape
  frozen = loading.frozen_params(
      model.module.config, args.base, prompt_length=length,
      lengths={"encoder_input_tokens": lengths["inputs"],
               "decoder_input_tokens": lengths["targets"]})
  bank = bank_lib.PromptBank(config=model.module.config, frozen_params=frozen,
                             prompt_length=length, capacity=len(prompts))
  for name, prompt in zip(names, prompts):
    bank.add(name, prompt)
  return bank


def prompt_names(sources: Sequence[str]) -> List[str]:
  """Short unique names for the table: `p<i>:<basename>`."""
  import os  # pylint: disable=g-import-not-at-top
  return [f"p{i}:{os.path.basename(os.path.normpath(s))}" for i, s in enumerate(sources)]


def main(argv: Sequence[str]) -> Dict[str, Any]:
  from prompt_tuning.methods.ensemble import loading  # pylint: disable=g-import-not-at-top
  args = build_parser("prompt_tuning.methods.ensemble.evaluate", __doc__).parse_args(argv)
  if args.task_module:
    importlib.import_module(args.task_module)
  lengths = parse_lengths(args.lengths)
  prompts = loading.load_prompts(args.prompts)  # fails on a bad file before the model loads
  names = prompt_names(args.prompts)
  data = read_task(args.task, split=args.split, lengths=lengths, num_examples=args.num_examples)
  bank = open_bank(args, prompts, names)
  report = evaluate(bank, names, data, batch_size=args.batch_size,
                    max_decode_length=lengths["targets"])
  print("\n".join(table_lines(report)))
  if args.output:
    with open(args.output, "w") as f:
      json.dump(report, f, indent=1)
  return report


if __name__ == "__main__":
  try:
    main(sys.argv[1:])
  except (ValueError, FileNotFoundError) as error:
    print(f"Error: {str(error).splitlines()[0]}", file=sys.stderr)
    raise SystemExit(1) from None
