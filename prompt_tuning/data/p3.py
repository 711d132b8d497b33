"""P3 (the prompted datasets T0 was trained on), read in the format it is published in.

The release holds one folder per (dataset, prompt template), named
`{dataset}_{subset}_{template}` (characters outside `[\\w.]` replaced by `_`), each with:

  {split}.tfrecord-00000-of-0000N   tf.train.Example records
  info.{split}.json                 {"features": {name: {"dtype", "shape"}}, "num_shards"}
  stats.{split}.json                {"examples": N, ...}

Features are `inputs`/`targets` (T5 token ids), `inputs_pretokenized`/`targets_pretokenized`
(text), `answer_choices` for classification templates, and, in `*_score_eval` folders (one
record per answer choice), `idx` ([example, choice]), `is_correct` and `weight`. The folder
tree may live locally or on GCS: every access goes through `tf.io.gfile`.
"""
import dataclasses
import functools
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import registry

SCORE_EVAL_SUFFIX = "_score_eval"
MAX_EXAMPLES_PER_DATASET = 500_000

Dataset = Tuple[str, Optional[str]]  # (dataset, subset) as named on the dataset hub

# T0's training datasets (the T0 paper, Table 5 / the released mixture definitions).
T0_TRAIN: Tuple[Dataset, ...] = (
    ("glue", "mrpc"), ("glue", "qqp"), ("paws", "labeled_final"), ("kilt_tasks", "hotpotqa"),
    ("wiki_qa", None), ("adversarial_qa", "dbidaf"), ("adversarial_qa", "dbert"),
    ("adversarial_qa", "droberta"), ("duorc", "SelfRC"), ("duorc", "ParaphraseRC"),
    ("ropes", None), ("quoref", None), ("cos_e", "v1.11"), ("cosmos_qa", None), ("dream", None),
    ("qasc", None), ("quail", None), ("quarel", None), ("quartz", None), ("sciq", None),
    ("social_i_qa", None), ("wiki_hop", "original"), ("wiqa", None), ("amazon_polarity", None),
    ("app_reviews", None), ("imdb", None), ("rotten_tomatoes", None), ("yelp_review_full", None),
    ("common_gen", None), ("wiki_bio", None), ("cnn_dailymail", "3.0.0"), ("gigaword", None),
    ("multi_news", None), ("samsum", None), ("xsum", None), ("ag_news", None),
    ("dbpedia_14", None), ("trec", None),
)
# T0+ adds the datasets GPT-3 was evaluated on.
T0_PLUS_EXTRA: Tuple[Dataset, ...] = (
    ("ai2_arc", "ARC-Challenge"), ("ai2_arc", "ARC-Easy"), ("trivia_qa", "unfiltered"),
    ("web_questions", None), ("squad_v2", None), ("openbookqa", "main"), ("race", "high"),
    ("race", "middle"), ("piqa", None), ("hellaswag", None),
)
# T0++ adds SuperGLUE, except the held-out NLI sets (RTE, CB).
T0_PLUS_PLUS_EXTRA: Tuple[Dataset, ...] = (
    ("super_glue", "wsc.fixed"), ("super_glue", "record"), ("super_glue", "boolq"),
    ("super_glue", "copa"), ("super_glue", "multirc"), ("super_glue", "wic"),
)
# Held out from T0's training; reported as the median over each dataset's templates.
T0_EVAL: Tuple[Dataset, ...] = (
    ("super_glue", "rte"), ("super_glue", "cb"), ("anli", None), ("super_glue", "wsc.fixed"),
    ("winogrande", "winogrande_xl"), ("super_glue", "copa"), ("story_cloze", "2016"),
    ("hellaswag", None), ("super_glue", "wic"),
)
MIXTURES: Mapping[str, Tuple[Dataset, ...]] = {
    "t0_train": T0_TRAIN,
    "t0plus_train": T0_TRAIN + T0_PLUS_EXTRA,
    "t0plusplus_train": T0_TRAIN + T0_PLUS_EXTRA + T0_PLUS_PLUS_EXTRA,
}


def dataset_key(dataset: Dataset) -> str:
  """The folder-name prefix of a dataset: `cos_e_v1.11`, `ai2_arc_ARC_Challenge`."""
  name, subset = dataset
  return registry.clean_name(name if subset is None else f"{name}_{subset}")


def is_score_eval(folder: str) -> bool:
  return folder.endswith(SCORE_EVAL_SUFFIX)


def dataset_of(folder: str, datasets: Sequence[Dataset]) -> Optional[str]:
  """The key of the dataset a template folder belongs to (longest matching prefix), if any.

  ANLI folders end in their round (`anli_GPT_3_style_r1`), and T0 reports the rounds as
  separate datasets, so they get the keys `anli_r1`, `anli_r2`, `anli_r3`.
  """
  best = None
  for dataset in datasets:
    key = dataset_key(dataset)
    if folder.startswith(key + "_") and (best is None or len(key) > len(best)):
      best = key
  if best == "anli":
    match = re.search(r"_(r[123])(?:" + SCORE_EVAL_SUFFIX + r")?$", folder)
    if match:
      best = f"anli_{match.group(1)}"
  return best


def t0_rate(dataset_examples: int, num_templates: int) -> int:
  """T0's mixing rate for each template of a dataset.

  A dataset's templates each get its number of training examples, except that a dataset
  over 500,000 examples counts as 500,000 shared among its templates.
  """
  if num_templates < 1:
    raise ValueError(f"A dataset needs at least one template, got {num_templates}.")
  if dataset_examples > MAX_EXAMPLES_PER_DATASET:
    return MAX_EXAMPLES_PER_DATASET // num_templates
  return dataset_examples


# ------------------------------------------------------------------ reading


def _read_json(path: str) -> Dict[str, Any]:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"P3 file {path} does not exist.")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _parse_spec(features: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
  """tf.io parsing spec from an info file; ints and bools are stored as int64."""
  spec = {}
  for name, desc in features.items():
    dtype, shape = desc["dtype"], list(desc["shape"])
    stored = tf.int64 if dtype in ("int32", "int64", "bool") else tf.as_dtype(dtype)
    if shape and shape[0] is None:
      spec[name] = tf.io.FixedLenSequenceFeature(shape[1:], stored, allow_missing=True)
    else:
      spec[name] = tf.io.FixedLenFeature(shape, stored)
  return spec


class P3Source(seqio.DataSource):
  """One P3 template folder. Nothing is read until a split is used."""

  def __init__(self, directory: str):
    self._directory = directory
    super().__init__(splits=())

  @property
  def directory(self) -> str:
    return self._directory

  @property
  def splits(self) -> Sequence[str]:
    return self._splits_on_disk()

  @functools.lru_cache(maxsize=None)
  def _splits_on_disk(self) -> Tuple[str, ...]:
    infos = tf.io.gfile.glob(os.path.join(self._directory, "info.*.json"))
    return tuple(sorted(os.path.basename(p)[len("info."):-len(".json")] for p in infos))

  @property
  def supports_arbitrary_sharding(self) -> bool:
    return False

  def _check_split(self, split: str) -> None:
    if split not in self.splits:
      raise ValueError(f"P3 folder {self._directory} has no split {split!r}; "
                       f"it has {list(self.splits)}.")

  @functools.lru_cache(maxsize=None)
  def info(self, split: str) -> Dict[str, Any]:
    self._check_split(split)
    return _read_json(os.path.join(self._directory, f"info.{split}.json"))

  @functools.lru_cache(maxsize=None)
  def num_input_examples(self, split: str) -> int:
    self._check_split(split)
    return int(_read_json(os.path.join(self._directory, f"stats.{split}.json"))["examples"])

  @functools.lru_cache(maxsize=None)
  def list_shards(self, split: str) -> Sequence[str]:
    self._check_split(split)
    pattern = os.path.join(self._directory, f"{split}.tfrecord-*-of-*")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
      raise FileNotFoundError(f"No TFRecord files match {pattern}.")
    return files

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info: Optional[seqio.ShardInfo] = None, *,
                  sequence_length: Optional[Mapping[str, int]] = None,
                  use_cached: bool = False, num_epochs: Optional[int] = 1) -> tf.data.Dataset:
    del sequence_length, use_cached, num_epochs
    features = self.info(split)["features"]
    spec = _parse_spec(features)
    files = list(self.list_shards(split))
    if shard_info and shard_info.num_shards > 1:
      files = files[shard_info.index::shard_info.num_shards]
    files_ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
      files_ds = files_ds.shuffle(len(files), seed=seed)
    ds = files_ds.interleave(tf.data.TFRecordDataset, num_parallel_calls=tf.data.AUTOTUNE)

    def parse(record):
      parsed = tf.io.parse_single_example(record, spec)
      return {k: tf.cast(v, features[k]["dtype"]) for k, v in parsed.items()}

    return ds.map(tf.autograph.experimental.do_not_convert(parse),
                  num_parallel_calls=tf.data.AUTOTUNE)


def list_template_folders(data_dir: str) -> List[str]:
  """Sorted names of the template folders (those holding at least one info file)."""
  if not tf.io.gfile.isdir(data_dir):
    raise FileNotFoundError(f"P3 data directory {data_dir} does not exist.")
  folders = []
  for entry in sorted(tf.io.gfile.listdir(data_dir)):
    name = entry.rstrip("/")
    if tf.io.gfile.glob(os.path.join(data_dir, name, "info.*.json")):
      folders.append(name)
  if not folders:
    raise FileNotFoundError(f"No P3 template folders (with info.*.json) in {data_dir}.")
  return folders


@dataclasses.dataclass
class TemplateGroup:
  """The training folders of one dataset, and the T0 rate each of them gets."""
  key: str
  sources: List[P3Source]

  @functools.cached_property
  def rate(self) -> int:
    # Templates may drop a few examples; the dataset's size is its largest template.
    examples = max(s.num_input_examples("train") for s in self.sources)
    return t0_rate(examples, len(self.sources))


def training_groups(folders: Sequence[str], sources: Mapping[str, P3Source],
                    datasets: Sequence[Dataset]) -> Dict[str, TemplateGroup]:
  """Dataset key -> its (non score-eval) template folders, for the given datasets."""
  groups: Dict[str, TemplateGroup] = {}
  for folder in folders:
    if is_score_eval(folder):
      continue
    key = dataset_of(folder, datasets)
    if key is not None:
      groups.setdefault(key, TemplateGroup(key, [])).sources.append(sources[folder])
  return groups
