r"""Fine-tune MobileBERT from the command line (the `mobilebert-finetune` console script).

    python -m mobilebert_jax.finetune --task=TASK --workdir=DIR [--init_from=SOURCE] \
      [--config=FILE[:VARIANT]] [--config.FIELD=VALUE ...] [--demo] [--jax_distributed]

TASK is `squad`, `squad_v2`, `glue/<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte|wnli>`, `conll2003` or
`swag` (usual spellings such as `squad2.0` or `glue/SST-2` work). The task picks its recipe, the
config file `configs/<family>.py` (in a repository checkout) or `mobilebert_jax/_configs/...`
(in an installed wheel); `--config` names another file or variant instead, e.g.
`--config=configs/glue.py:task=rte,size=tiny`. Every config field can be overridden with
`--config.FIELD=VALUE` (`--config.optimizer.learning_rate=3e-5`); a misspelt field is an error.

Examples:

    # SQuAD v1.1 from the released checkpoint (downloaded from the Hugging Face Hub).
    python -m mobilebert_jax.finetune --task=squad --workdir=/tmp/squad \
      --config.data.data_dir=/data/squad
    # GLUE RTE from a local HF directory; repeat with other seeds to see the spread.
    python -m mobilebert_jax.finetune --task=glue/rte --workdir=/tmp/rte_seed1 \
      --init_from=/models/mobilebert-uncased --config.data.data_dir=/data/glue_data \
      --config.seed=1
    # The offline demo: no network, a small model from scratch, about 1.5 minutes on 2 CPU cores.
    python -m mobilebert_jax.finetune --task=squad --demo --workdir=/tmp/demo

Running again with the same `--workdir` resumes from its latest checkpoint. `--init_from`
(when the workdir has none) accepts an HF directory or hub id, TF1/TF2/TF-Hub checkpoints, one of
our workdirs or Orbax checkpoints, or `preset:NAME` to train an architecture from scratch.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from mobilebert_jax import distributed, summaries, tasks

# Config file of each task family, and the variant a task adds to it.
_FAMILY_FILES = {
  "squad": "squad.py",
  "glue": "glue.py",
  "conll2003": "conll2003.py",
  "swag": "swag.py",
}
_HELP_ARGS = ("-h", "--help", "-help", "-?", "--helpshort", "--helpfull")


def config_dir(package_dir: str | None = None) -> str:
  """Where the task configs are: the repository's `configs/`, else the wheel's `_configs/`.

  Args:
    package_dir: the `mobilebert_jax` package directory (default: this one).
  """
  package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
  for candidate in (
    os.path.join(os.path.dirname(package_dir), "configs"),  # a repository checkout
    os.path.join(package_dir, "_configs"),  # an installed wheel (pyproject force-include)
  ):
    if os.path.isfile(os.path.join(candidate, "common.py")):
      return candidate
  raise FileNotFoundError(
    f"no task configs found next to {package_dir} (looked for configs/ and _configs/); pass "
    "--config=PATH/TO/CONFIG.py"
  )


def default_config(task: str, demo: bool = False) -> str:
  """The `--config` value a task implies, e.g. `.../configs/glue.py:task=rte`.

  Raises:
    ValueError: an unknown task, or `demo` with a task other than SQuAD v1.1.
  """
  task = tasks.get_task(task)
  variant = ""
  if task.family == "glue":
    variant = f"task={task.name.removeprefix('glue/')}"
  elif task.name == "squad_v2":
    variant = "version=2.0"
  if demo:
    if task.name != "squad":
      raise ValueError(f"--demo is the SQuAD v1.1 demo; use --task=squad, not {task.name}")
    variant = "demo"
  path = os.path.join(config_dir(), _FAMILY_FILES[task.family])
  return f"{path}:{variant}" if variant else path


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "task", None, "Task to fine-tune; picks the default --config.", flag_values=flag_values
  )
  flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics, predictions).", flag_values=flag_values
  )
  flags.DEFINE_string(
    "init_from",
    None,
    "Initial weights when the workdir has no checkpoint (overrides config.init_from): HF dir "
    "or hub id, TF checkpoint, our workdir/Orbax checkpoint, or preset:NAME (from scratch).",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "demo", False, "Run the offline SQuAD demo (with --task=squad).", flag_values=flag_values
  )
  flags.DEFINE_bool(
    "jax_distributed",
    None,
    "Call jax.distributed.initialize() first (multi-host); default: $"
    + distributed.DISTRIBUTED_ENV,
    flag_values=flag_values,
  )


def _pre_parse(argv: Sequence[str]) -> flags.FlagValues:
  """`--task`, `--demo` (and the rest of our plain flags) before the config flag exists."""
  pre = flags.FlagValues()
  _define_flags(pre)
  pre(list(argv), known_only=True)
  return pre


def _config_overrides(argv: Sequence[str]) -> list[str]:
  """The dotted paths of `--config.a.b=...` arguments."""
  paths = []
  for arg in argv[1:]:
    match = re.match(r"^--?(?:no)?config\.([\w.]+)(?:=|$)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Calls `get_config(variant)` of `FILE[:VARIANT]`, as `config_flags` does, with clear errors.

  Raises:
    app.UsageError: the file does not exist, or `get_config` rejects the variant.
  """
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    raise app.UsageError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location("mobilebert_jax_task_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  try:
    return module.get_config(*([variant] if variant else []))
  except ValueError as e:
    raise app.UsageError(f"--config={spec}: {e}") from None


def _check_overrides(config: ml_collections.ConfigDict, paths: Sequence[str]) -> None:
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
      raise app.UsageError(f"--config.{path}: there is no field {key!r}.{hint}{listing}")


def _config_first(argv: Sequence[str]) -> tuple[list[str], str | None]:
  """Moves `--config[=]FILE` right after the program name (`config_flags` wants it before the
  `--config.x=y` overrides; users should not have to care) and returns its value, if any.

  Raises:
    app.UsageError: `--config` without a value.
  """
  argv = list(argv)
  for index, arg in enumerate(argv[1:], start=1):
    if re.match(r"^--?config=", arg):
      return [argv[0], arg, *argv[1:index], *argv[index + 1 :]], arg.split("=", 1)[1]
    if re.match(r"^--?config$", arg):
      if index + 1 == len(argv):
        raise app.UsageError("--config needs a value: --config=FILE[:VARIANT]")
      moved = argv[index : index + 2]
      return [argv[0], *moved, *argv[1:index], *argv[index + 2 :]], argv[index + 1]
  return argv, None


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parses the command line (argv[0] is the program) into a fresh `FlagValues`.

  The default of `--config` depends on `--task`, so `--task` and `--demo` are read first; a
  fresh `FlagValues` per call keeps in-process calls (tests, notebooks) independent.

  Raises:
    app.UsageError: a missing or unknown task or workdir, a bad config file or variant, an
      override of a field that does not exist, or an unknown flag.
  """
  argv, explicit_config = _config_first(argv)
  try:
    pre = _pre_parse(argv)
    task = tasks.canonical_task_name(pre.task) if pre.task else None
    if explicit_config is not None:
      spec = explicit_config
    elif task is not None:
      spec = default_config(task, pre.demo)
    else:
      raise app.UsageError(f"pass --task=TASK (one of {sorted(tasks.TASKS)}) or --config=FILE")
  except (flags.Error, ValueError) as e:
    raise app.UsageError(str(e)) from None
  _check_overrides(load_config_file(spec), _config_overrides(argv))

  parsed = flags.FlagValues()
  _define_flags(parsed)
  config_flags.DEFINE_config_file(
    "config",
    default=spec if explicit_config is None else None,
    help_string="Task config file[:variant]; default from --task.",
    flag_values=parsed,
    lock_config=True,
    sys_argv=argv,
  )
  try:
    leftover = parsed(argv, known_only=True)
    # What is left are absl's own flags (--verbosity, ...) or mistakes.
    flags.FLAGS(leftover, known_only=False)
  except flags.Error as e:
    raise app.UsageError(str(e)) from None
  if not parsed.workdir:
    raise app.UsageError("--workdir is required")
  config = parsed.config
  if task is not None and config.task != task:
    raise app.UsageError(f"--task={pre.task} but --config is for task {config.task!r}")
  if parsed.demo and explicit_config is not None:
    raise app.UsageError(
      "--demo picks its own config; leave out --config (or pass --config=configs/squad.py:demo "
      "without --demo)"
    )
  return parsed


def finetune(parsed: flags.FlagValues) -> dict[str, float]:
  """Runs the training the parsed flags describe; returns the final metrics."""
  distributed.initialize_distributed(parsed.jax_distributed)
  from mobilebert_jax import trainer  # JAX backends start here, after distributed start-up.

  config = parsed.config
  if parsed.init_from is not None:
    config.init_from = parsed.init_from
  return trainer.train_and_evaluate(config, parsed.workdir)


def main(argv: Sequence[str]) -> dict[str, float]:
  """In-process entry point: `main(["finetune", "--task=squad", "--workdir=/tmp/x"])`."""
  return finetune(parse_flags(argv))


def _parse_for_app(argv: Sequence[str]) -> flags.FlagValues:
  if any(arg in _HELP_ARGS for arg in argv[1:]):
    help_flags = flags.FlagValues()
    _define_flags(help_flags)
    print(__doc__)
    print(help_flags.get_help(include_special_flags=False))
    print("  --config: Task config file[:variant]; default from --task.")
    sys.exit(0)
  try:
    return parse_flags(argv)
  except app.UsageError as e:
    sys.stderr.write(f"mobilebert-finetune: {e}\nPass --help for usage.\n")
    sys.exit(1)


def _app_main(parsed: flags.FlagValues) -> None:
  with summaries.quiet_library_logs():
    finetune(parsed)  # app.run would turn a returned value into the exit status


def run() -> None:
  """The `mobilebert-finetune` console script."""
  app.run(_app_main, flags_parser=_parse_for_app)


if __name__ == "__main__":
  run()
