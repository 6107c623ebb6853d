"""Gradient accumulation over microbatches with float32 accumulators.

`accumulate_gradients` splits a global batch into k microbatches, runs the given
loss-and-gradient function on each inside `jax.lax.scan` (one compiled body, activations of one
microbatch alive at a time) and combines the results so that they equal those of the whole batch:
for a loss of the form Σ w·ℓ / Σ w (every loss in `mobilebert_jax.train.losses`), the microbatch
losses L_i = N_i / D_i and gradients are combined with the weights D_i / Σ_j D_j, which gives
Σ_i N_i / Σ_i D_i, not a mean of per-microbatch means. Padding examples (weight 0) therefore
count for nothing, wherever they fall.

Microbatch i takes the examples i, i + k, i + 2k, ... of the global batch (a strided split).
With the batch axis sharded over devices this keeps every microbatch spread over all devices
(each device's shard contributes equally, with no data movement), whereas a contiguous split
would put each microbatch on a fraction of the devices. The combined result does not depend on
which split is used.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def split_microbatches(batch: PyTree, num_microbatches: int) -> PyTree:
  """Reshapes every leaf [B, ...] to [k, B/k, ...], microbatch i holding examples i, i+k, ....

  Args:
    batch: tree of arrays sharing a leading batch axis B.
    num_microbatches: k, a divisor of B.

  Returns:
    The same tree with leaves [k, B/k, ...].

  Raises:
    ValueError: k < 1, leaves with different batch sizes, or B not divisible by k.
  """
  if isinstance(num_microbatches, bool) or int(num_microbatches) != num_microbatches:
    raise ValueError(f"num_microbatches must be an integer, got {num_microbatches!r}.")
  k = int(num_microbatches)
  if k < 1:
    raise ValueError(f"num_microbatches must be >= 1, got {k}.")
  leaves = jax.tree_util.tree_leaves_with_path(batch)
  if not leaves:
    raise ValueError("The batch has no arrays.")
  sizes = {
    jax.tree_util.keystr(path): jnp.shape(x)[0] if jnp.ndim(x) else None for path, x in leaves
  }
  if None in sizes.values() or len(set(sizes.values())) != 1:
    raise ValueError(f"Every batch entry needs the same leading batch axis; got sizes {sizes}.")
  size = next(iter(sizes.values()))
  if size % k:
    raise ValueError(f"The batch size {size} is not divisible by num_microbatches={k}.")

  def split(x):
    # [B, ...] -> [B/k, k, ...] -> [k, B/k, ...]: row j*k + i goes to microbatch i, position j.
    x = jnp.asarray(x)
    return jnp.swapaxes(x.reshape((size // k, k, *x.shape[1:])), 0, 1)

  return jax.tree.map(split, batch)


def _default_normalizer(weights_key: str | None) -> Callable[[PyTree], jax.Array]:
  """Σ of the batch's weights entry, or the number of examples when there is none."""

  def normalizer(microbatch: PyTree) -> jax.Array:
    if weights_key is not None and isinstance(microbatch, Mapping) and weights_key in microbatch:
      return jnp.sum(jnp.asarray(microbatch[weights_key], jnp.float32))
    return jnp.float32(jax.tree_util.tree_leaves(microbatch)[0].shape[0])

  return normalizer


def accumulate_gradients(
  grad_fn: Callable[..., tuple[Any, PyTree]],
  params: PyTree,
  batch: PyTree,
  num_microbatches: int,
  *,
  weights_key: str | None = "weights",
  normalizer_fn: Callable[[PyTree], jax.Array] | None = None,
  has_aux: bool = False,
  rng: jax.Array | None = None,
  microbatch_constraint: Callable[[PyTree], PyTree] | None = None,
  carry: PyTree | None = None,
) -> tuple[Any, ...]:
  """Loss and gradients of a global batch, computed microbatch by microbatch.

  `grad_fn` is typically `jax.value_and_grad(loss_fn, has_aux=has_aux)` with
  `loss_fn(params, batch[, rng])` returning the weighted mean Σ w·ℓ / Σ w over its batch. Each
  microbatch's share is D_i / Σ_j D_j, where D_i = `normalizer_fn(microbatch_i)`: by default
  Σ `batch[weights_key]` over the microbatch (per-example [B] or per-token [B, ...] weights), or
  its number of examples when the batch has no such entry. The result equals the whole-batch
  result whenever the loss's own denominator is that D (true for `mobilebert_jax.train.losses` when
  every weighted example is scored; pass `normalizer_fn` for other denominators). A microbatch
  with D_i = 0 contributes exactly nothing, even if its loss is 0/0; if all D_i are 0 the loss
  and gradients are 0.

  Args:
    grad_fn: `(params, microbatch[, rng]) -> (loss, grads)`, or `((loss, aux), grads)` with
      `has_aux`. Gradients may be in any float dtype.
    params: passed through to `grad_fn` unchanged.
    batch: tree of arrays with a leading global batch axis [B, ...].
    num_microbatches: k, a divisor of B; 1 calls `grad_fn` once on the whole batch.
    weights_key: batch entry holding the example weights (used by the default normaliser).
    normalizer_fn: microbatch -> scalar denominator D_i, overriding the default.
    has_aux: `grad_fn` returns `(loss, aux)` as its value.
    rng: if given, `grad_fn` gets a third argument, `jax.random.fold_in(rng, i)` for
      microbatch i (the whole batch gets `rng` itself when k = 1).
    microbatch_constraint: applied to each microbatch before `grad_fn`, e.g. a
      `jax.lax.with_sharding_constraint` re-imposing the batch sharding.
    carry: state threaded through the microbatches in order (e.g. a model's moving-average
      statistics): `grad_fn` then takes it as its last argument and returns
      `((loss, (aux, new_carry)), grads)` (`has_aux` is required); microbatch i sees the carry
      microbatch i - 1 returned, as k sequential steps on smaller batches would.

  Returns:
    `(loss, grads)`, or `((loss, aux), grads)` with `has_aux`, where aux leaves are stacked
    over microbatches ([k, ...]; combine them as their meaning requires). The loss is a float32
    scalar and the gradients are float32, with the structure `grad_fn` returns. With `carry`,
    `((loss, aux), grads, final_carry)`.

  Raises:
    ValueError: see `split_microbatches`.
  """
  if carry is not None and not has_aux:
    raise ValueError("accumulate_gradients(carry=...) needs has_aux=True (see the docstring)")
  microbatches = split_microbatches(batch, num_microbatches)
  k = int(num_microbatches)
  threaded = carry is not None

  def call(microbatch, index, state):
    if microbatch_constraint is not None:
      microbatch = microbatch_constraint(microbatch)
    args = [params, microbatch]
    if rng is not None:
      args.append(rng if k == 1 else jax.random.fold_in(rng, index))
    if threaded:
      args.append(state)
    out, grads = grad_fn(*args)
    loss, aux = out if has_aux else (out, None)
    if threaded:
      aux, state = aux
    return loss, aux, grads, state

  if k == 1:
    loss, aux, grads, carry = call(batch, 0, carry)
    loss = jnp.asarray(loss, jnp.float32)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
    if not has_aux:
      return loss, grads
    result = (loss, jax.tree.map(lambda a: jnp.asarray(a)[None], aux)), grads
    return (*result, carry) if threaded else result

  normalizer = normalizer_fn or _default_normalizer(weights_key)
  denominators = jax.vmap(normalizer)(microbatches).astype(jnp.float32)
  if denominators.shape != (k,):
    raise ValueError(f"normalizer_fn must return a scalar; got shape {denominators.shape[1:]}.")
  total = jnp.sum(denominators)
  shares = denominators / jnp.where(total > 0, total, 1.0)

  def first_microbatch(tree):
    return jax.tree.map(lambda x: x[0], tree)

  # Shapes of the gradients (and aux) without running anything, for the zero accumulators.
  _, _, grad_shapes, _ = jax.eval_shape(
    lambda mb: call(mb, 0, carry), first_microbatch(microbatches)
  )
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), grad_shapes)

  def body(state, xs):
    loss_sum, grad_sum, threaded_state = state
    microbatch, share, index = xs
    loss, aux, grads, threaded_state = call(microbatch, index, threaded_state)
    # `where`, not a product: a 0/0 loss of an empty microbatch must not leak NaN into the sum.
    counted = share > 0
    loss_sum = loss_sum + jnp.where(counted, share * jnp.asarray(loss, jnp.float32), 0.0)
    grad_sum = jax.tree.map(
      lambda acc, g: acc + jnp.where(counted, share * g.astype(jnp.float32), 0.0), grad_sum, grads
    )
    return (loss_sum, grad_sum, threaded_state), aux

  (loss, grads, carry), aux = jax.lax.scan(
    body, (jnp.zeros([], jnp.float32), zeros, carry), (microbatches, shares, jnp.arange(k))
  )
  if not has_aux:
    return loss, grads
  return ((loss, aux), grads, carry) if threaded else ((loss, aux), grads)
