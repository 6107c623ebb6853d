"""Length bucketing against fixed-length batches: training examples/s and the dev metric.

The data: an SST-2-like single-sentence binary task built from the demo's SQuAD paragraphs
(`mobilebert_jax/demo/`: generated English encyclopaedia paragraphs about invented people, towns
and ships; the dev entities never occur in training), tokenised with the demo vocabulary. The
paragraphs are shuffled into one stream of sentences; a passage is a window of consecutive
sentences that starts in a paragraph and may run on into the next ones, its size geometric
(p = 0.4), and its label says whether the paragraph it starts in is about a person (balanced).
The lengths are those of GLUE's sentence tasks, most rows far below `max_seq_length`: 26
WordPieces at the median, 65 at the 90th percentile, 124 at the 99th. The rows are written as
GLUE SST-2 TSVs and featurised by the task's own code (`tasks.get_task("glue/sst2")`) at 128.

The model: the demo's small MobileBERT (4 blocks, hidden 64, embedding 32, trigram input,
bottlenecks, NoNorm, 2 FFNs, classifier dropout 0.1), trained from scratch with AdamW (lr 1e-3,
10 % warm-up, linear decay) through the trainer's pieces (`steps.make_train_step` over the task
loss, `sharding.jit_train_step` with the state donated, `evaluation.evaluate` at full length, as
`trainers/finetuning.py` runs them). Each run starts from `create_train_state(seed)` and takes
the same number of steps with the same seed in both arms; only the training batches differ:
`BatchIterator` at 128 ("fixed") or `BucketedBatchIterator` with `--buckets` ("bucketed").

Timing: every batch shape is compiled first (on a throwaway state; compile times reported
apart), so the timed runs contain no compilation. A run's examples/s is `steps x batch / wall
time` from its first step to the last step's result, host batching and transfers included. The
arms alternate in a-b-b-a order over the seeds (the machine is shared and its load drifts), and
the ratio bucketed/fixed is taken per seed, for the same seed's pair of runs.

COMMAND (from the repository root):
  python experiments/benchmarks/bucketing.py --steps 600 --seeds 0,1,2 \
    --output /tmp/bucketing.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchmark_util as bu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

ARMS = ("fixed", "bucketed")


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=600, help="train steps per run")
  parser.add_argument("--seeds", default="0,1,2", help="one fixed and one bucketed run each")
  parser.add_argument("--buckets", default="32,64,96,128", help="bucket lengths")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_seq_length", type=int, default=128)
  parser.add_argument("--windows", type=int, default=15, help="train passages per paragraph")
  parser.add_argument("--dev_windows", type=int, default=5, help="dev passages per paragraph")
  parser.add_argument("--window_p", type=float, default=0.4, help="geometric window size")
  parser.add_argument("--learning_rate", type=float, default=1e-3)
  parser.add_argument("--warmup_proportion", type=float, default=0.1)
  parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated")
  parser.add_argument("--output", default=None, help="also write the results as JSON here")
  return parser.parse_args()


# ----------------------------------------------------------------------------------------------
# The data set
# ----------------------------------------------------------------------------------------------


def _kind(title: str) -> str:
  """The demo's three kinds of article: ships are "The X", towns one word, people two."""
  return "ship" if title.startswith("The ") else "town" if " " not in title else "person"


def topic_rows(squad_file: str, windows: int, window_p: float, seed: int) -> list[tuple[str, int]]:
  """(passage, label) rows: label 1 when the passage starts in a paragraph about a person.

  The paragraphs are put in a random order and split into sentences; a passage is a window of
  consecutive sentences that starts in a given paragraph and may run on into the next ones
  (which are about other entities, often of another kind), its size geometric with parameter
  `window_p`. A paragraph about a person gives `2 * windows` passages and the others `windows`,
  so the labels are balanced.
  """
  with open(squad_file, encoding="utf-8") as f:
    articles = json.load(f)["data"]
  rng = np.random.default_rng(seed)
  sentences: list[str] = []
  paragraphs: list[tuple[int, int, bool]] = []  # first sentence, end, is about a person
  for index in rng.permutation(len(articles)):
    article = articles[index]
    for paragraph in article["paragraphs"]:
      context = paragraph["context"]
      starts = [0] + [m.end() for m in re.finditer(r"\.\s+", context)]
      ends = [*starts[1:], len(context)]
      first = len(sentences)
      sentences.extend(context[s:e].strip() for s, e in zip(starts, ends, strict=True))
      paragraphs.append((first, len(sentences), _kind(article["title"]) == "person"))
  rows = []
  for first, end, person in paragraphs:
    for _ in range(windows * (2 if person else 1)):
      start = int(rng.integers(first, end))
      size = int(rng.geometric(window_p))
      rows.append((" ".join(sentences[start : start + size]), int(person)))
  return rows


def write_sst2(directory: str, split: str, rows: list[tuple[str, int]]) -> None:
  os.makedirs(os.path.join(directory, "SST-2"), exist_ok=True)
  with open(os.path.join(directory, "SST-2", f"{split}.tsv"), "w", encoding="utf-8") as f:
    f.write("sentence\tlabel\n")
    for sentence, label in rows:
      f.write(f"{sentence}\t{label}\n")


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------


def run_config(data_dir: str, args: argparse.Namespace):
  """The GLUE SST-2 recipe with the demo's model and vocabulary, trained from scratch."""
  from mobilebert_jax import cli
  from mobilebert_jax.configs import squad
  from mobilebert_jax.demo import VOCAB_FILE

  config = cli.load_config_file(cli.package_config("glue.py", "task=sst2"))
  demo = squad.demo(cli.load_config_file(cli.package_config("squad.py")))
  config.init_from = ""
  config.model.update({k: v for k, v in demo.model.items() if v is not None and k != "preset"})
  config.model.max_position_embeddings = args.max_seq_length
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.data_dir = data_dir
  config.data.max_seq_length = args.max_seq_length
  config.optimizer.update(
    name="adamw", learning_rate=args.learning_rate, warmup_proportion=args.warmup_proportion
  )
  config.batch_size = args.batch_size
  config.num_train_steps = args.steps
  return config


def main() -> None:
  args = parse_args()
  import jax

  from mobilebert_jax import tasks
  from mobilebert_jax.data.batching import BatchIterator
  from mobilebert_jax.data.bucketing import (
    BucketedBatchIterator,
    quantile_bucket_lengths,
    real_lengths,
  )
  from mobilebert_jax.demo import DEV_FILE, TRAIN_FILE
  from mobilebert_jax.train import distributed, evaluation, initialization, optim, sharding, steps

  seeds = [int(s) for s in args.seeds.split(",")]
  buckets = tuple(int(b) for b in args.buckets.split(","))
  data_dir = tempfile.mkdtemp(prefix="bucketing_")
  write_sst2(data_dir, "train", topic_rows(TRAIN_FILE, args.windows, args.window_p, seed=0))
  write_sst2(data_dir, "dev", topic_rows(DEV_FILE, args.dev_windows, args.window_p, seed=1))
  config = run_config(data_dir, args)
  task = tasks.get_task(config.task)
  tokenizer = initialization.load_tokenizer(config.tokenizer.vocab_file, True)
  train = task.train_features(config, tokenizer)
  eval_sets = task.eval_sets(config, tokenizer)
  shutil.rmtree(data_dir)  # featurised: the TSVs are no longer needed
  lengths = real_lengths(train["attention_mask"])
  percentiles = dict(
    zip((10, 50, 90, 99), np.percentile(lengths, (10, 50, 90, 99)).tolist(), strict=True)
  )

  model_config = initialization.initial_weights(config, task, tokenizer).model_config
  model = task.model_class(model_config)
  optimizer, schedule = optim.build_optimizer(**config.optimizer.to_dict(), total_steps=args.steps)
  mesh = sharding.make_mesh((-1, 1))
  rules = sharding.logical_axis_rules("dp")
  batch_sharding = sharding.batch_sharding(mesh)
  state_shardings = sharding.train_state_shardings(model, optimizer, mesh, rules)
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

  def batches(arm: str, seed: int):
    if arm == "fixed":
      return BatchIterator(train, args.batch_size, shuffle=True, seed=seed)
    return BucketedBatchIterator(
      train, args.batch_size, bucket_lengths=buckets, shuffle=True, seed=seed
    )

  bucketed = batches("bucketed", 0)
  print(f"{len(lengths)} train rows, {len(eval_sets[0])} dev rows; lengths {percentiles}")
  print(bucketed.describe())
  print("quantile buckets (4):", quantile_bucket_lengths(lengths, 4, args.max_seq_length))

  # Compile every shape first, on a throwaway state (the step donates its input state).
  compile_s = {}
  it = BucketedBatchIterator(train, args.batch_size, bucket_lengths=buckets, shuffle=False)
  fixed = next(BatchIterator(train, args.batch_size, shuffle=False))
  for batch in [fixed, *(next(it) for _ in range(len(it)))]:
    length = batch["input_ids"].shape[1]
    if length in compile_s:
      continue
    state = sharding.create_train_state(model, optimizer, mesh, rules, rng=0)
    start = time.perf_counter()
    jax.block_until_ready(
      train_step(state, distributed.global_batch_from_local(batch, batch_sharding))
    )
    compile_s[length] = time.perf_counter() - start
  print("first step (compile) seconds per length:", compile_s)

  def run(arm: str, seed: int) -> dict:
    state = sharding.create_train_state(model, optimizer, mesh, rules, rng=seed)
    jax.block_until_ready(state)
    data = batches(arm, seed)
    load_before = bu.load_average()
    start = time.perf_counter()
    losses = []
    for _ in range(args.steps):
      state, metrics = train_step(
        state, distributed.global_batch_from_local(next(data), batch_sharding)
      )
      losses.append(metrics["loss"])
    jax.block_until_ready((state, losses))
    seconds = time.perf_counter() - start
    scores = evaluation.evaluate(
      eval_step,
      state.params,
      eval_sets,
      global_batch_size=128,
      batch_sharding=batch_sharding,
    )
    result = {
      "arm": arm,
      "seed": seed,
      "seconds": seconds,
      "examples_per_sec": args.steps * args.batch_size / seconds,
      "dev_accuracy": scores["accuracy"],
      "final_train_loss": float(np.mean(jax.device_get(losses[-50:]))),
      "load": (load_before, bu.load_average()),
    }
    print(json.dumps(result))
    return result

  results = []
  for position, seed in enumerate(seeds):
    arms = [arm for arm in ARMS if arm in args.arms.split(",")]
    order = arms if position % 2 == 0 else arms[::-1]  # a-b-b-a over the seeds
    results.extend(run(arm, seed) for arm in order)

  by = {(r["arm"], r["seed"]): r for r in results}
  if len(arms) < 2:
    return
  print("\n| seed | fixed ex/s | bucketed ex/s | ratio | fixed dev acc | bucketed dev acc |")
  print("|---|---|---|---|---|---|")
  ratios = []
  for seed in seeds:
    fixed, bucket = by["fixed", seed], by["bucketed", seed]
    ratios.append(bucket["examples_per_sec"] / fixed["examples_per_sec"])
    print(
      f"| {seed} | {fixed['examples_per_sec']:.0f} | {bucket['examples_per_sec']:.0f} | "
      f"{ratios[-1]:.2f} | {fixed['dev_accuracy']:.3f} | {bucket['dev_accuracy']:.3f} |"
    )
  print(
    f"median ratio {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max "
    f"{max(ratios):.2f}); token fraction {bucketed.token_fraction():.3f}"
  )
  summary = {
    "args": vars(args),
    "train_rows": len(lengths),
    "dev_rows": len(eval_sets[0]),
    "length_percentiles": percentiles,
    "bucket_lengths": list(bucketed.bucket_lengths),
    "bucket_sizes": list(bucketed.bucket_sizes),
    "token_fraction": bucketed.token_fraction(),
    "compile_seconds": compile_s,
    "runs": results,
    "ratios": ratios,
    "git": bu.git_revision(REPO),
    "cpu": bu.cpu_model(),
    "devices": [str(d) for d in jax.devices()],
    "versions": bu.software_versions(),
  }
  if args.output:
    with open(args.output, "w", encoding="utf-8") as f:
      json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
