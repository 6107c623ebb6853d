"""How close an export is to JAX: relative errors on real inputs, and the task's dev metric.

The error of an output is the project's parity metric, max|exported - JAX| / max|JAX| over all
rows compared (docs/testing.md). For a fine-tuning workdir the inputs are the dev set's features
and the metric is the one the trainer reports (`Task.eval_sets`' `finish`: F1/EM for SQuAD,
accuracy/F1/correlation for GLUE, ...), computed from the exported model's outputs exactly as
from the JAX model's. Other sources have no data: the errors are then measured on synthetic
inputs (random tokens, two segments, a padded tail), which the report says.
"""

from __future__ import annotations

import types
from collections.abc import Mapping

import numpy as np

from mobilebert_jax.export.runners import Runner
from mobilebert_jax.export.signatures import MODEL_INPUTS, Signature
from mobilebert_jax.export.sources import ExportSource
from mobilebert_jax.tasks import EvalSet

SYNTHETIC_ROWS = 8


def relative_error(exported: np.ndarray, reference: np.ndarray) -> float:
  """max|exported - reference| / max|reference| (0 when both are 0)."""
  exported = np.asarray(exported, np.float64)
  reference = np.asarray(reference, np.float64)
  scale = float(np.max(np.abs(reference))) if reference.size else 0.0
  gap = float(np.max(np.abs(exported - reference))) if reference.size else 0.0
  return gap / scale if scale > 0 else gap


def relative_errors(
  exported: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]
) -> dict[str, float]:
  """The relative error of every output, and their maximum under "max"."""
  errors = {name: relative_error(exported[name], reference[name]) for name in reference}
  errors["max"] = max(errors.values())
  return errors


def with_seq_len(source: ExportSource, seq_len: int):
  """The workdir's run config with `data.max_seq_length = seq_len` (features of that length)."""
  config = source.run_config.copy_and_resolve_references()
  with config.unlocked():
    config.data.max_seq_length = seq_len
  return config


def dev_set(source: ExportSource, seq_len: int) -> EvalSet:
  """The first labelled eval set of a workdir's task, featurised at `seq_len` tokens.

  Raises:
    ValueError: the source is not a fine-tuning workdir, or its task has no labelled eval set.
  """
  if source.task is None:
    raise ValueError(f"{source.description} is not a fine-tuning workdir: no dev set to score")
  eval_sets = source.task.eval_sets(with_seq_len(source, seq_len), source.tokenizer)
  for eval_set in eval_sets:
    if eval_set.labelled:
      return eval_set
  raise ValueError(f"{source.task.name} has no labelled eval set")


def signature_inputs(signature: Signature, eval_set: EvalSet) -> dict[str, np.ndarray]:
  """An eval set's model inputs keyed by the signature's names, int32."""
  return {
    name: np.asarray(eval_set.inputs[key], np.int32)
    for key, name in zip(MODEL_INPUTS, signature.inputs, strict=True)
  }


def synthetic_inputs(
  signature: Signature, seq_len: int, vocab_size: int, rows: int = SYNTHETIC_ROWS, seed: int = 0
) -> dict[str, np.ndarray]:
  """Random token ids with two segments and a padded tail of varying length per row."""
  rng = np.random.default_rng(seed)
  shape = signature.input_shape(rows, seq_len)
  ids = rng.integers(1, vocab_size, size=shape, dtype=np.int32)
  position = np.arange(seq_len)
  lengths = rng.integers(max(2, seq_len // 2), seq_len + 1, size=shape[:-1])
  mask = (position < lengths[..., None]).astype(np.int32)
  segments = ((position >= lengths[..., None] // 2) & (mask > 0)).astype(np.int32)
  return dict(zip(signature.inputs, (ids * mask, mask, segments), strict=True))


def task_metrics(
  source: ExportSource,
  signature: Signature,
  eval_set: EvalSet,
  outputs: Mapping[str, np.ndarray],
  output_dir: str | None = None,
) -> dict[str, float]:
  """The task's dev metrics of `outputs` (by the signature's output names).

  With `output_dir`, the task also writes its prediction files there (e.g. SQuAD's
  `predictions.json`), as the trainer's evaluation does.
  """
  # The task picks what it scores from the model's output dataclass by attribute.
  model_outputs = types.SimpleNamespace(**{k: np.asarray(v) for k, v in outputs.items()})
  selected = source.task.eval_outputs(model_outputs, dict(eval_set.inputs))
  metrics = eval_set.finish({k: np.asarray(v) for k, v in selected.items()}, output_dir)
  return {k: float(v) for k, v in metrics.items()}


def evaluate(
  runner: Runner, source: ExportSource, signature: Signature, seq_len: int
) -> dict[str, float]:
  """The task's dev metrics of the model behind `runner` (e.g. a .tflite file)."""
  eval_set = dev_set(source, seq_len)
  outputs = runner(signature_inputs(signature, eval_set))
  return task_metrics(source, signature, eval_set, outputs)
