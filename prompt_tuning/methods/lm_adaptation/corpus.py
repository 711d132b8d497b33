"""A small generated English-like corpus for the CPU pipeline and tests (no download).

Sentences come from a fixed grammar (determiner, adjective, noun, verb, ...), so the
continuation of a prefix is partly predictable: a model adapted on it has something to learn
and its prefix-LM loss can fall. One document per line, several sentences each.
"""
import os
from typing import Dict, Optional

import numpy as np

_SUBJECTS = ("the cat", "a dog", "the old farmer", "my neighbour", "the little bird",
             "a young girl", "the teacher", "our captain")
_VERBS = ("sees", "likes", "follows", "paints", "finds", "carries", "remembers", "feeds")
_OBJECTS = ("the red ball", "a green apple", "the wooden boat", "an old map",
            "the quiet river", "a small house", "the bright star", "a heavy stone")
_PLACES = ("in the morning", "near the market", "after dinner", "by the sea",
           "under the bridge", "at the station")
SPLIT_DOCUMENTS = {"train": 256, "validation": 32}
_SEEDS = {"train": 11, "validation": 12}


def sentence(rng: np.random.Generator) -> str:
  words = [_SUBJECTS[rng.integers(len(_SUBJECTS))], _VERBS[rng.integers(len(_VERBS))],
           _OBJECTS[rng.integers(len(_OBJECTS))]]
  if rng.random() < 0.5:
    words.append(_PLACES[rng.integers(len(_PLACES))])
  text = " ".join(words)
  return text[0].upper() + text[1:] + "."


def document(rng: np.random.Generator) -> str:
  return " ".join(sentence(rng) for _ in range(int(rng.integers(2, 6))))


def write(directory: str, documents: Optional[Dict[str, int]] = None) -> Dict[str, str]:
  """Writes `<split>.txt` per split (`{split: number of documents}`); `{split: path}`."""
  documents = documents or SPLIT_DOCUMENTS
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for split, count in documents.items():
    rng = np.random.default_rng(_SEEDS.get(split, 13))
    path = os.path.join(directory, f"{split}.txt")
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(document(rng) + "\n" for _ in range(count))
    paths[split] = path
  return paths
