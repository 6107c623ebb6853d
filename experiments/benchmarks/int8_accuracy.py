"""Dev accuracy of the int8 forms of models fine-tuned by the project, in one table.

Two tasks, each fine-tuned twice, in float and with quantization-aware training (QAT,
`--config.model.quantization_aware=true --config.model.hidden_act=relu6`, the original
MobileBERT recipe of spec §10):

- SQuAD: the offline demo (`make demo`: `python -m mobilebert_jax.finetune --task=squad --demo`),
  dev F1/EM on its 445 questions.
- GLUE-like: the SST-2-like sentence task of `experiments/benchmarks/bucketing.py` (passages of
  the demo's paragraphs, labelled "about a person"), the demo's model, 600 dev rows, accuracy.

For each task the table gives the dev metric of: the JAX float model; its TFLite float32 export;
dynamic-range (int8 weights); full-integer int8 after post-training quantization (PTQ, 100
training examples to calibrate) with the default mask fill (float32 minimum), with -6 (TF1 2021)
and with -120 (MobileBERT-EdgeTPU); the JAX QAT model (fake quantization, learned ranges frozen);
and its full-integer int8 export, in the export form (`quantization_export=True`: every fake
quantization a clip to its learned range, so that calibration recovers those ranges) and, for
comparison, without the learned ranges (the QAT weights calibrated as plain PTQ). Every export
goes through `mobilebert_jax.export.export_model` (jax2tf -> SavedModel -> TFLiteConverter) and
is scored by its own report (`task_metric`), on the ai-edge-litert interpreter, batch 1.

It also measures whether the learned ranges reach the converter: for every learned activation
range of the QAT model, the nearest activation-tensor range of the int8 .tflite file.

COMMAND (from the repository root; trains what `--root` lacks, then exports; the README of
experiments/2026-12-06_int8_accuracy/ lists the extra QAT runs it measured):
  python experiments/benchmarks/int8_accuracy.py --root /tmp/int8 --tasks squad,glue \
    --output /tmp/int8.json
  python experiments/benchmarks/int8_accuracy.py --root /tmp/int8 --tasks "" \
    --extra squad_qat_ft600=squad:/tmp/int8/squad_qat_ft600 --output /tmp/extra.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

QAT_OVERRIDES = {"quantization_aware": True, "hidden_act": "relu6"}


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--root", default="/tmp/int8", help="workdirs and exports go here")
  parser.add_argument("--tasks", default="squad,glue", help="comma-separated")
  parser.add_argument("--glue_steps", type=int, default=400)
  parser.add_argument("--qat_steps", type=int, default=300, help="QAT steps from the float run")
  parser.add_argument("--qat_learning_rate", type=float, default=2e-4)
  parser.add_argument("--calibration_steps", type=int, default=100)
  parser.add_argument(
    "--extra",
    default="",
    help="more finished workdirs (QAT or float) to export, NAME=TASK:WORKDIR comma-separated",
  )
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  return parser.parse_args()


# ----------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------


def train_squad(workdir: str, qat: bool, init_from: str | None, args: argparse.Namespace) -> None:
  """`make demo`'s command; QAT: plus the QAT overrides, from `init_from` when given."""
  command = [sys.executable, "-m", "mobilebert_jax.finetune", "--task=squad", "--demo"]
  command.append(f"--workdir={workdir}")
  if qat:
    command += [f"--config.model.{k}={str(v).lower()}" for k, v in QAT_OVERRIDES.items()]
  if init_from:
    command += [
      f"--config.init_from={init_from}",
      f"--config.num_train_steps={args.qat_steps}",
      f"--config.optimizer.learning_rate={args.qat_learning_rate}",
      f"--config.checkpoint_every_steps={args.qat_steps}",
    ]
  subprocess.run(command, check=True, cwd=REPO)


def glue_data(root: str) -> str:
  """Writes the SST-2-like TSVs of `bucketing.py` once; returns their directory."""
  import bucketing

  from mobilebert_jax.demo import DEV_FILE, TRAIN_FILE

  data_dir = os.path.join(root, "glue_data")
  if not os.path.exists(os.path.join(data_dir, "SST-2", "dev.tsv")):
    bucketing.write_sst2(data_dir, "train", bucketing.topic_rows(TRAIN_FILE, 15, 0.4, seed=0))
    bucketing.write_sst2(data_dir, "dev", bucketing.topic_rows(DEV_FILE, 5, 0.4, seed=1))
  return data_dir


def train_glue(workdir: str, qat: bool, init_from: str | None, args: argparse.Namespace) -> None:
  """The `bucketing.py` recipe (demo model, AdamW 1e-3) through the trainer, length-bucketed;
  QAT from `init_from`: `--qat_steps` at `--qat_learning_rate`."""
  import bucketing

  from mobilebert_jax.trainers import finetuning

  steps = args.qat_steps if init_from else args.glue_steps
  learning_rate = args.qat_learning_rate if init_from else 1e-3
  recipe = types.SimpleNamespace(
    max_seq_length=128,
    learning_rate=learning_rate,
    warmup_proportion=0.1,
    batch_size=32,
    steps=steps,
  )
  config = bucketing.run_config(glue_data(args.root), recipe)
  config.data.bucket_lengths = (32, 64, 96, 128)
  config.checkpoint_every_steps = steps
  config.progress_bar = False
  if qat:
    config.model.update(QAT_OVERRIDES)
  if init_from:
    config.init_from = init_from
  finetuning.train_and_evaluate(config, workdir)


def ensure_trained(
  task: str, workdir: str, qat: bool, args: argparse.Namespace, init_from: str | None = None
) -> float:
  """Trains `workdir` unless it holds a finished run; returns the training wall time (0 if not)."""
  if os.path.exists(os.path.join(workdir, "eval_metrics.json")):
    return 0.0
  started = time.time()
  if task == "squad":
    train_squad(workdir, qat, init_from, args)
  else:
    train_glue(workdir, qat, init_from, args)
  return time.time() - started


# ----------------------------------------------------------------------------------------------
# Exports
# ----------------------------------------------------------------------------------------------


def export_metric(source, out_dir: str, args: argparse.Namespace, **kwargs) -> dict:
  """Exports to TFLite, scores the dev set; returns the report's essentials."""
  from mobilebert_jax import export

  started = time.time()
  result = export.export_model(
    source, out_dir, format="tflite", calibration_steps=args.calibration_steps, **kwargs
  )
  report = result.report
  return {
    "exported": report["task_metric"]["exported"],
    "jax": report["task_metric"]["jax"],
    "jax_export_config": report["task_metric"].get("jax_export_config"),
    "max_relative_error": report["max_relative_error"]["max"],
    "file_size_bytes": report["file_size_bytes"],
    "masked_attention_logit": report["masked_attention_logit"],
    "integer_only": report.get("integer_only"),
    "path": result.path,
    "seconds": round(time.time() - started, 1),
  }


def tflite_activation_ranges(path: str) -> list[tuple[float, float]]:
  """(min, max) represented by every int8 activation tensor of a .tflite file."""
  from ai_edge_litert.interpreter import Interpreter

  interpreter = Interpreter(model_path=path)
  ranges = []
  for detail in interpreter.get_tensor_details():
    params = detail["quantization_parameters"]
    scales, zero_points = params["scales"], params["zero_points"]
    if detail["dtype"] != np.int8 or len(scales) != 1:
      continue  # float, int32 or per-channel (weights)
    scale, zero = float(scales[0]), int(zero_points[0])
    ranges.append(((-128 - zero) * scale, (127 - zero) * scale))
  return ranges


def range_recovery(qat_workdir: str, tflite_path: str) -> dict:
  """How close the .tflite's activation ranges come to the learned ones.

  For every learned range (nudged as the fake quantization uses it), the int8 tensor range of
  the file with the nearest scale; reported as the relative scale difference, and whether that
  tensor's range lies within the learned one (clipping makes calibration find at most it).
  """
  from mobilebert_jax import export
  from mobilebert_jax.model import quantization

  source = export.resolve_source(qat_workdir)
  learned = quantization.learned_ranges(source.variables)
  found = tflite_activation_ranges(tflite_path)
  found_scales = np.array([(b - a) / 255 for a, b in found])
  gaps, inside = [], 0
  for low, high in learned.values():
    nudged_low, nudged_high, scale, _ = (
      float(v) for v in quantization.nudged_range(np.float32(low), np.float32(high))
    )
    nearest = int(np.argmin(np.abs(found_scales - scale)))
    gaps.append(abs(found_scales[nearest] - scale) / scale)
    a, b = found[nearest]
    inside += a >= nudged_low - scale and b <= nudged_high + scale
  gaps = np.array(gaps)
  return {
    "learned_ranges": len(learned),
    "int8_activation_tensors": len(found),
    "scale_gap_median": float(np.median(gaps)),
    "scale_gap_p90": float(np.percentile(gaps, 90)),
    "within_1pct": int((gaps <= 0.01).sum()),
    "nearest_inside_learned": inside,
  }


def run_task(task: str, args: argparse.Namespace) -> dict:
  from mobilebert_jax import export

  float_dir = os.path.join(args.root, f"{task}_float")
  qat_dir = os.path.join(args.root, f"{task}_qat_ft")
  out = os.path.join(args.root, "exports", task)
  result: dict = {
    "train_seconds": {
      "float": ensure_trained(task, float_dir, False, args),
      "qat_from_float": ensure_trained(task, qat_dir, True, args, init_from=float_dir),
    }
  }
  # The whole recipe with QAT from the start, where such a run exists (not trained here).
  scratch_dir = os.path.join(args.root, f"{task}_qat_scratch")
  dirs = {"float": float_dir, "qat_from_float": qat_dir, "qat_from_scratch": scratch_dir}
  for name, workdir in dirs.items():
    if os.path.exists(os.path.join(workdir, "eval_metrics.json")):
      with open(os.path.join(workdir, "eval_metrics.json")) as f:
        result[f"jax_{name}_trainer_eval"] = json.load(f)

  rows = {
    "tflite_float": dict(source=float_dir, quantize="none"),
    "dynamic_range": dict(source=float_dir, quantize="dynamic"),
    "ptq_int8_fill_f32min": dict(source=float_dir, quantize="int8", masked_attention_logit=None),
    "ptq_int8_fill_-6": dict(source=float_dir, quantize="int8", masked_attention_logit=-6.0),
    "ptq_int8_fill_-120": dict(source=float_dir, quantize="int8", masked_attention_logit=-120.0),
  }
  qat_source = export.resolve_source(qat_dir)
  # The exporter applies a QAT model's learned ranges to a full-integer export by itself.
  rows["qat_int8_learned_ranges"] = dict(source=qat_source, quantize="int8")
  rows["qat_int8_without_ranges"] = dict(
    source=qat_source.with_config(quantization_aware=False), quantize="int8"
  )
  for name, kwargs in rows.items():
    print(f"[{task}] {name} ...", flush=True)
    result[name] = export_metric(out_dir=os.path.join(out, name), args=args, **kwargs)
    print(f"[{task}] {name}: {result[name]['exported']}", flush=True)
  result["range_recovery"] = range_recovery(qat_dir, result["qat_int8_learned_ranges"]["path"])
  if "jax_qat_from_scratch_trainer_eval" in result:
    result["qat_scratch_int8_learned_ranges"] = export_metric(
      scratch_dir, os.path.join(out, "qat_scratch_int8"), args, quantize="int8"
    )
  return result


def run_extra(item: str, args: argparse.Namespace) -> dict:
  """`NAME=TASK:WORKDIR`: a finished run's own eval and its exports.

  A QAT run: its full-integer export (which applies the learned ranges by itself). A float run
  (e.g. a control trained as long as a QAT run): TFLite float, dynamic-range and PTQ int8 with
  the -6 mask fill.
  """
  from mobilebert_jax import export

  name, spec = item.split("=", 1)
  task, workdir = spec.split(":", 1)
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    result = {"task": task, "jax_trainer_eval": json.load(f)}
  source = export.resolve_source(workdir)
  out = os.path.join(args.root, "exports", task, name)
  if source.config.quantization_aware:
    rows = {"qat_int8_learned_ranges": dict(quantize="int8")}
  else:
    rows = {
      "tflite_float": dict(quantize="none"),
      "dynamic_range": dict(quantize="dynamic"),
      "ptq_int8_fill_-6": dict(quantize="int8", masked_attention_logit=-6.0),
    }
  for row, kwargs in rows.items():
    result[row] = export_metric(source, os.path.join(out, row), args, **kwargs)
    print(f"[{name}] {row}: {result[row]['exported']}", flush=True)
  if source.config.quantization_aware:
    result["range_recovery"] = range_recovery(workdir, result["qat_int8_learned_ranges"]["path"])
  return result


def main() -> None:
  args = parse_args()
  os.makedirs(args.root, exist_ok=True)
  results = {"command": " ".join(sys.argv), "tasks": {}}
  for task in filter(None, args.tasks.split(",")):
    results["tasks"][task] = run_task(task, args)
    if args.output:
      with open(args.output, "w") as f:
        json.dump(results, f, indent=2, default=str)
  for item in filter(None, args.extra.split(",")):
    results.setdefault("extra", {})[item.split("=")[0]] = run_extra(item, args)
    if args.output:
      with open(args.output, "w") as f:
        json.dump(results, f, indent=2, default=str)
  print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
  main()
