"""What the methods' CPU demonstrations share: generated text tasks and a tiny base model.

Several demos (ProMoT's, SPoT's) run the same way: seqio tasks over digit strings generated in
memory (byte vocabulary, no files, exact-match accuracy), and a tiny `byte_t5_tiny` base trained
from scratch on them through the project's train entry point before the method itself runs.
The pieces live here once, so the demos' tasks and base runs cannot drift apart.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import seqio
import tensorflow as tf

from prompt_tuning.data import metrics

MODEL_GIN = "gin/models/byte_t5_tiny.gin"
VOCABULARY = seqio.ByteVocabulary()


def strip_text(text, example=None, is_target=False):
  """The tasks' postprocessor: decoded text without surrounding whitespace."""
  del example, is_target
  return text.strip() if isinstance(text, str) else text.decode("utf-8").strip()


def generated_source(generator: Callable[[str], Mapping[str, List[str]]],
                     sizes: Mapping[str, int]) -> seqio.DataSource:
  """A seqio source over `generator(split) -> {'inputs': [...], 'targets': [...]}`."""
  def dataset_fn(split: str, shuffle_files: bool = False, seed=None) -> tf.data.Dataset:
    del shuffle_files, seed  # one in-memory "file"; seqio shuffles examples itself
    return tf.data.Dataset.from_tensor_slices(generator(split))
  return seqio.FunctionDataSource(dataset_fn=dataset_fn, splits=tuple(sizes),
                                  num_input_examples=dict(sizes))


def text_task_kwargs() -> Dict[str, Any]:
  """`registry.add_task` arguments for a generated text task: byte features with EOS,
  tokenized, stripped predictions scored by accuracy."""
  features = {"inputs": seqio.Feature(vocabulary=VOCABULARY, add_eos=True),
              "targets": seqio.Feature(vocabulary=VOCABULARY, add_eos=True)}
  return dict(preprocessors=[seqio.preprocessors.tokenize,
                             seqio.preprocessors.append_eos_after_trim],
              output_features=features, postprocess_fn=strip_text, metric_fns=[metrics.accuracy])


def gin_args(files: Sequence[str], bindings: Mapping[str, object]) -> List[str]:
  """Entry-point argv: `--gin_file` per file, `--gin.KEY=VALUE` per binding (strings verbatim,
  other values as their repr, i.e. gin text as on the command line)."""
  text = lambda v: v if isinstance(v, str) else repr(v)
  return [f"--gin_file={f}" for f in files] + [f"--gin.{k}={text(v)}" for k, v in bindings.items()]


def run_bindings(model_dir: str, task: str, module: str, lengths: Mapping[str, int],
                 steps: int) -> Dict[str, object]:
  """The bindings of every demo run: its folder and task, `steps` steps with one checkpoint and
  one evaluation at the end, no dropout."""
  return {"MODEL_DIR": repr(model_dir), "MIXTURE_OR_TASK_NAME": repr(task),
          "TASK_MODULE": repr(module), "TASK_FEATURE_LENGTHS": dict(lengths),
          "TRAIN_STEPS": steps, "CHECKPOINT_PERIOD": steps, "EVAL_PERIOD": steps,
          "DROPOUT_RATE": 0.0}


def base_args(model_dir: str, *, task: str, module: str, lengths: Mapping[str, int],
              steps: int) -> List[str]:
  """The tiny base run: byte_t5_tiny from scratch on `task` (gin/runs/finetune.gin, Adam 3e-3)."""
  return gin_args([MODEL_GIN, "gin/runs/finetune.gin", "gin/runs/smoke.gin"], {
      **run_bindings(model_dir, task, module, lengths, steps), "INITIAL_CHECKPOINT_PATH": "None",
      "train.optimizer": "@optimizers.adam()", "optimizers.adam.learning_rate": 3e-3})


def train(args: Sequence[str]) -> Tuple[str, Dict[str, Any]]:
  """Runs the train entry point in this process: `(run folder, its train outputs)`."""
  from prompt_tuning import train as train_lib  # pylint: disable=g-import-not-at-top
  from prompt_tuning.pipelines import outputs  # pylint: disable=g-import-not-at-top
  result = train_lib.main(list(args))
  run_dir = os.path.dirname(result.checkpoint_dir.rstrip("/"))
  return run_dir, outputs.read("train", run_dir)
