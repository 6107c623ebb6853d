"""BERT's basic tokenisation step, twice: as a `tokenizers` (Rust) pipeline and in pure Python.

The step (google-research/bert's `BasicTokenizer`, as transformers' slow `BertTokenizerLegacy`
runs it) turns text into words before WordPiece:

1. clean: drop NUL, U+FFFD and every character of a Unicode category C* (controls, format
   characters such as ZWJ/ZWNJ/soft hyphen/BOM, private use, unassigned) except tab, newline and
   carriage return; turn tab/newline/CR and category Zs into spaces;
2. put spaces around each CJK ideograph (the code point ranges in `CJK_RANGES`);
3. NFC-normalise (transformers added this; google-research/bert does not);
4. split on whitespace; a word that is in `never_split` is kept as it is;
5. lower-case (Python's `str.lower`, with its final-sigma rule) and strip accents (NFD, then drop
   category Mn), as configured;
6. split off every punctuation character (category P*, plus all non-alphanumeric ASCII).

Every character class is taken from Python's `unicodedata`, the database the reference uses. The
`tokenizers` building blocks that would do the same jobs (`BertNormalizer`, `BertPreTokenizer`,
`StripAccents`) use their own, older, Unicode tables and rules, so the Rust pipeline is built from
`Replace` steps whose character classes are generated here from `unicodedata`. Three gaps remain
in the Rust building blocks, and they are closed as follows:

* `Lowercase` maps characters one by one, so it cannot apply Python's final-sigma rule; a `Replace`
  step turns a final capital sigma into `ς` first, with case properties probed from Python itself.
* The `NFC`/`NFD` steps use older Unicode tables than Python 3.11's (Unicode 14): about a
  hundred combining marks added since count as starters there, and one composition is missing.
  The tables are compared with Python's at first use; a text holding any character on which they
  disagree (or a lone surrogate, which Rust strings cannot carry) takes the pure-Python path.
* `never_split` words must not be lower-cased or split, which no Rust step can express; the
  pipeline marks them with a private-use sentinel and such texts take the pure-Python path.

The pure-Python path (`split_words`) follows the reference step by step and tracks, for every
output character, the span of the original text it came from.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable

from tokenizers import Regex, normalizers, pre_tokenizers

__all__ = [
  "CJK_RANGES",
  "SENTINEL",
  "BasicOptions",
  "Word",
  "build_normalizer",
  "build_pre_tokenizer",
  "is_cjk_char",
  "is_control_char",
  "is_punctuation_char",
  "is_whitespace_char",
  "needs_python_path",
  "split_words",
  "widen_offsets",
]

CJK_RANGES: tuple[tuple[int, int], ...] = (
  (0x4E00, 0x9FFF),
  (0x3400, 0x4DBF),
  (0x20000, 0x2A6DF),
  (0x2A700, 0x2B73F),
  (0x2B740, 0x2B81F),
  (0x2B820, 0x2CEAF),
  (0xF900, 0xFAFF),
  (0x2F800, 0x2FA1F),
)
"""Code points BERT treats as CJK ideographs (google-research/bert `_is_chinese_char`)."""

SENTINEL = "\ue000"
"""Private-use character that replaces `never_split` words in the Rust pipeline. Cleaning removes
every private-use character from the input first, so a sentinel can only come from that step."""

_CASE_PROBE_SIGMA = "\u03a3"  # GREEK CAPITAL LETTER SIGMA


def is_cjk_char(ch: str) -> bool:
  """Whether `ch` is one of the ideographs BERT splits into single-character words."""
  cp = ord(ch)
  # Spelled out (same ranges as CJK_RANGES): this runs once per character on the Python path.
  return (
    0x4E00 <= cp <= 0x9FFF
    or 0x3400 <= cp <= 0x4DBF
    or 0x20000 <= cp <= 0x2A6DF
    or 0x2A700 <= cp <= 0x2B73F
    or 0x2B740 <= cp <= 0x2B81F
    or 0x2B820 <= cp <= 0x2CEAF
    or 0xF900 <= cp <= 0xFAFF
    or 0x2F800 <= cp <= 0x2FA1F
  )


def is_control_char(ch: str) -> bool:
  """Whether cleaning removes `ch`: NUL, U+FFFD, or category C* other than tab/newline/CR."""
  if ch in "\t\n\r":
    return False
  return ch == "\ufffd" or unicodedata.category(ch)[0] == "C"


def is_whitespace_char(ch: str) -> bool:
  """Whether cleaning turns `ch` into a space.

  The reference maps tab/newline/CR/Zs to a space and later splits with `str.split`, which also
  splits on U+2028/U+2029 (Zl/Zp); treating those as spaces here gives the same words.
  """
  if is_control_char(ch):
    return False
  return ch in " \t\n\r" or unicodedata.category(ch) == "Zs" or ch.isspace()


def is_punctuation_char(ch: str) -> bool:
  """BERT's punctuation: category P*, and every ASCII character that is not a letter/digit."""
  cp = ord(ch)
  if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
    return True
  return unicodedata.category(ch)[0] == "P"


@dataclasses.dataclass(frozen=True)
class BasicOptions:
  """What the basic step does besides cleaning and punctuation splitting.

  Attributes:
    do_lower_case: lower-case every word that is not in `never_split`.
    strip_accents: drop combining marks after NFD; None follows `do_lower_case` (as in BERT).
    tokenize_chinese_chars: make every CJK ideograph a word of its own.
  """

  do_lower_case: bool = True
  strip_accents: bool | None = None
  tokenize_chinese_chars: bool = True

  @property
  def strips_accents(self) -> bool:
    return self.do_lower_case if self.strip_accents is None else self.strip_accents

  def normalize_word(self, word: str) -> str:
    """Step 5 on one whitespace-separated word (lower-casing, then accent stripping)."""
    if self.do_lower_case:
      word = word.lower()
    if self.strips_accents:
      word = "".join(
        c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn"
      )
    return word


# ---------------------------------------------------------------------------------------------
# Pure-Python path with character spans.

Span = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Word:
  """One word of the basic step.

  Attributes:
    text: the normalised word.
    spans: for each character of `text`, the span of the original text it came from. Characters
      that NFC composes share the span of the whole composition; an accent that stripping drops
      joins the span of the character before it.
    protected: the word is a `never_split` entry kept as it was written.
  """

  text: str
  spans: tuple[Span, ...]
  protected: bool = False

  @property
  def start(self) -> int:
    return self.spans[0][0]

  @property
  def end(self) -> int:
    return max(end for _, end in self.spans)


def _nfc_is_boundary(chunk: str, ch: str) -> bool:
  """Whether NFC of `chunk + ch + rest` is NFC(chunk) + NFC(ch + rest) for any `rest`.

  True when `ch` starts (after decomposition) with a starter, so nothing after it can reorder or
  compose across it, and does not itself compose with `chunk` (Hangul jamo, some Indic vowels).
  """
  if unicodedata.combining(ch) or unicodedata.combining(unicodedata.normalize("NFD", ch)[0]):
    return False
  nfc = unicodedata.normalize
  return nfc("NFC", chunk + ch) == nfc("NFC", chunk) + nfc("NFC", ch)


def _nfd_is_boundary(_: str, ch: str) -> bool:
  # Decomposition is per character; reordering only moves non-starters past each other.
  return unicodedata.combining(unicodedata.normalize("NFD", ch)[0]) == 0


def _normalize_aligned(
  chars: list[str],
  spans: list[Span],
  form: str,
  is_boundary: Callable[[str, str], bool],
) -> tuple[list[str], list[Span]]:
  """Unicode-normalises `chars`, keeping one span per output character.

  The text is cut into chunks that normalise independently. A chunk whose characters normalise
  one by one keeps their spans; otherwise every output character of the chunk gets the span of
  the whole chunk (composition and reordering mix its characters).
  """
  if unicodedata.is_normalized(form, "".join(chars)):  # Most text: nothing to do.
    return chars, spans
  out_chars: list[str] = []
  out_spans: list[Span] = []
  start = 0

  def flush(end: int) -> None:
    if start == end:
      return
    pieces = [unicodedata.normalize(form, c) for c in chars[start:end]]
    whole = unicodedata.normalize(form, "".join(chars[start:end]))
    if "".join(pieces) == whole:
      for piece, span in zip(pieces, spans[start:end], strict=True):
        out_chars.extend(piece)
        out_spans.extend([span] * len(piece))
    else:
      span = (spans[start][0], max(e for _, e in spans[start:end]))
      out_chars.extend(whole)
      out_spans.extend([span] * len(whole))

  for i, ch in enumerate(chars):
    if i > start and is_boundary("".join(chars[start:i]), ch):
      flush(i)
      start = i
  flush(len(chars))
  return out_chars, out_spans


def _lower_aligned(chars: list[str], spans: list[Span]) -> tuple[list[str], list[Span]]:
  # Lower-case the whole word at once (the final-sigma rule looks at neighbours); the length a
  # character lower-cases to does not depend on its neighbours, so spans follow per character.
  lowered = "".join(chars).lower()
  if len(lowered) == len(chars):  # Then every character lower-cased to one.
    return list(lowered), spans
  out_spans: list[Span] = []
  for ch, span in zip(chars, spans, strict=True):
    out_spans.extend([span] * len(ch.lower()))
  if len(out_spans) != len(lowered):  # pragma: no cover - would be a CPython change
    raise AssertionError("str.lower changed length depending on context")
  return list(lowered), out_spans


def _strip_marks(chars: list[str], spans: list[Span]) -> tuple[list[str], list[Span]]:
  """Drops category Mn; a dropped mark's span joins that of the character before it."""
  kept_chars: list[str] = []
  kept_spans: list[Span] = []
  for ch, span in zip(chars, spans, strict=True):
    if unicodedata.category(ch) != "Mn":
      kept_chars.append(ch)
      kept_spans.append(span)
    elif kept_spans:
      kept_spans[-1] = (kept_spans[-1][0], max(kept_spans[-1][1], span[1]))
  return kept_chars, kept_spans


def _split_on_punctuation(chars: list[str], spans: list[Span]) -> list[Word]:
  words: list[Word] = []
  current: list[int] = []

  def flush() -> None:
    if current:
      words.append(Word("".join(chars[i] for i in current), tuple(spans[i] for i in current)))
      current.clear()

  for i, ch in enumerate(chars):
    if is_punctuation_char(ch):
      flush()
      words.append(Word(ch, (spans[i],)))
    else:
      current.append(i)
  flush()
  return words


def split_words(
  text: str,
  options: BasicOptions,
  never_split: frozenset[str] = frozenset(),
  offset: int = 0,
) -> list[Word]:
  """BERT's basic step on `text`, with the original span of every character.

  Args:
    text: raw text (special tokens already split off by the caller).
    options: lower-casing, accent stripping and CJK splitting.
    never_split: words that are neither lower-cased nor split when the reference meets them
      (after cleaning and NFC), or after normalisation right before punctuation splitting.
    offset: added to every span (the position of `text` in a longer string).

  Returns:
    The words, in order.
  """
  # Steps 1-2: clean, and cut into whitespace-separated runs; CJK ideographs are runs of their own.
  runs: list[tuple[list[str], list[Span]]] = []
  run_chars: list[str] = []
  run_spans: list[Span] = []

  def end_run() -> None:
    nonlocal run_chars, run_spans
    if run_chars:
      runs.append((run_chars, run_spans))
      run_chars, run_spans = [], []

  for i, ch in enumerate(text):
    if is_control_char(ch):
      continue
    if is_whitespace_char(ch):
      end_run()
    elif options.tokenize_chinese_chars and is_cjk_char(ch):
      end_run()
      runs.append(([ch], [(offset + i, offset + i + 1)]))
    else:
      run_chars.append(ch)
      run_spans.append((offset + i, offset + i + 1))
  end_run()

  words: list[Word] = []
  for chars, spans in runs:
    # Step 3. A space is a stable NFC boundary, so normalising run by run equals normalising all.
    chars, spans = _normalize_aligned(chars, spans, "NFC", _nfc_is_boundary)
    token = "".join(chars)
    if token in never_split:  # Step 4.
      words.append(Word(token, tuple(spans), protected=True))
      continue
    if options.do_lower_case:  # Step 5.
      chars, spans = _lower_aligned(chars, spans)
    if options.strips_accents:
      chars, spans = _normalize_aligned(chars, spans, "NFD", _nfd_is_boundary)
      chars, spans = _strip_marks(chars, spans)
    if not chars:
      continue
    token = "".join(chars)
    if token in never_split:  # The reference checks again before splitting punctuation.
      words.append(Word(token, tuple(spans), protected=True))
      continue
    words.extend(_split_on_punctuation(chars, spans))  # Step 6.
  return words


# ---------------------------------------------------------------------------------------------
# Character tables for the Rust pipeline, generated from Python's `unicodedata`.


@dataclasses.dataclass(frozen=True)
class _Tables:
  removed: str  # Oniguruma class bodies.
  whitespace: str
  punctuation: str
  cjk: str
  nonspacing_marks: str
  cased: str  # Cased and not case-ignorable: where the final-sigma scan stops on a cased letter.
  case_ignorable: str
  python_path_chars: re.Pattern[str]  # Characters the Rust pipeline cannot handle exactly.
  absorbable_chars: re.Pattern[str]  # Characters NFC can merge into the one before, or marks.


def _ranges(code_points: Iterable[int]) -> list[tuple[int, int]]:
  out: list[tuple[int, int]] = []
  for cp in sorted(code_points):
    if out and out[-1][1] == cp - 1:
      out[-1] = (out[-1][0], cp)
    else:
      out.append((cp, cp))
  return out


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
  out: list[tuple[int, int]] = []
  for lo, hi in sorted(ranges):
    if out and out[-1][1] >= lo - 1:
      out[-1] = (out[-1][0], max(hi, out[-1][1]))
    else:
      out.append((lo, hi))
  return out


def _onig_class(ranges: Iterable[tuple[int, int]]) -> str:
  parts = []
  for lo, hi in _merge(ranges):
    parts.append(f"\\x{{{lo:x}}}" if lo == hi else f"\\x{{{lo:x}}}-\\x{{{hi:x}}}")
  return "".join(parts)


def _python_class(ranges: Iterable[tuple[int, int]]) -> str:
  parts = []
  for lo, hi in _merge(ranges):
    parts.append(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}")
  return "".join(parts)


def _rust_map(normalizer: normalizers.Normalizer, items: list[str]) -> list[str]:
  """Runs a Rust normaliser over many short strings in one call (joined by spaces)."""
  out = normalizer.normalize_str(" ".join(items)).split(" ")
  if len(out) != len(items):  # pragma: no cover - a normaliser produced or ate a space
    raise AssertionError("probe strings did not survive the Rust normaliser one to one")
  return out


def _rust_disagreements(survivors: list[str]) -> set[str]:
  """Characters on which the Rust NFC/NFD/Lowercase steps disagree with Python's `unicodedata`.

  Compared: single-character NFC/NFD/lower-casing, recomposition of every canonical decomposition,
  and the canonical combining class of every combining mark (a mark Rust does not know is a
  starter there, which changes reordering and composition around it).
  """
  nfc, nfd, lower = normalizers.NFC(), normalizers.NFD(), normalizers.Lowercase()
  bad: set[str] = set()
  for step, form in ((nfc, "NFC"), (nfd, "NFD")):
    for ch, got in zip(survivors, _rust_map(step, survivors), strict=True):
      if got != unicodedata.normalize(form, ch):
        # The character, and what follows the base in its decomposition: a text holding the
        # decomposed form has one of those (the base alone is harmless and common).
        bad.add(ch)
        bad.update(unicodedata.normalize("NFD", ch)[1:])
  for ch, got in zip(survivors, _rust_map(lower, survivors), strict=True):
    if ch != _CASE_PROBE_SIGMA and got != ch.lower():
      bad.add(ch)
  decomposed = [d for d in (unicodedata.normalize("NFD", c) for c in survivors) if len(d) > 1]
  for seq, got in zip(decomposed, _rust_map(nfc, decomposed), strict=True):
    if got != unicodedata.normalize("NFC", seq):
      bad.update(seq[1:])
  marks = [c for c in survivors if unicodedata.combining(c)]
  # U+0345 (class 240) and U+0334 (class 1) are old enough for any table: a mark with a class in
  # between must swap with them.
  probes = [f"a\u0345{m}" for m in marks] + [f"a{m}\u0334" for m in marks]
  for mark, probe, got in zip(marks + marks, probes, _rust_map(nfd, probes), strict=True):
    if got != unicodedata.normalize("NFD", probe):
      bad.add(mark)
  return bad


def _changes_word_structure(ch: str) -> bool:
  """Whether normalising `ch` changes whether it is CJK or whitespace.

  The reference decides CJK and whitespace on the cleaned text, the Rust pipeline after NFC,
  lower-casing and NFD; they agree as long as no character changes class on the way.
  """
  lowered = ch.lower()
  if lowered == ch and unicodedata.is_normalized("NFD", ch):
    return False  # NFC of a character that is its own NFD is the character itself.
  forms = (unicodedata.normalize("NFC", ch), lowered, unicodedata.normalize("NFD", lowered))
  cjk = is_cjk_char(ch)
  for form in (*forms, unicodedata.normalize("NFD", ch)):
    for c in form:
      if is_whitespace_char(c) or is_control_char(c) or is_cjk_char(c) != cjk:
        return True
  return False


@functools.cache
def _tables() -> _Tables:
  # One category lookup per code point (surrogates included, so that index == code point), then
  # runs of equal category: most of the code space is unassigned (Cn) or private use (Co).
  categories = list(map(unicodedata.category, map(chr, range(0x110000))))
  runs: list[tuple[int, int, str]] = []
  position = 0
  for category, group in itertools.groupby(categories):
    n = len(list(group))
    runs.append((position, position + n - 1, category))
    position += n
  removed = [(lo, hi) for lo, hi, cat in runs if cat[0] == "C" and cat != "Cs"]
  removed = [r for lo, hi in removed for r in _without(lo, hi, (0x9, 0xA, 0xD))]
  removed.append((0xFFFD, 0xFFFD))
  # Whitespace other than the plain space (replacing a space by a space would be wasted work).
  whitespace = [(0x9, 0xA), (0xD, 0xD)]
  survivors: list[str] = []
  for lo, hi, cat in runs:
    if cat[0] == "C":
      continue
    for cp in range(lo, hi + 1):
      ch = chr(cp)
      if cat == "Zs" or ch.isspace():
        if cp != 0x20:
          whitespace.append((cp, cp))
      elif cp != 0xFFFD:
        survivors.append(ch)
  punctuation = _ranges(ord(c) for c in survivors if is_punctuation_char(c))
  marks = [(lo, hi) for lo, hi, cat in runs if cat == "Mn"]
  # Case properties as Python's final-sigma rule sees them (CPython's `handle_capital_sigma`):
  # after a cased, not ignorable letter "Σ" ends a word; ignorable characters are skipped.
  sigma = _CASE_PROBE_SIGMA
  cased = {ord(c) for c in survivors if (c + sigma).lower()[-1] == "ς"}
  ignorable = [
    ord(c) for c in survivors if ord(c) not in cased and ("A" + c + sigma).lower()[-1] == "ς"
  ]
  # Characters that can vanish into the character before them: marks (stripped with accents,
  # or composed) and starters that compose with a preceding one (Hangul vowels and trailing
  # consonants, a few Indic vowel signs).
  absorbable = [(lo, hi) for lo, hi, cat in runs if cat[0] == "M"]
  absorbable += [(cp, cp) for cp in _second_composition_elements(survivors)]
  python_path = {ord(c) for c in _rust_disagreements(survivors)}
  python_path.update(ord(c) for c in survivors if _changes_word_structure(c))
  pattern = f"[{_python_class(_ranges(python_path))}\\ud800-\\udfff]"
  return _Tables(
    removed=_onig_class(removed),
    whitespace=_onig_class(whitespace),
    punctuation=_onig_class(punctuation),
    cjk=_onig_class(CJK_RANGES),
    nonspacing_marks=_onig_class(marks),
    cased=_onig_class(_ranges(cased)),
    case_ignorable=_onig_class(_ranges(ignorable)),
    python_path_chars=re.compile(pattern),
    absorbable_chars=re.compile(f"[{_python_class(absorbable)}]"),
  )


def _second_composition_elements(survivors: list[str]) -> set[int]:
  """Characters that NFC composes with the character before them."""
  out = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V and T jamo.
  for ch in survivors:
    mapping = unicodedata.decomposition(ch)
    if mapping and not mapping.startswith("<"):
      parts = [chr(int(h, 16)) for h in mapping.split()]
      if len(parts) == 2 and unicodedata.normalize("NFC", "".join(parts)) == ch:
        out.add(ord(parts[1]))
  return out


def _without(lo: int, hi: int, holes: Iterable[int]) -> list[tuple[int, int]]:
  """The range `lo..hi` minus the code points `holes`."""
  out = []
  for hole in sorted(h for h in holes if lo <= h <= hi):
    if lo < hole:
      out.append((lo, hole - 1))
    lo = hole + 1
  if lo <= hi:
    out.append((lo, hi))
  return out


def needs_python_path(text: str) -> bool:
  """Whether `text` holds a character the Rust pipeline cannot normalise exactly."""
  return not text.isascii() and _tables().python_path_chars.search(text) is not None


def widen_offsets(
  text: str,
  tokens: list[str],
  offsets: list[Span],
  options: BasicOptions,
  special_tokens: frozenset[str],
) -> list[Span]:
  """Gives the Rust pipeline's offsets the spans `split_words` gives.

  `tokenizers` aligns a character that NFC composed from several with the first of them only,
  and an accent that stripping drops with nothing. Both leave original characters that no token
  covers right after a token; this extends the token over them (and over removed control
  characters between), up to the next token or whitespace. As in `split_words`, a special token
  or a CJK ideograph (words of their own) is never extended.
  """
  if text.isascii() or _tables().absorbable_chars.search(text) is None:
    return offsets
  out = list(offsets)
  n = len(offsets)
  for i, (start, end) in enumerate(offsets):
    if (tokens[i] in special_tokens and text[start:end] == tokens[i]) or (
      options.tokenize_chinese_chars and is_cjk_char(text[end - 1])
    ):
      continue  # A special token written in the text, or an ideograph.
    limit = len(text)
    for k in range(i + 1, n):  # The next token that does not share this token's span.
      if offsets[k][0] >= end:
        limit = offsets[k][0]
        break
    new_end = end
    for j in range(end, limit):
      ch = text[j]
      if is_control_char(ch):
        continue
      if is_whitespace_char(ch):
        break
      new_end = j + 1
    out[i] = (start, new_end)
  return out


# ---------------------------------------------------------------------------------------------
# The Rust pipeline.


def _onig_escape(text: str) -> str:
  return "".join(f"\\x{{{ord(c):x}}}" for c in text)


def _sentinel_step(words: Iterable[str], boundary_class: str) -> normalizers.Normalizer | None:
  """Replaces each whole whitespace-separated occurrence of `words` with `SENTINEL`."""
  alternatives = sorted(set(words), key=lambda w: (-len(w), w))
  if not alternatives:
    return None
  body = "|".join(_onig_escape(w) for w in alternatives)
  pattern = f"(?<![^{boundary_class}])(?:{body})(?![^{boundary_class}])"
  return normalizers.Replace(Regex(pattern), SENTINEL)


def _can_be_whole_word(word: str, options: BasicOptions) -> bool:
  """Whether the reference can meet `word` as one whitespace-separated word after NFC."""
  if not word or any(is_control_char(c) or is_whitespace_char(c) for c in word):
    return False
  if unicodedata.normalize("NFC", word) != word:
    return False
  # With CJK splitting, an ideograph is always a word of its own.
  has_cjk = any(is_cjk_char(c) for c in word)
  return not (options.tokenize_chinese_chars and len(word) > 1 and has_cjk)


def build_normalizer(
  options: BasicOptions, never_split: Iterable[str] = ()
) -> normalizers.Sequence:
  """The `tokenizers` normaliser equal to steps 1, 3 and 5 (words are split by the pre-tokenizer).

  Args:
    options: lower-casing, accent stripping and CJK splitting.
    never_split: words to protect. Their whole-word occurrences become `SENTINEL`; a text that
      contains a sentinel afterwards must be tokenised by `split_words` instead.

  Returns:
    A `normalizers.Sequence`.
  """
  t = _tables()
  boundary = " " + (t.cjk if options.tokenize_chinese_chars else "")
  candidates = [w for w in never_split if _can_be_whole_word(w, options)]
  steps: list[normalizers.Normalizer] = [
    normalizers.Replace(Regex(f"[{t.removed}]"), ""),
    normalizers.Replace(Regex(f"[{t.whitespace}]"), " "),
    normalizers.NFC(),
  ]
  protect_raw = _sentinel_step(candidates, boundary)
  if protect_raw is not None:
    steps.append(protect_raw)
  if options.do_lower_case:
    # `Lowercase` maps Σ to σ everywhere; Python's `str.lower` writes ς where a word ends:
    # after a cased letter (skipping case-ignorable characters) and not before one.
    final_sigma = (
      f"[{t.cased}][{t.case_ignorable}]*\\K\\x{{3a3}}(?![{t.case_ignorable}]*[{t.cased}])"
    )
    steps += [normalizers.Replace(Regex(final_sigma), "ς"), normalizers.Lowercase()]
  if options.strips_accents:
    steps += [normalizers.NFD(), normalizers.Replace(Regex(f"[{t.nonspacing_marks}]"), "")]
  if options.do_lower_case or options.strips_accents:
    # The reference checks `never_split` once more after normalising, before splitting
    # punctuation; only entries with punctuation can be affected.
    normalized = [
      w
      for w in candidates
      if options.normalize_word(w) == w and len(w) > 1 and any(map(is_punctuation_char, w))
    ]
    protect_normalized = _sentinel_step(normalized, boundary)
    if protect_normalized is not None:
      steps.append(protect_normalized)
  return normalizers.Sequence(steps)


def build_pre_tokenizer(options: BasicOptions) -> pre_tokenizers.Sequence:
  """The `tokenizers` pre-tokenizer equal to the reference's word splitting (steps 2, 4 and 6)."""
  t = _tables()
  isolated = t.punctuation + (t.cjk if options.tokenize_chinese_chars else "")
  return pre_tokenizers.Sequence(
    [
      # After the normaliser, plain spaces are the only whitespace left.
      pre_tokenizers.WhitespaceSplit(),
      # Every punctuation character (and CJK ideograph) becomes a word of its own.
      pre_tokenizers.Split(Regex(f"[{isolated}]"), behavior="isolated"),
    ]
  )
