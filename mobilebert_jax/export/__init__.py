"""Deployment: a trained model to a TF SavedModel, a TFLite file or a StableHLO artifact.

    python -m mobilebert_jax.export SRC OUT_DIR --format=saved_model|tflite|stablehlo \
        [--quantize=none|dynamic|int8] [--seq_len=N] [--model_class=CLASS] \
        [--calibration_steps=N] [--masked_attention_logit=X]

From Python: `export_model` (any format), `export_tflite`, `evaluate_tflite` (the dev metric of
a .tflite file on a workdir's task); `resolve_source` and the runners for finer control.
TensorFlow and ai-edge-litert come with the `export` extra (`pip install
"mobilebert-jax[export]"`); they are imported only when a format needs them.

Modules, one job each: `sources` (what SRC is), `signatures` (input/output names), `saved_model`,
`tflite` (+ `calibration`), `stablehlo`, `runners` (running each format), `evaluation`
(errors against JAX, dev metrics), `report` (`export_report.json`), `api`, `cli`. docs/deploying.md
is the user guide.
"""

from mobilebert_jax.export.api import (
  FORMATS,
  INT8_MASKED_ATTENTION_LOGIT,
  QUANTIZATIONS,
  ExportResult,
  evaluate_tflite,
  export_model,
  export_tflite,
)
from mobilebert_jax.export.deps import ExportError
from mobilebert_jax.export.sources import ExportSource, resolve_source

__all__ = [
  "FORMATS",
  "INT8_MASKED_ATTENTION_LOGIT",
  "QUANTIZATIONS",
  "ExportError",
  "ExportResult",
  "ExportSource",
  "evaluate_tflite",
  "export_model",
  "export_tflite",
  "resolve_source",
]
