"""Textual recursion's middle step: sampled candidates -> the second-stage dataset.

Pass 1 (prompt p1 on the closed-book task) samples n answers per question at temperature 1
(`prompt_tuning.infer` with `decoder_params={'method': 'sample', 'num_decodes': n,
'temperature': 1.0}`; it writes every decode with its score, best first). This step turns that
JSONL file into the second stage's examples, one JSON line each:

  {"question": ..., "answer": ..., "candidates": [best, ..., worst]}   (duplicates removed)

and measures the recall of candidates: the share of questions whose answer is among them.
A run whose output is complete and was made from the same input file and settings is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from prompt_tuning.data.metrics import normalize_answer
from prompt_tuning.pipelines.stages import pipeline_step

MANIFEST = "candidates_manifest.json"


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  if not os.path.isfile(path):
    raise FileNotFoundError(f"The sampled-candidates file {path} does not exist.")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return rows


def candidates_of(record: Mapping[str, Any], num_candidates: Optional[int]) -> List[str]:
  """The record's decodes, best first, without repeats or empty answers (among the first
  `num_candidates` of them)."""
  decodes = record.get("decodes") or [record]
  scored = sorted(decodes, key=lambda d: -float(d.get("score", 0.0)))
  if num_candidates is not None:
    scored = scored[:num_candidates]
  seen, out = set(), []
  for decode in scored:
    text = str(decode.get("prediction", "")).strip()
    if text and text not in seen:
      seen.add(text)
      out.append(text)
  return out


def recall_of_candidates(examples: Iterable[Mapping[str, Any]]) -> float:
  """Percent of examples whose answer (normalised) equals one of their candidates."""
  examples = list(examples)
  if not examples:
    raise ValueError("recall_of_candidates got no examples.")
  hits = sum(normalize_answer(e["answer"]) in {normalize_answer(c) for c in e["candidates"]}
             for e in examples)
  return 100.0 * hits / len(examples)


def build_examples(records: Sequence[Mapping[str, Any]],
                   num_candidates: Optional[int] = None) -> List[Dict[str, Any]]:
  for i, record in enumerate(records):
    missing = [k for k in ("inputs", "targets") if k not in record]
    if missing:
      raise ValueError(f"Sampled record {i} lacks {missing}; infer writes inputs and targets.")
  return [{"question": r["inputs"], "answer": r["targets"],
           "candidates": candidates_of(r, num_candidates)} for r in records]


def _digest(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def write_split(*, source: str, out_dir: str, split: str,
                num_candidates: Optional[int] = None) -> Dict[str, Any]:
  """Writes `<out_dir>/<split>.jsonl` from an infer output file; returns its manifest entry.

  Skips the work when the manifest says the same source (by content) and settings made it.
  The file is written to a temporary name and renamed, so an interrupted run leaves no
  half-written split behind.
  """
  if not os.path.isfile(source):
    raise FileNotFoundError(f"The sampled-candidates file {source} does not exist.")
  os.makedirs(out_dir, exist_ok=True)
  manifest_path = os.path.join(out_dir, MANIFEST)
  manifest = json.load(open(manifest_path)) if os.path.exists(manifest_path) else {}
  target = os.path.join(out_dir, f"{split}.jsonl")
  key = {"source_sha256": _digest(source), "num_candidates": num_candidates}
  entry = manifest.get(split)
  if entry and os.path.exists(target) and all(entry.get(k) == v for k, v in key.items()):
    return {**entry, "skipped": True}
  examples = build_examples(read_jsonl(source), num_candidates)
  with open(target + ".tmp", "w") as f:
    for example in examples:
      f.write(json.dumps(example) + "\n")
  os.replace(target + ".tmp", target)
  entry = {**key, "source": source, "examples": len(examples),
           "recall": recall_of_candidates(examples)}
  manifest[split] = entry
  with open(manifest_path + ".tmp", "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(manifest_path + ".tmp", manifest_path)
  return {**entry, "skipped": False}


@pipeline_step("recursion_candidates", outputs=("recall", "train_examples", "validation_examples"))
def recursion_candidates(*, stage_dir: str, train_predictions: str, validation_predictions: str,
                         num_candidates: Optional[int] = None) -> Dict[str, Any]:
  """Pipeline step: the second-stage dataset in `stage_dir` (`train.jsonl`, `validation.jsonl`)
  from two sampling runs; `recall` is the validation recall of candidates (percent)."""
  train = write_split(source=train_predictions, out_dir=stage_dir, split="train",
                      num_candidates=num_candidates)
  validation = write_split(source=validation_predictions, out_dir=stage_dir, split="validation",
                           num_candidates=num_candidates)
  return {"recall": validation["recall"], "train_examples": train["examples"],
          "validation_examples": validation["examples"]}
