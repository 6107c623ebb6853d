"""`Encoding` and BERT's way of turning one or two token sequences into model inputs.

Both tokenizers derive from `TokenizerBase`, produce a `Segment` (tokens, ids, character offsets)
per text and hand it to `assemble`, which truncates, adds `[CLS] A [SEP] (B [SEP])` and pads:

* `longest_first` removes one token at a time from the end of the longer sequence, and from the
  second one when both are equally long (google-research/bert `_truncate_seq_pair`, and
  transformers' Python tokenizers). transformers' Rust-backed tokenizers differ when both
  sequences must be cut and the budget is odd: they give the spare token to the longer sequence
  (the second on ties), BERT gives it to the first.
* `only_first` / `only_second` cut only the named sequence; when that is not enough we raise
  (transformers logs an error and returns an over-long sequence).
* Padding is on the right with `[PAD]`, token type 0 and attention mask 0.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Literal

__all__ = [
  "PADDING_STRATEGIES",
  "TRUNCATION_STRATEGIES",
  "Encoding",
  "Padding",
  "Segment",
  "SpecialTokens",
  "TokenizerBase",
  "Truncation",
  "assemble",
  "num_special_tokens",
  "pad_batch",
  "pad_encoding",
  "resolve_padding",
  "resolve_truncation",
  "truncated_lengths",
]

Truncation = Literal["longest_first", "only_first", "only_second"] | None
Padding = Literal["max_length", "longest"] | None
TRUNCATION_STRATEGIES = ("longest_first", "only_first", "only_second")
PADDING_STRATEGIES = ("max_length", "longest")

Offset = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Segment:
  """One tokenised text: its tokens, their ids and their character spans in the text."""

  tokens: list[str]
  ids: list[int]
  offsets: list[Offset]

  def __post_init__(self):
    if not len(self.tokens) == len(self.ids) == len(self.offsets):
      raise ValueError(
        f"a segment needs as many ids and offsets as tokens, got {len(self.tokens)} tokens, "
        f"{len(self.ids)} ids and {len(self.offsets)} offsets"
      )

  def __len__(self) -> int:
    return len(self.ids)

  def head(self, n: int) -> Segment:
    """The first `n` tokens."""
    return Segment(self.tokens[:n], self.ids[:n], self.offsets[:n])


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
  """The tokens `assemble` inserts, with their ids."""

  cls_token: str
  cls_id: int
  sep_token: str
  sep_id: int
  pad_token: str
  pad_id: int


@dataclasses.dataclass(frozen=True)
class Encoding:
  """Model inputs for one text or text pair; every list has one entry per position.

  Attributes:
    input_ids: token ids, `[CLS] A [SEP] (B [SEP])` then padding.
    token_type_ids: 0 for `[CLS]`, A and its `[SEP]`; 1 for B and its `[SEP]`; 0 for padding.
    attention_mask: 1 for real tokens (special tokens included), 0 for padding.
    offsets: `(start, end)` character span of each token in its own original text (A's tokens
      index `text`, B's tokens index `text_pair`); `(0, 0)` for special and padding tokens.
    sequence_ids: 0 for tokens of A, 1 for tokens of B, None for special and padding tokens.
    tokens: the token strings (padding as `[PAD]`).
  """

  input_ids: list[int]
  token_type_ids: list[int]
  attention_mask: list[int]
  offsets: list[Offset]
  sequence_ids: list[int | None]
  tokens: list[str]

  def __len__(self) -> int:
    return len(self.input_ids)


def resolve_truncation(truncation: Truncation | bool) -> Truncation:
  """Checks a truncation strategy; True means `longest_first` and False means None."""
  if truncation is True:
    return "longest_first"
  if truncation is False or truncation is None:
    return None
  if truncation not in TRUNCATION_STRATEGIES:
    raise ValueError(
      f"truncation must be one of {TRUNCATION_STRATEGIES}, True, False or None, got {truncation!r}"
    )
  return truncation


def resolve_padding(padding: Padding | bool) -> Padding:
  """Checks a padding strategy; True means `longest` and False means None."""
  if padding is True:
    return "longest"
  if padding is False or padding is None:
    return None
  if padding not in PADDING_STRATEGIES:
    raise ValueError(
      f"padding must be one of {PADDING_STRATEGIES}, True, False or None, got {padding!r}"
    )
  return padding


def num_special_tokens(pair: bool, add_special_tokens: bool = True) -> int:
  """How many tokens `assemble` adds: 2 for one text, 3 for a pair (0 without special tokens)."""
  if not add_special_tokens:
    return 0
  return 3 if pair else 2


def truncated_lengths(
  len_a: int, len_b: int | None, budget: int, truncation: Truncation
) -> tuple[int, int | None]:
  """How many tokens of each sequence survive truncation to `budget` tokens in total.

  Args:
    len_a: tokens of the first sequence.
    len_b: tokens of the second sequence, or None without one.
    budget: tokens left for the sequences (maximum length minus special tokens), >= 0.
    truncation: the strategy; None keeps everything.

  Returns:
    `(kept_a, kept_b)`; `kept_b` is None when `len_b` is.

  Raises:
    ValueError: `only_first`/`only_second` cannot reach the budget, or `only_second` without a
      second sequence.
  """
  if budget < 0:
    raise ValueError(f"the token budget must be >= 0, got {budget}")
  total = len_a + (len_b or 0)
  excess = total - budget
  if truncation is None or excess <= 0:
    return len_a, len_b
  if truncation == "only_second" and len_b is None:
    raise ValueError("truncation='only_second' needs a text pair")
  if len_b is None or truncation == "only_first":
    if excess > len_a:
      raise ValueError(
        f"cannot truncate to {budget} tokens with {truncation!r}: the first sequence has "
        f"{len_a} tokens and {excess} must go"
      )
    return len_a - excess, len_b
  if truncation == "only_second":
    if excess > len_b:
      raise ValueError(
        f"cannot truncate to {budget} tokens with 'only_second': the second sequence has "
        f"{len_b} tokens and {excess} must go"
      )
    return len_a, len_b - excess
  # longest_first, in closed form: the longer sequence first shrinks to the shorter one's length,
  # then both shrink together, the second one first on each tie (so it loses the odd token).
  from_longer = min(abs(len_a - len_b), excess)
  rest = excess - from_longer
  if len_a > len_b:
    return len_a - from_longer - rest // 2, len_b - (rest - rest // 2)
  return len_a - rest // 2, len_b - from_longer - (rest - rest // 2)


def pad_encoding(encoding: Encoding, length: int, special: SpecialTokens) -> Encoding:
  """Right-pads `encoding` to `length` positions (no-op when it is already that long or longer)."""
  n = length - len(encoding)
  if n <= 0:
    return encoding
  return Encoding(
    input_ids=encoding.input_ids + [special.pad_id] * n,
    token_type_ids=encoding.token_type_ids + [0] * n,
    attention_mask=encoding.attention_mask + [0] * n,
    offsets=encoding.offsets + [(0, 0)] * n,
    sequence_ids=encoding.sequence_ids + [None] * n,
    tokens=encoding.tokens + [special.pad_token] * n,
  )


def assemble(
  first: Segment,
  second: Segment | None,
  special: SpecialTokens,
  *,
  max_length: int | None = None,
  truncation: Truncation | bool = "longest_first",
  padding: Padding | bool = None,
  add_special_tokens: bool = True,
) -> Encoding:
  """Truncates, adds BERT's special tokens and pads.

  Args:
    first: the first text's tokens.
    second: the second text's tokens, or None.
    special: `[CLS]`, `[SEP]` and `[PAD]` with their ids.
    max_length: the length to truncate to (and pad to with `padding="max_length"`); None leaves
      the length alone.
    truncation: `longest_first`, `only_first`, `only_second` or None (see the module docstring);
      it acts only when `max_length` is given.
    padding: `max_length` pads to `max_length`; `longest` and None leave a single encoding as is.
    add_special_tokens: False leaves out `[CLS]`/`[SEP]` (B's tokens still get type 1).

  Returns:
    The `Encoding`.

  Raises:
    ValueError: bad arguments, `max_length` smaller than the special tokens, or a strategy that
      cannot reach `max_length`.
  """
  truncation = resolve_truncation(truncation)
  padding = resolve_padding(padding)
  if max_length is not None and (isinstance(max_length, bool) or max_length < 0):
    raise ValueError(f"max_length must be a non-negative int or None, got {max_length!r}")
  if padding == "max_length" and max_length is None:
    raise ValueError("padding='max_length' needs max_length")
  pair = second is not None
  n_special = num_special_tokens(pair, add_special_tokens)
  if max_length is not None and truncation is not None:
    if max_length < n_special:
      raise ValueError(
        f"max_length={max_length} is smaller than the {n_special} special tokens a "
        f"{'pair' if pair else 'single text'} needs"
      )
    kept_a, kept_b = truncated_lengths(
      len(first), len(second) if pair else None, max_length - n_special, truncation
    )
    first = first.head(kept_a)
    if second is not None:
      second = second.head(kept_b)

  cls = ([special.cls_token], [special.cls_id], [(0, 0)], [None])
  sep = ([special.sep_token], [special.sep_id], [(0, 0)], [None])
  parts: list[tuple[list, list, list, list, int]] = []
  if add_special_tokens:
    parts.append((*cls, 0))
  parts.append((first.tokens, first.ids, first.offsets, [0] * len(first), 0))
  if add_special_tokens:
    parts.append((*sep, 0))
  if second is not None:
    parts.append((second.tokens, second.ids, second.offsets, [1] * len(second), 1))
    if add_special_tokens:
      parts.append((*sep, 1))
  tokens: list[str] = []
  ids: list[int] = []
  offsets: list[Offset] = []
  sequence_ids: list[int | None] = []
  types: list[int] = []
  for part_tokens, part_ids, part_offsets, part_sequence_ids, type_id in parts:
    tokens += part_tokens
    ids += part_ids
    offsets += part_offsets
    sequence_ids += part_sequence_ids
    types += [type_id] * len(part_ids)
  encoding = Encoding(
    input_ids=ids,
    token_type_ids=types,
    attention_mask=[1] * len(ids),
    offsets=offsets,
    sequence_ids=sequence_ids,
    tokens=tokens,
  )
  if padding == "max_length":
    encoding = pad_encoding(encoding, max_length, special)
  return encoding


def pad_batch(
  encodings: Sequence[Encoding], padding: Padding, max_length: int | None, special: SpecialTokens
) -> list[Encoding]:
  """Pads a batch: to `max_length`, or to its longest encoding with `padding='longest'`."""
  if padding == "longest":
    length = max((len(e) for e in encodings), default=0)
    return [pad_encoding(e, length, special) for e in encodings]
  return list(encodings)


class TokenizerBase(abc.ABC):
  """What the WordPiece and SentencePiece tokenizers share: vocabulary, special tokens, `encode`.

  Subclasses call `_set_vocab` and implement `_segment` (one text to a `Segment`) and `decode`.
  """

  _vocab: dict[str, int]
  _id_to_token: list[str]
  _specials: dict[str, str]  # role ("pad", "unk", "cls", "sep", "mask") -> token

  _ROLES = ("pad", "unk", "cls", "sep", "mask")

  def _set_vocab(self, vocab: dict[str, int], specials: dict[str, str], source: str) -> None:
    id_to_token = [""] * len(vocab)
    for token, index in vocab.items():
      if not isinstance(index, int) or not 0 <= index < len(vocab) or id_to_token[index]:
        raise ValueError(f"{source}: token ids must be 0..{len(vocab) - 1}, each used once")
      id_to_token[index] = token
    missing = [f"{role} token {tok!r}" for role, tok in specials.items() if tok not in vocab]
    if missing:
      raise ValueError(f"{source}: the vocabulary has no {', no '.join(missing)}")
    self._vocab = vocab
    self._id_to_token = id_to_token
    self._specials = dict(specials)
    self._special = SpecialTokens(
      cls_token=specials["cls"],
      cls_id=vocab[specials["cls"]],
      sep_token=specials["sep"],
      sep_id=vocab[specials["sep"]],
      pad_token=specials["pad"],
      pad_id=vocab[specials["pad"]],
    )
    self._unk_id = vocab[specials["unk"]]

  # Vocabulary and special tokens.

  @property
  def vocab(self) -> dict[str, int]:
    """Token -> id. The tokenizer's own dict: do not modify it."""
    return self._vocab

  @property
  def vocab_size(self) -> int:
    return len(self._vocab)

  def __len__(self) -> int:
    return len(self._vocab)

  @property
  def pad_token(self) -> str:
    return self._specials["pad"]

  @property
  def unk_token(self) -> str:
    return self._specials["unk"]

  @property
  def cls_token(self) -> str:
    return self._specials["cls"]

  @property
  def sep_token(self) -> str:
    return self._specials["sep"]

  @property
  def mask_token(self) -> str:
    return self._specials["mask"]

  @property
  def pad_token_id(self) -> int:
    return self._vocab[self._specials["pad"]]

  @property
  def unk_token_id(self) -> int:
    return self._unk_id

  @property
  def cls_token_id(self) -> int:
    return self._vocab[self._specials["cls"]]

  @property
  def sep_token_id(self) -> int:
    return self._vocab[self._specials["sep"]]

  @property
  def mask_token_id(self) -> int:
    return self._vocab[self._specials["mask"]]

  @property
  def all_special_tokens(self) -> list[str]:
    """The five special tokens, in the order pad, unk, cls, sep, mask."""
    return [self._specials[role] for role in self._ROLES]

  @property
  def all_special_ids(self) -> list[int]:
    return [self._vocab[token] for token in self.all_special_tokens]

  def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
    """Ids of `tokens`; tokens missing from the vocabulary get the unknown token's id."""
    if isinstance(tokens, str):
      raise TypeError("convert_tokens_to_ids takes a list of tokens, not a string")
    get, unk = self._vocab.get, self._unk_id
    return [get(token, unk) for token in tokens]

  def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
    """Tokens of `ids`.

    Raises:
      ValueError: an id outside `[0, vocab_size)`.
    """
    if isinstance(ids, (str, bytes)):
      raise TypeError("convert_ids_to_tokens takes a list of ids")
    table, n = self._id_to_token, len(self._id_to_token)
    out = []
    for index in ids:
      index = int(index)
      if not 0 <= index < n:
        raise ValueError(f"token id {index} is outside the vocabulary (size {n})")
      out.append(table[index])
    return out

  # Tokenisation.

  @abc.abstractmethod
  def _segment(self, text: str) -> Segment:
    """Tokens, ids and character offsets of one text (no special tokens added)."""

  def _segments(self, texts: Sequence[str]) -> list[Segment]:
    return [self._segment(text) for text in texts]

  @staticmethod
  def _check_text(text: object, name: str = "text") -> str:
    if not isinstance(text, str):
      raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    return text

  def tokenize(self, text: str) -> list[str]:
    """The tokens of `text`, special tokens written in the text included."""
    return self._segment(self._check_text(text)).tokens

  def tokenize_with_offsets(self, text: str) -> tuple[list[str], list[Offset]]:
    """The tokens of `text` and the `(start, end)` character span of each in `text`."""
    segment = self._segment(self._check_text(text))
    return segment.tokens, segment.offsets

  def encode(
    self,
    text: str,
    text_pair: str | None = None,
    *,
    max_length: int | None = None,
    truncation: Truncation | bool = "longest_first",
    padding: Padding | bool = None,
    add_special_tokens: bool = True,
  ) -> Encoding:
    """Model inputs for `text` (and `text_pair`): `[CLS] A [SEP] (B [SEP])`, truncated, padded.

    Args:
      text: the first text.
      text_pair: the optional second text.
      max_length: length to truncate to (and to pad to with `padding="max_length"`).
      truncation: `longest_first` (default), `only_first`, `only_second` or None; acts only
        with `max_length`. See `mobilebert_jax.tokenization.encoding` for the exact rules.
      padding: None or `max_length`.
      add_special_tokens: False leaves out `[CLS]` and `[SEP]`.

    Returns:
      An `Encoding`.

    Raises:
      ValueError: `max_length` too small for the special tokens, or a truncation strategy that
        cannot reach it.
    """
    first = self._segment(self._check_text(text))
    second = None if text_pair is None else self._segment(self._check_text(text_pair, "text_pair"))
    return assemble(
      first,
      second,
      self._special,
      max_length=max_length,
      truncation=truncation,
      padding=padding,
      add_special_tokens=add_special_tokens,
    )

  def batch_encode(
    self,
    texts: Sequence[str],
    text_pairs: Sequence[str] | None = None,
    *,
    max_length: int | None = None,
    truncation: Truncation | bool = "longest_first",
    padding: Padding | bool = None,
    add_special_tokens: bool = True,
  ) -> list[Encoding]:
    """`encode` for a batch; `padding="longest"` pads to the batch's longest encoding."""
    if isinstance(texts, str):
      raise TypeError("batch_encode takes a list of texts; use encode for one text")
    texts = [self._check_text(t) for t in texts]
    padding = resolve_padding(padding)
    firsts = self._segments(texts)
    if text_pairs is None:
      seconds: list[Segment | None] = [None] * len(firsts)
    else:
      if isinstance(text_pairs, str) or len(text_pairs) != len(texts):
        raise ValueError("text_pairs must be a list with one entry per text")
      seconds = list(self._segments([self._check_text(t, "text_pair") for t in text_pairs]))
    encodings = [
      assemble(
        a,
        b,
        self._special,
        max_length=max_length,
        truncation=truncation,
        padding="max_length" if padding == "max_length" else None,
        add_special_tokens=add_special_tokens,
      )
      for a, b in zip(firsts, seconds, strict=True)
    ]
    return pad_batch(encodings, padding, max_length, self._special)

  @abc.abstractmethod
  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`."""
