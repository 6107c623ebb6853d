"""Cold and warm compile times of the fine-tuning train and eval steps (persistent cache).

For the released architecture (`mobilebert-uncased`) with the SQuAD span head, at the SQuAD
recipe's shapes (train 32 x 384, eval 64 x 384, `configs/squad.py`), this builds the jitted train
step and eval step exactly as `trainers/finetuning.py` does (`steps.make_train_step` over the
task's loss, the recipe's AdamW from `optim.build_optimizer`, `sharding.jit_train_step` with the
state donated, `sharding.jit_eval_step`) and times, for each, tracing + lowering and then
compiling (or loading from the cache), on abstract inputs (nothing is allocated or run).

Each measurement runs in a fresh process, since only a new process shows what the persistent
cache saves, with the cache configured by the same code as the command lines
(`cli.configure_compilation_cache`):
  * off:  no persistent cache (`--compilation_cache_dir=none`);
  * cold: an empty cache directory (compiles, then writes the executables);
  * warm: the directory the cold run filled (loads them).
for the blocks unrolled and under `nn.scan` (`scan_layers`). Hits and misses come from JAX's
monitoring events.

COMMAND (from the repository root):
  python experiments/benchmarks/compile_times.py --output /tmp/compile_times.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODES = ("off", "cold", "warm")
LAYOUTS = ("unrolled", "scan")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated")
  parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, in order")
  parser.add_argument("--batch_size", type=int, default=None, help="default: the recipe's (32)")
  parser.add_argument("--eval_batch_size", type=int, default=None, help="default: recipe's (64)")
  parser.add_argument("--seq_len", type=int, default=384)
  parser.add_argument("--cache_root", default=None, help="default: a temporary directory")
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  parser.add_argument("--timeout_s", type=int, default=1800, help="per child process")
  # Internal: one measurement in this process.
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--layout", default="scan", help=argparse.SUPPRESS)
  parser.add_argument("--cache_dir", default="none", help=argparse.SUPPRESS)
  return parser.parse_args()


def measure(args: argparse.Namespace) -> dict:
  """One fresh process: configure the cache, build both steps, time lowering and compiling."""
  from absl import flags

  from mobilebert_jax import cli

  flag_values = flags.FlagValues()
  cli.define_shared_flags(flag_values)
  flag_values(["child", f"--{cli.COMPILATION_CACHE_FLAG}={args.cache_dir}"])
  cache_dir = cli.configure_compilation_cache(flag_values, use_default=False)

  import jax
  import jax.numpy as jnp

  from mobilebert_jax import tasks
  from mobilebert_jax.model.config import MobileBertConfig
  from mobilebert_jax.train import evaluation, optim, sharding, steps

  events: dict[str, int] = {}

  def count(event: str, **_: object) -> None:
    if event.startswith("/jax/compilation_cache/"):
      name = event.rsplit("/", 1)[1]
      events[name] = events.get(name, 0) + 1

  jax.monitoring.register_event_listener(count)

  recipe = cli.load_config_file(cli.package_config("squad.py"))
  batch = args.batch_size or recipe.batch_size
  eval_batch = args.eval_batch_size or recipe.eval.batch_size
  task = tasks.get_task("squad")
  model_config = MobileBertConfig.from_preset("mobilebert-uncased", num_labels=2).replace(
    scan_layers=args.layout == "scan"
  )
  model = task.model_class(model_config)
  optimizer, schedule = optim.build_optimizer(**recipe.optimizer.to_dict(), total_steps=10_000)
  mesh = sharding.make_mesh((-1, 1))
  rules = sharding.logical_axis_rules("dp")
  batch_sh = sharding.batch_sharding(mesh)

  def abstract(shape: tuple[int, ...], dtype) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sh)

  length = args.seq_len
  train_batch = {
    "input_ids": abstract((batch, length), jnp.int32),
    "attention_mask": abstract((batch, length), jnp.int32),
    "token_type_ids": abstract((batch, length), jnp.int32),
    "start_positions": abstract((batch,), jnp.int32),
    "end_positions": abstract((batch,), jnp.int32),
  }
  eval_inputs = {
    "input_ids": abstract((eval_batch, length), jnp.int32),
    "attention_mask": abstract((eval_batch, length), jnp.int32),
    "token_type_ids": abstract((eval_batch, length), jnp.int32),
    evaluation.INDEX_KEY: abstract((eval_batch,), jnp.int32),
    "weights": abstract((eval_batch,), jnp.float32),
  }

  start = time.perf_counter()
  state_shardings = sharding.train_state_shardings(model, optimizer, mesh, rules)
  abstract_state = sharding.abstract_train_state(model, optimizer, mesh, rules)
  setup_s = time.perf_counter() - start
  train_step = sharding.jit_train_step(
    steps.make_train_step(
      steps.model_loss_fn(model, task.make_loss(model_config)),
      optimizer,
      learning_rate_fn=schedule,
    ),
    mesh,
    rules,
    state_shardings,
  )
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, outputs_fn=evaluation.with_bookkeeping(task.eval_outputs)),
    mesh,
    rules,
    state_shardings.params,
  )

  result = {
    "layout": args.layout,
    "cache_dir": cache_dir,
    "train_shape": [batch, length],
    "eval_shape": [eval_batch, length],
    "state_shapes_s": setup_s,
  }
  for name, fn, inputs in (
    ("train", train_step, (abstract_state, train_batch)),
    ("eval", eval_step, (abstract_state.params, eval_inputs)),
  ):
    before = dict(events)
    start = time.perf_counter()
    lowered = fn.lower(*inputs)
    lowered_at = time.perf_counter()
    lowered.compile()
    done = time.perf_counter()
    result[name] = {
      "lower_s": lowered_at - start,
      "compile_s": done - lowered_at,
      "total_s": done - start,
      "cache_hits": events.get("cache_hits", 0) - before.get("cache_hits", 0),
      "cache_misses": events.get("cache_misses", 0) - before.get("cache_misses", 0),
    }
  result["cache_files"] = len(os.listdir(cache_dir)) if cache_dir else 0
  return result


def run_child(args: argparse.Namespace, layout: str, cache_dir: str) -> dict:
  command = [
    sys.executable,
    os.path.abspath(__file__),
    "--child",
    f"--layout={layout}",
    f"--cache_dir={cache_dir}",
    f"--seq_len={args.seq_len}",
  ]
  if args.batch_size:
    command.append(f"--batch_size={args.batch_size}")
  if args.eval_batch_size:
    command.append(f"--eval_batch_size={args.eval_batch_size}")
  env = dict(os.environ)
  for name in list(env):
    if name.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAX_ENABLE_COMP")):
      del env[name]  # the user's own cache settings must not take part
  return bu.run_json_subprocess(command, cwd=REPO, env=env, timeout_s=args.timeout_s)


def main() -> None:
  args = parse_args()
  if args.child:
    print(json.dumps(measure(args)), flush=True)
    return

  layouts = args.layouts.split(",")
  modes = args.modes.split(",")
  root = args.cache_root or tempfile.mkdtemp(prefix="compile_times_")
  results = {
    "git": bu.git_revision(REPO),
    "cpu": bu.cpu_model(),
    "cpus": len(os.sched_getaffinity(0)),
    "versions": bu.software_versions(),
    "runs": [],
  }
  print(f"cache root {root}; git {results['git']}; load {bu.load_average()}", flush=True)
  header = f"{'layout':<9} {'cache':<5} {'step':<5} {'lower s':>8} {'compile s':>10} "
  header += f"{'total s':>8} {'hits':>5} {'misses':>6} {'load':>5}"
  print(header, flush=True)
  for layout in layouts:
    cache_dir = os.path.join(root, layout)
    for mode in modes:
      load = bu.load_average()[0]
      row = run_child(args, layout, "none" if mode == "off" else cache_dir)
      row.update(mode=mode, load_before=load, load_after=bu.load_average()[0])
      results["runs"].append(row)
      for step in ("train", "eval"):
        r = row[step]
        print(
          f"{layout:<9} {mode:<5} {step:<5} {r['lower_s']:8.2f} {r['compile_s']:10.2f} "
          f"{r['total_s']:8.2f} {r['cache_hits']:5d} {r['cache_misses']:6d} {load:5.2f}",
          flush=True,
        )
  print(f"load at end {bu.load_average()}")
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
