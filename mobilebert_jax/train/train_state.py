"""`TrainState`: everything a training run needs to continue, as one pytree.

It holds arrays only (no model, no optimizer object, no Python callables), so it passes through
`jax.jit` with shardings, is donated between steps, and is saved and restored by
`checkpointing` as a plain tree. The step functions close over the loss and the optimizer
(`steps.make_train_step`). What a run reads but never updates (a distillation teacher's
parameters) is not part of the state: it is the step's separate `frozen` argument, neither donated
nor checkpointed.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Train state of one run.

  Attributes:
    step: int32 scalar, the number of optimizer updates applied so far.
    params: the unboxed parameter tree, as in `model.apply({"params": params}, ...)`.
    opt_state: the optax state of `optimizer.init(params)`.
    rng: typed PRNG key (`jax.random.key`), the run's dropout base key. It never changes: the
      step's dropout key is `fold_in(rng, step)`, so a resumed run draws the same masks as an
      uninterrupted one without carrying a key chain.
    collections: the model's mutable non-parameter variables, by collection name (e.g. the
      moving-average activation ranges of quantization-aware training), updated by every step
      and checkpointed with the rest; `{}` for models that have none.
  """

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  rng: jax.Array
  collections: PyTree = flax.struct.field(default_factory=dict)

  @classmethod
  def create(
    cls,
    *,
    params: PyTree,
    optimizer: optax.GradientTransformation,
    rng: jax.Array,
    collections: PyTree | None = None,
  ) -> TrainState:
    """A step-0 state with a fresh optimizer state.

    Args:
      params: the unboxed parameters.
      optimizer: the optax transformation whose state to initialise.
      rng: the dropout base key (a typed key; raw uint32 key data is wrapped).
      collections: the model's initial non-parameter variables (default: none).

    Returns:
      The new `TrainState`.
    """
    if not jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
      rng = jax.random.wrap_key_data(rng)
    return cls(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
      rng=rng,
      collections={} if collections is None else collections,
    )

  def variables(self) -> dict[str, PyTree]:
    """`{"params": params, **collections}`, the variables `model.apply` takes."""
    return {"params": self.params, **self.collections}
