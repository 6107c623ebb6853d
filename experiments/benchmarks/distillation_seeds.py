"""The distillation demo's comparison over several student seeds, with learning-curve plots.

    python experiments/benchmarks/distillation_seeds.py \
      --out=experiments/2026-12-06_distillation_demo --workdir=/tmp/distill_seeds \
      --seeds=0,1,2 [--scale=demo|mid|hour|smoke] [--runs=teacher,0/scratch,...] [--report_only]

One teacher (seed 0) is pretrained as `python -m mobilebert_jax.distill --demo` does; then, for
each seed, the three students (scratch, pretraining distillation only, the full recipe) train
with that seed's initialisation and batch order over the same instances and the same teacher.

Every finished run is recorded under `OUT/runs/` (`teacher`, `seed0/scratch`, ...): its
`metrics.jsonl` (phase 1's too), `run_info.json` (code revision, parameter count) and
`result.json` (held-out metrics, digests of its text and vocabulary, seconds). The teacher's
record also holds its vocabulary and its final parameters as a parameters-only checkpoint that
`--teacher` reads. So a comparison longer than one machine's life runs in parts (`--runs`
names the runs of one invocation; two invocations with disjoint runs can share the cores), each
part on a fresh machine once the records of the earlier parts are back in OUT, and the report
is built from the records alone, after checking that every run read the same text and
vocabulary. Runs resume from their checkpoints in WORKDIR.

The report: `results.json` (per-seed held-out metrics, mean ± std, median training rates and
the training minutes they imply), `mlm_accuracy.png` (held-out MLM accuracy against student
updates, mean ± std over seeds) and `transfer_losses.png` (phase 1's four transfer terms of the
first seed, stage boundaries marked). It is written once every run of `--seeds` has a record.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mobilebert_jax import distill_demo
from mobilebert_jax.errors import RunPreempted

TERMS = ("feature", "attention", "mean", "variance")
# Every seed's students learn from this one teacher.
TEACHER_SEED = 0
TEACHER = "teacher"
RUNS_DIR = "runs"
RESULT_FILE = "result.json"
METRICS_FILE = "metrics.jsonl"
# Twice the demo's depth (where progressive transfer should start to matter) and twice its
# updates: about 10 minutes for the teacher and 4-8 minutes per student arm on 2 CPU cores.
MID_SIZES = dataclasses.replace(
  distill_demo.DEMO_SIZES,
  layers=8,
  teacher_steps=2000,
  student_steps=1200,
  steps_per_stage=50,
  eval_every_steps=200,
)
# The hour-per-arm comparison: 12 blocks (half the paper's depth), 128-token instances
# with ten passes of masking over the corpus, and ten times the demo's updates.
HOUR_SIZES = dataclasses.replace(
  distill_demo.DEMO_SIZES,
  layers=12,
  seq_length=128,
  max_predictions=20,
  dupe_factor=10,
  teacher_steps=6000,
  student_steps=6000,
  steps_per_stage=150,
  eval_every_steps=500,
)
SCALES = {
  "demo": distill_demo.DEMO_SIZES,
  "mid": MID_SIZES,
  "hour": HOUR_SIZES,
  "smoke": distill_demo.SMOKE_SIZES,
}


# ----------------------------------------------------------------------------------------------
# Running, and keeping a record of every finished run
# ----------------------------------------------------------------------------------------------


def record_dir(out: str, run: str) -> str:
  return os.path.join(out, RUNS_DIR, run)


def all_runs(seeds: list[int]) -> list[str]:
  return [TEACHER] + [f"seed{s}/{arm}" for s in seeds for arm in distill_demo.ARMS]


def parse_run(name: str) -> tuple[int, str]:
  """Parses "seed1/scratch" (or "1/scratch") into (1, "scratch")."""
  seed, _, arm = name.partition("/")
  seed = seed.removeprefix("seed")
  if not seed.isdigit() or arm not in distill_demo.ARMS:
    arms = ", ".join(distill_demo.ARMS)
    raise SystemExit(f"--runs: {name!r} is neither 'teacher' nor SEED/ARM (ARM: {arms})")
  return int(seed), arm


def teacher_source(
  workdir: str, out: str, sizes: distill_demo.DemoSizes, *, vocabulary_only: bool = False
) -> str:
  """The finished teacher: the one trained in `workdir`, else the record's weights in `out`.

  With `vocabulary_only`, a teacher still in training will do (it keeps its vocabulary from
  its first step).
  """
  from mobilebert_jax.train import checkpointing, initialization

  trained = os.path.join(workdir, TEACHER)
  found = initialization.find_checkpoint(trained)
  if found and checkpointing.read_metadata(found[0])["step"] == sizes.teacher_steps:
    return trained
  kept = record_dir(out, TEACHER)
  if initialization.find_checkpoint(kept):
    return kept
  if vocabulary_only and os.path.exists(os.path.join(trained, "vocab.txt")):
    return trained
  raise SystemExit(f"no finished teacher in {trained} or {kept}: run --runs=teacher first")


def prepare(workdir: str, seed: int, sizes: distill_demo.DemoSizes, teacher: str) -> tuple:
  """(vocabulary, (train file, held-out file)) of one seed, the teacher's vocabulary kept."""
  data_dir = os.path.join(workdir, f"seed{seed}", "data")
  _, documents = distill_demo.english_documents(sizes.max_documents)
  data = distill_demo.write_corpus(documents, data_dir)
  return distill_demo.demo_vocabulary(data[0], sizes, data_dir, teacher), data


def sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def keep_run(
  run_dir: str, out_dir: str, held_out: dict, seconds: float, inputs: dict[str, str]
) -> None:
  """Copies a finished run's logs into its record and writes its `result.json`.

  Args:
    run_dir: the run's workdir.
    out_dir: its record.
    held_out: the held-out metrics the trainer returned.
    seconds: this invocation's wall time.
    inputs: name -> path of the files the run read (text, vocabulary), recorded as digests.
  """
  for sub in ("", "phase1"):
    for name in (METRICS_FILE, "run_info.json"):
      source = os.path.join(run_dir, sub, name)
      if os.path.exists(source):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
        shutil.copyfile(source, os.path.join(out_dir, sub, name))
  result = {
    "held_out": held_out,
    "input_sha256": {name: sha256(path) for name, path in inputs.items()},
    # A resumed run counts only its last invocation: the report's cost is steps / median rate.
    "seconds_this_invocation": round(seconds, 1),
    "load_average_at_end": os.getloadavg(),
    "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
  }
  with open(os.path.join(out_dir, RESULT_FILE), "w") as f:
    json.dump(result, f, indent=2)


def keep_teacher_weights(teacher_dir: str, out_dir: str) -> None:
  """Writes the teacher's final parameters (no optimizer state) and vocabulary into its record.

  The step directory keeps the run's metadata (model config, task), so the copy loads wherever
  one of our training checkpoints does (`--teacher`, `--init_from`); read back and compared.
  """
  import numpy as np
  import orbax.checkpoint as ocp
  from flax import traverse_util

  from mobilebert_jax.model.config import MobileBertConfig
  from mobilebert_jax.model.models import MobileBertForPreTraining, abstract_params
  from mobilebert_jax.train import checkpointing, initialization

  out_dir = os.path.abspath(out_dir)  # Orbax writes only to absolute paths
  root, _ = initialization.find_checkpoint(teacher_dir)
  metadata = checkpointing.read_metadata(root)
  step = str(metadata["step"])
  config = MobileBertConfig.from_dict(metadata["model_config"], source="hf")
  target = abstract_params(MobileBertForPreTraining(config))
  params = checkpointing.load_params_from_checkpoint(root, target)

  kept_root = os.path.join(out_dir, "checkpoints")
  shutil.rmtree(kept_root, ignore_errors=True)
  shutil.copytree(
    os.path.join(root, step),
    os.path.join(kept_root, step),
    ignore=shutil.ignore_patterns(checkpointing.STATE_ITEM, checkpointing.DATA_ITEM),
  )
  ocp.PyTreeCheckpointer().save(
    os.path.join(kept_root, step, checkpointing.STATE_ITEM), {"params": params}
  )
  shutil.copyfile(os.path.join(teacher_dir, "vocab.txt"), os.path.join(out_dir, "vocab.txt"))

  reread = checkpointing.load_params_from_checkpoint(kept_root, target)
  flat, flat_reread = (traverse_util.flatten_dict(t) for t in (params, reread))
  assert flat.keys() == flat_reread.keys()
  for path, value in flat.items():
    np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_reread[path]), str(path))


def train(run: str, workdir: str, out: str, sizes: distill_demo.DemoSizes) -> None:
  """Trains one run (resuming from its checkpoint) and records it."""
  # The trainers start JAX: import them only when a run trains.
  from mobilebert_jax.trainers import distillation, pretraining

  started = time.time()
  if run == TEACHER:
    teacher = os.path.join(workdir, TEACHER)
    vocab, data = prepare(workdir, TEACHER_SEED, sizes, teacher)
    config = distill_demo.teacher_config(sizes, vocab, data, TEACHER_SEED)
    held_out = pretraining.train_and_evaluate(config, teacher)
    inputs = {"train": data[0], "heldout": data[1], "vocab": vocab}
    keep_run(teacher, record_dir(out, run), held_out, time.time() - started, inputs)
    keep_teacher_weights(teacher, record_dir(out, run))
    return
  seed, arm = parse_run(run)
  # Scratch needs only the teacher's vocabulary (every arm shares its token ids), so it may run
  # beside the teacher's training.
  teacher = teacher_source(workdir, out, sizes, vocabulary_only=arm == "scratch")
  vocab, data = prepare(workdir, seed, sizes, teacher)
  run_dir = os.path.join(workdir, f"seed{seed}", arm)
  if arm == "scratch":
    config = distill_demo.scratch_config(sizes, vocab, data, seed)
    held_out = pretraining.train_and_evaluate(config, run_dir)
  else:
    layer_wise = arm == "full_recipe"
    config = distill_demo.distill_config(
      sizes, vocab, data, teacher, layer_wise=layer_wise, seed=seed
    )
    held_out = distillation.train_and_evaluate(config, run_dir)
  inputs = {"train": data[0], "heldout": data[1], "vocab": vocab}
  keep_run(run_dir, record_dir(out, f"seed{seed}/{arm}"), held_out, time.time() - started, inputs)


# ----------------------------------------------------------------------------------------------
# The report, from the records
# ----------------------------------------------------------------------------------------------


def read_records(record: str, key: str) -> list[dict]:
  with open(os.path.join(record, METRICS_FILE)) as f:
    return [r for r in map(json.loads, f) if key in r]


def read_result(out: str, run: str) -> dict:
  with open(os.path.join(record_dir(out, run), RESULT_FILE)) as f:
    return json.load(f)


def accuracy_curve(out: str, seed: int, arm: str, offset: int) -> list[tuple[int, float]]:
  """(student update, held-out MLM accuracy) of one arm; `offset` = its phase-1 updates."""
  records = read_records(record_dir(out, f"seed{seed}/{arm}"), "eval/mlm_accuracy")
  return [(r["step"] + offset, r["eval/mlm_accuracy"]) for r in records]


def step_rates(out: str, seed: int) -> dict[str, dict[str, float]]:
  """Median training throughput of every run of one seed (phase 1 of the full recipe apart).

  The medians leave out each run's compilations (a few logging windows).
  """
  runs = {arm: record_dir(out, f"seed{seed}/{arm}") for arm in distill_demo.ARMS}
  runs["full_recipe/phase1"] = os.path.join(runs["full_recipe"], "phase1")
  rates = {}
  for name, record in runs.items():
    records = read_records(record, "train/steps_per_sec")
    rates[name] = {
      key: statistics.median(r[f"train/{key}"] for r in records)
      for key in ("steps_per_sec", "sequences_per_sec", "tflops_per_sec")
    }
  return rates


def check_same_inputs(out: str, runs: list[str]) -> None:
  """Raises unless every run read the same text and vocabulary (runs in parts may not)."""
  digests = {run: read_result(out, run)["input_sha256"] for run in runs}
  first = digests[runs[0]]
  differing = [run for run, digest in digests.items() if digest != first]
  if differing:
    raise SystemExit(f"{', '.join(differing)} read other text or vocabulary than {runs[0]}")


def report(out: str, seeds: list[int], sizes: distill_demo.DemoSizes) -> None:
  check_same_inputs(out, all_runs(seeds))
  teacher = read_result(out, TEACHER)
  per_seed, seconds, rates = {}, {"teacher": teacher["seconds_this_invocation"]}, {}
  for seed in seeds:
    results = {arm: read_result(out, f"seed{seed}/{arm}") for arm in distill_demo.ARMS}
    per_seed[seed] = {"teacher": teacher["held_out"]["mlm_accuracy"]}
    per_seed[seed].update({arm: r["held_out"]["mlm_accuracy"] for arm, r in results.items()})
    seconds[seed] = {arm: r["seconds_this_invocation"] for arm, r in results.items()}
    rates[seed] = step_rates(out, seed)
  teacher_records = read_records(record_dir(out, TEACHER), "train/steps_per_sec")
  rates["teacher"] = statistics.median(r["train/steps_per_sec"] for r in teacher_records)
  # Training minutes at the median rate (no compilation, evaluation or waiting).
  phase1 = sizes.layers * sizes.steps_per_stage
  minutes = {"teacher": sizes.teacher_steps / rates["teacher"] / 60}
  for seed in seeds:
    r = {name: rate["steps_per_sec"] for name, rate in rates[seed].items()}
    minutes[seed] = {
      "scratch": sizes.student_steps / r["scratch"] / 60,
      "pretraining_distillation": sizes.student_steps / r["pretraining_distillation"] / 60,
      "full_recipe/phase1": phase1 / r["full_recipe/phase1"] / 60,
      "full_recipe/phase2": (sizes.student_steps - phase1) / r["full_recipe"] / 60,
    }

  summary = {}
  for name in ("teacher", *distill_demo.ARMS):
    values = [per_seed[s][name] for s in seeds]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    summary[name] = {"mean": statistics.fmean(values), "std": std, "values": values}
  gap = summary["full_recipe"]["mean"] - summary["scratch"]["mean"]
  noise = max(summary["full_recipe"]["std"], summary["scratch"]["std"])
  results = {
    "held_out_mlm_accuracy": summary,
    "held_out": {run: read_result(out, run)["held_out"] for run in all_runs(seeds)},
    "full_recipe_minus_scratch": gap,
    "beats_scratch_by_two_std": gap > 2 * noise,
    "seconds": seconds,
    "median_train_rates": rates,
    "train_minutes_at_median_rate": minutes,
    "sizes": dataclasses.asdict(sizes),
    "seeds": seeds,
  }
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

  # Held-out MLM accuracy against student updates (mean ± std over seeds).
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for arm, offset in (("scratch", 0), ("pretraining_distillation", 0), ("full_recipe", phase1)):
    curves = [accuracy_curve(out, s, arm, offset) for s in seeds]
    steps_ = [u for u, _ in curves[0]]
    values = [[a for _, a in c] for c in curves]
    mean = [statistics.fmean(v) for v in zip(*values, strict=True)]
    std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in zip(*values, strict=True)]
    ax.plot(steps_, mean, label=arm.replace("_", " "))
    low = [m - s for m, s in zip(mean, std, strict=True)]
    high = [m + s for m, s in zip(mean, std, strict=True)]
    ax.fill_between(steps_, low, high, alpha=0.2)
  ax.axhline(summary["teacher"]["mean"], color="k", linestyle=":", label="teacher")
  ax.axvline(phase1, color="grey", linestyle="--", linewidth=0.8)
  ax.set_xlabel("student updates (the full recipe's first ones are layer-wise transfer)")
  ax.set_ylabel("held-out MLM accuracy")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "mlm_accuracy.png"), dpi=120)

  # Phase 1's transfer terms (the first seed), one stage per block.
  phase1_record = os.path.join(record_dir(out, f"seed{seeds[0]}/full_recipe"), "phase1")
  records = read_records(phase1_record, "train/feature")
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for term in TERMS:
    ax.plot([r["step"] for r in records], [max(r[f"train/{term}"], 1e-6) for r in records],
            label=term)  # fmt: skip
  for stage in range(1, sizes.layers):
    ax.axvline(stage * sizes.steps_per_stage, color="grey", linestyle="--", linewidth=0.8)
  ax.set_yscale("log")
  ax.set_xlabel("phase-1 update (a stage per block)")
  ax.set_ylabel("factor-scaled term / L")
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, "transfer_losses.png"), dpi=120)
  print(json.dumps(summary, indent=2))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="records of finished runs, and the report")
  parser.add_argument("--workdir", required=True, help="the runs' checkpoints and data")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--scale", choices=tuple(SCALES), default="demo")
  parser.add_argument(
    "--runs",
    default="",
    help="comma-separated runs to train now ('teacher', 'SEED/ARM'); default: every run of "
    "--seeds that has no record yet",
  )
  parser.add_argument(
    "--report_only",
    action="store_true",
    help="write the report from the records in --out without training anything",
  )
  args = parser.parse_args()
  sizes = SCALES[args.scale]
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)
  if not args.report_only:
    if args.runs:
      names = args.runs.split(",")
      runs = [r if r == TEACHER else "seed{}/{}".format(*parse_run(r)) for r in names]
    else:
      runs = [r for r in all_runs(seeds) if not os.path.exists(record_dir(args.out, r))]
    for run in runs:
      try:
        train(run, args.workdir, args.out, sizes)
      except RunPreempted as stopped:  # SIGTERM: checkpoint saved, the same command resumes
        raise SystemExit(str(stopped)) from None
  missing = [r for r in all_runs(seeds) if not os.path.exists(record_dir(args.out, r))]
  if missing:
    print(f"no report yet: no record of {', '.join(missing)}")
    return
  report(args.out, seeds, sizes)


if __name__ == "__main__":
  main()
