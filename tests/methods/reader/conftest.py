"""Shared fixtures: the real T5 vocabulary, synthetic retrieval files."""
import json
import random

import pytest

from prompt_tuning.data import testing
from prompt_tuning.data import vocabularies

WORDS = ("river stone maple cloud copper violet harbor lantern meadow falcon orbit quartz "
         "willow ember tundra basalt cedar delta fjord glacier").split()


@pytest.fixture(scope="session")
def vocabulary():
  return vocabularies.get_vocabulary(testing.fixture_vocab_path())


def planted_records(num_questions, num_passages, *, seed, start=0):
  """Questions whose one positive passage says 'the answer is <answer>'; noisy scores put it
  anywhere in the list."""
  rng = random.Random(seed)
  records = []
  for q in range(start, start + num_questions):
    answer = f"{rng.choice(WORDS)}{q}"
    positive = rng.randrange(num_passages)
    ctxs = []
    for p in range(num_passages):
      filler = " ".join(rng.choice(WORDS) for _ in range(6))
      text = f"the answer is {answer} {filler}" if p == positive else f"{filler} nothing"
      ctxs.append({"id": f"{q}-{p}", "title": f"t{p}", "text": text,
                   "score": round(rng.gauss(0, 1), 4), "has_answer": p == positive})
    records.append({"question": f"what is item {q}?", "answers": [answer], "ctxs": ctxs})
  return records


def write_json(path, records):
  path.write_text(json.dumps(records))
  return str(path)
