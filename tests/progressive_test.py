"""Progressive knowledge transfer against NumPy transcriptions of the original (TF1) formulas.

* the stage gates, background and per-layer rates at every step around the stage boundaries;
* `gate_by_layer` around the project's TF1 LAMB vs a float32 NumPy transcription of the
  original's phase-1 update (per-layer rate 3·bg·{0, 1, 0.1}, moments zeroed where it is 0,
  non-encoder variables frozen, global clipping over all gradients) for steps that cross every
  stage boundary, on unrolled and scanned parameter trees;
* the transfer losses (TF1 and TF2 forms) and the soft MLM loss vs float64 NumPy.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.train import progressive, transfer_losses
from mobilebert_jax.train.optim import build_optimizer

NUM_LAYERS = 3
STEPS_PER_STAGE = 4
LR = 1.5e-3
WEIGHT_DECAY = 0.01
TF1_EXCLUDE = ("teacher", "LayerNorm", "layer_norm", "bias", "FakeLayerNorm")


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def numpy_multiplier(step: int, layer: int, period: int) -> float:
  """3·bg(s)·pc_ℓ(s) as the original computes it (piecewise_constant boundaries inclusive)."""
  r = step % period
  bg = min(0.9 + 0.1 * math.sqrt(1 - r / period), 10 * r / period)
  if step <= period * layer:
    pc = 0.0
  elif step <= period * (layer + 1):
    pc = 1.0
  else:
    pc = 0.1
  return 3 * bg * pc


@pytest.mark.parametrize("step", range(0, 14))
def test_gates_background_and_rates(step):
  gates = np.asarray(progressive.stage_gates(step, NUM_LAYERS, STEPS_PER_STAGE))
  expected = [
    float(STEPS_PER_STAGE * ell < step <= STEPS_PER_STAGE * (ell + 1)) for ell in range(NUM_LAYERS)
  ]
  np.testing.assert_array_equal(gates, expected)
  rates = np.asarray(progressive.layer_rate_multipliers(step, NUM_LAYERS, STEPS_PER_STAGE))
  np.testing.assert_allclose(
    rates, [numpy_multiplier(step, ell, STEPS_PER_STAGE) for ell in range(NUM_LAYERS)], rtol=1e-6
  )
  # Every stage boundary is a no-op step: bg = 0.
  if step % STEPS_PER_STAGE == 0:
    assert not rates.any()


def test_background_values_of_the_original():
  assert float(progressive.background(0, 10)) == 0.0
  np.testing.assert_allclose(float(progressive.background(1, 10)), 0.99486833, rtol=1e-6)


def test_layer_of_paths():
  assert progressive.layer_of("mobilebert/encoder/layer_11/attention/query/kernel") == 11
  assert progressive.layer_of("mobilebert/encoder/layers/ffn_0/intermediate/kernel") == "stacked"
  assert progressive.layer_of("mobilebert/embeddings/word_embeddings") is None
  assert progressive.layer_of("cls/predictions/bias") is None


# ----------------------------------------------------------------------------------------------
# The gated optimizer vs the original's phase-1 update
# ----------------------------------------------------------------------------------------------


def toy_tf1_variables(rng: np.random.Generator) -> dict[str, np.ndarray]:
  """TF1 names -> values: three blocks, embeddings and the MLM head."""
  variables = {
    "bert/embeddings/word_embeddings": 0.05 * rng.standard_normal((16, 4)),
    "cls/predictions/output_bias": 0.05 * rng.standard_normal(16),
  }
  for ell in range(NUM_LAYERS):
    prefix = f"bert/encoder/layer_{ell}"
    variables[f"{prefix}/attention/kernel"] = 0.05 * rng.standard_normal((4, 6))
    variables[f"{prefix}/attention/bias"] = 0.05 * rng.standard_normal(6)
    variables[f"{prefix}/output/FakeLayerNorm/gamma"] = 1 + 0.1 * rng.standard_normal(6)
  return {k: v.astype(np.float32) for k, v in variables.items()}


def ours_from_tf1(variables: dict[str, np.ndarray], scanned: bool) -> dict:
  """Our tree (unrolled `encoder/layer_<i>` or scanned `encoder/layers` with [L, ...])."""
  names = {"attention/kernel": "attention/kernel", "attention/bias": "attention/bias",
           "output/FakeLayerNorm/gamma": "output/norm/scale"}  # fmt: skip
  tree = {
    "mobilebert": {
      "embeddings": {"word_embeddings": variables["bert/embeddings/word_embeddings"]},
      "encoder": {},
    },
    "cls": {"predictions": {"bias": variables["cls/predictions/output_bias"]}},
  }
  encoder = tree["mobilebert"]["encoder"]
  for tf1, ours in names.items():
    per_layer = [variables[f"bert/encoder/layer_{ell}/{tf1}"] for ell in range(NUM_LAYERS)]
    parts = ours.split("/")
    if scanned:
      node = encoder.setdefault("layers", {})
      for part in parts[:-1]:
        node = node.setdefault(part, {})
      node[parts[-1]] = np.stack(per_layer)
    else:
      for ell, value in enumerate(per_layer):
        node = encoder.setdefault(f"layer_{ell}", {})
        for part in parts[:-1]:
          node = node.setdefault(part, {})
        node[parts[-1]] = value
  return tree


def tf1_phase1_step(params, m, v, grads, step):
  """The original's phase-1 LAMB update (float32), per TF1 variable."""
  # As TF1 writes them: Python floats, so 1 − β is formed in float64 before the cast.
  b1, b2, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-6)
  one_minus_b1, one_minus_b2 = np.float32(1.0 - 0.9), np.float32(1.0 - 0.999)
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
  scale = np.float32(1.0) * np.minimum(np.float32(1.0) / norm, np.float32(1.0))
  grads = {k: g * scale for k, g in grads.items()}
  out = ({}, {}, {})
  for name, w in params.items():
    match = re.search(r"encoder/layer_(\d+)/", name)
    multiplier = (
      np.float32(numpy_multiplier(step, int(match.group(1)), STEPS_PER_STAGE)) if match else 0.0
    )
    gate = np.float32(multiplier > 0)
    g = grads[name]
    next_m = gate * (b1 * m[name] + one_minus_b1 * g)
    next_v = gate * (b2 * v[name] + one_minus_b2 * np.square(g))
    update = next_m / (np.sqrt(next_v) + eps)
    excluded = any(re.search(r, name) for r in TF1_EXCLUDE)
    if not excluded:
      update = update + np.float32(WEIGHT_DECAY) * w * gate
    ratio = np.float32(1.0)
    if not excluded:
      w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(update)
      if w_norm > 0 and u_norm > 0:
        ratio = w_norm / u_norm
    out[0][name] = w - np.float32(multiplier) * ratio * np.float32(LR) * update
    out[1][name], out[2][name] = next_m, next_v
  return out


@pytest.mark.parametrize("scanned", [False, True])
def test_gated_lamb_matches_the_original_phase_one_update(scanned):
  rng = np.random.default_rng(0)
  tf1_params = toy_tf1_variables(rng)
  tf1_m = {k: np.zeros_like(v) for k, v in tf1_params.items()}
  tf1_v = {k: np.zeros_like(v) for k, v in tf1_params.items()}

  inner, _ = build_optimizer(
    "lamb", LR, total_steps=100, end_lr_rate=1.0, weight_decay=WEIGHT_DECAY
  )
  tx = progressive.gate_by_layer(
    inner, lambda s: progressive.layer_rate_multipliers(s, NUM_LAYERS, STEPS_PER_STAGE)
  )
  params = jax.tree.map(jnp.asarray, ours_from_tf1(tf1_params, scanned))
  initial_embeddings = np.asarray(params["mobilebert"]["embeddings"]["word_embeddings"])
  state = tx.init(params)
  update = jax.jit(tx.update)

  num_steps = NUM_LAYERS * STEPS_PER_STAGE + 3  # every boundary, and 3 steps past the last stage
  for step in range(num_steps):
    tf1_grads = {
      k: (0.03 * (1 + i % 3) * rng.standard_normal(v.shape)).astype(np.float32)
      for i, (k, v) in enumerate(tf1_params.items())
    }
    grads = jax.tree.map(jnp.asarray, ours_from_tf1(tf1_grads, scanned))
    updates, state = update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    tf1_params, tf1_m, tf1_v = tf1_phase1_step(tf1_params, tf1_m, tf1_v, tf1_grads, step)

    adam = state.inner["adam"]
    for ours, ref in ((params, tf1_params), (adam.mu, tf1_m), (adam.nu, tf1_v)):
      expected = ours_from_tf1(ref, scanned)
      for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected), strict=True):
        scale = max(float(np.max(np.abs(b))), 1e-30)
        assert float(np.max(np.abs(np.asarray(a) - b))) / scale <= 1e-5, step
  # Everything outside the encoder is frozen in phase 1.
  np.testing.assert_array_equal(
    params["mobilebert"]["embeddings"]["word_embeddings"], initial_embeddings
  )
  assert int(state.count) == num_steps


# ----------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------


def numpy_ln(x, eps):
  x = x.astype(np.float64)
  mean = x.mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps)


def numpy_softmax(x):
  x = x.astype(np.float64)
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def random_states(rng, batch=2, length=5, hidden=8, heads=2, layers=NUM_LAYERS):
  hiddens = [rng.standard_normal((batch, length, hidden)).astype(np.float32) * (1 + i)
             for i in range(layers + 1)]  # fmt: skip
  scores = [rng.standard_normal((batch, heads, length, length)).astype(np.float32) * 3
            for _ in range(layers)]  # fmt: skip
  return hiddens, scores


@pytest.mark.parametrize("all_layer_statistics", [False, True])
def test_tf1_transfer_loss_matches_numpy(all_layer_statistics):
  rng = np.random.default_rng(1)
  s_h, s_s = random_states(rng)
  t_h, t_s = random_states(rng)
  gates = np.array([0.0, 1.0, 0.0], np.float32)
  semantics = transfer_losses.Semantics(tf1_all_layer_statistics=all_layer_statistics)
  loss, terms = transfer_losses.progressive_transfer_loss(
    s_h, t_h, s_s, t_s, jnp.asarray(gates), semantics=semantics
  )
  ell = 1
  hs, ht = s_h[ell + 1].astype(np.float64), t_h[ell + 1].astype(np.float64)
  ft = ((numpy_ln(ht, 1e-12) - numpy_ln(hs, 1e-12)) ** 2).mean()
  at = (-(numpy_softmax(t_s[ell]) * np.log(numpy_softmax(s_s[ell]))).sum(-1)).mean()
  if all_layer_statistics:
    mt = np.stack([h.astype(np.float64).mean(-1) for h in t_h])
    vt = np.stack([h.astype(np.float64).var(-1) for h in t_h])
  else:
    mt, vt = ht.mean(-1), ht.var(-1)
  beta = ((mt - hs.mean(-1)) ** 2).mean()
  gamma = np.abs(vt - hs.var(-1)).mean()
  expected = {"feature": 100 * ft / 3, "attention": at / 3, "mean": 5000 * beta / 3,
              "variance": 5 * gamma / 3}  # fmt: skip
  for name, value in expected.items():
    np.testing.assert_allclose(float(terms[name]), value, rtol=1e-5, err_msg=name)
  np.testing.assert_allclose(float(loss), sum(expected.values()), rtol=1e-5)
  # With no gate on (s = 0, or a stage boundary), the loss is exactly 0.
  zero, _ = transfer_losses.progressive_transfer_loss(s_h, t_h, s_s, t_s, jnp.zeros(3))
  assert float(zero) == 0.0


def test_tf2_stage_loss_matches_numpy():
  rng = np.random.default_rng(2)
  s_h, _ = random_states(rng)
  t_h, _ = random_states(rng)
  probs_s = numpy_softmax(rng.standard_normal((2, 2, 5, 5))).astype(np.float32)
  probs_t = numpy_softmax(rng.standard_normal((2, 2, 5, 5))).astype(np.float32)
  stage = 1
  loss, terms = transfer_losses.tf2_stage_loss(s_h[2], t_h[2], probs_s, probs_t, stage)
  hs, ht = s_h[2].astype(np.float64), t_h[2].astype(np.float64)
  ft = 100 * ((numpy_ln(ht, 1e-3) - numpy_ln(hs, 1e-3)) ** 2).mean(-1)  # [B, T]
  at = (-(numpy_softmax(probs_t) * np.log(numpy_softmax(probs_s))).sum(-1)).mean()
  beta = 5000 * ((ht.mean(-1) - hs.mean(-1)) ** 2).mean()
  gamma = 5 * np.abs(ht.var(-1) - hs.var(-1)).mean()
  expected = ((ft + beta + gamma + at) / (stage + 1)).sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(terms["feature"]), ft.mean(), rtol=1e-5)
  # The double softmax makes the attention term close to ln T for any probabilities.
  assert abs(float(terms["attention"]) - math.log(5)) < 0.05


def test_soft_mlm_loss_matches_numpy():
  rng = np.random.default_rng(3)
  student = rng.standard_normal((2, 3, 7)).astype(np.float32)
  teacher = rng.standard_normal((2, 3, 7)).astype(np.float32) * 2
  ids = rng.integers(0, 7, (2, 3))
  weights = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
  target = 0.5 * np.eye(7)[ids] + 0.5 * numpy_softmax(teacher)
  ce = -(target * np.log(numpy_softmax(student))).sum(-1)
  expected = (weights * ce).sum() / (weights.sum() + 1e-5)
  loss = transfer_losses.soft_mlm_loss(student, teacher, ids, weights)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
  # α = 1 is the plain masked-LM loss.
  hard = transfer_losses.soft_mlm_loss(student, teacher, ids, weights, ground_truth_ratio=1.0)
  plain = -(np.eye(7)[ids] * np.log(numpy_softmax(student))).sum(-1)
  np.testing.assert_allclose(float(hard), (weights * plain).sum() / (3 + 1e-5), rtol=1e-6)
