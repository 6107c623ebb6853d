"""`mobilebert_jax.inference` against runs of the real trainer.

A tiny SQuAD model is trained for a few dozen steps (a few demo paragraphs, `size=tiny`) and a
tiny RTE model for two; the inference functions must then reproduce what the trainer itself
wrote: the checkpoint's parameters, `predictions.json` and the GLUE dev predictions file.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mobilebert_jax import (
  MobileBertConfig,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  inference,
)
from mobilebert_jax.cli import load_config_file
from mobilebert_jax.data import squad
from mobilebert_jax.demo import DEV_FILE, TRAIN_FILE, VOCAB_FILE
from mobilebert_jax.trainers import finetuning as trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, "tests", "testdata")
# A paragraph in the demo data's style whose names the model never saw.
CONTEXT = (
  "Morwen Kelbratan was born in the town of Fenlumouth in 1764. For 22 years she earned a "
  "living as a clockmaker. She also loved music and played the harp well. She spent her last "
  "years in Dravostead and died there in 1831."
)

pytestmark = pytest.mark.usefixtures("fast_compiles")


def tiny_config(spec: str, **changes):
  """A `size=tiny` config with the demo vocabulary and `changes` ("a.b" keys allowed)."""
  config = load_config_file(os.path.join(REPO, "mobilebert_jax", "configs", spec))
  config.tokenizer.vocab_file = VOCAB_FILE
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split(".")
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def demo_subset(source: str, num_articles: int, path) -> str:
  """The first `num_articles` articles of a demo SQuAD file, written to `path`."""
  with open(source, encoding="utf-8") as f:
    data = json.load(f)
  path.write_text(json.dumps({"version": "1.1", "data": data["data"][:num_articles]}))
  return str(path)


def saved_params(workdir, step: int):
  """The params of a checkpoint, read with Orbax directly (no code of ours)."""
  state_dir = os.path.join(workdir, "checkpoints", str(step), "state")
  with ocp.PyTreeCheckpointer() as checkpointer:
    return checkpointer.restore(state_dir)["params"]


# ----------------------------------------------------------------------------------------------
# SQuAD
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def squad_run(tmp_path_factory) -> str:
  """A tiny SQuAD v1.1 model, 30 steps on 30 demo questions; checkpoints at 10, 20 and 30."""
  data = tmp_path_factory.mktemp("squad_data")
  workdir = str(tmp_path_factory.mktemp("squad_run"))
  config = tiny_config(
    "squad.py:size=tiny",
    num_train_steps=30,
    checkpoint_every_steps=10,
    keep_checkpoints=3,
    log_every_steps=10,
    **{
      "data.train_file": demo_subset(TRAIN_FILE, 6, data / "train.json"),
      # Demo dev paragraphs run past one 64-token window: decoding spans several windows.
      "data.eval_file": demo_subset(DEV_FILE, 3, data / "dev.json"),
      "optimizer.learning_rate": 5e-3,
    },
  )
  trainer.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def squad_model(squad_run) -> inference.FineTuned:
  return inference.load_finetuned(squad_run)


@pytest.fixture(scope="module")
def dev_examples(squad_run):
  with open(os.path.join(squad_run, "config.json")) as f:
    dev_file = json.load(f)["data"]["eval_file"]
  return squad.read_squad_json(dev_file, is_training=False).examples


def read_json(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.filterwarnings("ignore:Sharding info not provided when restoring")
def test_load_finetuned_restores_the_checkpoint(squad_run, squad_model, caplog):
  assert squad_model.task == "squad" and squad_model.step == 30
  assert isinstance(squad_model.module, MobileBertForQuestionAnswering)
  assert squad_model.config == MobileBertConfig.from_dict(
    read_json(squad_run, "model_config.json"), source="hf"
  )
  assert squad_model.run_config.data.max_seq_length == 64
  assert squad_model.tokenizer.vocab_size > 100
  jax.tree.map(np.testing.assert_array_equal, squad_model.params, saved_params(squad_run, 30))

  # Only the load's own records: saved_params above logs Orbax's INFO lines when another test
  # of this worker has set absl's verbosity to INFO.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    earlier = inference.load_finetuned(squad_run, step=20)
  assert earlier.step == 20
  # Orbax's routine warnings about read-only opens are kept out of the user's log.
  orbax_warnings = [
    r
    for r in caplog.records
    if r.levelno >= logging.WARNING and f"{os.sep}orbax{os.sep}" in r.pathname
  ]
  assert not orbax_warnings
  jax.tree.map(np.testing.assert_array_equal, earlier.params, saved_params(squad_run, 20))
  # Training moved the weights between the two checkpoints.
  differs = jax.tree.map(lambda a, b: not np.array_equal(a, b), squad_model.params, earlier.params)
  assert any(jax.tree.leaves(differs))

  # The checkpoints/ directory and one step directory work too.
  assert inference.load_finetuned(os.path.join(squad_run, "checkpoints")).step == 30
  assert inference.load_finetuned(os.path.join(squad_run, "checkpoints", "10")).step == 10


def test_answers_are_the_trainers_predictions(squad_run, squad_model, dev_examples):
  predictions = read_json(squad_run, "predictions.json")
  nbest = read_json(squad_run, "nbest_predictions.json")
  assert len(dev_examples) >= 10
  geometry = squad.SquadFeatureConfig(max_seq_length=64, doc_stride=32, max_query_length=16)
  windows = squad.convert_examples_to_features(
    dev_examples, squad_model.tokenizer, is_training=False, config=geometry
  )
  assert len(windows) > len(dev_examples)  # some answers are picked among several windows
  answers = inference.answer_questions(
    squad_model,
    [e.question_text for e in dev_examples],
    [e.context_text for e in dev_examples],
    batch_size=8,  # several batches, the last one padded
  )
  assert [a.text for a in answers] == [predictions[e.qas_id] for e in dev_examples]
  for example, answer in zip(dev_examples, answers, strict=True):
    best = nbest[example.qas_id][0]
    assert answer.score == pytest.approx(best["start_logit"] + best["end_logit"], abs=1e-4)
    assert answer.probability == pytest.approx(best["probability"], abs=1e-4)
    assert answer.null_score_diff is None
    assert example.context_text[answer.start : answer.end] == answer.text

  # One question alone (another batch shape) gets the same answer.
  middle = len(dev_examples) // 2
  example = dev_examples[middle]
  single = inference.answer_question(squad_model, example.question_text, example.context_text)
  assert single.text == predictions[example.qas_id]
  assert (single.start, single.end) == (answers[middle].start, answers[middle].end)


def test_a_new_context_gets_a_span_of_it(squad_model):
  long_context = " ".join([CONTEXT] * 3)  # about four 64-token windows
  answers = inference.answer_questions(
    squad_model, ["Where was Morwen Kelbratan born?", "When did she die?"], long_context
  )
  for answer in answers:
    assert 0 <= answer.start < answer.end <= len(long_context)
    assert long_context[answer.start : answer.end] == answer.text
    assert answer.text.strip() and 0.0 < answer.probability <= 1.0

  # The same model as bare parts, with the run's window settings given by hand.
  parts = (squad_model.module, squad_model.params, squad_model.tokenizer)
  by_hand = inference.answer_question(
    parts,
    "Where was Morwen Kelbratan born?",
    long_context,
    max_seq_length=64,
    doc_stride=32,
    max_query_length=16,
  )
  assert (by_hand.text, by_hand.start, by_hand.end) == (
    answers[0].text,
    answers[0].start,
    answers[0].end,
  )
  assert by_hand.score == pytest.approx(answers[0].score, abs=1e-4)


def test_a_threshold_switches_on_null_answers(squad_model):
  question = "Which instrument did Morwen Kelbratan play?"
  plain = inference.answer_question(squad_model, question, CONTEXT)
  # Null score minus best span score is never above 1e9 nor below -1e9.
  never_null = inference.answer_question(
    squad_model, question, CONTEXT, null_score_diff_threshold=1e9
  )
  always_null = inference.answer_question(
    squad_model, question, CONTEXT, null_score_diff_threshold=-1e9
  )
  assert never_null.text == plain.text and never_null.null_score_diff is not None
  assert (always_null.text, always_null.start, always_null.end) == ("", 0, 0)
  assert always_null.null_score_diff == pytest.approx(never_null.null_score_diff)


def test_errors_name_the_problem(tmp_path, squad_run, squad_model):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=r"not a fine-tuning workdir.*no model_config.json"):
    inference.load_finetuned(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    inference.load_finetuned(tmp_path / "missing")
  with pytest.raises(FileNotFoundError, match=r"step 7 .*available: \[10, 20, 30\]"):
    inference.load_finetuned(squad_run, step=7)
  with pytest.raises(ValueError, match="checkpoint of step 10, not step 20"):
    inference.load_finetuned(os.path.join(squad_run, "checkpoints", "10"), step=20)
  with pytest.raises(ValueError, match="2 questions but 3 contexts"):
    inference.answer_questions(squad_model, ["a?", "b?"], ["x", "y", "z"])
  with pytest.raises(ValueError, match="max_position_embeddings=64"):
    inference.answer_question(squad_model, "Who?", CONTEXT, max_seq_length=128)
  with pytest.raises(ValueError, match="empty question"):
    inference.answer_question(squad_model, " ", CONTEXT)
  with pytest.raises(ValueError, match="squad model cannot do glue"):
    inference.classify(squad_model, "a sentence")


# ----------------------------------------------------------------------------------------------
# GLUE
# ----------------------------------------------------------------------------------------------


def rte_data(tmp_path) -> str:
  """RTE with the training pairs repeated to fill a batch, and every pair in the dev set."""
  data = tmp_path / "RTE"
  shutil.copytree(os.path.join(TESTDATA, "glue", "RTE"), data)
  train = (data / "train.tsv").read_text().splitlines()
  dev = (data / "dev.tsv").read_text().splitlines()
  (data / "train.tsv").write_text("\n".join(train[:1] + train[1:] * 4) + "\n")
  rows = [line.split("\t")[1:] for line in train[1:] + dev[1:]]
  lines = [dev[0]] + ["\t".join([str(i), *row]) for i, row in enumerate(rows)]
  (data / "dev.tsv").write_text("\n".join(lines) + "\n")
  return str(data)


@pytest.fixture(scope="module")
def rte_run(tmp_path_factory) -> str:
  workdir = tmp_path_factory.mktemp("rte_run")
  config = tiny_config(
    "glue.py:task=rte,size=tiny",
    num_train_steps=2,
    **{"data.data_dir": rte_data(tmp_path_factory.mktemp("rte_data"))},
  )
  trainer.train_and_evaluate(config, str(workdir))
  return str(workdir)


def test_classify_agrees_with_the_trainers_dev_predictions(rte_run):
  model = inference.load_finetuned(rte_run)
  assert model.task == "glue/rte" and model.step == 2
  assert isinstance(model.module, MobileBertForSequenceClassification)
  config = read_json(rte_run, "config.json")
  with open(os.path.join(config["data"]["data_dir"], "dev.tsv"), encoding="utf-8") as f:
    dev = {row["index"]: row for row in csv.DictReader(f, delimiter="\t")}
  with open(os.path.join(rte_run, "RTE_validation_predictions.tsv"), encoding="utf-8") as f:
    predicted = list(csv.DictReader(f, delimiter="\t"))
  assert len(predicted) == len(dev) >= 3
  for row in predicted:
    pair = dev[row["index"]]
    label, probabilities = inference.classify(model, pair["sentence1"], pair["sentence2"])
    assert label == row["prediction"]
    assert set(probabilities) == {"entailment", "not_entailment"}
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)
    assert max(probabilities, key=probabilities.get) == label

  with pytest.raises(ValueError, match="RTE takes a text_pair"):
    inference.classify(model, "Only one sentence.")
  with pytest.raises(ValueError, match="glue/rte model cannot do squad"):
    inference.answer_question(model, "Who?", CONTEXT)
