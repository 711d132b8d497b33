"""Where a soft prompt starts from.

Each public function here builds an initializer: a callable `init(rng, shape, dtype)` in the
style of `jax.nn.initializers`, so a `Prompt` (shape `[P, H]`) or a `PromptTable`
(`[K, P, H]`, through `per_prompt` / `stack_initializers`) can take any of them.

The starting point matters for prompt tuning: prompts initialised from real token embeddings
(sampled vocabulary, class labels) train faster and more stably than random ones, and a prompt
learned elsewhere (a `.npy` file, another run's checkpoint) is how prompts are transferred.

Arrays that may be large and live elsewhere (the frozen model's embedding table, a checkpoint)
can be given either as an array or as a zero-argument loader, so nothing is read before an
initializer actually runs.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from prompt_tuning.engine.params import PROMPT_PATH
from prompt_tuning.prompts import npy_io

Shape = Tuple[int, ...]
Initializer = Callable[[jax.Array, Shape, Any], jax.Array]
ArrayOrLoader = Union[np.ndarray, jax.Array, Callable[[], Any]]
# A seqio-style vocabulary (anything with `.encode(text) -> list[int]`) or a bare encode function.
Vocabulary = Union[Any, Callable[[str], Sequence[int]]]

DEFAULT_POPULATION_SIZE = 5000


# ---------------------------------------------------------------------------------------------
# Small helpers shared by the initializers.


def _resolve(array_or_loader: ArrayOrLoader) -> np.ndarray:
  """Returns the array itself, or calls the loader that produces it."""
  if callable(array_or_loader) and not isinstance(array_or_loader, (np.ndarray, jax.Array)):
    array_or_loader = array_or_loader()
  return np.asarray(array_or_loader)


def _embedding_table(array_or_loader: ArrayOrLoader) -> np.ndarray:
  table = _resolve(array_or_loader)
  if table.ndim != 2:
    raise ValueError(f"The embedding table must be 2-D [vocab, embed], got shape {table.shape}.")
  return table


def _encode(vocabulary: Vocabulary, text: str) -> list:
  encode = vocabulary.encode if hasattr(vocabulary, "encode") else vocabulary
  return [int(i) for i in encode(text)]


def _check_prompt_shape(shape: Shape, table: np.ndarray, what: str,
                        embedding: ArrayOrLoader = None) -> None:
  if len(shape) != 2:
    raise ValueError(
        f"{what} initialises one [prompt_length, embed] prompt, got shape {tuple(shape)}; "
        "wrap it in per_prompt(...) for a prompt table.")
  if shape[1] != table.shape[1]:
    source = getattr(embedding, "source", None)
    where = f" of {source} (is it a checkpoint of this model?)" if source else ""
    raise ValueError(f"{what}: the prompt width {shape[1]} differs from the embedding width "
                     f"{table.shape[1]}{where}.")


# ---------------------------------------------------------------------------------------------
# Random and vocabulary-based initializers.


def random_uniform(scale: float = 0.5) -> Initializer:
  """U(-scale, scale) in every entry (scale 0.5 is the usual prompt-tuning choice)."""
  if scale <= 0:
    raise ValueError(f"random_uniform needs a positive scale, got {scale}.")

  def init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    return jax.random.uniform(rng, shape, dtype=dtype, minval=-scale, maxval=scale)

  return init


def sampled_vocabulary(
    embedding_table: ArrayOrLoader,
    population_size: int = DEFAULT_POPULATION_SIZE,
) -> Initializer:
  """Each prompt row is a distinct embedding drawn from the table's first `population_size` rows.

  SentencePiece vocabularies are roughly frequency-ordered, so the first rows are common tokens:
  a prompt built from them starts inside the region of embedding space the model knows well.
  Rows are drawn without replacement, so `prompt_length <= population_size` is required.
  """
  if population_size <= 0:
    raise ValueError(f"sampled_vocabulary needs a positive population_size, got {population_size}.")

  def init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    table = _embedding_table(embedding_table)
    _check_prompt_shape(shape, table, "sampled_vocabulary", embedding_table)
    if population_size > table.shape[0]:
      raise ValueError(
          f"sampled_vocabulary population_size {population_size} exceeds the embedding table's "
          f"{table.shape[0]} rows.")
    if shape[0] > population_size:
      raise ValueError(
          f"sampled_vocabulary cannot draw {shape[0]} distinct rows from a population of "
          f"{population_size}.")
    rows = jax.random.choice(rng, population_size, shape=(shape[0],), replace=False)
    return jnp.asarray(table[:population_size], dtype)[rows]

  return init


def class_labels(
    embedding_table: ArrayOrLoader,
    vocabulary: Vocabulary,
    labels: Sequence[str],
    fallback: Optional[Initializer] = None,
) -> Initializer:
  """The first rows hold the class labels; the remaining rows come from `fallback`.

  A label's row is the mean of the embeddings of its SentencePiece pieces (so a label that
  tokenises to several pieces still occupies one prompt row). Labels fill rows 0..len(labels)-1
  in the given order. `fallback` (default: `sampled_vocabulary` over the same table) is called
  for the full prompt shape and its first rows are then overwritten.
  """
  labels = list(labels)
  if not labels:
    raise ValueError("class_labels needs at least one label string.")

  def init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    table = _embedding_table(embedding_table)
    _check_prompt_shape(shape, table, "class_labels", embedding_table)
    if len(labels) > shape[0]:
      raise ValueError(
          f"class_labels got {len(labels)} labels but the prompt has only {shape[0]} rows.")
    label_rows = []
    for label in labels:
      ids = _encode(vocabulary, label)
      if not ids:
        raise ValueError(f"class_labels: the label {label!r} encodes to no tokens.")
      label_rows.append(table[np.asarray(ids)].astype(np.float32).mean(axis=0))
    fill = fallback if fallback is not None else sampled_vocabulary(table)
    prompt = fill(rng, shape, dtype)
    return prompt.at[:len(labels)].set(jnp.asarray(np.stack(label_rows), dtype))

  return init


def from_string(
    embedding_table: ArrayOrLoader,
    vocabulary: Vocabulary,
    text: str,
) -> Initializer:
  """The embeddings of `text`'s tokens, repeated cyclically (then truncated) to the prompt length.

  Row i holds the embedding of token `i mod n` of the n tokens of `text`: a short text is tiled,
  a text longer than the prompt keeps only its first `prompt_length` tokens.
  """

  def init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    del rng  # Deterministic.
    table = _embedding_table(embedding_table)
    _check_prompt_shape(shape, table, "from_string", embedding_table)
    ids = _encode(vocabulary, text)
    if not ids:
      raise ValueError(f"from_string: the text {text!r} encodes to no tokens.")
    rows = np.asarray(ids)[np.arange(shape[0]) % len(ids)]
    return jnp.asarray(table[rows], dtype)

  return init


# ---------------------------------------------------------------------------------------------
# Initializers from stored arrays.


def from_array(array: ArrayOrLoader, *, source: str = "the given array") -> Initializer:
  """Exactly `array` (cast to the parameter dtype); its shape must equal the parameter's.

  `source` names where the array came from, for the error message.
  """

  def init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    del rng  # Deterministic.
    value = _resolve(array)
    if tuple(value.shape) != tuple(shape):
      raise ValueError(
          f"The prompt from {source} has shape {tuple(value.shape)} but the parameter needs "
          f"{tuple(shape)}.")
    return jnp.asarray(value, dtype)

  return init


def from_npy(path: str) -> Initializer:
  """The prompt stored in a `.npy` file (any float dtype; cast to the parameter dtype).

  The file is read now, so a missing or unreadable file stops the run before any model is built.
  """
  path = os.fspath(path)
  return from_array(npy_io.load_array_npy(path), source=path)


def read_array(checkpoint_path: str, param_path: str) -> np.ndarray:
  """Reads the array `param_path` (e.g. the prompt variable) from a stored checkpoint.

  `.npy` files hold one array (param_path is ignored); `.npz` files are keyed by param_path;
  anything else (a T5X or orbax checkpoint directory) is read by the engine's checkpoint importer.
  """
  checkpoint_path = os.fspath(checkpoint_path)
  if checkpoint_path.endswith((".npy", ".npz")):
    if not os.path.isfile(checkpoint_path):
      raise FileNotFoundError(f"The checkpoint file {checkpoint_path} does not exist.")
    if checkpoint_path.endswith(".npy"):
      return npy_io.load_array_npy(checkpoint_path)
    arrays = npy_io.load_arrays_npz(checkpoint_path)
    if param_path not in arrays:
      raise ValueError(
          f"The checkpoint file {checkpoint_path} has no array {param_path!r}; it holds "
          f"{sorted(arrays)}.")
    return arrays[param_path]
  try:
    from prompt_tuning.engine import checkpoint_import  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
        f"Cannot read {checkpoint_path}: only .npy/.npz files are readable without the "
        f"checkpoint importer ({e}).") from e
  return np.asarray(checkpoint_import.read_checkpoint_array(checkpoint_path, param_path))


def checkpoint_array(checkpoint_path: Optional[str], param_path: str) -> Callable[[], np.ndarray]:
  """A zero-argument loader for one checkpoint array, read each time it is called.

  Pass it where an initializer takes an `ArrayOrLoader`, e.g. the frozen model's
  'token_embedder/embedding' for `sampled_vocabulary`, so nothing is read until init runs.
  Nothing is cached: an embedding table can be large, and an initializer runs once per run.
  A missing `checkpoint_path` is reported only if the loader is actually used (a configuration
  that restores its prompt never calls it).
  """

  def load() -> np.ndarray:
    if checkpoint_path is None:
      raise ValueError(
          f"Cannot read {param_path!r} for a prompt initializer: no checkpoint path was given "
          "(set INITIAL_CHECKPOINT_PATH).")
    return read_array(checkpoint_path, param_path)

  load.source = f"{param_path!r} in checkpoint {checkpoint_path}"
  return load


def from_checkpoint_variable(
    checkpoint_path: Optional[str] = None,
    param_path: str = PROMPT_PATH,
    read_array_fn: Optional[Callable[[str], Any]] = None,
) -> Initializer:
  """The value of one named variable of a checkpoint (prompt transfer between runs).

  Give either `checkpoint_path` (read with `read_array`) or `read_array_fn(param_path) -> array`
  for any other store. The array is read when the initializer first runs, and only once.
  """
  if (checkpoint_path is None) == (read_array_fn is None):
    raise ValueError(
        "from_checkpoint_variable needs exactly one of checkpoint_path and read_array_fn.")
  if read_array_fn is not None:
    loader = functools.lru_cache(maxsize=1)(functools.partial(read_array_fn, param_path))
    source = f"variable {param_path!r}"
  else:
    loader = functools.lru_cache(maxsize=1)(checkpoint_array(checkpoint_path, param_path))
    source = f"variable {param_path!r} of {checkpoint_path}"
  return from_array(loader, source=source)


# ---------------------------------------------------------------------------------------------
# Initializers for prompt tables [K, P, H].


def per_prompt(init: Initializer) -> Initializer:
  """Applies a [P, H] initializer to each of the K prompts of a table, each with its own rng."""

  def table_init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    if len(shape) < 1:
      raise ValueError(f"per_prompt needs a table shape [K, ...], got {tuple(shape)}.")
    rngs = jax.random.split(rng, shape[0])
    return jax.vmap(lambda r: init(r, tuple(shape[1:]), dtype))(rngs)

  return table_init


def stack_initializers(inits: Sequence[Initializer]) -> Initializer:
  """Prompt k of the table comes from `inits[k]` (e.g. K pretrained prompts for an ensemble)."""
  inits = list(inits)
  if not inits:
    raise ValueError("stack_initializers needs at least one initializer.")

  def table_init(rng: jax.Array, shape: Shape, dtype: Any = jnp.float32) -> jax.Array:
    if len(shape) < 1 or shape[0] != len(inits):
      raise ValueError(f"stack_initializers has {len(inits)} initializers but the table shape "
                       f"is {tuple(shape)}.")
    rngs = jax.random.split(rng, len(inits))
    return jnp.stack([init(r, tuple(shape[1:]), dtype) for init, r in zip(inits, rngs)])

  return table_init
