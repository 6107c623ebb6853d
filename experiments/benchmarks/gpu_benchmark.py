r"""One-GPU speed of ours (JAX) against transformers (PyTorch eager and `torch.compile`).

Measures, in one run, in bfloat16 compute (float32 parameters; ours `dtype="bfloat16"`, theirs
`torch.autocast(bfloat16)`), training mode for training steps (dropout on, both sides):

  student_train     the released student (`mobilebert-uncased`) fine-tuning step with the SQuAD
                    span head, batch 32 x 384: ours with the SQuAD recipe's optimizer (TF1
                    AdamW, `optim.build_optimizer`, global clip 1.0), theirs `torch.optim.AdamW` +
                    `clip_grad_norm_`.
  teacher_train_T   the IB-BERT_LARGE teacher (`ibbert-large`) MLM+NSP pretraining step, LAMB
                    (`build_optimizer("lamb")`), at T = 128 (batch 128, 20 masked positions) and
                    T = 512 (batch 32, 76 masked positions), the MLM head projecting only the
                    masked positions (`masked_positions` [B, P]). Ours only: transformers cannot
                    build this architecture (docs/pitfalls.md P10).
  teacherqkv_train_T  the comparable pair: the teacher with Q, K, V read from the 1024-wide
                    bottleneck (`use_bottleneck_attention=True`, ~13 % more FLOPs per block),
                    which transformers can build, and the MLM head over all T positions as
                    transformers' `MobileBertForPreTraining` computes it (labels -100 elsewhere).
                    Theirs uses fused AdamW (PyTorch has no LAMB; the optimizer is a few percent
                    of such a step).
  *_forward         forward-only throughput (eval mode): the student with the span head, batch
                    128 x 384; the teacher at T = 512, batch 32 (what distillation runs each
                    step), ours exact with masked positions, and the comparable pair.

Ours: `steps.make_train_step` / `make_eval_step` jitted by `sharding.jit_train_step` /
`jit_eval_step` (state donated), blocks under `nn.scan` (`--unrolled` to change; compiles much
faster). Timing: after `--warmup` calls (the first compiles; its time is reported), `--steps`
calls back to back, then one `block_until_ready` / `cuda.synchronize`: time per step is the total
over the steps, as a training loop sees it. Inputs are random ids with no padding.

Model FLOPs and MFU: `mobilebert_jax.train.flops` (2 FLOPs per multiply-add of every matmul,
attention's QKᵀ and PV included; train step = 3 x forward), per sequence times the batch; MFU =
model FLOP/s / the device's dense bf16 peak (`flops.device_peak_flops`: H100/H200 SXM 989.5
TFLOP/s, A100 312; on CPU a measured float32 matmul rate). FLOPs differ between the exact
teacher and the comparable pair, so compare those by time and by MFU, not across pairs.

JAX and PyTorch run in separate child processes, one after the other (each gets the whole GPU
and its own memory pool); each child writes a line per measurement as it finishes, so a child
stopped by its time limit still reports what it measured. The run fits `--budget_s`; a
measurement that does not fit is reported as skipped.

COMMAND (one H100/H200, about 10 minutes, from the repository root; on the lent GPU machines
`python3` has JAX with CUDA, PyTorch and transformers, and nothing else is needed):
  set -o pipefail; PYTHONUNBUFFERED=1 timeout 590 python3 experiments/benchmarks/gpu_benchmark.py \
    --budget_s 540 --log_dir "$OUT" --output "$OUT/gpu_benchmark.json" 2>&1 | tee "$OUT/run.log"
COMMAND (CPU, tiny configs, checks that everything runs; torch.compile off unless asked):
  python experiments/benchmarks/gpu_benchmark.py --tiny
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The repository root: the package need not be installed (e.g. on a bare GPU machine).
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMPLS = ("jax", "torch_eager", "torch_compile")
# Shares of the budget the children may use at most (JAX first: the measurement that matters).
BUDGET_SHARES = {"jax": 0.45, "torch_eager": 0.2, "torch_compile": 1.0}


@dataclasses.dataclass(frozen=True)
class Measurement:
  """One row of the benchmark.

  Attributes:
    name: row name.
    model: "student" (QA head), "teacher" (exact IB-BERT, MLM at masked positions) or
      "teacherqkv" (Q/K/V from the bottleneck, MLM over all positions).
    train: a training step (else a forward pass in eval mode).
    batch: B.
    seq_len: T.
    masked: P, masked positions per sequence (pretraining models).
    impls: which implementations run it.
  """

  name: str
  model: str
  train: bool
  batch: int
  seq_len: int
  masked: int = 0
  impls: tuple[str, ...] = IMPLS


def measurements(tiny: bool) -> list[Measurement]:
  """The rows, in the order they run (most important first, within each child)."""
  ours = ("jax",)
  if tiny:
    return [
      Measurement("student_train", "student", True, 4, 64),
      Measurement("teacher_train_128", "teacher", True, 4, 32, 5, ours),
      Measurement("teacher_train_512", "teacher", True, 2, 64, 10, ours),
      Measurement("teacherqkv_train_128", "teacherqkv", True, 4, 32, 5),
      Measurement("teacherqkv_train_512", "teacherqkv", True, 2, 64, 10),
      Measurement("student_forward", "student", False, 8, 64),
      Measurement("teacher_forward_512", "teacher", False, 2, 64, 10, ours),
      Measurement("teacherqkv_forward_512", "teacherqkv", False, 2, 64, 10),
    ]
  return [
    Measurement("student_train", "student", True, 32, 384),
    Measurement("teacher_train_128", "teacher", True, 128, 128, 20, ours),
    Measurement("teacher_train_512", "teacher", True, 32, 512, 76, ours),
    Measurement("teacherqkv_train_128", "teacherqkv", True, 128, 128, 20),
    Measurement("teacherqkv_train_512", "teacherqkv", True, 32, 512, 76),
    Measurement("student_forward", "student", False, 128, 384),
    Measurement("teacher_forward_512", "teacher", False, 32, 512, 76, ours),
    Measurement("teacherqkv_forward_512", "teacherqkv", False, 32, 512, 76),
  ]


def model_config(kind: str, tiny: bool, dtype: str = "bfloat16", scan: bool = True) -> Any:
  """Our `MobileBertConfig` of a benchmark model (tiny: the same kind, 2 small blocks)."""
  from mobilebert_jax.model.config import MobileBertConfig

  if kind == "student":
    config = MobileBertConfig.from_preset("mobilebert-uncased", num_labels=2)
    small = dict(intra_bottleneck_size=32, intermediate_size=64)
  else:
    config = MobileBertConfig.from_preset("ibbert-large")
    small = dict(intra_bottleneck_size=128, intermediate_size=256)
    if kind == "teacherqkv":
      config = config.replace(use_bottleneck_attention=True)
  if tiny:
    config = config.replace(
      vocab_size=512,
      embedding_size=32,
      hidden_size=64,
      num_hidden_layers=2,
      num_attention_heads=2,
      max_position_embeddings=128,
      **small,
    )
  return config.replace(dtype=dtype, scan_layers=scan)


def model_flops(m: Measurement, config: Any) -> int:
  """Model FLOPs of one step of `m` (the whole batch)."""
  from mobilebert_jax.train import flops

  head = "qa" if m.model == "student" else "pretraining"
  masked = m.masked if m.model == "teacher" else None  # teacherqkv: MLM over all T positions
  count = flops.train_step_flops if m.train else flops.forward_flops
  return m.batch * count(config, m.seq_len, head=head, masked_positions=masked)


def make_inputs(m: Measurement, vocab_size: int, seed: int = 0) -> dict[str, Any]:
  """Random NumPy inputs and labels for `m`: no padding, two segments."""
  import numpy as np

  rng = np.random.default_rng(seed)
  b, t = m.batch, m.seq_len
  low = min(1000, vocab_size // 2)
  types = np.zeros((b, t), np.int32)
  types[:, t // 2 :] = 1
  inputs = {
    "input_ids": rng.integers(low, vocab_size, (b, t)).astype(np.int32),
    "attention_mask": np.ones((b, t), np.int32),
    "token_type_ids": types,
  }
  if m.model == "student":
    starts = rng.integers(0, t - 30, b).astype(np.int32)
    inputs["start_positions"] = starts
    inputs["end_positions"] = (starts + rng.integers(0, 30, b)).astype(np.int32)
    return inputs
  positions = np.sort(
    np.stack([rng.choice(np.arange(1, t), m.masked, replace=False) for _ in range(b)]), axis=1
  ).astype(np.int32)
  ids = rng.integers(low, vocab_size, (b, m.masked)).astype(np.int32)
  inputs["masked_lm_positions"] = positions
  inputs["masked_lm_ids"] = ids
  labels = np.full((b, t), -100, np.int32)  # the all-positions form (transformers, teacherqkv)
  np.put_along_axis(labels, positions, ids, axis=1)
  inputs["mlm_labels"] = labels
  inputs["next_sentence_labels"] = rng.integers(0, 2, b).astype(np.int32)
  return inputs


# ----------------------------------------------------------------------------------------------
# Ours
# ----------------------------------------------------------------------------------------------


def run_jax(m: Measurement, args: argparse.Namespace) -> dict[str, Any]:
  import jax

  from mobilebert_jax.model.models import MobileBertForPreTraining, MobileBertForQuestionAnswering
  from mobilebert_jax.train import losses, optim, sharding, steps

  config = model_config(m.model, args.tiny, scan=not args.unrolled)
  inputs = make_inputs(m, config.vocab_size)
  if m.model == "student":
    model = MobileBertForQuestionAnswering(config)
    # The SQuAD recipe's optimizer (configs/squad.py over configs/common.py), written out so
    # that this script needs no ml_collections on a bare GPU machine.
    optimizer, schedule = optim.build_optimizer(
      "adamw_tf1",
      4e-5,
      total_steps=10_000,
      warmup_proportion=0.1,
      end_lr_rate=1e-4,
      weight_decay=0.01,
      clip_norm=1.0,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
    )

    def task_loss(out, batch):
      loss = losses.question_answering_loss(
        out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"]
      )
      return loss, {}

    model_inputs = steps.default_model_inputs
  else:
    model = MobileBertForPreTraining(config)
    optimizer, schedule = optim.build_optimizer(
      "lamb", 1.5e-3, total_steps=10_000, warmup_steps=1_000
    )
    at_positions = m.model == "teacher"

    def task_loss(out, batch):
      labels = batch["masked_lm_ids"] if at_positions else batch["mlm_labels"]
      mlm = losses.masked_lm_loss(out.prediction_logits, labels)
      nsp = losses.next_sentence_loss(out.seq_relationship_logits, batch["next_sentence_labels"])
      return mlm + nsp, {}

    def model_inputs(batch):
      selected = steps.default_model_inputs(batch)
      if at_positions:
        selected["masked_positions"] = batch["masked_lm_positions"]
      return selected

  mesh = sharding.make_mesh((-1, 1))
  rules = sharding.logical_axis_rules("dp")
  state_shardings = sharding.train_state_shardings(model, optimizer, mesh, rules)
  state = sharding.create_train_state(model, optimizer, mesh, rules, rng=0)
  batch = sharding.put_tree(inputs, jax.tree.map(lambda _: sharding.batch_sharding(mesh), inputs))
  if m.train:
    train_step = sharding.jit_train_step(
      steps.make_train_step(
        steps.model_loss_fn(model, task_loss, model_inputs_fn=model_inputs),
        optimizer,
        learning_rate_fn=schedule,
      ),
      mesh,
      rules,
      state_shardings,
    )
    holder = {"state": state}

    def call():
      holder["state"], metrics = train_step(holder["state"], batch)
      return metrics

  else:
    params = state.params
    del state
    eval_step = sharding.jit_eval_step(
      steps.make_eval_step(model, model_inputs_fn=model_inputs),
      mesh,
      rules,
      state_shardings.params,
      replicate_outputs=False,
    )

    def call():
      return eval_step(params, batch)

  def sync(out):
    jax.block_until_ready(out)

  result = time_calls(call, sync, args)
  result.update(device=str(jax.devices()[0].device_kind), platform=jax.devices()[0].platform)
  return result


# ----------------------------------------------------------------------------------------------
# transformers
# ----------------------------------------------------------------------------------------------


def run_torch(m: Measurement, args: argparse.Namespace, compiled: bool) -> dict[str, Any]:
  import torch
  import transformers

  device = "cuda" if torch.cuda.is_available() else "cpu"
  config = model_config(m.model, args.tiny)
  hf_kwargs = {
    k: v
    for k, v in config.to_hf_dict().items()
    if k not in ("model_type", "true_hidden_size", "label2id", "id2label")
  }
  hf_config = transformers.MobileBertConfig(**hf_kwargs, attn_implementation="sdpa")
  torch.manual_seed(0)
  model_class = (
    transformers.MobileBertForQuestionAnswering
    if m.model == "student"
    else transformers.MobileBertForPreTraining
  )
  with torch.device(device):  # initialised where it runs: the teacher's 300M on a CPU take long
    model = model_class(hf_config)
  arrays = {
    k: torch.as_tensor(v, dtype=torch.long, device=device)
    for k, v in make_inputs(m, config.vocab_size).items()
  }
  model_inputs = {k: arrays[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  if m.train:
    if m.model == "student":
      model_inputs.update(
        start_positions=arrays["start_positions"], end_positions=arrays["end_positions"]
      )
    else:
      model_inputs.update(
        labels=arrays["mlm_labels"], next_sentence_label=arrays["next_sentence_labels"]
      )
  module = torch.compile(model) if compiled else model
  autocast = torch.autocast(device_type=device, dtype=torch.bfloat16)

  if m.train:
    model.train()
    fused = {"fused": True} if device == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **fused)

    def call():
      optimizer.zero_grad(set_to_none=True)
      with autocast:
        loss = module(**model_inputs).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
      return loss

  else:
    model.eval()

    def call():
      with torch.inference_mode(), autocast:
        return module(**model_inputs)

  def sync(_):
    if device == "cuda":
      torch.cuda.synchronize()

  result = time_calls(call, sync, args)
  result.update(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", platform=device)
  return result


# ----------------------------------------------------------------------------------------------
# Timing, children and the report
# ----------------------------------------------------------------------------------------------


def time_calls(call, sync, args: argparse.Namespace) -> dict[str, Any]:
  """First call (compiles), `warmup - 1` more, then `steps` timed calls synced once at the end."""
  start = time.perf_counter()
  sync(call())
  first_s = time.perf_counter() - start
  for _ in range(args.warmup - 1):
    sync(call())
  start = time.perf_counter()
  out = None
  for _ in range(args.steps):
    out = call()
  sync(out)
  return {"first_call_s": first_s, "step_s": (time.perf_counter() - start) / args.steps}


def child(args: argparse.Namespace) -> None:
  """Runs the measurements of one implementation, appending a JSON line per row."""
  if args.child == "jax":
    from mobilebert_jax.train import flops

    if args.compilation_cache_dir:
      import jax

      # What `--compilation_cache_dir` of the command lines does, without importing `cli`
      # (ml_collections): a rerun on the same machine then skips XLA's compilations.
      jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    write_line(args.results_file, {"peak_flops": flops.device_peak_flops(dtype="bfloat16")})
  else:
    import torch

    if args.child == "torch_compile" and args.tiny:
      torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
  for m in measurements(args.tiny):
    if args.child not in m.impls or (args.only and m.name not in args.only.split(",")):
      continue
    row = {"name": m.name, "impl": args.child}
    if time.time() > args.deadline:
      row["skipped"] = "time budget"
      write_line(args.results_file, row)
      continue
    try:
      if args.child == "jax":
        row.update(run_jax(m, args))
      else:
        row.update(run_torch(m, args, compiled=args.child == "torch_compile"))
    except Exception as e:  # an OOM or a compile failure must not end the run
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      traceback.print_exc()
    write_line(args.results_file, row)
    print(json.dumps(row), flush=True)
    if args.child != "jax":
      free_torch_memory()


def free_torch_memory() -> None:
  """Drops the last measurement's model, compiled graphs and cached GPU blocks."""
  import gc

  import torch

  gc.collect()
  torch._dynamo.reset()
  if torch.cuda.is_available():
    torch.cuda.empty_cache()


def write_line(path: str, record: dict[str, Any]) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(record) + "\n")


def run_child(impl: str, args: argparse.Namespace, results_file: str, timeout_s: float) -> str:
  """Runs one child within `timeout_s`; returns "" or what went wrong."""
  command = [
    sys.executable,
    os.path.abspath(__file__),
    f"--child={impl}",
    f"--results_file={results_file}",
    f"--deadline={time.time() + 0.9 * timeout_s}",
    f"--steps={args.steps}",
    f"--warmup={args.warmup}",
  ]
  command += ["--tiny"] * args.tiny + ["--unrolled"] * args.unrolled
  if args.only:
    command.append(f"--only={args.only}")
  if args.compilation_cache_dir:
    command.append(f"--compilation_cache_dir={args.compilation_cache_dir}")
  env = dict(os.environ)
  # JAX would take 75 % of the GPU up front; the teacher's larger batches want more.
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  log_path = results_file + f".{impl}.log"
  with open(log_path, "w") as log:
    try:
      process = subprocess.run(
        command, cwd=REPO, env=env, stdout=log, stderr=log, timeout=timeout_s, check=False
      )
    except subprocess.TimeoutExpired:
      return f"{impl}: stopped after {timeout_s:.0f} s (log {log_path})"
  if process.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-2000:]
    return f"{impl}: exit status {process.returncode} (log {log_path}):\n{tail}"
  return ""


def report(records: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
  """Adds seq/s, TFLOP/s and MFU to the rows and prints the table."""
  peak = args.peak_tflops * 1e12 if args.peak_tflops else None
  rows = []
  for record in records:
    if "peak_flops" in record:
      peak = peak or record["peak_flops"]
      continue
    rows.append(record)
  by_name = {m.name: m for m in measurements(args.tiny)}
  print(f"peak for MFU: {peak / 1e12:.1f} TFLOP/s (bf16)" if peak else "peak unknown: no MFU")
  header = f"{'measurement':<24} {'impl':<14} {'B x T':>9} {'ms/step':>9} {'seq/s':>9} "
  header += f"{'TFLOP/s':>8} {'MFU':>6} {'first call s':>12}"
  print(header)
  for row in rows:
    m = by_name[row["name"]]
    shape = f"{m.batch}x{m.seq_len}"
    if "step_s" not in row:
      reason = row.get("skipped") or row.get("error", "?")
      print(f"{m.name:<24} {row['impl']:<14} {shape:>9}  -- {reason}")
      continue
    config = model_config(m.model, args.tiny)
    step_flops = model_flops(m, config)
    row["model_flops_per_step"] = step_flops
    row["seq_per_s"] = m.batch / row["step_s"]
    row["tflops_per_s"] = step_flops / row["step_s"] / 1e12
    row["mfu"] = step_flops / row["step_s"] / peak if peak else None
    mfu = f"{100 * row['mfu']:5.1f}%" if peak else "   n/a"
    print(
      f"{m.name:<24} {row['impl']:<14} {shape:>9} {1e3 * row['step_s']:9.2f} "
      f"{row['seq_per_s']:9.1f} {row['tflops_per_s']:8.2f} {mfu:>6} {row['first_call_s']:12.1f}"
    )
  return rows


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tiny", action="store_true", help="small configs, for a CPU check")
  parser.add_argument("--steps", type=int, default=None, help="timed calls (default 20; tiny 2)")
  parser.add_argument("--warmup", type=int, default=None, help="untimed calls (default 3; tiny 1)")
  parser.add_argument(
    "--torch_compile",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="also time torch.compile (default: on, off with --tiny: slow on CPU)",
  )
  parser.add_argument("--unrolled", action="store_true", help="ours without nn.scan")
  parser.add_argument("--only", default="", help="comma-separated measurement names")
  parser.add_argument("--budget_s", type=float, default=540, help="wall-clock budget of the run")
  parser.add_argument("--peak_tflops", type=float, default=None, help="override the MFU peak")
  parser.add_argument("--compilation_cache_dir", default="", help="JAX cache for reruns")
  parser.add_argument("--output", default=None, help="also write the rows as JSON here")
  parser.add_argument("--log_dir", default="", help="rows.jsonl and the children's logs")
  # Internal: a child process.
  parser.add_argument("--child", choices=IMPLS, default=None, help=argparse.SUPPRESS)
  parser.add_argument("--results_file", default="", help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.steps is None:
    args.steps = 2 if args.tiny else 20
  if args.warmup is None:
    args.warmup = 1 if args.tiny else 3
  if args.torch_compile is None:
    args.torch_compile = not args.tiny
  return args


def main() -> None:
  args = parse_args()
  if args.child:
    child(args)
    return
  start = time.time()
  print(f"git {bu.git_revision(REPO)}; {bu.cpu_model()}; {bu.software_versions()}", flush=True)
  impls = [i for i in IMPLS if i != "torch_compile" or args.torch_compile]
  log_dir = args.log_dir or tempfile.mkdtemp(prefix="gpu_benchmark_")
  os.makedirs(log_dir, exist_ok=True)
  results_file = os.path.join(log_dir, "rows.jsonl")
  if os.path.exists(results_file):
    os.remove(results_file)
  problems = []
  for impl in impls:
    left = args.budget_s - (time.time() - start)
    timeout = max(10.0, min(left, BUDGET_SHARES[impl] * args.budget_s))
    print(f"{impl}: up to {timeout:.0f} s", flush=True)
    problem = run_child(impl, args, results_file, timeout)
    if problem:
      problems.append(problem)
      print(problem, flush=True)
  records = []
  if os.path.exists(results_file):
    with open(results_file, encoding="utf-8") as f:
      records = [json.loads(line) for line in f if line.strip()]
  rows = report(records, args)
  print(f"total {time.time() - start:.0f} s; logs next to {results_file}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(
        {
          "rows": rows,
          "problems": problems,
          "versions": bu.software_versions(),
          "git": bu.git_revision(REPO),
          "args": vars(args),
        },
        f,
        indent=1,
      )
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
