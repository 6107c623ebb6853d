"""Length-bucketed, deterministic, resumable, multi-host batches of fine-tuning features.

Fine-tuning rows are padded to `max_seq_length` (128 for GLUE and CoNLL), but most GLUE
sentences and pairs and most CoNLL sentences are far shorter. `BucketedBatchIterator` cuts that
padding away while keeping the shapes static: every example goes to one of a few bucket lengths
(e.g. 32, 64, 96, 128), each global batch holds examples of one bucket only, and its sequence
arrays are truncated to that bucket's length. A jitted step then compiles once per bucket (four
shapes, not one per batch), which is what TPUs need.

**The rule.** An example whose last real token (from `attention_mask`) sits at position `r - 1`
goes to the smallest bucket longer than `r`, so that position `r` still holds the `[PAD]` token
it holds at full length; examples that fill the whole row (`r == L`) go to the last bucket, `L`
itself. Truncation keeps columns `[0, bucket)` of every *sequence array*: by default every array
of `attention_mask`'s shape (`input_ids`, `attention_mask`, `token_type_ids`, CoNLL's token
`labels`; for SWAG `[N, 4, L]` all four choices, cut on the last axis). Per-example arrays
(GLUE `labels`, SQuAD `start_positions`/`end_positions`) are left as they are; the token
positions among them are checked to lie inside their example's bucket (they always do for
SQuAD, whose answers index real tokens), so every task of the package may be bucketed.

**Numerics: what bucketing does to MobileBERT's outputs (docs/pitfalls.md P3).** The trigram
embedding makes the last real token read its right neighbour. At full length that neighbour is
`[PAD]`, whose embedding row is not zero in the released checkpoint; if an example were cut to
exactly its real length, the neighbour would be the trigram's zero fill instead, and the
example's outputs would change (everything after the embeddings depends on it). The one-slot
margin of the rule above keeps the `[PAD]` neighbour, so with the default attention masking
(masked keys get probability exactly 0) a bucketed example's outputs equal its full-length
outputs up to float rounding, whatever `padding_invariant_trigram` says. With
`padding_invariant_trigram=True` the `[PAD]` row is multiplied by the mask before the trigram, so
outputs do not depend on the padded length at all and even an exact cut would not change them
(`tests/bucketing_test.py` shows both). One setting stays padding-dependent:
`masked_attention_logit=-6.0` (the 2021 TF1 rule, P5) gives padded keys non-zero attention, so
fewer padded columns change every output; bucketing is then a (small) change of the model's
inputs, which no trigram option undoes.

**Order, remainders and resume.** Each epoch `e` draws from NumPy's generator seeded with
`(seed, e)`: buckets are filled from smallest to largest, each as a permutation of its examples
together with the rows the previous bucket could not fill a batch with (they are shorter, so
they fit); full global batches are cut from that pool and what is left moves on to the next
bucket. Only the last bucket's leftover, fewer than `global_batch_size` rows, is dropped (or, with
`drop_remainder=False`, padded with `weights` like `BatchIterator`'s), so an epoch has
`N // global_batch_size` batches, exactly as many as `BatchIterator` gives, and a different
random subset is left out each epoch. The batches of all buckets are then shuffled with the same
generator. Because the epoch's plan is a function of `(seed, e)`, the state is `{epoch, step}`
plus what identifies the stream, and `set_state` resumes exactly, mid-epoch or at an epoch
boundary, on any number of hosts. Every process computes the same plan and keeps its own
contiguous slice of each global batch, so all hosts always hold the same bucket.

**Why a separate class.** `BatchIterator` is one permutation cut into equal slices; bucketing
replaces that with a per-epoch plan of (bucket, rows) batches and a truncation step. Folding it
into `BatchIterator` as an option would put a second iteration scheme behind every line of that
class, so it lives here, as a second `batching.IndexedBatches`: it shares that base's checks,
per-process slices, padding with `weights`, position and state, and supplies only its plan and
its truncation (the state formats differ only in their `kind` and identity fields).

Evaluation keeps full-length batches (`evaluation.evaluate` with `BatchIterator`): it runs once
per eval and its outputs must line up with the features' full-length metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax.data.batching import IndexedBatches, _check_positive

MASK_KEY = "attention_mask"
# Per-example arrays whose values are token positions (SQuAD's answer span).
TOKEN_POSITION_KEYS = ("start_positions", "end_positions")


def real_lengths(attention_mask: np.ndarray) -> np.ndarray:
  """One past each example's last real position.

  Args:
    attention_mask: [N, ..., L] (e.g. [N, L], or [N, choices, L] for multiple choice); non-zero
      marks real tokens. Inner axes are pooled: an example is as long as its longest row.

  Returns:
    int64 [N]; 0 for an example without any real token.
  """
  mask = np.asarray(attention_mask)
  if mask.ndim < 2:
    raise ValueError(f"attention_mask must be [N, ..., L], got shape {mask.shape}")
  real = (mask != 0).reshape(mask.shape[0], -1, mask.shape[-1]).any(axis=1)  # [N, L]
  length = mask.shape[-1]
  last_from_end = np.argmax(real[:, ::-1], axis=1)
  return np.where(real.any(axis=1), length - last_from_end, 0).astype(np.int64)


def bucket_of(lengths: np.ndarray, bucket_lengths: Sequence[int]) -> np.ndarray:
  """Index of each example's bucket: the smallest one longer than its real length.

  The one-position margin keeps the `[PAD]` token after the last real token, which the trigram
  reads (see the module docstring); an example filling the whole row goes to the last bucket.

  Args:
    lengths: [N] real lengths (`real_lengths`), at most `bucket_lengths[-1]`.
    bucket_lengths: strictly increasing; the last is the features' length L.

  Returns:
    int64 [N] indices into `bucket_lengths`.
  """
  buckets = np.asarray(bucket_lengths)
  return np.minimum(np.searchsorted(buckets, lengths, side="right"), len(buckets) - 1)


def quantile_bucket_lengths(
  lengths: np.ndarray, num_buckets: int, max_length: int, *, multiple_of: int = 8
) -> tuple[int, ...]:
  """Bucket lengths at the quantiles of the data's lengths (roughly equal rows per bucket).

  Args:
    lengths: [N] real lengths (`real_lengths(features["attention_mask"])`).
    num_buckets: at most this many buckets (equal quantiles can merge).
    max_length: the features' length L, always the last bucket.
    multiple_of: round each length up to a multiple of this (8 or 128 suit TPU tiles).

  Returns:
    Strictly increasing lengths ending with `max_length`, usable as `bucket_lengths`.
  """
  _check_positive("num_buckets", num_buckets)
  _check_positive("multiple_of", multiple_of)
  # An example needs one slot past its real length (`bucket_of`).
  needed = np.minimum(np.asarray(lengths) + 1, max_length)
  quantiles = np.quantile(needed, np.arange(1, num_buckets) / num_buckets, method="higher")
  rounded = np.minimum(-(-quantiles.astype(np.int64) // multiple_of) * multiple_of, max_length)
  return tuple(sorted({int(b) for b in rounded} | {int(max_length)}))


def _check_bucket_lengths(bucket_lengths: Sequence[int], length: int) -> tuple[int, ...]:
  """Validated bucket lengths, with the full length `length` appended when missing."""
  values = tuple(bucket_lengths)
  if not values:
    raise ValueError("bucket_lengths is empty: give at least one length")
  for value in values:
    _check_positive("every bucket length", value)
  if any(b >= a for a, b in zip(values[1:], values, strict=False)):
    raise ValueError(f"bucket_lengths must be strictly increasing, got {values}")
  if values[-1] > length:
    raise ValueError(
      f"bucket_lengths {values} go past the features' sequence length {length} "
      "(max_seq_length): drop the longer buckets"
    )
  return tuple(int(v) for v in values) + (() if values[-1] == length else (length,))


class BucketedBatchIterator(IndexedBatches):
  """Iterates this process's slice of each global batch, each batch cut to its bucket's length.

  Args:
    features: arrays with a common leading dimension N, including `attention_mask` [N, ..., L].
    global_batch_size: rows per global batch, summed over processes; divisible by
      `process_count`. The same for every bucket.
    bucket_lengths: strictly increasing sequence lengths, at most L; L is added as the last
      bucket when missing (e.g. `(32, 64, 96)` with L = 128 gives four buckets).
    shuffle: draw new bucket permutations and a new batch order each epoch (otherwise rows
      keep their stored order within a bucket and batches go from the shortest bucket up).
    seed: non-negative seed of the permutations.
    num_epochs: epochs to run; None repeats forever.
    drop_remainder: drop the last bucket's leftover rows (fewer than a batch). If False they
      form a last batch padded with zero rows, and every batch gets `weights` [local_batch]
      float32 (1.0 real, 0.0 padding).
    sequence_keys: the arrays to truncate (their last axis is the sequence); None takes every
      array of `attention_mask`'s shape.
    token_position_keys: per-example arrays of token positions (checked to lie inside each
      example's bucket); the keys of `TOKEN_POSITION_KEYS` that `features` has by default.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.

  Yields:
    Dicts of arrays [global_batch_size // process_count, ...] with the keys and dtypes of
    `features` (plus `weights` when `drop_remainder=False`); sequence arrays are
    [local_batch, ..., bucket_length].

  Raises:
    ValueError: features without `attention_mask` or a common leading dimension, bad bucket
      lengths or batch settings, or a token position outside its example's bucket.
  """

  kind = "BucketedBatchIterator"

  def __init__(
    self,
    features: Mapping[str, np.ndarray],
    global_batch_size: int,
    *,
    bucket_lengths: Sequence[int],
    shuffle: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    sequence_keys: Sequence[str] | None = None,
    token_position_keys: Sequence[str] | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    super().__init__(
      features,
      global_batch_size,
      shuffle=shuffle,
      seed=seed,
      num_epochs=num_epochs,
      drop_remainder=drop_remainder,
      process_index=process_index,
      process_count=process_count,
    )
    if MASK_KEY not in self._features or self._features[MASK_KEY].ndim < 2:
      raise ValueError(
        f"bucketing needs {MASK_KEY!r} [N, ..., L] among the features (keys: "
        f"{sorted(self._features)})"
      )
    mask_shape = self._features[MASK_KEY].shape
    length = mask_shape[-1]
    if sequence_keys is None:
      sequence_keys = [k for k, v in self._features.items() if v.shape == mask_shape]
    for key in sequence_keys:
      if key not in self._features or self._features[key].ndim < 2:
        raise ValueError(f"sequence key {key!r} is not a feature array of rank 2 or more")
      if self._features[key].shape[-1] != length:
        raise ValueError(
          f"sequence array {key!r} has shape {self._features[key].shape}, whose last axis is "
          f"not the sequence length {length} of {MASK_KEY!r}"
        )
    self._sequence_keys = frozenset(sequence_keys)
    self._bucket_lengths = _check_bucket_lengths(bucket_lengths, length)
    self._lengths = real_lengths(self._features[MASK_KEY])
    self._bucket = bucket_of(self._lengths, self._bucket_lengths)
    self._members = [np.flatnonzero(self._bucket == k) for k in range(len(self._bucket_lengths))]
    if token_position_keys is None:
      token_position_keys = [k for k in TOKEN_POSITION_KEYS if k in self._features]
    self._check_token_positions(token_position_keys)
    self._plan_epoch: int | None = None
    self._plan: list[tuple[int, np.ndarray]] = []

  def _check_token_positions(self, keys: Sequence[str]) -> None:
    limits = np.asarray(self._bucket_lengths)[self._bucket]
    for key in keys:
      positions = self._features.get(key)
      if positions is None or positions.shape != (self._num_examples,):
        raise ValueError(f"token position key {key!r} is not a per-example [N] feature array")
      outside = np.flatnonzero((positions < 0) | (positions >= limits))
      if outside.size:
        i = int(outside[0])
        raise ValueError(
          f"{key}[{i}]={int(positions[i])} lies outside example {i}'s bucket of "
          f"{int(limits[i])} tokens (real length {int(self._lengths[i])}); {outside.size} "
          "examples point past their real tokens, which bucketing would cut off"
        )

  # --------------------------------------------------------------------------------------------
  # What the buckets hold
  # --------------------------------------------------------------------------------------------

  @property
  def bucket_lengths(self) -> tuple[int, ...]:
    """The sequence length of each bucket, the features' length last."""
    return self._bucket_lengths

  @property
  def bucket_sizes(self) -> tuple[int, ...]:
    """Examples assigned to each bucket."""
    return tuple(len(m) for m in self._members)

  def token_fraction(self) -> float:
    """Sequence positions computed per epoch, as a fraction of the full-length batches'.

    Counts each example at its own bucket's length (leftover rows that move to a longer bucket
    add a little, at most a batch per bucket and epoch).
    """
    lengths = np.asarray(self._bucket_lengths)[self._bucket]
    return float(lengths.sum() / (self._num_examples * self._bucket_lengths[-1]))

  def describe(self) -> str:
    """One line for logs: the buckets, their shares of the examples, the positions computed."""
    shares = ", ".join(
      f"{b}: {n / self._num_examples:.0%}"
      for b, n in zip(self._bucket_lengths, self.bucket_sizes, strict=True)
    )
    return (
      f"length buckets {{{shares}}} of {self._num_examples} rows; "
      f"{self.token_fraction():.0%} of the full-length sequence positions"
    )

  # --------------------------------------------------------------------------------------------
  # Iteration
  # --------------------------------------------------------------------------------------------

  def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
    """The `(bucket, global row indices)` batches of `epoch`, in order (cached)."""
    if self._plan_epoch == epoch:
      return self._plan
    rng = np.random.default_rng([self._seed, epoch])
    size = self._global_batch_size
    plan: list[tuple[int, np.ndarray]] = []
    carried = np.zeros(0, dtype=np.int64)
    for bucket, members in enumerate(self._members):
      # Rows left over by shorter buckets fit here too; they join this bucket's draw.
      pool = np.concatenate([carried, members])
      if self._shuffle:
        pool = rng.permutation(pool)
      num_full = len(pool) // size
      plan.extend((bucket, pool[i * size : (i + 1) * size]) for i in range(num_full))
      carried = pool[num_full * size :]
    if len(carried) and not self._drop_remainder:
      plan.append((len(self._members) - 1, carried))
    if self._shuffle:
      plan = [plan[i] for i in rng.permutation(len(plan))]
    self._plan, self._plan_epoch = plan, epoch
    return plan

  def _global_rows(self, epoch: int, step: int) -> tuple[np.ndarray, int]:
    bucket, global_indices = self._epoch_plan(epoch)[step]
    return global_indices, self._bucket_lengths[bucket]

  def _take(self, indices: np.ndarray, length: int) -> dict[str, np.ndarray]:
    # Slice first (a view), then gather: only the kept columns are copied.
    return {
      key: value[..., :length][indices] if key in self._sequence_keys else value[indices]
      for key, value in self._features.items()
    }

  # --------------------------------------------------------------------------------------------
  # State (a run started without bucketing resumes without it: the kinds differ)
  # --------------------------------------------------------------------------------------------

  def _identity(self) -> dict[str, Any]:
    # Lists, not tuples: the state goes through JSON and is compared after the round trip.
    return {
      **super()._identity(),
      "bucket_lengths": list(self._bucket_lengths),
      # Same N but other lengths means other data: its plans would differ.
      "bucket_sizes": list(self.bucket_sizes),
    }
