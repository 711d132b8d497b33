"""Offline test support: mocked TFDS datasets, hand-made examples, P3-format fixtures.

Real TFDS loading needs the network. `mock_tfds` writes the split metadata that
`seqio.TfdsDataSource` needs into a scratch directory and mocks TFDS on top of it, serving
either random examples or hand-made ones (to check exact processed text).
"""
import contextlib
import json
import os
import pathlib
import re
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking as tfds_mocking

from prompt_tuning.data import show
from prompt_tuning.data import vocabularies

Examples = Mapping[str, Mapping[str, Sequence[Mapping[str, Any]]]]


def fixture_vocab_path() -> str:
  """The real T5 SentencePiece model in the repository's test fixtures (`tests/fixtures/`)."""
  repo = pathlib.Path(__file__).resolve().parents[2]
  path = repo / "tests" / "fixtures" / "t5x_reference" / "t5_vocab"
  if not path.exists():
    raise FileNotFoundError(f"Fixture vocabulary not found at {path}; tests need a checkout.")
  return str(path)


def use_fixture_vocabulary() -> str:
  """Points both vocabulary kinds (T5, mT5) at the fixture model, before tasks register."""
  path = fixture_vocab_path()
  for kind in (vocabularies.T5, vocabularies.MT5):
    vocabularies.set_default_vocabulary_path(path, kind=kind)
  return path


# ------------------------------------------------------------------ TFDS


def _base_split(split: Any) -> str:
  return re.sub(r"\[.*\]$", "", str(split))


def _tfds_source(source: Any) -> Optional[seqio.TfdsDataSource]:
  # Few-shot sources wrap the TFDS source they draw train and eval examples from.
  while not isinstance(source, seqio.TfdsDataSource):
    source = getattr(source, "_original_source", None)
    if source is None:
      return None
  return source


def tfds_requirements(task_names: Optional[Iterable[str]] = None) -> Dict[str, Set[str]]:
  """TFDS name (with version) -> base split names read by the given (default: all) tasks."""
  names = seqio.TaskRegistry.names() if task_names is None else task_names
  needed: Dict[str, Set[str]] = {}
  for name in names:
    source = _tfds_source(seqio.TaskRegistry.get(name).source)
    if source is None:
      continue
    split_map = getattr(source.tfds_dataset, "_split_map", None) or {s: s for s in source.splits}
    needed.setdefault(source.tfds_dataset.name, set()).update(
        _base_split(s) for s in split_map.values())
  return needed


STATED_SPLIT_SIZE = 100_000


def write_tfds_metadata(
    data_dir: str,
    requirements: Mapping[str, Iterable[str]],
    *,
    split_sizes: Optional[Mapping[str, Mapping[str, int]]] = None,
) -> None:
  """Writes `dataset_info.json` (with split sizes) for each TFDS name, without any data.

  The stated sizes (default `STATED_SPLIT_SIZE`, or `split_sizes[tfds_name][split]`) are
  what split slicing and examples-proportional mixing rates see; they are large enough for
  slices such as `train[-8757:]`, whatever number of examples the mock then serves.
  Metadata already in `data_dir` is kept, so one directory can serve a whole test session.
  """
  split_sizes = split_sizes or {}
  for tfds_name, splits in requirements.items():
    sizes = split_sizes.get(tfds_name, {})
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    # Not `builder.data_dir`: inside an active TFDS mock it points at the mock's directory.
    target = os.path.join(data_dir, builder.info.full_name)
    if os.path.exists(os.path.join(target, "dataset_info.json")):
      continue  # written by an earlier call on this directory
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(
            name=s, shard_lengths=[sizes.get(s, STATED_SPLIT_SIZE)], num_bytes=0)
        for s in sorted(splits)
    ]))
    os.makedirs(target, exist_ok=True)
    builder.info.write_to_directory(target)


def _builder_key(builder: tfds.core.DatasetBuilder) -> str:
  config = builder.builder_config
  return f"{builder.name}/{config.name}" if config else builder.name


def _to_spec(value: Any, spec: Any) -> Any:
  if isinstance(spec, dict):
    missing = sorted(set(spec) - set(value))
    if missing:
      raise ValueError(f"Hand-made example lacks feature(s) {missing}; it has {sorted(value)}.")
    return {k: _to_spec(value[k], s) for k, s in spec.items()}
  if spec.dtype == tf.string:
    encode = lambda v: v.encode("utf-8") if isinstance(v, str) else v
    if spec.shape.rank == 0:
      return encode(value)
    return np.array([encode(v) for v in value], dtype=object)
  return np.asarray(value, dtype=spec.dtype.as_numpy_dtype)


def _to_tensors(row: Any, specs: Any) -> Any:
  """Tensors of the spec's dtypes (an empty list would otherwise become float32)."""
  return tf.nest.map_structure(
      lambda value, spec: tf.constant(value, dtype=spec.dtype), row, specs)


def _make_as_dataset(examples: Examples, num_examples: int):
  """A `FileReaderBuilder._as_dataset` replacement serving hand-made or random examples."""

  def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
    del decoders, read_config, shuffle_files, kwargs
    features = self.info.features
    specs = tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.tf_dtype), features.get_tensor_info())
    key = _builder_key(self)
    if key in examples:
      rows = [_to_spec(ex, specs) for ex in examples[key].get(_base_split(split), [])]
    else:
      rows = list(tfds_mocking.RandomFakeGenerator(features, num_examples))
    # Chained `from_tensors` builds much faster than `from_generator` (no Python op).
    if not rows:
      filler = next(iter(tfds_mocking.RandomFakeGenerator(features, 1)))
      return tf.data.Dataset.from_tensors(_to_tensors(filler, specs)).take(0)
    dataset = tf.data.Dataset.from_tensors(_to_tensors(rows[0], specs))
    for row in rows[1:]:
      dataset = dataset.concatenate(tf.data.Dataset.from_tensors(_to_tensors(row, specs)))
    return dataset

  return as_dataset


_MOCK_ACTIVE = False


@contextlib.contextmanager
def mock_tfds(
    data_dir: str,
    *,
    examples: Optional[Examples] = None,
    num_examples: int = 3,
    task_names: Optional[Iterable[str]] = None,
    split_sizes: Optional[Mapping[str, Mapping[str, int]]] = None,
) -> Iterator[None]:
  """Serves every TFDS dataset the tasks read from memory instead of the network.

  Args:
    data_dir: scratch directory for the split metadata.
    examples: `{"super_glue/rte": {"validation": [example, ...]}}` hand-made examples
      (TFDS feature layout); datasets not listed get `num_examples` random examples.
    num_examples: random examples per split for datasets without hand-made ones.
    task_names: tasks whose TFDS datasets to describe (default: every registered task).
    split_sizes: stated split sizes, see `write_tfds_metadata`.
  """
  global _MOCK_ACTIVE
  if _MOCK_ACTIVE:
    # TFDS mocks do not nest: the inner one would still read the outer one's metadata.
    raise RuntimeError("mock_tfds is already active; leave it before entering another.")
  write_tfds_metadata(data_dir, tfds_requirements(task_names), split_sizes=split_sizes)
  # seqio memoises builders, which hold their data_dir; start and end with a clean slate.
  seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  _MOCK_ACTIVE = True
  try:
    with tfds.testing.mock_data(
        num_examples=num_examples,
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=data_dir,
        as_dataset_fn=_make_as_dataset(examples or {}, num_examples),
    ):
      yield
  finally:
    _MOCK_ACTIVE = False
    seqio.utils.LazyTfdsLoader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access


def process(
    task_name: str,
    *,
    split: str,
    sequence_length: Optional[Mapping[str, int]] = None,
    num_examples: Optional[int] = None,
    seed: int = 0,
) -> List[Dict[str, Any]]:
  """The task's processed examples as Python values (text decoded to `str`)."""
  task = seqio.get_mixture_or_task(task_name)
  ds = task.get_dataset(sequence_length=sequence_length, split=split, shuffle=False, seed=seed)
  if num_examples is not None:
    ds = ds.take(num_examples)
  return [_decode(ex) for ex in show.inspection_view(ds).as_numpy_iterator()]



def _decode(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _decode(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, np.ndarray) and value.dtype == object:
    return [_decode(v) for v in value.tolist()]
  return value


# ------------------------------------------------------------------ P3 files


def _p3_feature(value: Any) -> tf.train.Feature:
  values = np.asarray(value).reshape(-1)
  if values.dtype.kind in "OSU":
    data = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values.tolist()]
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
  if values.dtype.kind == "f":
    return tf.train.Feature(float_list=tf.train.FloatList(value=values.tolist()))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values.astype(np.int64).tolist()))


def _p3_spec(value: Any) -> Dict[str, Any]:
  array = np.asarray(value)
  if array.dtype.kind in "OSU":
    dtype = "string"
  elif array.dtype.kind == "f":
    dtype = "float32"
  elif array.dtype.kind == "b":
    dtype = "bool"
  else:
    dtype = "int32"
  shape = [] if array.ndim == 0 else [None] + list(array.shape[1:])
  if array.ndim == 1 and dtype != "string" and not isinstance(value, list):
    shape = list(array.shape)  # fixed-size vectors such as score-eval `idx` [2]
  return {"dtype": dtype, "shape": shape}


def write_p3_task(
    directory: str,
    split_examples: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    stated_examples: Optional[Mapping[str, int]] = None,
) -> None:
  """Writes one P3 `dataset_template` folder as published: TFRecords plus info/stats JSON.

  Values given as Python lists are variable-length features (token ids, answer choices);
  numpy arrays are fixed-size (score-eval `idx`). `stated_examples` overrides the example
  count written to `stats.{split}.json`, so mixture rates of huge datasets can be tested
  with a handful of records.
  """
  stated_examples = stated_examples or {}
  os.makedirs(directory, exist_ok=True)
  for split, rows in split_examples.items():
    path = os.path.join(directory, f"{split}.tfrecord-00000-of-00001")
    with tf.io.TFRecordWriter(path) as writer:
      for row in rows:
        feature = {k: _p3_feature(v) for k, v in row.items()}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writer.write(example.SerializeToString())
    info = {"features": {k: _p3_spec(v) for k, v in rows[0].items()}, "num_shards": 1,
            "seqio_version": seqio.__version__}
    with open(os.path.join(directory, f"info.{split}.json"), "w") as f:
      json.dump(info, f)
    with open(os.path.join(directory, f"stats.{split}.json"), "w") as f:
      json.dump({"examples": stated_examples.get(split, len(rows))}, f)


# ------------------------------------------------------------------ scoring


def score_predictions(
    task_name: str,
    examples: Sequence[Mapping[str, Any]],
    *,
    predictions: Optional[Sequence[str]] = None,
    scores: Optional[Sequence[float]] = None,
) -> Dict[str, float]:
  """A task's metrics on given predictions (or scores), through its own postprocessor.

  Targets are taken from `targets_pretokenized`, as seqio's evaluator does.
  """
  task = seqio.get_mixture_or_task(task_name)
  targets = [task.postprocess_fn(ex["targets_pretokenized"], example=ex, is_target=True)
             for ex in examples]
  results: Dict[str, float] = {}
  if predictions is not None:
    outputs = [task.postprocess_fn(p, example=ex, is_target=False)
               for p, ex in zip(predictions, examples)]
    for metric_fn in task.predict_metric_fns:
      results.update(metric_fn(targets, outputs))
  if scores is not None:
    for metric_fn in task.score_metric_fns:
      results.update(metric_fn(targets, list(scores)))
  return results
