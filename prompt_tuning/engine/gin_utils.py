"""Gin at the edge: flags, registration of library callables, and parsing with clear errors.

Library modules never import gin. The entry points call `register_configurables()` once,
which makes the library's classes and factories configurable under short module names:

  network.*        EncoderDecoder, DecoderOnly, get_config (model presets); LlamaDecoder,
                   get_llama_config, config_from_hf_decoder (rotary decoder family)
  models.*         EncoderDecoderModel, DecoderOnlyModel, DecoderParams (loss / decode wrappers)
  prompts.*        PromptHook, Prompt, PromptTable
  prompt_init.*    random_uniform, sampled_vocabulary, class_labels, from_string, from_npy,
                   from_checkpoint_variable, checkpoint_array, per_prompt, stack_initializers
  optimizers.*     adafactor, adam, adamw, constant, linear_warmup, rsqrt_decay, cosine_decay
  partitioning.*   MeshConfig
  data.*           DatasetConfig
  trainer.*        RestoreConfig, CheckpointConfig
  seqio.*          ByteVocabulary, SentencePieceVocabulary; vocabularies.get_vocabulary

Flags, T5X style: `--gin_file=PATH` (repeatable), `--gin.NAME=VALUE` (repeatable; also
`--gin_bindings=NAME=VALUE`), `--gin_search_paths=DIR[,DIR...]`. Gin files are looked up in the
search paths, then the current directory, then the repository root (so `gin/models/...` works
from anywhere inside a checkout or an installed tree that ships `gin/`).

Mistakes are reported early: the gin files and bindings are read once before JAX and
TensorFlow are imported (a missing file, a malformed binding or an unset required macro is
reported within a second), and a macro that is bound but referenced by no configuration (often
a misspelling, e.g. `--gin.TRAIN_STEP=5`) is reported with the closest known name: a warning,
or an error with `--strict_gin`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import logging
import os
import pathlib
import re
import sys
from typing import Any, Callable, List, Mapping, Optional, Sequence

import gin

from prompt_tuning.engine import host_devices
from prompt_tuning.engine import host_memory

# The folders that may hold `gin/`: the repository root of a checkout, and the copy a wheel
# carries inside the package (setup.py's `BuildPyWithGin`).
REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
BUNDLED_ROOT = str(pathlib.Path(__file__).resolve().parents[1] / "bundled")
OPERATIVE_CONFIG_FILE = "config.gin"


class ConfigError(ValueError):
  """A flag, gin file or gin binding is wrong; the message names it."""


# ------------------------------------------------------------------------------------------------
# Registration.


def _register(fn_or_cls: Any, module: str, name: Optional[str] = None) -> None:
  try:
    gin.external_configurable(fn_or_cls, name=name, module=module)
  except ValueError:  # already registered (a second entry point or a test in this process)
    pass


def register_configurables() -> None:
  """Makes the library configurable from gin files (idempotent)."""
  # Imported here so that `import gin_utils` stays cheap for flag parsing.
  # pylint: disable=g-import-not-at-top
  import seqio
  from prompt_tuning.data import vocabularies
  from prompt_tuning.engine import data, models, optimizers, params, partitioning, trainer
  from prompt_tuning.engine.importers import hf_decoder
  from prompt_tuning.models import config, decoder_only, llama, llama_config, t5
  from prompt_tuning.prompts import hooks, initializers, providers
  # pylint: enable=g-import-not-at-top

  for item in (t5.EncoderDecoder, decoder_only.DecoderOnly, config.get_config, llama.LlamaDecoder,
               llama_config.get_llama_config, hf_decoder.config_from_hf_decoder):
    _register(item, "network")
  for item in (models.EncoderDecoderModel, models.DecoderOnlyModel, models.DecoderParams,
               models.HookInput):
    _register(item, "models")
  for item in (params.ParamGroup, params.FromBase, params.FromInit, params.FromCheckpoint,
               params.FromNpy):
    _register(item, "params")
  for item in (hooks.PromptHook, providers.Prompt, providers.PromptTable):
    _register(item, "prompts")
  for item in (initializers.random_uniform, initializers.sampled_vocabulary,
               initializers.class_labels, initializers.from_string, initializers.from_npy,
               initializers.from_checkpoint_variable, initializers.checkpoint_array,
               initializers.per_prompt, initializers.stack_initializers):
    _register(item, "prompt_init")
  for item in (optimizers.adafactor, optimizers.adam, optimizers.adamw, optimizers.constant,
               optimizers.linear_warmup, optimizers.rsqrt_decay, optimizers.cosine_decay):
    _register(item, "optimizers")
  _register(partitioning.MeshConfig, "partitioning")
  _register(data.DatasetConfig, "data")
  _register(trainer.RestoreConfig, "trainer")
  _register(trainer.CheckpointConfig, "trainer")
  _register(seqio.ByteVocabulary, "seqio")
  _register(seqio.SentencePieceVocabulary, "seqio")
  _register(vocabularies.get_vocabulary, "vocabularies")
  # The entry points, so any run file parses whichever entry point reads it.
  # pylint: disable-next=g-import-not-at-top
  from prompt_tuning.jobs import eval as eval_lib, infer as infer_lib, train as train_lib
  for fn, name in ((train_lib.train, "train"), (eval_lib.evaluate, "evaluate"),
                   (infer_lib.infer, "infer")):
    configurable_entry(fn, name)


# ------------------------------------------------------------------------------------------------
# Flags.


@dataclasses.dataclass
class Flags:
  """What an entry point's command line says."""

  gin_files: List[str]
  gin_bindings: List[str]
  gin_search_paths: List[str]
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  host_allocator: str = "reuse"
  host_cpu_devices: Optional[int] = None
  strict_gin: bool = False


def _rewrite_gin_flags(argv: Sequence[str]) -> List[str]:
  """`--gin.NAME=VALUE` -> `--gin_bindings=NAME=VALUE` (argparse cannot match the prefix)."""
  rewritten = []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        raise ConfigError(f"Gin flag {arg!r} is malformed; expected --gin.NAME=VALUE.")
      rewritten.append(f"--gin_bindings={binding}")
    else:
      rewritten.append(arg)
  return rewritten


class _Parser(argparse.ArgumentParser):
  def error(self, message):
    raise ConfigError(f"Bad command line: {message}.")


def parse_flags(argv: Sequence[str], *, prog: str, description: str) -> Flags:
  parser = _Parser(prog=prog, description=description)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="Gin file to parse (repeatable); later files override earlier ones.")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="A binding NAME=VALUE (repeatable); also spelled --gin.NAME=VALUE.")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="Comma-separated folders to look for gin files and includes in.")
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0, for multi-process runs without a TPU pod.")
  parser.add_argument("--num_processes", type=int, default=None)
  parser.add_argument("--process_id", type=int, default=None)
  parser.add_argument("--host_allocator", choices=host_memory.POLICIES, default="reuse",
                      help="'reuse' keeps freed host memory for the next step (much faster "
                           "XLA:CPU steps); 'system' leaves the C allocator's defaults.")
  parser.add_argument("--host_cpu_devices", type=int, default=None,
                      help="Split the CPU host into this many XLA devices; the mesh's data axis "
                           "then runs them concurrently (faster CPU steps, one copy of the "
                           "replicated parameters per device).")
  parser.add_argument("--strict_gin", action="store_true",
                      help="Stop (instead of warning) when a bound gin macro is referenced by "
                           "no configuration, e.g. a misspelled --gin.TRAIN_STEP=5.")
  args = parser.parse_args(_rewrite_gin_flags(list(argv)))
  search = [p for group in args.gin_search_paths for p in group.split(",") if p]
  files = [f for group in args.gin_file for f in group.split(",") if f]
  return Flags(gin_files=files, gin_bindings=list(args.gin_bindings), gin_search_paths=search,
               coordinator_address=args.coordinator_address, num_processes=args.num_processes,
               process_id=args.process_id, host_allocator=args.host_allocator,
               host_cpu_devices=args.host_cpu_devices, strict_gin=args.strict_gin)


# ------------------------------------------------------------------------------------------------
# Parsing.


def _first_line(error: Exception) -> str:
  text = str(error).strip().splitlines()
  return text[0].rstrip(".") if text else type(error).__name__


def search_paths(extra: Sequence[str] = ()) -> List[str]:
  paths = [os.path.abspath(p) for p in extra] + [os.getcwd(), REPO_ROOT]
  if os.path.isdir(BUNDLED_ROOT):
    paths.append(BUNDLED_ROOT)
  return list(dict.fromkeys(paths))


def resolve_gin_file(name: str, paths: Sequence[str]) -> str:
  """The first existing `path/name` (or `name` itself when absolute)."""
  if os.path.isabs(name):
    if os.path.isfile(name):
      return name
  else:
    for folder in paths:
      candidate = os.path.join(folder, name)
      if os.path.isfile(candidate):
        return candidate
  raise ConfigError(f"Gin file {name!r} was not found in the search paths {list(paths)}.")


class _GinPathProbeFilter(logging.Filter):
  """Drops gin's "Path not found" errors: it logs one for every search path an `include` misses
  before the one that holds the file; an include found nowhere still raises (ConfigError below)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.getMessage().startswith("Path not found")
                and record.pathname.endswith(os.path.join("gin", "resource_reader.py")))


@contextlib.contextmanager
def _quiet_gin_path_probes():
  probe_filter, root = _GinPathProbeFilter(), logging.getLogger()  # gin logs to the root logger
  root.addFilter(probe_filter)
  try:
    yield
  finally:
    root.removeFilter(probe_filter)


def _add_search_paths(paths: Sequence[str], user_paths: Sequence[str]) -> None:
  """gin resolves `include` lines itself; it gets the user's paths and the roots with `gin/`."""
  user = {os.path.abspath(p) for p in user_paths}
  known = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for path in paths:
    if path == os.getcwd() or path in known:
      continue
    if path in user or os.path.isdir(os.path.join(path, "gin")):
      gin.add_config_file_search_path(path)


_LITERAL_STARTS = ("'", '"', "[", "{", "(", "@", "%")


def _unquoted_string_message(binding: str) -> Optional[str]:
  """For a value that is no literal and not quoted (the shell ate the quotes): how to quote it."""
  name, _, value = binding.partition("=")
  name, value = name.strip(), value.strip()
  if not value or value.startswith(_LITERAL_STARTS):
    return None
  return (f"Gin binding {binding!r} has a value gin cannot parse; strings need inner quotes, "
          f"e.g. --gin.{name}=\"'{value}'\".")


def parse_gin(*, gin_files: Sequence[str], gin_bindings: Sequence[str],
              gin_search_paths: Sequence[str] = (), skip_unknown: bool = False,
              strict: bool = False, defaults: Optional[Mapping[str, str]] = None) -> List[str]:
  """Parses files, then bindings (later ones win), turning gin's errors into one sentence.

  `skip_unknown=True` ignores bindings of configurables not registered yet: the early check
  the entry points run before the library (and JAX) is imported. `defaults` (macro name ->
  gin value) fill macros the files mark `%gin.REQUIRED` that the caller does not need (the
  planner opens no model dir); the bindings still override them. Returns the warnings about
  macros bound in `gin_bindings` that no configuration references (see
  `unreferenced_macro_messages`); with `strict=True` the first is raised as a ConfigError.
  """
  paths = search_paths(gin_search_paths)
  _add_search_paths(paths, gin_search_paths)
  for name in gin_files:
    resolved = resolve_gin_file(name, paths)
    try:
      with _quiet_gin_path_probes():
        gin.parse_config_file(resolved, skip_unknown=skip_unknown)
    except IOError as error:  # a missing `include`
      raise ConfigError(f"Gin file {name!r} could not be loaded: {_first_line(error)}.") from None
    except Exception as error:  # pylint: disable=broad-except  (gin raises many kinds)
      raise ConfigError(f"Gin file {name!r} is invalid: {_first_line(error)}.") from None
  _fill_required(defaults or {})
  for binding in gin_bindings:
    if not re.match(r"^\s*[\w.%/@]+\s*=", binding):
      raise ConfigError(f"Gin binding {binding!r} is malformed; expected NAME=VALUE.")
    try:
      gin.parse_config(binding, skip_unknown=skip_unknown)
    except Exception as error:  # pylint: disable=broad-except  (e.g. tokenize.TokenError)
      unquoted = _unquoted_string_message(binding) if isinstance(error, SyntaxError) else None
      raise ConfigError(unquoted or f"Gin binding {binding!r} is invalid: "
                        f"{_first_line(error)}.") from None
  check_required_macros()
  if skip_unknown:  # bindings were skipped, so references to macros may be missing
    return []
  messages = unreferenced_macro_messages(_bound_names(gin_bindings))
  if strict and messages:
    raise ConfigError(messages[0])
  for message in messages:
    logging.getLogger("prompt_tuning").warning("%s", message)
  return messages


def _macro_references(value: Any, found: set) -> None:
  """Adds the names of the macros `value` refers to (`%NAME`, also inside containers)."""
  if isinstance(value, gin.config.ConfigurableReference):
    if value.selector == "gin.macro" and value.scopes:
      found.add("/".join(value.scopes))
  elif isinstance(value, dict):
    for item in value.values():
      _macro_references(item, found)
  elif isinstance(value, (list, tuple, set)):
    for item in value:
      _macro_references(item, found)


def _bound_names(bindings: Sequence[str]) -> List[str]:
  return [b.partition("=")[0].strip() for b in bindings]


def unreferenced_macro_messages(names: Sequence[str]) -> List[str]:
  """One sentence per macro of `names` that is bound but referenced by no binding.

  Gin accepts a binding of any macro name, so a misspelled one is otherwise silently ignored
  and the run uses the default of the macro it meant. Only the names the user binds are
  checked: gin files offer macros (e.g. VOCABULARY) that a given combination may not use.
  """
  config = gin.config._CONFIG  # pylint: disable=protected-access
  bound, referenced = set(), set()
  for (scope, selector), params in config.items():
    if selector == "gin.macro":
      bound.add(scope)
    for value in params.values():
      _macro_references(value, referenced)
  messages = []
  for name in sorted((bound & set(names)) - referenced):
    close = difflib.get_close_matches(name, sorted(referenced), n=1, cutoff=0.6)
    suggestion = f"; did you mean {close[0]}?" if close else "."
    messages.append(f"Gin macro {name} is bound but no configuration uses it{suggestion}")
  return messages


def _is_required(value: Any) -> bool:
  return isinstance(value, gin.config.ConfigurableReference) and \
      repr(value).strip() == "%gin.REQUIRED"


def _fill_required(defaults: Mapping[str, str]) -> None:
  config = gin.config._CONFIG  # pylint: disable=protected-access
  for name, value in defaults.items():
    params = config.get((name, "gin.macro"))
    if params is not None and _is_required(params.get("value")):
      gin.parse_config(f"{name} = {value}")


def check_required_macros() -> None:
  """Fails, naming it, if a macro a run file marks `%gin.REQUIRED` was never set.

  Gin passes such a macro's placeholder on silently, so the check is done here.
  """
  config = gin.config._CONFIG  # pylint: disable=protected-access
  for (scope, selector), params in sorted(config.items()):
    if selector == "gin.macro" and _is_required(params.get("value")):
      raise ConfigError(f"Gin macro {scope} is required but not set; add --gin.{scope}=VALUE "
                        "(strings need inner quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\").")


def write_operative_config(model_dir: str) -> str:
  """Saves the bindings actually used so far as `<model_dir>/config.gin`; returns the path."""
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.join(model_dir, OPERATIVE_CONFIG_FILE)
  if jax.process_index() == 0:
    os.makedirs(model_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(gin.operative_config_str())
    os.replace(tmp, path)
  return path


def call_configured(fn: Callable, **overrides) -> Any:
  """Calls the gin-configured `fn`; a missing `%gin.REQUIRED` value becomes one sentence."""
  try:
    return fn(**overrides)
  except (ValueError, TypeError) as error:
    message = str(error)
    if "Required bindings" in message or "gin.REQUIRED" in message:
      raise ConfigError(f"A required gin value is not set: {_first_line(error)}; bind it "
                        "with --gin.NAME=VALUE (e.g. --gin.MODEL_DIR=\"'/tmp/run'\").") from None
    raise


# ------------------------------------------------------------------------------------------------
# Learning rate for reports.


def learning_rate_fn(optimizer_binding: str) -> Optional[Callable]:
  """The learning-rate schedule of the optimizer bound at `optimizer_binding`, for logging.

  Optimizers do not expose their schedule, so it is read back from the gin configuration:
  e.g. `train.optimizer = @optimizers.adafactor()` and `optimizers.adafactor.learning_rate`.
  Returns None when it cannot be determined.
  """
  import inspect  # pylint: disable=g-import-not-at-top
  try:
    reference = gin.query_parameter(optimizer_binding)
    selector = reference.selector
    try:
      value = gin.query_parameter(f"{selector}.learning_rate")
    except ValueError:
      fn = reference.configurable.wrapped
      value = inspect.signature(fn).parameters["learning_rate"].default
  except (ValueError, AttributeError, KeyError):
    return None
  if isinstance(value, gin.config.ConfigurableReference):
    value = value.scoped_configurable_fn()
  if isinstance(value, (int, float)):
    rate = float(value)
    return lambda step: rate
  return value if callable(value) else None


# ------------------------------------------------------------------------------------------------
# Entry points.


def configurable_entry(fn: Callable, name: str) -> Callable:
  """`fn` registered (once) as the gin configurable `name`, e.g. 'train'."""
  try:
    return gin.get_configurable(name)
  except ValueError:
    return gin.configurable(name, module=None)(fn)


def check_gin_early(flags: Flags, defaults: Optional[Mapping[str, str]] = None) -> None:
  """Reads the gin files and bindings before the library (JAX, TensorFlow) is imported.

  Configurables are not registered yet, so their bindings are skipped; what gin can check
  without them (files, includes, syntax, unset `%gin.REQUIRED` macros) fails here in about a
  second instead of after the imports. The configuration is cleared afterwards.
  """
  gin.clear_config()
  try:
    parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings,
              gin_search_paths=flags.gin_search_paths, skip_unknown=True, defaults=defaults)
  finally:
    gin.clear_config()


def run_entry_point(fn: Callable, name: str, argv: Sequence[str], *, prog: str,
                    description: str,
                    extra_overrides: Optional[Callable[[], dict]] = None) -> Any:
  """Flags -> early gin check -> multi-process init -> gin -> `fn(**bindings, ...)`."""
  flags = parse_flags(argv, prog=prog, description=description)
  check_gin_early(flags)
  host_memory.configure(flags.host_allocator)  # before JAX starts its CPU client
  _configure_host_devices(flags.host_cpu_devices)
  from prompt_tuning.engine import quiet  # pylint: disable=g-import-not-at-top
  quiet.quiet_libraries()
  _initialize_distributed(flags)
  from prompt_tuning.engine import reporting  # pylint: disable=g-import-not-at-top
  reporting.configure_logging()
  register_configurables()
  configured = configurable_entry(fn, name)
  gin.clear_config()  # an earlier entry point in this process must not leak its bindings
  parse_gin(gin_files=flags.gin_files, gin_bindings=flags.gin_bindings,
            gin_search_paths=flags.gin_search_paths, strict=flags.strict_gin)
  overrides = {"summarize_config_fn": write_operative_config}
  if extra_overrides is not None:
    overrides.update(extra_overrides())
  return call_configured(configured, **overrides)


def _configure_host_devices(count: Optional[int]) -> None:
  try:
    host_devices.configure(count)
  except (ValueError, RuntimeError) as error:
    raise ConfigError(f"--host_cpu_devices={count}: {error}") from None


def _initialize_distributed(flags: Flags) -> None:
  """Joins a multi-process run: explicit flags, or a cluster JAX detects (TPU pods).

  Without flags, a process that has already used JAX (a second entry point called in the same
  Python process) is necessarily a single-process run, so the detection is skipped.
  """
  from prompt_tuning.engine import partitioning  # pylint: disable=g-import-not-at-top
  explicit = flags.coordinator_address is not None or flags.num_processes is not None
  try:
    partitioning.initialize_distributed(coordinator_address=flags.coordinator_address,
                                        num_processes=flags.num_processes,
                                        process_id=flags.process_id)
  except RuntimeError:
    if explicit:
      raise


class _NeverRaised(Exception):
  """Stands for trainer.NonFiniteLossError while the trainer is not imported."""


def _non_finite_loss_error() -> type:
  """The trainer's NaN-loss error when the trainer is loaded (the except clause asks late)."""
  trainer = sys.modules.get("prompt_tuning.engine.trainer")
  return getattr(trainer, "NonFiniteLossError", _NeverRaised)


def console(main: Callable[[Sequence[str]], Any], argv: Sequence[str]) -> None:
  """Runs `main(argv)`; a configuration or data error prints one sentence and exits 1.

  The trainer (and JAX with it) is not imported here: a flag or gin error must not wait for it.
  """
  try:
    main(argv)
  except (ValueError, FileNotFoundError, _non_finite_loss_error()) as error:
    # Gin appends "In call to configurable ..." lines to errors raised inside an entry point;
    # the first line is the sentence that names the problem.
    print(f"Error: {_first_line(error)}.", file=sys.stderr)
    raise SystemExit(1) from None
