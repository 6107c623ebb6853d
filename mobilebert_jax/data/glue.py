"""GLUE: the task registry, readers for the official TSV files and for TFDS, featurisation and
the submission writer.

Data sources:
  * The TSV files as the GLUE benchmark distributes them (`glue_data/<Task>/*.tsv`, e.g. from
    `download_glue_data.py` or https://dl.fbaipublicfiles.com/glue/data/<Task>.zip), read with
    quoting disabled exactly like the reference processors: a field ends at the next tab, quote
    characters are text.
  * TensorFlow Datasets `glue/<config>` (needs the `mobilebert-jax[tf]` extra).

Split names are TFDS's: `train`, `validation`, `test`; MNLI has `validation_matched`,
`validation_mismatched`, `test_matched`, `test_mismatched`; AX has `test` (the unlabelled
`AX.tsv`/`diagnostic.tsv`) and, from TSV only, `diagnostic_full` (`diagnostic-full.tsv`, which
carries gold labels and the linguistic categories).

Label order: each task's `labels` are the label strings in the order of the reference processors'
`get_labels()` (google-research/bert `run_classifier.py`, which MobileBERT's own fine-tuning
code copies, and transformers' GLUE processors): `["0", "1"]` for the binary tasks,
`["entailment", "not_entailment"]` for QNLI and RTE, `["contradiction", "entailment", "neutral"]`
for MNLI and AX. Label id i is `labels[i]`; these strings are also what the GLUE server expects in
a submission. TFDS numbers its classes differently for MNLI/AX (entailment, neutral,
contradiction); the TFDS reader maps TFDS ids to ours by name, so both sources give identical ids.
For the binary tasks TFDS's class i is the TSV label "i", so ids coincide. STS-B is a regression
task with float scores in [0, 5].

Bad input: a wrong column count, an unknown label, a non-numeric or out-of-range STS-B score, a
missing header column or an empty text raises `GlueFormatError` naming the file and line. Two
exceptions follow the reference pipelines: QQP's train/dev files contain rows broken by stray
newlines, which the reference processors drop; we drop them too, count them and report their lines
(`GlueExamples.report`). QQP's train set also holds two pairs with an empty question, which every
reference pipeline keeps; QQP therefore keeps empty texts by default (counted), other tasks reject
them unless `empty_text="keep"` or `"skip"` is passed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mobilebert_jax import atomic_files
from mobilebert_jax.data.text_features import FeaturizationReport, PairFeaturizer, Tokenizer
from mobilebert_jax.metrics.glue import TASK_METRICS

__all__ = [
  "GLUE_TASKS",
  "GlueExamples",
  "GlueFeatures",
  "GlueFormatError",
  "GlueSplit",
  "GlueTask",
  "ReadReport",
  "TsvLayout",
  "featurize_glue",
  "get_task",
  "load_glue_tfds",
  "load_glue_tsv",
  "read_glue_tsv",
  "submission_filename",
  "write_glue_submission",
]

logger = logging.getLogger(__name__)

EmptyTextPolicy = Literal["error", "keep", "skip"]
_EMPTY_TEXT_POLICIES = ("error", "keep", "skip")
_STSB_RANGE = (0.0, 5.0)


class GlueFormatError(ValueError):
  """A GLUE file (or TFDS record) that does not have the expected shape or values."""


@dataclasses.dataclass(frozen=True)
class TsvLayout:
  """Where the fields are in one kind of GLUE TSV file.

  Attributes:
    text_columns: Header names of the text columns (positions for header-less files).
    label_column: Header name (position) of the label, None for unlabelled files.
    id_column: Header name of the example index, None where the file has none (the row's
      ordinal among data rows is used instead).
    header: Whether the first line is a header (CoLA's train/dev files have none).
    num_columns: Column count of header-less files; files with a header must match it.
  """

  text_columns: tuple[str, ...] | tuple[int, ...]
  label_column: str | int | None = None
  id_column: str | None = None
  header: bool = True
  num_columns: int | None = None


@dataclasses.dataclass(frozen=True)
class GlueSplit:
  """One split of a task.

  Attributes:
    name: Split name (TFDS's where TFDS has the split).
    filenames: TSV names to look for in the task directory, first match wins.
    layout: Column layout of that file.
    labelled: Whether gold labels are public.
    tfds: `(tfds_config, tfds_split)`, None where TFDS lacks the split.
    submission_file: Name of the GLUE server's prediction file (test splits only).
  """

  name: str
  filenames: tuple[str, ...]
  layout: TsvLayout
  labelled: bool
  tfds: tuple[str, str] | None
  submission_file: str | None = None


@dataclasses.dataclass(frozen=True)
class GlueTask:
  """Everything task-specific.

  Attributes:
    name: Registry name (`cola`, `sst2`, ...; TFDS config names).
    glue_name: GLUE's spelling, which is also the data directory name (`CoLA`, `SST-2`, ...).
    text_features: TFDS feature names of the one or two texts.
    labels: Label strings in id order (see the module docstring), None for regression (STS-B).
    label_names: Readable names in id order (TFDS's names for the binary tasks).
    tfds_labels: For each TFDS class id, our label string (maps TFDS ids to ours).
    splits: The task's splits by name.
    metrics: Names of the official metrics (`mobilebert_jax.metrics.glue`).
    empty_text: What to do by default with an empty text: "error", "keep" (counted) or "skip".
    drop_malformed_rows: Drop (and count) labelled rows with a wrong column count instead of
      failing, as the reference processors do for QQP.
  """

  name: str
  glue_name: str
  text_features: tuple[str, ...]
  labels: tuple[str, ...] | None
  label_names: tuple[str, ...] | None
  tfds_labels: tuple[str, ...] | None
  splits: Mapping[str, GlueSplit]
  metrics: tuple[str, ...]
  empty_text: EmptyTextPolicy = "error"
  drop_malformed_rows: bool = False

  @property
  def is_regression(self) -> bool:
    return self.labels is None

  @property
  def num_labels(self) -> int:
    """Classifier outputs: 1 for STS-B's regression."""
    return 1 if self.labels is None else len(self.labels)

  @property
  def is_pair(self) -> bool:
    return len(self.text_features) == 2

  def split(self, name: str) -> GlueSplit:
    """The split called `name`, or a ValueError listing the task's splits."""
    if name not in self.splits:
      raise ValueError(
        f"{self.glue_name} has no split {name!r}; expected one of {list(self.splits)}"
      )
    return self.splits[name]


def _standard_splits(
  config: str,
  labelled: TsvLayout,
  test: TsvLayout,
  submission_file: str,
) -> dict[str, GlueSplit]:
  return {
    "train": GlueSplit("train", ("train.tsv",), labelled, True, (config, "train")),
    "validation": GlueSplit("validation", ("dev.tsv",), labelled, True, (config, "validation")),
    "test": GlueSplit("test", ("test.tsv",), test, False, (config, "test"), submission_file),
  }


def _pair_layouts(
  texts: tuple[str, str], label: str, id_column: str | None = "index"
) -> tuple[TsvLayout, TsvLayout]:
  return TsvLayout(texts, label, id_column), TsvLayout(texts, None, id_column)


_MNLI_LABELS = ("contradiction", "entailment", "neutral")
_MNLI_TFDS_LABELS = ("entailment", "neutral", "contradiction")
_NLI2_LABELS = ("entailment", "not_entailment")


def _build_registry() -> dict[str, GlueTask]:
  binary = ("0", "1")
  # CoLA train/dev: no header; columns source, label, original annotation ("*" or ""), sentence.
  cola = GlueTask(
    name="cola",
    glue_name="CoLA",
    text_features=("sentence",),
    labels=binary,
    label_names=("unacceptable", "acceptable"),
    tfds_labels=binary,
    splits=_standard_splits(
      "cola",
      TsvLayout((3,), 1, None, header=False, num_columns=4),
      TsvLayout(("sentence",), None, "index"),
      "CoLA.tsv",
    ),
    metrics=TASK_METRICS["cola"],
  )
  sst2 = GlueTask(
    name="sst2",
    glue_name="SST-2",
    text_features=("sentence",),
    labels=binary,
    label_names=("negative", "positive"),
    tfds_labels=binary,
    splits=_standard_splits(
      "sst2",
      TsvLayout(("sentence",), "label", None),
      TsvLayout(("sentence",), None, "index"),
      "SST-2.tsv",
    ),
    metrics=TASK_METRICS["sst2"],
  )
  # MRPC train/dev: Quality, #1 ID, #2 ID, #1 String, #2 String; test: index instead of Quality.
  mrpc = GlueTask(
    name="mrpc",
    glue_name="MRPC",
    text_features=("sentence1", "sentence2"),
    labels=binary,
    label_names=("not_equivalent", "equivalent"),
    tfds_labels=binary,
    splits=_standard_splits(
      "mrpc",
      TsvLayout(("#1 String", "#2 String"), "Quality", None),
      TsvLayout(("#1 String", "#2 String"), None, "index"),
      "MRPC.tsv",
    ),
    metrics=TASK_METRICS["mrpc"],
  )
  # QQP train/dev: id, qid1, qid2, question1, question2, is_duplicate; test: id, question1/2.
  qqp = GlueTask(
    name="qqp",
    glue_name="QQP",
    text_features=("question1", "question2"),
    labels=binary,
    label_names=("not_duplicate", "duplicate"),
    tfds_labels=binary,
    splits=_standard_splits(
      "qqp", *_pair_layouts(("question1", "question2"), "is_duplicate", "id"), "QQP.tsv"
    ),
    metrics=TASK_METRICS["qqp"],
    empty_text="keep",
    drop_malformed_rows=True,
  )
  # STS-B: index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score.
  stsb = GlueTask(
    name="stsb",
    glue_name="STS-B",
    text_features=("sentence1", "sentence2"),
    labels=None,
    label_names=None,
    tfds_labels=None,
    splits=_standard_splits(
      "stsb", *_pair_layouts(("sentence1", "sentence2"), "score"), "STS-B.tsv"
    ),
    metrics=TASK_METRICS["stsb"],
  )
  # MNLI: index, promptID, pairID, genre, 4 parse columns, sentence1, sentence2, then label1
  # (train) or label1..label5 (dev) and gold_label; the test files stop after sentence2.
  mnli_labelled, mnli_test = _pair_layouts(("sentence1", "sentence2"), "gold_label")
  mnli = GlueTask(
    name="mnli",
    glue_name="MNLI",
    text_features=("premise", "hypothesis"),
    labels=_MNLI_LABELS,
    label_names=_MNLI_LABELS,
    tfds_labels=_MNLI_TFDS_LABELS,
    splits={
      "train": GlueSplit("train", ("train.tsv",), mnli_labelled, True, ("mnli", "train")),
      "validation_matched": GlueSplit(
        "validation_matched",
        ("dev_matched.tsv",),
        mnli_labelled,
        True,
        ("mnli", "validation_matched"),
      ),
      "validation_mismatched": GlueSplit(
        "validation_mismatched",
        ("dev_mismatched.tsv",),
        mnli_labelled,
        True,
        ("mnli", "validation_mismatched"),
      ),
      "test_matched": GlueSplit(
        "test_matched",
        ("test_matched.tsv",),
        mnli_test,
        False,
        ("mnli", "test_matched"),
        "MNLI-m.tsv",
      ),
      "test_mismatched": GlueSplit(
        "test_mismatched",
        ("test_mismatched.tsv",),
        mnli_test,
        False,
        ("mnli", "test_mismatched"),
        "MNLI-mm.tsv",
      ),
    },
    metrics=TASK_METRICS["mnli"],
  )
  qnli = GlueTask(
    name="qnli",
    glue_name="QNLI",
    text_features=("question", "sentence"),
    labels=_NLI2_LABELS,
    label_names=_NLI2_LABELS,
    tfds_labels=_NLI2_LABELS,
    splits=_standard_splits("qnli", *_pair_layouts(("question", "sentence"), "label"), "QNLI.tsv"),
    metrics=TASK_METRICS["qnli"],
  )
  rte = GlueTask(
    name="rte",
    glue_name="RTE",
    text_features=("sentence1", "sentence2"),
    labels=_NLI2_LABELS,
    label_names=_NLI2_LABELS,
    tfds_labels=_NLI2_LABELS,
    splits=_standard_splits("rte", *_pair_layouts(("sentence1", "sentence2"), "label"), "RTE.tsv"),
    metrics=TASK_METRICS["rte"],
  )
  # WNLI's TSV labels are 0/1 with 1 = entailment (TFDS: not_entailment, entailment).
  wnli = GlueTask(
    name="wnli",
    glue_name="WNLI",
    text_features=("sentence1", "sentence2"),
    labels=binary,
    label_names=("not_entailment", "entailment"),
    tfds_labels=binary,
    splits=_standard_splits(
      "wnli", *_pair_layouts(("sentence1", "sentence2"), "label"), "WNLI.tsv"
    ),
    metrics=TASK_METRICS["wnli"],
  )
  # AX: GLUE's diagnostic set, scored with an MNLI model. AX.tsv (= glue_data/diagnostic/
  # diagnostic.tsv) is index, sentence1, sentence2; diagnostic-full.tsv adds the gold labels:
  # Lexical Semantics, Predicate-Argument Structure, Logic, Knowledge, Domain, Premise,
  # Hypothesis, Label.
  ax = GlueTask(
    name="ax",
    glue_name="AX",
    text_features=("premise", "hypothesis"),
    labels=_MNLI_LABELS,
    label_names=_MNLI_LABELS,
    tfds_labels=_MNLI_TFDS_LABELS,
    splits={
      "test": GlueSplit(
        "test",
        ("AX.tsv", "diagnostic.tsv"),
        TsvLayout(("sentence1", "sentence2"), None, "index"),
        False,
        ("ax", "test"),
        "AX.tsv",
      ),
      "diagnostic_full": GlueSplit(
        "diagnostic_full",
        ("diagnostic-full.tsv",),
        TsvLayout(("Premise", "Hypothesis"), "Label"),
        True,
        None,
      ),
    },
    metrics=TASK_METRICS["ax"],
  )
  tasks = (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli, ax)
  return {task.name: task for task in tasks}


GLUE_TASKS: Mapping[str, GlueTask] = _build_registry()


def get_task(task: str | GlueTask) -> GlueTask:
  """Looks a task up by registry name or GLUE spelling (`"SST-2"`, `"sts-b"`, `"CoLA"`)."""
  if isinstance(task, GlueTask):
    return task
  key = task.lower().replace("-", "").replace("_", "")
  if key not in GLUE_TASKS:
    raise ValueError(f"unknown GLUE task {task!r}; expected one of {sorted(GLUE_TASKS)}")
  return GLUE_TASKS[key]


@dataclasses.dataclass
class ReadReport:
  """What reading a source did besides producing examples.

  Attributes:
    source: The file (or TFDS dataset and split) read.
    rows: Data rows seen (header excluded).
    skipped: `(line, reason)` for every row dropped on purpose (counted skips); for TFDS the
      position is the record's `idx`.
    empty_kept: Lines (TFDS: `idx`) of examples kept although a text is empty.
    unit: What positions count: "line" or "idx".
  """

  source: str
  unit: str = "line"
  rows: int = 0
  skipped: list[tuple[int, str]] = dataclasses.field(default_factory=list)
  empty_kept: list[int] = dataclasses.field(default_factory=list)

  def summary(self) -> str:
    """One line for logs, with the first few skipped lines."""
    text = f"{self.source}: {self.rows} rows, {len(self.skipped)} skipped"
    if self.skipped:
      first = ", ".join(f"{self.unit} {pos} ({reason})" for pos, reason in self.skipped[:5])
      text += f" [{first}{', ...' if len(self.skipped) > 5 else ''}]"
    if self.empty_kept:
      text += f", {len(self.empty_kept)} kept with an empty text"
    return text


@dataclasses.dataclass
class GlueExamples:
  """Examples of one split, before tokenisation.

  Attributes:
    task: The task.
    split: Split name.
    text_a: First texts, N of them.
    text_b: Second texts (N) for pair tasks, else None.
    labels: Label ids int32 `[N]` (float32 scores for STS-B), None when the split is unlabelled.
    example_ids: int64 `[N]`: the file's index/id column (what a submission must quote), TFDS's
      `idx`, or the row's 0-based ordinal among data rows where the file has no index.
    report: Counted skips and kept empty texts.
  """

  task: GlueTask
  split: str
  text_a: list[str]
  text_b: list[str] | None
  labels: np.ndarray | None
  example_ids: np.ndarray
  report: ReadReport

  def __len__(self) -> int:
    return len(self.text_a)


@dataclasses.dataclass(frozen=True)
class GlueFeatures:
  """Model inputs of one split.

  Attributes:
    arrays: `input_ids`, `attention_mask`, `token_type_ids` int32 `[N, L]` and, for labelled
      splits, `labels` int32 `[N]` (float32 for STS-B).
    example_ids: int64 `[N]`, aligned with the rows (host-side metadata).
    report: Truncation counts.
  """

  arrays: dict[str, np.ndarray]
  example_ids: np.ndarray
  report: FeaturizationReport


class _Collector:
  """Accumulates examples while applying the label and empty-text rules."""

  def __init__(
    self, task: GlueTask, split: GlueSplit, source: str, empty_text: str, unit: str = "line"
  ):
    self.task, self.split, self.empty_text = task, split, empty_text
    self.report = ReadReport(source, unit)
    self.texts: list[list[str]] = [[] for _ in task.text_features]
    self.labels: list[int | float] = []
    self.ids: list[int] = []

  def error(self, where: str, message: str) -> GlueFormatError:
    """An error located by `where` (`file:line`, or the TFDS source and idx)."""
    return GlueFormatError(f"{where}: {message}")

  def parse_label(self, value: str, where: str) -> int | float:
    task = self.task
    if task.labels is None:
      try:
        score = float(value)
      except ValueError:
        raise self.error(where, f"STS-B score {value!r} is not a number") from None
      if not math.isfinite(score) or not _STSB_RANGE[0] <= score <= _STSB_RANGE[1]:
        raise self.error(where, f"STS-B score {value!r} is outside [0, 5]")
      return score
    if value not in task.labels:
      raise self.error(
        where, f"unknown {task.glue_name} label {value!r}; expected one of {list(task.labels)}"
      )
    return task.labels.index(value)

  def add(
    self,
    texts: Sequence[str],
    label: int | float | None,
    example_id: int,
    where: str,
    position: int,
  ) -> None:
    """Adds one example unless the empty-text policy drops it.

    Args:
      texts: The example's one or two texts.
      label: Parsed label, None for unlabelled splits.
      example_id: Index reported with the example.
      where: `file:line` or the TFDS source and idx, for messages.
      position: The line number (TFDS: idx) recorded in the report.
    """
    names = self.task.text_features
    empty = [name for name, text in zip(names, texts, strict=True) if not text.strip()]
    if empty:
      if self.empty_text == "error":
        raise self.error(
          where,
          f"empty {' and '.join(empty)}; pass empty_text='keep' to featurise it as the reference "
          "processors do, or empty_text='skip' to drop it",
        )
      if self.empty_text == "skip":
        self.report.skipped.append((position, f"empty {' and '.join(empty)}"))
        return
      self.report.empty_kept.append(position)
    for column, text in zip(self.texts, texts, strict=True):
      column.append(text)
    if label is not None:
      self.labels.append(label)
    self.ids.append(example_id)

  def finish(self, split_name: str) -> GlueExamples:
    task = self.task
    if not self.ids:
      raise GlueFormatError(f"{self.report.source}: no examples")
    labels = None
    if self.split.labelled:
      dtype = np.float32 if task.is_regression else np.int32
      labels = np.asarray(self.labels, dtype=dtype)
    if self.report.skipped or self.report.empty_kept:
      logger.warning("%s", self.report.summary())
    return GlueExamples(
      task=task,
      split=split_name,
      text_a=self.texts[0],
      text_b=self.texts[1] if task.is_pair else None,
      labels=labels,
      example_ids=np.asarray(self.ids, dtype=np.int64),
      report=self.report,
    )


def _resolve_empty_text(task: GlueTask, empty_text: EmptyTextPolicy | None) -> str:
  policy = task.empty_text if empty_text is None else empty_text
  if policy not in _EMPTY_TEXT_POLICIES:
    raise ValueError(f"empty_text must be one of {_EMPTY_TEXT_POLICIES}, got {empty_text!r}")
  return policy


def _tsv_lines(path: Path) -> Iterator[tuple[int, str]]:
  """Yields `(line_number, line)` without the line end; blank lines only if more text follows.

  Only "\\n" ends a record (a stray "\\r" inside a text stays text). Lines are decoded one by one
  so that invalid UTF-8 is reported with its line; a byte-order mark, as at the start of MRPC's
  files, is dropped.
  """
  pending_blank: list[int] = []
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:
        line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
      except UnicodeDecodeError as error:
        raise GlueFormatError(f"{path}:{number}: not valid UTF-8 ({error.reason})") from None
      line = line.removesuffix("\n").removesuffix("\r")
      if not line:
        pending_blank.append(number)
        continue
      for blank in pending_blank:
        yield blank, ""
      pending_blank.clear()
      yield number, line
  # Blank lines at the very end of a file are padding, not rows.


def read_glue_tsv(
  task: str | GlueTask,
  split: str,
  path: str | os.PathLike,
  *,
  empty_text: EmptyTextPolicy | None = None,
) -> GlueExamples:
  """Reads one official GLUE TSV file.

  Args:
    task: Task name or `GlueTask`.
    split: Split name (decides the column layout, e.g. test files have no label).
    path: The TSV file.
    empty_text: "error", "keep" or "skip" for examples with an empty text; None uses the task's
      default ("keep" for QQP, "error" elsewhere).

  Returns:
    The split's examples and a `ReadReport` of counted skips.

  Raises:
    GlueFormatError: On a malformed file, naming the file and line.
  """
  task = get_task(task)
  spec = task.split(split)
  layout = spec.layout
  path = Path(path)
  collector = _Collector(task, spec, str(path), _resolve_empty_text(task, empty_text))
  lines = _tsv_lines(path)

  if layout.header:
    first = next(lines, None)
    if first is None:
      raise GlueFormatError(f"{path}: empty file")
    header = first[1].split("\t")
    wanted = [*layout.text_columns, layout.label_column, layout.id_column]
    missing = [name for name in wanted if name is not None and name not in header]
    if missing:
      raise GlueFormatError(
        f"{path}:{first[0]}: header {header} lacks column(s) {missing} expected in "
        f"{task.glue_name} {split} files"
      )
    num_columns = len(header)
    text_idx = [header.index(name) for name in layout.text_columns]
    label_idx = None if layout.label_column is None else header.index(layout.label_column)
    id_idx = None if layout.id_column is None else header.index(layout.id_column)
    columns_hint = f"header: {header}"
  else:
    num_columns = layout.num_columns
    text_idx = list(layout.text_columns)
    label_idx = layout.label_column
    id_idx = None
    columns_hint = "this file has no header"

  for ordinal, (number, line) in enumerate(lines):
    collector.report.rows += 1
    where = f"{path}:{number}"
    fields = line.split("\t")
    if len(fields) != num_columns:
      message = f"expected {num_columns} tab-separated columns, found {len(fields)}"
      if task.drop_malformed_rows and spec.labelled:
        # QQP's train/dev files contain questions split over two lines by a stray newline; the
        # reference processors drop both halves, and so do we (counted, see the report).
        collector.report.skipped.append((number, message))
        continue
      raise collector.error(where, f"{message} ({columns_hint})")
    label = None if label_idx is None else collector.parse_label(fields[label_idx], where)
    if id_idx is None:
      example_id = ordinal
    else:
      try:
        example_id = int(fields[id_idx])
      except ValueError:
        raise collector.error(where, f"index {fields[id_idx]!r} is not an integer") from None
    collector.add([fields[i] for i in text_idx], label, example_id, where, number)
  return collector.finish(split)


def load_glue_tsv(
  task: str | GlueTask,
  split: str,
  data_dir: str | os.PathLike,
  *,
  empty_text: EmptyTextPolicy | None = None,
) -> GlueExamples:
  """Reads a split from a GLUE task directory (e.g. `glue_data/MNLI`).

  Args:
    task: Task name or `GlueTask`.
    split: Split name; the file is found by the split's conventional name (`train.tsv`,
      `dev_matched.tsv`, `AX.tsv` or `diagnostic.tsv`, ...).
    data_dir: The task's directory.
    empty_text: See `read_glue_tsv`.

  Returns:
    The split's examples.
  """
  task = get_task(task)
  spec = task.split(split)
  for name in spec.filenames:
    path = Path(data_dir) / name
    if path.is_file():
      return read_glue_tsv(task, split, path, empty_text=empty_text)
  raise FileNotFoundError(
    f"none of {list(spec.filenames)} in {data_dir} ({task.glue_name} {split})"
  )


def _import_tfds():
  try:
    # Imported on use: TensorFlow is an optional, heavy extra.
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError(
      "reading GLUE from TFDS needs tensorflow-datasets: pip install 'mobilebert-jax[tf]' "
      "(or read the official TSV files with load_glue_tsv)"
    ) from error
  return tfds


def load_glue_tfds(
  task: str | GlueTask,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = True,
  empty_text: EmptyTextPolicy | None = None,
) -> GlueExamples:
  """Reads a split from TensorFlow Datasets `glue/<config>`.

  TFDS class ids are mapped to this registry's ids by label name (they differ for MNLI and AX).

  Args:
    task: Task name or `GlueTask`.
    split: Split name (TFDS's; the MNLI splits come from the `glue/mnli` config).
    data_dir: TFDS data directory (None: TFDS's default).
    download: Let TFDS download and prepare the data if missing.
    empty_text: See `read_glue_tsv`.

  Returns:
    The split's examples; `example_ids` are TFDS's `idx`.
  """
  tfds = _import_tfds()
  task = get_task(task)
  spec = task.split(split)
  if spec.tfds is None:
    raise ValueError(f"TFDS has no {task.glue_name} {split!r} split; read the TSV file instead")
  config, tfds_split = spec.tfds
  source = f"tfds glue/{config} split {tfds_split}"
  collector = _Collector(task, spec, source, _resolve_empty_text(task, empty_text), unit="idx")
  dataset = tfds.load(
    f"glue/{config}", split=tfds_split, data_dir=data_dir, download=download, shuffle_files=False
  )
  for record in tfds.as_numpy(dataset):
    collector.report.rows += 1
    idx = int(record["idx"])
    where = f"{source} idx {idx}"
    texts = [record[name].decode("utf-8") for name in task.text_features]
    label = None
    if spec.labelled:
      raw = record["label"]
      if task.is_regression:
        label = collector.parse_label(repr(float(raw)), where)
      else:
        tfds_id = int(raw)
        if not 0 <= tfds_id < len(task.tfds_labels):
          raise collector.error(where, f"label id {tfds_id} outside the {task.glue_name} classes")
        label = task.labels.index(task.tfds_labels[tfds_id])
    collector.add(texts, label, idx, where, idx)
  return collector.finish(split)


def featurize_glue(
  examples: GlueExamples, tokenizer: Tokenizer, max_seq_length: int = 128
) -> GlueFeatures:
  """Tokenises and packs examples as `[CLS] a [SEP] (b [SEP])`, BERT's longest-first truncation.

  Args:
    examples: Output of one of the readers.
    tokenizer: WordPiece tokenizer (see `mobilebert_jax.data.text_features.Tokenizer`).
    max_seq_length: Row length L, special tokens included.

  Returns:
    `GlueFeatures` with int32 `[N, L]` inputs and, for labelled splits, `labels` `[N]`.
  """
  featurizer = PairFeaturizer(tokenizer, max_seq_length)
  arrays, report = featurizer.featurize(examples.text_a, examples.text_b)
  if examples.labels is not None:
    arrays["labels"] = examples.labels.copy()
  if report.num_truncated:
    logger.info("%s %s: %s", examples.task.glue_name, examples.split, report.summary())
  return GlueFeatures(arrays, examples.example_ids.copy(), report)


def submission_filename(task: str | GlueTask, split: str) -> str:
  """The file name the GLUE server expects for a test split (`MNLI-m.tsv`, `AX.tsv`, ...)."""
  task = get_task(task)
  name = task.split(split).submission_file
  if name is None:
    submittable = [s.name for s in task.splits.values() if s.submission_file]
    raise ValueError(f"{task.glue_name} {split!r} is not submitted to GLUE; use {submittable}")
  return name


def write_glue_submission(
  output_dir: str | os.PathLike,
  task: str | GlueTask,
  split: str,
  example_ids: np.ndarray,
  predictions: np.ndarray,
) -> Path:
  """Writes one GLUE server prediction file.

  The file is tab-separated with the header `index\\tprediction` and one row per test example in
  index order. Predictions are the label strings of `task.labels`: `0`/`1` for CoLA, SST-2, MRPC,
  QQP and WNLI; `entailment`/`not_entailment` for QNLI and RTE; `entailment`/`neutral`/
  `contradiction` for MNLI and AX; STS-B scores are written with three decimals (not clipped).

  Args:
    output_dir: Directory to write into (created if missing).
    task: Task name or `GlueTask`.
    split: A test split (`test`, `test_matched`, `test_mismatched`).
    example_ids: The examples' GLUE indices `[N]` (`GlueExamples.example_ids`).
    predictions: Class ids `[N]`, logits `[N, num_labels]`, or STS-B scores `[N]`/`[N, 1]`.

  Returns:
    Path of the written file.
  """
  task = get_task(task)
  filename = submission_filename(task, split)
  ids = np.asarray(example_ids)
  predictions = np.asarray(predictions)
  if task.is_regression:
    if predictions.ndim == 2 and predictions.shape[1] == 1:
      predictions = predictions[:, 0]
    if predictions.ndim != 1 or not np.all(np.isfinite(predictions)):
      raise ValueError(
        f"STS-B predictions must be finite scores [N], got shape {predictions.shape}"
      )
    texts = [f"{float(value):.3f}" for value in predictions]
  else:
    if predictions.ndim == 2:
      predictions = predictions.argmax(axis=-1)
    if predictions.ndim != 1 or not np.issubdtype(predictions.dtype, np.integer):
      raise ValueError(
        f"{task.glue_name} predictions must be class ids [N] or logits [N, {task.num_labels}], "
        f"got {predictions.dtype} {predictions.shape}"
      )
    if predictions.size and (predictions.min() < 0 or predictions.max() >= task.num_labels):
      raise ValueError(f"{task.glue_name} class ids must lie in [0, {task.num_labels})")
    texts = [task.labels[int(value)] for value in predictions]
  if ids.ndim != 1 or ids.shape[0] != len(texts):
    raise ValueError(f"{ids.shape[0] if ids.ndim else 0} example ids for {len(texts)} predictions")
  if np.unique(ids).size != ids.size:
    raise ValueError("example ids must be unique")
  output = Path(output_dir)
  output.mkdir(parents=True, exist_ok=True)
  path = output / filename
  order = np.argsort(ids, kind="stable")
  with atomic_files.open_for_write(path) as f:
    f.write("index\tprediction\n")
    for i in order:
      f.write(f"{int(ids[i])}\t{texts[i]}\n")
  return path
