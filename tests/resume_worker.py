"""A tiny training run with periodic checkpoints, run as a subprocess by resume_test.py.

    python tests/resume_worker.py --workdir DIR --steps N --save_every K --out final.npz

Trains a tiny MobileBERT QA model with LAMB and dropout on 8 fake CPU devices (2x4 mesh, fsdp
rules), drawing batches from a shuffling `BatchIterator` over synthetic features. It resumes from
the latest checkpoint in DIR when there is one (train state, rng and iterator position), prints
one line per event on stdout (flushed, for the parent to follow):

    START | RESUMED <step>     how the run began
    SAVING <step>              an asynchronous save of step <step> was started
    DONE <step>                training finished and the final parameters were written

and writes the final parameters (flattened "/"-joined paths -> arrays) to `--out` (and, when
starting from scratch, the initial ones to `<out>.init.npz`).

It also holds the pieces the checkpointing tests share (`CONFIG`, `make_features`, ...).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if __name__ == "__main__":
  # Before JAX starts: the same 8 fake devices as the test process.
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax
import numpy as np

from mobilebert_jax import MobileBertConfig, MobileBertForQuestionAnswering
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.train import checkpointing as ckpt_lib
from mobilebert_jax.train import distributed, losses, steps
from mobilebert_jax.train import sharding as shd
from mobilebert_jax.train.optim import build_optimizer
from mobilebert_jax.train.schedules import build_schedule

CONFIG = MobileBertConfig(
  vocab_size=128,
  embedding_size=16,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=32,
  intra_bottleneck_size=16,
  max_position_embeddings=32,
  num_feedforward_networks=1,
  hidden_dropout_prob=0.1,
  scan_layers=True,
)
NUM_EXAMPLES = 40
GLOBAL_BATCH = 8  # 5 batches per epoch: a 12-step run crosses two epoch boundaries
LENGTH = 16
PEAK_LR = 1e-2
TOTAL_STEPS = 100
MESH_SHAPE = (2, 4)
RULES = "fsdp"


def make_features(seed: int = 0) -> dict[str, np.ndarray]:
  """Synthetic SQuAD-like features [NUM_EXAMPLES, LENGTH]."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=NUM_EXAMPLES)
  mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
  return {
    "input_ids": (rng.integers(1, CONFIG.vocab_size, (NUM_EXAMPLES, LENGTH)) * mask).astype(
      np.int32
    ),
    "attention_mask": mask,
    "token_type_ids": ((np.arange(LENGTH)[None, :] >= 4) * mask).astype(np.int32),
    "start_positions": rng.integers(0, LENGTH // 2, NUM_EXAMPLES).astype(np.int32),
    "end_positions": rng.integers(LENGTH // 2, LENGTH, NUM_EXAMPLES).astype(np.int32),
  }


def qa_loss(outputs, batch):
  loss = losses.question_answering_loss(
    outputs.start_logits, outputs.end_logits, batch["start_positions"], batch["end_positions"]
  )
  return loss, {}


def make_optimizer():
  return build_optimizer("lamb", PEAK_LR, total_steps=TOTAL_STEPS).transformation


def flatten_params(params) -> dict[str, np.ndarray]:
  """ "/"-joined paths -> NumPy arrays (addressable copies; single process)."""
  return {
    "/".join(str(k.key) for k in path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  }


def say(message: str) -> None:
  print(message, flush=True)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, required=True)
  parser.add_argument("--save_every", type=int, required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument(
    "--step_sleep", type=float, default=0.0, help="seconds to wait after each step"
  )
  parser.add_argument("--compilation_cache", default=None)
  args = parser.parse_args(argv)

  # Compiling dominates a run this small; the test's three runs share their executables.
  jax.config.update("jax_disable_most_optimizations", True)
  if args.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

  model = MobileBertForQuestionAnswering(CONFIG)
  tx = make_optimizer()
  mesh = shd.make_mesh(MESH_SHAPE)
  rules = shd.logical_axis_rules(RULES)
  shardings = shd.train_state_shardings(model, tx, mesh, rules)
  iterator = BatchIterator(make_features(), GLOBAL_BATCH, shuffle=True, seed=3)
  train_step = shd.jit_train_step(
    steps.make_train_step(
      steps.model_loss_fn(model, qa_loss), tx, learning_rate_fn=build_schedule(PEAK_LR, TOTAL_STEPS)
    ),
    mesh,
    rules,
    shardings,
  )

  with ckpt_lib.CheckpointManager(
    args.workdir,
    save_interval_steps=args.save_every,
    max_to_keep=2,
    model_config=CONFIG,
    train_config={"steps": args.steps, "save_every": args.save_every, "rules": RULES},
  ) as ckpt:
    if ckpt.latest_step() is not None:
      restored = ckpt.restore(shd.abstract_train_state(model, tx, mesh, rules))
      state = restored.state
      iterator.set_state(restored.data_state)
      say(f"RESUMED {restored.step}")
    else:
      state = shd.create_train_state(model, tx, mesh, rules, rng=0)
      np.savez(args.out + ".init.npz", **flatten_params(state.params))
      say("START")
    step = int(state.step)
    loss = float("nan")
    while step < args.steps:
      batch = distributed.global_batch_from_local(next(iterator), shd.batch_sharding(mesh))
      state, metrics = train_step(state, batch)
      step += 1
      if ckpt.save(step, state, data_state=iterator.get_state()):
        say(f"SAVING {step}")
      loss = float(metrics["loss"])  # also paces the host loop to the device
      if args.step_sleep:
        time.sleep(args.step_sleep)
  params = flatten_params(state.params)
  np.savez(args.out, **params)
  say(f"DONE {step} loss={loss:.6f}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
