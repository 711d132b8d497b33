"""Refuses to resume a run with settings its checkpoints do not fit, before anything is restored.

A run writes its operative gin config to `<model_dir>/config.gin` (`gin_utils.
write_operative_config`). Resuming compares the new run's operative config with that file,
setting by setting (macros by name, bindings as `scope/configurable.parameter` with gin's short
configurable names), and sorts each changed setting into one of two kinds:

  kind     settings                                         why
  -------  -----------------------------------------------  ---------------------------------------
  unsound  train.model, network.*, models.EncoderDecoder-   parameter shapes / the function the
           Model.*, models.DecoderOnlyModel.*               checkpoint's prompt was trained for
  unsound  prompts.PromptHook.*, prompts.Prompt.*,          prompt shapes and placement
           prompts.PromptTable.* (except `initializer`)
  unsound  train.optimizer, optimizers.* (incl. schedules)  optimizer state layout / update rule
  unsound  train.max_grad_norm                              the update rule
  unsound  train.train_dataset_cfg and the training         the data position counts batches of
           dataset's DatasetConfig.* (task, lengths,        exactly this stream; another one
           batch size, split, shuffle, seed)                resumes silently at the wrong example
  unsound  train.random_seed, train.trainable_patterns      data order / which parameters train
  unsound  trainer.RestoreConfig.* (except `path`)          the frozen base the prompt fits
  unsound  anything else                                    not known to be safe
  safe     train.total_steps, eval_period, eval_steps,      when to stop, evaluate, log; the
           log_period, infer_eval_examples,                 training trajectory is unchanged
           decoder_params, run_eval_before_training,
           train_eval_dataset_cfg, infer_eval_dataset_cfg,
           model_dir, summarize_config_fn, learning_rate_fn
  safe     train.num_microbatches                           the same batch, accumulated in parts
  safe     trainer.CheckpointConfig.*                       how often / how many checkpoints
  safe     partitioning.MeshConfig.*                        orbax restores into any layout
  safe     DatasetConfig.* of other scopes (evaluation      not the training stream
           data), DatasetConfig.use_cached / .module
  safe     prompt_init.*, *.initializer                     used only to initialise step 0
  safe     models.DecoderParams.*                           decoding for evaluation only
  safe     trainer.RestoreConfig.path                       compared by `trainer.check_same_base`

A changed macro takes the kind of the settings that use it: `BATCH_SIZE` is unsound when the
training dataset uses it, even if the validation dataset does too. Settings present on only one
side are not compared: their effect shows in a setting present on both (e.g. switching
`train.optimizer` from adafactor to adam adds `adam.*` and drops `adafactor.*`), and it keeps
configurables that happen to be called at different times from reading as changes.

Library modules do not configure gin; this one only parses config text with gin's own parser.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from gin import config_parser

from prompt_tuning.engine import checkpoint_integrity

CONFIG_FILE = "config.gin"  # gin_utils.OPERATIVE_CONFIG_FILE (not imported: it imports gin setup)
UNSOUND, SAFE = "unsound", "safe"

# (pattern over 'scope/Configurable.parameter', kind, why); first match wins.
_RULES: Tuple[Tuple[str, str, str], ...] = (
    ("RestoreConfig.path", SAFE, "compared separately"),
    ("RestoreConfig.*", UNSOUND, "the frozen base"),
    ("CheckpointConfig.*", SAFE, "checkpointing"),
    ("MeshConfig.*", SAFE, "device layout"),
    ("DecoderParams.*", SAFE, "decoding"),
    ("*.initializer", SAFE, "initialisation only"),
    ("random_uniform.*", SAFE, "initialisation only"),
    ("sampled_vocabulary.*", SAFE, "initialisation only"),
    ("class_labels.*", SAFE, "initialisation only"),
    ("from_string.*", SAFE, "initialisation only"),
    ("from_npy.*", SAFE, "initialisation only"),
    ("from_checkpoint_variable.*", SAFE, "initialisation only"),
    ("checkpoint_array.*", SAFE, "initialisation only"),
    ("per_prompt.*", SAFE, "initialisation only"),
    ("stack_initializers.*", SAFE, "initialisation only"),
    ("train.total_steps", SAFE, "when to stop"),
    ("train.eval_period", SAFE, "evaluation"),
    ("train.eval_steps", SAFE, "evaluation"),
    ("train.log_period", SAFE, "logging"),
    ("train.infer_eval_examples", SAFE, "evaluation"),
    ("train.decoder_params", SAFE, "evaluation"),
    ("train.run_eval_before_training", SAFE, "evaluation"),
    ("train.train_eval_dataset_cfg", SAFE, "evaluation"),
    ("train.infer_eval_dataset_cfg", SAFE, "evaluation"),
    ("train.model_dir", SAFE, "the same run"),
    ("train.summarize_config_fn", SAFE, "reporting"),
    ("train.learning_rate_fn", SAFE, "reporting"),
    ("train.num_microbatches", SAFE, "the same batches"),
    ("train.checkpoint_cfg", SAFE, "checkpointing"),
    ("train.mesh_config", SAFE, "device layout"),
    ("train.model", UNSOUND, "model shapes"),
    ("train.optimizer", UNSOUND, "optimizer"),
    ("train.max_grad_norm", UNSOUND, "update rule"),
    ("train.train_dataset_cfg", UNSOUND, "training data"),
    ("train.random_seed", UNSOUND, "seed"),
    ("train.trainable_patterns", UNSOUND, "trainable parameters"),
    ("train.restore_cfg", UNSOUND, "the frozen base"),
    ("*DatasetConfig.use_cached", SAFE, "the same data"),
    ("*DatasetConfig.module", SAFE, "where the task is registered"),
    ("PromptHook.*", UNSOUND, "prompt shapes"),
    ("Prompt.*", UNSOUND, "prompt shapes"),
    ("PromptTable.*", UNSOUND, "prompt shapes"),
    ("adafactor.*", UNSOUND, "optimizer"),
    ("adam.*", UNSOUND, "optimizer"),
    ("adamw.*", UNSOUND, "optimizer"),
    ("constant.*", UNSOUND, "learning rate schedule"),
    ("linear_warmup.*", UNSOUND, "learning rate schedule"),
    ("rsqrt_decay.*", UNSOUND, "learning rate schedule"),
    ("cosine_decay.*", UNSOUND, "learning rate schedule"),
    ("*", UNSOUND, "not known to be safe"),
)


class ResumeConfigError(ValueError):
  """The new run's settings differ from its checkpoints' in ways resuming cannot honour."""


@dataclasses.dataclass(frozen=True)
class _Reference:
  name: str
  evaluate: bool

  def __repr__(self) -> str:
    return f"@{self.name}" + ("()" if self.evaluate else "")


@dataclasses.dataclass(frozen=True)
class _Macro:
  name: str

  def __repr__(self) -> str:
    return f"%{self.name}"


class _Delegate(config_parser.ParserDelegate):

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return _Reference(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return _Macro(macro_name)


@dataclasses.dataclass(frozen=True)
class Change:
  """One setting whose value differs between the saved and the new config."""

  name: str
  old: Any
  new: Any
  kind: str
  why: str

  def __str__(self) -> str:
    return f"{self.name} ({self.old!r} -> {self.new!r})"


def parse_config(text: str) -> Dict[str, Any]:
  """Operative gin config text -> {'MACRO' or 'scope/Configurable.parameter': parsed value}.

  Raises:
    ValueError: the text is not gin config syntax.
  """
  settings = {}
  for statement in config_parser.ConfigParser(text, _Delegate()):
    if not isinstance(statement, config_parser.BindingStatement):
      continue  # imports / includes
    name = statement.selector.rsplit(".", 1)[-1]  # gin's short name: 'adafactor', not module
    if statement.arg_name:
      name = f"{name}.{statement.arg_name}"
    settings[f"{statement.scope}/{name}" if statement.scope else name] = statement.value
  return settings


def _macros_in(value: Any) -> List[str]:
  if isinstance(value, _Macro):
    return [value.name]
  if isinstance(value, dict):
    return [m for k, v in value.items() for m in _macros_in(k) + _macros_in(v)]
  if isinstance(value, (list, tuple)):
    return [m for v in value for m in _macros_in(v)]
  return []


def _training_dataset_scope(settings: Dict[str, Any]) -> Optional[str]:
  reference = settings.get("train.train_dataset_cfg")
  if isinstance(reference, _Reference) and "/" in reference.name:
    return reference.name.rsplit("/", 1)[0]
  return "" if isinstance(reference, _Reference) else None


def _classify_binding(name: str, train_scope: Optional[str]) -> Tuple[str, str]:
  scope, _, unscoped = name.rpartition("/")
  if unscoped.startswith("DatasetConfig.") and not unscoped.endswith((".use_cached", ".module")):
    if scope == train_scope:
      return UNSOUND, "training data"
    return SAFE, "evaluation data"
  for pattern, kind, why in _RULES:
    if fnmatch.fnmatchcase(unscoped, pattern) or fnmatch.fnmatchcase(name, pattern):
      return kind, why
  return UNSOUND, "not known to be safe"


def compare(saved: Dict[str, Any], new: Dict[str, Any],
            allow: Sequence[str] = ()) -> List[Change]:
  """The settings present in both configs whose values differ, classified (see module doc).

  `allow` lists setting names (macros or bindings, fnmatch patterns) to treat as safe anyway.
  """
  train_scope = _training_dataset_scope(new)
  binding_kinds = {n: _classify_binding(n, train_scope) for n in new if "." in n}
  users: Dict[str, List[str]] = {}  # macro -> the bindings (or macros) whose value names it
  for name, value in new.items():
    for macro in _macros_in(value):
      users.setdefault(macro, []).append(name)

  def macro_kind(macro: str, seen=()) -> Tuple[str, str]:
    kinds = []
    for user in users.get(macro, []):
      if user in seen:
        continue
      kinds.append(binding_kinds[user] if user in binding_kinds
                   else macro_kind(user, (*seen, macro)))
    unsound = [why for kind, why in kinds if kind == UNSOUND]
    if unsound:
      return UNSOUND, unsound[0]
    return SAFE, kinds[0][1] if kinds else "unused"

  changes = []
  for name in sorted(set(saved) & set(new)):
    if saved[name] == new[name]:
      continue
    kind, why = binding_kinds[name] if name in binding_kinds else macro_kind(name)
    if kind == UNSOUND and any(fnmatch.fnmatchcase(name, p) for p in allow):
      kind, why = SAFE, "allowed explicitly"
    changes.append(Change(name, saved[name], new[name], kind, why))
  return changes


def check_resume_config(*, model_dir: str, new_config: str,
                        allow: Sequence[str] = ()) -> List[Change]:
  """Stops a resumed run whose settings do not fit its checkpoints; logs the safe changes.

  Call it before the run writes its own `config.gin` (which replaces the saved one) and before
  anything is restored. A model dir without checkpoint steps is a fresh start: nothing to check.

  Args:
    model_dir: the run's directory (`config.gin` and `checkpoints/` inside).
    new_config: the new run's operative config text (`gin.operative_config_str()`).
    allow: setting names or fnmatch patterns to accept as changed anyway.

  Returns:
    The changed settings (all safe, or allowed).

  Raises:
    ResumeConfigError: one sentence listing each unsound change with old and new values.
  """
  directory = os.path.join(model_dir, "checkpoints")
  if not os.path.isdir(directory) or not checkpoint_integrity.step_folders(directory):
    return []
  path = os.path.join(model_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    logging.warning("No %s in %s to compare this run's settings with; resuming unchecked.",
                    CONFIG_FILE, model_dir)
    return []
  with open(path) as f:
    saved_text = f.read()
  try:
    saved = parse_config(saved_text)
  except (ValueError, SyntaxError) as error:
    raise ResumeConfigError(f"The saved settings {path} do not parse as gin ({error}); restore "
                            "the file or use a new model_dir.") from None
  changes = compare(saved, parse_config(new_config), allow)
  unsound = [c for c in changes if c.kind == UNSOUND]
  if unsound:
    listed = "; ".join(f"{c} [{c.why}]" for c in unsound)
    raise ResumeConfigError(
        f"The checkpoints in {model_dir} were trained with other settings that resuming cannot "
        f"honour: {listed}; restore those values, or use a new model_dir to start afresh.")
  if changes:
    logging.info("Resuming %s with changed settings that are safe to change: %s.", model_dir,
                 ", ".join(str(c) for c in changes))
  return changes
