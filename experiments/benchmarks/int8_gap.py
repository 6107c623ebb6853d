"""Where a QAT model's full-integer TFLite file loses accuracy: three probes on one QAT workdir.

A QAT model's int8 file scores below the QAT model (experiments/2026-12-06_int8_accuracy). This
script tests the three explanations that a conversion change could remove, each by building
the int8 file another way from the same export form (`quantization_export=True`, mask fill -6)
and scoring it on the task's dev set with the export's own evaluation:

1. *Ranges*: the converter calibrates every tensor's range instead of taking the learned one.
   Probe: the file with calibrated ranges (the converter alone: "calibrated_ranges") against
   the file with every clip's bounds, the learned ranges, written in by
   `mobilebert_jax.export.tflite_ranges` ("learned_ranges"). This probe found that the
   calibrated ranges cost a QAT model with wide ranges 3 F1, and the exporter now writes the
   learned ranges itself (experiments/2026-12-06_int8_accuracy).
2. *Weights*: the converter re-quantizes float kernels per channel, not on the per-tensor
   symmetric grid QAT trained with. Probe: export the kernels already on that grid
   (`quantization.quantize_weight`) and quantize them per tensor, which keeps them exactly.
3. *One op type*: one kind of integer kernel (softmax, batch matmul, ...) is responsible. Probe:
   keep each op type in float in turn (`denylisted_ops`), and all of them together.

COMMAND (a QAT fine-tuning workdir of the SQuAD demo, as in the int8 experiment's README):
  python experiments/benchmarks/int8_gap.py /tmp/int8b/squad_qat_tflite_ft3000 \
    --output experiments/2026-12-06_int8_accuracy/int8_gap.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from flax import traverse_util  # noqa: E402

from mobilebert_jax import export  # noqa: E402
from mobilebert_jax.export import (  # noqa: E402
  api,
  calibration,
  runners,
  saved_model,
  tflite_ranges,
)
from mobilebert_jax.model import quantization  # noqa: E402

FILL = -6.0
OP_TYPES = ("SOFTMAX", "BATCH_MATMUL", "MUL", "ADD", "FULLY_CONNECTED")


def calibrated_model(tf, saved_model_dir: str, samples) -> bytes:
  """The float model with every tensor's calibrated min/max recorded (not yet quantized)."""
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: iter(samples)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter._experimental_calibrate_only = True
  return converter.convert()


def quantize(tf, calibrated: bytes, per_tensor: bool = False, denylisted_ops=()) -> bytes:
  """What the converter does after calibration (TF 2.20 `TFLiteConverter._quantize`)."""
  from tensorflow.lite.python import convert

  return convert.mlir_quantize(
    calibrated,
    per_tensor,
    input_data_type=tf.float32,
    output_data_type=tf.float32,
    denylisted_ops=list(denylisted_ops) or None,
  )


def on_weight_grid(source: export.ExportSource) -> export.ExportSource:
  """Every Dense kernel rounded to the symmetric per-tensor grid QAT trained it on."""
  flat = traverse_util.flatten_dict(source.variables["params"])
  for key, value in flat.items():
    if key[-1] == "kernel":
      flat[key] = np.asarray(quantization.quantize_weight(np.asarray(value)))
  params = traverse_util.unflatten_dict(flat)
  return dataclasses.replace(source, variables={**source.variables, "params": params})


def export_form(source: export.ExportSource, calibration_steps: int) -> tuple:
  """(export form, signature, sequence length, calibration inputs) of a QAT source."""
  exported = source.with_config(quantization_export=True, masked_attention_logit=FILL)
  signature = api.signature_for(exported.module, 4)
  seq_len = api._seq_len(source, None)
  samples = calibration.representative_inputs(source, signature, seq_len, calibration_steps)
  return exported, signature, seq_len, samples


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="a QAT fine-tuning workdir")
  parser.add_argument("--calibration_steps", type=int, default=100)
  parser.add_argument("--output", required=True)
  parser.add_argument(
    "--files_dir",
    default="",
    help="keep every probe's .tflite file here (e.g. to score it on a larger dev set with "
    "squad_paired_bootstrap.py); default: a temporary directory",
  )
  args = parser.parse_args()
  import tensorflow as tf

  try:
    source = export.resolve_source(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e).splitlines()[0])
  if not source.config.quantization_aware:
    parser.error(f"{args.workdir} is not a quantization-aware run")
  exported, signature, seq_len, samples = export_form(source, args.calibration_steps)
  results: dict[str, dict] = {}

  def score(name: str, content: bytes, reference: export.ExportSource, **extra) -> None:
    path = os.path.join(args.files_dir or scratch, f"{name}.tflite")
    with open(path, "wb") as f:
      f.write(content)
    runner = runners.TfliteRunner(path, num_threads=1)
    fields = api._compare(runner, source, reference, signature, seq_len)
    metric = fields["task_metric"]
    results[name] = {
      "f1": metric["exported"]["f1"],
      "export_form_f1": metric["jax_export_config"]["f1"],
      "qat_model_f1": metric["jax"]["f1"],
      "max_relative_error_vs_export_form": fields["max_relative_error"]["max"],
      **extra,
    }
    print(name, json.dumps(results[name]), flush=True)

  with tempfile.TemporaryDirectory(prefix="int8_gap_") as scratch:
    forms = (("export_form", exported), ("weights_on_qat_grid", on_weight_grid(exported)))
    for name, form in forms:
      directory = os.path.join(scratch, name)
      saved_model.save(
        form, directory, signature, seq_len, batch_size=1, with_gradient=False, platforms=("cpu",)
      )
      if name == "export_form":
        calibrated = calibrated_model(tf, directory, samples)
        score("calibrated_ranges", quantize(tf, calibrated), form)
        overridden, clips = tflite_ranges.with_clip_ranges(calibrated)
        score("learned_ranges", quantize(tf, overridden), form, clips=clips)
        for op in OP_TYPES:
          score(f"float_{op.lower()}", quantize(tf, calibrated, denylisted_ops=[op]), form)
        every = (*OP_TYPES, "MAXIMUM", "MINIMUM", "RELU6", "GATHER_ND", "CONCATENATION",
                 "SELECT_V2", "SLICE", "RESHAPE", "TRANSPOSE")  # fmt: skip
        score("float_every_op", quantize(tf, calibrated, denylisted_ops=every), form)
      else:
        calibrated = calibrated_model(tf, directory, samples)
        score("weights_on_qat_grid_per_channel", quantize(tf, calibrated), form)
        score("weights_on_qat_grid_per_tensor", quantize(tf, calibrated, per_tensor=True), form)
  report = {"workdir": args.workdir, "calibration_steps": len(samples), "fill": FILL, **results}
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
