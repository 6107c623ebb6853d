r"""Distil a MobileBERT student from a teacher (the `mobilebert-distill` console script).

    python -m mobilebert_jax.distill --workdir=DIR --teacher=SOURCE \
      [--config=configs/distill.py[:VARIANT]] [--config.FIELD=VALUE ...] [--jax_distributed]
    python -m mobilebert_jax.distill --demo --workdir=DIR

The recipe is `configs/distill.py` (`mobilebert_jax/configs/`): progressive layer-wise
knowledge transfer into `DIR/phase1`, then pretraining distillation into `DIR`, with the original
TF1 semantics; its docstring gives the settings and their sources. `--teacher` is the teacher's
weights: a pretraining workdir of ours (`python -m mobilebert_jax.pretrain
--config=configs/pretrain.py:teacher`), an HF directory or hub id, or a TF checkpoint. Every config
field can be overridden with `--config.FIELD=VALUE`; a misspelt field is an error.

Rerunning with the same `--workdir` resumes where the run stopped (inside phase 1, between the
phases, inside phase 2). A finished `DIR` is a fine-tuning `--init_from`.

`--demo` runs the offline demonstration instead (`mobilebert_jax.distill_demo`): a WordPiece
vocabulary, a small IB-BERT teacher and three students (from scratch, pretraining distillation
only, the full recipe) on English text read from installed packages, about 15 minutes on 2 CPU
cores; it writes `DIR/demo_results.json`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from mobilebert_jax import cli
from mobilebert_jax.train import distributed

_PROG = "mobilebert-distill"
_CONFIG_HELP = "Distillation config file[:variant]; default configs/distill.py (the paper's)."


def default_config() -> str:
  """The `--config` value without one: the package's `configs/distill.py`."""
  return cli.package_config("distill.py")


def _define_flags(flag_values: flags.FlagValues) -> None:
  cli.define_training_flags(flag_values, workdir_holds="checkpoints, metrics")
  flags.DEFINE_string(
    "teacher",
    None,
    "The teacher's weights (overrides config.teacher): our pretraining workdir, HF dir or hub "
    "id, TF1/TF2/TF-Hub checkpoint.",
    flag_values=flag_values,
  )
  flags.DEFINE_bool(
    "demo",
    False,
    "Run the offline demonstration (teacher, three students) into --workdir instead.",
    flag_values=flag_values,
  )


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parses the command line (argv[0] is the program) into a fresh `FlagValues`.

  Raises:
    cli.UsageError: a missing workdir or teacher, a bad config file or variant, an override of a
      field that does not exist, or an unknown flag.
  """
  parsed = cli.parse(argv, _define_flags, lambda pre: default_config(), config_help=_CONFIG_HELP)
  cli.require(parsed, "workdir")
  if not parsed.demo and not (parsed.teacher or parsed.config.teacher):
    raise cli.UsageError("--teacher is required (the teacher's weights), unless --demo")
  return parsed


def distill(parsed: flags.FlagValues) -> dict[str, float]:
  """Runs what the parsed flags describe; returns the student's final held-out metrics."""
  distributed.initialize_distributed(parsed.jax_distributed)
  # JAX backends start here, after distributed start-up.
  if parsed.demo:
    from mobilebert_jax import distill_demo

    return distill_demo.run_demo(parsed.workdir)
  from mobilebert_jax.trainers import distillation

  config = parsed.config
  if parsed.teacher is not None:
    config.teacher = parsed.teacher
  return distillation.train_and_evaluate(config, parsed.workdir)


_COMMAND = cli.TrainingCommand(
  _PROG, __doc__, _define_flags, parse_flags, distill, config_help=_CONFIG_HELP
)
# `main(argv)`: in-process entry point; `run()`: the `mobilebert-distill` console script.
main = _COMMAND.main
run = _COMMAND.run


if __name__ == "__main__":
  run()
