"""Every task config loads (with and without its variants) and carries its paper recipe; the
offline demo's shipped data are what `make_data.py` writes and measure generalisation.
"""

from __future__ import annotations

import glob
import importlib
import json
import os
import re
import shutil
import tomllib

import ml_collections
import pytest

from mobilebert_jax import cli, demo, finetune, tasks
from mobilebert_jax.demo import make_data
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.tokenization import WordPieceTokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "mobilebert_jax", "configs")
GLUE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")

VARIANTS = {
  "squad.py": ["", "version=2.0", "demo", "size=tiny", "version=2.0,size=tiny"],
  "glue.py": [f"task={t}" for t in GLUE] + [f"task={t},size=tiny" for t in GLUE] + ["task=SST-2"],
  "conll2003.py": ["", "size=tiny"],
  "swag.py": ["", "size=tiny"],
}


def load(name: str, variant: str = "") -> ml_collections.ConfigDict:
  return cli.load_config_file(os.path.join(CONFIGS, name) + (f":{variant}" if variant else ""))


def test_every_config_file_is_covered():
  files = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "*.py"))}
  # pretrain.py and distill.py are tested with their trainers (pretraining_trainer_test.py,
  # distill_trainer_test.py); every other file is a fine-tuning task's.
  assert files - {"common.py", "__init__.py", "pretrain.py", "distill.py"} == set(VARIANTS)


@pytest.mark.parametrize(
  ("name", "variant"), [(name, v) for name, variants in VARIANTS.items() for v in variants]
)
def test_config_loads_with_its_variant(name, variant):
  config = load(name, variant)
  assert config.task in tasks.TASKS
  assert config.optimizer.warmup_proportion == 0.1 or variant == "demo"
  # Every MobileBertConfig field can be overridden, except what the task decides.
  model_fields = {f for f in MobileBertConfig.__dataclass_fields__} - {
    "num_labels",
    "problem_type",
    "id2label",
  }
  assert set(config.model) == model_fields | {"preset"}
  config.lock()
  with pytest.raises(AttributeError):
    config.optimizer.learnig_rate = 1.0  # locked: misspellings cannot add fields
  json.loads(config.to_json_best_effort())  # what the trainer writes to the workdir


@pytest.mark.parametrize("task", sorted(tasks.TASKS))
def test_each_task_has_a_default_config_for_itself(task):
  spec = finetune.default_config(task)
  assert cli.load_config_file(spec).task == task


def test_squad_recipe_is_the_papers():
  config = load("squad.py")
  assert config.optimizer.learning_rate == 4e-5 and config.optimizer.name == "adamw_tf1"
  assert (config.batch_size, config.num_epochs) == (32, 5.0)
  assert (config.data.max_seq_length, config.data.doc_stride, config.data.max_query_length) == (
    384,
    128,
    64,
  )
  assert (config.eval.n_best_size, config.eval.max_answer_length) == (20, 30)
  assert (config.optimizer.weight_decay, config.optimizer.clip_norm) == (0.01, 1.0)
  assert config.init_from == "google/mobilebert-uncased"
  assert load("squad.py", "version=2.0").task == "squad_v2"


def test_glue_recipe_is_the_papers():
  config = load("glue.py", "task=mrpc")
  assert (config.optimizer.learning_rate, config.batch_size, config.num_epochs) == (5e-5, 32, 3.0)
  assert config.data.max_seq_length == 128 and config.model.classifier_dropout == 0.1


def test_docstrings_give_the_command_and_the_expected_score():
  for name in VARIANTS:
    with open(os.path.join(CONFIGS, name)) as f:
      text = f.read()
    assert "python -m mobilebert_jax.finetune" in text, name
    assert "Expected" in text, name
  with open(os.path.join(CONFIGS, "squad.py")) as f:
    assert "90.0" in f.read()  # SQuAD v1.1 F1 of the paper


@pytest.mark.parametrize(
  ("name", "variant", "message"),
  [
    ("glue.py", "", "task=NAME"),
    ("glue.py", "task=ax", "task=NAME"),
    ("squad.py", "version=3", "1.1 or 2.0"),
    ("squad.py", "colour=red", "unknown config variant"),
    ("swag.py", "size=huge", "unknown size"),
  ],
)
def test_bad_variants_are_rejected(name, variant, message):
  with pytest.raises(Exception, match=message):
    load(name, variant)


def test_configs_are_a_package_found_from_any_directory(tmp_path, monkeypatch):
  # Inside the package, so a wheel carries them with no build-time copying.
  assert finetune.config_dir() == CONFIGS
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    pyproject = tomllib.load(f)
  assert "force-include" not in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
  assert importlib.import_module("mobilebert_jax.configs.glue").get_config("task=rte").task == (
    "glue/rte"
  )
  # The documented spelling `configs/NAME.py` works outside a checkout too.
  monkeypatch.chdir(tmp_path)
  assert cli.load_config_file("configs/glue.py:task=rte").task == "glue/rte"
  # A file of that name in the current directory wins (a forked recipe).
  (tmp_path / "configs").mkdir()
  shutil.copy(os.path.join(CONFIGS, "glue.py"), tmp_path / "configs" / "glue.py")
  assert cli.resolve_config_path("configs/glue.py") == "configs/glue.py"
  with pytest.raises(cli.UsageError, match="does not exist"):
    cli.load_config_file("configs/no_such_recipe.py")


# ----------------------------------------------------------------------------------------------
# The demo's shipped data
# ----------------------------------------------------------------------------------------------


def read(path: str):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def test_demo_files_are_what_make_data_writes(tmp_path):
  make_data.write_all(str(tmp_path))
  for name in ("vocab.txt", "train.json", "dev.json"):
    with open(tmp_path / name, "rb") as new, open(os.path.join(demo.DEMO_DIR, name), "rb") as old:
      assert new.read() == old.read(), (
        f"{name} differs: rerun python -m mobilebert_jax.demo.make_data"
      )
  total = sum(os.path.getsize(os.path.join(demo.DEMO_DIR, n)) for n in os.listdir(demo.DEMO_DIR))
  assert total < 600_000


def test_demo_answers_are_spans_and_dev_entities_are_unseen():
  train, dev = read(demo.TRAIN_FILE), read(demo.DEV_FILE)
  train_text = " ".join(a["paragraphs"][0]["context"] for a in train["data"])
  tokenizer = WordPieceTokenizer.from_file(demo.VOCAB_FILE)
  num_questions = 0
  for dataset in (train, dev):
    for article in dataset["data"]:
      (paragraph,) = article["paragraphs"]
      context = paragraph["context"]
      assert "[UNK]" not in tokenizer.tokenize(context)
      for qa in paragraph["qas"]:
        (answer,) = qa["answers"]
        start = answer["answer_start"]
        assert context[start : start + len(answer["text"])] == answer["text"]
        num_questions += 1
  assert num_questions > 2000
  # Invented names (capitalised answers and titles) of the dev set never occur in training.
  dev_names = {a["title"].removeprefix("The ") for a in dev["data"]}
  for article in dev["data"]:
    for qa in article["paragraphs"][0]["qas"]:
      text = qa["answers"][0]["text"]
      if re.search(r"[A-Z]", text):
        dev_names.add(text)
  assert len(dev_names) > 100
  train_words = set(re.findall(r"\w+", train_text))
  assert not [name for name in dev_names if set(name.split()) <= train_words]
