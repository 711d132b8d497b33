"""Command line: `python -m tpu_setup {create,provision,run,status,logs,stop,delete} [flags]`.

Every sub-command accepts --dry-run (print the commands, run nothing) and --config FILE. Flags may
be spelled with hyphens or underscores (--accelerator-type or --accelerator_type). For `run`,
arguments after a lone `--` are passed to the job unchanged.
"""
from __future__ import annotations

import argparse
import pathlib
import re
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from tpu_setup import config, plans
from tpu_setup.local_git import LocalGit, resolve_commit, resolve_repo_url
from tpu_setup.runner import CommandFailed, Executor, Step, execute, subprocess_executor

_SETTINGS_FLAGS = ("project", "zone", "name", "accelerator_type", "runtime_version", "bucket",
                   "repo_url", "python", "log_dir", "queued", "spot", "preemptible")


def _add(parser: argparse.ArgumentParser, flag: str, **kwargs) -> None:
  """Adds --a-b and its spelling --a_b, so the engine's underscore habit also works here."""
  names = [flag] if "-" not in flag[2:] else [flag, "--" + flag[2:].replace("-", "_")]
  parser.add_argument(*names, **kwargs)


def _common_flags() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  _add(common, "--config",
       help=f"TOML or JSON settings file (default: ./{config.DEFAULT_CONFIG_FILE} if present)")
  _add(common, "--dry-run", action="store_true",
       help="print the exact commands, in order, without running them")
  _add(common, "--project", help="Google Cloud project (default: gcloud's configured project)")
  _add(common, "--zone", help="zone of the TPU, e.g. us-central2-b")
  _add(common, "--name", help="TPU VM name")
  _add(common, "--accelerator-type", help="e.g. v3-8, v4-32, v5litepod-16")
  _add(common, "--runtime-version", help="TPU software version (default: per generation)")
  _add(common, "--bucket", help="gs://bucket[/path] for per-worker logs")
  _add(common, "--repo-url", help="git URL the workers install from (default: origin remote)")
  _add(common, "--python", help="python interpreter on the workers (default: python3)")
  _add(common, "--log-dir", help="local folder for fetched logs (default: tpu_logs)")
  _add(common, "--queued", action=argparse.BooleanOptionalAction, default=None,
       help="the TPU is (to be) managed through a queued resource named <name>-qr")
  return common


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m tpu_setup", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
  common = _common_flags()

  def sub(name: str, help_text: str) -> argparse.ArgumentParser:
    return commands.add_parser(name, parents=[common], help=help_text, description=help_text)

  create = sub("create", "create a TPU VM or pod slice (directly or as a queued resource)")
  _add(create, "--spot", action=argparse.BooleanOptionalAction, default=None, help="Spot VM")
  _add(create, "--preemptible", action=argparse.BooleanOptionalAction, default=None,
       help="preemptible TPU (not for queued resources)")

  provision = sub("provision", "install prompt_tuning[tpu] at one commit on every worker and "
                  "check each worker imports it and sees its chips")
  _add(provision, "--commit", help="commit hash to install (default: local `git rev-parse HEAD`)")

  run = sub("run", "copy gin files and start the same job on every worker")
  _add(run, "--commit", help="commit the workers must hold (default: local HEAD)")
  _add(run, "--module", default="train", choices=sorted(plans.MODULES),
       help="entry point: prompt_tuning.<module> (default: train)")
  _add(run, "--gin-file", action="append", default=[], help="gin file to copy and pass; repeat")
  _add(run, "--gin", action="append", default=[], metavar="NAME=VALUE",
       help="passed as --gin.NAME=VALUE; repeat")
  _add(run, "--gin-search-path", action="append", default=[],
       help="extra search path on the workers, after the run folder; repeat")
  _add(run, "--run-name", help="run folder name (default: <first gin file>-<UTC time>)")
  _add(run, "--detach", default="nohup", choices=plans.DETACH_MODES,
       help="nohup (default), tmux, or none to stream output and wait")
  _add(run, "--log-to", default="bucket", choices=("bucket", "local"),
       help="copy worker logs to the bucket while running (default) or keep them on the workers")
  _add(run, "--env", action="append", default=[], metavar="KEY=VALUE",
       help="environment variable for the job; repeat")

  sub("status", "show the TPU's state and, per worker, commit, TPU holders and latest run")
  logs = sub("logs", "fetch every worker's log of a run")
  _add(logs, "--run-name", default=plans.LATEST_RUN, help="run to fetch (default: latest)")
  _add(logs, "--from-bucket", action="store_true", help="read the copies in the bucket instead")
  sub("stop", "kill processes holding the TPU on every worker")
  sub("delete", "delete the TPU VM (or the queued resource and its VM)")
  return parser


def main(argv: Sequence[str] | None = None, *, executor: Executor = subprocess_executor,
         git: LocalGit | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
  """Builds the sub-command's plan (all checks happen here), then prints and runs it.

  Returns 0 on success, 2 for a configuration error (nothing was run) and 1 when a command failed.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  split = argv.index("--") if "--" in argv else len(argv)
  own, extra = argv[:split], argv[split + 1:]
  args = build_parser().parse_args(own)
  try:
    if extra and args.command != "run":
      raise ValueError(f"arguments after '--' are only for run, not {args.command}.")
    settings = _settings(args)
    plan = _plan(args, settings, extra, git or LocalGit(), err)
    failed = execute(plan, dry_run=args.dry_run, executor=executor, out=out)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=err)
    return 2
  except CommandFailed as e:
    print(f"error: {e}", file=err)
    return 1
  if failed:
    print(f"error: {len(failed)} step(s) failed: {'; '.join(s.purpose for s in failed)}.", file=err)
    return 1
  return 0


def _settings(args: argparse.Namespace) -> config.Settings:
  overrides = {field: getattr(args, field, None) for field in _SETTINGS_FLAGS}
  overrides["env"] = _key_values(getattr(args, "env", []), "--env")
  return config.make_settings(config.load_config_file(args.config), overrides)


def _plan(args: argparse.Namespace, settings: config.Settings, extra: list[str], git: LocalGit,
          err: TextIO) -> list[Step]:
  if args.command == "create":
    return plans.create_plan(settings)
  if args.command == "provision":
    commit, from_head = resolve_commit(args.commit, git)
    if from_head and git.has_local_changes():
      print(f"warning: the local checkout has uncommitted changes; the workers get commit "
            f"{commit[:12]} without them.", file=err)
    return plans.provision_plan(settings, commit=commit,
                                repo_url=resolve_repo_url(settings.repo_url, git))
  if args.command == "run":
    commit, _ = resolve_commit(args.commit, git)
    request = plans.RunRequest(
        run_name=args.run_name or _default_run_name(args.gin_file), module=args.module,
        gin_files=args.gin_file, gin_bindings=args.gin, gin_search_paths=args.gin_search_path,
        extra_args=extra, detach=args.detach, log_to=args.log_to)
    return plans.run_plan(settings, request, commit=commit)
  if args.command == "status":
    return plans.status_plan(settings)
  if args.command == "logs":
    return plans.logs_plan(settings, run_name=args.run_name, from_bucket=args.from_bucket)
  if args.command == "stop":
    return plans.stop_plan(settings)
  return plans.delete_plan(settings)


def _key_values(pairs: list[str], flag: str) -> dict[str, str]:
  values = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise ValueError(f"{flag} {pair!r} must look like KEY=VALUE.")
    values[key] = value
  return values


def _default_run_name(gin_file_paths: list[str]) -> str:
  stem = pathlib.Path(gin_file_paths[0]).stem if gin_file_paths else "run"
  stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem).lstrip("._-") or "run"
  return f"{stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
