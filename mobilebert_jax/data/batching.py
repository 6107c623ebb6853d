"""Deterministic, resumable, multi-host batches of feature arrays.

`BatchIterator` walks an in-memory feature dict (a dict of arrays with a common leading dim N) in
global batches. Every process computes the same global order and keeps its own contiguous slice
of each global batch, `global_batch_size // process_count` rows, ready for
`jax.make_array_from_process_local_data`. Concatenating the slices of processes 0, 1, ... gives the
global batch, and the global order does not depend on the process count, so a job may resume on a
different number of hosts.

The order of epoch `e` is a permutation of range(N) drawn from NumPy's generator seeded with
`(seed, e)`, so any position is reachable without replaying: the iterator's state is just
`{epoch, step}` plus what identifies the stream (N, batch size, seed, ...), a small JSON-able
dict. We chose this self-contained NumPy iterator over grain's `MapDataset` because the whole
job is a permutation and a slice: it needs no dependency the package does not already have, and
the padded last batch with `weights`, the per-process slicing and the state checks are a few lines
each here, where with grain they would be custom transformations around its own state format.
Those shared parts live in `IndexedBatches`, the base of `BatchIterator` and of
`bucketing.BucketedBatchIterator`, which differ only in which rows form a batch.

`StreamBatchIterator` batches a stream that cannot be indexed (pretraining from TFDS or huge
files): each process batches its own stream, optionally through a seeded shuffle buffer. Its
state is `{epoch, step}` too; restoring regenerates the epoch's stream and skips `step` batches,
which is exact when the stream is a function of the epoch (as `pretraining_example_stream` is) and
costs the time to regenerate those batches.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from mobilebert_jax.data import sources

WEIGHTS_KEY = "weights"


def _check_positive(name: str, value: int | None, *, allow_none: bool = False):
  if value is None and allow_none:
    return
  if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _pad_rows(batch: dict[str, np.ndarray], rows: int, num_real: int) -> dict[str, np.ndarray]:
  """Appends zero rows up to `rows` and adds `weights` [rows] (1.0 real, 0.0 padding)."""
  padded = {}
  for key, value in batch.items():
    out = np.zeros((rows, *value.shape[1:]), dtype=value.dtype)
    out[:num_real] = value
    padded[key] = out
  weights = np.zeros(rows, dtype=np.float32)
  weights[:num_real] = 1.0
  padded[WEIGHTS_KEY] = weights
  return padded


def _check_state(
  state: Mapping[str, Any], expected: Mapping[str, Any], kind: str
) -> tuple[int, int]:
  """Validates a saved state against this iterator's identity; returns `(epoch, step)`."""
  if not isinstance(state, Mapping):
    raise ValueError(f"{kind} state must be a dict, got {type(state).__name__}")
  if state.get("kind") != kind:
    raise ValueError(f"state is not a {kind} state (kind={state.get('kind')!r})")
  for key, value in expected.items():
    if key not in state:
      raise ValueError(f"{kind} state lacks {key!r}")
    if state[key] != value:
      raise ValueError(
        f"{kind} state was saved with {key}={state[key]!r}, this iterator has {key}={value!r}: "
        "it belongs to a different data stream"
      )
  try:
    epoch, step = int(state["epoch"]), int(state["step"])
  except (KeyError, TypeError, ValueError):
    raise ValueError(f"{kind} state needs integer 'epoch' and 'step', got {dict(state)}") from None
  if epoch < 0 or step < 0:
    raise ValueError(f"{kind} state has a negative position: epoch={epoch}, step={step}")
  return epoch, step


class IndexedBatches:
  """What the in-memory batch iterators share: checks, per-process slices, position and state.

  A subclass decides which global rows form batch `step` of epoch `epoch` (`_global_rows`) and
  may cut what it takes of them (`_take`); this class checks the features and batch settings,
  keeps this process's contiguous slice of each global batch, pads the last batch when
  `drop_remainder=False`, counts the position and saves and restores it. `kind` names the
  subclass's state format.

  Args: as `BatchIterator`'s.
  """

  kind = ""

  def __init__(
    self,
    features: Mapping[str, np.ndarray],
    global_batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    if not features:
      raise ValueError("features is empty: nothing to batch")
    self._features = {key: np.asarray(value) for key, value in features.items()}
    sizes = {key: value.shape[0] if value.ndim else None for key, value in self._features.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
      raise ValueError(f"features need one common leading dimension, got sizes {sizes}")
    self._num_examples = next(iter(sizes.values()))
    if self._num_examples == 0:
      raise ValueError("features hold 0 examples: nothing to batch")
    if not drop_remainder and WEIGHTS_KEY in self._features:
      raise ValueError(
        f"features already have {WEIGHTS_KEY!r}, the key drop_remainder=False adds; rename it"
      )
    _check_positive("global_batch_size", global_batch_size)
    _check_positive("num_epochs", num_epochs, allow_none=True)
    if not isinstance(seed, int | np.integer) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    self._process_index, self._process_count = sources.resolve_process(process_index, process_count)
    if global_batch_size % self._process_count:
      raise ValueError(
        f"global_batch_size={global_batch_size} does not divide evenly over "
        f"process_count={self._process_count} processes"
      )
    if drop_remainder and self._num_examples < global_batch_size:
      raise ValueError(
        f"{self._num_examples} examples make no full batch of global_batch_size="
        f"{global_batch_size}; use a smaller batch or drop_remainder=False"
      )
    self._global_batch_size = int(global_batch_size)
    self._local_batch_size = self._global_batch_size // self._process_count
    self._shuffle = bool(shuffle)
    self._seed = int(seed)
    self._num_epochs = num_epochs
    self._drop_remainder = bool(drop_remainder)
    self._epoch = 0
    self._step = 0

  @property
  def local_batch_size(self) -> int:
    """Rows of each batch this process yields."""
    return self._local_batch_size

  @property
  def num_examples(self) -> int:
    return self._num_examples

  def __len__(self) -> int:
    """Batches per epoch."""
    if self._drop_remainder:
      return self._num_examples // self._global_batch_size
    return -(-self._num_examples // self._global_batch_size)

  def __iter__(self) -> IndexedBatches:
    return self

  def _global_rows(self, epoch: int, step: int) -> tuple[np.ndarray, Any]:
    """The global row indices of a batch, and what `_take` needs to know about it."""
    raise NotImplementedError

  def _take(self, indices: np.ndarray, about: Any) -> dict[str, np.ndarray]:
    """This process's batch from its row indices (default: every feature's rows as they are)."""
    del about
    return {key: value[indices] for key, value in self._features.items()}

  def __next__(self) -> dict[str, np.ndarray]:
    if self._num_epochs is not None and self._epoch >= self._num_epochs:
      raise StopIteration
    global_indices, about = self._global_rows(self._epoch, self._step)
    local_start = self._process_index * self._local_batch_size
    indices = global_indices[local_start : local_start + self._local_batch_size]
    batch = self._take(indices, about)
    if not self._drop_remainder:
      batch = _pad_rows(batch, self._local_batch_size, len(indices))
    self._step += 1
    if self._step == len(self):
      self._epoch, self._step = self._epoch + 1, 0
    return batch

  def _identity(self) -> dict[str, Any]:
    """What identifies the stream in a saved state (a subclass adds its own fields)."""
    return {
      "num_examples": self._num_examples,
      "global_batch_size": self._global_batch_size,
      "seed": self._seed,
      "shuffle": self._shuffle,
      "drop_remainder": self._drop_remainder,
    }

  def get_state(self) -> dict[str, Any]:
    """The position in the stream: a small JSON-serialisable dict (no data)."""
    return {"kind": self.kind, "epoch": self._epoch, "step": self._step, **self._identity()}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result (possibly saved by a run with another host count).

    Raises:
      ValueError: the state is malformed, of another kind, or belongs to a different dataset
        size, batch size, seed, shuffle or drop_remainder setting (or, for buckets, other
        bucket lengths), or points outside the stream.
    """
    epoch, step = _check_state(state, self._identity(), self.kind)
    if step >= len(self):
      raise ValueError(f"{self.kind} state step={step} is outside an epoch of {len(self)} batches")
    if self._num_epochs is not None and (epoch, step) > (self._num_epochs, 0):
      raise ValueError(f"{self.kind} state epoch={epoch} is past num_epochs={self._num_epochs}")
    self._epoch, self._step = epoch, step


class BatchIterator(IndexedBatches):
  """Iterates this process's rows of each global batch of in-memory features.

  Args:
    features: arrays with a common leading dimension N (e.g. `input_ids` [N, L]).
    global_batch_size: rows per global batch, summed over processes; divisible by
      `process_count`.
    shuffle: draw a new permutation each epoch (otherwise the stored order every epoch).
    seed: non-negative seed of the permutations.
    num_epochs: epochs to run; None repeats forever.
    drop_remainder: drop the last partial batch of each epoch. If False it is padded with zero
      rows and every batch gets `weights` [local_batch] float32, 1.0 for real rows and 0.0 for
      padding, so evaluation sees every example at one compiled shape.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.

  Yields:
    Dicts of arrays [global_batch_size // process_count, ...], same keys and dtypes as
    `features` (plus `weights` when `drop_remainder=False`).
  """

  kind = "BatchIterator"
  # The epoch whose order `_order` holds (cached: permuting large N is not free).
  _order_epoch: int | None = None

  def _epoch_order(self, epoch: int) -> np.ndarray:
    """Global example order of `epoch`."""
    if self._order_epoch != epoch:
      n = self._num_examples
      rng = np.random.default_rng([self._seed, epoch])
      self._order = rng.permutation(n) if self._shuffle else np.arange(n)
      self._order_epoch = epoch
    return self._order

  def _global_rows(self, epoch: int, step: int) -> tuple[np.ndarray, None]:
    start = step * self._global_batch_size
    return self._epoch_order(epoch)[start : start + self._global_batch_size], None


def _stack(examples: list[Mapping[str, np.ndarray]], where: str) -> dict[str, np.ndarray]:
  """Stacks same-keyed, same-shaped examples into a batch, naming the first mismatch."""
  first = examples[0]
  for index, example in enumerate(examples[1:], start=1):
    if example.keys() != first.keys():
      raise ValueError(
        f"{where}: example {index} of the batch has keys {sorted(example)}, not {sorted(first)}"
      )
    for key, value in example.items():
      if np.shape(value) != np.shape(first[key]):
        raise ValueError(
          f"{where}: example {index} of the batch: {key!r} has shape {np.shape(value)}, "
          f"not {np.shape(first[key])} (examples must be padded to fixed shapes)"
        )
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in first}


class StreamBatchIterator:
  """Batches of a per-process example stream, with a seeded shuffle buffer and exact resume.

  Each process owns its stream (e.g. its slice of a TFDS split), so `batch_size` is the
  per-process batch. For training on several hosts, use `num_epochs=None` so no host runs out
  before the others (their slices may hold different numbers of examples). For the same reason
  the state is per process: hosts can sit at different (epoch, step) positions, so each process
  saves and restores its own `get_state()`.

  Args:
    make_examples: `epoch -> iterable of examples` (dicts of fixed-shape arrays); must return the
      same stream for the same epoch, e.g. `pretraining.pretraining_example_stream(...)`.
    batch_size: examples per batch on this process.
    num_epochs: epochs to run; None repeats forever.
    shuffle_buffer_size: examples held for shuffling; 0 keeps the stream order.
    seed: seed of the shuffle buffer (each epoch is seeded with `(seed, epoch)`).
    drop_remainder: drop the last partial batch of an epoch; if False it is padded with zero rows
      and every batch gets `weights` [batch_size] (1.0 real, 0.0 padding).
  """

  def __init__(
    self,
    make_examples: Callable[[int], Iterable[Mapping[str, np.ndarray]]],
    batch_size: int,
    *,
    num_epochs: int | None = None,
    shuffle_buffer_size: int = 0,
    seed: int = 0,
    drop_remainder: bool = True,
  ):
    _check_positive("batch_size", batch_size)
    _check_positive("num_epochs", num_epochs, allow_none=True)
    if not isinstance(shuffle_buffer_size, int) or shuffle_buffer_size < 0:
      raise ValueError(f"shuffle_buffer_size must be >= 0, got {shuffle_buffer_size!r}")
    if not isinstance(seed, int) or seed < 0:
      raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    self._make_examples = make_examples
    self._batch_size = int(batch_size)
    self._num_epochs = num_epochs
    self._shuffle_buffer_size = shuffle_buffer_size
    self._seed = seed
    self._drop_remainder = drop_remainder
    self._epoch = 0
    self._step = 0
    self._batches: Iterator[dict[str, np.ndarray]] | None = None

  def __iter__(self) -> StreamBatchIterator:
    return self

  def _shuffled(self, examples: Iterable[Mapping[str, np.ndarray]], epoch: int) -> Iterator:
    if self._shuffle_buffer_size == 0:
      yield from examples
      return
    rng = random.Random(f"{self._seed}:{epoch}")
    buffer: list[Mapping[str, np.ndarray]] = []
    for example in examples:
      if len(buffer) < self._shuffle_buffer_size:
        buffer.append(example)
        continue
      slot = rng.randrange(len(buffer))
      yield buffer[slot]
      buffer[slot] = example
    rng.shuffle(buffer)
    yield from buffer

  def _epoch_batches(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
    pending: list[Mapping[str, np.ndarray]] = []
    made = 0
    for example in self._shuffled(self._make_examples(epoch), epoch):
      pending.append(example)
      if len(pending) == self._batch_size:
        batch = _stack(pending, f"stream epoch {epoch}, batch {made}")
        pending, made = [], made + 1
        if not self._drop_remainder:
          batch = _pad_rows(batch, self._batch_size, self._batch_size)  # All-ones weights.
        yield batch
    if pending and not self._drop_remainder:
      batch = _stack(pending, f"stream epoch {epoch}, batch {made}")
      yield _pad_rows(batch, self._batch_size, len(pending))

  def __next__(self) -> dict[str, np.ndarray]:
    while self._num_epochs is None or self._epoch < self._num_epochs:
      if self._batches is None:
        self._batches = self._epoch_batches(self._epoch)
      batch = next(self._batches, None)
      if batch is not None:
        self._step += 1
        return batch
      if self._step == 0:
        raise ValueError(
          f"the stream of epoch {self._epoch} made no batch of {self._batch_size} examples"
        )
      self._epoch, self._step, self._batches = self._epoch + 1, 0, None
    raise StopIteration

  def _identity(self) -> dict[str, Any]:
    return {
      "batch_size": self._batch_size,
      "seed": self._seed,
      "shuffle_buffer_size": self._shuffle_buffer_size,
      "drop_remainder": self._drop_remainder,
    }

  def get_state(self) -> dict[str, Any]:
    """The position in the stream: a small JSON-serialisable dict (no data)."""
    return {
      "kind": "StreamBatchIterator",
      "epoch": self._epoch,
      "step": self._step,
      **self._identity(),
    }

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Continues from a `get_state()` result by regenerating the epoch and skipping `step` batches.

    Raises:
      ValueError: the state is malformed, belongs to a different stream setting, or its epoch
        holds fewer than `step` batches.
    """
    epoch, step = _check_state(state, self._identity(), "StreamBatchIterator")
    if self._num_epochs is not None and (epoch, step) > (self._num_epochs, 0):
      raise ValueError(
        f"StreamBatchIterator state epoch={epoch} is past num_epochs={self._num_epochs}"
      )
    batches = self._epoch_batches(epoch)
    for skipped in range(step):
      if next(batches, None) is None:
        raise ValueError(
          f"StreamBatchIterator state step={step} is past the end of epoch {epoch} "
          f"({skipped} batches)"
        )
    self._epoch, self._step, self._batches = epoch, step, batches
