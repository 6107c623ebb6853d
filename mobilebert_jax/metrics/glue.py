"""The official GLUE metrics, in NumPy.

| task                        | metrics                                   | GLUE task score        |
|-----------------------------|-------------------------------------------|------------------------|
| CoLA                        | Matthews correlation                      | Matthews correlation   |
| SST-2, QNLI, RTE, WNLI      | accuracy                                  | accuracy               |
| MNLI (matched, mismatched)  | accuracy, reported per evaluation set     | accuracy of each set   |
| MRPC, QQP                   | accuracy and F1 of the positive class (1) | mean of the two        |
| STS-B                       | Pearson and Spearman correlation          | mean of the two        |
| AX (diagnostic)             | R3 (Gorodkin's multi-class Matthews corr.) | R3                    |

The GLUE paper scores the diagnostic set with R3, Gorodkin's (2004) generalisation of the
Matthews correlation coefficient to K classes; the leaderboard labels the same number "Matthews
corr". For two classes R3 is the ordinary MCC, and it is what `sklearn.metrics.matthews_corrcoef`
computes for K classes, so one function serves CoLA and AX.

Values are fractions (accuracy 0.84, not 84.0). Correlations of a constant input are undefined and
come back as NaN, as scipy returns them; the Matthews correlation of a constant input is 0, as
scikit-learn defines it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
  "METRIC_FUNCTIONS",
  "TASK_METRICS",
  "accuracy",
  "f1_binary",
  "glue_metrics",
  "matthews_corrcoef",
  "mnli_metrics",
  "pearson",
  "spearman",
]


def _pair(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  if labels.ndim != 1 or labels.shape != predictions.shape:
    raise ValueError(
      f"labels and predictions must be 1-D and of equal length, got shapes {labels.shape} "
      f"and {predictions.shape}"
    )
  if labels.size == 0:
    raise ValueError("cannot score an empty set of predictions")
  return labels, predictions


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Fraction of predictions equal to the labels.

  Args:
    labels: Gold class ids `[N]`.
    predictions: Predicted class ids `[N]`.
  """
  labels, predictions = _pair(labels, predictions)
  return float(np.mean(labels == predictions))


def f1_binary(labels: np.ndarray, predictions: np.ndarray, positive: int = 1) -> float:
  """F1 of the positive class (MRPC: "equivalent", QQP: "duplicate"), 0 when undefined.

  Args:
    labels: Gold class ids `[N]` in {0, 1}.
    predictions: Predicted class ids `[N]` in {0, 1}.
    positive: The class whose precision and recall are combined.
  """
  labels, predictions = _pair(labels, predictions)
  true_pos = np.sum((predictions == positive) & (labels == positive))
  pred_pos = np.sum(predictions == positive)
  gold_pos = np.sum(labels == positive)
  # 2PR/(P+R) simplifies to 2TP/(pred+gold); scikit-learn also returns 0 when that is 0/0.
  denominator = pred_pos + gold_pos
  return float(2.0 * true_pos / denominator) if denominator else 0.0


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Matthews correlation coefficient; for K > 2 classes Gorodkin's R_K (GLUE's R3 for AX).

  Computed from the confusion matrix C as
  `(n·tr(C) − t·p) / sqrt((n² − t·t)(n² − p·p))` with `t`, `p` the per-class gold and predicted
  counts; 0 when either factor under the root is 0.

  Args:
    labels: Gold class ids `[N]`.
    predictions: Predicted class ids `[N]`.
  """
  labels, predictions = _pair(labels, predictions)
  classes, encoded = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
  gold, pred = encoded[: labels.size], encoded[labels.size :]
  confusion = np.zeros((classes.size, classes.size), dtype=np.float64)
  np.add.at(confusion, (gold, pred), 1.0)
  n = float(labels.size)
  gold_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
  covariance = np.trace(confusion) * n - gold_counts @ pred_counts
  gold_var = n * n - gold_counts @ gold_counts
  pred_var = n * n - pred_counts @ pred_counts
  if gold_var * pred_var == 0:
    return 0.0
  return float(covariance / np.sqrt(gold_var * pred_var))


def pearson(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Pearson correlation (float64); NaN if either input is constant.

  Args:
    labels: Gold scores `[N]`.
    predictions: Predicted scores `[N]`.
  """
  labels, predictions = _pair(labels, predictions)
  x = labels.astype(np.float64) - np.mean(labels, dtype=np.float64)
  y = predictions.astype(np.float64) - np.mean(predictions, dtype=np.float64)
  denominator = np.sqrt((x @ x) * (y @ y))
  if denominator == 0:
    return float("nan")
  # Clipped like scipy: rounding can push |r| a hair above 1 for perfectly correlated inputs.
  return float(np.clip((x @ y) / denominator, -1.0, 1.0))


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing the mean of their ranks (scipy's `rankdata(method="average")`)."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start of each run of equal values, and the run each sorted position belongs to.
  is_new = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
  run_id = np.cumsum(is_new) - 1
  run_starts = np.flatnonzero(is_new)
  run_ends = np.concatenate([run_starts[1:], [values.size]])
  run_rank = (run_starts + run_ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(values.size, dtype=np.float64)
  ranks[order] = run_rank[run_id]
  return ranks


def spearman(labels: np.ndarray, predictions: np.ndarray) -> float:
  """Spearman rank correlation: Pearson of average ranks; NaN if either input is constant.

  Args:
    labels: Gold scores `[N]`.
    predictions: Predicted scores `[N]`.
  """
  labels, predictions = _pair(labels, predictions)
  return pearson(_average_ranks(labels), _average_ranks(predictions))


METRIC_FUNCTIONS = {
  "accuracy": accuracy,
  "f1": f1_binary,
  "matthews_corrcoef": matthews_corrcoef,
  "pearson": pearson,
  "spearman": spearman,
}

# Which metrics each task reports; the GLUE task score is their mean.
TASK_METRICS: Mapping[str, tuple[str, ...]] = {
  "cola": ("matthews_corrcoef",),
  "sst2": ("accuracy",),
  "mrpc": ("accuracy", "f1"),
  "qqp": ("accuracy", "f1"),
  "stsb": ("pearson", "spearman"),
  "mnli": ("accuracy",),
  "qnli": ("accuracy",),
  "rte": ("accuracy",),
  "wnli": ("accuracy",),
  "ax": ("matthews_corrcoef",),
}


def glue_metrics(task: str, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
  """The official metrics of one GLUE task and their mean, the task's GLUE score.

  Args:
    task: Registry name (`cola`, `sst2`, `mrpc`, `qqp`, `stsb`, `mnli`, `qnli`, `rte`, `wnli`,
      `ax`).
    labels: Gold class ids `[N]` (float scores `[N]` for `stsb`).
    predictions: Predicted class ids `[N]`, or logits `[N, num_labels]` which are arg-maxed;
      for `stsb` scores `[N]` or `[N, 1]`.

  Returns:
    `{metric: value, ..., "score": mean of the metrics}`; e.g. for MRPC
    `{"accuracy": ..., "f1": ..., "score": (accuracy + f1) / 2}`.
  """
  if task not in TASK_METRICS:
    raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(TASK_METRICS)}")
  predictions = np.asarray(predictions)
  if task == "stsb":
    if predictions.ndim == 2 and predictions.shape[1] == 1:
      predictions = predictions[:, 0]
  elif predictions.ndim == 2:
    predictions = predictions.argmax(axis=-1)
  results = {name: METRIC_FUNCTIONS[name](labels, predictions) for name in TASK_METRICS[task]}
  results["score"] = float(np.mean(list(results.values())))
  return results


def mnli_metrics(
  matched: tuple[np.ndarray, np.ndarray], mismatched: tuple[np.ndarray, np.ndarray]
) -> dict[str, float]:
  """MNLI accuracy on each evaluation set, as GLUE reports it (MNLI-m and MNLI-mm).

  Args:
    matched: `(labels, predictions)` on the matched set (ids, or logits `[N, 3]`).
    mismatched: `(labels, predictions)` on the mismatched set.

  Returns:
    `{"accuracy_matched": ..., "accuracy_mismatched": ...}`.
  """
  return {
    "accuracy_matched": glue_metrics("mnli", *matched)["accuracy"],
    "accuracy_mismatched": glue_metrics("mnli", *mismatched)["accuracy"],
  }
