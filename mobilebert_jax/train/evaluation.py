"""Running a jitted eval step over whole splits, and the metrics of a task's eval sets.

Every eval batch has the same shape: the last one is padded with zero rows whose `weights` are 0
(`data.batching.BatchIterator(drop_remainder=False)`), so the eval step compiles once per split
shape and no example is dropped. Each row also carries its position in the split (`index`), and
the outputs are put back in split order by it: on several hosts the rows of a global batch need
not come back in process order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding

from mobilebert_jax.data.batching import WEIGHTS_KEY, BatchIterator
from mobilebert_jax.tasks import EvalSet
from mobilebert_jax.train import distributed
from mobilebert_jax.train.steps import MODEL_INPUT_KEYS

INDEX_KEY = "index"

PyTree = Any
EvalFn = Callable[[PyTree, Mapping[str, jax.Array]], Mapping[str, jax.Array]]


def with_bookkeeping(
  eval_outputs: Callable[[Any, Mapping[str, jax.Array]], Mapping[str, jax.Array]],
) -> Callable[[Any, Mapping[str, jax.Array]], dict[str, jax.Array]]:
  """Wraps a task's `eval_outputs` so that rows come back with their `index` and `weights`."""

  def outputs_fn(outputs: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    selected = dict(eval_outputs(outputs, batch))
    selected[INDEX_KEY] = batch[INDEX_KEY]
    selected[WEIGHTS_KEY] = batch[WEIGHTS_KEY]
    return selected

  return outputs_fn


def predict(
  eval_fn: EvalFn,
  params: PyTree,
  inputs: Mapping[str, np.ndarray],
  *,
  global_batch_size: int,
  batch_sharding: NamedSharding,
) -> dict[str, np.ndarray]:
  """Runs `eval_fn` over every row of `inputs` and returns its outputs in row order.

  Args:
    eval_fn: the jitted eval step, returning replicated outputs that include `index` and
      `weights` (see `with_bookkeeping`).
    params: the (sharded) parameters.
    inputs: the split's model inputs, each [N, ...]; keys outside `MODEL_INPUT_KEYS` are not
      sent to the devices.
    global_batch_size: rows per eval step, a multiple of the device count.
    batch_sharding: the sharding of batch arrays.

  Returns:
    Each output of the task's `eval_outputs` as a host array [N, ...].
  """
  features = {k: np.asarray(v) for k, v in inputs.items() if k in MODEL_INPUT_KEYS}
  num_rows = next(iter(features.values())).shape[0]
  features[INDEX_KEY] = np.arange(num_rows, dtype=np.int32)
  batches = BatchIterator(
    features, global_batch_size, shuffle=False, num_epochs=1, drop_remainder=False
  )
  collected: dict[str, np.ndarray] = {}
  seen = np.zeros(num_rows, dtype=bool)
  for local_batch in batches:
    batch = distributed.global_batch_from_local(local_batch, batch_sharding)
    outputs = jax.device_get(eval_fn(params, batch))
    real = np.asarray(outputs.pop(WEIGHTS_KEY)) > 0
    rows = np.asarray(outputs.pop(INDEX_KEY))[real]
    for name, value in outputs.items():
      value = np.asarray(value)
      if name not in collected:
        collected[name] = np.zeros((num_rows, *value.shape[1:]), dtype=value.dtype)
      collected[name][rows] = value[real]
    seen[rows] = True
  if not seen.all():
    raise RuntimeError(f"evaluation missed {int((~seen).sum())} of {num_rows} rows")
  return collected


def evaluate(
  eval_fn: EvalFn,
  params: PyTree,
  eval_sets: list[EvalSet],
  *,
  global_batch_size: int,
  batch_sharding: NamedSharding,
  output_dir: str | None = None,
) -> dict[str, float]:
  """Predicts every eval set and collects its metrics.

  The first set's metrics keep their names (e.g. `f1`); those of the others are prefixed with
  the set's name (`validation_mismatched/accuracy`). Prediction files are written by process 0
  only, into `output_dir` when it is given.

  Returns:
    All metrics as Python floats.
  """
  metrics: dict[str, float] = {}
  write_dir = output_dir if jax.process_index() == 0 else None
  for position, eval_set in enumerate(eval_sets):
    start = time.time()
    outputs = predict(
      eval_fn,
      params,
      eval_set.inputs,
      global_batch_size=global_batch_size,
      batch_sharding=batch_sharding,
    )
    results = eval_set.finish(outputs, write_dir)
    prefix = "" if position == 0 else f"{eval_set.name}/"
    metrics.update({f"{prefix}{k}": float(v) for k, v in results.items()})
    logging.info(
      "eval %s: %d rows in %.1fs%s",
      eval_set.name,
      len(eval_set),
      time.time() - start,
      "".join(f", {k}={float(v):.4g}" for k, v in results.items() if np.ndim(v) == 0),
    )
  return metrics


def sum_over_batches(
  eval_fn: EvalFn,
  params: PyTree,
  features: Mapping[str, np.ndarray],
  *,
  global_batch_size: int,
  batch_sharding: NamedSharding,
) -> dict[str, float]:
  """Runs `eval_fn` over every row of `features` and adds up what it returns per batch.

  For metrics that are ratios of sums over a whole split (a loss per masked token, an accuracy):
  `eval_fn` returns scalar sums over its batch, counting each row by the batch's `weights` (0
  for the zero rows that pad the last batch), and the totals are added in float64 on the host.

  Args:
    eval_fn: the jitted eval step, `(params, batch) -> {name: replicated scalar}`.
    params: the (sharded) parameters.
    features: the split's arrays, each [N, ...] (all of them are sent to the devices).
    global_batch_size: rows per eval step, a multiple of the device count.
    batch_sharding: the sharding of batch arrays.

  Returns:
    name -> the total over the split.
  """
  batches = BatchIterator(
    features, global_batch_size, shuffle=False, num_epochs=1, drop_remainder=False
  )
  totals: dict[str, float] = {}
  for local_batch in batches:
    sums = jax.device_get(
      eval_fn(params, distributed.global_batch_from_local(local_batch, batch_sharding))
    )
    for name, value in sums.items():
      totals[name] = totals.get(name, 0.0) + float(np.asarray(value, np.float64))
  return totals
