"""The one vocabulary of the name tables, and the one code that applies a table to a source.

Every format's table (`hf_names`, `tf1_names`, `tf2_names`) is a list of `TensorMapping`s: our
parameter path, the source's name of the tensor, and the `Transform` between the two layouts.
`map_variables` maps a source's tensors onto one model class with such a table (shape checks,
layout conversion, what stays unused); `to_theirs` runs a mapping backwards for the exporter.

A transform is at most two steps from our layout to the source's: the source may merge two of
our axes into one (the attention heads: our [in, A, d] query kernel is [in, A*d] in the
source, our [A, d, out] output kernel [A*d, out]), and it may then store the 2-D result
transposed ([out, in], as PyTorch's `nn.Linear` and the TF1 heads' `tf.get_variable` matrices
do). The head merge is a plain row-major reshape (feature index = head * d + k), as in every
reference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

import numpy as np

from mobilebert_jax.weights.protocol import Path, SourceTensors

Transform = Literal[
  "copy",
  "transpose",
  "heads_last",
  "heads_first",
  "heads_last_transposed",
  "heads_first_transposed",
]

# Each transform's steps from our layout to the source's: which two of our axes the source
# merges ("last": the last two, "first": the first two, None: none), then whether it stores the
# (2-D) result transposed.
_STEPS: dict[str, tuple[Literal["last", "first"] | None, bool]] = {
  "copy": (None, False),
  "transpose": (None, True),
  "heads_last": ("last", False),
  "heads_first": ("first", False),
  "heads_last_transposed": ("last", True),
  "heads_first_transposed": ("first", True),
}


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One tensor: our path, the source's name of it, and how its layout becomes ours.

  Attributes:
    ours: path in our (unscanned) parameter tree.
    theirs: the source's name of the tensor.
    transform: "copy" (same layout); "transpose" (a 2-D [out, in] matrix <-> our [in, out]
      kernel); "heads_last" (the source merges our last two axes: a query kernel [in, A*d] <->
      ours [in, A, d], its bias [A*d] <-> [A, d]); "heads_first" (the source merges our first
      two axes: the attention-output kernel [A*d, out] <-> ours [A, d, out]);
      "heads_last_transposed" and "heads_first_transposed" (the head merge, then a transpose:
      [A*d, in] and [out, A*d]).
  """

  ours: Path
  theirs: str
  transform: Transform = "copy"


def _steps(transform: str) -> tuple[Literal["last", "first"] | None, bool]:
  try:
    return _STEPS[transform]
  except KeyError:
    raise ValueError(f"unknown transform {transform!r}; known: {sorted(_STEPS)}") from None


def their_shape(our_shape: tuple[int, ...], transform: Transform) -> tuple[int, ...]:
  """The shape the source stores a tensor of `our_shape` in.

  Raises:
    ValueError: an unknown transform, or one that does not apply to a tensor of that rank.
  """
  merge, transposed = _steps(transform)
  original = shape = tuple(int(d) for d in our_shape)
  merged_rank = len(shape) - (merge is not None)
  if (merge is not None and len(shape) < 2) or (transposed and merged_rank != 2):
    raise ValueError(f"transform {transform!r} does not apply to a tensor of shape {original}")
  if merge == "last":
    shape = (*shape[:-2], shape[-2] * shape[-1])
  elif merge == "first":
    shape = (shape[0] * shape[1], *shape[2:])
  return shape[::-1] if transposed else shape


def to_ours(array: np.ndarray, transform: Transform, our_shape: tuple[int, ...]) -> np.ndarray:
  """Converts a source tensor to our layout (a new contiguous array of `our_shape`)."""
  _, transposed = _steps(transform)
  array = np.asarray(array)
  if transposed:
    array = array.T
  return np.ascontiguousarray(array).reshape(our_shape)


def to_theirs(array: np.ndarray, transform: Transform) -> np.ndarray:
  """Converts one of our tensors to the source's layout (the inverse of `to_ours`)."""
  merge, transposed = _steps(transform)
  array = np.asarray(array)
  if merge == "last":
    array = array.reshape(*array.shape[:-2], -1)
  elif merge == "first":
    array = array.reshape(-1, *array.shape[2:])
  if transposed:
    array = array.T
  return np.ascontiguousarray(array)


# ----------------------------------------------------------------------------------------------
# Mapping a source's tensors onto one model class
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceVariable:
  """One tensor of a source, read only when a parameter takes it.

  Attributes:
    name: the name the source stores it under (what messages and reports show).
    shape: its shape in the source.
    load: returns its value as a NumPy array.
    file: the file that holds it, for messages about a source of several files (None: the
      source is one checkpoint).
  """

  name: str
  shape: tuple[int, ...]
  load: Callable[[], np.ndarray]
  file: str | None = None


def map_variables(
  variables: Mapping[str, SourceVariable],
  table: Iterable[TensorMapping],
  shapes: Mapping[Path, tuple[int, ...]],
  *,
  model_class: str,
  where: str | None,
  aliases: Mapping[str, str] | None = None,
  ignored: Iterable[str] = (),
  notes: Iterable[str] = (),
) -> SourceTensors:
  """Maps a source's tensors onto the parameters of one model class with a name table.

  Args:
    variables: the source's tensors by their table name (`TensorMapping.theirs`); each knows
      its own stored name for messages.
    table: every tensor a checkpoint of this architecture may hold (heads of all classes
      included); entries whose parameter the target class lacks leave their tensor unused.
    shapes: the target's parameter paths and shapes (from `load_pretrained`).
    model_class: the target class name, for messages.
    where: the source, for messages; None when the tensors' names and files say enough.
    aliases: table name of a second copy -> table name of the tensor it repeats (the TF2 word
      table stored under the MLM head). The copy is used only when the original is absent.
    ignored: source names already set aside on purpose (optimizer slots, counters, buffers).
    notes: remarks to pass on to the report.

  Returns:
    The `SourceTensors` for `load_pretrained`'s merge.

  Raises:
    ValueError: naming every tensor whose shape disagrees with the model, with both shapes.
  """
  aliases = dict(aliases or {})
  by_name = {m.theirs: m for m in table}
  tensors: dict[Path, np.ndarray] = {}
  names: dict[Path, str] = {}
  unused: list[str] = []
  set_aside = list(ignored)
  notes = list(notes)
  mismatched: list[str] = []
  for key, variable in variables.items():
    original = aliases.get(key)
    if original is not None and original in variables:
      set_aside.append(variable.name)
      notes.extend(_copy_note(variable, variables[original]))
      continue
    mapping = by_name.get(original or key)
    if mapping is None or mapping.ours not in shapes:
      unused.append(variable.name)
      continue
    our_shape = tuple(shapes[mapping.ours])
    want = their_shape(our_shape, mapping.transform)
    if tuple(variable.shape) != want:
      stored = variable.name if variable.file is None else f"{variable.name} (in {variable.file})"
      mismatched.append(
        f"{stored} has shape {tuple(variable.shape)}, but {model_class} with this config "
        f"expects {want} (our {'/'.join(mapping.ours)}: {our_shape})"
      )
      continue
    tensors[mapping.ours] = to_ours(variable.load(), mapping.transform, our_shape)
    names[mapping.ours] = variable.name
  if mismatched:
    subject = "Checkpoint and model" if where is None else f"{where} and the model"
    raise ValueError(
      f"{subject} disagree on tensor shapes (is the config right?):\n  " + "\n  ".join(mismatched)
    )
  return SourceTensors(tensors, names, tuple(unused), tuple(set_aside), tuple(notes))


def _copy_note(copy: SourceVariable, original: SourceVariable) -> list[str]:
  a, b = copy.load(), original.load()
  if a.shape == b.shape and np.array_equal(a, b):
    return []
  if a.shape != b.shape:
    detail = f"shapes {a.shape} and {b.shape}"
  else:
    gap = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
    detail = f"max |difference| {gap:.3g}"
  return [
    f"{copy.name} should repeat {original.name} but differs ({detail}); the model shares one "
    f"tensor, so {original.name} was loaded."
  ]
