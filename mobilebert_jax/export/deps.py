"""The optional packages of export (TensorFlow, LiteRT) and the error a user can act on.

TensorFlow and ai-edge-litert are large and only needed here, so they live in the `export`
extra and are imported on first use: a missing one fails with a message that names the extra
instead of an `ImportError` deep inside a conversion.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

from mobilebert_jax.train import summaries

EXPORT_EXTRA_HINT = 'pip install "mobilebert-jax[export]"'


class ExportError(ValueError):
  """A request that cannot be exported as asked (the message says why and what to change)."""


def import_tensorflow(purpose: str) -> Any:
  """Imports TensorFlow for `purpose`, or raises an ImportError naming the `export` extra."""
  # TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) would bury our messages;
  # an explicit setting of the caller wins.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ImportError(
      f"{purpose} needs TensorFlow, which is not installed (or failed to import: {e}). "
      f"Install the extra: {EXPORT_EXTRA_HINT}"
    ) from e
  return tf


def import_litert_interpreter(purpose: str) -> Any:
  """Imports `ai_edge_litert.interpreter`, or raises an ImportError naming the `export` extra."""
  try:
    from ai_edge_litert import interpreter
  except ImportError as e:
    raise ImportError(
      f"{purpose} needs ai-edge-litert (the LiteRT interpreter), which is not installed (or "
      f"failed to import: {e}). Install the extra: {EXPORT_EXTRA_HINT}"
    ) from e
  return interpreter


@contextlib.contextmanager
def quiet_tensorflow() -> Iterator[None]:
  """Silences TensorFlow's routine notices during a conversion; errors still raise.

  The converter calibrates full-integer models with `tf.lite.Interpreter`, whose constructor
  warns that it is deprecated in favour of LiteRT (our own runs use LiteRT); reloading a
  SavedModel with custom gradients logs one warning per function (the gradients are there, see
  `saved_model`). Neither is something a user can act on.
  """
  with (
    summaries.quiet_library_logs(("tensorflow",), level=logging.ERROR),
    warnings.catch_warnings(),
  ):
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
    yield
