"""Single-sentence and sentence-pair featurisation shared by GLUE and SWAG.

Every example becomes `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]`, right-padded to a fixed length.
When a pair is too long, tokens are removed from the end of the longer segment one at a time (the
second segment on ties), exactly as `_truncate_seq_pair` in google-research/bert's
`run_classifier.py` does. The Rust tokenizers behind transformers' fast `BertTokenizer` differ
from it in one corner: when both segments are equally long and the budget is odd, they give the
spare token to the second segment; BERT (and `BertTokenizerLegacy`) give it to the first. We follow
BERT, which is what MobileBERT was fine-tuned with.

Only a small part of the tokenizer interface is used (see `Tokenizer`), so any WordPiece
tokenizer exposing those names works.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from mobilebert_jax.tokenization.encoding import truncated_lengths

__all__ = [
  "FeaturizationReport",
  "PairFeaturizer",
  "Tokenizer",
  "pad_rows",
  "truncate_pair_lengths",
]


@runtime_checkable
class Tokenizer(Protocol):
  """The part of `mobilebert_jax.tokenization.WordPieceTokenizer` the task pipelines use."""

  cls_token_id: int
  sep_token_id: int
  pad_token_id: int
  unk_token_id: int

  def tokenize(self, text: str) -> list[str]: ...

  def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]: ...


def truncate_pair_lengths(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Lengths that BERT's longest-first rule leaves for a pair of segments.

  The tokenizers' own rule (`tokenization.encoding.truncated_lengths`), specialised to pairs.

  Args:
    len_a: Tokens in the first segment.
    len_b: Tokens in the second segment.
    budget: Tokens available for both segments together (max length minus special tokens).

  Returns:
    `(new_len_a, new_len_b)`.
  """
  kept_a, kept_b = truncated_lengths(len_a, len_b, budget, "longest_first")
  return kept_a, kept_b


@dataclasses.dataclass(frozen=True)
class FeaturizationReport:
  """What featurisation did to the inputs.

  Attributes:
    num_sequences: Rows featurised (for multiple choice: examples x choices).
    num_truncated: Rows that lost at least one token to `max_seq_length`.
    longest: The longest row before truncation, special tokens included.
    max_seq_length: The fixed length of every row.
  """

  num_sequences: int
  num_truncated: int
  longest: int
  max_seq_length: int

  def summary(self) -> str:
    """One line for logs."""
    return (
      f"{self.num_sequences} sequences, {self.num_truncated} truncated to "
      f"{self.max_seq_length} tokens (longest before truncation: {self.longest})"
    )


def pad_rows(rows: Sequence[Sequence[int]], length: int, pad_value: int) -> np.ndarray:
  """Right-pads integer rows into an int32 array.

  Args:
    rows: Rows of at most `length` values each.
    length: Width of the result.
    pad_value: Value for the padded tail.

  Returns:
    int32 array `[len(rows), length]`.
  """
  out = np.full((len(rows), length), pad_value, dtype=np.int32)
  for i, row in enumerate(rows):
    if len(row) > length:
      raise ValueError(f"row {i} has {len(row)} values, more than the width {length}")
    out[i, : len(row)] = row
  return out


class PairFeaturizer:
  """Turns texts and text pairs into BERT inputs of a fixed length.

  Token ids of recent texts are cached: GLUE and SWAG repeat texts next to each other (an MNLI
  premise comes with three hypotheses, a SWAG context with four endings). The cache is bounded so
  that featurising QQP's 364k question pairs does not keep every question's ids alive.

  Args:
    tokenizer: A WordPiece tokenizer (see `Tokenizer`).
    max_seq_length: Length of every row, special tokens included.
    cache_size: Distinct texts whose token ids are kept.
  """

  def __init__(self, tokenizer: Tokenizer, max_seq_length: int = 128, cache_size: int = 1 << 16):
    if max_seq_length < 3:
      raise ValueError(f"max_seq_length must be at least 3, got {max_seq_length}")
    self.tokenizer = tokenizer
    self.max_seq_length = max_seq_length
    self._token_ids = functools.lru_cache(maxsize=cache_size)(self._tokenize)

  def _tokenize(self, text: str) -> tuple[int, ...]:
    return tuple(self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text)))

  def token_ids(self, text: str) -> tuple[int, ...]:
    """WordPiece ids of `text`, without special tokens."""
    return self._token_ids(text)

  def encode(self, text_a: str, text_b: str | None = None) -> tuple[list[int], list[int], int]:
    """One example, unpadded.

    Args:
      text_a: First segment.
      text_b: Optional second segment.

    Returns:
      `(input_ids, token_type_ids, untruncated_length)`, the lists at most `max_seq_length`
      long; `untruncated_length` counts special tokens too.
    """
    cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
    ids_a = self.token_ids(text_a)
    if text_b is None:
      full = len(ids_a) + 2
      input_ids = [cls_id, *ids_a[: self.max_seq_length - 2], sep_id]
      return input_ids, [0] * len(input_ids), full
    ids_b = self.token_ids(text_b)
    full = len(ids_a) + len(ids_b) + 3
    len_a, len_b = truncate_pair_lengths(len(ids_a), len(ids_b), self.max_seq_length - 3)
    input_ids = [cls_id, *ids_a[:len_a], sep_id, *ids_b[:len_b], sep_id]
    token_type_ids = [0] * (len_a + 2) + [1] * (len_b + 1)
    return input_ids, token_type_ids, full

  def featurize(
    self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None
  ) -> tuple[dict[str, np.ndarray], FeaturizationReport]:
    """Many examples, padded.

    Args:
      texts_a: First segments, N of them.
      texts_b: Second segments (N) or None for single-sentence tasks.

    Returns:
      `(arrays, report)`: `input_ids`, `attention_mask`, `token_type_ids`, int32 `[N, L]` with
      `L = max_seq_length`, padded on the right with the tokenizer's pad id (0 in BERT vocabs).
    """
    if texts_b is not None and len(texts_b) != len(texts_a):
      raise ValueError(f"{len(texts_a)} first segments but {len(texts_b)} second segments")
    n, length = len(texts_a), self.max_seq_length
    input_ids = np.full((n, length), self.tokenizer.pad_token_id, dtype=np.int32)
    attention_mask = np.zeros((n, length), dtype=np.int32)
    token_type_ids = np.zeros((n, length), dtype=np.int32)
    num_truncated, longest = 0, 0
    for i, text_a in enumerate(texts_a):
      ids, types, full = self.encode(text_a, None if texts_b is None else texts_b[i])
      input_ids[i, : len(ids)] = ids
      attention_mask[i, : len(ids)] = 1
      token_type_ids[i, : len(types)] = types
      num_truncated += full > length
      longest = max(longest, full)
    arrays = {
      "input_ids": input_ids,
      "attention_mask": attention_mask,
      "token_type_ids": token_type_ids,
    }
    return arrays, FeaturizationReport(n, num_truncated, longest, length)
