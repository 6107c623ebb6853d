"""The distillation trainer (`trainers.distillation`, `mobilebert_jax.distill`) on tiny runs.

A tiny IB-BERT teacher is pretrained for a few steps (`configs/pretrain.py:teacher,size=tiny`),
then `configs/distill.py:size=tiny` distils a 2-block student from it: 2 stages of 3 layer-wise
steps into `phase1/`, then 4 steps of pretraining distillation, on the 8 fake CPU devices of
conftest.py. The finished run serves the tests of its files, of what phase 1 freezes, of resuming
after a kill anywhere (inside phase 1, at its end, inside phase 2) and of fine-tuning from it;
the other strategies and the offline demo's arms get smoke runs.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from pretraining_trainer_test import corpus, records, restore_params, tiny_config  # noqa: F401

from mobilebert_jax import cli, distill, distill_demo
from mobilebert_jax.demo import VOCAB_FILE
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.tasks import get_task
from mobilebert_jax.train import initialization, run_files
from mobilebert_jax.trainers import distillation as trainer
from mobilebert_jax.trainers import pretraining

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "mobilebert_jax", "configs")
TERMS = ("feature", "attention", "mean", "variance")

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, corpus):  # noqa: F811
  """A pretraining workdir of the tiny IB-BERT teacher (4 steps)."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  config = tiny_config(*corpus, num_train_steps=4)
  pretraining.train_and_evaluate(config, str(workdir))
  return str(workdir)


def distill_config(corpus, teacher, **changes):  # noqa: F811
  """`configs/distill.py:size=tiny` on the demo vocabulary, with `changes` ("a.b" keys)."""
  config = cli.load_config_file(f"{CONFIGS}/distill.py:size=tiny")
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.train_files, config.data.eval_files = corpus
  config.teacher = teacher
  config.update(checkpoint_every_steps=2, keep_checkpoints=5, log_every_steps=1)
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus, teacher):  # noqa: F811
  """(workdir, final metrics): phase 1 = 2 stages x 3 steps, phase 2 = 4 steps."""
  workdir = tmp_path_factory.mktemp("distill") / "run"
  metrics = trainer.train_and_evaluate(distill_config(corpus, teacher), str(workdir))
  return workdir, metrics


def saved_steps(directory) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory / "checkpoints") if n.isdigit())


def test_a_run_writes_both_phases(finished_run):
  workdir, metrics = finished_run
  assert saved_steps(workdir / "phase1") == [2, 4, 6]
  assert saved_steps(workdir) == [2, 4]
  phase1 = records(workdir / "phase1")
  assert [r["step"] for r in phase1] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r[f"train/{t}"]) for r in phase1 for t in TERMS)
  # Update 1 (s = 0) has no gate on: its loss is 0; the later ones compare a block each.
  assert phase1[0]["train/loss"] == 0.0 and all(r["train/loss"] > 0 for r in phase1[1:])
  phase2 = records(workdir)
  assert [r["step"] for r in phase2] == [1, 2, 3, 4]
  assert all(np.isfinite(r["train/mlm_loss"]) and "train/feature" not in r for r in phase2)
  assert {"mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy"} <= set(metrics)
  with open(workdir / run_files.EVAL_METRICS_FILE) as f:
    assert json.load(f) == metrics
  for directory, task in ((workdir, "distillation"), (workdir / "phase1", "distillation_transfer")):
    with open(directory / run_files.CONFIG_FILE) as f:
      assert json.load(f)["task"] == task


def test_phase_one_moves_only_the_encoder_and_starts_from_the_teacher(finished_run, teacher):
  workdir, _ = finished_run
  teacher_params = restore_params(teacher, 4)
  transferred = restore_params(workdir / "phase1", 6)
  first = restore_params(workdir / "phase1", 2)
  for path in (("mobilebert", "embeddings", "word_embeddings"), ("cls", "predictions", "bias")):
    expected = teacher_params
    got_first, got_last = first, transferred
    for key in path:
      expected, got_first, got_last = expected[key], got_first[key], got_last[key]
    np.testing.assert_array_equal(got_first, expected)
    np.testing.assert_array_equal(got_last, expected)
  # Both blocks trained in phase 1 (block 1 only from step 4 on).
  layers_before = first["mobilebert"]["encoder"]["layers"]["attention"]["query"]["kernel"]
  layers_after = transferred["mobilebert"]["encoder"]["layers"]["attention"]["query"]["kernel"]
  assert not np.array_equal(layers_before[0], layers_after[0])
  assert not np.array_equal(layers_before[1], layers_after[1])


def killed(reference, workdir, phase1_last: int, phase2_last: int) -> None:
  """A copy of a finished run as a kill right after those saves leaves it (0: none)."""
  shutil.copytree(reference, workdir)
  for directory, last in ((workdir / "phase1", phase1_last), (workdir, phase2_last)):
    for name in os.listdir(directory / "checkpoints"):
      if name.isdigit() and int(name) > last:
        shutil.rmtree(directory / "checkpoints" / name)
  os.remove(workdir / run_files.EVAL_METRICS_FILE)


@pytest.mark.slow
@pytest.mark.parametrize(
  ("phase1_last", "phase2_last"),
  [(2, 0), (6, 0), (6, 2)],
  ids=["inside-phase-1", "between-the-phases", "inside-phase-2"],
)
def test_a_killed_run_resumes_to_bit_identical_params(
  tmp_path,
  corpus,  # noqa: F811
  teacher,
  finished_run,
  phase1_last,
  phase2_last,
):
  reference, reference_metrics = finished_run
  resumed = tmp_path / "resumed"
  killed(reference, resumed, phase1_last, phase2_last)
  metrics = trainer.train_and_evaluate(distill_config(corpus, teacher), str(resumed))
  assert metrics == reference_metrics
  jax.tree.map(
    np.testing.assert_array_equal, restore_params(resumed, 4), restore_params(reference, 4)
  )
  new = records(resumed)[len(records(reference)) :]
  assert [r["step"] for r in new] == list(range(phase2_last + 1, 5))


def test_fine_tuning_starts_from_a_distilled_student(finished_run, corpus):  # noqa: F811
  workdir, _ = finished_run
  config = cli.load_config_file(f"{CONFIGS}/squad.py:size=tiny")
  config.init_from = str(workdir)
  tokenizer = initialization.load_tokenizer(VOCAB_FILE, True)
  weights = initialization.initial_weights(config, get_task("squad"), tokenizer)
  student = restore_params(workdir, 4)
  np.testing.assert_array_equal(
    weights.params["mobilebert"]["embeddings"]["word_embeddings"],
    student["mobilebert"]["embeddings"]["word_embeddings"],
  )


@pytest.mark.parametrize("strategy", ["joint", "auxiliary", "tf2"])
def test_the_other_strategies_run(tmp_path, corpus, teacher, strategy):  # noqa: F811
  workdir = tmp_path / strategy
  changes = {"num_train_steps": 2}
  if strategy == "tf2":
    changes["distill.semantics"] = "tf2"
  else:
    changes["distill.strategy"] = strategy
  metrics = trainer.train_and_evaluate(distill_config(corpus, teacher, **changes), str(workdir))
  assert np.isfinite(metrics["mlm_loss"])
  if strategy == "joint":  # every block compared at every step of phase 1, the same L·P steps
    phase1 = records(workdir / "phase1")
    assert len(phase1) == 6 and all(r["train/loss"] > 0 for r in phase1)
  elif strategy == "auxiliary":  # no phase 1: the transfer terms join the distillation loss
    assert not (workdir / "phase1").exists()
    assert all(np.isfinite(r["train/feature"]) for r in records(workdir))
  else:  # the Model Garden's run: a run (fresh optimizer, step 1..P) per layer-wise stage
    for stage in (0, 1):
      stage_records = records(workdir / "phase1" / f"stage_{stage}")
      assert [r["step"] for r in stage_records] == [1, 2, 3]
      assert all(r["train/loss"] > 0 and np.isfinite(r["train/attention"]) for r in stage_records)
    assert [r["step"] for r in records(workdir)] == [1, 2]


def test_tf2_mode_runs_the_models_with_their_dropout(tmp_path, corpus, teacher):  # noqa: F811
  """The Model Garden's train step calls both models with `training=True`: dropout is on.

  Only the student's attention dropout differs between the two runs (the student yaml's 0.1
  against none); everything else, initialisation and data included, is the same.
  """
  losses = {}
  for rate in (0.0, 0.1):
    changes = {"distill.semantics": "tf2", "model.attention_probs_dropout_prob": rate}
    workdir = tmp_path / f"attention_dropout_{rate}"
    config = distill_config(corpus, teacher, num_train_steps=1, **changes)
    trainer.train_and_evaluate(config, str(workdir))
    losses[rate] = [r["train/loss"] for r in records(workdir / "phase1" / "stage_0")]
  assert all(np.isfinite(losses[0.1]))
  assert losses[0.1] != losses[0.0]


def test_a_student_that_cannot_match_the_teacher_is_refused(tmp_path, corpus, teacher):  # noqa: F811
  wider = distill_config(corpus, teacher, **{"model.hidden_size": 48})
  with pytest.raises(RunConfigError, match="same hidden_size"):
    trainer.train_and_evaluate(wider, str(tmp_path / "wide"))
  other_vocab = distill_config(corpus, teacher, **{"model.vocab_size": 700})
  with pytest.raises(RunConfigError, match=r"is \(614\S*\) in the teacher but \(700"):
    trainer.train_and_evaluate(other_vocab, str(tmp_path / "vocab"))
  deeper = distill_config(corpus, teacher, **{"model.num_hidden_layers": 4})
  with pytest.raises(RunConfigError, match="layer_map"):
    trainer.train_and_evaluate(deeper, str(tmp_path / "deep"))


@pytest.mark.slow
def test_the_demo_runs_every_arm(tmp_path):
  results = distill_demo.run_demo(str(tmp_path), distill_demo.SMOKE_SIZES)
  assert set(results) == {"teacher", *distill_demo.ARMS}
  assert all(0.0 <= v <= 1.0 for v in results.values())
  with open(tmp_path / distill_demo.RESULTS_FILE) as f:
    report = json.load(f)
  assert {k: report[k] for k in results} == results
  sizes = distill_demo.SMOKE_SIZES
  assert (
    saved_steps(tmp_path / "full_recipe" / "phase1")[-1] == sizes.layers * sizes.steps_per_stage
  )
  assert saved_steps(tmp_path / "full_recipe")[-1] == sizes.student_steps - sizes.layers * (
    sizes.steps_per_stage
  )
  assert not (tmp_path / "pretraining_distillation" / "phase1").exists()
  assert saved_steps(tmp_path / "scratch")[-1] == sizes.student_steps


def test_the_demo_keeps_one_vocabulary(tmp_path):
  """A resumed demo and students of a shared teacher read the vocabulary already written."""
  text = tmp_path / "train.txt"
  text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
  sizes = distill_demo.SMOKE_SIZES
  data, teacher = tmp_path / "data", tmp_path / "teacher"
  data.mkdir()
  teacher.mkdir()

  trained = distill_demo.demo_vocabulary(str(text), sizes, str(data), str(teacher))
  assert trained == str(data / "vocab.txt") and "[MASK]" in (data / "vocab.txt").read_text()
  # Once written it is reused, not retrained (retraining may reorder tied pieces).
  (data / "vocab.txt").write_text("[PAD]\n[UNK]\nkept\n")
  assert distill_demo.demo_vocabulary(str(text), sizes, str(data), str(teacher)) == trained
  assert (data / "vocab.txt").read_text() == "[PAD]\n[UNK]\nkept\n"

  # A fresh seed's workdir takes the shared teacher's kept vocabulary.
  (teacher / "vocab.txt").write_text("[PAD]\n[UNK]\nteacher\n")
  other = tmp_path / "seed1" / "data"
  other.mkdir(parents=True)
  path = distill_demo.demo_vocabulary(str(text), sizes, str(other), str(teacher))
  assert pathlib.Path(path).read_text() == "[PAD]\n[UNK]\nteacher\n"


def test_wikitext_cleaning():
  text = (
    "{{Infobox|name=x}}'''Anarchism''' is a [[political philosophy|philosophy]] that rejects "
    "[[hierarchy]] and calls for [[abolition]] of the state.<ref>Some ref</ref> It is "
    "old.<!-- note -->\n== History ==\n* a list item that is long enough to count as prose "
    "text here\n[[Category:Politics]]"
  )
  assert distill_demo.wikitext_paragraphs(text, min_words=5) == [
    "Anarchism is a philosophy that rejects hierarchy and calls for abolition of the state. "
    "It is old."
  ]


def test_pydoc_documents_are_english_prose():
  documents = list(distill_demo.pydoc_documents())
  assert len(documents) > 50
  assert all(len(p.split()) >= 12 for d in documents for p in d)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def distill_command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.distill", *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    check=False,
  )


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--teacher=/no/such/teacher"], r"--teacher=/no/such/teacher does not exist"),
    (["--teacher=preset:ibbert-large"], r"has no weights"),
    (["--teacher=x", "--config.distill.strategi=joint"], r"Did you mean config\.distill\.strategy"),
    ([], r"--teacher is required"),
  ],
)
def test_bad_command_lines_fail_in_one_line(tmp_path, args, message):
  result = distill_command(
    f"--workdir={tmp_path / 'run'}",
    "--config=configs/distill.py:size=tiny",
    f"--config.tokenizer.vocab_file={VOCAB_FILE}",
    *args,
  )
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("mobilebert-distill:")]
  assert len(lines) == 1, result.stderr
  assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize("variant", ["", "size=tiny"])
def test_config_variants_load(variant):
  config = cli.load_config_file(f"{CONFIGS}/distill.py" + (f":{variant}" if variant else ""))
  assert config.task == initialization.DISTILLATION.name
  assert config.distill.factors.to_dict() == {
    "feature": 100.0,
    "attention": 1.0,
    "mean": 5000.0,
    "variance": 5.0,
  }
  config.lock()
  with pytest.raises(AttributeError):
    config.distill.strategi = "joint"  # locked: misspellings cannot add fields
  json.loads(config.to_json_best_effort())


def test_command_line_defaults(tmp_path):
  parsed = distill.parse_flags(["mobilebert-distill", f"--workdir={tmp_path}", "--teacher=t"])
  assert parsed.config.model.preset == "mobilebert-uncased"
  assert parsed.config.distill.strategy == "progressive"
  assert parsed.config.distill.steps_per_stage == 10_000
  assert parsed.config.num_train_steps == 500_000
  assert distill.parse_flags(["mobilebert-distill", "--workdir=x", "--demo"]).demo


def test_the_wikipedia_sample_reads_as_english_documents():
  # The `demo` extra (installed by .ci/run) ships it inside the gensim wheel.
  assert distill_demo.wikipedia_file() is not None
  source, documents = distill_demo.english_documents(max_documents=5)
  assert source.startswith("Wikipedia") and len(documents) == 5
  assert documents[0][0].startswith("Anarchism")
  assert all(len(d) >= 2 for d in documents)
  text = " ".join(s for d in documents for s in d)
  assert "[[" not in text and "{{" not in text and "<ref" not in text
