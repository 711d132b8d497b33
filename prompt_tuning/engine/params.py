"""Parameter groups: what each part of a model's parameter tree is, in one record.

Every method of this project is a statement about groups of parameters: prompt tuning trains
the input hook's prompt and freezes the rest; a two-stage method freezes a prompt read from an
earlier run and trains the model; an input-dependent prompt generator trains its queries and
projection but keeps a small encoder frozen, restored from its own checkpoint. A `ParamGroup`
says, for the leaves its regex selects ('/'-joined paths such as 'encoder/layers_0/mlp/wo/kernel'):

  * trainable or frozen;
  * where its values come from (`FromBase`: the run's base checkpoint; `FromCheckpoint`: any
    other checkpoint the importer reads, including a step folder of this project, with an
    optional path-prefix mapping; `FromNpy`: a `.npy` (one leaf) or `.npz` (keyed by path);
    `FromInit`: the module's initialisers);
  * how it is exported ('prompt': `.npy` files and a PEFT adapter; 'npz' / 'safetensors': the
    group's leaves keyed by path, which `FromNpy` / `FromCheckpoint` read back);
  * its own optimizer, where it needs settings other than the run's.

`resolve` assigns every leaf to exactly one group: a leaf matched by two groups, or by none when
no group takes "the rest" (`pattern=None`), is an error naming the leaf, as is a group whose
pattern matches nothing. This module is the only place that knows where a model keeps its input
hook; everything else asks it.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

# The input hook's variable scope. Prompt providers keep their variables directly under it
# (`prompt`, `prompt_table`, a generator's submodules); see prompts/hooks.py.
HOOK_SCOPE = "input_hook"
HOOK_PATTERN = r"^input_hook/"
PROMPT_PATH = "input_hook/prompt"  # a single soft prompt [P, H] (the PEFT export's source)
EVERYTHING = r".*"
EXPORT_KINDS = ("prompt", "npz", "safetensors")


def is_hook_path(path: str) -> bool:
  """Whether a '/'-joined parameter path belongs to the input hook."""
  return re.search(HOOK_PATTERN, path) is not None


# ------------------------------------------------------------------------------------------------
# Sources.


@dataclasses.dataclass(frozen=True)
class FromBase:
  """Values from the run's base checkpoint (`RestoreConfig.path`).

  Attributes:
    allow_missing: regex of leaves the base may lack; they come from their initialisers
      instead of being an error (the prompt of a prompt-tuning run: a base model has none).
      Without a base checkpoint (training from scratch) every leaf is initialised.
  """

  allow_missing: Optional[str] = None

  def may_lack(self, path: str) -> bool:
    return self.allow_missing is not None and re.search(self.allow_missing, path) is not None

  def describe(self) -> Dict[str, Any]:
    return {"kind": "base", "allow_missing": self.allow_missing}


@dataclasses.dataclass(frozen=True)
class FromInit:
  """Values from the module's initialisers (e.g. a prompt initialiser, random weights)."""

  def describe(self) -> Dict[str, Any]:
    return {"kind": "init"}


@dataclasses.dataclass(frozen=True)
class FromCheckpoint:
  """Values from another checkpoint: T5X, orbax, Hugging Face, or a step folder of a run.

  Attributes:
    path: the checkpoint; a run's model dir or its `checkpoints/` folder means its latest
      complete step.
    format: 'auto', 't5x', 'orbax' or 'hf'.
    prefix_map: `(ours, theirs)` path-prefix pairs: our leaf 'ours...' is read as 'theirs...'
      (e.g. `(('input_hook/encoder/', 'encoder/'),)` reads a generator's encoder from a T5
      checkpoint). Leaves no pair matches are read under their own names.
    dtype: cast floating-point values to this dtype while reading (None: exact dtypes).
  """

  path: str
  format: str = "auto"
  prefix_map: Tuple[Tuple[str, str], ...] = ()
  dtype: Optional[str] = None

  def __post_init__(self):
    pairs = tuple(tuple(pair) for pair in self.prefix_map)
    if any(len(pair) != 2 for pair in pairs):
      raise ValueError(f"FromCheckpoint.prefix_map must hold (ours, theirs) pairs, got "
                       f"{self.prefix_map!r}.")
    object.__setattr__(self, "prefix_map", pairs)

  def source_name(self, path: str) -> str:
    """The checkpoint's name for our leaf `path`."""
    for ours, theirs in self.prefix_map:
      if path.startswith(ours):
        return theirs + path[len(ours):]
    return path

  def describe(self) -> Dict[str, Any]:
    return {"kind": "checkpoint", "path": self.path, "format": self.format,
            "prefix_map": [list(p) for p in self.prefix_map], "dtype": self.dtype}


@dataclasses.dataclass(frozen=True)
class FromNpy:
  """Values from a `.npy` file (a group of exactly one leaf) or an `.npz` keyed by leaf path."""

  path: str

  def describe(self) -> Dict[str, Any]:
    return {"kind": "npy", "path": self.path}


Source = Union[FromBase, FromInit, FromCheckpoint, FromNpy]


def source_from_record(record: Mapping[str, Any]) -> Source:
  """The inverse of `Source.describe()` (run records store sources as JSON)."""
  kind = record.get("kind")
  if kind == "base":
    return FromBase(allow_missing=record.get("allow_missing"))
  if kind == "init":
    return FromInit()
  if kind == "checkpoint":
    return FromCheckpoint(path=record["path"], format=record.get("format", "auto"),
                          prefix_map=tuple(tuple(p) for p in record.get("prefix_map", ())),
                          dtype=record.get("dtype"))
  if kind == "npy":
    return FromNpy(path=record["path"])
  raise ValueError(f"Unknown parameter source record {dict(record)!r}.")


# ------------------------------------------------------------------------------------------------
# Groups.


@dataclasses.dataclass(frozen=True)
class ParamGroup:
  """A named set of parameters and everything a run needs to know about it.

  Attributes:
    name: the group's name (exports and logs use it).
    pattern: regex (`re.search`) over '/'-joined parameter paths; None takes every leaf no
      other group matches (at most one such group).
    trainable: whether the optimizer updates it.
    source: where its initial values come from (default: the base checkpoint).
    export: None, 'prompt' (each [P, H] / [K, P, H] hook leaf as `.npy`, plus a PEFT adapter for
      a single prompt), 'npz' or 'safetensors' (the group's leaves keyed by path).
    optimizer: an optax transformation for this group alone (its own learning rate, weight
      decay, ...); None uses the run's optimizer. Only meaningful for trainable groups.
    required: a pattern that matches nothing is an error; False lets the group be empty (the
      default prompt group of a model without an input hook, e.g. when evaluating a base).
  """

  name: str
  pattern: Optional[str] = None
  trainable: bool = False
  source: Source = FromBase()
  export: Optional[str] = None
  optimizer: Any = None
  required: bool = True

  def __post_init__(self):
    if not self.name or "/" in self.name:
      raise ValueError(f"A parameter group needs a non-empty name without '/', got "
                       f"{self.name!r}.")
    if self.pattern is not None:
      try:
        re.compile(self.pattern)
      except re.error as error:
        raise ValueError(f"Parameter group {self.name!r} has an invalid regex "
                         f"{self.pattern!r}: {error}.") from None
    if self.export is not None and self.export not in EXPORT_KINDS:
      raise ValueError(f"Parameter group {self.name!r} has export={self.export!r}; expected "
                       f"None or one of {list(EXPORT_KINDS)}.")
    if self.optimizer is not None and not self.trainable:
      raise ValueError(f"Parameter group {self.name!r} is frozen but has its own optimizer.")

  def describe(self) -> Dict[str, Any]:
    """A JSON record of the group (run records keep it, so inference can rebuild it)."""
    return {"name": self.name, "pattern": self.pattern, "trainable": self.trainable,
            "source": self.source.describe(), "export": self.export,
            "own_optimizer": self.optimizer is not None, "required": self.required}


def group_from_record(record: Mapping[str, Any]) -> ParamGroup:
  """The inverse of `ParamGroup.describe()` (without the optimizer, which is not recorded)."""
  return ParamGroup(name=record["name"], pattern=record.get("pattern"),
                    trainable=bool(record.get("trainable", False)),
                    source=source_from_record(record.get("source") or {"kind": "base"}),
                    export=record.get("export"), required=bool(record.get("required", True)))


def prompt_tuning_groups() -> Tuple[ParamGroup, ...]:
  """The default: train the input hook (read from the base if it has it, else initialised)
  and keep every other parameter frozen, read from the base checkpoint."""
  return (ParamGroup(name="prompt", pattern=HOOK_PATTERN, trainable=True,
                     source=FromBase(allow_missing=HOOK_PATTERN), export="prompt",
                     required=False),
          ParamGroup(name="model", pattern=None, trainable=False, source=FromBase()))


def groups_from_patterns(patterns: Sequence[str]) -> Tuple[ParamGroup, ...]:
  """Groups equivalent to a list of trainable-parameter regexes (the `trainable_patterns` form).

  The trainable leaves form one group, the rest another, both read from the base; the input
  hook may be absent from the base (it is initialised then), and trained hook leaves shaped
  like prompts are exported as prompts.
  """
  patterns = list(patterns)
  if not patterns:
    raise ValueError("trainable_patterns is empty; give at least one regex (or '.*').")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as error:
      raise ValueError(f"Trainable-parameter pattern {pattern!r} is not a valid regex: "
                       f"{error}.") from None
  union = patterns[0] if len(patterns) == 1 else "|".join(f"(?:{p})" for p in patterns)
  return (ParamGroup(name="trainable", pattern=union, trainable=True,
                     source=FromBase(allow_missing=HOOK_PATTERN), export="prompt"),
          ParamGroup(name="frozen", pattern=None, trainable=False,
                     source=FromBase(allow_missing=HOOK_PATTERN)))


@dataclasses.dataclass(frozen=True)
class Assignment:
  """Which group each leaf belongs to (`resolve`'s result)."""

  groups: Tuple[ParamGroup, ...]
  group_of: Mapping[str, str]  # leaf path -> group name

  def group(self, name: str) -> ParamGroup:
    return next(g for g in self.groups if g.name == name)

  def leaves(self, name: str) -> List[str]:
    return [path for path, group in self.group_of.items() if group == name]

  @property
  def trainable_paths(self) -> List[str]:
    trainable = {g.name for g in self.groups if g.trainable}
    return [path for path, group in self.group_of.items() if group in trainable]

  def source_of(self, path: str) -> Source:
    return self.group(self.group_of[path]).source

  def describe(self) -> List[Dict[str, Any]]:
    return [g.describe() for g in self.groups]


def resolve(groups: Sequence[ParamGroup], paths: Sequence[str]) -> Assignment:
  """Assigns every leaf path to exactly one group.

  Raises:
    ValueError: one sentence naming the problem: duplicate group names, two "rest" groups, a
      pattern that selects nothing, a leaf two groups match, or a leaf no group takes.
  """
  groups = tuple(groups)
  if not groups:
    raise ValueError("No parameter groups were given; a run needs at least one.")
  names = [g.name for g in groups]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"Parameter group name {duplicates[0]!r} is used twice.")
  rest = [g for g in groups if g.pattern is None]
  if len(rest) > 1:
    raise ValueError(f"Parameter groups {rest[0].name!r} and {rest[1].name!r} both take the "
                     "rest (pattern None); at most one may.")
  paths = list(paths)
  group_of: Dict[str, str] = {}
  for group in groups:
    if group.pattern is None:
      continue
    compiled = re.compile(group.pattern)
    matched = [p for p in paths if compiled.search(p)]
    if not matched and group.required:
      examples = ", ".join(repr(p) for p in paths[:3])
      raise ValueError(f"Parameter group {group.name!r}: pattern {group.pattern!r} matches no "
                       f"parameter; paths look like {examples}.")
    for path in matched:
      if path in group_of:
        raise ValueError(f"Parameter {path!r} is matched by both parameter groups "
                         f"{group_of[path]!r} and {group.name!r}; make their patterns disjoint.")
      group_of[path] = group.name
  for path in paths:
    if path not in group_of:
      if not rest:
        raise ValueError(f"Parameter {path!r} is matched by no parameter group; add a group "
                         "for it or one with pattern None for the rest.")
      group_of[path] = rest[0].name
  ordered = {path: group_of[path] for path in paths}
  return Assignment(groups=groups, group_of=ordered)


def everything_group() -> Tuple[ParamGroup, ...]:
  """One frozen group of every parameter, read from the base (the hook may be absent there)."""
  return (ParamGroup(name="all", pattern=None, source=FromBase(allow_missing=HOOK_PATTERN)),)


def choose_groups(param_groups: Optional[Sequence[ParamGroup]] = None,
                  trainable_patterns: Optional[Sequence[str]] = None) -> Tuple[ParamGroup, ...]:
  """The run's groups: explicit groups, else groups from trainable patterns, else the default."""
  if param_groups is not None and trainable_patterns is not None:
    raise ValueError("Give either param_groups or trainable_patterns, not both.")
  if param_groups is not None:
    return tuple(param_groups)
  if trainable_patterns is not None:
    return groups_from_patterns(trainable_patterns)
  return prompt_tuning_groups()
