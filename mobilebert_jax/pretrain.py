r"""Pretrain with MLM + NSP from the command line (the `mobilebert-pretrain` console script).

    python -m mobilebert_jax.pretrain --workdir=DIR [--config=configs/pretrain.py[:VARIANT]] \
      [--config.FIELD=VALUE ...] [--init_from=SOURCE] [--jax_distributed]

The recipe is `configs/pretrain.py` (`mobilebert_jax/configs/`), variants `teacher` (the
default: IB-BERT_LARGE), `student` (MobileBERT from scratch), `bert` (BERT-base), `recipe=NAME`
and `size=tiny`; its docstring gives the recipes and their sources. Every config field can be
overridden with `--config.FIELD=VALUE`; a misspelt field is an error.

Examples:

    # The teacher from text files (one sentence per line, a blank line between documents).
    python -m mobilebert_jax.pretrain --workdir=/tmp/teacher \
      --config.tokenizer.vocab_file=/models/mobilebert-uncased/vocab.txt \
      --config.data.train_files='/data/wiki/*.txt' --config.data.eval_files=/data/heldout.txt
    # BERT-base with BERT's recipe (90 % of the steps at 128 tokens, the rest at 512).
    python -m mobilebert_jax.pretrain --workdir=/tmp/bert --config=configs/pretrain.py:bert \
      --config.tokenizer.vocab_file=/models/bert-base-uncased/vocab.txt \
      --config.data.train_files='/data/wiki/*.txt'

Running again with the same `--workdir` resumes from its latest checkpoint. `--init_from` (when
the workdir has none) accepts what fine-tuning accepts: an HF directory or hub id, TF1/TF2/TF-Hub
checkpoints, one of our workdirs or Orbax checkpoints, or `preset:NAME`; without it the config's
`model.preset` is trained from scratch. A finished workdir is a fine-tuning `--init_from`.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from mobilebert_jax import cli
from mobilebert_jax.train import distributed

_PROG = "mobilebert-pretrain"
_CONFIG_HELP = "Pretraining config file[:variant]; default configs/pretrain.py (the teacher)."


def default_config() -> str:
  """The `--config` value without one: the package's `configs/pretrain.py`."""
  return cli.package_config("pretrain.py")


def _define_flags(flag_values: flags.FlagValues) -> None:
  cli.define_training_flags(flag_values, workdir_holds="checkpoints, metrics", init_from=True)


def parse_flags(argv: Sequence[str]) -> flags.FlagValues:
  """Parses the command line (argv[0] is the program) into a fresh `FlagValues`.

  Raises:
    cli.UsageError: a missing workdir, a bad config file or variant, an override of a field
      that does not exist, or an unknown flag.
  """
  parsed = cli.parse(argv, _define_flags, lambda pre: default_config(), config_help=_CONFIG_HELP)
  cli.require(parsed, "workdir")
  return parsed


def pretrain(parsed: flags.FlagValues) -> dict[str, float]:
  """Runs the pretraining the parsed flags describe; returns the final held-out metrics."""
  distributed.initialize_distributed(parsed.jax_distributed)
  # JAX backends start here, after distributed start-up.
  from mobilebert_jax.trainers import pretraining

  config = parsed.config
  if parsed.init_from is not None:
    config.init_from = parsed.init_from
  return pretraining.train_and_evaluate(config, parsed.workdir)


_COMMAND = cli.TrainingCommand(
  _PROG, __doc__, _define_flags, parse_flags, pretrain, config_help=_CONFIG_HELP
)
# `main(argv)`: in-process entry point; `run()`: the `mobilebert-pretrain` console script.
main = _COMMAND.main
run = _COMMAND.run


if __name__ == "__main__":
  run()
