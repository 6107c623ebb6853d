"""`export_report.json`: what was exported, how, and how close it is to the JAX model.

Written next to every export so that a number quoted from it (a file size, an error, a dev
score) always comes with the settings that produced it. Fields:

* `format`, `quantization` (and, for int8, `integer_only` and `learned_ranges`: whether the
  activation ranges came from quantization-aware training), `file`, `file_size_bytes`;
* `source`, `source_kind`, `model_class`, `step`, `collections` (variable collections besides
  `params` applied in the graph, e.g. learned activation ranges);
* `seq_len`, `batch` (1 for TFLite, "symbolic" otherwise), `inputs` (name -> shape, dtype),
  `outputs`, `signature`;
* `masked_attention_logit` (the value masked attention logits are replaced by in the exported
  graph; null means the float32 minimum, i.e. exactly zero weight), `calibration_steps` (examples
  calibrated on) and `calibration_data` (the task's training data or the caller's);
* `max_relative_error` per output and overall, against the JAX model with the exported config,
  and `error_inputs` saying which inputs were compared;
* for a fine-tuning workdir, `task_metric`: the task, its main metric, and the dev metrics of
  the exported model (`exported`), of the JAX model as trained (`jax`) and, when the export
  changed the config (the mask fill, a QAT model's export form), of the JAX model with the
  exported config (`jax_export_config`);
* `versions` of the libraries involved and `export_seconds`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
from typing import Any

from mobilebert_jax import atomic_files

FILE_NAME = "export_report.json"


def library_versions() -> dict[str, str]:
  """Versions of the packages an export depends on (those installed)."""
  versions = {}
  for package in ("jax", "jaxlib", "flax", "tensorflow", "ai-edge-litert"):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      versions[package] = importlib.metadata.version(package)
  return versions


def write(out_dir: str, report: dict[str, Any]) -> str:
  """Writes `report` as `OUT_DIR/export_report.json` (atomically); returns the path."""
  path = os.path.join(out_dir, FILE_NAME)
  atomic_files.write_json(path, report)
  return path


def size_of(path: str) -> int:
  """Bytes of a file, or of every file under a directory."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(
    os.path.getsize(os.path.join(folder, name))
    for folder, _, names in os.walk(path)
    for name in names
  )
