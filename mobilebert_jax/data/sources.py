"""TensorFlow Datasets access shared by the task pipelines.

TFDS (and the TensorFlow it runs on) is an optional dependency, installed with
`pip install 'mobilebert-jax[tf]'`; it is imported only when a TFDS reader is called, so the rest
of the package works without it.

In a multi-host job every process reads a disjoint, near-equal slice of a split
(`tfds.even_splits`), so no example is read twice and each host only touches its own files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

_INSTALL_HINT = "pip install 'mobilebert-jax[tf]'"


def import_tfds() -> ModuleType:
  """Imports `tensorflow_datasets`, or raises an ImportError that says how to install it."""
  try:
    import tensorflow_datasets as tfds  # Optional dependency: imported on use.
  except ImportError as e:
    raise ImportError(
      f"reading TFDS datasets needs TensorFlow Datasets, an optional dependency: {_INSTALL_HINT}"
    ) from e
  return tfds


def resolve_process(
  process_index: int | None = None, process_count: int | None = None
) -> tuple[int, int]:
  """Returns `(process_index, process_count)`, defaulting to JAX's view of the job.

  Raises:
    ValueError: when the pair is impossible (count < 1, index outside [0, count)).
  """
  if process_index is None or process_count is None:
    import jax  # Only needed when the caller leaves the choice to JAX.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1:
    raise ValueError(f"process_count must be at least 1, got {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, {process_count}), got {process_index}")
  return process_index, process_count


def process_split(
  split: str,
  *,
  process_index: int | None = None,
  process_count: int | None = None,
  drop_remainder: bool = False,
) -> Any:
  """The slice of `split` this process reads, as a TFDS split argument.

  Args:
    split: a TFDS split expression, e.g. `'train'` or `'train[:10%]+validation'`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.
    drop_remainder: drop the examples that do not divide evenly, so every process gets the same
      count (needed when all hosts must run the same number of steps over one pass).

  Returns:
    `split` itself for a single process, otherwise the process's sub-split (an object that
    `tfds.load` and `tfds.data_source` accept as `split`).
  """
  process_index, process_count = resolve_process(process_index, process_count)
  if process_count == 1 and not drop_remainder:
    return split
  tfds = import_tfds()
  return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def iter_tfds_examples(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  download: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[Mapping[str, Any]]:
  """Streams this process's examples of a TFDS dataset in stored order, as NumPy values.

  Works for every TFDS file format; text features arrive as `bytes` (see `decode_text`).
  Examples are read one at a time through `tf.data`, so a corpus larger than memory is fine.

  Args:
    name: dataset name with optional config and version, e.g. `'wikipedia/20230601.en'`.
    split: split expression; each process reads its `process_split` of it.
    data_dir: TFDS data directory (defaults to TFDS's own, `~/tensorflow_datasets`).
    download: let TFDS download and prepare the dataset when it is not in `data_dir`.
    process_index: this process; defaults to `jax.process_index()`.
    process_count: number of processes; defaults to `jax.process_count()`.

  Yields:
    One dict per example, keyed by the dataset's feature names.
  """
  tfds = import_tfds()
  local_split = process_split(split, process_index=process_index, process_count=process_count)
  # shuffle_files=False keeps the order fixed, so a seeded pipeline on top is reproducible.
  dataset = tfds.load(
    name, split=local_split, data_dir=data_dir, download=download, shuffle_files=False
  )
  yield from tfds.as_numpy(dataset)


def tfds_data_source(
  name: str,
  split: str,
  *,
  data_dir: str | None = None,
  download: bool = True,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Sequence[Mapping[str, Any]]:
  """Random-access view (`len`, `[i]`) of this process's slice of a TFDS split.

  Needs the dataset prepared in the ArrayRecord format (`tfds.data_source`); reading does not go
  through TensorFlow.
  """
  tfds = import_tfds()
  local_split = process_split(split, process_index=process_index, process_count=process_count)
  return tfds.data_source(name, split=local_split, data_dir=data_dir, download=download)


def decode_text(value: str | bytes, *, what: str = "text") -> str:
  """Returns a TFDS text value as `str`; TFDS hands text over as UTF-8 `bytes`.

  Raises:
    ValueError: for bytes that are not UTF-8, naming `what` (e.g. the dataset and field).
  """
  if isinstance(value, str):
    return value
  try:
    return bytes(value).decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{what}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
