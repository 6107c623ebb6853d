"""TFLite (LiteRT) export: a static [1, T] SavedModel through `tf.lite.TFLiteConverter`.

This is the one supported JAX -> LiteRT path on our stack (LiteRT's JAX guide): jax2tf with
native serialization -> SavedModel -> the TF converter, which legalises the embedded StableHLO
to TFLite ops. Shapes are static, batch 1 and `seq_len` tokens: with a symbolic batch the
converter either fails on dynamic gathers or emits shape arithmetic that ran ~80x slower under
XNNPACK and whose full-integer version collapsed (measured with jax 0.10.2, TF 2.20 and
ai-edge-litert 2.3 on a tiny MobileBERT-shaped model).

Quantization, as the original `run_squad.py` offers it:

* "none": float32 weights and activations.
* "dynamic": `Optimize.DEFAULT` alone: int8 weights, activations quantized on the fly
  ("dynamic range"; `--use_post_quantization` in the original).
* "int8": full integer: weights and activations int8 with ranges calibrated on a
  representative dataset (`calibration`; `--activation_quantization` with 100 training
  features in the original). Only integer kernels are allowed; should the converter refuse an
  op, float kernels are allowed for it and the result says so (`integer_only=False`). The model
  keeps int32 inputs and float32 outputs, so callers feed and read it like the float model.
  For a QAT model's export form (`clip_ranges`) every clip's bounds, its learned range, become
  that tensor's int8 range instead of the calibrated min/max (`tflite_ranges` says why).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping

import numpy as np

from mobilebert_jax.export import deps, saved_model, tflite_ranges
from mobilebert_jax.export.signatures import Signature
from mobilebert_jax.export.sources import ExportSource

QUANTIZATIONS = ("none", "dynamic", "int8")
FILE_NAME = "model.tflite"


@dataclasses.dataclass(frozen=True)
class Converted:
  """A converted model.

  Attributes:
    content: the .tflite flatbuffer.
    integer_only: for "int8", whether every kernel is integer (None for the other modes).
    clip_ranges: for "int8" with `clip_ranges`, how many clips gave their tensors' ranges.
  """

  content: bytes
  integer_only: bool | None = None
  clip_ranges: int | None = None


def convert(
  source: ExportSource,
  signature: Signature,
  seq_len: int,
  *,
  quantize: str = "none",
  representative_inputs: Iterable[Mapping[str, np.ndarray]] | None = None,
  clip_ranges: bool = False,
) -> Converted:
  """Converts the model to a .tflite flatbuffer with static [1, seq_len] inputs.

  Args:
    source: the model and its variables.
    signature: its input and output names.
    seq_len: the static sequence length T.
    quantize: one of `QUANTIZATIONS`.
    representative_inputs: for "int8", calibration inputs keyed by the signature's input names,
      each of the static input shape (e.g. [1, T] int32).
    clip_ranges: for "int8", take every constant clip's bounds as its tensors' int8 range
      (the learned ranges of a QAT model's export form) instead of the calibrated min/max.

  Returns:
    The flatbuffer and how it was quantized.

  Raises:
    ValueError: an unknown `quantize`, or "int8" without representative inputs.
  """
  if quantize not in QUANTIZATIONS:
    raise ValueError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
  samples = None
  if quantize == "int8":
    samples = [dict(s) for s in representative_inputs or ()]
    if not samples:
      raise ValueError("--quantize=int8 needs representative inputs to calibrate on")
  tf = deps.import_tensorflow("Exporting TFLite")
  with tempfile.TemporaryDirectory(prefix="mobilebert_tflite_") as scratch:
    directory = os.path.join(scratch, "saved_model")
    saved_model.save(
      source, directory, signature, seq_len, batch_size=1, with_gradient=False, platforms=("cpu",)
    )

    def converter():
      c = tf.lite.TFLiteConverter.from_saved_model(directory)
      if quantize != "none":
        c.optimizations = [tf.lite.Optimize.DEFAULT]
      if samples is not None:
        c.representative_dataset = lambda: iter(samples)
      return c

    def full_integer(supported_ops) -> Converted:
      c = converter()
      c.target_spec.supported_ops = supported_ops
      if not clip_ranges:
        content = c.convert()
        return Converted(content, tflite_ranges.integer_only(content))
      # The converter's two halves (TF 2.20 `TFLiteConverter._quantize`), the ranges set between.
      from tensorflow.lite.python import convert as tf_convert

      c._experimental_calibrate_only = True
      calibrated, clips = tflite_ranges.with_clip_ranges(c.convert())
      content = tf_convert.mlir_quantize(
        calibrated, input_data_type=tf.float32, output_data_type=tf.float32
      )
      return Converted(content, tflite_ranges.integer_only(content), clips)

    with deps.quiet_tensorflow():
      if quantize != "int8":
        return Converted(converter().convert())
      try:
        return full_integer([tf.lite.OpsSet.TFLITE_BUILTINS_INT8])
      except Exception as e:  # the converter raises its own ConverterError for unquantizable ops
        logging.warning("no integer-only conversion (%s); allowing float kernels", e)
        return full_integer([tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS])
