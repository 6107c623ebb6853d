"""`WordPieceTokenizer`: BERT's tokenizer over a `vocab.txt`, run by HF `tokenizers` (Rust).

The output equals that of transformers' slow Python BERT tokenizer (`BertTokenizerLegacy`, the
algorithm of google-research/bert plus NFC normalisation and special-token handling): the same
tokens, on any text. How the Rust pipeline is made to agree with the Python reference is described
in `mobilebert_jax.tokenization.basic_tokenizer`; texts the Rust pipeline cannot handle exactly
(rare characters from recent Unicode versions, lone surrogates, `never_split` words) go through an
exact pure-Python path instead.

Special tokens written in the text (`[MASK]`, `[SEP]`, ...) are recognised wherever they occur, as
transformers does. Offsets are character spans into the original text.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, models

from mobilebert_jax import atomic_files
from mobilebert_jax.tokenization import basic_tokenizer
from mobilebert_jax.tokenization.basic_tokenizer import SENTINEL, BasicOptions, Word
from mobilebert_jax.tokenization.encoding import Segment, TokenizerBase

__all__ = ["WordPieceTokenizer", "load_vocab", "save_vocab"]

PathLike = str | os.PathLike


def load_vocab(path: PathLike) -> dict[str, int]:
  """Reads a BERT `vocab.txt`: one token per line, the id of a token is its line number - 1.

  Lines end with `\\n`, `\\r\\n` or `\\r` (as Python's universal newlines read them); a final
  newline is optional; a UTF-8 byte-order mark at the start is ignored.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not UTF-8, is empty, or has an empty line, a token with whitespace or
      a token that appears twice (the message names the file and line).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"vocabulary file not found: {path}")
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise ValueError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  if lines and lines[-1] == "":
    lines.pop()  # The newline that ends the last line.
  if not lines:
    raise ValueError(f"{path}: the vocabulary is empty")
  vocab: dict[str, int] = {}
  for index, token in enumerate(lines):
    where = f"{path}:{index + 1}"
    if not token:
      raise ValueError(f"{where}: empty line (every line must hold one token)")
    if any(c.isspace() for c in token):
      raise ValueError(f"{where}: token {token!r} contains whitespace")
    if token in vocab:
      raise ValueError(f"{where}: duplicate token {token!r} (first on line {vocab[token] + 1})")
    vocab[token] = index
  return vocab


def save_vocab(vocab: Mapping[str, int], path: PathLike) -> None:
  """Writes `vocab` as a `vocab.txt` (tokens in id order, one per line)."""
  tokens = sorted(vocab, key=vocab.__getitem__)
  if [vocab[t] for t in tokens] != list(range(len(tokens))):
    raise ValueError("token ids must be 0..len(vocab)-1, each used once")
  # Atomically: a run killed while writing must not leave a truncated vocabulary to reuse.
  with atomic_files.open_for_write(os.fspath(path), "w") as f:
    f.write("".join(f"{t}\n" for t in tokens))


class WordPieceTokenizer(TokenizerBase):
  """BERT's WordPiece tokenizer.

  Args:
    vocab: token -> id, ids `0..len(vocab)-1`.
    do_lower_case: lower-case the text (uncased models).
    strip_accents: remove accents; None (default) follows `do_lower_case`, as in BERT.
    tokenize_chinese_chars: make every CJK ideograph a word of its own.
    never_split: words that are never lower-cased or split (each must be in the vocabulary).
    unk_token, sep_token, pad_token, cls_token, mask_token: the special tokens (all must be in the
      vocabulary).
    max_input_chars_per_word: longer words become the unknown token.
    source: how to name the vocabulary in error messages.

  Raises:
    ValueError: a special token or `never_split` word missing from the vocabulary, or ids that
      are not `0..len(vocab)-1`.
  """

  def __init__(
    self,
    vocab: Mapping[str, int],
    *,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    never_split: Iterable[str] | None = None,
    unk_token: str = "[UNK]",
    sep_token: str = "[SEP]",
    pad_token: str = "[PAD]",
    cls_token: str = "[CLS]",
    mask_token: str = "[MASK]",
    max_input_chars_per_word: int = 100,
    source: str = "vocabulary",
  ):
    specials = {"pad": pad_token, "unk": unk_token, "cls": cls_token, "sep": sep_token}
    specials["mask"] = mask_token
    self._set_vocab(dict(vocab), specials, source)
    self._options = BasicOptions(
      do_lower_case=bool(do_lower_case),
      strip_accents=strip_accents,
      tokenize_chinese_chars=bool(tokenize_chinese_chars),
    )
    self._max_chars = int(max_input_chars_per_word)
    self._never_split = frozenset(never_split or ())
    for word in sorted(self._never_split):
      # The reference would keep such a word but map it to [UNK]; almost surely a mistake.
      if word not in self._vocab:
        raise ValueError(f"{source}: never_split word {word!r} is not in the vocabulary")
      if len(word) > self._max_chars:
        raise ValueError(
          f"never_split word {word!r} is longer than max_input_chars_per_word={self._max_chars}"
        )
    self._special_tokens = special_tokens = frozenset(self.all_special_tokens)
    # The reference protects special tokens from lower-casing and splitting too.
    self._protected = self._never_split | special_tokens
    # Special tokens are cut out of the raw text first, leftmost and longest first.
    self._special_re = re.compile(
      "|".join(re.escape(t) for t in sorted(special_tokens, key=lambda t: (-len(t), t)))
    )
    self._backend = self._build_backend()

  @classmethod
  def from_file(
    cls, vocab_path: PathLike, do_lower_case: bool = True, **kwargs
  ) -> WordPieceTokenizer:
    """Loads a BERT `vocab.txt` (see `load_vocab` for the format and its checks).

    Args:
      vocab_path: the vocabulary file.
      do_lower_case: True for uncased vocabularies.
      **kwargs: the other arguments of `WordPieceTokenizer`.
    """
    vocab_path = os.fspath(vocab_path)
    return cls(load_vocab(vocab_path), do_lower_case=do_lower_case, source=vocab_path, **kwargs)

  def _build_backend(self) -> Tokenizer:
    n = len(self._vocab)
    # The sentinel (and its continuation form) get ids past the vocabulary, so a text in which
    # the normaliser protected a word shows up by its ids and is re-done in Python.
    rust_vocab = dict(self._vocab)
    rust_vocab[SENTINEL] = n
    rust_vocab["##" + SENTINEL] = n + 1
    backend = Tokenizer(
      models.WordPiece(
        rust_vocab,
        unk_token=self.unk_token,
        max_input_chars_per_word=self._max_chars,
        continuing_subword_prefix="##",
      )
    )
    backend.normalizer = basic_tokenizer.build_normalizer(self._options, self._protected)
    backend.pre_tokenizer = basic_tokenizer.build_pre_tokenizer(self._options)
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(
      [AddedToken(t, special=True, normalized=False) for t in self.all_special_tokens]
    )
    return backend

  # Options.

  @property
  def do_lower_case(self) -> bool:
    return self._options.do_lower_case

  @property
  def strip_accents(self) -> bool | None:
    return self._options.strip_accents

  @property
  def tokenize_chinese_chars(self) -> bool:
    return self._options.tokenize_chinese_chars

  @property
  def never_split(self) -> frozenset[str]:
    return self._never_split

  @property
  def max_input_chars_per_word(self) -> int:
    return self._max_chars

  def __repr__(self) -> str:
    return (
      f"WordPieceTokenizer(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
      f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars})"
    )

  # Tokenisation.

  def _segment(self, text: str) -> Segment:
    if basic_tokenizer.needs_python_path(text):
      return self._python_segment(text)
    encoding = self._backend.encode(text, add_special_tokens=False)
    return self._from_backend(text, encoding)

  def _segments(self, texts: Sequence[str]) -> list[Segment]:
    rust = [i for i, t in enumerate(texts) if not basic_tokenizer.needs_python_path(t)]
    out: list[Segment | None] = [None] * len(texts)
    encodings = self._backend.encode_batch([texts[i] for i in rust], add_special_tokens=False)
    for i, encoding in zip(rust, encodings, strict=True):
      out[i] = self._from_backend(texts[i], encoding)
    return [
      s if s is not None else self._python_segment(t) for s, t in zip(out, texts, strict=True)
    ]

  def _from_backend(self, text: str, encoding) -> Segment:
    ids = encoding.ids
    if ids and max(ids) >= len(self._vocab):  # A protected word: see `_build_backend`.
      return self._python_segment(text)
    tokens = encoding.tokens
    offsets = basic_tokenizer.widen_offsets(
      text, tokens, encoding.offsets, self._options, self._special_tokens
    )
    return Segment(tokens, ids, offsets)

  def _python_words(self, text: str) -> list[Word]:
    """The basic step in pure Python; special tokens come out as protected words."""
    words: list[Word] = []
    position = 0
    for match in self._special_re.finditer(text):
      words += basic_tokenizer.split_words(
        text[position : match.start()], self._options, self._protected, offset=position
      )
      token = match.group()
      spans = tuple((match.start() + i, match.start() + i + 1) for i in range(len(token)))
      words.append(Word(token, spans, protected=True))
      position = match.end()
    words += basic_tokenizer.split_words(
      text[position:], self._options, self._protected, offset=position
    )
    return words

  def _python_segment(self, text: str) -> Segment:
    tokens: list[str] = []
    offsets: list[tuple[int, int]] = []
    for word in self._python_words(text):
      if word.text in self._never_split:
        tokens.append(word.text)
        offsets.append((word.start, word.end))
        continue
      for piece, start, end in self._wordpiece(word):
        tokens.append(piece)
        offsets.append((start, end))
    return Segment(tokens, self.convert_tokens_to_ids(tokens), offsets)

  def _wordpiece(self, word: Word) -> list[tuple[str, int, int]]:
    """Greedy longest-match-first WordPiece over one word, with character spans."""
    text, spans, vocab = word.text, word.spans, self._vocab
    if len(text) > self._max_chars:
      return [(self.unk_token, word.start, word.end)]
    pieces = []
    start = 0
    while start < len(text):
      for end in range(len(text), start, -1):
        piece = text[start:end] if start == 0 else "##" + text[start:end]
        if piece in vocab:
          break
      else:
        return [(self.unk_token, word.start, word.end)]
      pieces.append((piece, spans[start][0], max(e for _, e in spans[start:end])))
      start = end
    return pieces

  def basic_tokenize(self, text: str) -> list[str]:
    """BERT's basic step alone: cleaning, lower-casing/accent stripping, CJK and punctuation
    splitting; special tokens in the text come out whole.
    """
    text = self._check_text(text)
    if not basic_tokenizer.needs_python_path(text):
      normalize = self._backend.normalizer.normalize_str
      pre_tokenize = self._backend.pre_tokenizer.pre_tokenize_str
      words: list[str] = []
      position = 0
      for match in [*self._special_re.finditer(text), None]:
        end = len(text) if match is None else match.start()
        words += [w for w, _ in pre_tokenize(normalize(text[position:end]))]
        if match is not None:
          words.append(match.group())
          position = match.end()
      if not any(SENTINEL in w for w in words):  # Else a protected word: see `_build_backend`.
        return words
    return [word.text for word in self._python_words(text)]

  def decode(
    self,
    ids: Sequence[int],
    skip_special_tokens: bool = True,
    clean_up_tokenization_spaces: bool = True,
  ) -> str:
    """Text of `ids` the way transformers' BERT tokenizer decodes.

    Tokens are joined by spaces, `##` continuations glued to their word, and (by default) the
    spaces transformers' `clean_up_tokenization` removes (before `.`, `,`, `?`, `!` and some
    English contractions) are removed.

    Args:
      ids: token ids.
      skip_special_tokens: leave out the five special tokens (`[UNK]` included, as transformers
        does).
      clean_up_tokenization_spaces: apply the clean-up described above.
    """
    tokens = self.convert_ids_to_tokens(ids)
    if skip_special_tokens:
      special = set(self.all_special_tokens)
      tokens = [t for t in tokens if t not in special]
    text = " ".join(tokens).replace(" ##", "").strip()
    if clean_up_tokenization_spaces:
      text = _clean_up_tokenization(text)
    return text

  def save_vocabulary(self, path: PathLike) -> str:
    """Writes the vocabulary as a `vocab.txt` at `path` (a file, or a directory to put it in)."""
    path = os.fspath(path)
    if os.path.isdir(path):
      path = os.path.join(path, "vocab.txt")
    save_vocab(self._vocab, path)
    return path


def _clean_up_tokenization(text: str) -> str:
  # The replacements of transformers' `PreTrainedTokenizerBase.clean_up_tokenization`.
  for before, after in (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
  ):
    text = text.replace(before, after)
  return text
