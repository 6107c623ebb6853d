"""Masked-LM + next-sentence pretraining instances, built the way BERT's data creation builds them.

For each document, with a seeded `random.Random`:
  1. Target length: usually `max_seq_length - 3` tokens (room for [CLS] and two [SEP]); with
     probability `short_seq_prob` a uniform integer in [2, max_seq_length - 3] instead, to expose
     the model to short inputs as in fine-tuning. Drawn once per document pass.
  2. Whole sentences are gathered into a chunk until it reaches the target (or the document ends).
     Segment A is the first `a_end` sentences of the chunk, `a_end` uniform in [1, len(chunk) - 1]
     (1 for a one-sentence chunk).
  3. Segment B is the rest of the chunk (label 0, "B follows A"), or, with probability 1/2 and
     always for a one-sentence chunk, sentences from a random position of another document until
     B reaches the remaining target (label 1, "random"). The chunk sentences left out of a
     random-B instance are put back, so they start the next chunk. Because one-sentence chunks
     are always random, a little over half of all instances have label 1 (as in BERT).
  4. While A + B is longer than `max_seq_length - 3`, one token is removed from the longer segment
     (B on a tie), from its front or its back with equal probability.
  5. `[CLS] A [SEP] B [SEP]` with token types 0 for `[CLS] A [SEP]` and 1 for `B [SEP]`.
  6. Masking: `min(max_predictions_per_seq, max(1, round(masked_lm_prob * length)))` predictions,
     where length counts the special tokens and `round` is Python's (halves go to the even
     neighbour). Candidates are all non-special positions (with whole-
     word masking, a word's `##` continuation pieces form one candidate with it); they are shuffled
     and taken in order, skipping a word that would overshoot the count. Each chosen position
     becomes [MASK] with probability 0.8, keeps its token with 0.1, and takes a token drawn
     uniformly from the whole vocabulary with 0.1.
  7. Every document is processed `dupe_factor` times, each time with fresh randomness.

Deliberate differences from BERT's script (which we take the procedure's facts from):
  * The random document is drawn uniformly from the *other* documents, so a random B never comes
    from A's document (BERT retries up to ten times and may then use the same document); the
    corpus must hold at least two documents.
  * With whole-word masking a continuation piece joins a word only if it directly follows it, so a
    `##` piece at the start of B (left by truncation) never joins the last word of A.
  * Special positions are recognised by place, not by string, so literal "[SEP]" text in a corpus
    can still be masked like any other token.

`create_instances` processes a list of documents in the order BERT's script does: shuffle the
documents, `dupe_factor` passes over all of them, shuffle all instances. `stream_instances` does the
same with bounded memory for corpora that do not fit: see its docstring.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from mobilebert_jax.data.pretraining_documents import Document, TokenizerLike

CLS_TOKEN = "[CLS]"
SEP_TOKEN = "[SEP]"
MASK_TOKEN = "[MASK]"


@dataclasses.dataclass(frozen=True)
class PretrainingConfig:
  """Settings of pretraining-instance creation (defaults: BERT's and MobileBERT's).

  Attributes:
    max_seq_length: tokens per instance, including [CLS] and two [SEP]; at least 5 (one token
      for each segment).
    max_predictions_per_seq: cap on masked positions per instance (the P of the features).
    masked_lm_prob: fraction of tokens to mask, in (0, 1).
    short_seq_prob: probability of a shorter target length, in [0, 1].
    dupe_factor: passes over the corpus, each with different splits and masks.
    whole_word_mask: mask all WordPiece pieces of a word together.
  """

  max_seq_length: int = 128
  max_predictions_per_seq: int = 20
  masked_lm_prob: float = 0.15
  short_seq_prob: float = 0.1
  dupe_factor: int = 10
  whole_word_mask: bool = False

  def __post_init__(self):
    if self.max_seq_length < 5:
      raise ValueError(
        f"max_seq_length={self.max_seq_length} is too small: an instance is [CLS] A [SEP] B [SEP] "
        "with at least one token in A and in B, so it needs at least 5"
      )
    if not 0.0 < self.masked_lm_prob < 1.0:
      raise ValueError(f"masked_lm_prob={self.masked_lm_prob} must be in (0, 1)")
    if self.max_predictions_per_seq < 1:
      raise ValueError(f"max_predictions_per_seq={self.max_predictions_per_seq} must be at least 1")
    if not 0.0 <= self.short_seq_prob <= 1.0:
      raise ValueError(f"short_seq_prob={self.short_seq_prob} must be in [0, 1]")
    if self.dupe_factor < 1:
      raise ValueError(f"dupe_factor={self.dupe_factor} must be at least 1")


@dataclasses.dataclass(frozen=True)
class MaskingVocab:
  """The vocabulary facts masking needs, taken from a tokenizer.

  Attributes:
    cls_id: id of [CLS].
    sep_id: id of [SEP].
    mask_id: id of [MASK].
    token_ids: [vocab_size] int32, every id in vocabulary order; random replacements are drawn
      uniformly from it (special and unused entries included, as in BERT).
    is_continuation: [max_id + 1] bool, True for ids of `##` continuation pieces.
  """

  cls_id: int
  sep_id: int
  mask_id: int
  token_ids: np.ndarray
  is_continuation: np.ndarray

  @classmethod
  def from_tokenizer(cls, tokenizer: TokenizerLike) -> MaskingVocab:
    """Reads the special ids and piece types from `tokenizer.vocab`.

    Raises:
      ValueError: the vocabulary lacks [CLS], [SEP] or [MASK].
    """
    vocab = tokenizer.vocab
    missing = [t for t in (CLS_TOKEN, SEP_TOKEN, MASK_TOKEN) if t not in vocab]
    if missing:
      raise ValueError(
        f"the vocabulary ({len(vocab)} entries) has no {', '.join(missing)}; pretraining "
        f"needs {CLS_TOKEN}, {SEP_TOKEN} and {MASK_TOKEN}"
      )
    token_ids = np.fromiter(vocab.values(), dtype=np.int32, count=len(vocab))
    is_continuation = np.zeros(int(token_ids.max()) + 1, dtype=bool)
    for token, index in vocab.items():
      if token.startswith("##"):
        is_continuation[index] = True
    return cls(vocab[CLS_TOKEN], vocab[SEP_TOKEN], vocab[MASK_TOKEN], token_ids, is_continuation)


@dataclasses.dataclass(frozen=True)
class PretrainingInstance:
  """One unpadded instance.

  Attributes:
    input_ids: [T] int32, `[CLS] A [SEP] B [SEP]` after masking, T <= max_seq_length.
    token_type_ids: [T] int32, 0 up to and including the first [SEP], then 1.
    masked_lm_positions: [K] int32, increasing positions of the predictions, K <= P.
    masked_lm_ids: [K] int32, the original ids at those positions.
    next_sentence_label: 0 when B follows A in its document, 1 when B is random.
  """

  input_ids: np.ndarray
  token_type_ids: np.ndarray
  masked_lm_positions: np.ndarray
  masked_lm_ids: np.ndarray
  next_sentence_label: int


def truncate_pair(tokens_a: list[int], tokens_b: list[int], max_tokens: int, rng: random.Random):
  """Shortens A + B in place to `max_tokens`, one token at a time from the longer segment.

  The token comes off the front or the back with equal probability, so neither end is favoured.
  """
  while len(tokens_a) + len(tokens_b) > max_tokens:
    longer = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
    if rng.random() < 0.5:
      del longer[0]
    else:
      longer.pop()


def mask_tokens(
  tokens: list[int],
  special_positions: Sequence[int],
  config: PretrainingConfig,
  vocab: MaskingVocab,
  rng: random.Random,
) -> tuple[list[int], list[int], list[int]]:
  """Chooses and applies the masked-LM predictions of one instance (step 6 of the module doc).

  Args:
    tokens: [T] ids of `[CLS] A [SEP] B [SEP]`.
    special_positions: positions never masked ([CLS] and the two [SEP]).
    config: masking settings.
    vocab: special ids, replacement pool, continuation pieces.
    rng: the random source.

  Returns:
    `(masked_tokens, positions, original_ids)`; positions increasing.
  """
  special = set(special_positions)
  candidates: list[list[int]] = []
  for position, token in enumerate(tokens):
    if position in special:
      continue
    if (
      config.whole_word_mask
      and candidates
      and candidates[-1][-1] == position - 1
      and token < vocab.is_continuation.size
      and vocab.is_continuation[token]
    ):
      candidates[-1].append(position)
    else:
      candidates.append([position])
  rng.shuffle(candidates)

  num_to_predict = min(
    config.max_predictions_per_seq, max(1, round(len(tokens) * config.masked_lm_prob))
  )
  output = list(tokens)
  chosen: list[int] = []
  for word in candidates:
    if len(chosen) >= num_to_predict:
      break
    if len(chosen) + len(word) > num_to_predict:
      continue  # A whole word that would overshoot the count is skipped, not split.
    for position in word:
      if rng.random() < 0.8:
        output[position] = vocab.mask_id
      elif rng.random() < 0.5:
        pass  # Keep the original token.
      else:
        output[position] = int(vocab.token_ids[rng.randint(0, len(vocab.token_ids) - 1)])
      chosen.append(position)
  chosen.sort()
  return output, chosen, [tokens[p] for p in chosen]


def _concat(sentences: Sequence[np.ndarray]) -> list[int]:
  return [int(t) for sentence in sentences for t in sentence]


def instances_from_document(
  document: Document,
  random_document: Callable[[], Document],
  config: PretrainingConfig,
  vocab: MaskingVocab,
  rng: random.Random,
) -> list[PretrainingInstance]:
  """One pass over one document (steps 1-6 of the module docstring).

  Args:
    document: the document's sentences.
    random_document: returns a document other than this one, for random-next segments B; it must
      draw from `rng` so the whole process stays seeded.
    config: settings.
    vocab: masking vocabulary.
    rng: the random source.

  Returns:
    The instances, in document order.
  """
  max_tokens = config.max_seq_length - 3
  target_length = max_tokens
  if rng.random() < config.short_seq_prob:
    target_length = rng.randint(2, max_tokens)

  instances = []
  chunk: list[np.ndarray] = []
  chunk_length = 0
  i = 0
  while i < len(document):
    chunk.append(document[i])
    chunk_length += len(document[i])
    if i == len(document) - 1 or chunk_length >= target_length:
      a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
      tokens_a = _concat(chunk[:a_end])
      if len(chunk) == 1 or rng.random() < 0.5:
        label = 1
        other = random_document()
        tokens_b: list[int] = []
        for sentence in other[rng.randint(0, len(other) - 1) :]:
          tokens_b.extend(int(t) for t in sentence)
          if len(tokens_b) >= target_length - len(tokens_a):
            break
        i -= len(chunk) - a_end  # Put the unused sentences back for the next chunk.
      else:
        label = 0
        tokens_b = _concat(chunk[a_end:])
      truncate_pair(tokens_a, tokens_b, max_tokens, rng)

      tokens = [vocab.cls_id, *tokens_a, vocab.sep_id, *tokens_b, vocab.sep_id]
      first_sep = len(tokens_a) + 1
      specials = (0, first_sep, len(tokens) - 1)
      masked, positions, labels = mask_tokens(tokens, specials, config, vocab, rng)
      token_types = np.zeros(len(tokens), dtype=np.int32)
      token_types[first_sep + 1 :] = 1
      instances.append(
        PretrainingInstance(
          input_ids=np.asarray(masked, dtype=np.int32),
          token_type_ids=token_types,
          masked_lm_positions=np.asarray(positions, dtype=np.int32),
          masked_lm_ids=np.asarray(labels, dtype=np.int32),
          next_sentence_label=label,
        )
      )
      chunk = []
      chunk_length = 0
    i += 1
  return instances


def _other_document(
  documents: Sequence[Document], exclude: int | None, rng: random.Random
) -> Document:
  """A uniformly random document of `documents`, never the one at index `exclude`."""
  if exclude is None:
    return documents[rng.randint(0, len(documents) - 1)]
  index = rng.randint(0, len(documents) - 2)
  return documents[index + (index >= exclude)]


def _require_two(count: int, what: str):
  if count < 2:
    raise ValueError(
      f"{what} holds {count} non-empty document(s); next-sentence prediction needs at least 2 "
      "(random segments B come from a different document). Separate documents with a blank line."
    )


def create_instances(
  documents: Iterable[Document],
  config: PretrainingConfig,
  vocab: MaskingVocab,
  rng: random.Random,
) -> list[PretrainingInstance]:
  """All instances of an in-memory corpus, in BERT's order (see the module docstring).

  Args:
    documents: the corpus; empty documents are ignored.
    config: settings.
    vocab: masking vocabulary.
    rng: the random source; the result is a function of its seed.

  Returns:
    The shuffled instances of `dupe_factor` passes over the shuffled documents.

  Raises:
    ValueError: fewer than two non-empty documents.
  """
  corpus = [d for d in documents if d]
  _require_two(len(corpus), "the corpus")
  rng.shuffle(corpus)
  instances = []
  for _ in range(config.dupe_factor):
    for index, document in enumerate(corpus):
      pick = functools.partial(_other_document, corpus, index, rng)
      instances.extend(instances_from_document(document, pick, config, vocab, rng))
  rng.shuffle(instances)
  return instances


def stream_instances(
  documents: Iterable[Document],
  config: PretrainingConfig,
  vocab: MaskingVocab,
  rng: random.Random,
  *,
  pool_size: int = 10_000,
) -> Iterator[PretrainingInstance]:
  """Instances of a document stream, holding at most `pool_size` documents in memory.

  A pool of documents serves two purposes: it shuffles the document order, and it is where random
  segments B come from. Once the pool is full, each arriving document replaces a uniformly chosen
  pool member, which is then processed `dupe_factor` times (its random Bs drawn from the pool).
  When the stream ends, the remaining pool is shuffled and processed as `create_instances` would,
  each document drawing Bs from the others. With `pool_size` at least the corpus size this is
  BERT's procedure except that the `dupe_factor` passes of a document come one after the other and
  instances are not globally shuffled: put a shuffle buffer after it (`StreamBatchIterator`).

  Args:
    documents: the corpus, read once, lazily; empty documents are ignored.
    config: settings.
    vocab: masking vocabulary.
    rng: the random source.
    pool_size: documents held at once; at least 2.

  Yields:
    Instances.

  Raises:
    ValueError: `pool_size` < 2, or a stream of fewer than two non-empty documents (raised when
      the stream ends).
  """
  if pool_size < 2:
    raise ValueError(f"pool_size={pool_size} must be at least 2")
  pool: list[Document] = []
  for document in documents:
    if not document:
      continue
    if len(pool) < pool_size:
      pool.append(document)
      continue
    slot = rng.randint(0, pool_size - 1)
    current, pool[slot] = pool[slot], document
    pick = functools.partial(_other_document, pool, None, rng)
    for _ in range(config.dupe_factor):
      yield from instances_from_document(current, pick, config, vocab, rng)

  _require_two(len(pool), "the document stream")
  rng.shuffle(pool)
  for index, document in enumerate(pool):
    pick = functools.partial(_other_document, pool, index, rng)
    for _ in range(config.dupe_factor):
      yield from instances_from_document(document, pick, config, vocab, rng)
