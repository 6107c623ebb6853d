"""MLM + NSP pretraining (`trainers.pretraining`, `python -m mobilebert_jax.pretrain`) on tiny runs.

The runs use `configs/pretrain.py:size=tiny` (a 2-block model, the demo vocabulary) on text files
made from the demo's paragraphs, on the 8 fake CPU devices of conftest.py with XLA's
optimisation passes off. One finished two-phase run (steps 1-3 at 32 tokens, 4-6 at 64) serves
the tests of its files, of resuming a killed run and of the length schedule; a second run
overfits a few documents. The parity test compares the step loss with transformers'
`MobileBertForPreTraining` loss on the same weights and batch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax import (
  MobileBertConfig,
  MobileBertForPreTraining,
  cli,
  pretrain,
  save_pretrained,
  tasks,
)
from mobilebert_jax.data import pretraining as pretraining_data
from mobilebert_jax.demo import DEV_FILE, TRAIN_FILE, VOCAB_FILE
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.models import abstract_params
from mobilebert_jax.train import checkpointing, initialization, run_files, steps, summaries
from mobilebert_jax.trainers import pretraining as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "mobilebert_jax", "configs")
METRICS = ("mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy")

pytestmark = pytest.mark.usefixtures("fast_compiles")


def write_corpus(path, source: str, num_documents: int) -> str:
  """BERT's text format from the demo's paragraphs: a sentence per line, blank line between."""
  with open(source, encoding="utf-8") as f:
    articles = json.load(f)["data"][:num_documents]
  documents = [
    "\n".join(pretraining_data.split_sentences(a["paragraphs"][0]["context"])) for a in articles
  ]
  path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
  """(train file, held-out file): 40 training and 10 held-out documents."""
  root = tmp_path_factory.mktemp("corpus")
  return (
    write_corpus(root / "train.txt", TRAIN_FILE, 40),
    write_corpus(root / "heldout.txt", DEV_FILE, 10),
  )


def tiny_config(train_files: str, eval_files: str | None = None, **changes):
  """`configs/pretrain.py:size=tiny` on the demo vocabulary, with `changes` ("a.b" keys)."""
  config = cli.load_config_file(f"{CONFIGS}/pretrain.py:size=tiny")
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.train_files = train_files
  config.data.eval_files = eval_files
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def records(workdir, key: str = "train/loss") -> list[dict]:
  with open(os.path.join(workdir, summaries.METRICS_FILE)) as f:
    return [r for r in map(json.loads, f) if key in r]


def restore_params(workdir, step: int):
  with open(os.path.join(workdir, run_files.MODEL_CONFIG_FILE)) as f:
    model_config = MobileBertConfig.from_dict(json.load(f), source="hf")
  target = abstract_params(MobileBertForPreTraining(model_config))
  root = os.path.join(workdir, run_files.CHECKPOINTS_DIR)
  return jax.tree.map(
    np.asarray, checkpointing.load_params_from_checkpoint(root, target, step=step)
  )


def data_state(workdir, step: int) -> dict:
  # Orbax's JSON item (`checkpointing` saves the iterator state under "iterator").
  with open(os.path.join(workdir, run_files.CHECKPOINTS_DIR, str(step), "data", "metadata")) as f:
    return json.load(f)["iterator"]


def killed_after(reference, workdir, last_step: int) -> None:
  """A copy of a finished workdir as a run killed right after saving `last_step` leaves it."""
  shutil.copytree(reference, workdir)
  for name in os.listdir(workdir / run_files.CHECKPOINTS_DIR):
    if name.isdigit() and int(name) > last_step:
      shutil.rmtree(workdir / run_files.CHECKPOINTS_DIR / name)
  os.remove(workdir / run_files.EVAL_METRICS_FILE)


# ----------------------------------------------------------------------------------------------
# A finished two-phase run
# ----------------------------------------------------------------------------------------------


def two_phase_config(corpus):
  return tiny_config(
    *corpus,
    num_train_steps=6,
    eval_every_steps=2,
    checkpoint_every_steps=2,
    keep_checkpoints=5,
    log_every_steps=1,
    **{
      "data.phase2_seq_length": 64,
      "data.phase2_fraction": 0.5,
      "model.hidden_dropout_prob": 0.1,  # dropout keys must resume too
    },
  )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
  """(workdir, final metrics) of 6 steps: 1-3 at 32 tokens, 4-6 at 64."""
  workdir = tmp_path_factory.mktemp("pretrain") / "run"
  return workdir, trainer.train_and_evaluate(two_phase_config(corpus), str(workdir))


def test_a_run_writes_checkpoints_metrics_and_the_final_evaluation(finished_run):
  workdir, metrics = finished_run
  saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert saved == [2, 4, 6]
  train = records(workdir)
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(np.isfinite(r[f"train/{m}"]) for r in train for m in METRICS)
  assert [r["step"] for r in records(workdir, "eval/mlm_loss")] == [2, 4, 6]
  with open(workdir / run_files.EVAL_METRICS_FILE) as f:
    assert json.load(f) == metrics
  # Held-out metrics at both lengths; an untrained model is near chance.
  for prefix in ("", "seq64/"):
    assert {f"{prefix}{m}" for m in METRICS} <= set(metrics)
    assert 0.0 <= metrics[f"{prefix}mlm_accuracy"] <= 1.0
    assert 0.0 <= metrics[f"{prefix}nsp_accuracy"] <= 1.0
    assert metrics[f"{prefix}loss"] == pytest.approx(
      metrics[f"{prefix}mlm_loss"] + metrics[f"{prefix}nsp_loss"]
    )
  assert metrics["mlm_loss"] == pytest.approx(np.log(614), rel=0.1)  # the demo's 614 tokens
  with open(workdir / run_files.CONFIG_FILE) as f:
    assert json.load(f)["task"] == "pretraining"
  assert (workdir / "vocab.txt").exists()


def test_a_killed_run_resumes_to_bit_identical_params(tmp_path, corpus, finished_run):
  reference, reference_metrics = finished_run
  resumed = tmp_path / "resumed"
  killed_after(reference, resumed, 4)
  assert trainer.train_and_evaluate(two_phase_config(corpus), str(resumed)) == reference_metrics
  with open(resumed / run_files.RUN_INFO_FILE) as f:
    run_info = json.load(f)
  assert run_info["start_step"] == 4 and "resumed" in run_info["weights"]
  new = records(resumed)[len(records(reference)) :]
  assert [r["step"] for r in new] == [5, 6]
  assert list(map(_values, new)) == list(map(_values, records(reference)[4:]))
  jax.tree.map(
    np.testing.assert_array_equal, restore_params(resumed, 6), restore_params(reference, 6)
  )
  # A finished run only evaluates again.
  assert trainer.train_and_evaluate(two_phase_config(corpus), str(resumed)) == reference_metrics


def _values(record: dict) -> dict:
  """A metrics record without its timings."""
  return {
    k: v for k, v in record.items() if k not in ("time", "train/mfu") and not k.endswith("_per_sec")
  }


def test_two_phase_schedule_switches_at_its_step_and_resumes_across_it(
  tmp_path, corpus, finished_run
):
  reference, reference_metrics = finished_run
  # Steps 1-3 drew from the 32-token instances, step 4 was the first of the 64-token ones.
  before, after = data_state(reference, 2), data_state(reference, 4)
  assert before["kind"] == "PhasedBatches" and before["switch_steps"] == [3]
  assert before["step"] == 2 and [p["step"] for p in before["phases"]] == [2, 0]
  assert after["step"] == 4 and [p["step"] for p in after["phases"]] == [3, 1]

  # A run killed before the switch resumes across it to the same parameters.
  resumed = tmp_path / "resumed"
  killed_after(reference, resumed, 2)
  assert trainer.train_and_evaluate(two_phase_config(corpus), str(resumed)) == reference_metrics
  jax.tree.map(
    np.testing.assert_array_equal, restore_params(resumed, 6), restore_params(reference, 6)
  )


def test_phase_split_is_the_last_fraction_of_the_steps():
  config = cli.load_config_file(f"{CONFIGS}/pretrain.py:bert")
  assert trainer.phase1_steps(config, 1_000_000) == 900_000  # BERT: 90 % at 128 tokens
  config.data.phase2_fraction = 0.3
  assert trainer.phase1_steps(config, 10) == 7
  for fraction, steps_ in [(1.0, 10), (0.95, 10)]:  # outside (0, 1); an empty first phase
    config.data.phase2_fraction = fraction
    with pytest.raises(RunConfigError, match="phase2_fraction"):
      trainer.phase1_steps(config, steps_)


def test_fine_tuning_starts_from_a_pretraining_workdir(finished_run):
  workdir, _ = finished_run
  config = cli.load_config_file(f"{CONFIGS}/squad.py:size=tiny")
  for field in config.model:
    if field != "preset":
      config.model[field] = None  # the checkpoint's architecture
  config.init_from = str(workdir)
  config.tokenizer.vocab_file = None  # found beside the checkpoints
  squad = tasks.get_task("squad")
  tokenizer = initialization.load_tokenizer(initialization.find_vocab_file(config, ""), True)
  weights = initialization.initial_weights(config, squad, tokenizer)
  assert "step 6" in weights.description
  pretrained = restore_params(workdir, 6)["mobilebert"]
  encoder = weights.params["mobilebert"]  # the QA model has no pooler
  assert set(encoder) == {"embeddings", "encoder"}
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.tree.map(np.asarray, encoder),
    {k: pretrained[k] for k in encoder},
  )
  assert set(weights.params) == {"mobilebert", "qa_outputs"}


# ----------------------------------------------------------------------------------------------
# Learning
# ----------------------------------------------------------------------------------------------


def test_overfitting_a_few_documents_drives_the_loss_down(tmp_path):
  documents = write_corpus(tmp_path / "few.txt", TRAIN_FILE, 3)
  config = tiny_config(
    documents,
    documents,
    num_train_steps=50,
    log_every_steps=10,
    checkpoint_every_steps=1000,
    **{
      "data.dupe_factor": 1,
      "optimizer.name": "adamw",
      "optimizer.learning_rate": 5e-3,
    },
  )
  metrics = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  train = records(tmp_path / "run")
  first, last = train[0]["train/loss"], train[-1]["train/loss"]
  assert last < 0.35 * first, (first, last)
  # Memorised: its own masked tokens and sentence pairs are predicted.
  assert metrics["mlm_accuracy"] > 0.9 and metrics["nsp_accuracy"] > 0.9, metrics


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def pretrain_command(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.pretrain", *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    check=False,
  )


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--config.data.train_files=/no/such/dir/*.txt"], r"train_files: /no/such/dir/\*\.txt"),
    (["--config.optimizer.learnin_rate=1e-4"], r"Did you mean config\.optimizer\.learning_rate"),
  ],
)
def test_bad_command_lines_fail_in_one_line(tmp_path, args, message):
  result = pretrain_command(
    f"--workdir={tmp_path / 'run'}",
    "--config=configs/pretrain.py:size=tiny",
    f"--config.tokenizer.vocab_file={VOCAB_FILE}",
    *args,
  )
  assert result.returncode == 1, result.stderr
  assert "Traceback" not in result.stderr
  lines = [line for line in result.stderr.splitlines() if line.startswith("mobilebert-pretrain:")]
  assert len(lines) == 1, result.stderr
  assert re.search(message, lines[0]), lines[0]


def test_command_line_defaults_and_overrides(tmp_path):
  parsed = pretrain.parse_flags(
    ["mobilebert-pretrain", f"--workdir={tmp_path}", "--config.data.phase2_fraction=0.2"]
  )
  assert parsed.config.model.preset == "ibbert-large"  # the teacher by default
  assert parsed.config.data.phase2_fraction == 0.2
  with pytest.raises(cli.UsageError, match="--workdir"):
    pretrain.parse_flags(["mobilebert-pretrain"])
  with pytest.raises(cli.UsageError, match="choose one"):
    pretrain.parse_flags(
      ["mobilebert-pretrain", "--workdir=x", "--config=configs/pretrain.py:teacher,bert"]
    )


@pytest.mark.parametrize(
  "variant",
  [
    "",
    "teacher",
    "student",
    "bert",
    "recipe=lamb",
    "size=tiny",
    "student,size=tiny",
    "bert,size=tiny",
  ],
)
def test_config_variants_load(variant):
  config = cli.load_config_file(f"{CONFIGS}/pretrain.py" + (f":{variant}" if variant else ""))
  assert config.task == initialization.PRETRAINING.name
  preset = {"student": "mobilebert-uncased", "bert": "bert-base-uncased"}
  assert config.model.preset == preset.get(variant.split(",")[0], "ibbert-large")
  # The model's fields can be overridden, the architecture built.
  MobileBertConfig.from_preset(
    config.model.preset,
    **{k: v for k, v in config.model.items() if k != "preset" and v is not None},
  )


# ----------------------------------------------------------------------------------------------
# Parity with transformers
# ----------------------------------------------------------------------------------------------


def random_params(module, seed: int):
  """Every leaf random, biases and norms included (the default init hides mapping errors)."""
  shapes = traverse_util.flatten_dict(abstract_params(module))
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  out = {}
  for key, (path, leaf) in zip(keys, shapes.items(), strict=True):
    noise = jax.random.normal(key, leaf.shape, leaf.dtype)
    out[path] = {"scale": 1.0 + 0.5 * noise, "bias": 0.5 * noise}.get(path[-1], 0.1 * noise)
  return traverse_util.unflatten_dict(out)


def pretraining_batch(config: MobileBertConfig, batch: int, length: int, predictions: int):
  """Right-padded two-segment rows with `predictions` distinct masked positions each."""
  rng = np.random.default_rng(0)
  lengths = rng.integers(predictions + 3, length + 1, batch)
  positions = np.arange(length)
  real = positions[None, :] < lengths[:, None]
  masked = np.stack([np.sort(rng.choice(np.arange(1, n - 1), predictions, False)) for n in lengths])
  return {
    "input_ids": np.where(real, rng.integers(5, config.vocab_size, (batch, length)), 0),
    "attention_mask": real.astype(np.int32),
    "token_type_ids": (real & (positions[None, :] >= lengths[:, None] // 2)).astype(np.int32),
    "masked_lm_positions": masked.astype(np.int32),
    "masked_lm_ids": rng.integers(0, config.vocab_size, masked.shape).astype(np.int32),
    "masked_lm_weights": np.ones(masked.shape, np.float32),
    "next_sentence_labels": rng.integers(0, 2, batch).astype(np.int32),
  }


@pytest.mark.torch
def test_step_loss_equals_transformers_pretraining_loss(tmp_path):
  """Ours = transformers' loss on the same weights and batch (MLM mean × N / (N + eps) + NSP).

  transformers averages the MLM cross-entropy over the N masked tokens; with all weights 1 our
  TF1 normalisation divides the same sum by N + 1e-5 instead.
  """
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = MobileBertConfig(
    vocab_size=97,
    embedding_size=16,
    hidden_size=48,
    intra_bottleneck_size=24,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=40,
    num_feedforward_networks=2,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  model = MobileBertForPreTraining(config)
  params = random_params(model, seed=3)
  save_pretrained(tmp_path / "hf", model, params)
  theirs = transformers.MobileBertForPreTraining.from_pretrained(
    str(tmp_path / "hf"), attn_implementation="eager"
  ).eval()
  batch = pretraining_batch(config, batch=4, length=24, predictions=5)
  inputs = pretraining_data.to_transformers_inputs(batch)
  with torch.no_grad():
    reference = theirs(**{k: torch.from_numpy(np.asarray(v)).long() for k, v in inputs.items()})
  reference_loss = float(reference.loss)

  context = steps.StepContext(step=jnp.int32(0), collections={}, frozen=None)
  num_masked = float(batch["masked_lm_weights"].sum())
  nsp = _nsp_loss(reference.seq_relationship_logits.numpy(), batch["next_sentence_labels"])
  for eps, expected in [
    (0.0, reference_loss),
    (1e-5, (reference_loss - nsp) * num_masked / (num_masked + 1e-5) + nsp),
  ]:
    loss_fn = steps.model_loss_fn(
      model, trainer.make_mlm_nsp_loss(eps), model_inputs_fn=trainer.pretraining_inputs
    )
    loss, aux, _ = loss_fn(params, jax.tree.map(jnp.asarray, batch), jax.random.key(0), context)
    error = abs(float(loss) - expected) / abs(expected)
    print(f"eps={eps}: ours {float(loss)!r}, transformers {expected!r}, rel. error {error:.2e}")
    assert error <= 1e-5
    assert float(aux["nsp_loss"]) == pytest.approx(nsp, rel=1e-5)


def _nsp_loss(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean cross-entropy of transformers' NSP logits, in float64."""
  shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


def test_instances_written_to_array_record_train_and_evaluate(tmp_path, corpus):
  from mobilebert_jax.data.pretraining_instances import PretrainingConfig
  from mobilebert_jax.data.pretraining_pipeline import write_instances
  from mobilebert_jax.train.initialization import load_tokenizer

  tokenizer = load_tokenizer(VOCAB_FILE, True)
  shape = PretrainingConfig(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
  for name, path in (("train", corpus[0]), ("heldout", corpus[1])):
    write_instances(path, tokenizer, shape, tmp_path / name, seed=12345, shards=2)
  config = tiny_config(
    None,
    num_train_steps=2,
    **{
      "data.source": "array_record",
      "data.train_dirs": str(tmp_path / "train"),
      "data.eval_dirs": str(tmp_path / "heldout"),
    },
  )
  workdir = tmp_path / "run"
  metrics = trainer.train_and_evaluate(config, str(workdir))
  assert np.isfinite(metrics["mlm_loss"]) and 0.0 <= metrics["mlm_accuracy"] <= 1.0
  assert data_state(workdir, 2)["kind"] == "PretrainingBatches"
  # Instances of another shape are refused with the reason.
  config.data.max_seq_length = 64
  with pytest.raises(RunConfigError, match="holds instances of 32 tokens and 5 predictions"):
    trainer.train_and_evaluate(config, str(tmp_path / "other"))
