"""Conversion between the unscanned and scanned parameter layouts of the block stack.

Unscanned (`config.scan_layers=False`), block i's parameters live under `.../encoder/layer_{i}`.
Scanned, `nn.scan` keeps one tree under `.../encoder/layers` whose leaves carry a leading axis of
length `num_hidden_layers` (logical axis name "layers"). Both layouts hold the same numbers, so
weights saved from one load into the other through these two functions. They work on any nested
mapping with one or more `encoder` scopes (a model's params, a {"student": ..., "teacher": ...}
pair; convert optimizer states by mapping them over their param-shaped parts) and on any leaf
kind: NumPy or JAX arrays, `jax.ShapeDtypeStruct` (abstract shapes) and flax `nn.Partitioned`
boxes, whose axis names gain or lose the "layers" entry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

ENCODER_SCOPE = "encoder"
SCANNED_SCOPE = "layers"
# The logical axis name `nn.scan` gives the stacked axis (see `MobileBertEncoder`).
LAYER_AXIS_NAME = "layers"

_LAYER_KEY = re.compile(r"layer_(\d+)")


def stack_layers(params: PyTree, num_layers: int | None = None) -> PyTree:
  """Converts the unscanned layout (`layer_{i}`) to the scanned one (`layers`).

  Args:
    params: a nested mapping holding one or more `encoder` scopes with `layer_0` ...
      `layer_{L-1}` children (every other part is copied unchanged).
    num_layers: the expected L; checked when given.

  Returns:
    A new tree (plain dicts) where each such encoder scope holds `layers` instead, every leaf
    stacked on a new leading axis [L, ...].

  Raises:
    ValueError: no encoder scope with blocks, missing or extra block numbers, blocks whose
      trees or leaf shapes differ, or a count other than `num_layers`.
  """
  found = []

  def convert(scope: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    blocks = {int(m.group(1)): k for k in scope if (m := _LAYER_KEY.fullmatch(str(k)))}
    if not blocks:
      return _copy(scope)
    where = "/".join(path)
    if SCANNED_SCOPE in scope:
      raise ValueError(f"{where} holds both `layer_{{i}}` blocks and a stacked `layers` tree")
    count = len(blocks)
    if sorted(blocks) != list(range(count)):
      missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
      raise ValueError(f"{where} has blocks {sorted(blocks)}; missing layer_{missing[0]}")
    if num_layers is not None and count != num_layers:
      raise ValueError(f"{where} has {count} blocks but num_layers={num_layers}")
    found.append(where)
    out = {k: _copy(v) for k, v in scope.items() if k not in blocks.values()}
    trees = [scope[blocks[i]] for i in range(count)]
    out[SCANNED_SCOPE] = _stack_trees(trees, f"{where}/layer_{{i}}")
    return out

  result = _map_encoder_scopes(params, convert)
  if not found:
    raise ValueError("no `encoder` scope with `layer_{i}` blocks found; is it scanned already?")
  return result


def unstack_layers(params: PyTree) -> PyTree:
  """Converts the scanned layout (`layers`) to the unscanned one (`layer_{i}`).

  Args:
    params: a nested mapping holding one or more `encoder` scopes with a `layers` child whose
      leaves all share the leading (layer) dimension.

  Returns:
    A new tree (plain dicts) with `layer_0` ... `layer_{L-1}` in place of each `layers`.

  Raises:
    ValueError: no scanned encoder scope, or leaves with different leading dimensions.
  """
  found = []

  def convert(scope: Mapping[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    if SCANNED_SCOPE not in scope:
      return _copy(scope)
    where = "/".join((*path, SCANNED_SCOPE))
    if any(_LAYER_KEY.fullmatch(str(k)) for k in scope):
      raise ValueError(f"{'/'.join(path)} holds both `layer_{{i}}` blocks and a stacked `layers`")
    found.append(where)
    out = {k: _copy(v) for k, v in scope.items() if k != SCANNED_SCOPE}
    for i, tree in enumerate(_unstack_tree(scope[SCANNED_SCOPE], where)):
      out[f"layer_{i}"] = tree
    return out

  result = _map_encoder_scopes(params, convert)
  if not found:
    raise ValueError("no `encoder` scope with a stacked `layers` tree found; is it unscanned?")
  return result


def is_scanned(params: PyTree) -> bool:
  """Whether any `encoder` scope of `params` holds the stacked `layers` tree."""
  if not isinstance(params, Mapping):
    return False
  for key, value in params.items():
    if key == ENCODER_SCOPE and isinstance(value, Mapping) and SCANNED_SCOPE in value:
      return True
    if is_scanned(value):
      return True
  return False


# ----------------------------------------------------------------------------------------------
# Tree walking
# ----------------------------------------------------------------------------------------------


def _map_encoder_scopes(tree: PyTree, convert, path: tuple[str, ...] = ()) -> PyTree:
  """Rebuilds `tree` as plain dicts, applying `convert(scope, path)` to every encoder scope."""
  if not isinstance(tree, Mapping):
    return tree
  out = {}
  for key, value in tree.items():
    child_path = (*path, str(key))
    if key == ENCODER_SCOPE and isinstance(value, Mapping):
      out[key] = convert(value, child_path)
    else:
      out[key] = _map_encoder_scopes(value, convert, child_path)
  return out


def _copy(tree: PyTree) -> PyTree:
  """Copies the mapping structure (plain dicts); leaves are shared, not copied."""
  if isinstance(tree, Mapping):
    return {k: _copy(v) for k, v in tree.items()}
  return tree


def _leaves_with_paths(tree: PyTree, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if isinstance(tree, Mapping):
    out = {}
    for key, value in tree.items():
      out.update(_leaves_with_paths(value, (*path, str(key))))
    return out
  return {path: tree}


def _build(leaves: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
  root: dict[str, Any] = {}
  for path, leaf in leaves.items():
    node = root
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = leaf
  return root


# ----------------------------------------------------------------------------------------------
# Leaves
# ----------------------------------------------------------------------------------------------


def _stack_trees(trees: list[PyTree], where: str) -> dict[str, Any]:
  flat = [_leaves_with_paths(t) for t in trees]
  reference = flat[0]
  for i, leaves in enumerate(flat[1:], start=1):
    if set(leaves) != set(reference):
      diff = sorted("/".join(p) for p in set(leaves) ^ set(reference))
      raise ValueError(
        f"{where.format(i=i)} and {where.format(i=0)} have different parameters: {diff[:5]}"
      )
  stacked = {}
  for path in reference:
    column = [leaves[path] for leaves in flat]
    shapes = {tuple(np.shape(_value(leaf))) for leaf in column}
    if len(shapes) > 1:
      raise ValueError(
        f"{where}/{'/'.join(path)} has different shapes across blocks: {sorted(shapes)}"
      )
    stacked[path] = _stack_leaves(column)
  return _build(stacked)


def _unstack_tree(tree: PyTree, where: str) -> list[dict[str, Any]]:
  leaves = _leaves_with_paths(tree)
  if not leaves:
    raise ValueError(f"{where} is empty")
  lengths = {path: _leading_dim(leaf) for path, leaf in leaves.items()}
  if len(set(lengths.values())) != 1:
    detail = ", ".join(f"{'/'.join(p)}: {n}" for p, n in sorted(lengths.items())[:6])
    raise ValueError(f"{where} leaves disagree on the number of layers (leading dims {detail})")
  count = next(iter(lengths.values()))
  return [_build({p: _index_leaf(leaf, i) for p, leaf in leaves.items()}) for i in range(count)]


def _value(leaf: Any) -> Any:
  return leaf.value if isinstance(leaf, nn.Partitioned) else leaf


def _leading_dim(leaf: Any) -> int:
  shape = np.shape(_value(leaf))
  if not shape:
    raise ValueError("a scalar leaf cannot carry a layer axis")
  return shape[0]


def _stack_leaves(column: list[Any]) -> Any:
  first = column[0]
  if isinstance(first, nn.Partitioned):
    value = _stack_leaves([leaf.value for leaf in column])
    return first.replace(value=value).add_axis(0, {nn.PARTITION_NAME: LAYER_AXIS_NAME})
  if isinstance(first, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((len(column), *first.shape), first.dtype)
  if any(isinstance(leaf, jax.Array) for leaf in column):
    return jnp.stack(column)
  return np.stack([np.asarray(leaf) for leaf in column])


def _index_leaf(leaf: Any, i: int) -> Any:
  if isinstance(leaf, nn.Partitioned):
    if not leaf.names or leaf.names[0] != LAYER_AXIS_NAME:
      raise ValueError(
        f"a stacked leaf's first logical axis should be {LAYER_AXIS_NAME!r}, got {leaf.names}"
      )
    value = _index_leaf(leaf.value, i)
    return leaf.replace(value=value).remove_axis(0, {nn.PARTITION_NAME: LAYER_AXIS_NAME})
  if isinstance(leaf, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
  return leaf[i]
