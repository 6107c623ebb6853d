"""The distillation demo's comparison over several student seeds, with learning-curve plots.

    python experiments/benchmarks/distillation_seeds.py \
      --out=experiments/2026-12-06_distillation_demo --workdir=/tmp/distill_seeds \
      --seeds=0,1,2 [--scale=demo|mid|hour|smoke]

One teacher (seed 0) is pretrained as `python -m mobilebert_jax.distill --demo` does; then, for
each seed, the three students (scratch, pretraining distillation only, the full recipe) train
with that seed's initialisation and batch order over the same instances and the same teacher.
Writes `results.json` (per-seed held-out metrics, mean ± std, wall times), `mlm_accuracy.png`
(held-out MLM accuracy against student updates, mean ± std over seeds) and
`transfer_losses.png` (phase 1's four transfer terms of seed 0, stage boundaries marked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mobilebert_jax import distill_demo

TERMS = ("feature", "attention", "mean", "variance")
# Every seed's students learn from this one teacher.
TEACHER_SEED = 0
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


def read_records(workdir: str, key: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if key in r]


def accuracy_curve(seed_dir: str, arm: str, offset: int) -> list[tuple[int, float]]:
  """(student update, held-out MLM accuracy) of one arm; `offset` = its phase-1 updates."""
  records = read_records(os.path.join(seed_dir, arm), "eval/mlm_accuracy")
  return [(r["step"] + offset, r["eval/mlm_accuracy"]) for r in records]


def step_rates(seed_dir: str) -> dict[str, dict[str, float]]:
  """Median training throughput of every run of one seed (phase 1 of the full recipe apart).

  The medians leave out each run's compilations (a few logging windows).
  """
  runs = {arm: os.path.join(seed_dir, arm) for arm in distill_demo.ARMS}
  runs["full_recipe/phase1"] = os.path.join(seed_dir, "full_recipe", "phase1")
  rates = {}
  for name, workdir in runs.items():
    records = read_records(workdir, "train/steps_per_sec")
    rates[name] = {
      key: statistics.median(r[f"train/{key}"] for r in records)
      for key in ("steps_per_sec", "sequences_per_sec", "tflops_per_sec")
    }
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--scale", choices=tuple(SCALES), default="demo")
  parser.add_argument(
    "--report_only",
    action="store_true",
    help="summarise and plot the finished seeds in --workdir without running anything",
  )
  args = parser.parse_args()
  sizes = SCALES[args.scale]
  seeds = [int(s) for s in args.seeds.split(",")]
  os.makedirs(args.out, exist_ok=True)

  teacher = os.path.join(args.workdir, "teacher")
  per_seed, seconds, rates = {}, {}, {}
  for seed in seeds:
    seed_dir = os.path.join(args.workdir, f"seed{seed}")
    if not args.report_only:
      distill_demo.run_demo(seed_dir, sizes, seed=seed, teacher=teacher, teacher_seed=TEACHER_SEED)
    with open(os.path.join(seed_dir, distill_demo.RESULTS_FILE)) as f:
      finished = json.load(f)
    per_seed[seed] = {k: finished[k] for k in ("teacher", *distill_demo.ARMS)}
    seconds[seed] = finished["seconds"]
    rates[seed] = step_rates(seed_dir)

  summary = {}
  for name in ("teacher", *distill_demo.ARMS):
    values = [per_seed[s][name] for s in seeds]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    summary[name] = {"mean": statistics.fmean(values), "std": std, "values": values}
  gap = summary["full_recipe"]["mean"] - summary["scratch"]["mean"]
  noise = max(summary["full_recipe"]["std"], summary["scratch"]["std"])
  report = {
    "held_out_mlm_accuracy": summary,
    "full_recipe_minus_scratch": gap,
    "beats_scratch_by_two_std": gap > 2 * noise,
    "seconds": seconds,
    "median_train_rates": rates,
    "sizes": sizes.__dict__,
    "seeds": seeds,
  }
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(report, f, indent=2)

  # Held-out MLM accuracy against student updates (mean ± std over seeds).
  phase1 = sizes.layers * sizes.steps_per_stage
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for arm, offset in (("scratch", 0), ("pretraining_distillation", 0), ("full_recipe", phase1)):
    curves = [accuracy_curve(os.path.join(args.workdir, f"seed{s}"), arm, offset) for s in seeds]
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
  fig.savefig(os.path.join(args.out, "mlm_accuracy.png"), dpi=120)

  # Phase 1's transfer terms (seed 0), one stage per block.
  records = read_records(
    os.path.join(args.workdir, f"seed{seeds[0]}", "full_recipe", "phase1"), "train/feature"
  )
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
  fig.savefig(os.path.join(args.out, "transfer_losses.png"), dpi=120)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  main()
