"""Open-book reading: retrieval results in the DPR/FiD JSON format, packed into one input.

A frozen reader sees a single input sequence, so retrieved passages are packed greedily by
score: best first, each added whole if it still fits the token budget (a passage that
does not fit is skipped, a shorter later one may still fit). Passages are tokenized one by
one and their ids concatenated, so the budget holds exactly; recall-at-input reports how
often an answer-bearing passage made it in.

File format (a JSON list):
  [{"question": str, "answers": [str], "ctxs": [{"id", "title", "text", "score",
    "has_answer"}]}]
`score` and `has_answer` are optional: missing scores keep the retrieval order, missing
`has_answer` is computed by looking for a normalised answer in the normalised passage.
"""
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.data import metrics

_SIGNATURE = {
    "question": tf.TensorSpec([], tf.string),
    "answers": tf.TensorSpec([None], tf.string),
    "titles": tf.TensorSpec([None], tf.string),
    "texts": tf.TensorSpec([None], tf.string),
    "scores": tf.TensorSpec([None], tf.float32),
    "has_answer": tf.TensorSpec([None], tf.bool),
}


def _contains_answer(text: str, answers: List[str]) -> bool:
  passage = f" {metrics.normalize_answer(text)} "
  return any(f" {metrics.normalize_answer(a)} " in passage for a in answers if a.strip())


def _check_record(record: Any, index: int, path: str, require_passages: bool) -> None:
  """One sentence naming the file and the question index for a malformed entry."""
  where = f"Entry {index} of {path}"
  if not isinstance(record, dict) or "question" not in record or "ctxs" not in record:
    raise ValueError(f"{where} lacks 'question' or 'ctxs'.")
  ctxs = record["ctxs"]
  if not isinstance(ctxs, list):
    raise ValueError(f"{where} has 'ctxs' of type {type(ctxs).__name__}, not a list.")
  if require_passages and not ctxs:
    raise ValueError(f"{where} has an empty 'ctxs' list (no retrieved passages).")
  for rank, ctx in enumerate(ctxs):
    text = ctx.get("text") if isinstance(ctx, dict) else None
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"{where} has a passage (ctxs[{rank}]) with no text.")


def read_retrieval_file(path: str, *, require_passages: bool = False) -> List[Dict[str, Any]]:
  """Parses one retrieval JSON file into flat examples (see `_SIGNATURE`).

  Every entry needs a question and a `ctxs` list whose passages have text; with
  `require_passages` an empty `ctxs` list is refused too (a re-ranker has nothing to rank).
  A file without any question is refused.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"Retrieval file {path} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    try:
      records = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"Retrieval file {path} is not valid JSON: {e}.") from e
  if not isinstance(records, list):
    raise ValueError(f"Retrieval file {path} must hold a JSON list of questions.")
  if not records:
    raise ValueError(f"Retrieval file {path} holds an empty list (no questions).")
  examples = []
  for i, record in enumerate(records):
    _check_record(record, i, path, require_passages)
    answers = [str(a) for a in record.get("answers", [])]
    ctxs = record["ctxs"]
    examples.append({
        "question": str(record["question"]),
        "answers": np.array(answers, dtype=object).reshape(-1),
        "titles": np.array([str(c.get("title", "")) for c in ctxs], dtype=object).reshape(-1),
        "texts": np.array([str(c["text"]) for c in ctxs], dtype=object).reshape(-1),
        # Without scores, the retrieval order is the ranking.
        "scores": np.array([float(c.get("score", -rank)) for rank, c in enumerate(ctxs)],
                           dtype=np.float32).reshape(-1),
        "has_answer": np.array(
            [bool(c["has_answer"]) if "has_answer" in c else _contains_answer(c["text"], answers)
             for c in ctxs], dtype=bool).reshape(-1),
    })
  return examples


def retrieval_dataset(path: str) -> tf.data.Dataset:
  examples = read_retrieval_file(path)
  return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=_SIGNATURE)


def pack_passages(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int],
    output_features: Mapping[str, seqio.Feature],
    split_last_passage: bool = False,
) -> tf.data.Dataset:
  """Packs `question: Q title: T context: X ...` greedily by score into the inputs budget.

  Passages are never cut: one that does not fit is skipped. With `split_last_passage`
  (bind it with `functools.partial`), the first passage that does not fit is cut to fill the
  budget exactly and packing stops there; a cut passage does not count toward
  `answer_in_input` (its answer may be in the part left out).

  Emits `inputs` as token ids of length <= sequence_length["inputs"] - 1 (room for EOS),
  `inputs_pretokenized`, `targets` (first answer), `answers`, `answer_in_input` and
  `num_passages`.
  """
  if not sequence_length or not sequence_length.get("inputs"):
    raise ValueError("Passage packing needs sequence_length['inputs'] (the token budget).")
  budget = int(sequence_length["inputs"]) - int(output_features["inputs"].add_eos)
  vocabulary = output_features["inputs"].vocabulary

  def pack(x: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    prefix = tf.strings.join(["question: ", x["question"]])
    prefix_ids = vocabulary.encode_tf(prefix)[:budget]
    order = tf.argsort(-x["scores"], stable=True)
    passages = tf.gather(
        tf.strings.join(["title: ", x["titles"], " context: ", x["texts"]]), order)
    has_answer = tf.gather(x["has_answer"], order)
    passage_ids = vocabulary.encode_tf(passages)  # ragged [N, None]
    lengths = tf.cast(passage_ids.row_lengths(), tf.int32)

    def add_if_fits(state, length):
      used, _, done = state
      fits = tf.logical_and(tf.logical_not(done), used + length <= budget)
      room = budget - used
      cut = tf.logical_and(tf.logical_not(done),
                           tf.logical_and(tf.logical_not(fits), room > 0))
      cut = tf.logical_and(cut, tf.constant(split_last_passage))
      taken = tf.where(fits, length, tf.where(cut, room, 0))
      return used + taken, taken, tf.logical_or(done, cut)

    _, taken, _ = tf.scan(add_if_fits, lengths,
                          initializer=(tf.size(prefix_ids), tf.constant(0), tf.constant(False)))
    kept = taken > 0
    whole = tf.logical_and(kept, tf.equal(taken, lengths))
    token_mask = tf.ragged.range(lengths) < tf.expand_dims(taken, 1)
    kept_ragged = tf.ragged.boolean_mask(passage_ids, token_mask)
    kept_ids = kept_ragged.flat_values
    # A cut passage is shown as the text of its kept tokens.
    shown = tf.where(whole, passages, vocabulary.decode_tf(kept_ragged))
    kept_text = tf.boolean_mask(shown, kept)
    first_answer = tf.concat([x["answers"], tf.constant([""])], axis=0)[0]
    return {
        "inputs": tf.concat([prefix_ids, tf.cast(kept_ids, prefix_ids.dtype)], axis=0),
        "inputs_pretokenized": tf.strings.reduce_join(
            tf.concat([[prefix], kept_text], axis=0), separator=" "),
        "targets": first_answer,
        "answers": x["answers"],
        "answer_in_input": tf.reduce_any(tf.logical_and(whole, has_answer)),
        "num_passages": tf.reduce_sum(tf.cast(kept, tf.int32)),
    }

  return dataset.map(tf.autograph.experimental.do_not_convert(pack),
                     num_parallel_calls=tf.data.AUTOTUNE)


class RetrievalFiles:
  """Split -> retrieval JSON path, resolved when a dataset is requested (not at import)."""

  def __init__(self, *, files: Optional[Mapping[str, str]] = None,
               directory_env: Optional[str] = None,
               file_names: Optional[Mapping[str, str]] = None):
    if files is None and directory_env is None:
      raise ValueError("RetrievalFiles needs explicit files or a directory environment variable.")
    self._files = dict(files) if files is not None else None
    self._directory_env = directory_env
    self._file_names = dict(file_names or {})

  @property
  def splits(self) -> List[str]:
    return list(self._files) if self._files is not None else list(self._file_names)

  def path(self, split: str) -> str:
    if self._files is not None:
      if split not in self._files:
        raise ValueError(f"No retrieval file for split {split!r}; have {sorted(self._files)}.")
      return self._files[split]
    directory = os.environ.get(self._directory_env, "")
    if not directory:
      raise FileNotFoundError(
          f"Set {self._directory_env} to the folder holding the retrieval JSON files.")
    return os.path.join(directory, self._file_names[split])

  def dataset_fn(self, split: str, shuffle_files: bool,
                 seed: Optional[int] = None) -> tf.data.Dataset:
    del shuffle_files, seed  # one file per split: nothing to shuffle at file level
    return retrieval_dataset(self.path(split))

