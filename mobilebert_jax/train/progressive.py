"""Progressive knowledge transfer's schedule: stage gates and per-layer learning rates (TF1).

The original phase 1 trains the student's blocks one stage at a time inside one optimizer run
(google-research `mobilebert/run_pretraining.py` and `optimization.py`; see
docs/training.md §distillation). With s the number of updates applied so far (the global step
read before its increment) and P steps per stage:

* stage gate: g_ℓ(s) = 1 if P·ℓ < s ≤ P·(ℓ+1), else 0 — block ℓ's transfer losses count only
  then (at s = 0 no gate is on and the loss is 0);
* background: bg(s) = min(0.9 + 0.1·√(1 − r/P), 10·r/P) with r = s mod P, which is 0 at every
  stage boundary;
* per-layer rate: lr_ℓ(s) = 3·bg(s)·pc_ℓ(s), pc_ℓ = 0 before the stage, 1 during, 0.1 after;
* moment gate: where lr_ℓ(s) = 0 the Adam moments are set to 0 instead of updated (and no
  weight decay applies); variables outside the encoder get rate 0, i.e. are frozen in phase 1.

`gate_by_layer` applies the per-layer rates and the moment gate around any optax chain (the
project's LAMB), on unrolled (`encoder/layer_<i>/...`) and on scanned (`encoder/layers/...`,
leading [L] axis) parameter trees alike, inside one compiled step: the step number is traced.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
Array = jax.Array

_UNROLLED = re.compile(r"(^|/)encoder/layer_(\d+)/")
_STACKED = re.compile(r"(^|/)encoder/layers/")


def stage_gates(step: Array | int, num_layers: int, steps_per_stage: int) -> Array:
  """g_ℓ(s) for ℓ = 0..L−1, float32 [L] (one 1 at most)."""
  s = jnp.asarray(step, jnp.int32)
  first = jnp.arange(num_layers, dtype=jnp.int32) * steps_per_stage
  return ((s > first) & (s <= first + steps_per_stage)).astype(jnp.float32)


def background(step: Array | int, steps_per_stage: int) -> Array:
  """bg(s) = min(0.9 + 0.1·√(1 − r/P), 10·r/P), r = s mod P (float32 scalar)."""
  r = jnp.mod(jnp.asarray(step, jnp.int32), steps_per_stage).astype(jnp.float32)
  fraction = r / steps_per_stage
  return jnp.minimum(0.9 + 0.1 * jnp.sqrt(1.0 - fraction), 10.0 * fraction)


def layer_rate_multipliers(
  step: Array | int, num_layers: int, steps_per_stage: int, boost: float = 3.0
) -> Array:
  """lr_ℓ(s) / base rate = boost·bg(s)·pc_ℓ(s) for ℓ = 0..L−1, float32 [L]."""
  s = jnp.asarray(step, jnp.int32)
  first = jnp.arange(num_layers, dtype=jnp.int32) * steps_per_stage
  during = (s > first) & (s <= first + steps_per_stage)
  after = s > first + steps_per_stage
  pc = jnp.where(during, 1.0, jnp.where(after, 0.1, 0.0))
  return boost * background(s, steps_per_stage) * pc


def layer_of(path: str) -> int | str | None:
  """Which block a parameter path belongs to: its index, "stacked" ([L, ...]) or None."""
  match = _UNROLLED.search(path)
  if match:
    return int(match.group(2))
  if _STACKED.search(path):
    return "stacked"
  return None


class GateByLayerState(NamedTuple):
  """State of `gate_by_layer`: its own update count and the wrapped chain's state."""

  count: Array
  inner: PyTree


def gate_by_layer(
  inner: optax.GradientTransformation,
  multipliers_fn: Callable[[Array], Array],
) -> optax.GradientTransformation:
  """Scales `inner`'s updates per encoder block and zeroes the moments of gated-off blocks.

  For a parameter of block ℓ the update is m_ℓ(s)·u, where u is `inner`'s update and
  m = `multipliers_fn(s)` [L]; where m_ℓ(s) = 0, every leaf of `inner`'s state shaped like
  that parameter (Adam's moments) is set to 0, as the original's moment gate does. Parameters
  outside the encoder have multiplier 0: no update, moments held at 0.

  Args:
    inner: the chain whose update is gated (clipping, Adam, weight decay, trust ratio, rate).
    multipliers_fn: s -> [L] multipliers (e.g. `layer_rate_multipliers`), s being the number of
      updates this transformation has applied.

  Returns:
    The gated transformation; `update` needs `params`.
  """

  def init_fn(params: PyTree) -> GateByLayerState:
    return GateByLayerState(count=jnp.zeros([], jnp.int32), inner=inner.init(params))

  def update_fn(
    updates: PyTree, state: GateByLayerState, params: PyTree = None
  ) -> tuple[PyTree, GateByLayerState]:
    if params is None:
      raise ValueError("gate_by_layer needs params (to know each leaf's block)")
    multipliers = jnp.asarray(multipliers_fn(state.count), jnp.float32)
    scales = _leaf_multipliers(params, multipliers)
    new_updates, inner_state = inner.update(updates, state.inner, params)
    new_updates = jax.tree.map(lambda u, m: (u * m).astype(u.dtype), new_updates, scales)
    inner_state = _gate_param_shaped(inner_state, params, scales)
    return new_updates, GateByLayerState(count=state.count + 1, inner=inner_state)

  return optax.GradientTransformation(init_fn, update_fn)


def _path_name(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _leaf_multipliers(params: PyTree, multipliers: Array) -> PyTree:
  """The multiplier of each parameter leaf, broadcastable to its shape."""

  def one(path: tuple[Any, ...], leaf: Array) -> Array:
    layer = layer_of(_path_name(path))
    if layer is None:
      return jnp.zeros([], jnp.float32)
    if layer == "stacked":
      return multipliers.reshape((-1,) + (1,) * (leaf.ndim - 1))
    return multipliers[layer]

  return jax.tree_util.tree_map_with_path(one, params)


def _gate_param_shaped(state: PyTree, params: PyTree, scales: PyTree) -> PyTree:
  """Zeroes, in every subtree of `state` shaped like `params`, the leaves whose scale is 0."""
  param_leaves, param_def = jax.tree.flatten(params)
  scale_leaves = param_def.flatten_up_to(scales)

  def visit(node: Any) -> Any:
    try:
      leaves = param_def.flatten_up_to(node)
    except (ValueError, TypeError):
      leaves = None
    if leaves is not None and all(
      hasattr(x, "shape") and x.shape == p.shape for x, p in zip(leaves, param_leaves, strict=True)
    ):
      gated = [
        jnp.where(s > 0, x, jnp.zeros_like(x)) for x, s in zip(leaves, scale_leaves, strict=True)
      ]
      return param_def.unflatten(gated)
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
      return node  # a leaf that is not part of a parameter-shaped subtree (counts, ...)
    return jax.tree_util.tree_unflatten(treedef, [visit(child) for child in children])

  return visit(state)
