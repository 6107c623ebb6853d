"""Tests of `mobilebert_jax.tokenization`: WordPiece and SentencePiece tokenizers.

The WordPiece reference is transformers' slow, pure-Python `BertTokenizerLegacy` (transformers 5
kept it next to the Rust-backed `BertTokenizer`), run on vocabularies the tests build: WordPiece
vocabularies trained on a generated corpus that covers many Unicode blocks, plus hand-added
tokens, so that words split into several pieces and some become [UNK]. transformers' Rust-backed
`BertTokenizer` is compared too; the places where it disagrees with the Python reference are
pinned down in `test_rust_backed_transformers_disagreements`.
"""

from __future__ import annotations

import pathlib
import pickle
import random
import re
import unicodedata

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from mobilebert_jax.tokenization import (
  Encoding,
  SentencePieceTokenizer,
  WordPieceTokenizer,
  basic_tokenizer,
  load_vocab,
)

transformers = pytest.importorskip("transformers")
from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# ---------------------------------------------------------------------------------------------
# The corpus: words from many scripts, odd characters, and random code points.

WORDS = {
  "latin": "café naïve Ångström Øresund façade Straße ÉCOLE Über résumé jalapeño coöperate "
  "İstanbul ıi DŽemal ǅ ǆ ﬁnance Kelvin \u212a \u212b \u2126 hello world running unbelievable "
  "THE The the tokenization Tokenizer don't it's o'clock e-mail U.S.A. 3.14 1,000,000",
  "greek": "ΟΔΟΣ Σίσυφος ΑΣ λόγος ΣΟΦΙΑ Ἀθῆναι ὁδός ΣΣ ΑΣΑ Σ",
  "cyrillic": "привет Москва ЁЖИК ёлка Україна ґанок",
  "arabic": "مرحبا السلام عليكم ٱلْعَرَبِيَّة ١٢٣",
  "hebrew": "שלום שָׁלוֹם עִבְרִית",
  "devanagari": "नमस्ते हिन्दी क़लम",
  "thai": "สวัสดี ภาษาไทย",
  "cjk": "中文 漢字 日本語 你好世界 𠀀𠀁 𪜀 𫝀 𫠠 𬺰 豈 丽 \u2f00 \u3400\u4dbf",
  "hangul": "한국어 조선말 \u1112\u1161\u11ab \u3131\u314f",
  "kana": "ひらがな カタカナ ｶﾀｶﾅ ゔ が\u3099",
  "emoji": "😀 👍🏽 👨\u200d👩\u200d👧\u200d👦 🇫🇷 ❤\ufe0f 🏳\ufe0f\u200d🌈 ✊🏿",
  "math": "∑∫√≤≥∞ 𝔸𝕏𝟘 x²+y²=z² ½ ℕℝ ∀x∃y",
  "combining": "e\u0301 a\u0308\u0323 Z\u0351\u0359\u035a\u0302a\u0300\u0301l\u0316g\u0317o "
  "\u0301lone \u1dfa\u0301x a\u0898b \U00011938 \U00011935\U00011930",
  "format": "zero\u200bwidth non\u200cjoiner \u00adsoft\u00adhyphen \ufeffbom word\u2060joiner "
  "mongolian\u180esep tag\U000e0041s ctrl\x07bell nul\x00char rep\ufffdlacement pua\ue000x",
  "cased_scripts": "ᏣᎳᎩ Ꭰ\u1c90\u1c91 𐐀𐐨 Ⓐⓐ ǈ",
  "punctuation": "“quoted” ‘single’ ¿qué? ¡sí! «guillemets» … 。、 ‐‑–— (a)[b]{c} @#$%^&*_+=|\\~`",
  "specials": "[MASK] [SEP][CLS] [mask] x[MASK]y [MA\u200bSK] [UNK] [PAD]",
}
ODD_SEPARATORS = [
  " ",
  "  ",
  "\t",
  "\n",
  "\r\n",
  "\u00a0",
  "\u2003",
  "\u3000",
  "\u2028",
  "\u2029",
  "\x0b",
  "\x0c",
  "\x85",
  "\u1680",
  "\u202f",
  "",
  "-",
  ".",
  "\u200b",
]
SIGMA_CASES = [
  "ΑΣ",
  "ΑΣ.",
  "Σ",
  "ΑΣΑ",
  "ΑΣ'Σ",
  "Αʰ\u03a3",
  "Α\u0301Σ",
  "ΑΣ\u0301",
  "ΑΣ\u0301Α",
  "ΑΣ中",
  "ΑΣ[MASK]",
  "ΑΣ\u200bΑ",
  "ΑΣ\u0345",
  "ΑΣ\u0345Α",
  "\u0345Σ",
  "ΣΑΣ ΑΣ",
  "1Σ",
  "ΑΣ1",
  "ΑΣ\u2028Α",
  "ΑΣ\U0001d400",
  "ǅΣ",
  "\u1fbcΣ",
  "ΑΣ\u00ad",
  "ΑΣ\ue000",
]


def _random_code_point(rng: random.Random) -> str:
  """A random character, weighted towards assigned ones but covering the whole code space."""
  while True:
    kind = rng.random()
    if kind < 0.5:
      cp = rng.randrange(0x20, 0x3000)
    elif kind < 0.8:
      cp = rng.randrange(0x3000, 0x20000)
    else:
      cp = rng.randrange(0x20000, 0x110000)
    if not 0xD800 <= cp <= 0xDFFF:
      return chr(cp)


def make_corpus(seed: int = 0, lines: int = 500) -> list[str]:
  """Sentences mixing the words above with odd separators, long words and random characters."""
  rng = random.Random(seed)
  words = [w for group in WORDS.values() for w in group.split(" ")]
  corpus = [" ".join(group.split(" ")) for group in WORDS.values()]
  corpus += SIGMA_CASES
  corpus += [
    "",
    " ",
    "\t\n",
    "\u200b\u200d\ufeff",
    "x" * 100,
    "x" * 101,
    "é" * 101,
    "é" * 100,
    "\ud800lone surrogate",
    "a\udc00b",
    "a" * 50 + "b" * 50 + "!",
  ]
  for _ in range(lines):
    parts = []
    for _ in range(rng.randint(1, 12)):
      r = rng.random()
      if r < 0.7:
        parts.append(rng.choice(words))
      elif r < 0.9:
        parts.append("".join(_random_code_point(rng) for _ in range(rng.randint(1, 4))))
      else:
        parts.append(rng.choice(words).upper())
      parts.append(rng.choice(ODD_SEPARATORS) if rng.random() < 0.3 else " ")
    corpus.append("".join(parts))
  return corpus


CORPUS = make_corpus()


# ---------------------------------------------------------------------------------------------
# Vocabularies: trained on the corpus by HF's stock BERT pipeline, plus hand-added tokens.

HAND_ADDED = [
  "[unused0]",
  "hello",
  "##llo",
  "world",
  "##ing",
  "un",
  "##believ",
  "##able",
  "ι",
  "中",
  "文",
  "##é",
  "é",
  "ς",
  "##ς",
  "σ",
  "##σ",
  "foo-bar",
  "e-mail",
]


def _build_vocab(path, lowercase: bool, size: int = 600) -> str:
  tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tokenizer.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.WordPieceTrainer(
    vocab_size=size, special_tokens=SPECIALS, limit_alphabet=300, show_progress=False
  )
  # Half the corpus (the other half then has unknown words); Rust strings cannot hold surrogates.
  lines = [line for line in CORPUS[::2] if not any(0xD800 <= ord(c) <= 0xDFFF for c in line)]
  tokenizer.train_from_iterator(lines, trainer)
  learned = sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().__getitem__)
  tokens = list(dict.fromkeys(learned + HAND_ADDED))
  path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def vocab_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("vocab")
  return {True: _build_vocab(d / "uncased.txt", True), False: _build_vocab(d / "cased.txt", False)}


@pytest.fixture(scope="module")
def tokenizers(vocab_files):
  """(ours, transformers' slow reference) per casing."""
  out = {}
  for lower, path in vocab_files.items():
    out[lower] = (
      WordPieceTokenizer.from_file(path, do_lower_case=lower),
      BertTokenizerLegacy(path, do_lower_case=lower),
    )
  return out


CASINGS = pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])


def _has_surrogate(text: str) -> bool:
  return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


# ---------------------------------------------------------------------------------------------
# WordPiece: tokens and ids against the Python reference.


@CASINGS
def test_tokens_and_ids_match_python_bert(tokenizers, lower):
  ours, ref = tokenizers[lower]
  for text in CORPUS:
    expected = ref.tokenize(text)
    assert ours.tokenize(text) == expected, repr(text)
    assert ours.encode(text).input_ids[1:-1] == ref.convert_tokens_to_ids(expected), repr(text)
    assert ours.convert_tokens_to_ids(expected) == ref.convert_tokens_to_ids(expected)
  # The vocabulary is small enough that the corpus exercises every WordPiece outcome.
  tokens = [t for text in CORPUS for t in ours.tokenize(text)]
  assert tokens.count("[UNK]") > 200
  assert sum(t.startswith("##") for t in tokens) > 2000
  assert {"[MASK]", "[SEP]", "[CLS]"} <= set(tokens)


@CASINGS
def test_python_path_matches_python_bert(tokenizers, lower):
  # The pure-Python path must be exact on everything, not only on the texts routed to it.
  ours, ref = tokenizers[lower]
  for text in CORPUS:
    assert ours._python_segment(text).tokens == ref.tokenize(text), repr(text)


@CASINGS
def test_batch_encode_matches_encode(tokenizers, lower):
  ours, _ = tokenizers[lower]
  texts = CORPUS[:200]
  pairs = CORPUS[200:400]
  batch = ours.batch_encode(texts, pairs, max_length=24, padding="longest")
  assert len({len(e) for e in batch}) == 1
  for text, pair, encoding in zip(texts, pairs, batch, strict=True):
    single = ours.encode(text, pair, max_length=24)
    n = len(single)
    assert encoding.input_ids[:n] == single.input_ids
    assert encoding.offsets[:n] == single.offsets
    assert encoding.attention_mask == [1] * n + [0] * (len(encoding) - n)


def test_rust_path_is_used_for_ordinary_text_only():
  assert not basic_tokenizer.needs_python_path("Ordinary text, café, ΟΔΟΣ, 中文, 😀 and \u200b.")
  # Marks newer than the Rust normalisation tables, one composition they miss, surrogates.
  for text in ["a\u1dfa", "x\u0898", "\U00011938", "\U00011935\U00011930", "\ud800"]:
    assert basic_tokenizer.needs_python_path(text), repr(text)


def test_rust_pipeline_matches_python_bert_on_every_character():
  """Every assigned character (and a sample of the others) through our normaliser and
  pre-tokenizer, inside a word, against the reference's basic step.

  Uncased runs every step; cased runs the characters that NFC can change (lower-casing and NFD
  would hide NFC mistakes). Characters routed to the Python path are left out, and counted.
  """
  candidates = [
    chr(cp)
    for cp in range(0x110000)
    if not 0xD800 <= cp <= 0xDFFF and (unicodedata.category(chr(cp)) != "Cn" or cp % 97 == 0)
  ]
  excluded = [c for c in candidates if basic_tokenizer.needs_python_path(c)]
  assert len(excluded) < 200  # About a hundred marks newer than the Rust tables, and neighbours.
  excluded = set(excluded)
  chars = [c for c in candidates if c not in excluded]
  nfc_sensitive = [
    c for c in chars if unicodedata.combining(c) or unicodedata.normalize("NFD", c) != c
  ]
  # Lower-cased, each character also sits next to a capital sigma, which is final or not
  # depending on whether the character is cased or case-ignorable.
  for lower, template, sample in [(True, "a{0}Σ{0}b", chars), (False, "a{0}b", nfc_sensitive)]:
    options = basic_tokenizer.BasicOptions(do_lower_case=lower)
    normalizer = basic_tokenizer.build_normalizer(options)
    pre_tokenizer = basic_tokenizer.build_pre_tokenizer(options)
    reference = transformers.models.bert.tokenization_bert_legacy.BasicTokenizer(
      do_lower_case=lower
    )
    for start in range(0, len(sample), 8192):
      text = " ".join(template.format(c) for c in sample[start : start + 8192])
      words = [w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
      assert words == reference.tokenize(text), start


@pytest.mark.parametrize(
  "options",
  [
    dict(do_lower_case=False, strip_accents=True),
    dict(do_lower_case=True, strip_accents=False),
    dict(do_lower_case=True, tokenize_chinese_chars=False),
    dict(do_lower_case=False, tokenize_chinese_chars=False),
  ],
  ids=["cased-strip", "uncased-keep-accents", "uncased-no-cjk", "cased-no-cjk"],
)
def test_options_match_python_bert(vocab_files, options):
  path = vocab_files[options["do_lower_case"]]
  ours = WordPieceTokenizer.from_file(path, **options)
  ref = BertTokenizerLegacy(path, **options)
  for text in CORPUS[::3]:
    assert ours.tokenize(text) == ref.tokenize(text), repr(text)
    assert ours._python_segment(text).tokens == ref.tokenize(text), repr(text)


@CASINGS
def test_never_split_matches_python_bert(vocab_files, lower):
  never_split = ["[unused0]", "foo-bar", "hello", "中"]
  texts = [
    "[unused0] x[unused0] [UNUSED0] [Unused0]. foo-bar FOO-BAR foo-bar. (foo-bar) Foo-Bar",
    "HELLO hello, hello中 中文 \u200bfoo-bar\u200b [unused\u200b0] ΑΣ [unused0]ΑΣ",
    *CORPUS[:100],
  ]
  ours = WordPieceTokenizer.from_file(
    vocab_files[lower], do_lower_case=lower, never_split=never_split
  )
  ref = BertTokenizerLegacy(vocab_files[lower], do_lower_case=lower, never_split=never_split)
  for text in texts:
    assert ours.tokenize(text) == ref.tokenize(text), repr(text)
  tokens = ours.tokenize(texts[0])
  # Uncased, "[UNUSED0]" lower-cases to a never_split word, which then is not split either.
  assert tokens.count("[unused0]") == (2 if lower else 1) and "foo-bar" in tokens


@CASINGS
def test_basic_tokenize_matches_python_bert(tokenizers, lower):
  ours, ref = tokenizers[lower]
  for text in CORPUS:
    expected = []
    for piece in ref.tokens_trie.split(text):
      if piece in ref.all_special_tokens:
        expected.append(piece)
      else:
        expected += ref.basic_tokenizer.tokenize(piece, never_split=ref.all_special_tokens)
    assert ours.basic_tokenize(text) == expected, repr(text)


# ---------------------------------------------------------------------------------------------
# Offsets.


def _reference_normalize(text: str, lower: bool) -> str:
  """The reference's basic step on an original slice, words joined; final sigma folded."""
  basic = transformers.models.bert.tokenization_bert_legacy.BasicTokenizer(do_lower_case=lower)
  return "".join(basic.tokenize(text)).replace("ς", "σ")


def _check_offsets(text: str, tokens: list[str], offsets: list[tuple[int, int]], lower: bool):
  specials = set(SPECIALS)
  # Tokens cut from one character (a Hangul syllable decomposed by NFD, say) share its span:
  # such neighbours are checked together.
  groups: list[list[int]] = []
  for i, (start, end) in enumerate(offsets):
    assert 0 <= start < end <= len(text), (text, tokens[i], (start, end))
    if groups and start < offsets[groups[-1][-1]][1]:
      groups[-1].append(i)
    else:
      groups.append([i])
  for group in groups:
    start = offsets[group[0]][0]
    end = max(offsets[i][1] for i in group)
    piece_text = text[start:end]
    group_tokens = [tokens[i] for i in group]
    if group_tokens == ["[UNK]"]:
      assert _reference_normalize(piece_text, lower), (text, piece_text)
    elif len(group) == 1 and group_tokens[0] in specials:
      basic = transformers.models.bert.tokenization_bert_legacy.BasicTokenizer(do_lower_case=False)
      assert basic.tokenize(piece_text) == basic.tokenize(group_tokens[0]) or (
        unicodedata.normalize("NFC", basic._clean_text(piece_text)) == group_tokens[0]
      ), (text, piece_text)
    else:
      expected = "".join(t.removeprefix("##") for t in group_tokens).replace("ς", "σ")
      assert _reference_normalize(piece_text, lower) == expected, (text, piece_text, group_tokens)


@CASINGS
def test_offsets_map_tokens_to_the_original_text(tokenizers, lower):
  ours, _ = tokenizers[lower]
  for text in CORPUS:
    tokens, offsets = ours.tokenize_with_offsets(text)
    _check_offsets(text, tokens, offsets, lower)
    # Both paths give the same spans.
    assert ours._python_segment(text).offsets == offsets, repr(text)


def test_offsets_when_normalisation_changes_lengths(tmp_path):
  path = tmp_path / "vocab.txt"
  words = ["istanbul", "angstrom", "e", "##a", "οδο\u03c2", "x"]  # With a final sigma.
  path.write_text("\n".join([*SPECIALS, *words]) + "\n", encoding="utf-8")
  ours = WordPieceTokenizer.from_file(path)
  # "İ" lower-cases to two characters, one of which accent stripping drops again; the Ångström
  # sign NFC-normalises to "Å"; "e" + U+0301 composes to "é", then loses its accent; a zero-width
  # space is dropped; the final sigma lower-cases to "ς"; an accent without a precomposed form is
  # dropped from "x".
  text = "İstanbul \u212bngstr\u00f6m e\u0301a\u0308 \u200bΟΔΟΣ x\u0301"
  tokens, offsets = ours.tokenize_with_offsets(text)
  assert tokens == words
  i = text.index
  assert offsets == [
    (0, 8),
    (9, 17),
    (i("e\u0301"), i("e\u0301") + 2),  # The accents are part of their letters' spans.
    (i("a\u0308"), i("a\u0308") + 2),
    (i("Ο"), i("Ο") + 4),  # Not the zero-width space before.
    (i("x"), len(text)),
  ]
  assert ours._python_segment(text).offsets == offsets
  assert [text[s:e] for s, e in offsets][:2] == ["İstanbul", "\u212bngstr\u00f6m"]


def test_tokenizers_pickle(tokenizers, sentencepiece_model):
  # Input pipelines send tokenizers to worker processes.
  ours, _ = tokenizers[True]
  again = pickle.loads(pickle.dumps(ours))
  assert [again.tokenize(t) for t in CORPUS[:50]] == [ours.tokenize(t) for t in CORPUS[:50]]
  sp = SentencePieceTokenizer.from_file(sentencepiece_model[0])
  assert pickle.loads(pickle.dumps(sp)).tokenize("Hello world") == sp.tokenize("Hello world")


# ---------------------------------------------------------------------------------------------
# encode: pairs, truncation, padding, against the Python reference.


def _reference_encode(ref, a, b, max_length, truncation, padding):
  kwargs = dict(return_token_type_ids=True, return_attention_mask=True)
  if max_length is not None:
    kwargs.update(max_length=max_length, truncation=truncation or False)
  if padding:
    kwargs["padding"] = padding
  return ref(a, b, **kwargs)


def _pair_cases():
  rng = random.Random(1)
  texts = [t for t in CORPUS if not _has_surrogate(t)]
  cases = []
  for _ in range(120):
    a = rng.choice(texts)
    b = rng.choice([*texts, None])
    max_length = rng.choice([None, 3, 5, 6, 7, 8, 11, 16, 33, 128])
    truncation = rng.choice(["longest_first", "only_first", "only_second", None])
    padding = rng.choice([None, "max_length"]) if max_length else None
    cases.append((a, b, max_length, truncation, padding))
  # Equal lengths and odd budgets: where transformers' Rust backend disagrees.
  cases += [("a b c d e", "f g h i j", m, "longest_first", None) for m in (8, 9, 10, 11, 12)]
  cases += [("a b c d e", "f g h i j k", m, "longest_first", None) for m in (8, 9, 10)]
  return cases


@CASINGS
def test_encode_matches_python_bert(tokenizers, lower):
  ours, ref = tokenizers[lower]
  compared = 0
  for a, b, max_length, truncation, padding in _pair_cases():
    reference = _reference_encode(ref, a, b, max_length, truncation, padding)
    try:
      got = ours.encode(a, b, max_length=max_length, truncation=truncation, padding=padding)
    except ValueError:
      # We refuse exactly where the reference returns something longer than max_length.
      assert max_length is not None and truncation is not None
      assert len(reference["input_ids"]) > max_length or (truncation == "only_second" and b is None)
      continue
    assert isinstance(got, Encoding)
    assert got.input_ids == reference["input_ids"], (a, b, max_length, truncation)
    assert got.token_type_ids == reference["token_type_ids"]
    assert got.attention_mask == reference["attention_mask"]
    compared += 1
    # The other fields line up with the ids.
    n_real = sum(got.attention_mask)
    assert got.tokens == ours.convert_ids_to_tokens(got.input_ids)
    assert got.sequence_ids[0] is None and got.sequence_ids[n_real - 1] is None
    assert all(s is None for s in got.sequence_ids[n_real:])
    assert all(o == (0, 0) for o, s in zip(got.offsets, got.sequence_ids, strict=True) if s is None)
    first = [t for t, s in zip(got.tokens, got.sequence_ids, strict=True) if s == 0]
    assert first == ours.tokenize(a)[: len(first)]
  assert compared > 80


def test_rust_backed_transformers_disagreements(tokenizers, vocab_files, tmp_path):
  """Where transformers' Rust-backed `BertTokenizer` differs from its Python reference (and us).

  1. No NFC: a decomposed "e" + combining acute stays two characters in cased models.
  2. Lower-casing maps a final capital sigma to σ, Python's `str.lower` to ς.
  3. Special tokens interrupted by a zero-width character are not recognised.
  4. Older Unicode tables: marks added since (U+1DFA) are not stripped, and unassigned code
     points are kept as [UNK] instead of being removed.
  5. `longest_first`, when both sequences must be cut and the budget is odd: the Rust backend
     gives the spare token to the longer sequence (the second on ties), BERT to the first.
  """
  for lower in (True, False):
    (tmp_path / str(lower)).mkdir()
    (tmp_path / str(lower) / "vocab.txt").write_bytes(pathlib.Path(vocab_files[lower]).read_bytes())
  fast = {
    lower: transformers.BertTokenizer.from_pretrained(
      str(tmp_path / str(lower)), do_lower_case=lower
    )
    for lower in (True, False)
  }
  cases = [
    (False, "cafe\u0301"),
    (True, "ΟΔΟΣ"),
    (True, "[MA\u200bSK]"),
    (True, "x\u1dfa"),
    (True, "x \U00086dd7"),
  ]
  for lower, text in cases:
    ours, ref = tokenizers[lower]
    assert ours.tokenize(text) == ref.tokenize(text)
    assert fast[lower].tokenize(text) != ref.tokenize(text), text
  ours, ref = tokenizers[True]
  kwargs = dict(max_length=10, truncation="longest_first")
  ours_ids = ours.encode("a b c d e", "f g h i j", **kwargs).input_ids
  assert ours_ids == ref("a b c d e", "f g h i j", **kwargs)["input_ids"]
  fast_ids = fast[True]("a b c d e", "f g h i j", **kwargs)["input_ids"]
  assert fast_ids != ours_ids and fast_ids.index(ours.sep_token_id) == 4  # [CLS] a b c [SEP]
  assert ours_ids.index(ours.sep_token_id) == 5
  # encode: on texts both tokenise alike, the only differences are in longest_first pairs.
  differences = 0
  for a, b, max_length, truncation, padding in _pair_cases():
    if any(fast[True].tokenize(t) != ref.tokenize(t) for t in (a, b) if t is not None):
      continue
    try:
      got = ours.encode(a, b, max_length=max_length, truncation=truncation, padding=padding)
      theirs = _reference_encode(fast[True], a, b, max_length, truncation, padding)
    except Exception:  # Both refuse impossible truncations, with different errors.
      continue
    if got.input_ids != theirs["input_ids"]:
      differences += 1
      assert truncation == "longest_first" and b is not None
      assert len(got) == len(theirs["input_ids"])
      # The same budget, shared out one token differently between A and B.
      ours_a = got.sequence_ids.count(0)
      theirs_a = theirs["input_ids"].index(ours.sep_token_id) - 1
      assert abs(ours_a - theirs_a) == 1
    else:
      assert got.token_type_ids == theirs["token_type_ids"]
  assert differences >= 3
  # Elsewhere on the corpus the Rust-backed tokenizer agrees with the reference most of the time.
  same = sum(fast[True].tokenize(t) == ref.tokenize(t) for t in CORPUS if not _has_surrogate(t))
  assert same > len(CORPUS) // 2


def test_encode_layout_and_errors(tokenizers):
  ours, _ = tokenizers[True]
  e = ours.encode("hello world", "hello", max_length=8, padding="max_length")
  cls, sep, pad = ours.cls_token_id, ours.sep_token_id, ours.pad_token_id
  hello, world = ours.convert_tokens_to_ids(["hello", "world"])
  assert e.input_ids == [cls, hello, world, sep, hello, sep, pad, pad]
  assert e.token_type_ids == [0, 0, 0, 0, 1, 1, 0, 0]
  assert e.attention_mask == [1, 1, 1, 1, 1, 1, 0, 0]
  assert e.sequence_ids == [None, 0, 0, None, 1, None, None, None]
  assert e.offsets == [(0, 0), (0, 5), (6, 11), (0, 0), (0, 5), (0, 0), (0, 0), (0, 0)]
  assert e.tokens[-1] == "[PAD]" and len(e) == 8
  plain = ours.encode("hello world", "hello", add_special_tokens=False)
  assert plain.input_ids == [hello, world, hello] and plain.token_type_ids == [0, 0, 1]
  assert ours.encode("hello world", max_length=2).input_ids == [cls, sep]
  with pytest.raises(ValueError, match="smaller than the 3 special tokens"):
    ours.encode("hello", "world", max_length=2)
  with pytest.raises(ValueError, match="smaller than the 2 special tokens"):
    ours.encode("hello", max_length=1)
  with pytest.raises(ValueError, match="first sequence has 1 tokens and 2 must go"):
    ours.encode("hello", "world world", max_length=4, truncation="only_first")
  with pytest.raises(ValueError, match="needs a text pair"):
    ours.encode("hello world", max_length=3, truncation="only_second")
  with pytest.raises(ValueError, match="truncation must be one of"):
    ours.encode("hello", truncation="longest")
  with pytest.raises(ValueError, match="padding='max_length' needs max_length"):
    ours.encode("hello", padding="max_length")
  with pytest.raises(TypeError, match="text must be a str"):
    ours.encode(["hello"])
  # Without max_length nothing is truncated.
  assert len(ours.encode("hello " * 50)) == 52


# ---------------------------------------------------------------------------------------------
# Decoding, conversion, vocabulary files.


@CASINGS
def test_decode_matches_python_bert(tokenizers, lower):
  ours, ref = tokenizers[lower]
  for text in CORPUS[:150]:
    if _has_surrogate(text):
      continue
    ids = ours.encode(text, "don't stop , it's fine .").input_ids
    for skip in (True, False):
      assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


def test_id_conversions(tokenizers):
  ours, ref = tokenizers[True]
  assert ours.convert_ids_to_tokens(range(ours.vocab_size)) == list(ref.vocab)
  assert ours.convert_tokens_to_ids(["hello", "never-seen-token"]) == [
    ours.vocab["hello"],
    ours.unk_token_id,
  ]
  ids = [ours.pad_token_id, ours.unk_token_id, ours.cls_token_id, ours.sep_token_id]
  assert [*ids, ours.mask_token_id] == [0, 1, 2, 3, 4] == ours.all_special_ids
  assert [ours.pad_token, ours.mask_token] == ["[PAD]", "[MASK]"]
  with pytest.raises(ValueError, match="outside the vocabulary"):
    ours.convert_ids_to_tokens([ours.vocab_size])
  with pytest.raises(ValueError, match="outside the vocabulary"):
    ours.convert_ids_to_tokens([-1])
  with pytest.raises(TypeError):
    ours.convert_tokens_to_ids("hello")


def test_save_vocabulary_round_trip(tokenizers, tmp_path):
  ours, _ = tokenizers[True]
  path = ours.save_vocabulary(tmp_path)
  assert load_vocab(path) == ours.vocab
  again = WordPieceTokenizer.from_file(path)
  assert again.tokenize(CORPUS[0]) == ours.tokenize(CORPUS[0])


def _write(path, text: str | bytes):
  if isinstance(text, bytes):
    path.write_bytes(text)
  else:
    path.write_text(text, encoding="utf-8", newline="")
  return path


def test_vocabulary_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
    WordPieceTokenizer.from_file(tmp_path / "missing.txt")
  cases = [
    ("empty.txt", "", "the vocabulary is empty"),
    (
      "dup.txt",
      "[PAD]\n[UNK]\nfoo\n[CLS]\nfoo\n",
      r"dup.txt:5: duplicate token 'foo' \(first on line 3\)",
    ),
    ("blank.txt", "[PAD]\n\n[UNK]\n", "blank.txt:2: empty line"),
    ("space.txt", "[PAD]\nfoo bar\n", r"space.txt:2: token 'foo bar' contains whitespace"),
    ("latin1.txt", b"[PAD]\n[UNK]\ncaf\xe9\n", "latin1.txt:3: not valid UTF-8"),
    (
      "nomask.txt",
      "[PAD]\n[UNK]\n[CLS]\n[SEP]\n",
      r"nomask.txt: the vocabulary has no mask token '\[MASK\]'",
    ),
  ]
  for name, content, message in cases:
    with pytest.raises(ValueError, match=message):
      WordPieceTokenizer.from_file(_write(tmp_path / name, content))
  ok = _write(tmp_path / "ok.txt", "\ufeff" + "\r\n".join([*SPECIALS, "foo"]))  # BOM, CRLF, no EOL.
  tokenizer = WordPieceTokenizer.from_file(ok)
  assert tokenizer.vocab == {t: i for i, t in enumerate([*SPECIALS, "foo"])}
  with pytest.raises(ValueError, match="never_split word 'bar' is not in the vocabulary"):
    WordPieceTokenizer.from_file(ok, never_split=["bar"])
  with pytest.raises(ValueError, match="has no unk token '<unk>'"):
    WordPieceTokenizer.from_file(ok, unk_token="<unk>")


# ---------------------------------------------------------------------------------------------
# SentencePiece.


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
  import sentencepiece as spm

  d = tmp_path_factory.mktemp("spm")
  # Trained on the corpus words only: the random characters of the test texts stay unknown.
  rng = random.Random(2)
  words = [w for group in WORDS.values() for w in group.split(" ") if not _has_surrogate(w)]
  lines = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(3000)]
  prefix = str(d / "sp")
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(lines),
    model_prefix=prefix,
    vocab_size=400,
    model_type="unigram",
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    control_symbols=["[CLS]", "[SEP]"],
    user_defined_symbols=["[MASK]"],
    character_coverage=0.99,
    minloglevel=2,
    num_threads=1,
  )
  return prefix + ".model", spm.SentencePieceProcessor(model_file=prefix + ".model")


def _lower_except(text: str, keep: list[str]) -> str:
  parts = re.split("(" + "|".join(map(re.escape, keep)) + ")", text)
  return "".join(p if p in keep else p.lower() for p in parts)


@pytest.mark.parametrize("lower", [False, True], ids=["cased", "lower"])
def test_sentencepiece_matches_the_library(sentencepiece_model, lower):
  path, sp = sentencepiece_model
  ours = SentencePieceTokenizer.from_file(path, do_lower_case=lower)
  assert (ours.pad_token, ours.unk_token) == ("<pad>", "<unk>")
  assert [ours.pad_token_id, ours.unk_token_id, ours.cls_token_id, ours.sep_token_id] == [
    0,
    1,
    2,
    3,
  ]
  assert ours.mask_token_id == 4 and ours.vocab_size == 400
  texts = [t for t in CORPUS if not _has_surrogate(t)] + ["İSTANBUL ΟΔΟΣ Straße", "x [MASK] y"]
  for text in texts:
    prepared = _lower_except(text, ours.all_special_tokens) if lower else text
    tokens, offsets = ours.tokenize_with_offsets(text)
    assert tokens == sp.encode(prepared, out_type=str)
    assert ours.encode(text).input_ids == [2, *sp.encode(prepared), 3]
    surfaces = [piece.surface for piece in sp.encode(prepared, return_type="proto").pieces]
    assert len(surfaces) == len(offsets)
    # Pieces cut from one original character (lower-casing "İ" gives two) share its span.
    groups: list[tuple[int, int, str]] = []
    for surface, (start, end) in zip(surfaces, offsets, strict=True):
      if not surface:
        assert start == end
      elif groups and start < groups[-1][1]:
        groups[-1] = (groups[-1][0], max(end, groups[-1][1]), groups[-1][2] + surface)
      else:
        groups.append((start, end, surface))
    for start, end, surface in groups:
      original = text[start:end]
      if lower:  # Special tokens in the text keep their case: compare case-insensitively.
        original, surface = original.lower(), surface.lower()
      assert original.replace("ς", "σ") == surface.replace("ς", "σ"), (text, surface)
  # A user-defined symbol matches whole (and keeps its case when the text is lower-cased).
  assert ours.encode("X [MASK] Y").input_ids.count(ours.mask_token_id) == 1
  assert "[MASK]" in ours.tokenize("X [MASK] Y")


def test_sentencepiece_encode_and_decode(sentencepiece_model):
  path, sp = sentencepiece_model
  ours = SentencePieceTokenizer.from_file(path)
  text_a, text_b = "hello world unbelievable running", "привет Москва ёлка"
  a, b = sp.encode(text_a), sp.encode(text_b)
  while len(a) + len(b) > 9:  # BERT's `_truncate_seq_pair`, written out.
    if len(a) > len(b):
      a = a[:-1]
    else:
      b = b[:-1]
  cls, sep, pad = ours.cls_token_id, ours.sep_token_id, ours.pad_token_id
  e = ours.encode(text_a, text_b, max_length=12, padding="max_length")
  assert e.input_ids == [cls, *a, sep, *b, sep] + [pad] * (12 - 3 - len(a) - len(b))
  assert e.token_type_ids == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * (9 - len(a) - len(b))
  assert len(sp.encode(text_a)) + len(sp.encode(text_b)) > 9  # Truncation did act.
  batch = ours.batch_encode(["hello world", "привет мир"], ["x", "y"])
  assert [x.input_ids for x in batch] == [
    ours.encode("hello world", "x").input_ids,
    ours.encode("привет мир", "y").input_ids,
  ]
  ids = ours.encode("Hello world ΟΔΟΣ").input_ids
  assert ours.decode(ids) == sp.decode(ids[1:-1])
  assert ours.decode(ids, skip_special_tokens=False).startswith("[CLS] ")
  assert ours.decode(ids, skip_special_tokens=False).endswith(" [SEP]")
  assert ours.basic_tokenize("Hello  World") == ["Hello", "World"]


def test_sentencepiece_errors(sentencepiece_model, tmp_path):
  path, _ = sentencepiece_model
  with pytest.raises(FileNotFoundError, match=r"nope\.model"):
    SentencePieceTokenizer.from_file(tmp_path / "nope.model")
  with pytest.raises(ValueError, match=r"bad\.model: not a SentencePiece model"):
    SentencePieceTokenizer.from_file(_write(tmp_path / "bad.model", b"\x00garbage\xff"))
  with pytest.raises(ValueError, match=r"has no mask token '<mask>'"):
    SentencePieceTokenizer.from_file(path, mask_token="<mask>")
