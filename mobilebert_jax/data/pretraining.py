"""Pretraining data for MobileBERT: masked-LM + next-sentence features from raw text.

The pipeline is text -> documents (`pretraining_documents`) -> instances (`pretraining_instances`,
BERT's procedure) -> fixed-shape feature arrays (this module):

  input_ids, attention_mask, token_type_ids   [N, max_seq_length] int32, right-padded with 0
  masked_lm_positions, masked_lm_ids          [N, max_predictions_per_seq] int32, padded with 0
  masked_lm_weights                           [N, max_predictions_per_seq] float32, 1 real, 0 pad
  next_sentence_labels                        [N] int32, 0 = B follows A, 1 = B is random

Small corpora are materialised with `pretraining_features` / `pretraining_features_from_files`
(the result feeds `batching.BatchIterator`). Large ones (a TFDS Wikipedia, huge text files) are
streamed with `iter_pretraining_examples` or `pretraining_example_stream` (which feeds
`batching.StreamBatchIterator`). Everything is a function of the seed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from mobilebert_jax.data import sources
from mobilebert_jax.data.pretraining_documents import (
  Document,
  PathLike,
  TokenizerLike,
  read_text_documents,
  split_sentences,
  text_documents,
  tfds_documents,
)
from mobilebert_jax.data.pretraining_instances import (
  MaskingVocab,
  PretrainingConfig,
  PretrainingInstance,
  create_instances,
  stream_instances,
)

__all__ = [
  "FEATURE_KEYS",
  "IGNORE_INDEX",
  "Document",
  "MaskingVocab",
  "PretrainingConfig",
  "PretrainingInstance",
  "dense_mlm_labels",
  "instance_to_example",
  "instances_to_features",
  "iter_pretraining_examples",
  "pretraining_example_stream",
  "pretraining_features",
  "pretraining_features_from_files",
  "read_text_documents",
  "split_sentences",
  "text_documents",
  "tfds_documents",
  "to_transformers_inputs",
]

FEATURE_KEYS = (
  "input_ids",
  "attention_mask",
  "token_type_ids",
  "masked_lm_positions",
  "masked_lm_ids",
  "masked_lm_weights",
  "next_sentence_labels",
)
IGNORE_INDEX = -100  # transformers' (and `mobilebert_jax.train.losses`') "not scored" label.

DEFAULT_SEED = 12345  # BERT's data-creation default.


def instance_to_example(
  instance: PretrainingInstance, config: PretrainingConfig
) -> dict[str, np.ndarray]:
  """One instance as padded arrays: [L] and [P] per key, a scalar `next_sentence_labels`."""
  length, predictions = len(instance.input_ids), len(instance.masked_lm_positions)
  if length > config.max_seq_length or predictions > config.max_predictions_per_seq:
    raise ValueError(
      f"instance of {length} tokens and {predictions} predictions does not fit "
      f"max_seq_length={config.max_seq_length}, "
      f"max_predictions_per_seq={config.max_predictions_per_seq}"
    )
  tokens = np.zeros((3, config.max_seq_length), dtype=np.int32)
  tokens[0, :length] = instance.input_ids
  tokens[1, :length] = 1
  tokens[2, :length] = instance.token_type_ids
  masked = np.zeros((2, config.max_predictions_per_seq), dtype=np.int32)
  masked[0, :predictions] = instance.masked_lm_positions
  masked[1, :predictions] = instance.masked_lm_ids
  weights = np.zeros(config.max_predictions_per_seq, dtype=np.float32)
  weights[:predictions] = 1.0
  return {
    "input_ids": tokens[0],
    "attention_mask": tokens[1],
    "token_type_ids": tokens[2],
    "masked_lm_positions": masked[0],
    "masked_lm_ids": masked[1],
    "masked_lm_weights": weights,
    "next_sentence_labels": np.asarray(instance.next_sentence_label, dtype=np.int32),
  }


def instances_to_features(
  instances: Sequence[PretrainingInstance], config: PretrainingConfig
) -> dict[str, np.ndarray]:
  """Stacks instances into the feature arrays of the module docstring (leading dim N)."""
  if not instances:
    raise ValueError("no pretraining instances to convert")
  examples = [instance_to_example(instance, config) for instance in instances]
  return {key: np.stack([example[key] for example in examples]) for key in FEATURE_KEYS}


def pretraining_features(
  documents: Iterable[Document],
  tokenizer: TokenizerLike,
  config: PretrainingConfig | None = None,
  *,
  seed: int = DEFAULT_SEED,
) -> dict[str, np.ndarray]:
  """Features of an in-memory corpus, built and ordered as BERT's data creation does.

  Args:
    documents: tokenised documents, e.g. `read_text_documents(...)` or `tfds_documents(...)`.
    tokenizer: the tokenizer that produced them (for [CLS], [SEP], [MASK] and the vocabulary).
    config: settings; `PretrainingConfig()` by default.
    seed: seed of the `random.Random` driving every choice.

  Returns:
    Feature arrays, N = number of instances.

  Raises:
    ValueError: fewer than two non-empty documents, or a vocabulary without the special tokens.
  """
  config = config or PretrainingConfig()
  vocab = MaskingVocab.from_tokenizer(tokenizer)
  instances = create_instances(documents, config, vocab, random.Random(seed))
  return instances_to_features(instances, config)


def pretraining_features_from_files(
  paths: PathLike | Sequence[PathLike],
  tokenizer: TokenizerLike,
  config: PretrainingConfig | None = None,
  *,
  seed: int = DEFAULT_SEED,
) -> dict[str, np.ndarray]:
  """Features from text files in BERT's format (one sentence per line, blank line between docs).

  Raises:
    ValueError: the files hold fewer than two documents (naming the files), a line that is not
      UTF-8 (naming file and line), or a vocabulary without the special tokens.
  """
  MaskingVocab.from_tokenizer(tokenizer)  # Fail on a bad vocabulary before reading the files.
  documents = list(read_text_documents(paths, tokenizer))
  if len(documents) < 2:
    names = [os.fspath(p) for p in ([paths] if isinstance(paths, str | os.PathLike) else paths)]
    raise ValueError(
      f"{', '.join(names)}: {len(documents)} non-empty document(s) found; pretraining needs at "
      "least 2 (one sentence per line, a blank line between documents)"
    )
  return pretraining_features(documents, tokenizer, config, seed=seed)


def iter_pretraining_examples(
  documents: Iterable[Document],
  tokenizer: TokenizerLike,
  config: PretrainingConfig | None = None,
  *,
  seed: int | str = DEFAULT_SEED,
  pool_size: int = 10_000,
) -> Iterator[dict[str, np.ndarray]]:
  """Streams padded examples (`instance_to_example`) of a document stream, in bounded memory.

  See `pretraining_instances.stream_instances` for the document pool; shuffle the output (e.g.
  with `StreamBatchIterator(shuffle_buffer_size=...)`), since a document's instances come
  together.

  Args:
    documents: tokenised documents, read once, lazily.
    tokenizer: the tokenizer that produced them.
    config: settings; `PretrainingConfig()` by default.
    seed: seed of the `random.Random` driving every choice.
    pool_size: documents held in memory at once.

  Yields:
    Examples with [L] / [P] arrays and a scalar `next_sentence_labels`.
  """
  config = config or PretrainingConfig()
  vocab = MaskingVocab.from_tokenizer(tokenizer)
  rng = random.Random(seed)
  for instance in stream_instances(documents, config, vocab, rng, pool_size=pool_size):
    yield instance_to_example(instance, config)


def pretraining_example_stream(
  open_documents: Callable[[], Iterable[Document]],
  tokenizer: TokenizerLike,
  config: PretrainingConfig | None = None,
  *,
  seed: int = DEFAULT_SEED,
  pool_size: int = 10_000,
  process_index: int | None = None,
) -> Callable[[int], Iterator[dict[str, np.ndarray]]]:
  """An `epoch -> examples` function for `batching.StreamBatchIterator`.

  Each epoch re-reads the documents and uses its own seed, derived from `(seed, process_index,
  epoch)`, so epochs get new splits and masks, processes (reading different slices) do not share
  random streams, and any epoch can be regenerated exactly (which is how the iterator resumes).

  Args:
    open_documents: opens a fresh document stream, e.g.
      `lambda: tfds_documents('wikipedia/20230601.en', 'train', tokenizer)`.
    tokenizer: the tokenizer that produced the documents.
    config: settings; `PretrainingConfig()` by default.
    seed: base seed.
    pool_size: documents held in memory at once.
    process_index: this process; defaults to `jax.process_index()`.
  """
  config = config or PretrainingConfig()
  MaskingVocab.from_tokenizer(tokenizer)  # Fail on a bad vocabulary now, not at the first batch.
  if process_index is None:
    process_index, _ = sources.resolve_process()

  def examples(epoch: int) -> Iterator[dict[str, np.ndarray]]:
    # A str seed is hashed with SHA-512 by `random.Random`: stable across runs and machines.
    epoch_seed = f"{seed}:{process_index}:{epoch}"
    return iter_pretraining_examples(
      open_documents(), tokenizer, config, seed=epoch_seed, pool_size=pool_size
    )

  return examples


def dense_mlm_labels(features: Mapping[str, np.ndarray]) -> np.ndarray:
  """Masked-LM labels in transformers' dense form.

  Args:
    features: `input_ids` [N, L], `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights`
      [N, P].

  Returns:
    [N, L] int32: the original token id at each masked position, `IGNORE_INDEX` (-100) elsewhere.
  """
  num, length = features["input_ids"].shape[:2]
  positions = np.asarray(features["masked_lm_positions"])
  real = np.asarray(features["masked_lm_weights"]) > 0
  if positions[real].size and (positions[real].min() < 0 or positions[real].max() >= length):
    raise ValueError(f"masked_lm_positions outside [0, {length}) for input_ids of length {length}")
  labels = np.full((num, length), IGNORE_INDEX, dtype=np.int32)
  rows = np.broadcast_to(np.arange(num)[:, None], positions.shape)
  labels[rows[real], positions[real]] = np.asarray(features["masked_lm_ids"])[real]
  return labels


def to_transformers_inputs(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The keyword arguments of transformers' `MobileBertForPreTraining` (and our losses).

  Returns:
    `input_ids`, `attention_mask`, `token_type_ids` [N, L]; `labels` [N, L] (`dense_mlm_labels`);
    `next_sentence_label` [N]; plus `weights` [N] when the batch has them (padded batches).
  """
  inputs = {key: features[key] for key in ("input_ids", "attention_mask", "token_type_ids")}
  inputs["labels"] = dense_mlm_labels(features)
  inputs["next_sentence_label"] = features["next_sentence_labels"]
  if "weights" in features:
    inputs["weights"] = features["weights"]
  return inputs
