"""Fingerprints of a train state, to tell a restored checkpoint from a silently corrupted one.

Orbax's default array format (zarr with zstd chunks) has no checksum: bytes flipped inside an
array file restore without any error, as different numbers. A corrupt checkpoint must instead
be noticed, reported and skipped, so every save records one 32-bit fingerprint per leaf in the
checkpoint's metadata, and a restore recomputes them on the restored arrays and compares.

The fingerprint of a leaf is Σ_i bits(x_i) · (2·i + 1) mod 2^32 over its elements in row-major
order, where bits() is the element's bit pattern (widened to uint32). Any single changed
element changes it (the multiplier is odd, hence invertible mod 2^32), and so does moving a
value to another position. It runs on the devices as one jitted reduction over the (sharded)
global arrays, so it costs a pass over the state, never a copy to the host, and every process
computes the same value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  x = jnp.ravel(x)
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    width = x.dtype.itemsize * 8
    if width > 32:  # 64-bit leaves: fold the two halves
      halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
      bits = halves[..., 0] ^ (halves[..., 1] * jnp.uint32(0x9E3779B1))
    else:
      bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32)
  odd = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
  return jnp.sum(bits * odd, dtype=jnp.uint32)


_fingerprint_leaves = jax.jit(lambda leaves: [_leaf_fingerprint(x) for x in leaves])


def _path_name(path: tuple[Any, ...]) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def compute(state: PyTree) -> dict[str, dict[str, Any]]:
  """`{leaf path: {"dtype": name, "fingerprint": int}}` for every array leaf of `state`."""
  flat = [
    (_path_name(path), leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(state)
    if isinstance(leaf, jax.Array)
  ]
  values = _fingerprint_leaves([leaf for _, leaf in flat])
  result = {}
  for (name, leaf), value in zip(flat, values, strict=True):
    if not value.is_fully_addressable:
      value = value.addressable_data(0)
    result[name] = {"dtype": str(leaf.dtype), "fingerprint": int(np.asarray(value))}
  return result


def mismatches(saved: Mapping[str, Mapping[str, Any]], state: PyTree) -> list[str]:
  """The leaves of `state` whose fingerprint differs from the one saved with it.

  Leaves restored with another dtype than they were saved with (a cast on restore) and leaves
  the saved record does not list are not compared.
  """
  return [
    name
    for name, now in compute(state).items()
    if (then := saved.get(name)) is not None
    and then["dtype"] == now["dtype"]
    and then["fingerprint"] != now["fingerprint"]
  ]
