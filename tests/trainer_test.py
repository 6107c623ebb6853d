"""`trainer.train_and_evaluate` on tiny configs: learning, divergence, resume and warm starts.

All runs use the `size=tiny` configs (a 2-block MobileBERT-shaped model, the demo vocabulary)
on the 8 fake CPU devices of conftest.py, with XLA's optimisation passes off so that compiling
stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax import (
  MobileBertConfig,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  tasks,
)
from mobilebert_jax.cli import load_config_file
from mobilebert_jax.demo import TRAIN_FILE, VOCAB_FILE
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.models import abstract_params, init_params
from mobilebert_jax.train import (
  checkpointing,
  evaluation,
  flops,
  loop,
  optim,
  run_files,
  sharding,
  steps,
  summaries,
)
from mobilebert_jax.trainers import finetuning as trainer
from mobilebert_jax.weights import layout
from mobilebert_jax.weights.loading import save_pretrained

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
CONFIGS = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mobilebert_jax", "configs"
)

pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny_config(spec: str, **changes):
  """A `size=tiny` config with the demo vocabulary and `changes` ("a.b" keys allowed)."""
  config = load_config_file(f"{CONFIGS}/{spec}")
  config.tokenizer.vocab_file = VOCAB_FILE
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture(scope="module")
def small_squad(tmp_path_factory) -> str:
  """Eight demo questions (two paragraphs): a training set a tiny model can memorise."""
  with open(TRAIN_FILE, encoding="utf-8") as f:
    data = json.load(f)
  articles = data["data"][:2]
  for article in articles:
    article["paragraphs"][0]["qas"] = article["paragraphs"][0]["qas"][:4]
  path = tmp_path_factory.mktemp("small_squad") / "train.json"
  path.write_text(json.dumps({"version": "1.1", "data": articles}))
  return str(path)


def squad_config(train_file: str, **changes):
  return tiny_config(
    "squad.py:size=tiny",
    **{"data.train_file": train_file, "data.eval_file": train_file, **changes},
  )


def train_records(workdir) -> list[dict]:
  with open(os.path.join(workdir, summaries.METRICS_FILE)) as f:
    return [r for r in map(json.loads, f) if "train/loss" in r]


def model_config_of(workdir) -> MobileBertConfig:
  with open(os.path.join(workdir, run_files.MODEL_CONFIG_FILE)) as f:
    return MobileBertConfig.from_dict(json.load(f), source="hf")


def restore_params(workdir, step: int):
  """The parameters of checkpoint `step` of a workdir, as host arrays."""
  model_config = model_config_of(workdir)
  with open(os.path.join(workdir, run_files.CONFIG_FILE)) as f:
    task = tasks.get_task(json.load(f)["task"])
  target = abstract_params(task.model_class(model_config))
  root = os.path.join(workdir, "checkpoints")
  params = checkpointing.load_params_from_checkpoint(root, target, step=step)
  return jax.tree.map(np.asarray, params)


# ----------------------------------------------------------------------------------------------
# Learning and divergence
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, small_squad) -> tuple[str, dict[str, float]]:
  """60 steps on the eight questions: (workdir, final metrics); later tests start from it."""
  workdir = str(tmp_path_factory.mktemp("overfit"))
  config = squad_config(
    small_squad,
    num_train_steps=60,
    log_every_steps=10,
    checkpoint_every_steps=1000,
    **{"optimizer.learning_rate": 5e-3, "data.max_seq_length": 64},
  )
  return workdir, trainer.train_and_evaluate(config, workdir)


def test_overfitting_a_few_examples_drives_the_loss_down(overfit_run):
  workdir, metrics = overfit_run
  records = train_records(workdir)
  first, last = records[0]["train/loss"], records[-1]["train/loss"]
  assert last < 0.2 * first, (first, last)
  # Memorised, so its own training questions are answered.
  assert metrics["f1"] > 50.0


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_checkpoint(tmp_path, small_squad):
  # Three warm-up steps: the first update has learning rate 0, the second blows up.
  config = squad_config(
    small_squad,
    num_train_steps=6,
    checkpoint_every_steps=1,
    log_every_steps=3,
    **{"optimizer.learning_rate": 1e38, "optimizer.warmup_proportion": 0.5},
  )
  with pytest.raises(loop.NonFiniteLossError, match=r"diverged at step 2\b.*step 1 in") as err:
    trainer.train_and_evaluate(config, str(tmp_path))
  assert "loss=" in str(err.value) and "learning_rate" in str(err.value)
  steps_saved = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert steps_saved == [1]
  params = restore_params(tmp_path, 1)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))
  assert not (tmp_path / run_files.EVAL_METRICS_FILE).exists()


# ----------------------------------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------------------------------


def test_rerun_resumes_from_the_latest_checkpoint_to_the_same_result(tmp_path, small_squad):
  config = squad_config(
    small_squad,
    num_train_steps=6,
    checkpoint_every_steps=2,
    keep_checkpoints=5,
    log_every_steps=1,
    **{"model.hidden_dropout_prob": 0.1},  # dropout keys must resume too
  )
  reference = tmp_path / "reference"
  reference_metrics = trainer.train_and_evaluate(config, str(reference))

  # A run killed after saving step 4: the same workdir without the later checkpoint.
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  shutil.rmtree(resumed / "checkpoints" / "6")
  os.remove(resumed / run_files.EVAL_METRICS_FILE)
  resumed_metrics = trainer.train_and_evaluate(config, str(resumed))

  with open(resumed / run_files.RUN_INFO_FILE) as f:
    run_info = json.load(f)
  assert run_info["start_step"] == 4 and "resumed" in run_info["weights"]
  new_steps = [r["step"] for r in train_records(resumed)][len(train_records(reference)) :]
  assert new_steps == [5, 6]
  expected, actual = restore_params(reference, 6), restore_params(resumed, 6)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)
  assert resumed_metrics == reference_metrics

  # A finished run only evaluates again.
  again = trainer.train_and_evaluate(config, str(resumed))
  assert again == reference_metrics

  # On resume the model overrides may switch the implementation (same numbers in float32) ...
  config.model.remat_policy = "full"
  assert trainer.train_and_evaluate(config, str(resumed)) == reference_metrics
  # ... but not change what the checkpoint's parameters were trained as.
  config.model.hidden_dropout_prob = 0.3
  with pytest.raises(RunConfigError, match=r"hidden_dropout_prob=0\.3 \(checkpoint: 0\.1\)"):
    trainer.train_and_evaluate(config, str(resumed))


def test_workdir_of_another_task_is_refused(overfit_run):
  workdir, _ = overfit_run
  glue = tiny_config("glue.py:task=rte,size=tiny", **{"data.data_dir": f"{TESTDATA}/glue"})
  with pytest.raises(RunConfigError, match="checkpoint of task 'squad'"):
    trainer.train_and_evaluate(glue, workdir)


def test_distill_from_a_fine_tuned_run_trains_on_its_soft_targets(
  tmp_path, overfit_run, small_squad
):
  """`distill_from`: logged loss = (1 - w) task + w soft term, and the soft term falls."""
  teacher_dir, _ = overfit_run
  config = squad_config(
    small_squad,
    num_train_steps=30,
    log_every_steps=10,
    checkpoint_every_steps=1000,
    distill_from=teacher_dir,
    distill_weight=0.3,
    distill_temperature=2.0,
    **{"optimizer.learning_rate": 5e-3, "data.max_seq_length": 64},
  )
  trainer.train_and_evaluate(config, str(tmp_path / "student"))
  records = train_records(tmp_path / "student")
  for r in records:
    np.testing.assert_allclose(
      r["train/loss"], 0.7 * r["train/task_loss"] + 0.3 * r["train/distill_loss"], rtol=1e-5
    )
  assert records[-1]["train/distill_loss"] < 0.5 * records[0]["train/distill_loss"]
  # The logged model FLOPs count the teacher's forward pass beside the student's step.
  per_sequence = flops.train_step_flops(
    model_config_of(tmp_path / "student"), 64, head="qa"
  ) + flops.forward_flops(model_config_of(teacher_dir), 64, head="qa")
  for r in records:
    logged = r["train/tflops_per_sec"] * 1e12 / r["train/sequences_per_sec"]
    assert logged == pytest.approx(per_sequence, rel=1e-6)

  other_vocab = tmp_path / "vocab.txt"
  words = Path(VOCAB_FILE).read_text(encoding="utf-8").splitlines()
  other_vocab.write_text("\n".join(words[:-2] + words[-1:] + words[-2:-1]) + "\n")
  glue_dir = tmp_path / "glue"
  with pytest.raises(RunConfigError, match="fine-tuned 'squad', this run is 'glue/rte'"):
    glue = tiny_config(
      "glue.py:task=rte,size=tiny",
      **{"data.data_dir": rte_data(tmp_path), "distill_from": teacher_dir},
    )
    trainer.train_and_evaluate(glue, str(glue_dir))
  with pytest.raises(RunConfigError, match="glue/stsb is a regression, without logits"):
    stsb = tiny_config(
      "glue.py:task=stsb,size=tiny",
      **{"data.data_dir": f"{TESTDATA}/glue/STS-B", "distill_from": teacher_dir},
    )
    trainer.train_and_evaluate(stsb, str(tmp_path / "stsb"))
  for changes, message in (
    ({"distill_weight": 1.5}, "distill_weight must lie in"),
    ({"distill_temperature": 0.0}, "distill_temperature must be > 0"),
    ({"distill_from": str(tmp_path / "missing")}, "distill_from: .* does not exist"),
    ({"tokenizer.vocab_file": str(other_vocab)}, "has another vocabulary than this run"),
  ):
    bad = squad_config(small_squad, **{"distill_from": teacher_dir, **changes})
    with pytest.raises(RunConfigError, match=message):
      trainer.train_and_evaluate(bad, str(tmp_path / "bad"))


# ----------------------------------------------------------------------------------------------
# Warm starts (--init_from)
# ----------------------------------------------------------------------------------------------


def rte_data(tmp_path) -> str:
  """RTE fixture with its two training pairs repeated to fill a batch of 8."""
  data = tmp_path / "RTE"
  shutil.copytree(f"{TESTDATA}/glue/RTE", data)
  lines = (data / "train.tsv").read_text().splitlines()
  (data / "train.tsv").write_text("\n".join(lines[:1] + lines[1:] * 4) + "\n")
  return str(data)


def test_init_from_a_hugging_face_directory(tmp_path):
  """Weights written by `save_pretrained` are the run's step-0 weights (vocab found beside)."""
  model_config = MobileBertConfig(
    vocab_size=700,  # more rows than the vocabulary needs is fine
    embedding_size=16,
    hidden_size=32,
    intra_bottleneck_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_feedforward_networks=2,
    max_position_embeddings=64,
    classifier_activation=True,
  )
  module = MobileBertForSequenceClassification(model_config)
  params = init_params(module, 7)
  hf_dir = tmp_path / "hf"
  save_pretrained(hf_dir, module, params)
  shutil.copy(VOCAB_FILE, hf_dir / "vocab.txt")

  config = tiny_config(
    "glue.py:task=rte,size=tiny",
    init_from=str(hf_dir),
    num_train_steps=1,
    checkpoint_every_steps=1,
    **{
      "tokenizer.vocab_file": None,
      "data.data_dir": rte_data(tmp_path),
      "optimizer.learning_rate": 0.0,  # the saved weights are then the initial ones
    },
  )
  workdir = tmp_path / "run"
  trainer.train_and_evaluate(config, str(workdir))
  with open(workdir / run_files.RUN_INFO_FILE) as f:
    assert "hf" in json.load(f)["weights"]
  loaded = restore_params(workdir, 1)  # scanned (tiny configs scan), the source is not
  expected = layout.stack_layers(jax.tree.map(np.asarray, params), 2)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  with open(workdir / run_files.MODEL_CONFIG_FILE) as f:
    saved = json.load(f)
  assert saved["vocab_size"] == 700 and saved["num_labels"] == 2
  assert saved["classifier_dropout"] == 0.1  # the recipe's override on top of the checkpoint


def test_init_from_our_checkpoint_of_another_task_takes_the_encoder(tmp_path, overfit_run):
  squad_dir, _ = overfit_run
  config = tiny_config(
    "glue.py:task=rte,size=tiny",
    init_from=squad_dir,
    num_train_steps=1,
    checkpoint_every_steps=1,
    **{"data.data_dir": rte_data(tmp_path), "optimizer.learning_rate": 0.0},
  )
  rte_dir = tmp_path / "rte"
  trainer.train_and_evaluate(config, str(rte_dir))
  encoder = restore_params(squad_dir, 60)["mobilebert"]
  started = restore_params(rte_dir, 1)
  jax.tree.map(np.testing.assert_array_equal, started["mobilebert"], encoder)
  assert set(started) == {"mobilebert", "classifier"}


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------


def test_predict_pads_the_last_batch_and_keeps_row_order():
  config = MobileBertConfig(
    vocab_size=64,
    embedding_size=8,
    hidden_size=16,
    intra_bottleneck_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    num_feedforward_networks=1,
    max_position_embeddings=16,
  )
  model = MobileBertForQuestionAnswering(config)
  mesh = sharding.make_mesh()
  rules = sharding.logical_axis_rules("dp")
  params = init_params(model, 0)
  state_sh = sharding.train_state_shardings(model, sharding_optimizer(), mesh, rules)
  outputs_fn = evaluation.with_bookkeeping(tasks.get_task("squad").eval_outputs)
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, outputs_fn=outputs_fn), mesh, rules, state_sh.params
  )
  rng = np.random.default_rng(0)
  inputs = {
    "input_ids": rng.integers(1, 64, (13, 16)).astype(np.int32),
    "attention_mask": np.ones((13, 16), np.int32),
    "token_type_ids": np.zeros((13, 16), np.int32),
    "start_positions": np.zeros(13, np.int32),  # not a model input: never sent
  }
  placed = sharding.put_tree(params, state_sh.params)
  outputs = evaluation.predict(
    eval_step, placed, inputs, global_batch_size=8, batch_sharding=sharding.batch_sharding(mesh)
  )
  direct = model.apply({"params": params}, jnp.asarray(inputs["input_ids"]))
  np.testing.assert_allclose(outputs["start_logits"], direct.start_logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(outputs["end_logits"], direct.end_logits, rtol=1e-5, atol=1e-5)
  assert eval_step.jitted._cache_size() == 1  # the padded last batch did not recompile


def sharding_optimizer():
  return optim.build_optimizer("adamw", 1e-3, total_steps=10).transformation


# ----------------------------------------------------------------------------------------------
# Summaries
# ----------------------------------------------------------------------------------------------


def test_metric_writer_writes_jsonl_and_tensorboard(tmp_path):
  with summaries.MetricWriter(str(tmp_path), enabled=True) as writer:
    writer.write_scalars(3, {"train/loss": 1.5, "train/grad_norm": float("nan")})
    writer.write_text("config", "a: 1")
  with open(tmp_path / summaries.METRICS_FILE) as f:
    (record,) = [json.loads(line) for line in f]
  assert record["step"] == 3 and record["train/loss"] == 1.5 and record["train/grad_norm"] == "nan"
  events = os.listdir(tmp_path / summaries.TENSORBOARD_DIR)
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
  disabled = tmp_path / "other"
  with summaries.MetricWriter(str(disabled), enabled=False) as writer:
    writer.write_scalars(1, {"x": 1.0})
  assert not disabled.exists()


def test_task_names_accept_the_usual_spellings():
  assert tasks.canonical_task_name("SQuAD1.1") == "squad"
  assert tasks.canonical_task_name("squad/v2.0") == "squad_v2"
  assert tasks.canonical_task_name("glue/STS-B") == "glue/stsb"
  assert tasks.canonical_task_name("SST-2") == "glue/sst2"
  assert tasks.canonical_task_name("glue_mnli") == "glue/mnli"
  assert tasks.canonical_task_name("CoNLL-2003") == "conll2003"
  for name in tasks.TASKS:
    assert tasks.canonical_task_name(name) == name
  with pytest.raises(ValueError, match="unknown task"):
    tasks.canonical_task_name("imagenet")
