"""The representative dataset of a full-integer export: real examples of the task's training data.

As the original (google-research `run_squad.py --activation_quantization`), the converter calibrates
activation ranges on the first `steps` training features (100 by default), one [1, T] example
per step, featurised with the run's own tokenizer and settings at the exported length.
"""

from __future__ import annotations

import logging

import numpy as np

from mobilebert_jax.export.deps import ExportError
from mobilebert_jax.export.evaluation import with_seq_len
from mobilebert_jax.export.signatures import MODEL_INPUTS, Signature
from mobilebert_jax.export.sources import ExportSource

DEFAULT_STEPS = 100


def representative_inputs(
  source: ExportSource, signature: Signature, seq_len: int, steps: int = DEFAULT_STEPS
) -> list[dict[str, np.ndarray]]:
  """The first `steps` training features of a workdir's task, as single-row signature inputs.

  Raises:
    ExportError: the source has no task (not a fine-tuning workdir), or `steps` < 1.
  """
  if steps < 1:
    raise ExportError(f"--calibration_steps must be at least 1, got {steps}")
  if source.task is None:
    raise ExportError(
      "--quantize=int8 calibrates on the task's training data, so SRC must be a fine-tuning "
      f"workdir; {source.description} has none (from Python, pass representative_inputs)"
    )
  features = source.task.train_features(with_seq_len(source, seq_len), source.tokenizer)
  available = len(features["input_ids"])
  if available < steps:
    logging.warning("calibrating on all %d training features (fewer than %d)", available, steps)
  return [
    {
      name: np.asarray(features[key][i : i + 1], np.int32)
      for key, name in zip(MODEL_INPUTS, signature.inputs, strict=True)
    }
    for i in range(min(steps, available))
  ]
