"""CoNLL-2003 named-entity recognition: readers, IOB handling, first-sub-word featurisation and
decoding of predictions back to word-level tags.

Data sources:
  * The CoNLL-2003 files (`eng.train`, `eng.testa`, `eng.testb`, or `train.txt`/`valid.txt`/
    `test.txt` of later redistributions): one word per line with four space-separated columns,
    `word POS chunk NER`; a blank line ends a sentence; `-DOCSTART- -X- -X- O` lines separate
    documents and are not sentences.
  * TensorFlow Datasets `conll2003` (splits `train`, `dev`, `test`; needs the `mobilebert-jax[tf]`
    extra).

Tag schemes: the original shared-task files use IOB1 (a chunk starts with I- unless it directly
follows a chunk of the same type, where B- marks the border); most redistributions, TFDS's source
included, use IOB2 (every chunk starts with B-). Both use the same nine labels, which we keep in
TFDS's order: `NER_LABELS = (O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC)`. The
readers detect the scheme of their input (`ConllReport.source_scheme`) and by default rewrite IOB1
to IOB2, so that a model always learns one scheme: an I-X that starts a chunk under conlleval's
rules becomes B-X. That rewrite leaves every entity span unchanged (conlleval scores both files
identically), so scores on converted gold tags are the official scores.

Featurisation: each word is tokenised on its own; its first WordPiece carries the word's label and
its other pieces, `[CLS]`, `[SEP]` and padding carry -100 (not scored). A sentence whose pieces do
not fit in `max_seq_length - 2` is, by default, split at word boundaries into consecutive rows so
every word still gets exactly one prediction (`long_sentences="split"`);
`long_sentences="truncate"` keeps only the first row and decodes the dropped words as O. Both are
counted in `NerFeatures.report`. A word of which the tokenizer keeps nothing (e.g. only control
characters) is fed as `[UNK]`, so it still gets a prediction (counted).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from mobilebert_jax import atomic_files
from mobilebert_jax.data.text_features import Tokenizer, pad_rows
from mobilebert_jax.metrics.conll import chunk_starts, split_tag

__all__ = [
  "IGNORE_INDEX",
  "NER_LABELS",
  "ConllData",
  "ConllFormatError",
  "ConllReport",
  "ConllSentence",
  "NerFeatures",
  "NerFeaturizationReport",
  "decode_ner_predictions",
  "detect_tag_scheme",
  "featurize_ner",
  "iob1_to_iob2",
  "load_conll2003_tfds",
  "read_conll2003",
  "write_conlleval_input",
]

logger = logging.getLogger(__name__)

NER_LABELS: tuple[str, ...] = (
  "O",
  "B-PER",
  "I-PER",
  "B-ORG",
  "I-ORG",
  "B-LOC",
  "I-LOC",
  "B-MISC",
  "I-MISC",
)
IGNORE_INDEX = -100
_DOCSTART = "-DOCSTART-"
_COLUMNS = ("word", "POS", "chunk", "NER")
_FIELD_SEPARATOR = re.compile(r"[ \t]+")

TagScheme = Literal["iob2", "keep"]


class ConllFormatError(ValueError):
  """A CoNLL file (or TFDS record) that does not have the expected shape or tags."""


@dataclasses.dataclass(frozen=True)
class ConllSentence:
  """One sentence.

  Attributes:
    words: The words.
    pos: Part-of-speech tags, one per word.
    chunks: Syntactic chunk tags, one per word.
    ner: Entity tags, one per word.
    document: 0-based index of the document (counted by `-DOCSTART-` lines).
    line: Line of the first word in the source file (-1 for TFDS).
  """

  words: tuple[str, ...]
  pos: tuple[str, ...]
  chunks: tuple[str, ...]
  ner: tuple[str, ...]
  document: int = 0
  line: int = -1


@dataclasses.dataclass(frozen=True)
class ConllReport:
  """What reading did.

  Attributes:
    source: The file or TFDS split read.
    num_documents: Documents (`-DOCSTART-` sections; 1 if the file has none).
    num_sentences: Sentences.
    num_words: Words.
    source_scheme: Tag scheme found in the source: "iob1", "iob2", "mixed" (evidence of both,
      i.e. valid under neither) or "none" (no entity that tells them apart).
    num_converted: I- tags rewritten to B- by the IOB1 -> IOB2 conversion.
  """

  source: str
  num_documents: int
  num_sentences: int
  num_words: int
  source_scheme: str
  num_converted: int

  def summary(self) -> str:
    return (
      f"{self.source}: {self.num_documents} documents, {self.num_sentences} sentences, "
      f"{self.num_words} words, tags {self.source_scheme}, {self.num_converted} I- tags "
      "rewritten to B-"
    )


@dataclasses.dataclass(frozen=True)
class ConllData:
  """A split's sentences and the report of how they were read."""

  sentences: list[ConllSentence]
  report: ConllReport

  @property
  def words(self) -> list[tuple[str, ...]]:
    return [sentence.words for sentence in self.sentences]

  @property
  def tags(self) -> list[tuple[str, ...]]:
    return [sentence.ner for sentence in self.sentences]

  def __len__(self) -> int:
    return len(self.sentences)


def iob1_to_iob2(tags: Sequence[str]) -> tuple[list[str], int]:
  """Rewrites every I-X that starts a chunk (under conlleval's rules) as B-X.

  IOB2 input comes back unchanged, so the function is safe on data of unknown scheme.

  Args:
    tags: One sentence's tags.

  Returns:
    `(tags, number_of_tags_rewritten)`.
  """
  out, changed = [], 0
  prev_prefix, prev_type = "O", ""
  for tag in tags:
    prefix, chunk_type = split_tag(tag)
    if prefix == "I" and chunk_starts(prev_prefix, prefix, prev_type, chunk_type):
      tag, prefix, changed = f"B-{chunk_type}", "B", changed + 1
    out.append(tag)
    prev_prefix, prev_type = prefix, chunk_type
  return out, changed


def detect_tag_scheme(tag_sequences: Sequence[Sequence[str]]) -> str:
  """Tells IOB1 from IOB2 data.

  An I-X that starts a chunk only occurs in IOB1; a B-X that does not follow an X chunk only
  occurs in IOB2.

  Args:
    tag_sequences: Per sentence, the tags.

  Returns:
    "iob1", "iob2", "mixed" (both kinds of evidence) or "none" (neither).
  """
  iob1 = iob2 = False
  for tags in tag_sequences:
    prev_prefix, prev_type = "O", ""
    for tag in tags:
      prefix, chunk_type = split_tag(tag)
      if prefix == "I" and chunk_starts(prev_prefix, prefix, prev_type, chunk_type):
        iob1 = True
      elif prefix == "B" and (prev_prefix == "O" or prev_type != chunk_type):
        iob2 = True
      prev_prefix, prev_type = prefix, chunk_type
    if iob1 and iob2:
      return "mixed"
  return "iob1" if iob1 else "iob2" if iob2 else "none"


def _finish(
  sentences: list[ConllSentence], source: str, num_documents: int, tag_scheme: TagScheme
) -> ConllData:
  if tag_scheme not in ("iob2", "keep"):
    raise ValueError(f"tag_scheme must be 'iob2' or 'keep', got {tag_scheme!r}")
  if not sentences:
    raise ConllFormatError(f"{source}: no sentences")
  source_scheme = detect_tag_scheme([s.ner for s in sentences])
  converted = 0
  if tag_scheme == "iob2":
    for i, sentence in enumerate(sentences):
      tags, changed = iob1_to_iob2(sentence.ner)
      if changed:
        sentences[i] = dataclasses.replace(sentence, ner=tuple(tags))
        converted += changed
  report = ConllReport(
    source=source,
    num_documents=num_documents,
    num_sentences=len(sentences),
    num_words=sum(len(s.words) for s in sentences),
    source_scheme=source_scheme,
    num_converted=converted,
  )
  logger.info("%s", report.summary())
  return ConllData(sentences, report)


def read_conll2003(
  path: str | os.PathLike,
  *,
  tag_scheme: TagScheme = "iob2",
  labels: Sequence[str] = NER_LABELS,
  encoding: str = "utf-8",
) -> ConllData:
  """Reads a CoNLL-2003 file.

  Args:
    path: The file (`eng.train`, `valid.txt`, ...).
    tag_scheme: "iob2" rewrites IOB1 tags to IOB2 (spans unchanged); "keep" leaves them.
    labels: The allowed NER tags.
    encoding: Text encoding of the file.

  Returns:
    The sentences and a report (documents, sentences, detected scheme, conversions).

  Raises:
    ConllFormatError: On a line without exactly four columns or with an unknown NER tag, naming
      the file and line.
  """
  path = Path(path)
  allowed = frozenset(labels)
  sentences: list[ConllSentence] = []
  columns: list[list[str]] = [[] for _ in _COLUMNS]
  first_line, document, seen_docstart = 0, 0, False

  def close_sentence() -> None:
    if columns[0]:
      words, pos, chunks, ner = (tuple(column) for column in columns)
      sentences.append(ConllSentence(words, pos, chunks, ner, document, first_line))
      for column in columns:
        column.clear()

  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      try:  # Decoded line by line, so that bad bytes are reported with their line.
        line = raw.decode(encoding)
      except UnicodeDecodeError as error:
        raise ConllFormatError(f"{path}:{number}: not valid {encoding} ({error.reason})") from None
      line = line.removesuffix("\n").removesuffix("\r").strip(" \t")
      if not line:
        close_sentence()
        continue
      fields = _FIELD_SEPARATOR.split(line)
      if fields[0] == _DOCSTART:  # Whatever its other columns say, it only separates documents.
        close_sentence()
        document += seen_docstart  # The first -DOCSTART- opens document 0.
        seen_docstart = True
        continue
      if len(fields) != len(_COLUMNS):
        raise ConllFormatError(
          f"{path}:{number}: expected 4 space-separated columns (word POS chunk NER), found "
          f"{len(fields)}: {line!r}"
        )
      if fields[3] not in allowed:
        raise ConllFormatError(
          f"{path}:{number}: unknown NER tag {fields[3]!r}; expected one of {list(labels)}"
        )
      if not columns[0]:
        first_line = number
      for column, value in zip(columns, fields, strict=True):
        column.append(value)
  close_sentence()
  return _finish(sentences, str(path), document + 1, tag_scheme)


def _import_tfds():
  try:
    # Imported on use: TensorFlow is an optional, heavy extra.
    import tensorflow_datasets as tfds
  except ImportError as error:
    raise ImportError(
      "reading CoNLL-2003 from TFDS needs tensorflow-datasets: pip install 'mobilebert-jax[tf]' "
      "(or read the CoNLL files with read_conll2003)"
    ) from error
  return tfds


def load_conll2003_tfds(
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = True,
  tag_scheme: TagScheme = "iob2",
) -> ConllData:
  """Reads a split of TensorFlow Datasets `conll2003`.

  Args:
    split: `train`, `dev` (alias `validation`) or `test`.
    data_dir: TFDS data directory (None: TFDS's default).
    download: Let TFDS download and prepare the data if missing.
    tag_scheme: See `read_conll2003`.

  Returns:
    The sentences (tags as strings, via TFDS's class names) and a report.
  """
  tfds = _import_tfds()
  tfds_split = {"validation": "dev"}.get(split, split)
  if tfds_split not in ("train", "dev", "test"):
    raise ValueError(f"conll2003 has splits train, dev (validation) and test, not {split!r}")
  dataset, info = tfds.load(
    "conll2003",
    split=tfds_split,
    data_dir=data_dir,
    download=download,
    shuffle_files=False,
    with_info=True,
  )
  names = {key: info.features[key].feature.names for key in ("pos", "chunks", "ner")}
  unknown = sorted(set(names["ner"]) - set(NER_LABELS))
  if unknown:
    raise ConllFormatError(f"tfds conll2003 has NER classes {unknown} outside {NER_LABELS}")
  source = f"tfds conll2003 split {tfds_split}"
  sentences = []
  for index, record in enumerate(tfds.as_numpy(dataset)):
    words = tuple(word.decode("utf-8") for word in record["tokens"])
    tags = {key: tuple(names[key][int(i)] for i in record[key]) for key in names}
    lengths = {"tokens": len(words), **{key: len(value) for key, value in tags.items()}}
    if len(set(lengths.values())) != 1:
      raise ConllFormatError(f"{source} example {index}: feature lengths differ: {lengths}")
    if words:
      sentences.append(ConllSentence(words, tags["pos"], tags["chunks"], tags["ner"]))
  return _finish(sentences, source, 1, tag_scheme)


@dataclasses.dataclass(frozen=True)
class NerFeaturizationReport:
  """What featurisation did to long sentences and odd words.

  Attributes:
    num_sentences: Sentences featurised.
    num_rows: Rows produced.
    num_split_sentences: Sentences spread over more than one row ("split" mode).
    num_truncated_sentences: Sentences that lost words ("truncate" mode).
    num_dropped_words: Words without a row ("truncate" mode); decoded as O.
    num_clipped_words: Words longer than a whole row, whose trailing pieces were cut (their
      first piece, which carries the label, is kept).
    num_unk_words: Words the tokenizer reduced to nothing, fed as `[UNK]`.
    max_seq_length: Row length.
  """

  num_sentences: int
  num_rows: int
  num_split_sentences: int
  num_truncated_sentences: int
  num_dropped_words: int
  num_clipped_words: int
  num_unk_words: int
  max_seq_length: int

  def summary(self) -> str:
    return (
      f"{self.num_sentences} sentences -> {self.num_rows} rows of {self.max_seq_length}: "
      f"{self.num_split_sentences} split, {self.num_truncated_sentences} truncated "
      f"({self.num_dropped_words} words dropped), {self.num_clipped_words} words clipped, "
      f"{self.num_unk_words} words fed as [UNK]"
    )


@dataclasses.dataclass(frozen=True)
class NerFeatures:
  """Model inputs for token classification and what is needed to map predictions back.

  Attributes:
    arrays: `input_ids`, `attention_mask`, `token_type_ids` int32 `[N, L]` and, when tags were
      given, `labels` int32 `[N, L]` (-100 except at each word's first piece).
    sentence_index: int64 `[N]`, the sentence each row belongs to.
    word_index: int32 `[N, L]`, the index within its sentence of the word whose first piece is
      at that position, -1 elsewhere.
    num_words: int32 `[S]`, words per sentence.
    label_names: Tag of each label id.
    report: Counts of split, truncated, clipped and `[UNK]` words.
  """

  arrays: dict[str, np.ndarray]
  sentence_index: np.ndarray
  word_index: np.ndarray
  num_words: np.ndarray
  label_names: tuple[str, ...]
  report: NerFeaturizationReport


def featurize_ner(
  words: Sequence[Sequence[str]],
  tags: Sequence[Sequence[str]] | None,
  tokenizer: Tokenizer,
  max_seq_length: int = 128,
  *,
  label_names: Sequence[str] = NER_LABELS,
  long_sentences: Literal["split", "truncate"] = "split",
) -> NerFeatures:
  """Builds first-sub-word labelled rows `[CLS] pieces... [SEP]`.

  Args:
    words: Per sentence, its words (`ConllData.words`).
    tags: Per sentence, one tag per word (`ConllData.tags`), or None to featurise without labels.
    tokenizer: WordPiece tokenizer (see `mobilebert_jax.data.text_features.Tokenizer`).
    max_seq_length: Row length L, `[CLS]` and `[SEP]` included.
    label_names: Tag of each label id.
    long_sentences: "split" spreads a sentence that does not fit over several rows at word
      boundaries; "truncate" keeps its first row only.

  Returns:
    `NerFeatures`.
  """
  if max_seq_length < 3:
    raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
  if long_sentences not in ("split", "truncate"):
    raise ValueError(f"long_sentences must be 'split' or 'truncate', got {long_sentences!r}")
  if tags is not None and len(tags) != len(words):
    raise ValueError(f"{len(words)} sentences but {len(tags)} tag sequences")
  label_ids = {name: i for i, name in enumerate(label_names)}
  budget = max_seq_length - 2
  cls_id, sep_id, unk_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id
  cache: dict[str, list[int]] = {}
  rows, labels, positions, sentence_of_row = [], [], [], []
  num_split = num_truncated = num_dropped = num_clipped = num_unk = 0

  for s, sentence in enumerate(words):
    if not sentence:
      raise ValueError(f"sentence {s} has no words")
    sentence_tags = None if tags is None else tags[s]
    if sentence_tags is not None:
      if len(sentence_tags) != len(sentence):
        raise ValueError(f"sentence {s}: {len(sentence)} words but {len(sentence_tags)} tags")
      unknown = [tag for tag in sentence_tags if tag not in label_ids]
      if unknown:
        raise ValueError(f"sentence {s}: tags {unknown} not in {list(label_names)}")
    pieces = []
    for word in sentence:
      ids = cache.get(word)
      if ids is None:
        ids = list(tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word)))
        cache[word] = ids
      if not ids:
        ids, num_unk = [unk_id], num_unk + 1
      if len(ids) > budget:
        ids, num_clipped = ids[:budget], num_clipped + 1
      pieces.append(ids)

    start, num_windows = 0, 0
    while start < len(sentence):
      end, used = start, 0
      while end < len(sentence) and used + len(pieces[end]) <= budget:
        used += len(pieces[end])
        end += 1
      row, row_labels, row_words = [cls_id], [IGNORE_INDEX], [-1]
      for w in range(start, end):
        row.extend(pieces[w])
        first_label = IGNORE_INDEX if sentence_tags is None else label_ids[sentence_tags[w]]
        row_labels.extend([first_label] + [IGNORE_INDEX] * (len(pieces[w]) - 1))
        row_words.extend([w] + [-1] * (len(pieces[w]) - 1))
      row.append(sep_id)
      row_labels.append(IGNORE_INDEX)
      row_words.append(-1)
      rows.append(row)
      labels.append(row_labels)
      positions.append(row_words)
      sentence_of_row.append(s)
      num_windows += 1
      start = end
      if long_sentences == "truncate" and start < len(sentence):
        num_truncated += 1
        num_dropped += len(sentence) - start
        break
    num_split += num_windows > 1

  length = max_seq_length
  arrays = {
    "input_ids": pad_rows(rows, length, tokenizer.pad_token_id),
    "attention_mask": pad_rows([[1] * len(row) for row in rows], length, 0),
    "token_type_ids": np.zeros((len(rows), length), dtype=np.int32),
  }
  if tags is not None:
    arrays["labels"] = pad_rows(labels, length, IGNORE_INDEX)
  report = NerFeaturizationReport(
    num_sentences=len(words),
    num_rows=len(rows),
    num_split_sentences=num_split,
    num_truncated_sentences=num_truncated,
    num_dropped_words=num_dropped,
    num_clipped_words=num_clipped,
    num_unk_words=num_unk,
    max_seq_length=length,
  )
  if num_split or num_truncated or num_clipped or num_unk:
    logger.info("%s", report.summary())
  return NerFeatures(
    arrays=arrays,
    sentence_index=np.asarray(sentence_of_row, dtype=np.int64),
    word_index=pad_rows(positions, length, -1),
    num_words=np.asarray([len(sentence) for sentence in words], dtype=np.int32),
    label_names=tuple(label_names),
    report=report,
  )


def decode_ner_predictions(predictions: np.ndarray, features: NerFeatures) -> list[list[str]]:
  """Maps row predictions back to one tag per word.

  Args:
    predictions: Label ids `[N, L]` or logits `[N, L, num_labels]`, rows as in `features`.
    features: The features the predictions were made on.

  Returns:
    Per sentence, one tag per word; words that had no row (truncate mode) are "O".
  """
  predictions = np.asarray(predictions)
  if predictions.ndim == 3:
    predictions = predictions.argmax(axis=-1)
  if predictions.shape != features.word_index.shape:
    raise ValueError(
      f"predictions of shape {predictions.shape} do not match the features "
      f"{features.word_index.shape}"
    )
  num_labels = len(features.label_names)
  tags = [["O"] * int(n) for n in features.num_words]
  rows, cols = np.nonzero(features.word_index >= 0)
  for row, col in zip(rows, cols, strict=True):
    label = int(predictions[row, col])
    if not 0 <= label < num_labels:
      raise ValueError(f"predicted label id {label} outside [0, {num_labels})")
    sentence = features.sentence_index[row]
    tags[sentence][features.word_index[row, col]] = features.label_names[label]
  return tags


def write_conlleval_input(
  path: str | os.PathLike,
  words: Sequence[Sequence[str]],
  gold_tags: Sequence[Sequence[str]],
  predicted_tags: Sequence[Sequence[str]],
) -> None:
  """Writes `word gold predicted` lines, blank lines between sentences: the input of the
  original `conlleval` script, for cross-checking `mobilebert_jax.metrics.conll.conlleval`.

  Args:
    path: Output file.
    words: Per sentence, its words.
    gold_tags: Per sentence, gold tags.
    predicted_tags: Per sentence, predicted tags.
  """
  if not len(words) == len(gold_tags) == len(predicted_tags):
    raise ValueError("words, gold_tags and predicted_tags must have one entry per sentence")
  # Atomic: a failed write, or a sentence found malformed half-way, leaves no partial file.
  with atomic_files.open_for_write(path) as f:
    for s, (sentence, gold, predicted) in enumerate(
      zip(words, gold_tags, predicted_tags, strict=True)
    ):
      if not len(sentence) == len(gold) == len(predicted):
        raise ValueError(f"sentence {s}: words, gold and predicted tags differ in length")
      for word, g, p in zip(sentence, gold, predicted, strict=True):
        f.write(f"{word} {g} {p}\n")
      f.write("\n")
