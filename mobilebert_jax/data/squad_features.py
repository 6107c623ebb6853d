"""SQuAD examples to fixed-shape features: BERT's sliding-window reading-comprehension input.

Each example becomes one feature per document window, laid out as

    [CLS] query [SEP] document window [SEP] padding
    type:  0 ...  0     1 ...         1     0 ...

reproducing BERT's `run_squad.py` token for token:
  * The question is WordPiece-tokenised and cut to `max_query_length` tokens.
  * Every whitespace word of the context (see `squad_examples`) is tokenised on its own.
  * Windows of at most `max_seq_length - len(query) - 3` document tokens start at 0 and advance
    by `min(window length, doc_stride)` until one reaches the end of the document.
  * A token seen by several windows is "max context" in the window where
    `min(tokens to its left, tokens to its right) + 0.01 * window length` is largest (the first
    such window on ties); prediction decoding only starts answers at max-context tokens.
  * Training targets: the answer's word span is projected onto WordPiece tokens and then
    tightened to the sub-span whose tokens equal the tokenised answer text, when there is one
    (e.g. "1895" inside the word "(1895-1943)."). A window that holds the whole span points at
    it; other windows, and unanswerable questions, point at [CLS] (position 0).

Beyond the reference, every document token also gets its character span in the context (the
tokenizer's `tokenize_with_offsets` on each word, shifted by the word's offset), so answers can be
cut straight out of the context (`squad_postprocess`, `text_extraction="offsets"`).

Device inputs and host-side decoding metadata are kept apart: `SquadFeatures.inputs` holds only
the model's arrays (batch them with `mobilebert_jax.data.batching`), `SquadFeatures.meta` what
`squad_postprocess` needs to turn logits into answers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from mobilebert_jax.data.squad_examples import SquadExample

logger = logging.getLogger(__name__)

FIRST_UNIQUE_ID = 1_000_000_000
"""`unique_id` of the first feature, as in the reference (ids then count up by one)."""

PAD_ID = 0
"""Padding token id (BERT vocabularies put [PAD] at 0); inputs are right-padded."""


class SquadTokenizer(Protocol):
  """What the SQuAD pipeline needs from a BERT WordPiece tokenizer.

  `mobilebert_jax.tokenization.WordPieceTokenizer` provides it.
  """

  cls_token_id: int
  sep_token_id: int

  def tokenize(self, text: str) -> list[str]: ...

  def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[tuple[int, int]]]: ...

  def basic_tokenize(self, text: str) -> list[str]: ...

  def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]: ...

  def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...


@dataclasses.dataclass(frozen=True)
class SquadFeatureConfig:
  """Window geometry (the reference's defaults).

  Attributes:
    max_seq_length: tokens per feature, L, including [CLS], [SEP], [SEP] and padding.
    doc_stride: how far the next window may start after the current one's start.
    max_query_length: questions are cut to this many WordPiece tokens.
  """

  max_seq_length: int = 384
  doc_stride: int = 128
  max_query_length: int = 64

  def __post_init__(self):
    if self.max_query_length < 0 or self.doc_stride < 1:
      raise ValueError(
        f"need max_query_length >= 0 and doc_stride >= 1, got {self.max_query_length} "
        f"and {self.doc_stride}"
      )
    if self.max_seq_length <= self.max_query_length + 3:
      raise ValueError(
        f"max_seq_length ({self.max_seq_length}) must be greater than max_query_length "
        f"({self.max_query_length}) + 3, to leave room for a document token"
      )


@dataclasses.dataclass(frozen=True)
class DocSpan:
  """One window over the document's WordPiece tokens: `[start, start + length)`."""

  start: int
  length: int


@dataclasses.dataclass(frozen=True)
class SquadFeatureMeta:
  """Host-side metadata of N features with sequence length L (not fed to the model).

  Attributes:
    example_index: index into the example list of the feature's example, [N] int32.
    doc_span_index: which window of its example the feature is, [N] int32.
    unique_ids: the reference's feature ids (1000000000, 1000000001, ...), [N] int64.
    is_impossible: the example is unanswerable (training targets), [N] bool.
    token_to_orig_map: for document tokens the index of their whitespace word in
      `SquadExample.doc_tokens`; -1 for [CLS], query, [SEP] and padding. [N, L] int32.
    token_is_max_context: document tokens whose max-context window this is, [N, L] bool.
    token_char_start: character offset in `SquadExample.context_text` where each document token
      starts; -1 for non-document positions. [N, L] int32.
    token_char_end: exclusive end offset of each document token; -1 elsewhere. [N, L] int32.
  """

  example_index: np.ndarray
  doc_span_index: np.ndarray
  unique_ids: np.ndarray
  is_impossible: np.ndarray
  token_to_orig_map: np.ndarray
  token_is_max_context: np.ndarray
  token_char_start: np.ndarray
  token_char_end: np.ndarray


@dataclasses.dataclass(frozen=True)
class SquadFeatures:
  """Features of a list of examples.

  Attributes:
    inputs: the model's arrays: `input_ids`, `attention_mask`, `token_type_ids` [N, L] int32, and
      for training `start_positions`, `end_positions` [N] int32.
    meta: decoding metadata, see `SquadFeatureMeta`.
  """

  inputs: dict[str, np.ndarray]
  meta: SquadFeatureMeta

  def __len__(self) -> int:
    return int(self.inputs["input_ids"].shape[0])


def make_doc_spans(num_doc_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[DocSpan]:
  """The reference's sliding windows over `num_doc_tokens` document tokens.

  Windows hold `min(max_tokens_for_doc, tokens left)` tokens; the next starts
  `min(window length, doc_stride)` tokens later; the last one reaches the end of the document.
  """
  if max_tokens_for_doc < 1:
    raise ValueError(f"max_tokens_for_doc must be positive, got {max_tokens_for_doc}")
  spans = []
  start = 0
  while start < num_doc_tokens:
    length = min(num_doc_tokens - start, max_tokens_for_doc)
    spans.append(DocSpan(start, length))
    if start + length == num_doc_tokens:
      break
    start += min(length, doc_stride)
  return spans


def max_context_masks(spans: Sequence[DocSpan], num_doc_tokens: int) -> list[np.ndarray]:
  """For each window, which of its tokens have their maximum context there.

  A token's context in a window is `min(left, right) + 0.01 * window length`, with `left` and
  `right` the numbers of window tokens on either side of it; the first window with the largest
  score wins.

  Returns:
    One bool array per window, [span.length].
  """
  best_score = np.full(num_doc_tokens, -np.inf)
  best_span = np.full(num_doc_tokens, -1)
  for index, span in enumerate(spans):
    pos = np.arange(span.start, span.start + span.length)
    end = span.start + span.length - 1
    # Same float64 arithmetic as the reference's Python expression, so ties break the same way.
    score = np.minimum(pos - span.start, end - pos) + 0.01 * span.length
    better = score > best_score[pos]
    best_score[pos[better]] = score[better]
    best_span[pos[better]] = index
  return [best_span[s.start : s.start + s.length] == i for i, s in enumerate(spans)]


def improve_answer_span(
  doc_tokens: Sequence[str],
  start: int,
  end: int,
  tokenizer: SquadTokenizer,
  answer_text: str,
) -> tuple[int, int]:
  """Tightens a token span to the first, longest sub-span that spells the tokenised answer.

  Character annotations are projected onto whole words, so a span can carry extra tokens
  ("(1895-1943)." for the answer "1895"). Scanning starts left to right and, for each start, ends
  right to left; the first sub-span whose tokens joined by spaces equal the answer's tokens joined
  by spaces is returned. When none matches (e.g. the answer is part of a single WordPiece token),
  the span is returned unchanged.

  Args:
    doc_tokens: the document's WordPiece tokens.
    start: first token of the projected span.
    end: last token of the projected span (inclusive).
    tokenizer: the WordPiece tokenizer.
    answer_text: the annotated answer.

  Returns:
    `(start, end)`, inclusive.
  """
  target = " ".join(tokenizer.tokenize(answer_text))
  for new_start in range(start, end + 1):
    for new_end in range(end, new_start - 1, -1):
      if " ".join(doc_tokens[new_start : new_end + 1]) == target:
        return new_start, new_end
  return start, end


@dataclasses.dataclass(frozen=True)
class _TokenizedDoc:
  """A context's WordPiece tokens with their word indices and character spans."""

  pieces: list[str]
  ids: np.ndarray  # [T] int32
  tok_to_orig: np.ndarray  # [T] int32 word index
  orig_to_tok: list[int]  # [num_words] first token of each word
  char_start: np.ndarray  # [T] int32
  char_end: np.ndarray  # [T] int32


class _DocTokenizer:
  """Tokenises contexts word by word, with character spans; caches recent contexts."""

  _CACHE_SIZE = 64  # questions about one paragraph come together

  def __init__(self, tokenizer: SquadTokenizer):
    self.tokenizer = tokenizer
    self._cache: dict[str, _TokenizedDoc] = {}

  def __call__(self, example: SquadExample) -> _TokenizedDoc:
    cached = self._cache.get(example.context_text)
    if cached is not None:
      return cached
    pieces: list[str] = []
    tok_to_orig: list[int] = []
    orig_to_tok: list[int] = []
    char_start: list[int] = []
    char_end: list[int] = []
    for i, (word, word_start) in enumerate(
      zip(example.doc_tokens, example.word_start_chars, strict=True)
    ):
      orig_to_tok.append(len(pieces))
      # Each word on its own, as the reference tokenises; the tokenizer's offsets are spans in
      # the word (they cover accents and characters that normalisation changed or dropped).
      word_pieces, spans = self.tokenizer.tokenize_with_offsets(word)
      for piece, (s, e) in zip(word_pieces, spans, strict=True):
        pieces.append(piece)
        tok_to_orig.append(i)
        char_start.append(word_start + s)
        char_end.append(word_start + e)
    doc = _TokenizedDoc(
      pieces=pieces,
      ids=np.asarray(self.tokenizer.convert_tokens_to_ids(pieces), dtype=np.int32),
      tok_to_orig=np.asarray(tok_to_orig, dtype=np.int32),
      orig_to_tok=orig_to_tok,
      char_start=np.asarray(char_start, dtype=np.int32),
      char_end=np.asarray(char_end, dtype=np.int32),
    )
    if len(self._cache) >= self._CACHE_SIZE:
      self._cache.pop(next(iter(self._cache)))
    self._cache[example.context_text] = doc
    return doc


def _answer_token_span(
  example: SquadExample, doc: _TokenizedDoc, tokenizer: SquadTokenizer
) -> tuple[int, int]:
  """The training answer as an inclusive WordPiece span of the whole document."""
  if example.start_position is None or example.end_position is None:
    raise ValueError(
      f"question {example.qas_id!r} has no training target: read it with is_training=True"
    )
  start = doc.orig_to_tok[example.start_position]
  if example.end_position < len(example.doc_tokens) - 1:
    end = doc.orig_to_tok[example.end_position + 1] - 1
  else:
    end = len(doc.pieces) - 1
  return improve_answer_span(doc.pieces, start, end, tokenizer, example.orig_answer_text or "")


def convert_examples_to_features(
  examples: Sequence[SquadExample],
  tokenizer: SquadTokenizer,
  *,
  is_training: bool,
  config: SquadFeatureConfig | None = None,
) -> SquadFeatures:
  """Tokenises examples into sliding-window features (see the module docstring).

  Args:
    examples: from `read_squad_json` / `load_squad_tfds` (with the same `is_training`).
    tokenizer: the WordPiece tokenizer of the model.
    is_training: add `start_positions` / `end_positions` to the inputs.
    config: window geometry; defaults to 384 / 128 / 64.

  Returns:
    The features of all examples, in example order then window order.

  Raises:
    ValueError: an example whose context has no WordPiece tokens (only control or zero-width
      characters), or a training example without a target.
  """
  config = config or SquadFeatureConfig()
  seq_len = config.max_seq_length
  doc_tokenizer = _DocTokenizer(tokenizer)
  rows: dict[str, list[np.ndarray]] = {
    k: []
    for k in (
      "input_ids",
      "attention_mask",
      "token_type_ids",
      "token_to_orig_map",
      "token_is_max_context",
      "token_char_start",
      "token_char_end",
    )
  }
  example_index, doc_span_index, is_impossible = [], [], []
  start_positions, end_positions = [], []

  for ex_index, example in enumerate(examples):
    query_ids = tokenizer.convert_tokens_to_ids(
      tokenizer.tokenize(example.question_text)[: config.max_query_length]
    )
    doc = doc_tokenizer(example)
    if not doc.pieces:
      raise ValueError(
        f"question {example.qas_id!r}: the context has no WordPiece tokens "
        f"({example.context_text[:40]!r})"
      )
    tok_start, tok_end = 0, 0
    if is_training and not example.is_impossible:
      tok_start, tok_end = _answer_token_span(example, doc, tokenizer)
    max_tokens_for_doc = seq_len - len(query_ids) - 3
    spans = make_doc_spans(len(doc.pieces), max_tokens_for_doc, config.doc_stride)
    doc_offset = len(query_ids) + 2  # [CLS] query [SEP]

    for span_index, (span, is_max) in enumerate(
      zip(spans, max_context_masks(spans, len(doc.pieces)), strict=True)
    ):
      window = slice(span.start, span.start + span.length)
      doc_slots = slice(doc_offset, doc_offset + span.length)
      num_real = doc_offset + span.length + 1

      ids = np.full(seq_len, PAD_ID, dtype=np.int32)
      ids[0] = tokenizer.cls_token_id
      ids[1 : 1 + len(query_ids)] = query_ids
      ids[doc_offset - 1] = tokenizer.sep_token_id
      ids[doc_slots] = doc.ids[window]
      ids[num_real - 1] = tokenizer.sep_token_id
      mask = np.zeros(seq_len, dtype=np.int32)
      mask[:num_real] = 1
      types = np.zeros(seq_len, dtype=np.int32)
      types[doc_offset:num_real] = 1  # document and its closing [SEP]

      rows["input_ids"].append(ids)
      rows["attention_mask"].append(mask)
      rows["token_type_ids"].append(types)
      for key, values in (
        ("token_to_orig_map", doc.tok_to_orig[window]),
        ("token_char_start", doc.char_start[window]),
        ("token_char_end", doc.char_end[window]),
      ):
        row = np.full(seq_len, -1, dtype=np.int32)
        row[doc_slots] = values
        rows[key].append(row)
      max_row = np.zeros(seq_len, dtype=bool)
      max_row[doc_slots] = is_max
      rows["token_is_max_context"].append(max_row)
      example_index.append(ex_index)
      doc_span_index.append(span_index)
      is_impossible.append(example.is_impossible)

      if is_training:
        start, end = 0, 0  # [CLS]: unanswerable, or the answer is not wholly in this window
        if not example.is_impossible:
          doc_end = span.start + span.length - 1
          if tok_start >= span.start and tok_end <= doc_end:
            start = tok_start - span.start + doc_offset
            end = tok_end - span.start + doc_offset
        start_positions.append(start)
        end_positions.append(end)

  def stack(values: list[np.ndarray], dtype) -> np.ndarray:
    return np.stack(values) if values else np.zeros((0, seq_len), dtype=dtype)

  inputs = {k: stack(rows[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
  if is_training:
    inputs["start_positions"] = np.asarray(start_positions, dtype=np.int32)
    inputs["end_positions"] = np.asarray(end_positions, dtype=np.int32)
  num_features = len(example_index)
  meta = SquadFeatureMeta(
    example_index=np.asarray(example_index, dtype=np.int32),
    doc_span_index=np.asarray(doc_span_index, dtype=np.int32),
    unique_ids=FIRST_UNIQUE_ID + np.arange(num_features, dtype=np.int64),
    is_impossible=np.asarray(is_impossible, dtype=bool),
    token_to_orig_map=stack(rows["token_to_orig_map"], np.int32),
    token_is_max_context=stack(rows["token_is_max_context"], bool),
    token_char_start=stack(rows["token_char_start"], np.int32),
    token_char_end=stack(rows["token_char_end"], np.int32),
  )
  logger.info("%d SQuAD examples -> %d features", len(examples), num_features)
  return SquadFeatures(inputs=inputs, meta=meta)
