"""Tests of `mobilebert_jax.train.schedules`: key steps and the TF/transformers rules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.train.schedules import build_schedule, resolve_warmup_steps

# Peak 2.0, 100 steps, 10 warm-up steps, end at 1 % of the peak (0.02): every value below is
# worked out by hand from the module docstring's rule.
LR, TOTAL, WARMUP, END_RATE = 2.0, 100, 10, 0.01
KEY_STEPS = [0, 5, 10, 55, 100, 150]
EXPECTED = {
  # TF1: the decay line runs from (0, 2.0) to (100, 0.02); warm-up replaces its first 10 steps.
  "linear": [0.0, 1.0, 1.98 * 0.9 + 0.02, 1.98 * 0.45 + 0.02, 0.02, 0.02],
  "polynomial": [0.0, 1.0, 1.98 * 0.9**2 + 0.02, 1.98 * 0.45**2 + 0.02, 0.02, 0.02],
  "constant": [0.0, 1.0, 2.0, 2.0, 2.0, 2.0],
}
# The decay anchored at the end of the warm-up: from (10, 2.0) to (100, 0.02); 55 is halfway.
EXPECTED_FROM_WARMUP = [0.0, 1.0, 2.0, 1.98 * 0.5 + 0.02, 0.02, 0.02]


def values(schedule, steps) -> np.ndarray:
  return np.asarray(jax.jit(schedule)(jnp.asarray(steps, jnp.int32)))


@pytest.mark.parametrize("decay", ["linear", "polynomial", "constant"])
def test_key_steps(decay):
  power = 2.0 if decay == "polynomial" else 1.0
  schedule = build_schedule(LR, TOTAL, WARMUP, decay=decay, power=power, end_lr_rate=END_RATE)
  got = values(schedule, KEY_STEPS)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, EXPECTED[decay], rtol=1e-6, atol=0)


def test_decay_from_warmup():
  schedule = build_schedule(LR, TOTAL, WARMUP, end_lr_rate=END_RATE, decay_from_warmup=True)
  np.testing.assert_allclose(values(schedule, KEY_STEPS), EXPECTED_FROM_WARMUP, rtol=1e-6, atol=0)


def test_without_warmup_the_first_step_has_the_peak_rate():
  schedule = build_schedule(LR, TOTAL, end_lr_rate=0.0)
  np.testing.assert_allclose(values(schedule, [0, 50, 100, 101]), [2.0, 1.0, 0.0, 0.0], atol=1e-7)


def test_warmup_proportion_is_truncated_like_bert():
  assert resolve_warmup_steps(100, warmup_proportion=0.1) == 10
  assert resolve_warmup_steps(7, warmup_proportion=0.15) == 1  # int(1.05)
  assert resolve_warmup_steps(None) == 0
  by_steps = build_schedule(LR, TOTAL, warmup_steps=10)
  by_share = build_schedule(LR, TOTAL, warmup_proportion=0.1)
  np.testing.assert_array_equal(values(by_steps, range(120)), values(by_share, range(120)))


def test_constant_schedule_needs_no_total_steps():
  schedule = build_schedule(LR, decay="constant", warmup_steps=4)
  np.testing.assert_allclose(values(schedule, [0, 2, 4, 10**6]), [0.0, 1.0, 2.0, 2.0])


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(decay="cosine"), "Unknown learning-rate decay 'cosine'"),
    (dict(decay="linear", power=2.0), "only applies to decay='polynomial'"),
    (dict(decay="polynomial", power=0.0), "power must be > 0"),
    (dict(warmup_steps=101), "longer than the whole run"),
    (dict(warmup_steps=-1), "non-negative integer"),
    (dict(warmup_steps=2.5), "non-negative integer"),
    (dict(warmup_steps=5, warmup_proportion=0.1), "not both"),
    (dict(warmup_steps=None, warmup_proportion=-0.1), r"\[0, 1\]"),
    (dict(total_steps=None), "needs total_steps"),
    (dict(total_steps=0), "positive integer"),
    (dict(learning_rate=-1.0), "learning_rate must be >= 0"),
    (dict(end_lr_rate=-0.5), "end_lr_rate must be >= 0"),
    (dict(warmup_steps=100, decay_from_warmup=True), "no steps to decay over"),
  ],
)
def test_clear_errors(kwargs, message):
  settings = dict(learning_rate=LR, total_steps=TOTAL, warmup_steps=WARMUP)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    build_schedule(**settings)


def test_warmup_proportion_needs_total_steps():
  with pytest.raises(ValueError, match="needs total_steps"):
    build_schedule(LR, decay="constant", warmup_proportion=0.1)


# ----------------------------------------------------------------------------------------------
# Against the reference implementations
# ----------------------------------------------------------------------------------------------


@pytest.mark.tf
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_matches_tf1_create_optimizer_rate(power):
  """TF1 `create_optimizer`: Keras/TF `PolynomialDecay` of the global step + the warm-up blend."""
  tf = pytest.importorskip("tensorflow")
  init_lr, total, warmup, end_rate = 1.5e-3, 500, 40, 1e-4
  decayed = tf.keras.optimizers.schedules.PolynomialDecay(
    init_lr, total, end_learning_rate=init_lr * end_rate, power=power, cycle=False
  )
  steps = np.arange(0, 600, 7)
  reference = []
  for step in steps:
    # `is_warmup` blend of optimization.py, in float32.
    is_warmup = float(step < warmup)
    warmup_lr = init_lr * (tf.cast(step, tf.float32) / tf.cast(warmup, tf.float32))
    lr = (1.0 - is_warmup) * decayed(step) + is_warmup * warmup_lr
    reference.append(float(lr.numpy()))
  decay = "linear" if power == 1.0 else "polynomial"
  ours = build_schedule(init_lr, total, warmup, decay=decay, power=power, end_lr_rate=end_rate)
  # The project's parity measure (CONTRIBUTING.md), relative to the peak rate. Per element the
  # two differ by up to ~3e-6 relative in the last steps before `total`, where TF's 1 − s/T
  # cancels digits and ours, (T − s)/T, does not.
  error = np.max(np.abs(values(ours, steps) - reference)) / np.max(np.abs(reference))
  assert error <= 1e-5, error


@pytest.mark.torch
def test_decay_from_warmup_matches_transformers():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  init_lr, total, warmup, end_rate, power = 4e-5, 90, 9, 1e-4, 1.0
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=init_lr)
  scheduler = transformers.get_polynomial_decay_schedule_with_warmup(
    optimizer, warmup, total, lr_end=init_lr * end_rate, power=power
  )
  reference = []
  for _ in range(120):
    reference.append(scheduler.get_last_lr()[0])
    optimizer.step()
    scheduler.step()
  ours = build_schedule(
    init_lr, total, warmup, end_lr_rate=end_rate, power=power, decay_from_warmup=True
  )
  np.testing.assert_allclose(values(ours, range(120)), reference, rtol=1e-6, atol=0)
