"""How sure is a dev-F1 difference on the SQuAD demo? Paired bootstrap over its questions.

The demo's dev set has 445 questions, so F1 differences of a point or two between models may be
noise. This scores several models on the same questions (per-question F1, the official SQuAD
v1.1 rule, best over the gold answers) and gives each difference's mean with a 95% interval from
resampling the questions (10,000 draws): the pairs share the questions, so the interval is the
one for the difference, not for either score.

Each model is NAME=WORKDIR (its JAX model, as trained) or NAME=WORKDIR:FILE.tflite (that file,
scored on the workdir's dev set through the ai-edge-litert interpreter).

`--extra_dev_paragraphs=N` scores on a larger dev set instead: N more paragraphs from the demo's
own generator (`mobilebert_jax/demo/make_data.py`), drawn after its train and dev sets from the
same random stream, so that every entity in them is new to both (about 5 questions each).

COMMAND (the int8 experiment's float control, its best QAT model and that model's int8 file):
  QAT=/tmp/int8b/squad_qat_tflite_ft3000
  INT8=/tmp/int8b/exports/squad/squad_qat_tflite_ft3000/qat_int8_learned_ranges/model.tflite
  python experiments/benchmarks/squad_paired_bootstrap.py \
    control=/tmp/int8b/squad_float_ft3000 qat=$QAT qat_int8=$QAT:$INT8 \
    --pairs control-qat_int8,control-qat,qat-qat_int8 \
    --output experiments/2026-12-06_int8_accuracy/paired_bootstrap.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from mobilebert_jax import export  # noqa: E402
from mobilebert_jax.demo import DEV_FILE, make_data  # noqa: E402
from mobilebert_jax.export import api, evaluation, runners  # noqa: E402
from mobilebert_jax.metrics import squad as squad_metrics  # noqa: E402

DRAWS = 10_000


def write_extra_dev(path: str, num_paragraphs: int) -> None:
  """A dev set of `num_paragraphs` more paragraphs, entities unseen in the demo's train and dev."""
  rng = random.Random(make_data.SEED)
  taken: set[str] = set()
  make_data.make_dataset(rng, make_data.NameMaker(rng, taken), make_data.NUM_TRAIN_PARAGRAPHS, "t")
  dev = make_data.make_dataset(
    rng, make_data.NameMaker(rng, taken), make_data.NUM_DEV_PARAGRAPHS, "d"
  )
  with open(DEV_FILE, encoding="utf-8") as f:
    if json.load(f) != json.loads(json.dumps(dev)):
      raise RuntimeError("the generator no longer reproduces the shipped dev set")
  extra = make_data.make_dataset(rng, make_data.NameMaker(rng, taken), num_paragraphs, "x")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(extra, f)


def predictions(workdir: str, tflite_file: str | None, dev_file: str) -> dict[str, str]:
  """question id -> predicted answer text, as the trainer's evaluation decodes them."""
  source = export.resolve_source(workdir)
  run_config = source.run_config.to_dict()
  run_config["data"]["eval_file"] = dev_file
  source = dataclasses.replace(source, run_config=type(source.run_config)(run_config))
  seq_len = api._seq_len(source, None)
  signature = api.signature_for(source.module, 4)
  eval_set = evaluation.dev_set(source, seq_len)
  runner = (
    runners.TfliteRunner(tflite_file, num_threads=1)
    if tflite_file
    else runners.JaxRunner(source, signature)
  )
  outputs = runner(evaluation.signature_inputs(signature, eval_set))
  with tempfile.TemporaryDirectory() as directory:
    evaluation.task_metrics(source, signature, eval_set, outputs, directory)
    with open(os.path.join(directory, "predictions.json"), encoding="utf-8") as f:
      return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("models", nargs="+", help="NAME=WORKDIR or NAME=WORKDIR:FILE.tflite")
  parser.add_argument("--pairs", required=True, help="comma-separated A-B differences")
  parser.add_argument("--output", required=True)
  parser.add_argument("--extra_dev_paragraphs", type=int, default=0)
  args = parser.parse_args()

  dev_file = DEV_FILE
  if args.extra_dev_paragraphs:
    # Regenerated on every run (the generator is deterministic), so kept out of the results.
    name = os.path.splitext(os.path.basename(args.output))[0] + "_dev.json"
    dev_file = os.path.join(tempfile.gettempdir(), name)
    write_extra_dev(dev_file, args.extra_dev_paragraphs)
  with open(dev_file, encoding="utf-8") as f:
    gold = {
      qa["id"]: [a["text"] for a in qa["answers"]]
      for article in json.load(f)["data"]
      for paragraph in article["paragraphs"]
      for qa in paragraph["qas"]
    }
  ids = sorted(gold)
  scores = {}
  for spec in args.models:
    name, _, where = spec.partition("=")
    workdir, _, tflite_file = where.partition(":")
    predicted = predictions(workdir, tflite_file or None, dev_file)
    scores[name] = 100 * np.array(
      [max(squad_metrics.f1_score_v1(g, predicted[q]) for g in gold[q]) for q in ids]
    )
    print(name, f"F1 {scores[name].mean():.2f}", flush=True)

  rng = np.random.default_rng(0)
  draws = rng.integers(0, len(ids), (DRAWS, len(ids)))
  report = {
    "dev_file": dev_file,
    "questions": len(ids),
    "f1": {k: float(v.mean()) for k, v in scores.items()},
  }
  for pair in args.pairs.split(","):
    first, second = pair.split("-")
    difference = scores[first] - scores[second]
    low, high = np.percentile(difference[draws].mean(axis=1), [2.5, 97.5])
    report[pair] = {
      "mean": float(difference.mean()),
      "ci95": [float(low), float(high)],
      "questions_that_differ": int((difference != 0).sum()),
    }
    print(pair, json.dumps(report[pair]), flush=True)
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
