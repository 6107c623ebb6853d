"""Generic train and eval step factories for any model class and any task loss.

The factories return pure functions, to be jitted with shardings by
`sharding.jit_train_step` / `sharding.jit_eval_step`:

    train_step(state: TrainState, batch: dict[str, Array]) -> (TrainState, metrics)
    eval_step(params, batch: dict[str, Array]) -> outputs

Task code supplies `loss_fn(model_outputs, batch) -> (loss, aux)`, e.g. for SQuAD

    def loss_fn(out, batch):
      loss = losses.question_answering_loss(out.start_logits, out.end_logits,
                                            batch["start_positions"], batch["end_positions"])
      return loss, {}

`aux` is a dict of scalar metrics (accuracy, ...) reported next to the step's own metrics.
Every batch entry must be an array whose leading dimension is the example dimension.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.grad_accum import accumulate_gradients
from mobilebert_jax.train.train_state import TrainState

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]
LossFn = Callable[[Any, Batch], tuple[Array, Mapping[str, Array]]]
TrainStepFn = Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]

# Batch entries passed to the model by default; everything else (labels, weights, ...) is for
# the loss function only.
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def default_model_inputs(batch: Batch) -> dict[str, Array]:
  """Selects the model's keyword inputs (`MODEL_INPUT_KEYS`) from a batch.

  Raises:
    KeyError: the batch has no `input_ids`.
  """
  if "input_ids" not in batch:
    raise KeyError(f"batch has no 'input_ids' (keys: {sorted(batch)})")
  return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def _find_learning_rate(opt_state: PyTree) -> Array | None:
  """The `learning_rate` hyperparameter of an `optax.inject_hyperparams` state, if unique."""
  try:
    value = optax.tree_utils.tree_get(opt_state, "learning_rate")
  except KeyError:  # several transformations inject one: ambiguous, report none
    return None
  if value is None or not hasattr(value, "shape") or value.shape != ():
    return None
  return jnp.asarray(value, jnp.float32)


def _constrain_batch(batch: Batch) -> dict[str, Array]:
  """Re-asserts the batch sharding on a microbatch (a no-op outside a mesh with rules)."""
  return {
    k: nn.with_logical_constraint(v, ("batch",) + (None,) * (v.ndim - 1)) for k, v in batch.items()
  }


def make_train_step(
  model: nn.Module,
  loss_fn: LossFn,
  optimizer: optax.GradientTransformation,
  *,
  grad_accum_steps: int = 1,
  learning_rate_fn: optax.Schedule | None = None,
  model_inputs_fn: Callable[[Batch], Mapping[str, Array]] = default_model_inputs,
  weights_key: str | None = "weights",
) -> TrainStepFn:
  """Builds `train_step(state, batch) -> (state, metrics)`.

  One call is one optimizer update. With `grad_accum_steps = k > 1` the batch [B, ...] is split
  into k strided microbatches of B / k examples whose gradients a `lax.scan` combines in float32
  (`grad_accum.accumulate_gradients`): each microbatch counts in proportion to its summed
  `batch[weights_key]` (or its size when the batch has no weights), so the update equals the
  whole-batch update for the weighted-mean losses of `mobilebert_jax.train.losses`.

  Dropout: the step's key is `fold_in(state.rng, state.step)` (then `fold_in(·, i)` for
  microbatch i), so masks depend only on the base key and the step, never on the mesh or on
  where a run was resumed.

  Args:
    model: the Flax model, called as `model.apply({"params": p}, **inputs, deterministic=False,
      rngs={"dropout": key})`.
    loss_fn: `loss_fn(model_outputs, batch) -> (scalar loss, dict of scalar aux metrics)`.
    optimizer: any optax transformation (the one the state was created with).
    grad_accum_steps: microbatches per update (>= 1; must divide the batch size).
    learning_rate_fn: the schedule, to report `learning_rate` (the rate of this update). Without
      it, the rate is read from an `optax.inject_hyperparams` state when there is one.
    model_inputs_fn: picks the model's keyword inputs from a batch.
    weights_key: the batch entry of per-example weights that weighs microbatches (the key
      `data.batching` adds to padded batches).

  Returns:
    The pure step function. Its metrics are float32 scalars: `loss`, `grad_norm` (global L2 norm
    of the gradient, before any clipping the optimizer does), `update_norm`, `param_norm` (after
    the update), `learning_rate` when known, and the `aux` entries (with accumulation, their
    unweighted mean over microbatches).

  Raises:
    ValueError: `grad_accum_steps < 1`; at trace time, aux names that clash with the step's
      metrics or a batch not divisible into microbatches.
  """
  if isinstance(grad_accum_steps, bool) or not isinstance(grad_accum_steps, int):
    raise ValueError(f"grad_accum_steps must be a positive integer, got {grad_accum_steps!r}")
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be a positive integer, got {grad_accum_steps!r}")

  def loss_and_aux(params: PyTree, batch: Batch, rng: Array) -> tuple[Array, dict[str, Array]]:
    outputs = model.apply(
      {"params": params}, **model_inputs_fn(batch), deterministic=False, rngs={"dropout": rng}
    )
    loss, aux = loss_fn(outputs, batch)
    return jnp.asarray(loss, jnp.float32), dict(aux)

  grad_fn = jax.value_and_grad(loss_and_aux, has_aux=True)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads = accumulate_gradients(
      grad_fn,
      state.params,
      batch,
      grad_accum_steps,
      weights_key=weights_key,
      has_aux=True,
      rng=rng,
      microbatch_constraint=_constrain_batch if grad_accum_steps > 1 else None,
    )
    # Gradients come back in float32; give them the parameters' dtype, as plain autodiff would,
    # so the optimizer state keeps its dtypes (a dtype change would recompile the next step).
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    metrics = {
      "loss": loss,
      "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
      "update_norm": optax.tree.norm(updates).astype(jnp.float32),
      "param_norm": optax.tree.norm(params).astype(jnp.float32),
    }
    if learning_rate_fn is not None:
      metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    else:
      lr = _find_learning_rate(state.opt_state)
      if lr is not None:
        metrics["learning_rate"] = lr
    clashes = sorted(set(aux) & set(metrics))
    if clashes:
      raise ValueError(f"loss_fn aux metrics {clashes} clash with the step's own metrics")
    # aux leaves are stacked over microbatches ([k], k = 1 without accumulation).
    metrics.update({k: jnp.mean(jnp.asarray(v, jnp.float32), axis=0) for k, v in aux.items()})
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def make_eval_step(
  model: nn.Module,
  *,
  outputs_fn: Callable[[Any, Batch], PyTree] | None = None,
  model_inputs_fn: Callable[[Batch], Mapping[str, Array]] = default_model_inputs,
) -> Callable[[PyTree, Batch], PyTree]:
  """Builds `eval_step(params, batch) -> outputs` (deterministic forward pass).

  Args:
    model: the Flax model.
    outputs_fn: `outputs_fn(model_outputs, batch) -> tree` selecting what leaves the device
      (e.g. only the start/end logits, or logits plus a per-example loss); default: the model's
      output dataclass as is.
    model_inputs_fn: picks the model's keyword inputs from a batch.

  Returns:
    The pure eval function.
  """

  def eval_step(params: PyTree, batch: Batch) -> PyTree:
    outputs = model.apply({"params": params}, **model_inputs_fn(batch), deterministic=True)
    return outputs if outputs_fn is None else outputs_fn(outputs, batch)

  return eval_step
