"""Which int8 tensors of a QAT model's TFLite file err most: TFLite's quantization debugger.

Builds the export form of a QAT fine-tuning workdir (`quantization_export=True`, mask fill -6,
as `int8_gap.py`), converts it to full int8 with the debugger attached
(`tf.lite.experimental.QuantizationDebugger`: every int8 op's output is compared with the same
op run in float on the dequantized int8 inputs, i.e. per layer, not accumulated) over the first
dev-set inputs, and writes the per-tensor statistics as CSV. Prints the tensors with the largest
RMS error in units of their int8 step: rounding alone gives about 0.29 (1/sqrt(12)); far more
means the tensor's range cuts values off or its grid is not the one training simulated.

This is how the attention-logit chain of the original QAT points was found: in the wide demo
model the converter fused scaling, fill and clip into one tensor on the [-6, 60] grid, while
training had rounded the logits on two ranges hundreds wide (experiments/2026-12-06_int8_accuracy).

COMMAND:
  python experiments/benchmarks/int8_layer_errors.py /tmp/int8w/squad_qat_tflite_ft3000 \
    --output /tmp/int8w/layer_errors.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile

# int8_gap (beside this file) puts the repository on the path for the imports below.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from int8_gap import export_form

from mobilebert_jax import export
from mobilebert_jax.export import saved_model


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="a QAT fine-tuning workdir")
  parser.add_argument("--calibration_steps", type=int, default=100)
  parser.add_argument("--debug_examples", type=int, default=20)
  parser.add_argument("--top", type=int, default=20)
  parser.add_argument("--output", required=True, help="CSV of every int8 tensor's statistics")
  args = parser.parse_args()
  import tensorflow as tf

  try:
    source = export.resolve_source(args.workdir)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e).splitlines()[0])
  if not source.config.quantization_aware:
    parser.error(f"{args.workdir} is not a quantization-aware run")
  exported, signature, seq_len, samples = export_form(source, args.calibration_steps)
  with tempfile.TemporaryDirectory(prefix="int8_layer_errors_") as scratch:
    saved_model.save(
      exported, scratch, signature, seq_len, batch_size=1, with_gradient=False, platforms=("cpu",)
    )
    converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: iter(samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    positional = []
    debugger = tf.lite.experimental.QuantizationDebugger(
      converter=converter, debug_dataset=lambda: iter(positional)
    )
    # The debugger feeds inputs by position, in the converted model's order (not by name); TF
    # 2.20 exposes that order only on its private interpreter.
    order = [d["name"] for d in debugger._quant_interpreter.get_input_details()]
    for sample in samples[: args.debug_examples]:
      positional.append([next(v for k, v in sample.items() if k in name) for name in order])
    debugger.run()
    with open(args.output, "w") as f:
      debugger.layer_statistics_dump(f)

  with open(args.output) as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    step = float(row["scale"])
    row["rms_steps"] = float(row["mean_squared_error"]) ** 0.5 / step if step else 0.0
  rows.sort(key=lambda row: -row["rms_steps"])
  print(f"{'op':16} {'rms/step':>9} {'scale':>10}  tensor")
  for row in rows[: args.top]:
    name = row["tensor_name"].split(";")[0].replace("jit(fn)/", "")
    print(f"{row['op_name']:16} {row['rms_steps']:9.3g} {float(row['scale']):10.4g}  {name}")


if __name__ == "__main__":
  main()
