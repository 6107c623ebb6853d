"""The flag machinery every command line shares: config files, locked overrides, clear errors.

A command line of this package looks like

    python -m mobilebert_jax.<command> --workdir=DIR [--config=FILE[:VARIANT]] \
      [--config.FIELD=VALUE ...] [command flags]

and behaves the same for every command:

* `--config` may stand anywhere (`config_flags` wants it before the overrides; users should not
  have to care); `configs/NAME.py` names the package's own recipe when no such file exists
  relative to the current directory, so the documented spellings work from any directory and
  from an installed wheel;
* the config is locked: `--config.FIELD=VALUE` may only change fields that exist, and a misspelt
  field is an error that suggests the closest name and lists the group's fields;
* a user mistake is one line on stderr and exit status 1, never a traceback (`run`);
* `--compilation_cache_dir` (every command has it: `define_shared_flags`) points JAX's
  persistent compilation cache at a directory, by default a per-user one, so that running a
  command again loads its compiled steps instead of compiling them (`configure_compilation_cache`,
  applied by `run` before the command starts).

Each command supplies its own plain flags (`define_flags`) and, optionally, how its default
config depends on them (`default_config`); `parse` does the rest.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging as std_logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from mobilebert_jax.errors import CheckpointError, RunConfigError, RunPreempted

UsageError = app.UsageError
DefineFlags = Callable[[flags.FlagValues], None]
_HELP_ARGS = ("-h", "--help", "-help", "-?", "--helpshort", "--helpfull")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CONFIGS_DIR = os.path.join(_PACKAGE_DIR, "configs")
COMPILATION_CACHE_FLAG = "compilation_cache_dir"
# Flag values that turn the cache off.
_NO_CACHE = ("", "none")


# ----------------------------------------------------------------------------------------------
# The flags every command shares
# ----------------------------------------------------------------------------------------------


def default_compilation_cache_dir() -> str:
  """`$XDG_CACHE_HOME/mobilebert_jax/jax_cache` (`~/.cache/...` when XDG_CACHE_HOME is unset)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "mobilebert_jax", "jax_cache")


def define_training_flags(
  flag_values: flags.FlagValues, *, workdir_holds: str, init_from: bool = False
) -> None:
  """Defines `--workdir`, `--jax_distributed` and optionally `--init_from` for a training command.

  Args:
    flag_values: the command's flags.
    workdir_holds: what the run writes to its workdir, for the help text.
    init_from: also define `--init_from` (the initial weights of fine-tuning and pretraining).
  """
  from mobilebert_jax.train import distributed  # Commands that train import JAX anyway.

  flags.DEFINE_string("workdir", None, f"Run directory ({workdir_holds}).", flag_values=flag_values)
  if init_from:
    flags.DEFINE_string(
      "init_from",
      None,
      "Initial weights when the workdir has no checkpoint (overrides config.init_from): HF "
      "dir or hub id, TF checkpoint, our workdir/Orbax checkpoint, or preset:NAME (from "
      "scratch).",
      flag_values=flag_values,
    )
  flags.DEFINE_bool(
    "jax_distributed",
    None,
    "Call jax.distributed.initialize() first (multi-host); default: $"
    + distributed.DISTRIBUTED_ENV,
    flag_values=flag_values,
  )


def define_shared_flags(flag_values: flags.FlagValues) -> None:
  """Defines the flags every command has (`parse` adds them to the command's own)."""
  flags.DEFINE_string(
    COMPILATION_CACHE_FLAG,
    None,
    "Directory of JAX's persistent compilation cache: a second run of the same command loads "
    "its compiled steps from there instead of compiling them again. 'none' turns it off. "
    "Default: $JAX_COMPILATION_CACHE_DIR if set, else "
    "$XDG_CACHE_HOME/mobilebert_jax/jax_cache (~/.cache/... without XDG_CACHE_HOME). Only "
    "trusted users may write to it (JAX runs what it finds there).",
    flag_values=flag_values,
  )


def configure_compilation_cache(parsed: flags.FlagValues, *, use_default: bool) -> str | None:
  """Applies `--compilation_cache_dir` to JAX's configuration; call before the first compile.

  JAX then writes each compiled executable there and reads it back on a later run when the
  program, shapes, shardings, devices, compiler flags and jax/jaxlib versions are the same. It
  works on CPU (measured, jax 0.10.2), GPU and TPU; on GPU JAX also keeps XLA's autotuning
  results there (`jax_persistent_cache_enable_xla_caches`). Every compilation is written, not
  only those over JAX's default threshold of 1 s (`jax_persistent_cache_min_compile_time_secs`,
  unless set in the environment): a small model's eval step compiles in less, and a second
  run would compile it again. Measured on the tiny SQuAD config: with that threshold a warm run
  still compiled for 1.9 s, without it for 0.6 s, from 10 files (0.75 MB).

  Args:
    parsed: flags parsed by `parse`.
    use_default: without the flag, use the default directory (the command lines, `run`); when
      False, leave JAX's configuration alone unless the flag was given (in-process calls such
      as tests and notebooks keep the process's own settings).

  Returns:
    The cache directory now in use, or None when the cache is off.
  """
  import jax  # Here, not at the top: commands must be able to parse flags without JAX.
  from jax.experimental.compilation_cache import compilation_cache

  value = parsed[COMPILATION_CACHE_FLAG].value if COMPILATION_CACHE_FLAG in parsed else None
  if value is None:
    # JAX's own settings (JAX_COMPILATION_CACHE_DIR, JAX_ENABLE_COMPILATION_CACHE=false) win
    # over our default.
    enabled = jax.config.jax_enable_compilation_cache
    if not use_default or not enabled:
      return jax.config.jax_compilation_cache_dir if enabled else None
    value = jax.config.jax_compilation_cache_dir or default_compilation_cache_dir()
  path = None if value.strip().lower() in _NO_CACHE else os.path.expanduser(value)
  if path is not None and "://" not in path:
    try:
      # JAX would create it at the first compile and fail there; a cache is an optimisation,
      # so a directory that cannot be made costs a warning, not the run.
      os.makedirs(path, exist_ok=True)
    except OSError as e:
      logging.warning("no compilation cache: cannot create %s (%s)", path, e)
      path = None
  if path != jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX opens its cache once per process, at the first compile that uses it; forget it so
    # that an in-process caller that changes the directory gets the new one.
    compilation_cache.reset_cache()
  if path is not None:
    jax.config.update("jax_enable_compilation_cache", True)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  logging.info("compilation cache: %s", path or "off")
  return path


def resolve_config_path(path: str) -> str:
  """`path` itself when it exists, else the package's `configs/NAME.py` it names, else `path`."""
  if os.path.isfile(path):
    return path
  name = os.path.normpath(path)
  if name.startswith("configs" + os.sep) or name.startswith(os.path.join("mobilebert_jax", "")):
    candidate = os.path.join(_PACKAGE_DIR, name.removeprefix("mobilebert_jax" + os.sep))
    if os.path.isfile(candidate):
      return candidate
  return path


def package_config(name: str, variant: str = "") -> str:
  """The `--config` value of the package's recipe `name` (e.g. "glue.py") with a variant."""
  path = os.path.join(CONFIGS_DIR, name)
  return f"{path}:{variant}" if variant else path


def _resolve_spec(spec: str) -> str:
  path, colon, variant = spec.partition(":")
  return f"{resolve_config_path(path)}{colon}{variant}"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Calls `get_config(variant)` of `FILE[:VARIANT]`, as `config_flags` does, with clear errors.

  Raises:
    UsageError: the file does not exist, or `get_config` rejects the variant.
  """
  path, _, variant = _resolve_spec(spec).partition(":")
  if not os.path.isfile(path):
    raise UsageError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("mobilebert_jax_run_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(*([variant] if variant else []))
  except ValueError as e:
    raise UsageError(f"--config={spec}: {e}") from None


def config_overrides(argv: Sequence[str]) -> list[str]:
  """The dotted paths of the `--config.a.b=...` arguments of `argv` (argv[0] is the program)."""
  paths = []
  for arg in argv[1:]:
    match = re.match(r"^--?(?:no)?config\.([\w.]+)(?:=|$)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def check_overrides(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
  """Raises a UsageError for an override naming a field the config does not have."""
  for path in paths:
    node: Any = config
    for depth, key in enumerate(path.split(".")):
      if isinstance(node, ml_collections.ConfigDict) and key in node:
        node = node[key]
        continue
      parent = ".".join(["config", *path.split(".")[:depth]])
      fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      close = difflib.get_close_matches(key, fields, n=1)
      hint = f" Did you mean {parent}.{close[0]}?" if close else ""
      listing = f" {parent} has: {', '.join(fields)}." if fields else f" {parent} is not a group."
      raise UsageError(f"--config.{path}: there is no field {key!r}.{hint}{listing}")


def config_first(argv: Sequence[str]) -> tuple[list[str], str | None]:
  """Moves `--config[=]FILE` right after the program name and returns its value, if any.

  The value is resolved (`resolve_config_path`) so that `config_flags` reads the same file.

  Raises:
    UsageError: `--config` without a value.
  """
  argv = list(argv)
  for index, arg in enumerate(argv[1:], start=1):
    if re.match(r"^--?config=", arg):
      spec = _resolve_spec(arg.split("=", 1)[1])
      return [argv[0], f"--config={spec}", *argv[1:index], *argv[index + 1 :]], spec
    if re.match(r"^--?config$", arg):
      if index + 1 == len(argv):
        raise UsageError("--config needs a value: --config=FILE[:VARIANT]")
      spec = _resolve_spec(argv[index + 1])
      return [argv[0], f"--config={spec}", *argv[1:index], *argv[index + 2 :]], spec
  return argv, None


def parse(
  argv: Sequence[str],
  define_flags: DefineFlags,
  default_config: Callable[[flags.FlagValues], str | None] | None = None,
  *,
  config_help: str = "Run config file[:variant].",
) -> flags.FlagValues:
  """Parses a command line (argv[0] is the program) into a fresh `FlagValues`.

  The command's plain flags are read first (the default config may depend on them), then the
  config file is loaded, every override is checked against it, and the locked config flag is
  parsed. A fresh `FlagValues` per call keeps in-process calls (tests, notebooks) independent.

  Args:
    argv: the command line.
    define_flags: defines the command's own flags on a `FlagValues` (called twice).
    default_config: from the pre-parsed plain flags, the `--config` value to use when the
      command line has none (None: `--config` is required). May raise ValueError/UsageError.
    config_help: help text of `--config`.

  Returns:
    The parsed flags; `parsed.config` is the locked ConfigDict with the overrides applied.

  Raises:
    UsageError: a bad config file or variant, an override of a field that does not exist, an
      unknown flag or an error of `default_config`.
  """
  argv, explicit_config = config_first(argv)
  try:
    pre = flags.FlagValues()
    define_flags(pre)
    define_shared_flags(pre)
    pre(list(argv), known_only=True)
    spec = explicit_config
    if spec is None and default_config is not None:
      spec = default_config(pre)
    if spec is None:
      raise UsageError("pass --config=FILE[:VARIANT]")
  except (flags.Error, ValueError) as e:
    raise UsageError(str(e)) from None
  check_overrides(load_config_file(spec), config_overrides(argv))

  parsed = flags.FlagValues()
  define_flags(parsed)
  define_shared_flags(parsed)
  config_flags.DEFINE_config_file(
    "config",
    default=spec if explicit_config is None else None,
    help_string=config_help,
    flag_values=parsed,
    lock_config=True,
    sys_argv=argv,
  )
  try:
    leftover = parsed(argv, known_only=True)
    # What is left are absl's own flags (--verbosity, ...) or mistakes.
    flags.FLAGS(leftover, known_only=False)
  except flags.Error as e:
    raise UsageError(str(e)) from None
  return parsed


def require(parsed: flags.FlagValues, *names: str) -> None:
  """Raises a UsageError naming the first of the flags `names` that has no value."""
  for name in names:
    if not parsed[name].value:
      raise UsageError(f"--{name} is required")


def run(
  prog: str,
  doc: str,
  define_flags: DefineFlags,
  parse_fn: Callable[[Sequence[str]], flags.FlagValues],
  main_fn: Callable[[flags.FlagValues], Any],
  *,
  config_help: str = "Run config file[:variant].",
  user_errors: tuple[type[BaseException], ...] = (
    RunConfigError,
    CheckpointError,
    FileNotFoundError,
  ),
) -> None:
  """Runs a command line as a console script: help, one-line usage errors, then `main_fn`.

  Args:
    prog: the program name used in messages.
    doc: the text `--help` prints before the flags.
    define_flags: the command's own flags (for `--help`).
    parse_fn: `argv -> parsed flags`, raising UsageError for a bad command line.
    main_fn: runs the command; its return value is ignored (absl would make it the status).
      The compilation cache is configured before it runs (`configure_compilation_cache`).
    config_help: help text of `--config`.
    user_errors: exception types `main_fn` raises for a user's mistake (a missing file, settings
      that contradict the workdir) or a checkpoint that cannot be written or read: printed as
      one line with exit status 1, not a traceback. A preemption (`RunPreempted`) prints its
      one line and exits with status 143.
  """

  def flags_parser(argv: Sequence[str]) -> flags.FlagValues:
    if any(arg in _HELP_ARGS for arg in argv[1:]):
      help_flags = flags.FlagValues()
      define_flags(help_flags)
      define_shared_flags(help_flags)
      print(doc)
      print(help_flags.get_help(include_special_flags=False))
      print(f"  --config: {config_help}")
      sys.exit(0)
    try:
      return parse_fn(argv)
    except UsageError as e:
      _fail(prog, str(e))

  def app_main(parsed: flags.FlagValues) -> None:
    configure_compilation_cache(parsed, use_default=True)
    try:
      main_fn(parsed)
    except RunPreempted as e:
      sys.stderr.write(f"{prog}: {e}\n")
      sys.exit(RunPreempted.exit_status)
    except user_errors as e:
      _fail(prog, _one_line(e), usage_hint=False)

  sys.unraisablehook = _without_closed_loop_callbacks(sys.unraisablehook)
  std_logging.getLogger("asyncio").addFilter(_UNRETRIEVED_CHECKPOINT_WRITE_ERRORS)  # once only
  app.run(app_main, flags_parser=flags_parser)


def _without_closed_loop_callbacks(previous: Callable[[Any], None]) -> Callable[[Any], None]:
  """An unraisable-exception hook that drops TensorStore's late "Event loop is closed" errors.

  When one array of a checkpoint fails to read, Orbax closes its event loop while TensorStore
  still completes the other reads; their completion callbacks then fail on the closed loop in
  TensorStore's threads, and Python prints a traceback for each (dozens). The failure itself
  is reported once, as one line (`checkpointing.CheckpointManager.restore_or_fall_back`).
  """

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
      return
    previous(unraisable)

  return hook


class _UnretrievedCheckpointWriteErrors(std_logging.Filter):
  """Drops asyncio's "... exception was never retrieved" reports of failed checkpoint writes.

  A checkpoint write that fails (a full disk, a file-size limit) fails in many of Orbax's
  concurrent array writes at once. Orbax re-raises one error, which the run reports as one line
  (`checkpointing.CheckpointWriteError`); asyncio logs each of the others, with its traceback,
  when it collects the failed task or future, often at exit after that line. Dropped: reports
  whose traceback runs through Orbax's checkpoint code, and those of errors with no Python
  frames at all (TensorStore's futures fail in C++; nothing else in these commands runs asyncio).
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    first_line = record.getMessage().split("\n", 1)[0]
    if not (record.exc_info and first_line.endswith("exception was never retrieved")):
      return True
    files = [frame.f_code.co_filename for frame, _ in traceback.walk_tb(record.exc_info[2])]
    return bool(files) and not any(_ORBAX_CHECKPOINT_SOURCES in file for file in files)


_ORBAX_CHECKPOINT_SOURCES = f"{os.sep}orbax{os.sep}checkpoint{os.sep}"
_UNRETRIEVED_CHECKPOINT_WRITE_ERRORS = _UnretrievedCheckpointWriteErrors()


def _one_line(error: BaseException) -> str:
  text = str(error.args[0]) if len(error.args) == 1 else str(error)
  return " ".join(text.split())


def _fail(prog: str, message: str, usage_hint: bool = True) -> None:
  hint = "Pass --help for usage.\n" if usage_hint else ""
  sys.stderr.write(f"{prog}: {message}\n{hint}")
  sys.exit(1)


class TrainingCommand:
  """The two entry points of a training command line (fine-tuning, pretraining, distillation).

  `main(argv)` runs it in-process (tests, notebooks) and returns what `execute` returns; the
  process's compilation-cache settings are kept unless `--compilation_cache_dir` is given.
  `run()` is the console script: `--help`, one-line user errors (`run`), the compilation cache
  on by default, and the libraries' routine log lines kept quiet.

  Args:
    prog: the program name used in messages.
    doc: the `--help` text (the module docstring).
    define_flags: the command's own flags.
    parse_flags: `argv -> parsed flags`, raising UsageError for a bad command line.
    execute: `parsed -> result`, the run itself.
    config_help: help text of `--config`.
  """

  def __init__(
    self,
    prog: str,
    doc: str,
    define_flags: DefineFlags,
    parse_flags: Callable[[Sequence[str]], flags.FlagValues],
    execute: Callable[[flags.FlagValues], Any],
    *,
    config_help: str,
  ):
    self._prog, self._doc, self._config_help = prog, doc, config_help
    self._define_flags, self._parse_flags, self._execute = define_flags, parse_flags, execute

  def main(self, argv: Sequence[str]) -> Any:
    """In-process entry point: `main([PROG, "--workdir=/tmp/x", ...])`."""
    parsed = self._parse_flags(argv)
    configure_compilation_cache(parsed, use_default=False)
    return self._execute(parsed)

  def run(self) -> None:
    """The console script."""
    run(
      self._prog,
      self._doc,
      self._define_flags,
      self._parse_flags,
      self._execute_quietly,
      config_help=self._config_help,
    )

  def _execute_quietly(self, parsed: flags.FlagValues) -> None:
    from mobilebert_jax.train import summaries  # JAX-free until a command runs

    # Until exit, not just while the command runs: see `quiet_library_logs_until_exit`.
    summaries.quiet_library_logs_until_exit()
    self._execute(parsed)
