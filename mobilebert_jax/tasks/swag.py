"""SWAG multiple choice with `MobileBertForMultipleChoice`.

Data: the CSV files of rowanz/swagaf (`config.data.data_dir` with `train.csv`, `val.csv` and,
with `config.data.predict_test=True`, `test.csv`; or `train_file`/`eval_file`/`test_file`).
TFDS has no SWAG. The metric is the accuracy of the arg-max ending; predictions are written as
`predictions_<split>.csv` (`index,prediction` and, for labelled splits, `label`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from mobilebert_jax.data import swag
from mobilebert_jax.model.models import MobileBertForMultipleChoice
from mobilebert_jax.tasks.base import (
  ConfigDict,
  EvalSet,
  Task,
  check_source,
  data_file,
  example_mask,
  masked_accuracy,
  write_lines,
)
from mobilebert_jax.train import losses

_FILES = {
  "train": ("train_file", ("train.csv",)),
  "validation": ("eval_file", ("val.csv",)),
  "test": ("test_file", ("test.csv",)),
}


def _features(config: ConfigDict, split: str, tokenizer) -> swag.SwagFeatures:
  check_source(config, ("files",))
  field, names = _FILES[split]
  examples = swag.read_swag_csv(data_file(config, field, names, f"SWAG {split} data"))
  return swag.featurize_swag(examples, tokenizer, config.data.max_seq_length)


def _train_features(config: ConfigDict, tokenizer) -> dict[str, np.ndarray]:
  features = _features(config, "train", tokenizer)
  if "labels" not in features.arrays:
    raise ValueError("SWAG training data has no 'label' column")
  return features.arrays


def _eval_set(config: ConfigDict, split: str, tokenizer) -> EvalSet:
  features = _features(config, split, tokenizer)
  labels = features.arrays.get("labels")

  def finish(outputs: Mapping[str, np.ndarray], output_dir: str | None) -> dict[str, float]:
    predicted = outputs["logits"].argmax(-1)
    if output_dir is not None:
      header = "index,prediction" + (",label" if labels is not None else "")
      rows = [
        f"{i},{p}" + (f",{labels[n]}" if labels is not None else "")
        for n, (i, p) in enumerate(zip(features.example_ids, predicted, strict=True))
      ]
      write_lines(os.path.join(output_dir, f"predictions_{split}.csv"), [header, *rows])
    if labels is None:
      return {}
    return {"accuracy": swag.swag_accuracy(labels, outputs["logits"])}

  inputs = {k: v for k, v in features.arrays.items() if k != "labels"}
  return EvalSet(split, inputs, finish, labelled=labels is not None)


def _eval_sets(config: ConfigDict, tokenizer) -> list[EvalSet]:
  sets = [_eval_set(config, "validation", tokenizer)]
  if config.data.predict_test:
    sets.append(_eval_set(config, "test", tokenizer))
  return sets


def _make_loss(model_config):
  del model_config

  def loss_fn(outputs, batch):
    labels = batch["labels"]
    loss = losses.multiple_choice_loss(outputs.logits, labels, batch.get("weights"))
    mask = example_mask(batch, labels.shape)
    return loss, {"accuracy": masked_accuracy(jnp.argmax(outputs.logits, -1), labels, mask)}

  return loss_fn


def _eval_outputs(outputs, batch):
  del batch
  return {"logits": outputs.logits}


TASKS = {
  "swag": Task(
    name="swag",
    family="swag",
    model_class=MobileBertForMultipleChoice,
    main_metric="accuracy",
    model_overrides=lambda config: {},
    train_features=_train_features,
    eval_sets=_eval_sets,
    make_loss=_make_loss,
    eval_outputs=_eval_outputs,
  )
}
