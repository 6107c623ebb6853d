"""Vocabulary training from text files, for pretraining MobileBERT in a new language.

* `train_wordpiece_vocab` runs HF `tokenizers`' WordPiece trainer over the words of BERT's basic
  step (the same normaliser and pre-tokenizer as `WordPieceTokenizer`) and writes a BERT
  `vocab.txt`: the special tokens first (by default `[PAD]`=0, `[UNK]`=1, `[CLS]`=2, `[SEP]`=3,
  `[MASK]`=4: BERT's order without its `[unused*]` gaps), then optional `[unused0]`,
  `[unused1]`, ... placeholders, then the learned pieces.
* `train_sentencepiece_model` runs the SentencePiece trainer in-process and writes `.model` and
  `.vocab`, laid out as ALBERT's: `<pad>`=0, `<unk>`=1, then `[CLS]`=2, `[SEP]`=3, `[MASK]`=4 as
  control symbols, no BOS/EOS pieces.

Both return a `TrainedVocab` that names the files and the id of every special token.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import sentencepiece as spm
from tokenizers import Tokenizer, models, trainers

from mobilebert_jax.tokenization import basic_tokenizer
from mobilebert_jax.tokenization.basic_tokenizer import BasicOptions
from mobilebert_jax.tokenization.wordpiece import save_vocab

__all__ = [
  "BERT_SPECIAL_TOKENS",
  "SENTENCEPIECE_CONTROL_SYMBOLS",
  "TrainedVocab",
  "train_sentencepiece_model",
  "train_wordpiece_vocab",
]

PathLike = str | os.PathLike

BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
SENTENCEPIECE_CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
_SENTENCEPIECE_MODEL_TYPES = ("unigram", "bpe", "char", "word")


@dataclasses.dataclass(frozen=True)
class TrainedVocab:
  """What a vocabulary trainer wrote.

  Attributes:
    path: the file to load (`vocab.txt` for WordPiece, `.model` for SentencePiece).
    vocab_size: number of tokens written (the trainers may find fewer than asked for).
    special_token_ids: id of every special token.
    extra_paths: other files written (SentencePiece's `.vocab`).
  """

  path: str
  vocab_size: int
  special_token_ids: dict[str, int]
  extra_paths: tuple[str, ...] = ()


def _check_files(files: Sequence[PathLike] | PathLike) -> list[str]:
  if isinstance(files, (str, os.PathLike)):
    files = [files]
  paths = [os.fspath(f) for f in files]
  if not paths:
    raise ValueError("no training files given")
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"training file not found: {path}")
  return paths


def _check_special_tokens(tokens: Sequence[str]) -> list[str]:
  tokens = list(tokens)
  if len(set(tokens)) != len(tokens):
    raise ValueError(f"special tokens must be distinct, got {tokens}")
  for token in tokens:
    if not token or any(c.isspace() for c in token):
      raise ValueError(f"special token {token!r} is empty or contains whitespace")
  return tokens


def train_wordpiece_vocab(
  files: Sequence[PathLike] | PathLike,
  vocab_size: int,
  *,
  output_path: PathLike,
  do_lower_case: bool = True,
  strip_accents: bool | None = None,
  tokenize_chinese_chars: bool = True,
  min_frequency: int = 2,
  limit_alphabet: int = 1000,
  special_tokens: Sequence[str] = BERT_SPECIAL_TOKENS,
  unk_token: str = "[UNK]",
  num_unused_tokens: int = 0,
  show_progress: bool = False,
) -> TrainedVocab:
  """Learns a WordPiece vocabulary from UTF-8 text files and writes it as a BERT `vocab.txt`.

  Args:
    files: text files (any line structure: words are what counts).
    vocab_size: tokens in the vocabulary, special and unused tokens included.
    output_path: where to write `vocab.txt` (a directory gets a `vocab.txt` inside).
    do_lower_case, strip_accents, tokenize_chinese_chars: BERT's basic step, as the tokenizer that
      will use the vocabulary runs it (`WordPieceTokenizer.from_file(path, do_lower_case=...)`).
    min_frequency: pairs seen fewer times are not merged.
    limit_alphabet: at most this many distinct characters (the most frequent) enter the alphabet.
    special_tokens: written first, in this order, with ids 0, 1, ...
    unk_token: the unknown token (one of `special_tokens`).
    num_unused_tokens: `[unused0]`... placeholders written after the special tokens, for
      domain tokens added later without changing any id.
    show_progress: show the trainer's progress bars.

  Returns:
    A `TrainedVocab` with `special_token_ids` such as `{"[PAD]": 0, "[UNK]": 1, ...}`.

  Two trainings on the same text may not give the same vocabulary: `tokenizers` breaks ties
  between equally frequent pieces in an order that changes from process to process (seen with
  the demo's corpus: 163 of 4,000 lines differed). Train a vocabulary once and keep the file;
  every run that must share token ids (a teacher and its students, a resumed run) reads it.

  Raises:
    FileNotFoundError: a training file is missing.
    ValueError: bad arguments.
  """
  paths = _check_files(files)
  specials = _check_special_tokens(special_tokens)
  if unk_token not in specials:
    raise ValueError(f"unk_token {unk_token!r} must be one of the special tokens {specials}")
  if num_unused_tokens < 0:
    raise ValueError(f"num_unused_tokens must be >= 0, got {num_unused_tokens}")
  reserved = len(specials) + num_unused_tokens
  if vocab_size <= reserved:
    raise ValueError(
      f"vocab_size={vocab_size} leaves no room after {len(specials)} special and "
      f"{num_unused_tokens} unused tokens"
    )
  options = BasicOptions(do_lower_case, strip_accents, tokenize_chinese_chars)
  tokenizer = Tokenizer(models.WordPiece(unk_token=unk_token, continuing_subword_prefix="##"))
  tokenizer.normalizer = basic_tokenizer.build_normalizer(options)
  tokenizer.pre_tokenizer = basic_tokenizer.build_pre_tokenizer(options)
  trainer = trainers.WordPieceTrainer(
    vocab_size=vocab_size - num_unused_tokens,
    min_frequency=min_frequency,
    special_tokens=specials,
    limit_alphabet=limit_alphabet,
    continuing_subword_prefix="##",
    show_progress=show_progress,
  )
  tokenizer.train(paths, trainer)
  learned = tokenizer.get_vocab(with_added_tokens=True)
  ordered = sorted(learned, key=learned.__getitem__)
  if ordered[: len(specials)] != specials:  # pragma: no cover - the trainer's documented layout
    raise RuntimeError(f"the trainer did not put the special tokens first: {ordered[:10]}")
  unused = [f"[unused{i}]" for i in range(num_unused_tokens)]
  clash = set(unused) & set(ordered)
  if clash:  # pragma: no cover - '[' is punctuation, so no learned piece can look like this
    raise RuntimeError(f"learned tokens clash with the unused placeholders: {sorted(clash)}")
  tokens = specials + unused + ordered[len(specials) :]
  vocab = {token: index for index, token in enumerate(tokens)}
  path = os.fspath(output_path)
  if os.path.isdir(path):
    path = os.path.join(path, "vocab.txt")
  save_vocab(vocab, path)
  return TrainedVocab(path, len(vocab), {t: vocab[t] for t in specials})


def _lowercased_lines(paths: Sequence[str]) -> Iterator[str]:
  for path in paths:
    with open(path, encoding="utf-8") as f:
      for line in f:
        yield line.rstrip("\n").lower()


def train_sentencepiece_model(
  files: Sequence[PathLike] | PathLike,
  vocab_size: int,
  *,
  model_prefix: PathLike,
  model_type: str = "unigram",
  do_lower_case: bool = False,
  character_coverage: float = 0.9995,
  pad_token: str = "<pad>",
  unk_token: str = "<unk>",
  control_symbols: Sequence[str] = SENTENCEPIECE_CONTROL_SYMBOLS,
  user_defined_symbols: Sequence[str] = (),
  input_sentence_size: int = 0,
  shuffle_input_sentence: bool = True,
  num_threads: int | None = None,
  extra_options: Mapping[str, object] | None = None,
) -> TrainedVocab:
  """Trains a SentencePiece model in-process; writes `<model_prefix>.model` and `.vocab`.

  Args:
    files: UTF-8 text files, one sentence per line.
    vocab_size: pieces in the model, special pieces included.
    model_prefix: output path without extension.
    model_type: `unigram` (ALBERT's), `bpe`, `char` or `word`.
    do_lower_case: train on lower-cased text (then load with
      `SentencePieceTokenizer.from_file(path, do_lower_case=True)`).
    character_coverage: share of characters the model covers (rarer ones become `<unk>`).
    pad_token, unk_token: pieces with ids 0 and 1.
    control_symbols: pieces with the next ids (2, 3, 4 for ALBERT's `[CLS]`, `[SEP]`, `[MASK]`);
      SentencePiece never produces them from text.
    user_defined_symbols: pieces after the control symbols that text matches whole (lower-case
      ones when `do_lower_case`).
    input_sentence_size: sample at most this many sentences (0: use all).
    shuffle_input_sentence: shuffle before sampling.
    num_threads: trainer threads (default: all CPUs).
    extra_options: further `SentencePieceTrainer.train` options, passed through.

  Returns:
    A `TrainedVocab`; `path` is the `.model` file, `extra_paths` holds the `.vocab` file.

  Raises:
    FileNotFoundError: a training file is missing.
    ValueError: bad arguments, or the trainer refused them (for instance `vocab_size` larger than
      the corpus supports).
  """
  paths = _check_files(files)
  if model_type not in _SENTENCEPIECE_MODEL_TYPES:
    raise ValueError(f"model_type must be one of {_SENTENCEPIECE_MODEL_TYPES}, got {model_type!r}")
  symbols = _check_special_tokens([pad_token, unk_token, *control_symbols, *user_defined_symbols])
  if do_lower_case:
    upper = [s for s in user_defined_symbols if s != s.lower()]
    if upper:
      # The tokenizer lower-cases text (special tokens apart) before SentencePiece matches these.
      raise ValueError(f"with do_lower_case=True, user-defined symbols must be lower-case: {upper}")
  prefix = os.fspath(model_prefix)
  options: dict[str, object] = dict(
    model_prefix=prefix,
    vocab_size=vocab_size,
    model_type=model_type,
    character_coverage=character_coverage,
    pad_id=0,
    unk_id=1,
    bos_id=-1,
    eos_id=-1,
    pad_piece=pad_token,
    unk_piece=unk_token,
    control_symbols=list(control_symbols),
    user_defined_symbols=list(user_defined_symbols),
    input_sentence_size=input_sentence_size,
    shuffle_input_sentence=shuffle_input_sentence,
    num_threads=num_threads or os.cpu_count() or 1,
    minloglevel=2,  # Only errors: the trainer is very talkative.
  )
  if not control_symbols:
    del options["control_symbols"]
  if not user_defined_symbols:
    del options["user_defined_symbols"]
  options.update(extra_options or {})
  if do_lower_case:
    options["sentence_iterator"] = _lowercased_lines(paths)
  else:
    options["input"] = paths
  try:
    spm.SentencePieceTrainer.train(**options)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training failed: {e}") from None
  processor = spm.SentencePieceProcessor(model_file=prefix + ".model")
  ids = {s: processor.piece_to_id(s) for s in symbols}
  return TrainedVocab(prefix + ".model", processor.get_piece_size(), ids, (prefix + ".vocab",))
