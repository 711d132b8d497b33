"""SeqIO datasets as per-host numpy batches: what the trainer and evaluator feed the model.

Each host reads its own shard of the examples (`partitioning.host_data_shard`) and batches its
share of the global batch; `partitioning.host_local_to_global` then joins the hosts' rows into
one global array. Training data repeats forever and, for resumption, can start at any batch
index: a run that stopped after consuming `data_position` batches continues with batch
`data_position` of the same (seeded, deterministic) stream.

Feature converters follow the model: an encoder-decoder reads `encoder_input_tokens` and
`decoder_*` features (`seqio.EncDecFeatureConverter`); a decoder-only model reads the inputs and
targets concatenated, with `decoder_causal_attention` marking the inputs
(`seqio.PrefixLMFeatureConverter`, or `sequence_start.StartTokenPrefixLMConverter` for models
with their own BOS). Packing is not supported by the model wrappers.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Dict, Iterator, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from prompt_tuning.engine.partitioning import DataShard

Batch = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
  """Which SeqIO data a run reads, and how.

  Attributes:
    mixture_or_task_name: a registered SeqIO task or mixture.
    task_feature_lengths: e.g. `{'inputs': 512, 'targets': 16}`; longer examples are trimmed.
    split: the split to read ('train', 'validation', ...).
    batch_size: the GLOBAL batch size, summed over all hosts.
    shuffle: shuffle the examples (training); evaluation reads them in order.
    seed: shuffle seed. A fixed seed makes the stream reproducible, which exact resumption
      relies on.
    use_cached: read the cached (preprocessed offline) version of the task.
    module: a Python module to import first, for its task registrations.
  """

  mixture_or_task_name: str
  task_feature_lengths: Mapping[str, int]
  split: str
  batch_size: int
  shuffle: bool = True
  seed: Optional[int] = 42
  use_cached: bool = False
  module: Optional[str] = None

  def __post_init__(self):
    if self.batch_size < 1:
      raise ValueError(f"DatasetConfig.batch_size must be positive, got {self.batch_size}.")
    if not self.task_feature_lengths:
      raise ValueError("DatasetConfig.task_feature_lengths must name at least one feature.")


def get_mixture_or_task(config: DatasetConfig):
  """The registered task or mixture, after importing `config.module`."""
  module = None
  if config.module:
    try:
      module = importlib.import_module(config.module)
    except ImportError as error:
      raise ValueError(f"Cannot import task module {config.module!r}: {error}.") from None
  name = config.mixture_or_task_name
  if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
    # A task module may know why one of its tasks is missing (e.g. an unset tokenizer).
    explain = getattr(module, "unregistered_task_message", None)
    message = explain(name) if callable(explain) else None
    if message:
      raise ValueError(message)
    raise ValueError(
        f"Unknown SeqIO task or mixture {name!r}; register it (e.g. set the dataset config's "
        "module to the Python module that registers it) before training.")
  return seqio.get_mixture_or_task(name)


def feature_converter_for(model: Any) -> seqio.FeatureConverter:
  """The feature converter whose output features the model wrapper reads (its protocol)."""
  return model.feature_converter()


def model_feature_lengths(model: Any, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
  """Model-side lengths: encoder/decoder for T5, inputs + targets for a decoder-only model."""
  return dict(model.model_feature_lengths(task_feature_lengths))


class HookInputConverter(seqio.FeatureConverter):
  """A model's feature converter that also carries the input hook's side inputs.

  seqio passes extra features through only as padded 1-D sequences, so each declared hook
  input travels flattened to its per-example element count (a scalar id as `[1]`, a `[T, H]`
  feature as `[T * H]`); the model wrapper restores the declared shape. Lengths of hook inputs
  come from the declarations (or, for `None` dimensions, from `task_feature_lengths`), so
  callers pass only the task's own feature lengths, as for any converter; lengths of features
  the model does not read are ignored. An example that lacks a declared input is an error
  naming it.
  """

  def __init__(self, base_cls: type, hook_inputs: Sequence[Any], **kwargs):
    self._hook_inputs = tuple(hook_inputs)
    passthrough = {spec.name: seqio.FeatureConverter.FeatureSpec(dtype=tf.as_dtype(spec.dtype))
                   for spec in self._hook_inputs}
    self._base = base_cls(pack=False, passthrough_features=passthrough, **kwargs)
    self.TASK_FEATURES = self._base.TASK_FEATURES  # pylint: disable=invalid-name
    self.MODEL_FEATURES = self._base.MODEL_FEATURES  # pylint: disable=invalid-name
    self.PACKING_FEATURE_DTYPES = self._base.PACKING_FEATURE_DTYPES  # pylint: disable=invalid-name
    super().__init__(pack=False, passthrough_features=passthrough)

  def _lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    # Lengths of features the model does not read (e.g. a task's extra output feature that
    # another model's hook uses; seqio's Evaluator gives every output feature one) are dropped.
    lengths = {k: v for k, v in task_feature_lengths.items() if k in self._base.TASK_FEATURES}
    for spec in self._hook_inputs:
      lengths[spec.name] = spec.flat_length(task_feature_lengths)
    return lengths

  def __call__(self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]):
    names = [spec.name for spec in self._hook_inputs]
    absent = [name for name in names if name not in ds.element_spec]
    if absent:
      raise ValueError(f"The task's examples lack the hook input {absent[0]!r} that the model "
                       f"declares; they have {sorted(ds.element_spec)}.")

    def flatten(example):
      return {k: tf.reshape(v, [-1]) if k in names else v for k, v in example.items()}

    return self._base(ds.map(flatten), self._lengths(task_feature_lengths))

  def _convert_features(self, ds, task_feature_lengths):
    return self._base._convert_features(ds, task_feature_lengths)  # pylint: disable=protected-access

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Dict[str, int]:
    return self._base.get_model_feature_lengths(self._lengths(task_feature_lengths))


def local_batch_size(global_batch_size: int, shard: DataShard) -> int:
  """This host's rows of the global batch."""
  if global_batch_size % shard.num_shards:
    raise ValueError(
        f"Batch size {global_batch_size} does not divide over {shard.num_shards} data shards "
        "(hosts reading distinct examples).")
  return global_batch_size // shard.num_shards


def _as_numpy(batch: Mapping[str, Any]) -> Batch:
  return {key: np.asarray(value) for key, value in batch.items()}


def train_batches(config: DatasetConfig, *, converter: seqio.FeatureConverter,
                  shard: DataShard, start_batch: int = 0) -> Iterator[Batch]:
  """Endless stream of this host's training batches, starting at batch `start_batch`.

  The stream is a pure function of the config and the shard, so skipping `start_batch`
  batches reproduces exactly what an uninterrupted run would have read next.
  """
  get_mixture_or_task(config)
  dataset = seqio.get_dataset(
      mixture_or_task_name=config.mixture_or_task_name,
      task_feature_lengths=dict(config.task_feature_lengths),
      dataset_split=config.split,
      shuffle=config.shuffle,
      num_epochs=None,  # repeat forever
      feature_converter=converter,
      shard_info=seqio.ShardInfo(index=shard.index, num_shards=shard.num_shards),
      use_cached=config.use_cached,
      seed=config.seed,
  )
  dataset = dataset.batch(local_batch_size(config.batch_size, shard), drop_remainder=True)
  if start_batch:
    dataset = dataset.skip(start_batch)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  for batch in dataset.as_numpy_iterator():
    yield _as_numpy(batch)


def pad_rows(batch: Batch, rows: int) -> Batch:
  """Pads every array of `batch` with zero rows up to `rows` (a ragged final eval batch)."""
  def pad(x):
    missing = rows - x.shape[0]
    if missing < 0:
      raise ValueError(f"Batch of {x.shape[0]} rows does not fit in {rows}.")
    return np.concatenate([x, np.zeros((missing,) + x.shape[1:], x.dtype)]) if missing else x
  return {key: pad(value) for key, value in batch.items()}


def host_rows(batch: Batch, shard: DataShard) -> Batch:
  """This host's contiguous share of a global batch that every host holds in full."""
  rows = next(iter(batch.values())).shape[0]
  local = local_batch_size(rows, shard)
  start = shard.index * local
  return {key: value[start:start + local] for key, value in batch.items()}


def eval_batches(dataset: tf.data.Dataset, *, batch_size: int,
                 model_keys: Optional[set] = None) -> Iterator[tuple]:
  """Global batches of a finite dataset, padded to `batch_size`, with their real row count.

  Yields `(batch, num_real_rows)`; `model_keys` keeps only the features the model reads.
  """
  for batch in dataset.batch(batch_size).as_numpy_iterator():
    batch = _as_numpy(batch)
    if model_keys is not None:
      batch = {k: v for k, v in batch.items() if k in model_keys}
    real = next(iter(batch.values())).shape[0]
    yield pad_rows(batch, batch_size), real
