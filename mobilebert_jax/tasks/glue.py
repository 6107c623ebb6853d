"""GLUE: sentence(-pair) classification and STS-B regression with
`MobileBertForSequenceClassification`.

Data: the official TSV files (`config.data.data_dir` is `glue_data/` or one task's directory,
e.g. `glue_data/RTE`) or TFDS `glue/<task>`. MNLI is evaluated on both dev sets (matched is the
primary; mismatched metrics are prefixed `validation_mismatched/`). With
`config.data.predict_test=True` the test splits are predicted and written as GLUE server files
(`RTE.tsv`, `MNLI-m.tsv`, ...). Metrics are `mobilebert_jax.metrics.glue` (fractions) and their
mean, `score`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from mobilebert_jax.data import glue
from mobilebert_jax.metrics import glue as glue_metrics
from mobilebert_jax.model.models import MobileBertForSequenceClassification
from mobilebert_jax.tasks.base import (
  ConfigDict,
  EvalSet,
  Task,
  check_source,
  example_mask,
  masked_accuracy,
  tfds_kwargs,
  write_lines,
)
from mobilebert_jax.train import losses

# GLUE's diagnostic set is predicted with an MNLI model, not trained on.
TRAINABLE = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def _task_dir(config: ConfigDict, task: glue.GlueTask) -> str:
  """The task's TSV directory: `data_dir/<GlueName>` when it exists, else `data_dir` itself."""
  data_dir = config.data.get("data_dir")
  if not data_dir:
    raise FileNotFoundError(
      f"GLUE {task.glue_name}: no data given; set --config.data.data_dir=DIR (glue_data/ or "
      f"glue_data/{task.glue_name}) or --config.data.source=tfds"
    )
  nested = os.path.join(data_dir, task.glue_name)
  if os.path.isdir(nested):
    return nested
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(f"GLUE {task.glue_name}: --config.data.data_dir={data_dir} is missing")
  return data_dir


def _read(config: ConfigDict, task: glue.GlueTask, split: str) -> glue.GlueExamples:
  if check_source(config, ("files", "tfds")) == "tfds":
    return glue.load_glue_tfds(task, split, **tfds_kwargs(config))
  return glue.load_glue_tsv(task, split, _task_dir(config, task))


def _features(config: ConfigDict, task: glue.GlueTask, split: str, tokenizer) -> glue.GlueFeatures:
  return glue.featurize_glue(_read(config, task, split), tokenizer, config.data.max_seq_length)


def _eval_splits(task: glue.GlueTask) -> list[str]:
  return [s for s in task.splits if s.startswith("validation")]


def _test_splits(task: glue.GlueTask) -> list[str]:
  return [s for s in task.splits if task.splits[s].submission_file and s.startswith("test")]


def _make_task(name: str) -> Task:
  task = glue.get_task(name)

  def model_overrides(config: ConfigDict) -> dict:
    del config
    if task.is_regression:
      return {"num_labels": 1, "problem_type": "regression", "id2label": None}
    return {
      "num_labels": task.num_labels,
      "problem_type": "single_label_classification",
      "id2label": tuple(enumerate(task.label_names or task.labels)),
    }

  def train_features(config: ConfigDict, tokenizer) -> dict[str, np.ndarray]:
    return _features(config, task, "train", tokenizer).arrays

  def labelled_set(config: ConfigDict, split: str, tokenizer) -> EvalSet:
    features = _features(config, task, split, tokenizer)
    labels = features.arrays["labels"]

    def finish(outputs: Mapping[str, np.ndarray], output_dir: str | None) -> dict[str, float]:
      logits = outputs["logits"]
      if output_dir is not None:
        predicted = logits[:, 0] if task.is_regression else logits.argmax(-1)
        lines = ["index\tprediction\tlabel"]
        for index, value, gold in zip(features.example_ids, predicted, labels, strict=True):
          lines.append(f"{index}\t{_label_text(value)}\t{_label_text(gold)}")
        write_lines(os.path.join(output_dir, f"{task.glue_name}_{split}_predictions.tsv"), lines)
      return glue_metrics.glue_metrics(task.name, labels, logits)

    return EvalSet(split, _model_inputs(features), finish)

  def _label_text(value) -> str:
    if task.is_regression:
      return f"{float(value):.3f}"
    return task.labels[int(value)]

  def test_set(config: ConfigDict, split: str, tokenizer) -> EvalSet:
    features = _features(config, task, split, tokenizer)

    def finish(outputs: Mapping[str, np.ndarray], output_dir: str | None) -> dict[str, float]:
      if output_dir is not None:
        glue.write_glue_submission(output_dir, task, split, features.example_ids, outputs["logits"])
      return {}

    return EvalSet(split, _model_inputs(features), finish, labelled=False)

  def eval_sets(config: ConfigDict, tokenizer) -> list[EvalSet]:
    sets = [labelled_set(config, split, tokenizer) for split in _eval_splits(task)]
    if config.data.predict_test:
      sets += [test_set(config, split, tokenizer) for split in _test_splits(task)]
    return sets

  def make_loss(model_config):
    def loss_fn(outputs, batch):
      labels = batch["labels"]
      loss = losses.sequence_classification_loss(
        outputs.logits, labels, model_config, batch.get("weights")
      )
      if task.is_regression:
        return loss, {}
      mask = example_mask(batch, labels.shape)
      return loss, {"accuracy": masked_accuracy(jnp.argmax(outputs.logits, -1), labels, mask)}

    return loss_fn

  def eval_outputs(outputs, batch):
    del batch
    return {"logits": outputs.logits}

  return Task(
    name=f"glue/{task.name}",
    family="glue",
    model_class=MobileBertForSequenceClassification,
    main_metric="score",
    model_overrides=model_overrides,
    train_features=train_features,
    eval_sets=eval_sets,
    make_loss=make_loss,
    eval_outputs=eval_outputs,
  )


def _model_inputs(features: glue.GlueFeatures) -> dict[str, np.ndarray]:
  return {k: v for k, v in features.arrays.items() if k != "labels"}


TASKS = {f"glue/{name}": _make_task(name) for name in TRAINABLE}
