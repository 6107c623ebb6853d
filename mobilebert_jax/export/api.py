"""`export_model`: one call from a checkpoint to an exported model and its report.

    from mobilebert_jax import export

    result = export.export_model("/tmp/squad", "/tmp/squad_int8", format="tflite",
                                 quantize="int8")
    result.report["task_metric"]          # dev F1/EM of the .tflite next to JAX's
    export.evaluate_tflite(result.path, "/tmp/squad")   # the same metric, on its own

Each export resolves the source (`sources`), fixes the graph's settings (sequence length, the
mask fill value), writes the model (`saved_model`, `tflite`, `stablehlo`), then runs it next to
the JAX model (`runners`, `evaluation`) and writes `export_report.json` (`report`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from mobilebert_jax.export import (
  calibration,
  evaluation,
  report,
  runners,
  saved_model,
  stablehlo,
  tflite,
)
from mobilebert_jax.export.deps import ExportError
from mobilebert_jax.export.signatures import (
  EXPORTABLE_CLASSES,
  SERVING_KEY,
  Signature,
  signature_for,
)
from mobilebert_jax.export.sources import ExportSource, resolve_source
from mobilebert_jax.train import summaries

FORMATS = ("saved_model", "tflite", "stablehlo")
QUANTIZATIONS = tflite.QUANTIZATIONS
AUTO = "auto"
# The mask fill of full-integer exports unless told otherwise: the google-research TF1 code's
# 2021 "replace masked logits by -6" (docs/pitfalls.md P5). A finite, small fill keeps the
# softmax input's range, and so its int8 scale, set by the real logits; the float32-minimum
# default would stretch it over ~3e38 (on a tiny MobileBERT-shaped model -6 halved the int8
# error).
INT8_MASKED_ATTENTION_LOGIT = -6.0
DEFAULT_SEQ_LEN = 128
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ExportResult:
  """What `export_model` wrote.

  Attributes:
    path: the model: `OUT_DIR/model.tflite`, `OUT_DIR/model.stablehlo`, or OUT_DIR itself for
      a SavedModel.
    report: the contents of `export_report.json`.
    report_path: where the report was written.
  """

  path: str
  report: dict[str, Any]
  report_path: str


def _quiet(function: Callable[..., T]) -> Callable[..., T]:
  """Hides Orbax's and TensorFlow's INFO chatter (restores, fingerprints) while `function` runs.

  Their warnings and errors still show; a notebook that turned absl's verbosity up for training
  would otherwise get a page of them per export.
  """

  @functools.wraps(function)
  def quiet(*args: Any, **kwargs: Any) -> T:
    with summaries.quiet_library_logs(("orbax", "tensorflow")):
      return function(*args, **kwargs)

  return quiet


@_quiet
def export_model(
  source: str | os.PathLike[str] | ExportSource,
  out_dir: str | os.PathLike[str],
  *,
  format: str = "tflite",
  quantize: str = "none",
  seq_len: int | None = None,
  model_class: str | None = None,
  calibration_steps: int = calibration.DEFAULT_STEPS,
  masked_attention_logit: float | str | None = AUTO,
  representative_inputs: Iterable[Mapping[str, np.ndarray]] | None = None,
  num_choices: int | None = None,
  evaluate: bool = True,
  num_threads: int = 1,
  step: int | None = None,
) -> ExportResult:
  """Exports a model and writes `OUT_DIR/export_report.json`.

  Args:
    source: a fine-tuning workdir, a checkpoint of ours, anything `load_pretrained` reads, or
      an `ExportSource` (see `sources.resolve_source`).
    out_dir: the output directory (created if needed).
    format: "saved_model" (symbolic batch, fine-tunable, TF-Hub interface), "tflite" (static
      [1, seq_len]) or "stablehlo" (`jax.export`, symbolic batch).
    quantize: for TFLite: "none", "dynamic" (int8 weights) or "int8" (full integer).
    seq_len: tokens per sequence T; default: the run's `max_seq_length` for a workdir, else 128.
    model_class: the class to export (see `resolve_source`).
    calibration_steps: training examples to calibrate a full-integer export on.
    masked_attention_logit: the value masked attention logits are replaced by in the graph: a
      negative float, None for the float32 minimum (exactly zero weight), or "auto": -6 for
      full-integer exports of a model that sets none, the model's own setting otherwise.
    representative_inputs: calibration inputs by signature input name, each [1, ...] (replaces
      the task's training data; needed for int8 exports of sources without a task).
    num_choices: choices per example of a multiple-choice model (default 4, SWAG's).
    evaluate: compare with JAX and score the dev set (the report's errors and task metric).
    num_threads: interpreter threads when running a .tflite for the report.
    step: the checkpoint step (default: the latest).

  Returns:
    The `ExportResult`.

  Raises:
    ExportError: settings that contradict each other or the model (one line each).
    FileNotFoundError: SRC is not a source this package reads.
    ImportError: TensorFlow or ai-edge-litert is missing (naming the `export` extra).
  """
  started = time.perf_counter()
  if format not in FORMATS:
    raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
  if quantize not in QUANTIZATIONS:
    raise ExportError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
  if quantize != "none" and format != "tflite":
    raise ExportError(f"--quantize={quantize} applies to --format=tflite only")
  if model_class is not None and model_class not in EXPORTABLE_CLASSES:
    raise ExportError(
      f"--model_class={model_class} has no export signature; use one of "
      f"{', '.join(EXPORTABLE_CLASSES)}"
    )
  out_dir = os.path.abspath(os.fspath(out_dir))
  if format == "saved_model" and any(c in out_dir for c in "[]*?"):
    # TF reads a SavedModel's variables through a glob of its path.
    raise ExportError(f"{out_dir}: a SavedModel path must not contain [, ], * or ?")
  try:
    resolved = resolve_source(source, model_class=model_class, step=step)
  except ValueError as e:
    raise ExportError(str(e)) from e
  seq_len = _seq_len(resolved, seq_len)
  fill = _mask_fill(resolved, quantize, masked_attention_logit)
  changes: dict[str, Any] = {}
  if fill != resolved.config.masked_attention_logit:
    changes["masked_attention_logit"] = fill
  learned_ranges = _uses_learned_ranges(resolved, quantize)
  if learned_ranges and not resolved.config.quantization_export:
    changes["quantization_export"] = True
  exported = resolved.with_config(**changes) if changes else resolved
  signature = signature_for(exported.module, num_choices)
  os.makedirs(out_dir, exist_ok=True)

  integer_only = calibrated = None
  if format == "saved_model":
    path = saved_model.save(exported, out_dir, signature, seq_len)
  elif format == "stablehlo":
    path = os.path.join(out_dir, stablehlo.FILE_NAME)
    with open(path, "wb") as f:
      f.write(stablehlo.export(exported, signature, seq_len).serialize())
  else:
    samples = representative_inputs
    if quantize == "int8" and samples is None:
      samples = calibration.representative_inputs(resolved, signature, seq_len, calibration_steps)
    if samples is not None:
      samples = list(samples)
      calibrated = len(samples)
    converted = tflite.convert(
      exported,
      signature,
      seq_len,
      quantize=quantize,
      representative_inputs=samples,
      clip_ranges=learned_ranges,
    )
    integer_only = converted.integer_only
    path = os.path.join(out_dir, tflite.FILE_NAME)
    with open(path, "wb") as f:
      f.write(converted.content)

  shape = signature.input_shape(1 if format == "tflite" else None, seq_len)
  contents: dict[str, Any] = {
    "format": format,
    "quantization": quantize,
    "file": os.path.relpath(path, out_dir) if path != out_dir else ".",
    "file_size_bytes": report.size_of(path),
    "source": resolved.description,
    "source_kind": resolved.kind,
    "model_class": signature.model_class,
    "step": resolved.step,
    "collections": list(resolved.collections),
    "seq_len": seq_len,
    "batch": 1 if format == "tflite" else "symbolic",
    "signature": SERVING_KEY,
    "inputs": {n: {"shape": list(shape), "dtype": "int32"} for n in signature.inputs},
    "outputs": list(signature.outputs),
    "masked_attention_logit": fill,
  }
  if format == "tflite" and quantize == "int8":
    contents["integer_only"] = integer_only
    contents["learned_ranges"] = learned_ranges
    if converted.clip_ranges is not None:
      contents["learned_ranges_written"] = converted.clip_ranges
    # The examples actually used: a task with fewer training features than asked uses all.
    contents["calibration_steps"] = calibrated
    contents["calibration_data"] = (
      "task training data" if representative_inputs is None else "given by the caller"
    )
  if evaluate:
    runner = _runner(format, path, signature, num_threads)
    contents.update(_compare(runner, resolved, exported, signature, seq_len))
  contents["versions"] = report.library_versions()
  contents["export_seconds"] = round(time.perf_counter() - started, 1)
  return ExportResult(path, contents, report.write(out_dir, contents))


def export_tflite(
  source: str | os.PathLike[str] | ExportSource,
  out_dir: str | os.PathLike[str],
  *,
  quantize: str = "none",
  **kwargs: Any,
) -> ExportResult:
  """`export_model(..., format="tflite")`: writes `OUT_DIR/model.tflite` and its report."""
  return export_model(source, out_dir, format="tflite", quantize=quantize, **kwargs)


@_quiet
def evaluate_tflite(
  tflite_path: str | os.PathLike[str],
  source: str | os.PathLike[str] | ExportSource,
  *,
  num_threads: int = 1,
) -> dict[str, float]:
  """The dev metrics of a .tflite file on the task of a fine-tuning workdir.

  The file's own sequence length decides how the dev set is featurised.

  Args:
    tflite_path: a file written by `export_tflite` (or any with our signature names).
    source: the workdir (or its `ExportSource`) whose task and tokenizer to use.
    num_threads: interpreter threads.

  Returns:
    The task's metrics, e.g. {"exact_match": ..., "f1": ...} for SQuAD.

  Raises:
    ExportError: the source is not a fine-tuning workdir.
  """
  resolved = resolve_source(source)
  if resolved.task is None:
    raise ExportError(f"{resolved.description} is not a fine-tuning workdir: no dev set to score")
  runner = runners.TfliteRunner(os.fspath(tflite_path), num_threads=num_threads)
  detail = runner.runner.get_input_details()
  seq_len = int(next(iter(detail.values()))["shape"][-1])
  signature = signature_for(resolved.module)
  return evaluation.evaluate(runner, resolved, signature, seq_len)


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


def _seq_len(source: ExportSource, seq_len: int | None) -> int:
  limit = source.config.max_position_embeddings
  if seq_len is None:
    if source.run_config is not None:
      seq_len = int(source.run_config.data.max_seq_length)
    else:
      seq_len = min(DEFAULT_SEQ_LEN, limit)
  if seq_len < 2:
    raise ExportError(f"--seq_len must be at least 2, got {seq_len}")
  if seq_len > limit:
    raise ExportError(
      f"--seq_len={seq_len} is longer than the model's position table "
      f"(max_position_embeddings={limit})"
    )
  return seq_len


def _uses_learned_ranges(source: ExportSource, quantize: str) -> bool:
  """Whether a full-integer export takes its activation ranges from quantization-aware training.

  A QAT model's fake quantizations round to ranges the converter cannot read; in the export form
  (`quantization_export`) each becomes a clip to its learned range, and the clips' bounds are
  written into the file as those tensors' int8 ranges (`tflite_ranges`, docs/quantization.md).
  Float and dynamic-range exports keep the model as it was trained, fake quantization included,
  so they match the JAX QAT model's outputs.
  """
  return quantize == "int8" and source.config.quantization_aware


def _mask_fill(source: ExportSource, quantize: str, value: float | str | None) -> float | None:
  if value == AUTO:
    if quantize == "int8" and source.config.masked_attention_logit is None:
      return INT8_MASKED_ATTENTION_LOGIT
    return source.config.masked_attention_logit
  if value is not None and (not isinstance(value, (int, float)) or value >= 0):
    raise ExportError(f"--masked_attention_logit must be negative, 'none' or 'auto', got {value!r}")
  return None if value is None else float(value)


# ----------------------------------------------------------------------------------------------
# Running the export next to JAX
# ----------------------------------------------------------------------------------------------


def _runner(format: str, path: str, signature: Signature, num_threads: int) -> runners.Runner:
  if format == "tflite":
    return runners.TfliteRunner(path, num_threads=num_threads)
  if format == "saved_model":
    return runners.SavedModelRunner(path)
  with open(path, "rb") as f:
    return runners.StablehloRunner(f.read(), signature)


def _compare(
  runner: runners.Runner,
  resolved: ExportSource,
  exported: ExportSource,
  signature: Signature,
  seq_len: int,
) -> dict[str, Any]:
  """The report's error and task-metric fields (see `report`)."""
  reference = runners.JaxRunner(exported, signature)
  if resolved.task is None:
    inputs = evaluation.synthetic_inputs(signature, seq_len, resolved.config.vocab_size)
    described = f"synthetic: {evaluation.SYNTHETIC_ROWS} random sequences with padding"
    eval_set = None
  else:
    eval_set = evaluation.dev_set(resolved, seq_len)
    inputs = evaluation.signature_inputs(signature, eval_set)
    described = f"dev set: {len(eval_set)} features of {resolved.task.name}"
  outputs = runner(inputs)
  expected = reference(inputs)
  fields: dict[str, Any] = {
    "max_relative_error": evaluation.relative_errors(outputs, expected),
    "error_inputs": described,
  }
  if eval_set is not None:
    metrics = {"task": resolved.task.name, "main_metric": resolved.task.main_metric}
    metrics["exported"] = evaluation.task_metrics(resolved, signature, eval_set, outputs)
    if exported is resolved:
      metrics["jax"] = evaluation.task_metrics(resolved, signature, eval_set, expected)
    else:
      as_trained = runners.JaxRunner(resolved, signature)(inputs)
      metrics["jax"] = evaluation.task_metrics(resolved, signature, eval_set, as_trained)
      metrics["jax_export_config"] = evaluation.task_metrics(
        resolved, signature, eval_set, expected
      )
    fields["task_metric"] = metrics
  return fields
