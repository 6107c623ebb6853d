"""Raw text to tokenised documents, the input of pretraining-instance creation.

A document is a list of sentences, each a 1-D int32 array of WordPiece ids. Sentence boundaries
matter: the next-sentence task splits documents only between sentences, and never across
documents.

Three sources, all generators that hold one document at a time:
  * `read_text_documents`: BERT's input format, one sentence per line, a blank line between
    documents. The end of a file also ends a document (BERT's script lets a document run on into
    the next file; we do not).
  * `text_documents`: any iterable of article strings (one article = one document), split into
    sentences by `split_sentences` or a splitter you pass.
  * `tfds_documents`: a TFDS text dataset such as `wikipedia/20230601.en`, through
    `text_documents`; each process reads its own slice of the split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np

from mobilebert_jax.data import sources

Document = list[np.ndarray]
"""Sentences of one document, each a [num_tokens] int32 array of token ids (never empty)."""


class TokenizerLike(Protocol):
  """What the pretraining pipeline needs from a WordPiece tokenizer."""

  vocab: Mapping[str, int]

  def tokenize(self, text: str) -> list[str]: ...

  def convert_tokens_to_ids(self, tokens: list[str]) -> list[int]: ...


def tokenize_sentence(tokenizer: TokenizerLike, text: str) -> np.ndarray:
  """WordPiece ids of one sentence, [num_tokens] int32 (empty when the text has no tokens)."""
  ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
  return np.asarray(ids, dtype=np.int32).reshape(-1)


PathLike = str | os.PathLike


def read_text_documents(
  paths: PathLike | Sequence[PathLike], tokenizer: TokenizerLike
) -> Iterator[Document]:
  """Streams documents from text files: one sentence per line, blank lines between documents.

  Lines are stripped of surrounding whitespace; lines with no tokens are dropped, and so are
  documents left with no sentences.

  Args:
    paths: one file or a sequence of files, read in order.
    tokenizer: WordPiece tokenizer.

  Yields:
    Documents (see `Document`).

  Raises:
    ValueError: a line that is not UTF-8, naming the file and line.
  """
  if isinstance(paths, str | os.PathLike):
    paths = [paths]
  for path in paths:
    document: Document = []
    # Binary read + per-line decode, so a bad byte is reported with its line number.
    with open(path, "rb") as f:
      for line_number, raw in enumerate(f, start=1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(
            f"{os.fspath(path)}:{line_number}: not valid UTF-8 ({e.reason} at byte {e.start} "
            "of the line); pretraining text files must be UTF-8"
          ) from None
        if line_number == 1:
          line = line.removeprefix("\ufeff")  # A byte-order mark is not text.
        line = line.strip()
        if not line:
          if document:
            yield document
          document = []
          continue
        ids = tokenize_sentence(tokenizer, line)
        if ids.size:
          document.append(ids)
    if document:
      yield document


# Sentence splitting for article text (TFDS wikipedia and the like). Deliberately simple and
# dependency-free: a paragraph is a line; inside it a sentence ends at a run of . ! ? (with any
# closing quotes or brackets) followed by whitespace and then a capital letter or digit (after
# optional opening quotes or brackets). A period does not end a sentence after a single capital
# letter (initials: "J. R. R. Tolkien"), after a dotted abbreviation ("U.S.", "e.g."), or after one
# of the common abbreviations below. CJK full-width 。！？ always end a sentence. Errors remain
# (an abbreviation that really ends a sentence, lower-case sentence starts); for NSP training they
# only move a boundary a little.
_CANDIDATE_END = re.compile(r"""[.!?]+["'”’)\]]*(?=\s)|[。！？]+["'”’」』)\]]*""")
_OPENERS = "\"'“‘([「『"
# fmt: off
_ABBREVIATIONS = frozenset({
  "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "no", "nos", "fig", "figs", "gen",
  "col", "lt", "sgt", "capt", "cmdr", "adm", "mt", "ft", "rev", "hon", "gov", "sen", "rep",
  "pres", "inc", "ltd", "co", "corp", "bros", "dept", "univ", "approx", "ca", "cf", "al",
  "vol", "vols", "pp", "ed", "eds", "est", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
  "sep", "sept", "oct", "nov", "dec",
})
# fmt: on


def _ends_sentence(paragraph: str, match: re.Match[str]) -> bool:
  """Whether the punctuation run `match` in `paragraph` is a sentence boundary."""
  if match.group()[0] in "。！？":
    return True
  following = paragraph[match.end() :].lstrip().lstrip(_OPENERS)
  if not following or not (following[0].isupper() or following[0].isdigit()):
    return False
  if match.group()[0] != ".":
    return True
  before = paragraph[: match.start()].split()
  word = before[-1].lstrip(_OPENERS) if before else ""
  is_initial = len(word) == 1 and word.isupper()
  return not (is_initial or "." in word or word.lower() in _ABBREVIATIONS)


def split_sentences(text: str) -> list[str]:
  """Splits article text into sentences (see the rules above `_CANDIDATE_END`).

  Args:
    text: article text; line breaks separate paragraphs.

  Returns:
    Non-empty, stripped sentences in order.
  """
  sentences = []
  for paragraph in text.splitlines():
    start = 0
    for match in _CANDIDATE_END.finditer(paragraph):
      if _ends_sentence(paragraph, match):
        sentence = paragraph[start : match.end()].strip()
        if sentence:
          sentences.append(sentence)
        start = match.end()
    tail = paragraph[start:].strip()
    if tail:
      sentences.append(tail)
  return sentences


def text_documents(
  texts: Iterable[str],
  tokenizer: TokenizerLike,
  *,
  sentence_splitter: Callable[[str], list[str]] = split_sentences,
) -> Iterator[Document]:
  """Streams one document per article string, split into sentences and tokenised.

  Articles with no tokens are skipped.
  """
  for text in texts:
    document = []
    for sentence in sentence_splitter(text):
      ids = tokenize_sentence(tokenizer, sentence)
      if ids.size:
        document.append(ids)
    if document:
      yield document


def tfds_documents(
  name: str,
  split: str,
  tokenizer: TokenizerLike,
  *,
  text_field: str = "text",
  data_dir: str | None = None,
  download: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
  sentence_splitter: Callable[[str], list[str]] = split_sentences,
) -> Iterator[Document]:
  """Streams documents from a TFDS text dataset, one per example (e.g. a Wikipedia article).

  Args:
    name: TFDS name, e.g. `'wikipedia/20230601.en'` (field `text`).
    split: split expression; each process reads its slice (`sources.process_split`).
    tokenizer: WordPiece tokenizer.
    text_field: the feature holding the article text.
    data_dir: TFDS data directory.
    download: let TFDS download and prepare the dataset if it is missing.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.
    sentence_splitter: article text -> sentences.

  Yields:
    Documents (see `Document`).

  Raises:
    KeyError: the dataset has no `text_field`.
  """
  examples = sources.iter_tfds_examples(
    name,
    split,
    data_dir=data_dir,
    download=download,
    process_index=process_index,
    process_count=process_count,
  )

  def texts() -> Iterator[str]:
    for index, example in enumerate(examples):
      if text_field not in example:
        raise KeyError(f"{name} has no text field {text_field!r}; its fields are {sorted(example)}")
      where = f"{name} split {split!r}, example {index} of this process's slice, {text_field!r}"
      yield sources.decode_text(example[text_field], what=where)

  yield from text_documents(texts(), tokenizer, sentence_splitter=sentence_splitter)
