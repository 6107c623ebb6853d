"""`mobilebert_jax.train.logit_distillation`: soft targets from a fine-tuned teacher.

The soft term is checked against optax's cross-entropy with probability labels, and the mixed
step loss against the task loss and that term computed separately on the two models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from model_test import TINY

from mobilebert_jax import tasks
from mobilebert_jax.model.models import MobileBertForQuestionAnswering
from mobilebert_jax.train import logit_distillation, steps

pytestmark = pytest.mark.usefixtures("fast_compiles")


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_soft_cross_entropy_is_optax_cross_entropy_with_softened_labels(temperature):
  rng = np.random.default_rng(0)
  student = jnp.asarray(3.0 * rng.standard_normal((4, 7, 11)), jnp.float32)
  teacher = jnp.asarray(3.0 * rng.standard_normal((4, 7, 11)), jnp.float32)
  expected = (
    temperature**2
    * optax.softmax_cross_entropy(
      student / temperature, jax.nn.softmax(teacher / temperature)
    ).mean()
  )
  actual = logit_distillation.soft_cross_entropy(student, teacher, temperature)
  np.testing.assert_allclose(actual, expected, rtol=1e-6)
  # Minimal where the student matches the teacher: zero gradient there.
  grad = jax.grad(logit_distillation.soft_cross_entropy)(teacher, teacher, temperature)
  np.testing.assert_allclose(grad, 0.0, atol=1e-7)


def batch_and_models():
  rng = np.random.default_rng(1)
  ids = rng.integers(1, TINY.vocab_size, (4, 16)).astype(np.int32)
  batch = {
    "input_ids": jnp.asarray(ids),
    "attention_mask": jnp.ones_like(ids),
    "token_type_ids": jnp.zeros_like(ids),
    "start_positions": jnp.asarray([1, 3, 5, 7]),
    "end_positions": jnp.asarray([2, 3, 9, 8]),
  }
  student = MobileBertForQuestionAnswering(TINY)
  # A teacher of another shape: only the task's outputs must agree.
  teacher = MobileBertForQuestionAnswering(TINY.replace(num_hidden_layers=1, hidden_act="gelu"))
  student_params = student.init(jax.random.key(0), batch["input_ids"])["params"]
  teacher_params = teacher.init(jax.random.key(1), batch["input_ids"])["params"]
  # Sharper teacher logits, so that the soft targets are far from uniform.
  teacher_params = jax.tree.map(lambda x: 4.0 * x if x.ndim == 2 else x, teacher_params)
  return batch, student, teacher, student_params, teacher_params


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_step_loss_mixes_the_task_loss_and_the_soft_term(weight):
  batch, student, teacher, params, teacher_params = batch_and_models()
  task = tasks.get_task("squad")
  task_loss = task.make_loss(TINY)
  context = steps.StepContext(step=jnp.int32(0), collections={}, frozen=teacher_params)
  rng = jax.random.key(2)
  loss_fn = logit_distillation.distilled_loss_fn(
    student, task_loss, teacher, weight=weight, temperature=2.0
  )
  loss, aux, _ = loss_fn(params, batch, rng, context)

  plain_loss, _, _ = steps.model_loss_fn(student, task_loss)(params, batch, rng, context)
  inputs = steps.default_model_inputs(batch)
  student_out = student.apply({"params": params}, **inputs)
  teacher_out = teacher.apply({"params": teacher_params}, **inputs)
  soft = np.mean(
    [
      logit_distillation.soft_cross_entropy(getattr(student_out, k), getattr(teacher_out, k), 2.0)
      for k in ("start_logits", "end_logits")
    ]
  )
  np.testing.assert_allclose(aux["task_loss"], plain_loss, rtol=1e-6)
  np.testing.assert_allclose(aux["distill_loss"], soft, rtol=1e-5)
  np.testing.assert_allclose(loss, (1 - weight) * plain_loss + weight * soft, rtol=1e-5)
  assert abs(float(soft) - float(plain_loss)) > 0.1  # the two terms differ

  # No gradient reaches the teacher.
  teacher_grad = jax.grad(lambda t: loss_fn(params, batch, rng, context.replace(frozen=t))[0])(
    teacher_params
  )
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(teacher_grad))


def test_task_logits_of_every_head():
  from mobilebert_jax.model.models import (
    MobileBertForMultipleChoice,
    MobileBertForSequenceClassification,
    MobileBertForTokenClassification,
  )

  ids = jnp.asarray(np.random.default_rng(3).integers(1, TINY.vocab_size, (2, 8)), jnp.int32)
  expected_shapes = {
    MobileBertForQuestionAnswering: {"start_logits": (2, 8), "end_logits": (2, 8)},
    MobileBertForSequenceClassification: {"logits": (2, 3)},
    MobileBertForTokenClassification: {"logits": (2, 8, 3)},
    MobileBertForMultipleChoice: {"logits": (1, 2)},
  }
  for model_class, shapes in expected_shapes.items():
    model = model_class(TINY.replace(num_labels=3))
    inputs = ids[None] if model_class is MobileBertForMultipleChoice else ids
    variables = model.init(jax.random.key(0), inputs)
    logits = logit_distillation.task_logits(model.apply(variables, inputs))
    assert {k: v.shape for k, v in logits.items()} == shapes, model_class.__name__
