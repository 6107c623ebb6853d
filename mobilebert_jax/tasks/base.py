"""What the trainer needs to know about a fine-tuning task: `Task` and `EvalSet`.

A task is a bundle of small functions rather than a class hierarchy: the trainer is the same for
every task and calls these at fixed points (see `mobilebert_jax.trainers.finetuning`):

* `model_class` and `model_overrides(config)` build the model (`num_labels`, label names, ...);
* `train_features(config, tokenizer)` turns the configured training data into fixed-shape arrays;
* `eval_sets(config, tokenizer)` gives the evaluation (and prediction) splits, each with its
  own `finish` that decodes the model's outputs, scores them and writes prediction files;
* `make_loss(model_config)` returns `loss_fn(model_outputs, batch) -> (loss, aux metrics)`;
* `eval_outputs(model_outputs, batch)` picks what leaves the device during evaluation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mobilebert_jax import atomic_files
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train.steps import LossFn

Array = jax.Array
ConfigDict = ml_collections.ConfigDict
# `finish(outputs, output_dir)`: outputs are host arrays in feature order; `output_dir` is where
# prediction files go (None: score only, as during training). Returns scalar metrics.
FinishFn = Callable[[Mapping[str, np.ndarray], str | None], dict[str, float]]


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """One split to run the model over after (and during) training.

  Attributes:
    name: split name, e.g. "validation", "validation_mismatched", "test".
    inputs: the model's input arrays, each [N, ...] (labels stay on the host, in `finish`).
    finish: decodes, scores and (given a directory) writes predictions; see `FinishFn`.
    labelled: whether `finish` returns metrics (False for test splits that only predict).
  """

  name: str
  inputs: Mapping[str, np.ndarray]
  finish: FinishFn
  labelled: bool = True

  def __len__(self) -> int:
    return int(next(iter(self.inputs.values())).shape[0])


@dataclasses.dataclass(frozen=True)
class Task:
  """A fine-tuning task, as small functions the trainer calls (see the module docstring).

  Attributes:
    name: canonical name, e.g. "squad", "squad_v2", "glue/mnli", "conll2003", "swag".
    family: the config file that holds its recipe ("squad", "glue", "conll2003", "swag").
    model_class: one of the MobileBERT model classes.
    main_metric: the metric that ranks checkpoints (a key of the primary eval set's metrics).
    model_overrides: config -> `MobileBertConfig` fields the task fixes (e.g. `num_labels`).
    train_features: (config, tokenizer) -> training arrays [N, ...] with their labels.
    eval_sets: (config, tokenizer) -> evaluation and prediction splits; the first is primary.
    make_loss: model config -> `loss_fn(model_outputs, batch) -> (loss, aux)`.
    eval_outputs: (model_outputs, batch) -> the arrays evaluation brings back to the host.
  """

  name: str
  family: str
  model_class: type[nn.Module]
  main_metric: str
  model_overrides: Callable[[ConfigDict], dict[str, Any]]
  train_features: Callable[[ConfigDict, Any], dict[str, np.ndarray]]
  eval_sets: Callable[[ConfigDict, Any], list[EvalSet]]
  make_loss: Callable[[MobileBertConfig], LossFn]
  eval_outputs: Callable[[Any, Mapping[str, Array]], dict[str, Array]]


# ----------------------------------------------------------------------------------------------
# Helpers shared by the task modules
# ----------------------------------------------------------------------------------------------


def weights_of(batch: Mapping[str, Array]) -> Array | None:
  """The per-example weights of a padded batch (None for full training batches)."""
  return batch.get("weights")


def masked_accuracy(predictions: Array, labels: Array, mask: Array) -> Array:
  """Fraction of `mask`ed entries where `predictions == labels` (0 when nothing is masked)."""
  mask = mask.astype(jnp.float32)
  hits = (predictions == labels).astype(jnp.float32) * mask
  return jnp.sum(hits) / jnp.maximum(jnp.sum(mask), 1.0)


def example_mask(batch: Mapping[str, Array], shape: Sequence[int]) -> Array:
  """Ones for the real examples of a batch, broadcast to `shape` ([B] or [B, ...])."""
  weights = weights_of(batch)
  ones = jnp.ones(shape[:1], jnp.float32) if weights is None else weights.astype(jnp.float32)
  return jnp.broadcast_to(ones.reshape(ones.shape + (1,) * (len(shape) - 1)), shape)


def data_file(config: ConfigDict, field: str, default_names: Sequence[str], what: str) -> str:
  """Resolves one input file from `config.data.<field>` or `config.data.data_dir`.

  Args:
    config: the run config.
    field: the `config.data` field naming the file explicitly, e.g. "train_file".
    default_names: file names looked for in `config.data.data_dir`, first match wins.
    what: what the file holds, for messages ("SQuAD v1.1 training data").

  Returns:
    The path of an existing file.

  Raises:
    FileNotFoundError: naming the config fields to set, or the file that does not exist.
  """
  data = config.data
  explicit = data.get(field)
  if explicit:
    if not os.path.isfile(explicit):
      raise FileNotFoundError(f"{what}: --config.data.{field}={explicit} does not exist")
    return explicit
  if not data.get("data_dir"):
    raise FileNotFoundError(
      f"{what}: no data given; set --config.data.data_dir=DIR (holding "
      f"{' or '.join(default_names)}), --config.data.{field}=FILE, or "
      "--config.data.source=tfds"
    )
  for name in default_names:
    path = os.path.join(data.data_dir, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(
    f"{what}: none of {list(default_names)} in --config.data.data_dir={data.data_dir}; "
    f"set --config.data.{field}=FILE to name the file"
  )


def tfds_kwargs(config: ConfigDict) -> dict[str, Any]:
  """Keyword arguments of the TFDS readers from `config.data`."""
  return {"data_dir": config.data.get("tfds_data_dir"), "download": config.data.tfds_download}


def check_source(config: ConfigDict, allowed: Sequence[str]) -> str:
  """`config.data.source`, or a ValueError naming the sources this task reads."""
  source = config.data.source
  if source not in allowed:
    raise ValueError(
      f"--config.data.source={source!r} is not supported for {config.task}; use one of "
      f"{list(allowed)}"
    )
  return source


def write_lines(path: str, lines: Sequence[str]) -> None:
  """Writes text lines atomically (see `mobilebert_jax.atomic_files`)."""
  atomic_files.write_lines(path, lines)
