"""SWAG multiple choice: the reader for the CSV files of rowanz/swagaf and featurisation.

Data: `train.csv`, `val.csv`, `test.csv` from https://github.com/rowanz/swagaf/tree/master/data
(the "regular" format). They are real CSV files (commas, double-quoted fields) with the header
`,video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label`;
the first, unnamed column is a row index, and `test.csv` has no `label` column.

Each example is a context `sent1`, the start of the next sentence `sent2` and four possible
endings; `label` (0-3) names the true ending. As in the reference fine-tuning scripts (BERT's SWAG
example and transformers' `run_swag.py`), choice i is the pair
`[CLS] sent1 [SEP] sent2 + " " + ending_i [SEP]`, truncated longest-first, giving features of shape
`[N, 4, L]`. The metric is accuracy of the arg-max choice.

Bad input (missing header columns, a wrong field count, a label outside 0-3, an empty context or
ending) raises `SwagFormatError` naming the file and line. An empty `sent2` is allowed: it is only
the prefix of the endings.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mobilebert_jax.data.text_features import FeaturizationReport, PairFeaturizer, Tokenizer
from mobilebert_jax.metrics.glue import accuracy

__all__ = [
  "NUM_CHOICES",
  "SwagExamples",
  "SwagFeatures",
  "SwagFormatError",
  "featurize_swag",
  "read_swag_csv",
  "swag_accuracy",
]

logger = logging.getLogger(__name__)

NUM_CHOICES = 4
_ENDINGS = tuple(f"ending{i}" for i in range(NUM_CHOICES))
_REQUIRED = ("video-id", "fold-ind", "sent1", "sent2", *_ENDINGS)


class SwagFormatError(ValueError):
  """A SWAG CSV file that does not have the expected shape or values."""


@dataclasses.dataclass
class SwagExamples:
  """Examples of one SWAG file.

  Attributes:
    contexts: `sent1` of each example, N of them.
    starts: `sent2`, the shared start of the endings.
    endings: The four endings of each example.
    labels: int32 `[N]` index of the true ending, None for the test file.
    example_ids: int64 `[N]`: the unnamed index column, or the row's ordinal if absent.
    video_ids: `video-id` of each example.
    fold_inds: `fold-ind` of each example.
    source: The file read.
  """

  contexts: list[str]
  starts: list[str]
  endings: list[tuple[str, ...]]
  labels: np.ndarray | None
  example_ids: np.ndarray
  video_ids: list[str]
  fold_inds: list[str]
  source: str

  def __len__(self) -> int:
    return len(self.contexts)


@dataclasses.dataclass(frozen=True)
class SwagFeatures:
  """Model inputs for multiple choice.

  Attributes:
    arrays: `input_ids`, `attention_mask`, `token_type_ids` int32 `[N, 4, L]` and, for labelled
      files, `labels` int32 `[N]`.
    example_ids: int64 `[N]` (host-side metadata).
    report: Truncation counts over the N x 4 pairs.
  """

  arrays: dict[str, np.ndarray]
  example_ids: np.ndarray
  report: FeaturizationReport


def read_swag_csv(path: str | os.PathLike) -> SwagExamples:
  """Reads `train.csv`, `val.csv` or `test.csv` of SWAG's regular format.

  Args:
    path: The CSV file.

  Returns:
    The examples; `labels` is None when the file has no `label` column (the test file).

  Raises:
    SwagFormatError: Naming the file and line.
  """
  path = Path(path)
  try:
    return _read_swag_csv(path)
  except (csv.Error, UnicodeDecodeError) as error:
    raise SwagFormatError(f"{path}: not a readable CSV file ({error})") from None


def _read_swag_csv(path: Path) -> SwagExamples:
  contexts, starts, endings, labels, ids, video_ids, fold_inds = [], [], [], [], [], [], []
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise SwagFormatError(f"{path}: empty file")
    missing = [name for name in _REQUIRED if name not in header]
    if missing:
      raise SwagFormatError(f"{path}:1: header {header} lacks column(s) {missing}")
    column = {name: header.index(name) for name in header if name}
    label_idx = column.get("label")
    # The unnamed first column of the official files is the row index.
    id_idx = 0 if header[0] == "" else None
    line = reader.line_num + 1  # First physical line of the next record (fields may span lines).
    for ordinal, row in enumerate(reader):
      where = f"{path}:{line}"
      line = reader.line_num + 1
      if len(row) != len(header):
        raise SwagFormatError(f"{where}: expected {len(header)} fields, found {len(row)}")
      context, start = row[column["sent1"]], row[column["sent2"]]
      choices = tuple(row[column[name]] for name in _ENDINGS)
      texts = {"sent1": context, **dict(zip(_ENDINGS, choices, strict=True))}
      empty = [name for name, text in texts.items() if not text.strip()]
      if empty:
        raise SwagFormatError(f"{where}: empty {', '.join(empty)}")
      if label_idx is not None:
        value = row[label_idx]
        if value not in {str(i) for i in range(NUM_CHOICES)}:
          raise SwagFormatError(f"{where}: label {value!r} is not one of 0, 1, 2, 3")
        labels.append(int(value))
      if id_idx is None:
        ids.append(ordinal)
      else:
        try:
          ids.append(int(row[id_idx]))
        except ValueError:
          raise SwagFormatError(f"{where}: index {row[id_idx]!r} is not an integer") from None
      contexts.append(context)
      starts.append(start)
      endings.append(choices)
      video_ids.append(row[column["video-id"]])
      fold_inds.append(row[column["fold-ind"]])
  if not contexts:
    raise SwagFormatError(f"{path}: no examples")
  return SwagExamples(
    contexts=contexts,
    starts=starts,
    endings=endings,
    labels=None if label_idx is None else np.asarray(labels, dtype=np.int32),
    example_ids=np.asarray(ids, dtype=np.int64),
    video_ids=video_ids,
    fold_inds=fold_inds,
    source=str(path),
  )


def featurize_swag(
  examples: SwagExamples, tokenizer: Tokenizer, max_seq_length: int = 128
) -> SwagFeatures:
  """Packs each choice as `[CLS] sent1 [SEP] sent2 + " " + ending [SEP]` (longest-first).

  Args:
    examples: Output of `read_swag_csv`.
    tokenizer: WordPiece tokenizer (see `mobilebert_jax.data.text_features.Tokenizer`).
    max_seq_length: Length L of each choice's row.

  Returns:
    `SwagFeatures` with int32 `[N, 4, L]` inputs.
  """
  first, second = [], []
  for context, start, choices in zip(
    examples.contexts, examples.starts, examples.endings, strict=True
  ):
    for ending in choices:
      first.append(context)
      second.append(f"{start} {ending}")
  arrays, report = PairFeaturizer(tokenizer, max_seq_length).featurize(first, second)
  n = len(examples)
  arrays = {name: value.reshape(n, NUM_CHOICES, max_seq_length) for name, value in arrays.items()}
  if examples.labels is not None:
    arrays["labels"] = examples.labels.copy()
  if report.num_truncated:
    logger.info("%s: %s", examples.source, report.summary())
  return SwagFeatures(arrays, examples.example_ids.copy(), report)


def swag_accuracy(labels: Sequence[int] | np.ndarray, logits: np.ndarray) -> float:
  """Accuracy of the arg-max choice.

  Args:
    labels: True choice per example `[N]`.
    logits: Choice scores `[N, 4]`, or predicted choices `[N]`.
  """
  logits = np.asarray(logits)
  predictions = logits.argmax(axis=-1) if logits.ndim == 2 else logits
  return accuracy(np.asarray(labels), predictions)
