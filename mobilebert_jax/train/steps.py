"""The step contract every trainer shares: train and eval step factories.

The factories return pure functions, to be jitted with shardings by
`sharding.jit_train_step` / `sharding.jit_eval_step`:

    train_step(state: TrainState, batch, frozen=None) -> (TrainState, metrics)
    eval_step(params, batch[, collections]) -> outputs

What differs between training regimes is one function, the step loss:

    loss_fn(params, batch, rng, context: StepContext) -> (loss, aux, new_collections)

`context` carries what the loss reads but does not differentiate: the step number (a traced
int32, for schedules inside the compiled step such as progressive-transfer gates), the model's
mutable collections (`state.collections`, e.g. quantization ranges) and the frozen tree (e.g. a
distillation teacher's parameters, passed to every call as an argument with its own shardings,
so it is neither donated nor baked into the executable as a constant). `aux` is a dict of scalar
metrics reported next to the step's own; `new_collections` replaces `state.collections`.

Fine-tuning builds its loss from the model and a task loss `task_loss(model_outputs, batch) ->
(loss, aux)` with `model_loss_fn`, e.g. for SQuAD

    def task_loss(out, batch):
      loss = losses.question_answering_loss(out.start_logits, out.end_logits,
                                            batch["start_positions"], batch["end_positions"])
      return loss, {}

    train_step = make_train_step(model_loss_fn(model, task_loss), optimizer)

The parts every regime needs live here once: gradient accumulation (fp32, microbatches weighted
by their `weights`), the cast of gradients back to the parameters' dtypes, the optimizer update,
and the metrics the loop's non-finite guard checks (`loss`, `grad_norm`, `param_norm`). Every
batch entry must be an array whose leading dimension is the example dimension. Per-layer
learning-rate multipliers (progressive transfer) belong in the optimizer: it receives the
parameters and counts its own updates.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.grad_accum import accumulate_gradients
from mobilebert_jax.train.train_state import TrainState

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]
# `task_loss(model_outputs, batch) -> (loss, aux)`: a fine-tuning task's loss.
LossFn = Callable[[Any, Batch], tuple[Array, Mapping[str, Array]]]
TrainStepFn = Callable[..., tuple[TrainState, dict[str, Array]]]


@flax.struct.dataclass
class StepContext:
  """What a step loss reads besides the parameters, the batch and the dropout key.

  Attributes:
    step: int32 scalar, the number of updates applied before this one (traced: a schedule that
      depends on it does not recompile).
    collections: the model's mutable collections as the step (or microbatch) starts.
    frozen: the step's frozen tree (e.g. `{"teacher": params}`), or None.
  """

  step: Array
  collections: PyTree
  frozen: PyTree


# `loss_fn(params, batch, rng, context) -> (loss, aux, new_collections)`: the step loss.
StepLossFn = Callable[
  [PyTree, Batch, Array, StepContext], tuple[Array, Mapping[str, Array], PyTree]
]

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


def model_loss_fn(
  model: nn.Module,
  task_loss: LossFn,
  *,
  model_inputs_fn: Callable[[Batch], Mapping[str, Array]] = default_model_inputs,
) -> StepLossFn:
  """The step loss of a model trained on `task_loss(model_outputs, batch) -> (loss, aux)`.

  The model runs in training mode (`deterministic=False`, dropout from the step's key) on the
  variables `{"params": params, **context.collections}`; the collections it updates (e.g.
  quantization statistics) come back as the new collections. The frozen tree is not used.

  Args:
    model: the Flax model.
    task_loss: the task's loss on the model's outputs.
    model_inputs_fn: picks the model's keyword inputs from a batch.

  Returns:
    A `StepLossFn` for `make_train_step`.
  """

  def loss_fn(
    params: PyTree, batch: Batch, rng: Array, context: StepContext
  ) -> tuple[Array, Mapping[str, Array], PyTree]:
    variables = {"params": params, **context.collections}
    kwargs = dict(model_inputs_fn(batch), deterministic=False, rngs={"dropout": rng})
    if context.collections:
      outputs, collections = model.apply(variables, **kwargs, mutable=list(context.collections))
    else:
      outputs, collections = model.apply(variables, **kwargs), context.collections
    loss, aux = task_loss(outputs, batch)
    return loss, aux, dict(collections)

  return loss_fn


def make_train_step(
  loss_fn: StepLossFn,
  optimizer: optax.GradientTransformation,
  *,
  grad_accum_steps: int = 1,
  learning_rate_fn: optax.Schedule | None = None,
  weights_key: str | None = "weights",
) -> TrainStepFn:
  """Builds `train_step(state, batch, frozen=None) -> (state, metrics)`.

  One call is one optimizer update. With `grad_accum_steps = k > 1` the batch [B, ...] is split
  into k strided microbatches of B / k examples whose gradients a `lax.scan` combines in float32
  (`grad_accum.accumulate_gradients`): each microbatch counts in proportion to its summed
  `batch[weights_key]` (or its size when the batch has no weights), so the update equals the
  whole-batch update for the weighted-mean losses of `mobilebert_jax.train.losses`. The model's
  collections are threaded through the microbatches in order.

  Dropout: the step's key is `fold_in(state.rng, state.step)` (then `fold_in(·, i)` for
  microbatch i), so masks depend only on the base key and the step, never on the mesh or on
  where a run was resumed.

  Args:
    loss_fn: the step loss (see the module docstring; `model_loss_fn` for a model and a task
      loss).
    optimizer: any optax transformation (the one the state was created with).
    grad_accum_steps: microbatches per update (>= 1; must divide the batch size).
    learning_rate_fn: the schedule, to report `learning_rate` (the rate of this update). Without
      it, the rate is read from an `optax.inject_hyperparams` state when there is one.
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

  def train_step(
    state: TrainState, batch: Batch, frozen: PyTree = None
  ) -> tuple[TrainState, dict[str, Array]]:
    def loss_and_aux(
      params: PyTree, microbatch: Batch, rng: Array, collections: PyTree
    ) -> tuple[Array, tuple[dict[str, Array], PyTree]]:
      context = StepContext(step=state.step, collections=collections, frozen=frozen)
      loss, aux, new_collections = loss_fn(params, microbatch, rng, context)
      return jnp.asarray(loss, jnp.float32), (dict(aux), new_collections)

    rng = jax.random.fold_in(state.rng, state.step)
    (loss, aux), grads, collections = accumulate_gradients(
      jax.value_and_grad(loss_and_aux, has_aux=True),
      state.params,
      batch,
      grad_accum_steps,
      weights_key=weights_key,
      has_aux=True,
      rng=rng,
      microbatch_constraint=_constrain_batch if grad_accum_steps > 1 else None,
      carry=state.collections,
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
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, collections=collections
    )
    return new_state, metrics

  return train_step


def make_eval_step(
  model: nn.Module,
  *,
  outputs_fn: Callable[[Any, Batch], PyTree] | None = None,
  model_inputs_fn: Callable[[Batch], Mapping[str, Array]] = default_model_inputs,
) -> Callable[..., PyTree]:
  """Builds `eval_step(params, batch, collections=None) -> outputs` (deterministic forward).

  Args:
    model: the Flax model.
    outputs_fn: `outputs_fn(model_outputs, batch) -> tree` selecting what leaves the device
      (e.g. only the start/end logits, or logits plus a per-example loss); default: the model's
      output dataclass as is.
    model_inputs_fn: picks the model's keyword inputs from a batch.

  Returns:
    The pure eval function; `collections` are the model's non-parameter variables
    (`state.collections`), read but not updated.
  """

  def eval_step(params: PyTree, batch: Batch, collections: PyTree = None) -> PyTree:
    variables = {"params": params, **(collections or {})}
    outputs = model.apply(variables, **model_inputs_fn(batch), deterministic=True)
    return outputs if outputs_fn is None else outputs_fn(outputs, batch)

  return eval_step
