"""Requests to forward passes: text in, prompt rows, one `PromptBank` call per micro-batch.

A generation request is one row; a rank-classification request with C choices is C rows
(the input once per choice, each scored as the target). Rows are padded to the batcher's
`max_rows`, so every batch runs one compiled shape per request kind and decoding setting.
Input text is tokenized as a SeqIO task with `add_eos=True` does (ids + EOS); inputs that do
not fit `max_input_length` are refused rather than silently trimmed.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from prompt_tuning.engine import models as model_wrappers
from prompt_tuning.methods.ensemble import bank as bank_lib
from prompt_tuning.methods.ensemble import evaluate as ensemble_eval
from prompt_tuning.serving import batcher as batcher_lib

DECODING_FIELDS = ("method", "num_decodes", "alpha", "temperature", "topk", "topp")


class RequestError(ValueError):
  """A request the server refuses; `status` is the HTTP status to answer with."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status


@dataclasses.dataclass(frozen=True)
class Generate:
  tokens: Tuple[int, ...]
  row: int


@dataclasses.dataclass(frozen=True)
class Classify:
  tokens: Tuple[int, ...]
  row: int
  choices: Tuple[str, ...]


def decoder_params(options: Optional[Mapping[str, Any]]) -> model_wrappers.DecoderParams:
  """A request's "decoding" object -> DecoderParams (unknown fields are a 400)."""
  options = dict(options or {})
  unknown = sorted(set(options) - set(DECODING_FIELDS))
  if unknown:
    raise RequestError(400, f"Unknown decoding option(s) {unknown}; allowed: "
                            f"{list(DECODING_FIELDS)}.")
  try:
    return model_wrappers.DecoderParams.create(options)
  except (TypeError, ValueError) as error:
    raise RequestError(400, f"Bad decoding options: {str(error).splitlines()[0]}") from None


class Engine:
  """Parses requests against a bank and runs micro-batches of them."""

  def __init__(self, bank: bank_lib.PromptBank, vocabulary: Any, *, max_input_length: int,
               max_decode_length: int, max_rows: int, seed: int = 0):
    self.bank, self.vocabulary = bank, vocabulary
    self.max_input_length, self.max_decode_length = max_input_length, max_decode_length
    self.max_rows = max_rows
    self._rng = jax.random.PRNGKey(seed)
    self._batches = itertools.count()

  def tokens(self, text: Any) -> Tuple[int, ...]:
    if not isinstance(text, str):
      raise RequestError(400, "'inputs' must be a string.")
    ids = tuple(int(t) for t in self.vocabulary.encode(text)) + (self.vocabulary.eos_id,)
    if len(ids) > self.max_input_length:
      raise RequestError(413, f"The input is {len(ids)} tokens long (EOS included); this server "
                              f"takes at most {self.max_input_length}.")
    return ids

  def parse(self, body: Any) -> Tuple[Hashable, Any, int]:
    """A request body -> (batch key, payload, rows), or a RequestError naming the problem."""
    if not isinstance(body, dict):
      raise RequestError(400, "The request body must be a JSON object.")
    for field in ("task", "inputs"):
      if field not in body:
        raise RequestError(400, f"The request lacks the field '{field}'.")
    task = body["task"]
    if not isinstance(task, str) or task not in self.bank.names:
      raise RequestError(404, f"Unknown task {task!r}; this server has prompts for "
                              f"{sorted(self.bank.names)}.")
    row, tokens = self.bank.row(task), self.tokens(body["inputs"])
    if "choices" in body:
      choices = body["choices"]
      if (not isinstance(choices, list) or not choices or
          not all(isinstance(c, str) for c in choices)):
        raise RequestError(400, "'choices' must be a non-empty list of strings.")
      if len(choices) > self.max_rows:
        raise RequestError(413, f"{len(choices)} choices; one request may have at most "
                                f"{self.max_rows}.")
      return ("classify",), Classify(tokens, row, tuple(choices)), len(choices)
    params = decoder_params(body.get("decoding"))
    if params.num_decodes > 16:
      raise RequestError(400, "num_decodes above 16 is not served.")
    return ("generate", params), Generate(tokens, row), 1

  def _encoder_rows(self, token_rows: Sequence[Tuple[int, ...]]) -> np.ndarray:
    out = np.zeros((self.max_rows, self.max_input_length), np.int32)
    for i, tokens in enumerate(token_rows):
      out[i, :len(tokens)] = tokens
    return out

  def run(self, key: Hashable, payloads: List[Any]) -> List[Dict[str, Any]]:
    """One forward pass for a micro-batch; one JSON-ready answer per payload."""
    if key[0] == "generate":
      return self._generate(key[1], payloads)
    return self._classify(payloads)

  def _generate(self, params, payloads: List[Generate]) -> List[Dict[str, Any]]:
    ids = [p.row for p in payloads] + [0] * (self.max_rows - len(payloads))
    rng = jax.random.fold_in(self._rng, next(self._batches))
    decodes, scores = self.bank.predict(
        {"encoder_input_tokens": self._encoder_rows([p.tokens for p in payloads])}, ids,
        max_decode_length=self.max_decode_length, decoder_params=params, rng=rng)
    answers = []
    for i in range(len(payloads)):
      texts = [self.vocabulary.decode([int(t) for t in row]) for row in decodes[i]]
      answers.append({"output": texts[0], "outputs": texts,
                      "scores": [float(s) for s in scores[i]]})
    return answers

  def _classify(self, payloads: List[Classify]) -> List[Dict[str, Any]]:
    tokens, ids, texts = [], [], []
    for p in payloads:
      for choice in p.choices:
        tokens.append(p.tokens)
        ids.append(p.row)
        texts.append(choice)
    pad = self.max_rows - len(texts)
    batch = {"encoder_input_tokens": self._encoder_rows(tokens),
             **ensemble_eval.target_features(self.vocabulary, texts + [""] * pad,
                                             self.max_decode_length)}
    scores = self.bank.score(batch, ids + [0] * pad)
    answers, start = [], 0
    for p in payloads:
      own = scores[start:start + len(p.choices)]
      start += len(p.choices)
      best = int(np.argmax(own))  # first maximum: the earliest choice wins ties
      answers.append({"choice": p.choices[best], "index": best,
                      "scores": [float(s) for s in own]})
    return answers


def make_batcher(engine: Engine, *, max_wait_s: float, max_queue: int
                 ) -> batcher_lib.MicroBatcher:
  return batcher_lib.MicroBatcher(engine.run, max_rows=engine.max_rows, max_wait_s=max_wait_s,
                                  max_queue=max_queue)
