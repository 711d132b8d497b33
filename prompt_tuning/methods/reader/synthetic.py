"""A synthetic retrieval set: each answer lives in one of many look-alike passages.

Question: `what is the code of <a> <b>?`; every passage says `<x> <y> has code <c> .` for
some two-word name; exactly one passage names the question's `<a> <b>` (and gives the
answer), others share one of its two words or none. The "retriever" score is the passage's
relevance plus Gaussian noise (`noise`), so the positive often lands below the first few
passages, which is what a re-ranker is for. Words are single pieces of the T5 vocabulary.
"""
from __future__ import annotations

import random
from typing import Any, Dict, List

FIRST = ("horse whale snake rabbit mouse goose sheep shark lemon apple grape cherry river "
         "ocean forest desert").split()
SECOND = ("island valley castle bridge tower garden silver golden purple orange yellow violet "
          "copper marble velvet cotton").split()
ANSWERS = "red blue green gold one two three four cat dog sun sea".split()


def question_text(first: str, second: str) -> str:
  return f"what is the code of {first} {second}?"


def make_records(num_questions: int, *, num_passages: int = 20, noise: float = 1.0,
                 seed: int = 0, start: int = 0) -> List[Dict[str, Any]]:
  """`num_questions` retrieval entries (JSON-ready) with one answer passage each.

  Names are drawn without repeats within a call (at most 256 distinct questions) and question
  ids start at `start`; different seeds give different sets.
  """
  rng = random.Random(seed)
  names = [(a, b) for a in FIRST for b in SECOND]
  rng.shuffle(names)
  if num_questions > len(names):
    raise ValueError(f"At most {len(names)} synthetic questions, asked for {num_questions}.")
  records = []
  for q, (first, second) in enumerate(names[:num_questions]):
    answer = rng.choice(ANSWERS)
    ctxs = [{"name": (first, second), "code": answer, "relevance": 1.5, "has_answer": True}]
    while len(ctxs) < num_passages:
      kind = rng.random()
      other = (first if kind < 0.3 else rng.choice(FIRST),
               second if 0.3 <= kind < 0.6 else rng.choice(SECOND))
      if other == (first, second):
        continue
      shared = (other[0] == first) + (other[1] == second)
      ctxs.append({"name": other, "code": rng.choice(ANSWERS), "relevance": 0.5 * shared,
                   "has_answer": False})
    out = []
    for i, ctx in enumerate(ctxs):
      name = " ".join(ctx["name"])
      out.append({"id": f"{start + q}-{i}", "title": name,
                  "text": f"{name} has code {ctx['code']} .",
                  "score": round(ctx["relevance"] + rng.gauss(0.0, noise), 4),
                  "has_answer": ctx["has_answer"]})
    out.sort(key=lambda c: -c["score"])
    records.append({"question": question_text(first, second), "answers": [answer],
                    "ctxs": out})
  return records
