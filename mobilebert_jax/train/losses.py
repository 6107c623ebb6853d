"""The training loss of every head, with transformers' semantics, computed in float32.

Token-level losses ignore labels equal to `IGNORE_INDEX` (-100) and average over the rest, as
torch's `CrossEntropyLoss` does. Where transformers would return NaN for a batch with nothing to
score (0/0), these return 0 so that a fully padded batch does not poison training.

Every function takes optional `weights` broadcastable to the labels, used by trainers to mask out
the padding examples of a fixed-shape batch: the loss becomes Σ w·ℓ / Σ w over scored entries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.model.config import MobileBertConfig

Array = jax.Array

IGNORE_INDEX = -100


def _weighted_mean(values: Array, weights: Array) -> Array:
  weights = weights.astype(jnp.float32)
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1e-12)


def cross_entropy(
  logits: Array, labels: Array, weights: Array | None = None, ignore_index: int = IGNORE_INDEX
) -> Array:
  """Mean softmax cross-entropy over entries whose label is not `ignore_index`.

  Args:
    logits: [..., classes].
    labels: [...] integer class ids.
    weights: optional [...] per-entry weights.
    ignore_index: label value that is not scored.

  Returns:
    Scalar float32 loss (0 when nothing is scored).
  """
  logits = logits.astype(jnp.float32)
  valid = labels != ignore_index
  safe_labels = jnp.where(valid, labels, 0)
  per_entry = optax.softmax_cross_entropy_with_integer_labels(logits, safe_labels)
  mask = valid.astype(jnp.float32)
  if weights is not None:
    mask = mask * jnp.broadcast_to(weights, labels.shape).astype(jnp.float32)
  return _weighted_mean(per_entry, mask)


def masked_lm_loss(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """MLM loss. logits [B, T, V]; labels [B, T] with -100 at unscored positions."""
  return cross_entropy(logits, labels, weights)


def next_sentence_loss(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """NSP loss. logits [B, 2]; labels [B] (0 = "B follows A", 1 = random)."""
  return cross_entropy(logits, labels, weights)


def pretraining_loss(
  prediction_logits: Array,
  seq_relationship_logits: Array,
  labels: Array,
  next_sentence_label: Array,
) -> Array:
  """MobileBertForPreTraining loss: MLM cross-entropy + NSP cross-entropy."""
  return masked_lm_loss(prediction_logits, labels) + next_sentence_loss(
    seq_relationship_logits, next_sentence_label
  )


def resolve_problem_type(config: MobileBertConfig, labels: Array) -> str:
  """Picks the sequence-classification loss as transformers does.

  `config.problem_type` wins; otherwise one label means regression, integer labels mean
  single-label classification and float labels multi-label classification.
  """
  if config.problem_type is not None:
    return config.problem_type
  if config.num_labels == 1:
    return "regression"
  if jnp.issubdtype(labels.dtype, jnp.integer):
    return "single_label_classification"
  return "multi_label_classification"


def sequence_classification_loss(
  logits: Array, labels: Array, config: MobileBertConfig, weights: Array | None = None
) -> Array:
  """Loss of `MobileBertForSequenceClassification`.

  Args:
    logits: [B, num_labels].
    labels: [B] int class ids, [B] float targets (regression), or [B, num_labels] float
      multi-hot targets.
    config: model config (`num_labels`, `problem_type`).
    weights: optional [B] per-example weights.

  Returns:
    Scalar float32: MSE (regression), cross-entropy, or mean binary cross-entropy.
  """
  logits = logits.astype(jnp.float32)
  problem = resolve_problem_type(config, labels)
  batch = logits.shape[0]
  example_weights = (
    jnp.ones((batch,), jnp.float32)
    if weights is None
    else jnp.broadcast_to(weights, (batch,)).astype(jnp.float32)
  )
  if problem == "regression":
    if config.num_labels == 1:
      errors = jnp.square(logits.reshape(batch) - labels.reshape(batch).astype(jnp.float32))
    else:
      errors = jnp.mean(jnp.square(logits - labels.astype(jnp.float32)), axis=-1)
    return _weighted_mean(errors, example_weights)
  if problem == "single_label_classification":
    return cross_entropy(logits, labels.reshape(batch), example_weights)
  per_example = jnp.mean(
    optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)), axis=-1
  )
  return _weighted_mean(per_example, example_weights)


def multiple_choice_loss(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """Loss of `MobileBertForMultipleChoice`. logits [B, C]; labels [B] index of the answer."""
  return cross_entropy(logits, labels, weights)


def token_classification_loss(logits: Array, labels: Array, weights: Array | None = None) -> Array:
  """Loss of `MobileBertForTokenClassification`. logits [B, T, L]; labels [B, T], -100 skipped."""
  return cross_entropy(logits, labels, weights)


def question_answering_loss(
  start_logits: Array,
  end_logits: Array,
  start_positions: Array,
  end_positions: Array,
  weights: Array | None = None,
) -> Array:
  """Loss of `MobileBertForQuestionAnswering`: mean of the start and end cross-entropies.

  As in transformers, positions are clamped to [0, length] and a position equal to `length`
  (i.e. outside the window) is not scored.

  Args:
    start_logits: [B, T].
    end_logits: [B, T].
    start_positions: [B] int.
    end_positions: [B] int.
    weights: optional [B] per-example weights.

  Returns:
    Scalar float32.
  """
  length = start_logits.shape[-1]
  start = jnp.clip(start_positions.reshape(-1), 0, length)
  end = jnp.clip(end_positions.reshape(-1), 0, length)
  start_loss = cross_entropy(start_logits, start, weights, ignore_index=length)
  end_loss = cross_entropy(end_logits, end, weights, ignore_index=length)
  return (start_loss + end_loss) / 2
