"""Tests of vocabulary training: tiny WordPiece and SentencePiece vocabularies from a generated
multilingual corpus must load, round-trip text, and put the special tokens where documented.
"""

from __future__ import annotations

import random

import pytest

from mobilebert_jax.tokenization import (
  SentencePieceTokenizer,
  WordPieceTokenizer,
  load_vocab,
  train_sentencepiece_model,
  train_wordpiece_vocab,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Syllables per script; words are random strings of them, so pieces repeat across words.
SYLLABLES = {
  "latin": [
    "ka",
    "to",
    "ri",
    "na",
    "se",
    "ló",
    "mú",
    "pé",
    "der",
    "ung",
    "ing",
    "Sch",
    "ße",
    "ção",
  ],
  "greek": ["κα", "το", "ρι", "να", "σε", "λό", "μύ", "πέ", "ΑΣ", "ΟΣ"],
  "cyrillic": ["ка", "то", "ри", "на", "се", "ло", "му", "пе", "ёж", "щи"],
  "arabic": ["كا", "تو", "ري", "نا", "سي", "لو"],
  "devanagari": ["का", "तो", "री", "ना", "से", "लो"],
  "cjk": list("中文字日本語学生人大"),
  "hangul": list("한국어조선말"),
  "emoji": ["😀", "👍🏽", "🇫🇷"],
}


def _sentence(rng: random.Random) -> str:
  words = []
  for _ in range(rng.randint(3, 12)):
    script = rng.choice(list(SYLLABLES))
    word = "".join(rng.choice(SYLLABLES[script]) for _ in range(rng.randint(1, 4)))
    words.append(word.capitalize() if rng.random() < 0.2 else word)
  sentence = " ".join(words)
  return sentence + rng.choice([".", "!", "?", ",", ""])


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  rng = random.Random(0)
  files = []
  for k in range(2):
    path = d / f"part{k}.txt"
    path.write_text("\n".join(_sentence(rng) for _ in range(1500)) + "\n", encoding="utf-8")
    files.append(path)
  return files


def _lines(files):
  return [line for f in files for line in f.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("lower", [True, False], ids=["uncased", "cased"])
def test_wordpiece_vocab_loads_and_round_trips(corpus_files, tmp_path, lower):
  result = train_wordpiece_vocab(
    corpus_files,
    600,
    output_path=tmp_path,
    do_lower_case=lower,
    min_frequency=2,
    num_unused_tokens=3,
  )
  vocab = load_vocab(result.path)
  assert result.path == str(tmp_path / "vocab.txt") and result.vocab_size == len(vocab)
  assert 300 < len(vocab) <= 600
  # Specials first, in BERT's order, then the unused placeholders.
  order = sorted(vocab, key=vocab.__getitem__)
  assert order[:8] == [*SPECIALS, "[unused0]", "[unused1]", "[unused2]"]
  assert result.special_token_ids == {t: i for i, t in enumerate(SPECIALS)}
  assert any(t.startswith("##") for t in vocab)
  assert lower == all(t == t.lower() for t in order[8:])

  tokenizer = WordPieceTokenizer.from_file(result.path, do_lower_case=lower)
  assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 4)
  pieces = unknown = words = 0
  for line in _lines(corpus_files)[:500]:
    tokens = tokenizer.tokenize(line)
    basic = tokenizer.basic_tokenize(line)
    pieces += len(tokens)
    words += len(basic)
    unknown += tokens.count("[UNK]")
    if "[UNK]" not in tokens:  # Pieces glue back into the basic step's words.
      assert "".join(t.removeprefix("##") for t in tokens) == "".join(basic)
  assert unknown / pieces < 0.01
  assert pieces > 1.2 * words  # A small vocabulary: many words take several pieces.


def test_wordpiece_vocab_matches_transformers_tokenizer(corpus_files, tmp_path):
  transformers = pytest.importorskip("transformers")
  from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

  result = train_wordpiece_vocab(corpus_files, 400, output_path=tmp_path / "vocab.txt")
  ours = WordPieceTokenizer.from_file(result.path)
  reference = BertTokenizerLegacy(result.path)
  assert transformers.__version__
  for line in _lines(corpus_files)[:200]:
    assert ours.tokenize(line) == reference.tokenize(line)


def test_wordpiece_training_errors(corpus_files, tmp_path):
  out = tmp_path / "vocab.txt"
  with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
    train_wordpiece_vocab([tmp_path / "missing.txt"], 100, output_path=out)
  with pytest.raises(ValueError, match="vocab_size=5 leaves no room"):
    train_wordpiece_vocab(corpus_files, 5, output_path=out)
  with pytest.raises(ValueError, match="unk_token '<unk>' must be one of"):
    train_wordpiece_vocab(corpus_files, 100, output_path=out, unk_token="<unk>")
  with pytest.raises(ValueError, match="special tokens must be distinct"):
    train_wordpiece_vocab(corpus_files, 100, output_path=out, special_tokens=["[UNK]", "[UNK]"])
  with pytest.raises(ValueError, match="no training files"):
    train_wordpiece_vocab([], 100, output_path=out)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_sentencepiece_model_loads_and_round_trips(corpus_files, tmp_path, model_type):
  result = train_sentencepiece_model(
    corpus_files,
    300,
    model_prefix=tmp_path / "sp",
    model_type=model_type,
    character_coverage=1.0,  # Every character of the corpus gets a piece: no <unk> below.
    num_threads=1,
  )
  assert result.path == str(tmp_path / "sp.model") and result.vocab_size == 300
  assert result.extra_paths == (str(tmp_path / "sp.vocab"),)
  assert (tmp_path / "sp.vocab").read_text(encoding="utf-8").splitlines()[0].startswith("<pad>")
  assert result.special_token_ids == {"<pad>": 0, "<unk>": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
  tokenizer = SentencePieceTokenizer.from_file(result.path)
  assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id] == [0, 1, 2]
  assert [tokenizer.sep_token_id, tokenizer.mask_token_id] == [3, 4]
  for line in _lines(corpus_files)[:300]:
    ids = tokenizer.encode(line).input_ids
    assert ids[0] == 2 and ids[-1] == 3 and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == line
  # Control symbols are never produced from text.
  assert tokenizer.mask_token_id not in tokenizer.encode("[MASK] [CLS]").input_ids[1:-1]


def test_sentencepiece_lower_case(corpus_files, tmp_path):
  result = train_sentencepiece_model(
    corpus_files,
    250,
    model_prefix=tmp_path / "lower",
    do_lower_case=True,
    user_defined_symbols=["[url]"],
    character_coverage=1.0,
    num_threads=1,
  )
  assert result.special_token_ids["[url]"] == 5
  tokenizer = SentencePieceTokenizer.from_file(result.path, do_lower_case=True)
  pieces = [tokenizer.convert_ids_to_tokens([i])[0] for i in range(6, tokenizer.vocab_size)]
  assert all(p == p.lower() for p in pieces)
  for line in _lines(corpus_files)[:200]:
    assert tokenizer.decode(tokenizer.encode(line).input_ids) == line.lower()
  assert "[url]" in tokenizer.tokenize("see [URL] now")


def test_sentencepiece_training_errors(corpus_files, tmp_path):
  with pytest.raises(ValueError, match="model_type must be one of"):
    train_sentencepiece_model(corpus_files, 100, model_prefix=tmp_path / "x", model_type="wp")
  with pytest.raises(ValueError, match=r"SentencePiece training failed.*[Vv]ocabulary size"):
    train_sentencepiece_model(corpus_files, 100_000, model_prefix=tmp_path / "x", num_threads=1)
  with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
    train_sentencepiece_model([tmp_path / "nope.txt"], 100, model_prefix=tmp_path / "x")
  with pytest.raises(ValueError, match=r"user-defined symbols must be lower-case: \['\[URL\]'\]"):
    train_sentencepiece_model(
      corpus_files,
      100,
      model_prefix=tmp_path / "x",
      do_lower_case=True,
      user_defined_symbols=["[URL]"],
    )
