"""CoNLL-2003 named-entity recognition with `MobileBertForTokenClassification`.

Data: the shared-task files (`config.data.data_dir` with `eng.train`/`eng.testa`/`eng.testb` or
`train.txt`/`valid.txt`/`test.txt`, or `train_file`/`eval_file`/`test_file`) or TFDS
`conll2003`. Tags are read as IOB2 (IOB1 files are converted; spans are unchanged), each word is
labelled on its first WordPiece, and predictions are scored with conlleval's rules on the dev set
(`testa`) and, with `config.data.eval_test=True`, on the test set (`testb`, metrics prefixed
`test/`). Predictions are written in conlleval's input format (`word gold predicted`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from mobilebert_jax.data import conll
from mobilebert_jax.metrics.conll import conlleval
from mobilebert_jax.model.models import MobileBertForTokenClassification
from mobilebert_jax.tasks.base import (
  ConfigDict,
  EvalSet,
  Task,
  check_source,
  data_file,
  masked_accuracy,
  tfds_kwargs,
)
from mobilebert_jax.train import losses

_FILES = {
  "train": ("train_file", ("eng.train", "train.txt")),
  "dev": ("eval_file", ("eng.testa", "valid.txt", "dev.txt")),
  "test": ("test_file", ("eng.testb", "test.txt")),
}


def _read(config: ConfigDict, split: str) -> conll.ConllData:
  if check_source(config, ("files", "tfds")) == "tfds":
    return conll.load_conll2003_tfds(split, **tfds_kwargs(config))
  field, names = _FILES[split]
  return conll.read_conll2003(data_file(config, field, names, f"CoNLL-2003 {split} data"))


def _featurize(config: ConfigDict, data: conll.ConllData, tokenizer) -> conll.NerFeatures:
  return conll.featurize_ner(data.words, data.tags, tokenizer, config.data.max_seq_length)


def _train_features(config: ConfigDict, tokenizer) -> dict[str, np.ndarray]:
  return _featurize(config, _read(config, "train"), tokenizer).arrays


def _labelled_set(config: ConfigDict, split: str, name: str, tokenizer) -> EvalSet:
  data = _read(config, split)
  features = _featurize(config, data, tokenizer)

  def finish(outputs: Mapping[str, np.ndarray], output_dir: str | None) -> dict[str, float]:
    predicted = conll.decode_ner_predictions(outputs["predictions"], features)
    if output_dir is not None:
      path = os.path.join(output_dir, f"predictions_{name}.txt")
      conll.write_conlleval_input(path, data.words, data.tags, predicted)
    result = conlleval(data.tags, predicted)
    return {
      "f1": result.f1,
      "precision": result.precision,
      "recall": result.recall,
      "accuracy": result.accuracy,
    }

  inputs = {k: v for k, v in features.arrays.items() if k != "labels"}
  return EvalSet(name, inputs, finish)


def _eval_sets(config: ConfigDict, tokenizer) -> list[EvalSet]:
  sets = [_labelled_set(config, "dev", "validation", tokenizer)]
  if config.data.eval_test:
    sets.append(_labelled_set(config, "test", "test", tokenizer))
  return sets


def _make_loss(model_config):
  del model_config

  def loss_fn(outputs, batch):
    labels = batch["labels"]
    weights = batch.get("weights")
    loss = losses.token_classification_loss(
      outputs.logits, labels, None if weights is None else weights[:, None]
    )
    scored = labels != losses.IGNORE_INDEX
    if weights is not None:
      scored = scored & (weights[:, None] > 0)
    accuracy = masked_accuracy(jnp.argmax(outputs.logits, -1), labels, scored)
    return loss, {"accuracy": accuracy}

  return loss_fn


def _eval_outputs(outputs, batch):
  del batch
  # Only the arg-max leaves the device: [N, L] ids instead of [N, L, 9] logits.
  return {"predictions": jnp.argmax(outputs.logits, axis=-1).astype(jnp.int32)}


TASKS = {
  "conll2003": Task(
    name="conll2003",
    family="conll2003",
    model_class=MobileBertForTokenClassification,
    main_metric="f1",
    model_overrides=lambda config: {
      "num_labels": len(conll.NER_LABELS),
      "id2label": tuple(enumerate(conll.NER_LABELS)),
      "problem_type": None,
    },
    train_features=_train_features,
    eval_sets=_eval_sets,
    make_loss=_make_loss,
    eval_outputs=_eval_outputs,
  )
}
