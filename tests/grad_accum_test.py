"""Tests of `mobilebert_jax.train.grad_accum`: microbatched loss and gradients equal the batch's.

Tolerance: the project's parity measure max|ours − ref| / max|ref| ≤ 1e-5 (CONTRIBUTING.md),
for the loss and for the gradient taken as one vector (all leaves together). Both sides compute
the same float32 sums in a different order (per microbatch, then across microbatches), so they
agree to float32 rounding (measured ≤ 2.1e-7); a mean of per-microbatch means with padding is
off by far more (checked on a linear model). The gradient is not measured tensor by tensor
because some of MobileBERT's gradients are exactly zero in exact arithmetic (attention key
biases: softmax is shift-invariant; the `qa_outputs` bias and the biases after the last
nonlinearity: they shift all positions' logits alike) and hold only rounding noise (~1e-9 of
the largest gradient), whose relative error is meaningless.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mobilebert_jax import MobileBertConfig, MobileBertForQuestionAnswering, init_params
from mobilebert_jax.train import losses
from mobilebert_jax.train.grad_accum import accumulate_gradients, split_microbatches

TOLERANCE = 1e-5
BATCH, LENGTH = 8, 12


def relative_error(ours, ref) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  scale = np.max(np.abs(ref))
  return float(np.max(np.abs(ours - ref)) / scale) if scale > 0 else float(np.max(np.abs(ours)))


def tree_error(ours, ref) -> float:
  """max|ours − ref| / max|ref| over all leaves together."""
  diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True)
  )
  return diff / max(float(np.max(np.abs(np.asarray(b)))) for b in jax.tree.leaves(ref))


# ----------------------------------------------------------------------------------------------
# A tiny MobileBERT for question answering
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qa_model():
  config = MobileBertConfig(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=16,
    intra_bottleneck_size=16,
    num_feedforward_networks=1,
    max_position_embeddings=LENGTH,
  )
  model = MobileBertForQuestionAnswering(config)
  # Random values for every parameter (norms and biases included), from the shapes alone.
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map_with_path(
    lambda path, x: jnp.asarray(
      (1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0)
      + 0.1 * rng.standard_normal(x.shape),
      jnp.float32,
    ),
    jax.eval_shape(lambda: init_params(model, length=LENGTH)),
  )

  def loss_fn(params, batch):
    out = model.apply(
      {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    return losses.question_answering_loss(
      out.start_logits,
      out.end_logits,
      batch["start_positions"],
      batch["end_positions"],
      batch["weights"],
    )

  lengths = rng.integers(6, LENGTH + 1, BATCH)
  batch = {
    "input_ids": rng.integers(1, 64, (BATCH, LENGTH)).astype(np.int32),
    "attention_mask": (np.arange(LENGTH)[None] < lengths[:, None]).astype(np.int32),
    "token_type_ids": (np.arange(LENGTH)[None] >= 4).astype(np.int32).repeat(BATCH, 0),
    "start_positions": rng.integers(0, 6, BATCH).astype(np.int32),
    "end_positions": rng.integers(0, 6, BATCH).astype(np.int32),
    "weights": np.ones(BATCH, np.float32),
  }
  return params, loss_fn, batch, jax.jit(jax.value_and_grad(loss_fn))


# Padded examples (weight 0) and unequal weights. With k = 4 the strided split puts examples
# 3 and 7 together, so one microbatch is all padding.
PADDED_WEIGHTS = np.array([1.0, 2.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0.0], np.float32)


@pytest.mark.parametrize("num_microbatches", [2, 4])
def test_equals_the_whole_batch_on_a_tiny_mobilebert(qa_model, num_microbatches):
  params, loss_fn, batch, whole = qa_model
  accumulated = jax.jit(
    lambda p, b: accumulate_gradients(jax.value_and_grad(loss_fn), p, b, num_microbatches)
  )
  for weights in (np.ones(BATCH, np.float32), PADDED_WEIGHTS):
    b = dict(batch, weights=weights)
    ref_loss, ref_grads = whole(params, b)
    loss, grads = accumulated(params, b)
    assert loss.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
    errors = [relative_error(loss, ref_loss), tree_error(grads, ref_grads)]
    print(
      f"k={num_microbatches}, padded={weights.min() == 0}: max relative error {max(errors):.3g}"
    )
    assert max(errors) <= TOLERANCE, errors


# ----------------------------------------------------------------------------------------------
# A linear model: the mechanics, cheaply
# ----------------------------------------------------------------------------------------------


def linear_batch(size: int, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
    "x": rng.standard_normal((size, 3)).astype(np.float32),
    "y": rng.standard_normal((size,)).astype(np.float32),
  }


def linear_params() -> dict:
  return {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray(0.3)}


def weighted_mse(params, batch):
  """Σ w·ℓ / Σ w, deliberately without a guard: 0/0 = NaN for an all-padding batch."""
  residual = batch["x"] @ params["w"] + params["b"] - batch["y"]
  w = batch.get("weights", jnp.ones_like(residual))
  return jnp.sum(w * residual**2) / jnp.sum(w)


def test_split_is_strided():
  batch = {"a": np.arange(8), "b": np.arange(16).reshape(8, 2)}
  parts = split_microbatches(batch, 4)
  np.testing.assert_array_equal(parts["a"], [[0, 4], [1, 5], [2, 6], [3, 7]])
  np.testing.assert_array_equal(parts["b"][1], [[2, 3], [10, 11]])


def test_weighted_batches_are_not_a_mean_of_microbatch_means():
  batch = linear_batch(8, seed=1)
  batch["weights"] = np.array([1, 0, 3, 0, 1, 1, 0.5, 1], np.float32)
  grad_fn = jax.value_and_grad(weighted_mse)
  ref_loss, ref_grads = grad_fn(linear_params(), batch)
  loss, grads = accumulate_gradients(grad_fn, linear_params(), batch, 2)
  assert max(relative_error(loss, ref_loss), tree_error(grads, ref_grads)) <= TOLERANCE
  # The naive combination is far off, so the check above has teeth.
  parts = split_microbatches(batch, 2)
  naive = [grad_fn(linear_params(), jax.tree.map(lambda x, i=i: x[i], parts)) for i in range(2)]
  assert relative_error(np.mean([n[0] for n in naive]), ref_loss) > 1e-2


def test_without_weights_is_the_plain_mean():
  batch = linear_batch(12)
  ref_loss, ref_grads = jax.value_and_grad(weighted_mse)(linear_params(), batch)
  loss, grads = accumulate_gradients(jax.value_and_grad(weighted_mse), linear_params(), batch, 3)
  assert max(relative_error(loss, ref_loss), tree_error(grads, ref_grads)) <= TOLERANCE


def test_an_all_padding_microbatch_contributes_nothing_even_if_its_loss_is_nan():
  batch = linear_batch(8)
  batch["weights"] = np.array([1, 0, 1, 0, 2, 0, 1, 0], np.float32)  # microbatch 1 of 2 empty
  grad_fn = jax.value_and_grad(weighted_mse)
  part = jax.tree.map(lambda x: x[1], split_microbatches(batch, 2))
  assert np.isnan(grad_fn(linear_params(), part)[0])
  ref_loss, ref_grads = grad_fn(linear_params(), batch)
  loss, grads = accumulate_gradients(grad_fn, linear_params(), batch, 2)
  assert np.isfinite(loss)
  assert max(relative_error(loss, ref_loss), tree_error(grads, ref_grads)) <= TOLERANCE

  # A batch with no weight at all: 0 loss and 0 gradients, not NaN.
  batch["weights"] = np.zeros(8, np.float32)
  loss, grads = accumulate_gradients(grad_fn, linear_params(), batch, 2)
  assert loss == 0 and all(np.all(g == 0) for g in jax.tree.leaves(grads))


def test_custom_normalizer():
  """Per-token weights: the denominator is the number of scored tokens, from the batch."""
  rng = np.random.default_rng(3)
  batch = {
    "x": rng.standard_normal((6, 5)).astype(np.float32),
    "mask": (rng.random((6, 5)) < 0.5).astype(np.float32),
  }

  def loss_fn(scale, b):
    return jnp.sum(b["mask"] * (scale * b["x"]) ** 2) / jnp.sum(b["mask"])

  ref_loss, ref_grad = jax.value_and_grad(loss_fn)(1.5, batch)
  loss, grad = accumulate_gradients(
    jax.value_and_grad(loss_fn), 1.5, batch, 3, normalizer_fn=lambda mb: jnp.sum(mb["mask"])
  )
  assert max(relative_error(loss, ref_loss), relative_error(grad, ref_grad)) <= TOLERANCE


def test_low_precision_grads_are_accumulated_in_float32():
  batch = linear_batch(8, seed=4)

  def bf16_grad_fn(params, b):
    loss, grads = jax.value_and_grad(weighted_mse)(params, b)
    return loss.astype(jnp.bfloat16), jax.tree.map(lambda g: g.astype(jnp.bfloat16), grads)

  loss, grads = accumulate_gradients(bf16_grad_fn, linear_params(), batch, 4)
  assert loss.dtype == jnp.float32
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  # Expected: the bf16 microbatch gradients, upcast, weighted and summed in float32 (equal
  # shares of 1/4 here). A bf16 accumulator would round the sum to 8 bits.
  parts = split_microbatches(batch, 4)
  expected = sum(
    np.asarray(
      bf16_grad_fn(linear_params(), jax.tree.map(lambda x, i=i: x[i], parts))[1]["w"]
    ).astype(np.float32)
    * np.float32(0.25)
    for i in range(4)
  )
  np.testing.assert_allclose(grads["w"], expected, rtol=1e-6)


def test_aux_is_stacked_and_rng_is_folded_per_microbatch():
  def grad_fn(params, b, key):
    loss, grads = jax.value_and_grad(weighted_mse)(params, b)
    return (loss, {"key": jax.random.key_data(key), "n": b["y"].shape[0]}), grads

  rng = jax.random.key(7)
  (_, aux), _ = accumulate_gradients(
    grad_fn, linear_params(), linear_batch(8), 4, has_aux=True, rng=rng
  )
  assert aux["n"].shape == (4,)
  expected = np.stack([jax.random.key_data(jax.random.fold_in(rng, i)) for i in range(4)])
  np.testing.assert_array_equal(aux["key"], expected)
  assert len({tuple(row) for row in np.asarray(aux["key"])}) == 4


def test_single_microbatch_calls_grad_fn_once_on_the_whole_batch():
  batch = linear_batch(6)
  grad_fn = jax.value_and_grad(weighted_mse)
  ref_loss, ref_grads = grad_fn(linear_params(), batch)
  loss, grads = accumulate_gradients(grad_fn, linear_params(), batch, 1)
  assert loss == ref_loss
  jax.tree.map(np.testing.assert_array_equal, grads, ref_grads)


def test_sharding_constraint_is_applied_to_each_microbatch():
  devices = len(jax.devices())
  mesh = jax.make_mesh((devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = NamedSharding(mesh, P("data"))
  seen = []

  def constrain(microbatch):
    seen.append(jax.tree.map(lambda x: x.shape, microbatch))
    return jax.lax.with_sharding_constraint(microbatch, sharding)

  batch = jax.device_put(linear_batch(4 * devices, seed=5), sharding)
  grad_fn = jax.value_and_grad(weighted_mse)
  step = jax.jit(
    lambda p, b: accumulate_gradients(grad_fn, p, b, 4, microbatch_constraint=constrain)
  )
  loss, grads = step(linear_params(), batch)
  ref_loss, ref_grads = grad_fn(linear_params(), jax.device_get(batch))
  assert max(relative_error(loss, ref_loss), tree_error(grads, ref_grads)) <= TOLERANCE
  assert seen and all(s == {"x": (devices, 3), "y": (devices,)} for s in seen)
  # The constraint is in the program, on the [B/k, ...] microbatch inside the scan body.
  hlo = step.lower(linear_params(), batch).as_text()
  constraint = (
    rf'sharding_constraint %\w+ <@mesh, \[\{{"data"\}}, \{{\}}\]> : tensor<{devices}x3xf32>'
  )
  assert re.search(constraint, hlo), hlo


@pytest.mark.parametrize(
  ("batch", "k", "message"),
  [
    ({"x": np.zeros((6, 2))}, 4, "not divisible"),
    ({"x": np.zeros((6, 2))}, 0, ">= 1"),
    ({"x": np.zeros((6, 2))}, 1.5, "must be an integer"),
    ({"x": np.zeros((6, 2)), "y": np.zeros((4,))}, 2, "same leading batch axis"),
    ({"x": np.zeros((6, 2)), "s": np.float32(1.0)}, 2, "same leading batch axis"),
  ],
)
def test_clear_errors(batch, k, message):
  with pytest.raises(ValueError, match=message):
    split_microbatches(batch, k)


def test_non_scalar_normalizer_is_rejected():
  with pytest.raises(ValueError, match="must return a scalar"):
    accumulate_gradients(
      jax.value_and_grad(weighted_mse),
      linear_params(),
      linear_batch(4),
      2,
      normalizer_fn=lambda mb: mb["y"],
    )
