"""Fine-tuning with a teacher: the task loss mixed with a fine-tuned teacher's softened logits.

`--config.distill_from=WORKDIR` names a fine-tuning run of the same task (typically the float
model that a quantization-aware run starts from). Every training step then runs that teacher
forward (deterministic, no gradient; its parameters are the step's frozen tree) and trains the
student on

    (1 - w) · task loss + w · T² · mean over outputs of CE(softmax(t / T), softmax(s / T))

where t and s are the teacher's and the student's logits of each output (`task_logits`: a QA
model's start and end logits over the positions, else the class logits of sequence, token (every
position) or multiple-choice classification), w = `distill_weight` and T = `distill_temperature`
(Hinton et al. 2015; the T² keeps the soft term's gradient scale independent of T).

Unlike pretraining distillation (`trainers.distillation`), the two models may differ in anything
but the task's output shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.train import steps

Array = jax.Array
PyTree = Any


def soft_cross_entropy(student_logits: Array, teacher_logits: Array, temperature: float) -> Array:
  """T² · mean cross-entropy of the teacher's softened distribution against the student's.

  Args:
    student_logits: [..., classes] float.
    teacher_logits: the same shape.
    temperature: T > 0, dividing both before the softmax.

  Returns:
    A float32 scalar, averaged over all leading positions.
  """
  targets = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
  log_probs = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
  return -jnp.mean(jnp.sum(targets * log_probs, axis=-1)) * temperature**2


def task_logits(outputs: Any) -> dict[str, Array]:
  """The logits soft targets apply to: a QA model's start and end logits, else `logits`."""
  if hasattr(outputs, "start_logits"):
    return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits}
  return {"logits": outputs.logits}


def distilled_loss_fn(
  model: nn.Module,
  task_loss: steps.LossFn,
  teacher: nn.Module,
  *,
  weight: float,
  temperature: float,
) -> steps.StepLossFn:
  """The step loss of `model` on `task_loss` mixed with the teacher's soft targets.

  The teacher's parameters are the step's frozen tree (`StepContext.frozen`).

  Args:
    model: the student.
    task_loss: the task's loss on the student's outputs.
    teacher: the teacher module (its own architecture).
    weight: w, the soft term's share of the loss (0: the task loss alone).
    temperature: T.

  Returns:
    A `StepLossFn` for `steps.make_train_step`; its aux adds `task_loss` and `distill_loss`.
  """

  def loss_fn(
    params: PyTree, batch: Mapping[str, Array], rng: Array, context: steps.StepContext
  ) -> tuple[Array, Mapping[str, Array], PyTree]:
    teacher_outputs = teacher.apply(
      {"params": jax.lax.stop_gradient(context.frozen)}, **steps.default_model_inputs(batch)
    )
    teacher_logits = task_logits(teacher_outputs)

    def mixed_loss(outputs: Any, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
      loss, aux = task_loss(outputs, batch)
      student_logits = task_logits(outputs)
      soft = sum(
        soft_cross_entropy(student_logits[name], teacher_logits[name], temperature)
        for name in teacher_logits
      ) / len(teacher_logits)
      mixed = (1.0 - weight) * loss + weight * soft
      return mixed, {**aux, "task_loss": loss, "distill_loss": soft}

    return steps.model_loss_fn(model, mixed_loss)(params, batch, rng, context)

  return loss_fn
