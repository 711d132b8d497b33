"""A prompt library: trained source prompts in a folder (local or `gs://`) with a JSON manifest.

SPoT keeps two prompts per source run: the "key", the prompt after a short run (10K steps by
default), used as the source task's embedding when comparing tasks; and the "value", the best
checkpoint by validation, used to initialise a target prompt. Layout:

  <library>/manifest.json
  <library>/prompts/<entry>/key_<step>.npy      [P, H] float32
  <library>/prompts/<entry>/value_<step>.npy

manifest.json:

  {"format_version": 1,
   "model": {"name": "t5_1_1_lm100k_base", "embed_dim": 768},
   "entries": [{"name": "glue_mnli_v200.seed0", "task": "glue_mnli_v200",
                "model": {"name": "t5_1_1_lm100k_base", "prompt_shape": [100, 768]},
                "seed": 0, "steps": 262144, "key_step": 10000, "value_step": 40000,
                "metric": {"name": "glue_mnli_v200/accuracy", "value": 86.4},
                "key_prompt": "prompts/glue_mnli_v200.seed0/key_10000.npy",
                "value_prompt": "prompts/glue_mnli_v200.seed0/value_40000.npy"}, ...]}

Paths in the manifest are relative to the library, so the folder can be copied or uploaded.
Every prompt a library hands out is checked against the manifest's shape; a wrong shape, a
missing file or a malformed manifest raises `LibraryError` with one sentence naming it.
Prompt files are written before the manifest that lists them, so an interrupted `add` never
leaves an entry without its files.

Commands (`python -m prompt_tuning.methods.spot.library ...`):

  add --library DIR --model_dir RUN --task TASK --model NAME [--seed N] [--key_step 10000]
      [--metric TASK/METRIC | --value_step N] [--prompt input_hook.prompt] [--name ENTRY]
  list --library DIR
  validate --library DIR [--model NAME]
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np

from prompt_tuning.methods.spot import manifest as manifest_lib
from prompt_tuning.methods.spot import runs
from prompt_tuning.methods.spot import storage

MANIFEST = manifest_lib.MANIFEST
DEFAULT_KEY_STEP = runs.DEFAULT_KEY_STEP
LibraryError = manifest_lib.LibraryError
ModelInfo = manifest_lib.ModelInfo
Entry = manifest_lib.Entry


class Library:
  """A prompt library folder and its parsed manifest."""

  def __init__(self, root: str, model: ModelInfo, entries: Sequence[Entry]):
    self.root = root
    self.model = model
    self.entries = list(entries)

  @property
  def manifest_path(self) -> str:
    return storage.join(self.root, MANIFEST)

  @classmethod
  def open(cls, root: str) -> "Library":
    """Reads `<root>/manifest.json`, refusing a missing or malformed one in one sentence."""
    path = storage.join(root, MANIFEST)
    if not storage.exists(path):
      raise LibraryError(f"Prompt library {root} has no {MANIFEST} (add a run to create one).")
    info, entries = manifest_lib.parse(storage.read_text(path), path)
    return cls(root, info, entries)

  @classmethod
  def open_or_create(cls, root: str, model: ModelInfo) -> "Library":
    if storage.exists(storage.join(root, MANIFEST)):
      return cls.open(root)
    return cls(root, model, [])

  def entry(self, name: str) -> Entry:
    for entry in self.entries:
      if entry.name == name:
        return entry
    raise LibraryError(f"Prompt library {self.root} has no entry {name!r}; it holds "
                       f"{[e.name for e in self.entries]}.")

  def path(self, relative: str) -> str:
    return storage.join(self.root, relative)

  def _load(self, entry: Entry, which: str) -> np.ndarray:
    path = self.path(entry.key_prompt if which == "key" else entry.value_prompt)
    if not storage.exists(path):
      raise LibraryError(f"The {which} prompt file {path} of entry {entry.name!r} is missing.")
    try:
      prompt = storage.load_prompt(path)
    except ValueError as e:
      raise LibraryError(f"The {which} prompt file {path} of entry {entry.name!r} is not a "
                         f"readable prompt ({e}).") from e
    if prompt.shape != tuple(entry.prompt_shape):
      raise LibraryError(f"The {which} prompt file {path} of entry {entry.name!r} has shape "
                         f"{prompt.shape}, but the manifest says {tuple(entry.prompt_shape)}.")
    return prompt

  def key_prompt(self, name: str) -> np.ndarray:
    return self._load(self.entry(name), "key")

  def value_prompt(self, name: str) -> np.ndarray:
    return self._load(self.entry(name), "value")

  def key_prompts(self) -> Dict[str, np.ndarray]:
    """Every entry's key prompt (its task embedding), by entry name, shapes checked."""
    self.check_models()
    return {entry.name: self._load(entry, "key") for entry in self.entries}

  def _model_problem(self, entry: Entry, expected: Optional[str]) -> Optional[str]:
    if entry.model != self.model.name:
      return (f"Entry {entry.name!r} was trained on model {entry.model!r}, but library "
              f"{self.root} holds {self.model.name!r} prompts.")
    if entry.prompt_shape[1] != self.model.embed_dim:
      return (f"Entry {entry.name!r} has prompt shape {tuple(entry.prompt_shape)}, whose "
              f"embedding size is not the library model's {self.model.embed_dim}.")
    if expected is not None and expected != self.model.name:
      return f"Library {self.root} holds {self.model.name!r} prompts, not {expected!r} ones."
    return None

  def check_models(self, expected: Optional[str] = None) -> None:
    for entry in self.entries:
      problem = self._model_problem(entry, expected)
      if problem:
        raise LibraryError(problem)

  def problems(self, expected_model: Optional[str] = None) -> List[str]:
    """Every problem found (one sentence each): model mismatches, missing or misshapen files."""
    found = []
    if expected_model is not None and expected_model != self.model.name:
      found.append(f"Library {self.root} holds {self.model.name!r} prompts, not "
                   f"{expected_model!r} ones.")
    for entry in self.entries:
      problem = self._model_problem(entry, None)
      if problem:
        found.append(problem)
      for which in ("key", "value"):
        try:
          self._load(entry, which)
        except LibraryError as e:
          found.append(str(e))
    return found

  def validate(self, expected_model: Optional[str] = None) -> None:
    """Raises `LibraryError` with the first problem (and how many more there are)."""
    found = self.problems(expected_model)
    if found:
      more = f" ({len(found) - 1} more problems; `validate` lists them)" if len(found) > 1 else ""
      raise LibraryError(found[0] + more)

  def add(self, entry: Entry, *, key: np.ndarray, value: np.ndarray) -> Entry:
    """Copies `key`/`value` into the library under the entry's paths, then lists the entry."""
    if not manifest_lib.ENTRY_NAME.match(entry.name):
      raise LibraryError(f"Entry name {entry.name!r} may hold only letters, digits, '.', '_' "
                         "and '-' (it names a folder).")
    problem = self._model_problem(entry, None)
    if problem:
      raise LibraryError(problem)
    if any(e.name == entry.name for e in self.entries):
      raise LibraryError(f"Prompt library {self.root} already has an entry {entry.name!r}; "
                         "pass another --name.")
    for which, prompt in (("key", key), ("value", value)):
      if tuple(prompt.shape) != tuple(entry.prompt_shape):
        raise LibraryError(f"The {which} prompt of {entry.name!r} has shape {prompt.shape}, "
                           f"but the entry says {tuple(entry.prompt_shape)}.")
    storage.save_prompt(self.path(entry.key_prompt), key)
    storage.save_prompt(self.path(entry.value_prompt), value)
    self.entries.append(entry)
    self.write_manifest()
    return entry

  def write_manifest(self) -> None:
    storage.makedirs(self.root)
    storage.write_text(self.manifest_path, manifest_lib.dumps(self.model, self.entries))

  def table(self) -> str:
    """The entries as an aligned text table."""
    header = ("name", "task", "shape", "seed", "steps", "key", "value", "metric")
    rows = [header] + [
        (e.name, e.task, "x".join(map(str, e.prompt_shape)), str(e.seed), str(e.steps),
         str(e.key_step), str(e.value_step),
         f"{e.metric}={e.metric_value:.4g}" if e.metric_value is not None else "-")
        for e in self.entries]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"Prompt library {self.root}: {len(self.entries)} entries, model "
             f"{self.model.name} (embed {self.model.embed_dim})"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def add_run(*, library: str, model_dir: str, task: str, model: str, seed: Optional[int] = None,
            key_step: int = DEFAULT_KEY_STEP, metric: Optional[str] = None,
            metric_mode: str = "max", value_step: Optional[int] = None,
            prompt: str = runs.DEFAULT_PROMPT, name: Optional[str] = None) -> Entry:
  """Adds a finished run's key and value prompts to `library` (created if it does not exist)."""
  run = runs.read_run(model_dir=model_dir, prompt=prompt, key_step=key_step, metric=metric,
                      metric_mode=metric_mode, value_step=value_step, seed=seed)
  key = storage.load_prompt(run.prompt_paths[run.key_step])
  value = storage.load_prompt(run.prompt_paths[run.value_step])
  lib = Library.open_or_create(library, ModelInfo(name=model, embed_dim=int(value.shape[1])))
  name = name or f"{task}.seed{run.seed}"
  folder = f"prompts/{name}"
  entry = Entry(name=name, task=task, model=model, prompt_shape=tuple(value.shape),
                seed=run.seed, steps=run.steps, key_step=run.key_step,
                value_step=run.value_step, metric=run.metric, metric_value=run.metric_value,
                key_prompt=f"{folder}/key_{run.key_step}.npy",
                value_prompt=f"{folder}/value_{run.value_step}.npy")
  return lib.add(entry, key=key, value=value)


def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m prompt_tuning.methods.spot.library",
                                   description="Manage a SPoT prompt library.")
  commands = parser.add_subparsers(dest="command", required=True)
  add = commands.add_parser("add", help="add a finished prompt run's key and value prompts")
  add.add_argument("--library", required=True, help="library folder (local or gs://)")
  add.add_argument("--model_dir", required=True, help="the finished run's model_dir")
  add.add_argument("--task", required=True, help="the run's source task or mixture name")
  add.add_argument("--model", required=True, help="the frozen model's name, e.g. t5_1_1_base")
  add.add_argument("--seed", type=int, default=None, help="default: read from config.gin")
  add.add_argument("--key_step", type=int, default=DEFAULT_KEY_STEP,
                   help="the step whose prompt is the task embedding")
  add.add_argument("--metric", default=None,
                   help="'task/metric' in metrics/infer_eval.jsonl picking the value prompt "
                        "(default: the only metric there)")
  add.add_argument("--metric_mode", default="max", choices=("max", "min"))
  add.add_argument("--value_step", type=int, default=None,
                   help="take the value prompt from this step instead of the best one")
  add.add_argument("--prompt", default=runs.DEFAULT_PROMPT,
                   help="exported prompt file name without .npy")
  add.add_argument("--name", default=None, help="entry name (default: <task>.seed<seed>)")
  listing = commands.add_parser("list", help="print the library's entries")
  listing.add_argument("--library", required=True)
  validate = commands.add_parser("validate", help="check files, shapes and models")
  validate.add_argument("--library", required=True)
  validate.add_argument("--model", default=None, help="the model the library must be for")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs one command; returns the exit status (1 when `validate` finds problems)."""
  args = _parse(argv)
  if args.command == "add":
    entry = add_run(library=args.library, model_dir=args.model_dir, task=args.task,
                    model=args.model, seed=args.seed, key_step=args.key_step,
                    metric=args.metric, metric_mode=args.metric_mode,
                    value_step=args.value_step, prompt=args.prompt, name=args.name)
    print(f"Added {entry.name!r} to {args.library}: key step {entry.key_step}, value step "
          f"{entry.value_step}, prompt shape {tuple(entry.prompt_shape)}.")
    return 0
  library = Library.open(args.library)
  if args.command == "list":
    print(library.table())
    return 0
  found = library.problems(args.model)
  for problem in found:
    print(problem)
  count = f"{len(found)} problem{'' if len(found) == 1 else 's'}" if found else "no problems"
  print(f"{args.library}: {len(library.entries)} entries, {count}.")
  return 1 if found else 0


if __name__ == "__main__":
  try:
    sys.exit(main())
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f"error: {error}")
