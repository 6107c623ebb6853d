"""CPU training-step and small-batch inference speed of the released MobileBERT, before and after.

Measures, in one process on the same pinned CPU (`benchmark_util.pin_cpus`), fp32, random
weights copied from transformers' initialiser into ours, `MobileBertForQuestionAnswering`:

  * the training step the library builds (`steps.make_train_step(steps.model_loss_fn(...))`
    jitted by `sharding.jit_train_step`, project default `scan_layers=True`, dropout on, SQuAD
    loss, the project's AdamW `adamw_tf1` or LAMB from `optim.build_optimizer` with clipping and
    a schedule), at each `--shapes`:
      - "ours":        the library as it is now;
      - "ours_before": the same with every Dense on plain `jax.lax.dot_general` (the model
                       before `layers.dense_product`), to measure the change in the same run;
      - "transformers": PyTorch eager, same weights, AdamW (`torch.optim.AdamW`);
  * the eval-mode forward at batch 1 x 128 (ours and transformers);
  * the same thread's fp32 matmul rate (a jitted 1024³ `x @ x`), against which the model FLOPs
    (spec §9.2 formula: forward 2·B·T·(24·(835,584 + 256·T) + 196,608), a step 3x that) give
    each measurement's share of the machine.

Workloads run in rounds; in every round each one runs as a block of `--warmup` untimed calls
then `--per_block` timed ones, so a drift of the background load reaches all of them alike
(`benchmark_util.time_blocks` explains why blocks, not alternating single calls). Each call is
timed twice: wall clock, and the CPU time of this process (`time.process_time`). On one pinned
thread the CPU time leaves out the periods in which the shared machine's scheduler ran someone
else on our core, so it is the steadier of the two when other jobs run; both are reported,
medians over all timed calls.

COMMANDS (from the repository root; experiments/2026-12-06_train_step_speed/README.md has all):
  python experiments/benchmarks/train_step_speed.py --shapes 8x128 --optimizers adamw_tf1 \
    --rounds 3 --per_block 2 --output run_8x128_adamw.json
  python experiments/benchmarks/train_step_speed.py --shapes 8x128 --profile /tmp/prof \
    --output profile_8x128.json    # op-time breakdown, ours_before vs ours (needs TensorFlow)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CLASS = "MobileBertForQuestionAnswering"


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", nargs="+", default=["8x128"], help="train-step BATCHxLENGTH")
  parser.add_argument(
    "--optimizers", nargs="+", default=["adamw_tf1"], choices=["adamw_tf1", "adamw", "lamb"]
  )
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--per_block", type=int, default=2, help="timed calls per block")
  parser.add_argument("--warmup", type=int, default=1, help="untimed calls per block")
  parser.add_argument("--no_before", action="store_true", help="skip the 'ours_before' variant")
  parser.add_argument("--no_peer", action="store_true", help="skip transformers")
  parser.add_argument("--no_forward", action="store_true", help="skip the 1x128 forward")
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  parser.add_argument(
    "--profile",
    default=None,
    help="instead of timing, trace 2 steps of ours and ours_before (first shape and optimizer) "
    "with jax.profiler into this directory and print where the time goes",
  )
  return parser.parse_args()


# Where a step's time goes: the first rule whose test holds names an XLA:CPU op's category. An op
# is known by its name in the compiled HLO, its text (with its fused computation's) and the JAX
# op_name metadata of its root (`jvp(` marks the model's forward, `transpose(jvp(` its backward).
CATEGORIES = (
  ("dropout random bits (threefry)", lambda name, text, op: "Dropout" in op and "jit(_" in op),
  ("matmuls, generic XLA dot (not YNNPACK)", lambda name, text, op: name.startswith("dot")),
  (
    "matmuls forward (YNNPACK)",
    lambda name, text, op: " dot(" in text and "transpose(jvp(" not in op,
  ),
  ("matmuls backward (YNNPACK)", lambda name, text, op: " dot(" in text),
  (
    "scan: zero-fill, save and reload per-block activations",
    lambda name, text, op: name.startswith("wrapped_broadcast") or "dynamic-" in name,
  ),
  ("optimizer update, clipping, metrics", lambda name, text, op: "jvp(" not in op),
  ("copies and transposes", lambda name, text, op: "copy" in name or "transpose" in name),
  (
    "attention softmax, mask and dropout (fwd + bwd)",
    lambda name, text, op: "/attention/" in op and "/attention/output" not in op,
  ),
  (
    "other backward elementwise (norms, residuals, activations)",
    lambda n, t, op: "transpose(" in op,
  ),
  ("other forward elementwise (embeddings, norms, activations)", lambda name, text, op: True),
)


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """Maps each instruction of a compiled HLO module to (its text + fused body, its op_name)."""
  import re

  bodies: dict[str, list[str]] = {}
  instructions: dict[str, str] = {}
  current = None
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if header:
      current = header.group(1)
      bodies[current] = []
      continue
    match = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (.*)", line)
    if match:
      instructions[match.group(1)] = match.group(2)
      if current is not None:
        bodies[current].append(match.group(2))
  ops = {}
  for name, text in instructions.items():
    called = re.search(r"calls=%?([\w.\-]+)", text)
    full = text + "\n" + "\n".join(bodies.get(called.group(1), [])) if called else text
    op_name = re.search(r'op_name="([^"]*)"', text)
    ops[name] = (full, op_name.group(1) if op_name else "")
  return ops


def profile_breakdown(run: Callable[[], None], hlo_text: str, directory: str, steps: int = 2):
  """Traces `steps` calls of `run` and sums XLA:CPU op time per category (ms per step)."""
  import collections
  import glob

  import jax
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the trace's protobuf, from TF

  with jax.profiler.trace(directory):
    for _ in range(steps):
      run()
  path = sorted(glob.glob(f"{directory}/**/*.xplane.pb", recursive=True), key=os.path.getmtime)
  space = xplane_pb2.XSpace()
  with open(path[-1], "rb") as f:
    space.ParseFromString(f.read())
  ops = hlo_ops(hlo_text)
  per_op: collections.Counter = collections.Counter()
  for plane in space.planes:
    names = {key: meta.name for key, meta in plane.event_metadata.items()}
    for line in plane.lines:
      for event in line.events:
        name = names.get(event.metadata_id, "")
        if name in ops:
          per_op[name] += event.duration_ps / 1e9 / steps
  breakdown: collections.Counter = collections.Counter()
  for name, ms in per_op.items():
    text, op_name = ops[name]
    category = next(c for c, test in CATEGORIES if test(name, text, op_name))
    breakdown[category] += ms
  top = [(name, ms, ops[name][1][-90:]) for name, ms in per_op.most_common(15)]
  return dict(breakdown), top


def forward_flops(batch: int, length: int) -> float:
  """Model FLOPs of one forward pass of the released configuration (spec §9.2)."""
  return 2.0 * batch * length * (24 * (835_584 + 256 * length) + 196_608)


class Workload:
  """A named callable timed in blocks; collects wall and CPU times."""

  def __init__(self, name: str, run: Callable[[], None], flops: float) -> None:
    self.name, self.run, self.flops = name, run, flops
    self.wall: list[float] = []
    self.cpu: list[float] = []

  def block(self, warmup: int, count: int) -> None:
    for _ in range(warmup):
      self.run()
    for _ in range(count):
      wall, cpu = time.perf_counter(), time.process_time()
      self.run()
      self.cpu.append(time.process_time() - cpu)
      self.wall.append(time.perf_counter() - wall)


def main() -> None:
  args = parse_args()
  cpus = bu.pin_cpus(1)  # before jax and torch start their thread pools

  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch

  from mobilebert_jax.model import layers
  from mobilebert_jax.model.models import MODEL_CLASSES
  from mobilebert_jax.train import losses, optim, sharding, steps
  from mobilebert_jax.weights import layout

  bu.match_torch_threads(1)
  print(f"CPUs {cpus}; torch threads {torch.get_num_threads()}; load {bu.load_average()}")

  config, params, peer = bu.released_models(MODEL_CLASS)
  params = layout.stack_layers(params)
  config = config.replace(scan_layers=True)
  model = MODEL_CLASSES[MODEL_CLASS](config)
  mesh = sharding.make_mesh((1, 1), jax.devices()[:1])
  rules = sharding.logical_axis_rules("dp")

  def batch_arrays(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    types = np.zeros((batch, length), np.int32)
    types[:, length // 2 :] = 1
    starts = rng.integers(0, length, batch).astype(np.int32)
    return {
      "input_ids": rng.integers(1000, config.vocab_size, (batch, length)).astype(np.int32),
      "attention_mask": np.ones((batch, length), np.int32),
      "token_type_ids": types,
      "start_positions": starts,
      "end_positions": np.minimum(starts + 5, length - 1).astype(np.int32),
    }

  def task_loss(out, batch):
    loss = losses.question_answering_loss(
      out.start_logits, out.end_logits, batch["start_positions"], batch["end_positions"]
    )
    return loss, {}

  def our_step(batch: dict, optimizer_name: str, before: bool) -> Callable[[], None]:
    """Builds, compiles and returns one of our train steps as a no-argument callable."""
    opt = optim.build_optimizer(optimizer_name, 1e-4, total_steps=10_000, warmup_steps=100)
    state_shardings = sharding.train_state_shardings(model, opt.transformation, mesh, rules)
    state = sharding.create_train_state_from_params(
      jax.tree.map(jnp.array, params), opt.transformation, state_shardings, rng=0
    )
    step = sharding.jit_train_step(
      steps.make_train_step(steps.model_loss_fn(model, task_loss), opt.transformation),
      mesh,
      rules,
      state_shardings,
    )
    device_batch = jax.device_put(batch)
    holder = {"state": state}
    original = layers.dense_dot_general
    if before:  # the model before dense_product: plain jax.lax.dot_general everywhere
      layers.dense_dot_general = lambda config: jax.lax.dot_general
    try:

      def run() -> None:
        holder["state"], metrics = step(holder["state"], device_batch)
        jax.block_until_ready(metrics["loss"])

      start = time.perf_counter()
      run()  # traces and compiles while the hook is patched
      print(f"  compiled in {time.perf_counter() - start:.1f} s", flush=True)
      if args.profile:
        hlo_text = step.lower(holder["state"], device_batch).compile().as_text()
        label = "ours_before" if before else "ours"
        breakdown, top = profile_breakdown(run, hlo_text, os.path.join(args.profile, label))
        profiles[label] = {"breakdown_ms": breakdown, "top_ops": top}
        print(f"  {label}: {sum(breakdown.values()):.0f} ms of XLA ops per step")
        for category, ms in sorted(breakdown.items(), key=lambda kv: -kv[1]):
          print(f"    {ms:8.1f} ms  {category}")
        for name, ms, op_name in top:
          print(f"    top {ms:7.1f} ms  {name:<34} {op_name}")
    finally:
      layers.dense_dot_general = original
    return run

  def peer_step(batch: dict) -> Callable[[], None]:
    peer.train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=1e-4, weight_decay=0.01)
    tensors = {k: torch.as_tensor(v.astype(np.int64)) for k, v in batch.items()}

    def run() -> None:
      optimizer.zero_grad(set_to_none=True)
      out = peer(**tensors)
      out.loss.backward()
      torch.nn.utils.clip_grad_norm_(peer.parameters(), 1.0)  # ours clips at 1.0 too
      optimizer.step()

    return run

  profiles: dict[str, dict] = {}
  if args.profile:
    batch_size, length = (int(x) for x in args.shapes[0].split("x"))
    for before in (True, False):
      our_step(batch_arrays(batch_size, length), args.optimizers[0], before)
    if args.output:
      with open(args.output, "w", encoding="utf-8") as f:
        json.dump({"git": bu.git_revision(REPO), "args": vars(args), "profiles": profiles}, f)
    return

  workloads: list[Workload] = []
  for shape in args.shapes:
    batch_size, length = (int(x) for x in shape.split("x"))
    batch = batch_arrays(batch_size, length)
    step_flops = 3 * forward_flops(batch_size, length)
    for name in args.optimizers:
      for before in (False, True) if not args.no_before else (False,):
        label = f"train {shape} {name} {'ours_before' if before else 'ours'}"
        print(f"building {label}", flush=True)
        workloads.append(Workload(label, our_step(batch, name, before), step_flops))
    if not args.no_peer:
      workloads.append(Workload(f"train {shape} adamw transformers", peer_step(batch), step_flops))

  if not args.no_forward:
    batch = batch_arrays(1, 128)
    inputs = {k: jnp.asarray(batch[k]) for k in steps.MODEL_INPUT_KEYS}
    forward = jax.jit(lambda p, x: model.apply({"params": p}, **x).start_logits)
    jax.block_until_ready(forward(params, inputs))
    workloads.append(
      Workload(
        "forward 1x128 ours",
        lambda: jax.block_until_ready(forward(params, inputs)),
        forward_flops(1, 128),
      )
    )
    if not args.no_peer:
      peer_inputs = {k: torch.as_tensor(batch[k].astype(np.int64)) for k in steps.MODEL_INPUT_KEYS}

      def peer_forward() -> None:
        peer.eval()
        with torch.inference_mode():
          peer(**peer_inputs)

      workloads.append(Workload("forward 1x128 transformers", peer_forward, forward_flops(1, 128)))

  square = jnp.ones((1024, 1024), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  jax.block_until_ready(matmul(square))
  workloads.append(
    Workload("matmul 1024^3", lambda: jax.block_until_ready(matmul(square)), 2.0 * 1024**3)
  )

  for round_index in range(args.rounds):
    for workload in workloads:
      count = args.per_block * (10 if workload.name.startswith("matmul") else 1)
      workload.block(args.warmup, count)
    print(f"round {round_index + 1}/{args.rounds} done, load {bu.load_average()}", flush=True)

  rate = {
    clock: workloads[-1].flops / statistics.median(getattr(workloads[-1], clock))
    for clock in ("wall", "cpu")
  }
  results = {
    "cpus": cpus,
    "git": bu.git_revision(REPO),
    "cpu": bu.cpu_model(),
    "versions": bu.software_versions(),
    "args": vars(args),
    "matmul_gflops": {k: v / 1e9 for k, v in rate.items()},
    "measurements": {},
  }
  print(
    f"\nmatmul rate: wall {rate['wall'] / 1e9:.0f} GFLOP/s, cpu {rate['cpu'] / 1e9:.0f} GFLOP/s"
  )
  print(f"{'measurement':<40} {'wall ms':>9} {'cpu ms':>9} {'share(wall)':>11} {'share(cpu)':>10}")
  for workload in workloads[:-1]:
    row = {
      "wall_median_s": statistics.median(workload.wall),
      "cpu_median_s": statistics.median(workload.cpu),
      "wall_s": workload.wall,
      "cpu_s": workload.cpu,
      "model_gflop": workload.flops / 1e9,
    }
    for clock in ("wall", "cpu"):
      row[f"share_of_matmul_{clock}"] = workload.flops / row[f"{clock}_median_s"] / rate[clock]
    results["measurements"][workload.name] = row
    print(
      f"{workload.name:<40} {row['wall_median_s'] * 1e3:9.1f} {row['cpu_median_s'] * 1e3:9.1f} "
      f"{row['share_of_matmul_wall']:11.2f} {row['share_of_matmul_cpu']:10.2f}"
    )
  measurements = results["measurements"]
  ratios = {}
  for name in measurements:
    if not name.startswith("train") or "transformers" in name:
      continue
    shape = name.split()[1]
    peer_name = f"train {shape} adamw transformers"
    for clock in ("wall", "cpu"):
      if peer_name in measurements:
        ratios[f"{name} / transformers ({clock})"] = (
          measurements[name][f"{clock}_median_s"] / measurements[peer_name][f"{clock}_median_s"]
        )
      if name.endswith(" ours") and name + "_before" in measurements:
        ratios[f"{name} / ours_before ({clock})"] = (
          measurements[name][f"{clock}_median_s"]
          / measurements[name + "_before"][f"{clock}_median_s"]
        )
  results["ratios"] = ratios
  for name, value in ratios.items():
    print(f"{name:<70} {value:.3f}")
  print(f"git {results['git']}; load at end {bu.load_average()}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
