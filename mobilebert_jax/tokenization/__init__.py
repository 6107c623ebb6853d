"""Tokenizers for MobileBERT: BERT WordPiece and SentencePiece, plus vocabulary training.

* `WordPieceTokenizer` reads a BERT `vocab.txt` and gives exactly the tokens of transformers'
  slow Python BERT tokenizer, computed by HF `tokenizers` (Rust).
* `SentencePieceTokenizer` reads a SentencePiece `.model` (ALBERT-style vocabularies).
* Both return an `Encoding` from `encode` (`[CLS] A [SEP] (B [SEP])`, truncation, padding) and
  character offsets into the original text.
* `train_wordpiece_vocab` and `train_sentencepiece_model` build vocabularies from text files.
"""

from mobilebert_jax.tokenization.encoding import Encoding, Segment, SpecialTokens, assemble
from mobilebert_jax.tokenization.sentencepiece import SentencePieceTokenizer
from mobilebert_jax.tokenization.training import (
  TrainedVocab,
  train_sentencepiece_model,
  train_wordpiece_vocab,
)
from mobilebert_jax.tokenization.wordpiece import WordPieceTokenizer, load_vocab, save_vocab

__all__ = [
  "Encoding",
  "Segment",
  "SentencePieceTokenizer",
  "SpecialTokens",
  "TrainedVocab",
  "WordPieceTokenizer",
  "assemble",
  "load_vocab",
  "save_vocab",
  "train_sentencepiece_model",
  "train_wordpiece_vocab",
]
