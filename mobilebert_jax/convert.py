"""Converts any checkpoint `load_pretrained` reads into an Orbax checkpoint of ours or an HF dir.

    python -m mobilebert_jax.convert SRC DST [--to=orbax|hf] [--model_class=CLASS]
        [--config=PATH_OR_PRESET] [--scan_layers] [--set KEY=VALUE ...]

SRC is a Hugging Face directory or hub id, a TF1 (google-research) or TF2 (Model Garden)
checkpoint prefix or directory, or a TF-Hub SavedModel directory. The config comes from the
source (its `config.json`/`bert_config.json`), or from `--config`, which replaces it: a preset
(e.g. `mobilebert-uncased`) or a config file (`bert_config.json` is read in the TF1 dialect; other
JSON files in whichever dialect they are written; `params.yaml` as a Model Garden experiment).
`--set` changes config fields, e.g. `--set num_labels=3` or `--set vocab_size=119547`.

The command prints what was loaded, initialised and left unused, and the largest |value| of the
word-embedding [PAD] row (docs/pitfalls.md P3: a non-zero row makes outputs depend on the
padded length).

`--to=orbax` (default) writes a params-only checkpoint: step 0 of a
`checkpointing.CheckpointManager` directory whose state is `{"params": ...}` and whose metadata
records the model config, so that `checkpointing.load_params_from_checkpoint(DST,
abstract_params)` reads it (e.g. as `--init_from`).
`--to=hf` writes `config.json` + `model.safetensors`, which transformers' `MobileBert*` classes
load (transformers cannot build the IB-BERT teacher, docs/pitfalls.md P10).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.models import MODEL_CLASSES
from mobilebert_jax.train.summaries import loggers_at_level
from mobilebert_jax.weights import load_pretrained, save_pretrained, tf_common

PyTree = Any

DEFAULT_MODEL_CLASS = "MobileBertForPreTraining"


def read_config_argument(value: str) -> MobileBertConfig:
  """The config named by `--config`: a preset name or a config file.

  Raises:
    ValueError: neither a preset nor an existing file, or an unreadable file.
  """
  if value in PRESETS:
    return MobileBertConfig.from_preset(value)
  if not os.path.isfile(value):
    raise ValueError(
      f"--config={value!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file"
    )
  return tf_common.read_config_file(value).config


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`KEY=VALUE` strings -> config overrides; values are JSON when they parse, else strings.

  Raises:
    ValueError: an item without "=".
  """
  overrides: dict[str, Any] = {}
  for item in items:
    key, sep, text = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
    try:
      overrides[key] = json.loads(text)
    except json.JSONDecodeError:
      overrides[key] = text
  return overrides


def pad_row_max_abs(params: PyTree, pad_token_id: int) -> float | None:
  """max |word_embeddings[pad_token_id]| of a parameter tree (None if it has no word table)."""
  encoder = params.get("mobilebert", params)
  table = encoder.get("embeddings", {}).get("word_embeddings")
  if table is None or not 0 <= pad_token_id < table.shape[0]:
    return None
  return float(np.max(np.abs(np.asarray(table[pad_token_id], dtype=np.float32))))


def write_orbax(directory: str, module: Any, params: PyTree, source: str) -> str:
  """Writes a params-only checkpoint (step 0) that `load_params_from_checkpoint` reads.

  Raises:
    FileExistsError: `directory` exists and is not empty.
  """
  from mobilebert_jax.train import checkpointing  # Orbax is only needed for this output

  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} exists and is not empty; remove it or choose another DST")
  with checkpointing.CheckpointManager(
    directory,
    save_interval_steps=None,
    max_to_keep=None,
    async_save=False,
    model_config=module.config,
    train_config={"converted_from": source, "model_class": type(module).__name__},
  ) as manager:
    manager.save(0, {"params": params}, force=True)
  return directory


def convert(
  source: str,
  destination: str,
  *,
  to: str = "orbax",
  model_class: str = DEFAULT_MODEL_CLASS,
  config: MobileBertConfig | None = None,
  overrides: Mapping[str, Any] | None = None,
  out=sys.stdout,
) -> str:
  """Loads `source` into `model_class` and writes it to `destination`.

  Args:
    source: anything `load_pretrained` reads.
    destination: the Orbax checkpoint directory or the HF directory to write.
    to: "orbax" or "hf".
    model_class: one of the eight class names.
    config: the architecture, when the source carries none (or to override it).
    overrides: config fields to change (`scan_layers=True`, `num_labels=3`, ...).
    out: where the report goes.

  Returns:
    The written directory.

  Raises:
    ValueError: an unknown `to` or `model_class`, or anything `load_pretrained` raises.
  """
  if to not in ("orbax", "hf"):
    raise ValueError(f"--to must be 'orbax' or 'hf', got {to!r}")
  if model_class not in MODEL_CLASSES:
    raise ValueError(f"--model_class must be one of {sorted(MODEL_CLASSES)}, got {model_class!r}")
  module, params, report = load_pretrained(
    source, MODEL_CLASSES[model_class], config=config, return_report=True, **dict(overrides or {})
  )
  print(report.summary(), file=out)
  pad_max = pad_row_max_abs(params, module.config.pad_token_id)
  if pad_max is not None:
    print(
      f"Word-embedding [PAD] row (id {module.config.pad_token_id}): max |value| = {pad_max:.6g}",
      file=out,
    )
  if to == "hf":
    written = save_pretrained(destination, module, params)
    print(f"Wrote a Hugging Face {model_class} directory: {written}", file=out)
  else:
    written = write_orbax(destination, module, params, source)
    print(
      f"Wrote an Orbax params checkpoint (step 0) of {model_class}: {written}; read it with "
      "mobilebert_jax.train.checkpointing.load_params_from_checkpoint",
      file=out,
    )
  return written


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="python -m mobilebert_jax.convert",
    description="Convert a MobileBERT checkpoint (HF, TF1, TF2, TF-Hub) to Orbax or HF.",
  )
  parser.add_argument("source", metavar="SRC", help="checkpoint path, directory or HF hub id")
  parser.add_argument("destination", metavar="DST", help="directory to write")
  parser.add_argument("--to", choices=("orbax", "hf"), default="orbax", help="output format")
  parser.add_argument(
    "--model_class",
    default=DEFAULT_MODEL_CLASS,
    choices=sorted(MODEL_CLASSES),
    metavar="CLASS",
    help=f"one of the eight MobileBert* classes to load into (default {DEFAULT_MODEL_CLASS})",
  )
  parser.add_argument(
    "--config",
    default=None,
    help=f"preset ({', '.join(sorted(PRESETS))}) or config file; replaces SRC's config",
  )
  parser.add_argument(
    "--scan_layers", action="store_true", help="store the blocks stacked (nn.scan layout)"
  )
  parser.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="change a config field (repeatable), e.g. --set num_labels=3",
  )
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status."""
  parser = build_parser()
  args = parser.parse_args(argv)
  # TensorFlow's C++ start-up chatter would bury the report (an explicit setting wins).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    config = read_config_argument(args.config) if args.config else None
    overrides = parse_overrides(args.overrides)
    if args.scan_layers:
      overrides["scan_layers"] = True
    # The report is printed below; load_pretrained's own logging of it would repeat it.
    with loggers_at_level(("mobilebert_jax.weights.loading",)):
      convert(
        args.source,
        args.destination,
        to=args.to,
        model_class=args.model_class,
        config=config,
        overrides=overrides,
      )
  except (FileNotFoundError, FileExistsError, ValueError, ImportError, TypeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run() -> None:
  """Console-script entry point (`mobilebert-convert`)."""
  sys.exit(main())


if __name__ == "__main__":
  run()
