"""`SentencePieceTokenizer`: the `WordPieceTokenizer` interface over a SentencePiece `.model`.

For SentencePiece vocabularies such as ALBERT's `30k-clean.model`. Tokens and ids are exactly what
the `sentencepiece` library returns for the (optionally lower-cased) text; offsets are the
library's own character offsets (`encode(..., return_type="offset_mapping")`, which replaces
`encode_as_immutable_proto` in current sentencepiece releases), mapped back to the original text
when lower-casing changed its length. A piece's span is its surface in the original text, so it
includes the whitespace its leading `▁` stands for (`▁world` spans ` world`); a `▁` with no
surface has an empty span.

The special tokens are pieces of the model: by default its pad and unknown pieces (`<pad>`,
`<unk>`) and `[CLS]`, `[SEP]`, `[MASK]`. SentencePiece never produces control symbols from text
(ALBERT's `[CLS]`/`[SEP]`/`[MASK]` are control symbols), so writing `[MASK]` in a text does not
give the mask token unless the model declares it a user-defined symbol; data pipelines insert the
special ids themselves.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import sentencepiece as spm

from mobilebert_jax.tokenization.encoding import Segment, TokenizerBase

__all__ = ["SentencePieceTokenizer"]

PathLike = str | os.PathLike


def _lower_with_map(text: str, keep: re.Pattern[str] | None) -> tuple[str, list[int] | None]:
  """Lower-cases `text` except matches of `keep`; returns the text and, when its length changed,
  the original index of each of its characters.
  """
  pieces: list[tuple[str, bool]] = []  # (text, lower-case it?)
  position = 0
  for match in keep.finditer(text) if keep is not None else ():
    pieces += [(text[position : match.start()], True), (match.group(), False)]
    position = match.end()
  pieces.append((text[position:], True))
  lowered = "".join(p.lower() if lower else p for p, lower in pieces)
  if len(lowered) == len(text):
    return lowered, None
  # How many characters a character lower-cases to does not depend on its neighbours (only the
  # final-sigma rule is contextual, and it maps one character to one).
  index: list[int] = []
  i = 0
  for piece, lower in pieces:
    for ch in piece:
      index.extend([i] * (len(ch.lower()) if lower else 1))
      i += 1
  return lowered, index


class SentencePieceTokenizer(TokenizerBase):
  """A SentencePiece model with BERT's special tokens and `encode`.

  Args:
    model_proto: the serialized `ModelProto` (the bytes of a `.model` file).
    do_lower_case: lower-case text (Python's `str.lower`) before SentencePiece sees it; the five
      special tokens written in the text keep their case (other user-defined pieces of the model
      must then be lower-case to match).
    pad_token, unk_token: default to the model's pad and unknown pieces (`<pad>` or `[PAD]` when
      the model defines no pad id).
    cls_token, sep_token, mask_token: pieces of the model.
    source: how to name the model in error messages.

  Raises:
    ValueError: the bytes are not a SentencePiece model, or a special token is not a piece.
  """

  def __init__(
    self,
    model_proto: bytes,
    *,
    do_lower_case: bool = False,
    pad_token: str | None = None,
    unk_token: str | None = None,
    cls_token: str = "[CLS]",
    sep_token: str = "[SEP]",
    mask_token: str = "[MASK]",
    source: str = "SentencePiece model",
  ):
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(model_proto)
    except (RuntimeError, OSError, TypeError) as e:
      raise ValueError(f"{source}: not a SentencePiece model ({e})") from None
    self._sp = processor
    self._model_proto = bytes(model_proto)
    self._do_lower_case = bool(do_lower_case)
    size = processor.get_piece_size()
    vocab = {processor.id_to_piece(i): i for i in range(size)}
    if len(vocab) != size:  # pragma: no cover - SentencePiece guarantees unique pieces
      raise ValueError(f"{source}: the model has duplicate pieces")
    if unk_token is None:
      unk_token = processor.id_to_piece(processor.unk_id())
    if pad_token is None:
      if processor.pad_id() >= 0:
        pad_token = processor.id_to_piece(processor.pad_id())
      else:
        pad_token = next((t for t in ("<pad>", "[PAD]") if t in vocab), "<pad>")
    specials = {"pad": pad_token, "unk": unk_token, "cls": cls_token, "sep": sep_token}
    specials["mask"] = mask_token
    self._set_vocab(vocab, specials, source)
    # Special tokens written in the text are not lower-cased (as in transformers).
    self._keep_case = re.compile(
      "|".join(re.escape(t) for t in sorted(set(specials.values()), key=lambda t: (-len(t), t)))
    )

  @classmethod
  def from_file(
    cls, model_path: PathLike, do_lower_case: bool = False, **kwargs
  ) -> SentencePieceTokenizer:
    """Loads a SentencePiece `.model` file.

    Args:
      model_path: the model file.
      do_lower_case: lower-case text before encoding (for models trained on lower-cased text).
      **kwargs: the other arguments of `SentencePieceTokenizer`.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a SentencePiece model, or a special token missing from it.
    """
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model not found: {model_path}")
    with open(model_path, "rb") as f:
      proto = f.read()
    return cls(proto, do_lower_case=do_lower_case, source=model_path, **kwargs)

  @property
  def do_lower_case(self) -> bool:
    return self._do_lower_case

  @property
  def processor(self) -> spm.SentencePieceProcessor:
    """The underlying `sentencepiece.SentencePieceProcessor`."""
    return self._sp

  @property
  def model_proto(self) -> bytes:
    """The serialized model."""
    return self._model_proto

  def __repr__(self) -> str:
    return (
      f"SentencePieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case})"
    )

  def _prepare(self, text: str) -> tuple[str, list[int] | None]:
    return _lower_with_map(text, self._keep_case) if self._do_lower_case else (text, None)

  @staticmethod
  def _to_segment(mapping: dict, index: list[int] | None, length: int) -> Segment:
    offsets = mapping["offsets"]
    if index is not None:
      # Offsets index the lowered text; map them back to the original characters.
      index = [*index, length]
      offsets = [(index[s], index[e - 1] + 1 if e > s else index[s]) for s, e in offsets]
    return Segment(list(mapping["pieces"]), list(mapping["ids"]), [tuple(o) for o in offsets])

  def _segment(self, text: str) -> Segment:
    prepared, index = self._prepare(text)
    mapping = self._sp.encode(prepared, return_type="offset_mapping")
    return self._to_segment(mapping, index, len(text))

  def _segments(self, texts: Sequence[str]) -> list[Segment]:
    prepared = [self._prepare(t) for t in texts]
    mappings = self._sp.encode([p for p, _ in prepared], return_type="offset_mapping")
    return [
      self._to_segment(m, index, len(t))
      for m, (_, index), t in zip(mappings, prepared, texts, strict=True)
    ]

  def basic_tokenize(self, text: str) -> list[str]:
    """The whitespace-separated words of the (optionally lower-cased) text.

    SentencePiece has no separate pre-tokenisation step; these are the units it marks with `▁`.
    """
    return self._prepare(self._check_text(text))[0].split()

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`, decoded by SentencePiece.

    Args:
      ids: token ids.
      skip_special_tokens: leave out the five special tokens (the unknown token included, as
        transformers does). When kept, they are written as their piece, separated by spaces
        (SentencePiece itself would drop control symbols).
    """
    ids = [int(i) for i in ids]
    self.convert_ids_to_tokens(ids)  # Range check.
    special = set(self.all_special_ids)
    if skip_special_tokens:
      return self._sp.decode([i for i in ids if i not in special])
    parts: list[str] = []
    run: list[int] = []
    for i in ids:
      if i in special:
        if run:
          parts.append(self._sp.decode(run))
          run = []
        parts.append(self._id_to_token[i])
      else:
        run.append(i)
    if run:
      parts.append(self._sp.decode(run))
    return " ".join(p for p in parts if p)
