"""Latency of the exported MobileBERT on this CPU: JAX, TFLite float / dynamic / int8, PyTorch.

For the released configuration (`MobileBertForQuestionAnswering`, google/mobilebert-uncased's
architecture, random weights: latency does not depend on the values), batch 1, float32 inputs
of 128 and 384 tokens, with 1 and 2 threads, one run measures:

  * JAX: the model jitted by XLA (CPU), float32;
  * TFLite float32, dynamic-range (int8 weights) and full-int8 files written by
    `mobilebert_jax.export.tflite.convert`, run by `ai_edge_litert`'s interpreter with its
    default XNNPACK delegate and `num_threads` threads;
  * transformers' `MobileBertForQuestionAnswering` in PyTorch eager mode (sdpa attention), with
    the same weights.

The full-int8 files are calibrated on random token ids: enough for latency, meaningless for
accuracy (the accuracy table comes from `python -m mobilebert_jax.export` on fine-tuned runs).
The parent process converts the files once (kept in `--work_dir`); one child process per thread
count then pins itself to that many CPUs (`benchmark_util.pin_cpus`, before JAX and PyTorch
start) and times every backend in two rounds (backend order reversed in the second), each call
after `--warmup` untimed calls; the median of `--repeats` calls is reported, with min/max.

COMMAND (from the repository root):
  python experiments/benchmarks/export_latency.py --threads 1 2 --seq_lens 128 384 \
    --repeats 10 --output /tmp/export_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CLASS = "MobileBertForQuestionAnswering"
QUANTIZATIONS = ("none", "dynamic", "int8")
CALIBRATION_SAMPLES = 8


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--seq_lens", type=int, nargs="+", default=[128, 384])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--work_dir", default="/tmp/mobilebert_export_latency")
  parser.add_argument("--output", default=None, help="write the results as JSON here")
  parser.add_argument("--child_threads", type=int, default=None, help=argparse.SUPPRESS)
  return parser.parse_args()


def build_models():
  """(our config, our params, transformers' model), the same random weights in both."""
  config, params, peer = bu.released_models(MODEL_CLASS)
  return config, params, peer.eval()


def inputs(config, length: int, seed: int = 0) -> dict:
  """One question-answering example: two segments, a padded tail (as the dev set has)."""
  import numpy as np

  rng = np.random.default_rng(seed)
  real = length - length // 8
  ids = np.zeros((1, length), np.int32)
  ids[0, :real] = rng.integers(1000, config.vocab_size, real)
  mask = (ids > 0).astype(np.int32)
  types = np.zeros((1, length), np.int32)
  types[0, real // 3 : real] = 1
  return {"input_ids": ids, "input_mask": mask, "segment_ids": types}


def file_name(work_dir: str, seq_len: int, quantize: str) -> str:
  return os.path.join(work_dir, f"mobilebert_qa_{seq_len}_{quantize}.tflite")


def convert_all(args: argparse.Namespace) -> dict:
  """Writes the .tflite files that are not there yet; returns their sizes and conversion times."""
  from mobilebert_jax.export import tflite
  from mobilebert_jax.export.signatures import signature_for
  from mobilebert_jax.export.sources import ExportSource
  from mobilebert_jax.model.models import MODEL_CLASSES

  os.makedirs(args.work_dir, exist_ok=True)
  config, params, _ = build_models()
  module = MODEL_CLASSES[MODEL_CLASS](config)
  source = ExportSource(module, {"params": params}, config, "released config", "weights")
  signature = signature_for(module)
  files = {}
  for seq_len in args.seq_lens:
    for quantize in QUANTIZATIONS:
      path = file_name(args.work_dir, seq_len, quantize)
      seconds = None
      if not os.path.exists(path):
        fill = -6.0 if quantize == "int8" else None  # the export's int8 default
        model = source.with_config(masked_attention_logit=fill)
        samples = [inputs(config, seq_len, seed) for seed in range(CALIBRATION_SAMPLES)]
        start = time.perf_counter()
        converted = tflite.convert(
          model, signature, seq_len, quantize=quantize, representative_inputs=samples
        )
        seconds = round(time.perf_counter() - start, 1)
        with open(path, "wb") as f:
          f.write(converted.content)
      files[f"{seq_len}/{quantize}"] = {
        "path": path,
        "size_mb": round(os.path.getsize(path) / 1e6, 1),
        "convert_s": seconds,
      }
      print(f"{path}: {files[f'{seq_len}/{quantize}']}", flush=True)
  return files


def measure(args: argparse.Namespace) -> dict:
  """The child: times every backend with `args.child_threads` threads."""
  threads = args.child_threads
  cpus = bu.pin_cpus(threads)  # before jax and torch start their thread pools
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  from ai_edge_litert.interpreter import Interpreter

  from mobilebert_jax.model.models import MODEL_CLASSES

  bu.match_torch_threads(threads)
  config, params, peer = build_models()
  module = MODEL_CLASSES[MODEL_CLASS](config)
  params = jax.device_put(params)

  @jax.jit
  def forward(p, ids, mask, types):
    out = module.apply({"params": p}, ids, mask, types)
    return out.start_logits, out.end_logits

  rows = {}
  for seq_len in args.seq_lens:
    example = inputs(config, seq_len)
    ids, mask, types = (jnp.asarray(example[k]) for k in example)
    start = time.perf_counter()
    jax.block_until_ready(forward(params, ids, mask, types))
    compile_s = time.perf_counter() - start
    torch_inputs = {
      "input_ids": torch.as_tensor(example["input_ids"].astype(np.int64)),
      "attention_mask": torch.as_tensor(example["input_mask"].astype(np.int64)),
      "token_type_ids": torch.as_tensor(example["segment_ids"].astype(np.int64)),
    }

    def run_torch(torch_inputs=torch_inputs):
      with torch.inference_mode():
        peer(**torch_inputs)

    backends = {
      "jax_jit": lambda ids=ids, mask=mask, types=types: jax.block_until_ready(
        forward(params, ids, mask, types)
      ),
    }
    for quantize in QUANTIZATIONS:
      interpreter = Interpreter(
        model_path=file_name(args.work_dir, seq_len, quantize), num_threads=threads
      )
      runner = interpreter.get_signature_runner("serving_default")
      backends[f"tflite_{quantize}"] = lambda runner=runner, example=example: runner(**example)
    backends["torch_eager"] = run_torch

    times = {name: [] for name in backends}
    first, second = (args.repeats + 1) // 2, args.repeats // 2
    load_before = bu.load_average()
    for order, count in ((list(backends), first), (list(backends)[::-1], second)):
      for name in order:
        for _ in range(args.warmup):
          backends[name]()
        for _ in range(count):
          start = time.perf_counter()
          backends[name]()
          times[name].append(time.perf_counter() - start)
    load_after = bu.load_average()
    for name, values in times.items():
      rows[f"{seq_len}/{name}"] = {
        "median_ms": round(float(np.median(values)) * 1e3, 1),
        "min_ms": round(min(values) * 1e3, 1),
        "max_ms": round(max(values) * 1e3, 1),
      }
    rows[f"{seq_len}/jax_compile_s"] = round(compile_s, 1)
    rows[f"{seq_len}/load"] = [load_before, load_after]
  return {"threads": threads, "cpus": cpus, "torch_threads": torch.get_num_threads(), "rows": rows}


def main() -> None:
  args = parse_args()
  if args.child_threads is not None:
    print(json.dumps(measure(args)))
    return
  # Conversions run on one CPU (the machine is shared, and only their result matters here);
  # the children start from the original CPUs and environment (pin_cpus sets thread flags).
  environment, affinity = dict(os.environ), os.sched_getaffinity(0)
  bu.pin_cpus(1)
  files = convert_all(args)
  os.sched_setaffinity(0, affinity)
  results = {
    "model": f"{MODEL_CLASS}, released config (mobilebert-uncased), random weights, batch 1",
    "device": bu.cpu_model(),
    "delegate": "ai_edge_litert default (XNNPACK)",
    "precision": {
      "jax_jit": "float32",
      "tflite_none": "float32",
      "tflite_dynamic": "int8 weights, float activations (dynamic range)",
      "tflite_int8": "int8 weights and activations (full integer, mask fill -6)",
      "torch_eager": "float32",
    },
    "repeats": args.repeats,
    "warmup": args.warmup,
    "git": bu.git_revision(REPO),
    "versions": bu.software_versions(),
    "files": files,
    "runs": [],
  }
  for threads in args.threads:
    command = [sys.executable, os.path.abspath(__file__), "--child_threads", str(threads)]
    command += ["--seq_lens", *map(str, args.seq_lens), "--repeats", str(args.repeats)]
    command += ["--warmup", str(args.warmup), "--work_dir", args.work_dir]
    run = bu.run_json_subprocess(command, cwd=REPO, env=environment)
    results["runs"].append(run)
    for key, row in run["rows"].items():
      if isinstance(row, dict):
        spread = f"{row['min_ms']}-{row['max_ms']}"
        print(f"threads {threads}  {key:<22} {row['median_ms']:8.1f} ms  ({spread})")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=2)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
