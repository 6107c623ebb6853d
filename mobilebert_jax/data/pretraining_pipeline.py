"""Pretraining input on Grain: instances written once to ArrayRecord shards, read as batches.

**Flow (two steps).** Instance creation (tokenised documents -> BERT's masked-LM + next-sentence
instances, `pretraining`) is single-threaded Python and, with a fixed seed, gives the same result
each time, so it runs once:

  1. `write_instances(train_files, tokenizer, config, out_dir, seed=..., shards=...)` streams the
     text files through `pretraining.iter_pretraining_examples` (bounded memory: `pool_size`
     documents and one example at a time) into `shards` ArrayRecord files plus a manifest,
     `instances.json`. TFDS text datasets go through `write_examples` the same way (see its
     docstring). Write the held-out split (eval files) to a directory of its own.
  2. `pretraining_batches(out_dir, global_batch_size, seed=..., shuffle=True, ...)` reads them
     with Grain (`grain.MapDataset` over `grain.sources.ArrayRecordDataSource`): a global shuffle
     by random access, a new order each epoch, and each host reading only its rows of every
     global batch. Evaluation reads its directory with `shuffle=False, num_epochs=1,
     drop_remainder=False`: every example once, the last batch padded with `weights`.

Small corpora can skip the files: `pretraining_batches(features, ...)` takes the in-memory arrays
of `pretraining.pretraining_features` and runs the same Grain pipeline over them.

Creating instances on the fly inside Grain is not offered. Grain's resumable datasets are
random-access sources (`MapDataset`) and its own file readers; a Python generator of fresh
instances can only be resumed by regenerating it up to the saved position, which is exactly
what `batching.StreamBatchIterator` over `pretraining.pretraining_example_stream` already does
(per host, without a global shuffle). That stays the way to train without writing files; Grain
adds what the two-step flow makes possible: a global shuffle, multi-threaded reads and a resume
that costs nothing.

**Records.** One example per record, a fixed little-endian int32 layout:

  [num_tokens, num_predictions, next_sentence_label, input_ids[L], token_type_ids[L],
   masked_lm_positions[P], masked_lm_ids[P]]

with L = `max_seq_length` and P = `max_predictions_per_seq` from the manifest. `attention_mask`
(`num_tokens` leading ones) and `masked_lm_weights` (`num_predictions` leading ones) are rebuilt on
reading; they carry no other information. Decoding is one `np.frombuffer` and slicing, with no
parser and no per-array header: a NumPy `.npz` is a zip archive with a local and a central header
and a `.npy` header for each of the seven arrays, 3,638 bytes for one example at L = 128, P = 20,
where this layout takes 1,196. The zero padding costs little on disk, because ArrayRecord
compresses each record (zstd). Files use `group_size:1`, which Grain needs for fast random
access.

**Order.** Record `i` of a directory is the `i`-th example of the stream, whatever the number of
shards (example `i` goes to shard `i % shards`, and reading maps it back), so reading with
`shuffle=False` yields the stream in order; several directories (written in parallel from parts
of a corpus, each with its own seed) read as their concatenation. Relation to the in-memory
path: the stream is `pretraining.iter_pretraining_examples(read_text_documents(files), ...)`, i.e.
`pretraining_instances.stream_instances`, which with `pool_size` at least the number of documents
is BERT's procedure over the whole corpus except for the final shuffle of all instances, and the
read-time shuffle takes its place. `pretraining.pretraining_features` (`create_instances`) draws
its random numbers in another order (all `dupe_factor` passes over the shuffled corpus first), so
its instances are different draws of the same procedure, not the same examples. Given the same
examples, the pipeline does not depend on where they come from: features in memory and the same
features written as shards give identical batches.

Masks are fixed when the instances are written (BERT's static masking); `dupe_factor` passes
give every sentence that many different splits and masks. Epochs beyond `dupe_factor` repeat
them in a new order.

**Batches and hosts.** The Grain pipeline is: source -> `shuffle` (Grain's index shuffle: a
permutation computed per index, no buffer) -> each epoch cut to whole global batches (the last
partial batch dropped, or padded with zero rows and `weights` 0) -> `repeat(num_epochs)` (a new
permutation each epoch) -> `batch(L)` -> `[p::P]`, where L = `global_batch_size // process_count`
and p, P are the process index and count. Host p thus reads rows [p·L, (p+1)·L) of every global
batch and nothing else, the union of the hosts' batches in process order is the global batch,
and the global order does not depend on the number of hosts: `BatchIterator`'s contract.

**State.** Grain's iterator state is a dict, `{"next_index": k}`, k = global batches drawn. We
wrap it with the iterator's identity and a readable position: `{"kind", "epoch", "step", ...,
"grain": {"next_index": k}}`, small JSON that is the same on every host and for any host count.
It goes into our Orbax checkpoints as the `data` item, through `train.checkpointing`, like every
iterator's `get_state()`. Grain's own Orbax handler (`grain.checkpoint.CheckpointSave`) is not
used: it writes one file per process, `process_{i}-of-{n}.json`, which ties a checkpoint to the
host count and adds a second data item, while our state is global, so one JSON copy suffices.

**Seeds.** Grain seeds epoch `e` of a shuffle with `seed + e`, so seeds 3 and 4 would give the
same permutations one epoch apart; the pipeline therefore hashes our seed (`np.random.SeedSequence`)
into Grain's.

**Sequence-length phases.** BERT trains 90% of the steps at 128 tokens, then 512. Instances are
created per length, so write two directories (one per `PretrainingConfig.max_seq_length`), build
one `pretraining_batches` per directory, and combine them with `PhasedBatches(phases,
switch_steps=[phase_switch_step(total_steps)])`: the batch of step `s` (counting from 0) comes from
phase 0 while `s < switch_steps[0]`, then from phase 1 (which starts at its beginning). Its state
holds every phase's state, so a resume in either phase is exact; the jitted step compiles once
more at the switch (a new shape).

**Fine-tuning keeps `batching.BatchIterator`** (decision for the training-pipeline issue).
It is the simpler of the two for what fine-tuning needs. Fine-tuning features are small and in
memory, and there the whole job is a permutation and a slice: `BatchIterator` does it in NumPy,
with no reader threads, no prefetch buffer to size and nothing to close, and its state is
already small, global JSON. Moving it onto Grain would add those moving parts and a dependency
on Grain's shuffle for no gain in speed or function. Grain earns its place where the data are
files larger than memory that need a global shuffle and multi-threaded random reads:
pretraining. Both iterators keep one protocol (`next()`, `get_state()`, `set_state()`, the same
host slices, `weights` on padded batches), so a trainer uses either unchanged, and in-memory
features can go through this module's Grain pipeline if a task ever needs it.

Bounded memory while writing (a pool of `pool_size` documents, one example in flight) follows
from the streaming code; it is not tested, as a test would need a corpus larger than memory.
"""

from __future__ import annotations

import bisect
import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from mobilebert_jax import atomic_files
from mobilebert_jax.data import pretraining, sources
from mobilebert_jax.data.pretraining_documents import PathLike, TokenizerLike, read_text_documents
from mobilebert_jax.data.pretraining_instances import PretrainingConfig

__all__ = [
  "MANIFEST_NAME",
  "InMemoryExamples",
  "InstanceShards",
  "PhasedBatches",
  "PretrainingBatches",
  "decode_example",
  "encode_example",
  "phase_switch_step",
  "pretraining_batches",
  "write_examples",
  "write_instances",
]

MANIFEST_NAME = "instances.json"
FORMAT_NAME = "mobilebert_jax.pretraining_instances"
FORMAT_VERSION = 1
WEIGHTS_KEY = "weights"  # The key `batching.BatchIterator` adds to padded batches; the same here.
_HEADER = 3  # num_tokens, num_predictions, next_sentence_label
_WRITER_OPTIONS = "group_size:1"  # Grain reads records one by one; larger groups slow it down.


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def _record_size(max_seq_length: int, max_predictions_per_seq: int) -> int:
  return _HEADER + 2 * max_seq_length + 2 * max_predictions_per_seq


def encode_example(example: Mapping[str, np.ndarray]) -> bytes:
  """One padded example (`pretraining.instance_to_example`) as a record of the module layout.

  Raises:
    ValueError: an example whose masks are not leading ones (not a padded instance).
  """
  length = np.shape(example["input_ids"])[0]
  predictions = np.shape(example["masked_lm_ids"])[0]
  num_tokens = int(np.sum(example["attention_mask"]))
  num_predictions = int(np.sum(np.asarray(example["masked_lm_weights"]) > 0))
  # The masks are rebuilt from the two counts, so they must be exactly leading ones.
  if not (
    np.array_equal(example["attention_mask"], np.arange(length) < num_tokens)
    and np.array_equal(example["masked_lm_weights"], np.arange(predictions) < num_predictions)
  ):
    raise ValueError(
      "attention_mask and masked_lm_weights must be leading ones then zeros (a padded "
      "instance, as pretraining.instance_to_example makes it)"
    )
  record = np.empty(_record_size(length, predictions), dtype="<i4")
  record[:_HEADER] = (num_tokens, num_predictions, int(example["next_sentence_labels"]))
  parts = ("input_ids", "token_type_ids", "masked_lm_positions", "masked_lm_ids")
  record[_HEADER:] = np.concatenate([np.asarray(example[key]).reshape(-1) for key in parts])
  return record.tobytes()


def decode_example(
  record: bytes, max_seq_length: int, max_predictions_per_seq: int
) -> dict[str, np.ndarray]:
  """A record back as the example `pretraining.instance_to_example` made ([L], [P], scalar).

  Raises:
    ValueError: a record of the wrong size for these lengths.
  """
  length, predictions = max_seq_length, max_predictions_per_seq
  values = np.frombuffer(record, dtype="<i4")
  if values.size != _record_size(length, predictions):
    raise ValueError(
      f"a record of {len(record)} bytes does not hold an example of max_seq_length={length}, "
      f"max_predictions_per_seq={predictions} ({4 * _record_size(length, predictions)} bytes)"
    )
  num_tokens, num_predictions, label = (int(v) for v in values[:_HEADER])
  splits = np.cumsum([length, length, predictions])
  ids, types, positions, masked = np.split(values[_HEADER:], splits)
  return {
    "input_ids": ids.astype(np.int32),
    "attention_mask": (np.arange(length) < num_tokens).astype(np.int32),
    "token_type_ids": types.astype(np.int32),
    "masked_lm_positions": positions.astype(np.int32),
    "masked_lm_ids": masked.astype(np.int32),
    "masked_lm_weights": (np.arange(predictions) < num_predictions).astype(np.float32),
    "next_sentence_labels": np.asarray(label, dtype=np.int32),
  }


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _shard_name(index: int, count: int) -> str:
  return f"instances-{index:05d}-of-{count:05d}.array_record"


def write_examples(
  examples: Iterable[Mapping[str, np.ndarray]],
  out_dir: PathLike,
  *,
  config: PretrainingConfig,
  shards: int,
  provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Writes a stream of padded examples as ArrayRecord shards and a manifest, in bounded memory.

  Example `i` goes to shard `i % shards`. The manifest, written last (atomically), marks the
  directory complete; a crash leaves shards without one, which readers refuse.

  For a TFDS text dataset, e.g. Wikipedia:

      docs = tfds_documents("wikipedia/20230601.en", "train", tokenizer,
                            process_index=0, process_count=1)
      write_examples(pretraining.iter_pretraining_examples(docs, tokenizer, config, seed=s),
                     out_dir, config=config, shards=64, provenance={"seed": s})

  Args:
    examples: dicts with `pretraining.FEATURE_KEYS`, [L] / [P] arrays and a scalar label.
    out_dir: directory to create or fill; it must not hold a manifest already.
    config: the settings the examples were made with (L, P and the rest go to the manifest).
    shards: number of files, at least 1 (shards left empty are not written).
    provenance: JSON values recorded in the manifest (seed, source files, ...).

  Returns:
    The manifest.

  Raises:
    FileExistsError: `out_dir` already holds instances.
    ValueError: `shards` < 1, an example of another shape than `config`'s, or no examples.
  """
  if not isinstance(shards, int) or shards < 1:
    raise ValueError(f"shards must be a positive integer, got {shards!r}")
  out_dir = os.fspath(out_dir)
  manifest_path = os.path.join(out_dir, MANIFEST_NAME)
  if os.path.exists(manifest_path):
    raise FileExistsError(
      f"{out_dir} already holds pretraining instances ({MANIFEST_NAME}); write to a new "
      "directory or delete this one"
    )
  os.makedirs(out_dir, exist_ok=True)
  length, predictions = config.max_seq_length, config.max_predictions_per_seq
  record_bytes = 4 * _record_size(length, predictions)
  paths = [os.path.join(out_dir, _shard_name(i, shards)) for i in range(shards)]
  writers = [array_record_module.ArrayRecordWriter(p, _WRITER_OPTIONS) for p in paths]
  counts = [0] * shards
  try:
    for index, example in enumerate(examples):
      record = encode_example(example)
      if len(record) != record_bytes:
        raise ValueError(
          f"example {index} has input_ids of length {np.shape(example['input_ids'])[0]} and "
          f"{np.shape(example['masked_lm_ids'])[0]} prediction slots; config says "
          f"max_seq_length={length}, max_predictions_per_seq={predictions}"
        )
      writers[index % shards].write(record)
      counts[index % shards] += 1
  finally:
    for writer in writers:
      writer.close()
  total = sum(counts)
  if total == 0:
    raise ValueError(f"no examples to write to {out_dir}")
  kept = [i for i in range(shards) if counts[i]]  # Round-robin: shards 0..k-1 when k < shards.
  for i in range(shards):
    if not counts[i]:
      os.remove(paths[i])
  manifest = {
    "format": FORMAT_NAME,
    "format_version": FORMAT_VERSION,
    "config": dataclasses.asdict(config),
    "num_examples": total,
    "shards": [{"file": os.path.basename(paths[i]), "num_examples": counts[i]} for i in kept],
    "record_layout": (
      "little-endian int32: num_tokens, num_predictions, next_sentence_label, "
      "input_ids[L], token_type_ids[L], masked_lm_positions[P], masked_lm_ids[P]"
    ),
    "provenance": dict(provenance or {}),
  }
  atomic_files.write_json(manifest_path, manifest)
  return manifest


def _expand_files(files: PathLike | Sequence[PathLike]) -> list[str]:
  """A glob pattern or a list of paths -> the files, globs sorted; raises if none match."""
  patterns = [files] if isinstance(files, str | os.PathLike) else list(files)
  found = []
  for pattern in patterns:
    pattern = os.fspath(pattern)
    matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    if not matches or not os.path.isfile(matches[0]):
      raise FileNotFoundError(f"no text file matches {pattern!r}")
    found.extend(matches)
  return found


def write_instances(
  files: PathLike | Sequence[PathLike],
  tokenizer: TokenizerLike,
  config: PretrainingConfig,
  out_dir: PathLike,
  *,
  seed: int,
  shards: int,
  pool_size: int = 10_000,
) -> dict[str, Any]:
  """Creates the pretraining instances of text files once and writes them as ArrayRecord shards.

  The examples are `pretraining.iter_pretraining_examples(read_text_documents(files),
  tokenizer, config, seed=seed, pool_size=pool_size)`, in that order (see the module docstring
  for how they relate to the in-memory path).

  Args:
    files: a glob such as `'corpus/part-*.txt'` or a list of paths (globs allowed): one sentence
      per line, a blank line between documents, read in sorted order per pattern.
    tokenizer: WordPiece tokenizer (its vocabulary size goes to the manifest).
    config: instance settings; one directory per `max_seq_length`.
    out_dir: the directory to write.
    seed: seed of instance creation.
    shards: number of ArrayRecord files.
    pool_size: documents held in memory at once (random segments B come from this pool).

  Returns:
    The manifest (also written to `out_dir/instances.json`).

  Raises:
    FileNotFoundError: a pattern matches no file.
    FileExistsError: `out_dir` already holds instances.
    ValueError: fewer than two documents, a line that is not UTF-8 (naming file and line), or a
      vocabulary without [CLS], [SEP], [MASK].
  """
  paths = _expand_files(files)
  examples = pretraining.iter_pretraining_examples(
    read_text_documents(paths, tokenizer), tokenizer, config, seed=seed, pool_size=pool_size
  )
  provenance = {
    "source_files": paths,
    "seed": seed,
    "pool_size": pool_size,
    "vocab_size": len(tokenizer.vocab),
  }
  return write_examples(examples, out_dir, config=config, shards=shards, provenance=provenance)


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class InstanceShards:
  """Random access to the examples of one or more `write_examples` directories (in order).

  A Grain `RandomAccessDataSource` (`len()` and `[i]`, thread-safe) whose items are decoded
  examples (see `decode_example`).

  Args:
    directories: one directory or several, read as their concatenation; all must have the same
      `max_seq_length` and `max_predictions_per_seq`.

  Raises:
    FileNotFoundError: a directory without a manifest (not written, or the write did not finish).
    ValueError: a manifest of another format, or directories of different lengths.
  """

  def __init__(self, directories: PathLike | Sequence[PathLike]):
    if isinstance(directories, str | os.PathLike):
      directories = [directories]
    if not directories:
      raise ValueError("no instance directories given")
    self.manifests = [self._read_manifest(os.fspath(d)) for d in directories]
    shapes = {
      (m["config"]["max_seq_length"], m["config"]["max_predictions_per_seq"])
      for m in self.manifests
    }
    if len(shapes) != 1:
      raise ValueError(
        f"instance directories {[os.fspath(d) for d in directories]} have different "
        f"(max_seq_length, max_predictions_per_seq): {sorted(shapes)}; read them separately"
      )
    (self.max_seq_length, self.max_predictions_per_seq) = shapes.pop()
    paths: list[str] = []
    self._first_key: list[list[int]] = []  # Per directory, the record key of each shard's first.
    self._num_shards: list[int] = []
    self._starts = [0]  # First example index of each directory.
    key = 0
    for directory, manifest in zip(directories, self.manifests, strict=True):
      self._first_key.append([])
      for shard in manifest["shards"]:
        self._first_key[-1].append(key)
        key += shard["num_examples"]
        paths.append(os.path.join(os.fspath(directory), shard["file"]))
      self._num_shards.append(len(manifest["shards"]))
      self._starts.append(self._starts[-1] + manifest["num_examples"])
    self._source = grain.sources.ArrayRecordDataSource(paths)
    if len(self._source) != self._starts[-1]:
      raise ValueError(
        f"the shards of {[os.fspath(d) for d in directories]} hold {len(self._source)} records, "
        f"their manifests say {self._starts[-1]}: a shard was changed after writing"
      )

  @staticmethod
  def _read_manifest(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.exists(path):
      raise FileNotFoundError(
        f"{directory} has no {MANIFEST_NAME}: not a pretraining-instance directory, or its "
        "write did not finish (write it again)"
      )
    with open(path, encoding="utf-8") as f:
      manifest = json.load(f)
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
      raise ValueError(
        f"{path}: format {manifest.get('format')!r} version {manifest.get('format_version')!r}; "
        f"this reader reads {FORMAT_NAME!r} version {FORMAT_VERSION}"
      )
    counts = [s["num_examples"] for s in manifest["shards"]]
    total, n = manifest["num_examples"], len(counts)
    # Reading relies on the round-robin assignment of `write_examples`.
    if counts != [len(range(s, total, n)) for s in range(n)]:
      raise ValueError(f"{path}: shard sizes {counts} are not a round-robin split of {total}")
    return manifest

  def __len__(self) -> int:
    return self._starts[-1]

  def _key(self, index: int) -> int:
    """Example index -> record key of the ArrayRecord source (shard files in manifest order)."""
    if not 0 <= index < len(self):
      raise IndexError(f"example {index} is outside [0, {len(self)})")
    d = bisect.bisect_right(self._starts, index) - 1
    local = index - self._starts[d]
    # Round-robin writing put example `local` at position `local // n` of shard `local % n`.
    return self._first_key[d][local % self._num_shards[d]] + local // self._num_shards[d]

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    record = self._source[self._key(int(index))]
    return decode_example(record, self.max_seq_length, self.max_predictions_per_seq)


class InMemoryExamples:
  """Feature arrays in memory as a Grain `RandomAccessDataSource` of examples.

  Args:
    features: arrays with a common leading dimension N, e.g. `pretraining.pretraining_features`.
  """

  def __init__(self, features: Mapping[str, np.ndarray]):
    if not features:
      raise ValueError("features is empty: nothing to batch")
    self._features = {key: np.asarray(value) for key, value in features.items()}
    sizes = {k: v.shape[0] if v.ndim else None for k, v in self._features.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
      raise ValueError(f"features need one common leading dimension, got sizes {sizes}")
    self._num_examples = next(iter(sizes.values()))

  def __len__(self) -> int:
    return self._num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {key: value[index] for key, value in self._features.items()}


# ----------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------


def _as_source(source: Any) -> Any:
  if isinstance(source, str | os.PathLike) or (
    isinstance(source, Sequence) and source and isinstance(source[0], str | os.PathLike)
  ):
    return InstanceShards(source)
  if isinstance(source, Mapping):
    return InMemoryExamples(source)
  if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
    raise TypeError(
      f"source must be instance directories, feature arrays or a random-access source of "
      f"examples; got {type(source).__name__}"
    )
  return source


def _default_read_options(source: Any) -> grain.ReadOptions:
  if isinstance(source, InMemoryExamples):
    # Grain's advice for data already in memory: no threads, which would only contend for the GIL.
    return grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  # An element of this pipeline is a whole local batch, so Grain's default buffer of 500
  # elements would hold 500 batches; a few suffice to hide the reads behind a train step.
  return grain.ReadOptions(num_threads=8, prefetch_buffer_size=8)


def _grain_seed(seed: int) -> int:
  """Our seed -> Grain's shuffle seed, hashed so that seeds s and s + 1 share no epochs."""
  return int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint32)[0])


class _Padding:
  """`count` copies of one all-zero example with `weights` 0 (fills the last global batch)."""

  def __init__(self, example: Mapping[str, np.ndarray], count: int):
    self._example = {key: np.zeros_like(value) for key, value in example.items()}
    self._example[WEIGHTS_KEY] = np.asarray(0.0, dtype=np.float32)
    self._count = count

  def __len__(self) -> int:
    return self._count

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return self._example


def _with_weight(example: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {**example, WEIGHTS_KEY: np.asarray(1.0, dtype=np.float32)}


class PretrainingBatches:
  """This host's slice of each global batch, from a Grain pipeline (see the module docstring).

  Use `pretraining_batches` to build one. Iterating yields dicts of arrays [local_batch, ...]
  with `pretraining.FEATURE_KEYS` (plus `weights` [local_batch] when `drop_remainder=False`).
  `get_state()` / `set_state()` save and restore the position exactly; `close()` stops Grain's
  reader threads (the iterator is also a context manager).
  """

  def __init__(
    self,
    source: Any,
    global_batch_size: int,
    *,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    drop_remainder: bool,
    process_index: int,
    process_count: int,
    read_options: grain.ReadOptions,
  ):
    self._num_examples = len(source)
    g, hosts = global_batch_size, process_count
    self._local_batch_size = g // hosts
    self._identity = {
      "num_examples": self._num_examples,
      "global_batch_size": g,
      "seed": seed,
      "shuffle": shuffle,
      "drop_remainder": drop_remainder,
    }
    dataset = grain.MapDataset.source(source)
    if shuffle:
      dataset = dataset.shuffle(seed=_grain_seed(seed))
    if drop_remainder:
      # The slice sits inside each epoch (repeat comes after), so every epoch drops the last
      # examples of its own permutation, as `BatchIterator` does.
      dataset = dataset[: self._num_examples // g * g]
    else:
      padding = -self._num_examples % g
      dataset = dataset.map(_with_weight)
      if padding:
        pad = grain.MapDataset.source(_Padding(source[0], padding))
        dataset = grain.MapDataset.concatenate([dataset, pad])
    self._batches_per_epoch = len(dataset) // g
    self._num_epochs = num_epochs
    # Local batch j of host p is L-row chunk j·P + p of the stream: rows [p·L, (p+1)·L) of
    # global batch j. MapDataset reads only the rows of the chunks it is asked for.
    dataset = dataset.repeat(num_epochs).batch(self._local_batch_size)[process_index::hosts]
    self._iterator = dataset.to_iter_dataset(read_options).__iter__()

  @property
  def local_batch_size(self) -> int:
    """Rows of each batch this process yields."""
    return self._local_batch_size

  @property
  def num_examples(self) -> int:
    return self._num_examples

  def __len__(self) -> int:
    """Batches per epoch."""
    return self._batches_per_epoch

  def __iter__(self) -> PretrainingBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return next(self._iterator)

  def close(self) -> None:
    """Stops the reader threads; the iterator cannot be used afterwards."""
    self._iterator.close()

  def __enter__(self) -> PretrainingBatches:
    return self

  def __exit__(self, *exc_info: Any) -> None:
    self.close()

  def get_state(self) -> dict[str, Any]:
    """The position: small JSON, the same on every host and for any host count (no data)."""
    grain_state = self._iterator.get_state()
    drawn = int(grain_state["next_index"])
    return {
      "kind": "PretrainingBatches",
      "epoch": drawn // self._batches_per_epoch,
      "step": drawn % self._batches_per_epoch,
      **self._identity,
      "grain": dict(grain_state),
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result (possibly saved by a run with another host count).

    Raises:
      ValueError: the state is malformed or belongs to another stream (examples, batch size,
        seed, shuffle, drop_remainder), or lies past `num_epochs`.
    """
    if not isinstance(state, Mapping) or state.get("kind") != "PretrainingBatches":
      kind = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
      raise ValueError(f"state is not a PretrainingBatches state (kind={kind!r})")
    for key, value in self._identity.items():
      if state.get(key) != value:
        raise ValueError(
          f"PretrainingBatches state was saved with {key}={state.get(key)!r}, this iterator has "
          f"{key}={value!r}: it belongs to a different data stream"
        )
    grain_state = state.get("grain")
    drawn = grain_state.get("next_index") if isinstance(grain_state, Mapping) else None
    if not isinstance(drawn, int) or drawn < 0:
      raise ValueError(f"PretrainingBatches state needs grain.next_index >= 0, got {grain_state}")
    if (state.get("epoch"), state.get("step")) != divmod(drawn, self._batches_per_epoch):
      raise ValueError(
        f"PretrainingBatches state epoch={state.get('epoch')}, step={state.get('step')} does not "
        f"match grain.next_index={drawn} at {self._batches_per_epoch} batches per epoch"
      )
    if self._num_epochs is not None and drawn > self._num_epochs * self._batches_per_epoch:
      raise ValueError(
        f"PretrainingBatches state epoch={state['epoch']} is past num_epochs={self._num_epochs}"
      )
    self._iterator.set_state(dict(grain_state))


def pretraining_batches(
  source: Any,
  global_batch_size: int,
  *,
  seed: int,
  shuffle: bool,
  num_epochs: int | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = True,
  read_options: grain.ReadOptions | None = None,
) -> PretrainingBatches:
  """Deterministic, resumable, multi-host pretraining batches on Grain.

  Args:
    source: a directory written by `write_instances` / `write_examples` (or a list of them, read
      as one), in-memory feature arrays (`pretraining.pretraining_features`), or any Grain
      random-access source of example dicts.
    global_batch_size: rows per global batch, summed over processes; divisible by
      `process_count`.
    seed: non-negative seed of the shuffle.
    shuffle: a new global permutation each epoch (otherwise the stored order every epoch).
    num_epochs: epochs to run; None repeats forever.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.
    drop_remainder: drop each epoch's last partial global batch; if False it is padded with zero
      rows and every batch gets `weights` [local_batch] float32 (1.0 real, 0.0 padding).
    read_options: Grain's reader threads and prefetch depth (counted in local batches); by
      default 8 threads and 8 batches for files, none for in-memory features.

  Returns:
    The iterator (`next`, `get_state`, `set_state`, `close`).

  Raises:
    ValueError: a batch size that does not split over the processes, fewer examples than one
      global batch with `drop_remainder`, a negative seed, or `num_epochs` < 1.
  """
  checks = [("global_batch_size", global_batch_size)]
  checks += [] if num_epochs is None else [("num_epochs", num_epochs)]
  for name, value in checks:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  process_index, process_count = sources.resolve_process(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(
      f"global_batch_size={global_batch_size} does not divide evenly over "
      f"process_count={process_count} processes"
    )
  source = _as_source(source)
  if len(source) == 0:
    raise ValueError("the source holds 0 examples: nothing to batch")
  if drop_remainder and len(source) < global_batch_size:
    raise ValueError(
      f"{len(source)} examples make no full batch of global_batch_size={global_batch_size}; "
      "use a smaller batch or drop_remainder=False"
    )
  return PretrainingBatches(
    source,
    global_batch_size,
    seed=seed,
    shuffle=shuffle,
    num_epochs=num_epochs,
    drop_remainder=drop_remainder,
    process_index=process_index,
    process_count=process_count,
    read_options=read_options or _default_read_options(source),
  )


# ----------------------------------------------------------------------------------------------
# Sequence-length phases
# ----------------------------------------------------------------------------------------------


def phase_switch_step(total_steps: int, fraction: float = 0.9) -> int:
  """The first step of the second phase: `floor(fraction * total_steps)` (BERT: 90% at 128).

  Raises:
    ValueError: `total_steps` < 1 or `fraction` outside (0, 1).
  """
  if total_steps < 1 or not 0.0 < fraction < 1.0:
    raise ValueError(f"need total_steps >= 1 and 0 < fraction < 1, got {total_steps}, {fraction}")
  return int(fraction * total_steps)


class PhasedBatches:
  """Batches from one iterator per phase, switching at fixed steps (e.g. 128 then 512 tokens).

  The batch of step `s` (batches drawn from this iterator, from 0) comes from phase `k`, the
  number of `switch_steps` at or below `s`. Each phase starts at its own beginning when it is
  reached. The state holds the step and every phase's state, so it resumes exactly in any phase.

  Args:
    phases: iterators with the `BatchIterator` protocol, e.g. two `pretraining_batches`.
    switch_steps: increasing positive steps, one fewer than `phases`.

  Raises:
    ValueError: the wrong number of switch steps, or steps that are not increasing and positive.
  """

  def __init__(self, phases: Sequence[Any], switch_steps: Sequence[int]):
    switch_steps = [int(s) for s in switch_steps]
    if not phases:
      raise ValueError("PhasedBatches needs at least one phase")
    if len(switch_steps) != len(phases) - 1:
      raise ValueError(
        f"{len(phases)} phases need {len(phases) - 1} switch steps, got {switch_steps}"
      )
    if any(b <= a for a, b in zip([0, *switch_steps], switch_steps, strict=False)):
      raise ValueError(f"switch_steps must be increasing and positive, got {switch_steps}")
    self._phases = list(phases)
    self._switch_steps = switch_steps
    self._step = 0

  @property
  def phase(self) -> int:
    """The phase the next batch comes from."""
    return bisect.bisect_right(self._switch_steps, self._step)

  def __iter__(self) -> PhasedBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._phases[self.phase])
    self._step += 1
    return batch

  def get_state(self) -> dict[str, Any]:
    return {
      "kind": "PhasedBatches",
      "step": self._step,
      "switch_steps": list(self._switch_steps),
      "phases": [phase.get_state() for phase in self._phases],
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result.

    Raises:
      ValueError: not a PhasedBatches state, other switch steps, or another number of phases.
    """
    if not isinstance(state, Mapping) or state.get("kind") != "PhasedBatches":
      raise ValueError("state is not a PhasedBatches state")
    if state.get("switch_steps") != self._switch_steps:
      raise ValueError(
        f"PhasedBatches state was saved with switch_steps={state.get('switch_steps')}, this "
        f"iterator has {self._switch_steps}"
      )
    if len(state.get("phases", ())) != len(self._phases):
      raise ValueError(f"PhasedBatches state has no state for each of {len(self._phases)} phases")
    step = state.get("step")
    if not isinstance(step, int) or step < 0:
      raise ValueError(f"PhasedBatches state needs an integer step >= 0, got {step!r}")
    for phase, phase_state in zip(self._phases, state["phases"], strict=True):
      phase.set_state(phase_state)
    self._step = step
