r"""Fine-tune MobileBERT from the command line (the `mobilebert-finetune` console script).

    python -m mobilebert_jax.finetune --task=TASK --workdir=DIR [--init_from=SOURCE] \
      [--config=FILE[:VARIANT]] [--config.FIELD=VALUE ...] [--demo] [--jax_distributed] \
      [--compilation_cache_dir=DIR|none]

TASK is `squad`, `squad_v2`, `glue/<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte|wnli>`, `conll2003` or
`swag` (usual spellings such as `squad2.0` or `glue/SST-2` work). The task picks its recipe, the
package's config file `configs/<family>.py` (`mobilebert_jax/configs/`); `--config` names another
file or variant instead, e.g. `--config=configs/glue.py:task=rte,size=tiny`. Every config field
can be overridden with `--config.FIELD=VALUE` (`--config.optimizer.learning_rate=3e-5`); a
misspelt field is an error.

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
Compiled steps are kept in JAX's persistent compilation cache (`--compilation_cache_dir`, by
default `~/.cache/mobilebert_jax/jax_cache`), so the same command compiles nothing a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from mobilebert_jax import cli, tasks
from mobilebert_jax.train import distributed

# Config file of each task family, and the variant a task adds to it.
_FAMILY_FILES = {
  "squad": "squad.py",
  "glue": "glue.py",
  "conll2003": "conll2003.py",
  "swag": "swag.py",
}
_PROG = "mobilebert-finetune"
_CONFIG_HELP = "Task config file[:variant]; default from --task."


def config_dir() -> str:
  """Where the task configs are: the package's `configs/`."""
  return cli.CONFIGS_DIR


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
  return cli.package_config(_FAMILY_FILES[task.family], variant)


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "task", None, "Task to fine-tune; picks the default --config.", flag_values=flag_values
  )
  cli.define_training_flags(
    flag_values, workdir_holds="checkpoints, metrics, predictions", init_from=True
  )
  flags.DEFINE_bool(
    "demo", False, "Run the offline SQuAD demo (with --task=squad).", flag_values=flag_values
  )


def _default_config(pre: flags.FlagValues) -> str:
  if not pre.task:
    raise cli.UsageError(f"pass --task=TASK (one of {sorted(tasks.TASKS)}) or --config=FILE")
  return default_config(tasks.canonical_task_name(pre.task), pre.demo)


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parses the command line (argv[0] is the program) into a fresh `FlagValues`.

  The default of `--config` depends on `--task`, so `--task` and `--demo` are read first.

  Raises:
    cli.UsageError: a missing or unknown task or workdir, a bad config file or variant, an
      override of a field that does not exist, or an unknown flag.
  """
  explicit_config = cli.config_first(argv)[1]
  parsed = cli.parse(argv, _define_flags, _default_config, config_help=_CONFIG_HELP)
  cli.require(parsed, "workdir")
  config = parsed.config
  task = tasks.canonical_task_name(parsed.task) if parsed.task else None
  if task is not None and config.task != task:
    raise cli.UsageError(f"--task={parsed.task} but --config is for task {config.task!r}")
  if parsed.demo and explicit_config is not None:
    raise cli.UsageError(
      "--demo picks its own config; leave out --config (or pass --config=configs/squad.py:demo "
      "without --demo)"
    )
  return parsed


def finetune(parsed: flags.FlagValues) -> dict[str, float]:
  """Runs the training the parsed flags describe; returns the final metrics."""
  distributed.initialize_distributed(parsed.jax_distributed)
  # JAX backends start here, after distributed start-up.
  from mobilebert_jax.trainers import finetuning

  config = parsed.config
  if parsed.init_from is not None:
    config.init_from = parsed.init_from
  return finetuning.train_and_evaluate(config, parsed.workdir)


_COMMAND = cli.TrainingCommand(
  _PROG, __doc__, _define_flags, parse_flags, finetune, config_help=_CONFIG_HELP
)
# `main(argv)`: in-process entry point; `run()`: the `mobilebert-finetune` console script.
main = _COMMAND.main
run = _COMMAND.run


if __name__ == "__main__":
  run()
