"""CPU speed of the released MobileBERT: ours (jitted) against transformers (PyTorch eager).

Measures, for the released configuration (google/mobilebert-uncased's architecture, random
weights), in float32:
  * forward, batch 1 x 128 tokens,
  * forward, batch 8 x 384 tokens,
  * one SQuAD training step at 8 x 384: loss, gradients and an AdamW update
    (training mode, so attention dropout 0.1 is on in both).
Both sides run the same model class (`MobileBertForQuestionAnswering`: encoder + span head)
with the same weights, the same inputs and the same CPUs (see `benchmark_util.pin_cpus`). Ours
is timed after a warm-up call that compiles it (the compile time is reported separately), with
`block_until_ready`; each number is the median of `--repeats` runs, taken in blocks ordered
ours, theirs, theirs, ours so that both see the same background load on average (see
`benchmark_util.time_blocks` for why not single alternating calls).

COMMAND (from the repository root, on a quiet machine):
  python experiments/benchmarks/cpu_forward_train.py --cpus 2 --repeats 10 \
    --output /tmp/cpu_baseline.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_CLASS = "MobileBertForQuestionAnswering"


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument(
    "--warmup", type=int, default=1, help="untimed calls at the start of every timed block"
  )
  parser.add_argument(
    "--scan", action="store_true", help="run our blocks with nn.scan (default: unrolled)"
  )
  parser.add_argument(
    "--peer_attention",
    default="sdpa",
    choices=["sdpa", "eager"],
    help="transformers attention implementation (sdpa is its default)",
  )
  parser.add_argument(
    "--only", choices=["forward", "train"], default=None, help="run one kind of measurement"
  )
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  cpus = bu.pin_cpus(args.cpus)  # before jax and torch start their thread pools

  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  import torch

  from mobilebert_jax.model.models import MODEL_CLASSES
  from mobilebert_jax.train import losses
  from mobilebert_jax.weights import layout

  bu.match_torch_threads(args.cpus)
  print(f"CPUs {cpus}; torch threads {torch.get_num_threads()}; load {bu.load_average()}")

  # ------------------------------------------------------------------------------------------
  # The two models, same weights
  # ------------------------------------------------------------------------------------------
  config, params, peer = bu.released_models(MODEL_CLASS, args.peer_attention)
  if args.scan:
    config = config.replace(scan_layers=True)
    params = layout.stack_layers(params)
  params = jax.device_put(params)
  ours = MODEL_CLASSES[MODEL_CLASS](config)

  def inputs(batch: int, length: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones((batch, length), np.int32)
    types = np.zeros((batch, length), np.int32)
    types[:, length // 2 :] = 1
    return ids, mask, types

  results = {
    "cpus": cpus,
    "torch_threads": torch.get_num_threads(),
    "scan_layers": args.scan,
    "peer_attention": args.peer_attention,
    "repeats": args.repeats,
    "git": bu.git_revision(REPO),
    "cpu": bu.cpu_model(),
    "versions": bu.software_versions(),
    "measurements": {},
  }

  def record(name: str, ours_timing, peer_timing, compile_s: float) -> None:
    row = {
      "ours_median_s": ours_timing.median,
      "ours_min_max_s": ours_timing.spread,
      "peer_median_s": peer_timing.median,
      "peer_min_max_s": peer_timing.spread,
      "ratio_ours_over_peer": ours_timing.median / peer_timing.median,
      "ours_compile_s": compile_s,
      "load_before_after": (ours_timing.load_before, ours_timing.load_after),
    }
    results["measurements"][name] = row
    print(
      f"{name:<22} ours {row['ours_median_s'] * 1e3:9.1f} ms   transformers "
      f"{row['peer_median_s'] * 1e3:9.1f} ms   ours/peer {row['ratio_ours_over_peer']:.3f}   "
      f"(compile {compile_s:.1f} s, load {bu.load_average()[0]:.2f})",
      flush=True,
    )

  # ------------------------------------------------------------------------------------------
  # Forward passes
  # ------------------------------------------------------------------------------------------
  @jax.jit
  def forward(p, ids, mask, types):
    out = ours.apply({"params": p}, ids, attention_mask=mask, token_type_ids=types)
    return out.start_logits, out.end_logits

  peer.eval()
  for batch, length in ((1, 128), (8, 384)) if args.only in (None, "forward") else ():
    ids, mask, types = inputs(batch, length)
    j_ids, j_mask, j_types = (jnp.asarray(x) for x in (ids, mask, types))
    t_ids, t_mask, t_types = (torch.as_tensor(x.astype(np.int64)) for x in (ids, mask, types))
    start = time.perf_counter()
    jax.block_until_ready(forward(params, j_ids, j_mask, j_types))
    compile_s = time.perf_counter() - start

    def run_ours():
      jax.block_until_ready(forward(params, j_ids, j_mask, j_types))  # noqa: B023

    def run_peer():
      with torch.inference_mode():
        peer(input_ids=t_ids, attention_mask=t_mask, token_type_ids=t_types)  # noqa: B023

    ours_timing, peer_timing = bu.time_blocks(run_ours, run_peer, args.repeats, args.warmup)
    record(f"forward {batch}x{length}", ours_timing, peer_timing, compile_s)

  # ------------------------------------------------------------------------------------------
  # One training step: SQuAD loss, gradients, AdamW
  # ------------------------------------------------------------------------------------------
  if args.only in (None, "train"):
    batch, length = 8, 384
    ids, mask, types = inputs(batch, length, seed=1)
    rng = np.random.default_rng(2)
    starts = rng.integers(0, length, batch).astype(np.int32)
    ends = np.minimum(starts + rng.integers(0, 30, batch), length - 1).astype(np.int32)
    # The same optimiser on both sides: torch.optim.AdamW's defaults, weight decay 0.01.
    lr, weight_decay = 1e-4, 0.01
    tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=weight_decay)

    def loss_fn(p, dropout_key, ids, mask, types, starts, ends):
      out = ours.apply(
        {"params": p},
        ids,
        attention_mask=mask,
        token_type_ids=types,
        deterministic=False,
        rngs={"dropout": dropout_key},
      )
      return losses.question_answering_loss(out.start_logits, out.end_logits, starts, ends)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(p, opt_state, step, *batch_arrays):
      key = jax.random.fold_in(jax.random.key(0), step)
      loss, grads = jax.value_and_grad(loss_fn)(p, key, *batch_arrays)
      updates, opt_state = tx.update(grads, opt_state, p)
      return optax.apply_updates(p, updates), opt_state, loss

    train_state = {"params": params, "opt_state": tx.init(params), "step": 0}
    arrays = tuple(jnp.asarray(x) for x in (ids, mask, types, starts, ends))

    def run_ours():
      state = train_state
      state["params"], state["opt_state"], loss = train_step(
        state["params"], state["opt_state"], state["step"], *arrays
      )
      state["step"] += 1
      jax.block_until_ready((state["params"], loss))

    start = time.perf_counter()
    run_ours()
    compile_s = time.perf_counter() - start

    peer.train()
    optimizer = torch.optim.AdamW(peer.parameters(), lr=lr, weight_decay=weight_decay)
    t_arrays = [torch.as_tensor(x.astype(np.int64)) for x in (ids, mask, types, starts, ends)]

    def run_peer():
      optimizer.zero_grad(set_to_none=True)
      out = peer(
        input_ids=t_arrays[0],
        attention_mask=t_arrays[1],
        token_type_ids=t_arrays[2],
        start_positions=t_arrays[3],
        end_positions=t_arrays[4],
      )
      out.loss.backward()
      optimizer.step()

    ours_timing, peer_timing = bu.time_blocks(run_ours, run_peer, args.repeats, args.warmup)
    record(f"train step {batch}x{length}", ours_timing, peer_timing, compile_s)

  print(f"git {results['git']}; load at end {bu.load_average()}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
