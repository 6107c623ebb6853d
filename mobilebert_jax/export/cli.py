"""`python -m mobilebert_jax.export SRC OUT_DIR --format=...`: the command line of `export_model`.

    python -m mobilebert_jax.export /tmp/squad /tmp/squad_tflite --format=tflite
    python -m mobilebert_jax.export /tmp/squad /tmp/squad_int8 --format=tflite --quantize=int8
    python -m mobilebert_jax.export google/mobilebert-uncased /tmp/hub --format=saved_model

Prints one line per step and the report's main numbers; a bad SRC, flag or setting prints one
line `error: ...` and exits with status 1 (an unknown flag: 2), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from mobilebert_jax.model.models import MODEL_CLASSES

PROG = "python -m mobilebert_jax.export"


class _Parser(argparse.ArgumentParser):
  """argparse with its errors on one line (no usage block above them)."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message} (pass --help for usage)\n")


def _fill(text: str) -> float | str | None:
  if text.lower() in ("auto", "none"):
    return text.lower() if text.lower() == "auto" else None
  try:
    return float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"expected a negative number, 'none' or 'auto', got {text!r}"
    ) from None


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(
    prog=PROG,
    description="Export a MobileBERT model to a TF SavedModel, TFLite or StableHLO, with a report "
    "of its error against JAX and (for a fine-tuning workdir) its dev metric.",
  )
  parser.add_argument(
    "source",
    metavar="SRC",
    help="a fine-tuning workdir, an Orbax checkpoint of ours, or anything load_pretrained reads",
  )
  parser.add_argument("out_dir", metavar="OUT_DIR", help="directory to write")
  # Plain strings, checked by export_model: its one-line errors name the choices.
  parser.add_argument("--format", default="tflite", help="saved_model, tflite or stablehlo")
  parser.add_argument(
    "--quantize", default="none", help="TFLite only: none, dynamic (int8 weights) or int8"
  )
  parser.add_argument("--seq_len", type=int, default=None, help="tokens per sequence")
  parser.add_argument(
    "--model_class",
    default=None,
    metavar="CLASS",
    help=f"class to export (one of {', '.join(sorted(MODEL_CLASSES))}); default: the "
    "checkpoint's own, MobileBertModel for other weights",
  )
  parser.add_argument(
    "--calibration_steps", type=int, default=100, help="training examples to calibrate int8 on"
  )
  parser.add_argument(
    "--masked_attention_logit",
    type=_fill,
    default="auto",
    metavar="X",
    help="value masked attention logits are replaced by (negative), 'none' for exactly zero "
    "weight; default 'auto': -6 for --quantize=int8, the model's own setting otherwise",
  )
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument(
    "--num_threads", type=int, default=1, help="interpreter threads for the report's TFLite runs"
  )
  parser.add_argument(
    "--no_evaluate",
    dest="evaluate",
    action="store_false",
    help="skip the comparison with JAX and the dev-set metric",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  args = build_parser().parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  from mobilebert_jax.export.api import export_model
  from mobilebert_jax.export.deps import ExportError
  from mobilebert_jax.train.summaries import loggers_at_level

  # The importers' and Orbax's own chatter would bury the report.
  try:
    with loggers_at_level(("mobilebert_jax.weights.loading", "absl", "orbax")):
      result = export_model(
        args.source,
        args.out_dir,
        format=args.format,
        quantize=args.quantize,
        seq_len=args.seq_len,
        model_class=args.model_class,
        calibration_steps=args.calibration_steps,
        masked_attention_logit=args.masked_attention_logit,
        evaluate=args.evaluate,
        num_threads=args.num_threads,
        step=args.step,
      )
  except (ExportError, FileNotFoundError, ImportError, ValueError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  summary = {
    k: result.report[k]
    for k in ("format", "quantization", "file_size_bytes", "max_relative_error", "task_metric")
    if k in result.report
  }
  print(f"wrote {result.path}")
  print(json.dumps(summary, indent=2))
  print(f"report: {result.report_path}")
  return 0


def run() -> None:
  """Console-script entry point (`mobilebert-export`)."""
  sys.exit(main())
