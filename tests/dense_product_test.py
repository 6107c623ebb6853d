"""`layers.dense_product`: the Dense matmul with a CPU-friendly weight gradient.

Its forward value must be `jax.lax.dot_general`'s exactly and its gradients autodiff's up to
summation order; the whole model's gradients must match the plain-`dot_general` model's; and the
compiled weight gradient must be a row-major product (the reason the function exists).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.model import layers
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForQuestionAnswering

pytestmark = pytest.mark.usefixtures("fast_compiles")


def dense_dims(x_ndim: int, contract: int) -> tuple:
  return ((tuple(range(x_ndim - contract, x_ndim)), tuple(range(contract))), ((), ()))


def loss_with(dot_general, dims):
  # A nonlinear scalar so that dy differs from entry to entry.
  return lambda x, w: jnp.sum(jnp.sin(dot_general(x, w, dims)))


@pytest.mark.parametrize(
  "x_shape, w_shape, contract",
  [
    ((2, 5, 6), (6, 7), 1),  # fan_out > fan_in: x is transposed
    ((2, 5, 9), (9, 3), 1),  # fan_out < fan_in: dy is transposed
    ((2, 5, 9), (9, 3, 4), 1),  # per-head outputs (query/key/value)
    ((2, 5, 3, 4), (3, 4, 9), 2),  # per-head inputs (attention output)
    ((4, 16), (16, 8), 1),
  ],
)
def test_value_and_gradients_match_dot_general(x_shape, w_shape, contract):
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  dims = dense_dims(len(x_shape), contract)
  np.testing.assert_array_equal(layers.dense_product(x, w, dims), jax.lax.dot_general(x, w, dims))
  expected = jax.grad(loss_with(jax.lax.dot_general, dims), (0, 1))(x, w)
  got = jax.jit(jax.grad(loss_with(layers.dense_product, dims), (0, 1)))(x, w)
  for g, e in zip(got, expected, strict=True):
    assert g.shape == e.shape and g.dtype == e.dtype
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)


def test_bfloat16_gradients_keep_dtypes():
  x = jnp.ones((2, 3, 8), jnp.bfloat16)
  w = jnp.full((8, 4), 0.5, jnp.bfloat16)
  dims = dense_dims(3, 1)
  dx, dw = jax.grad(loss_with(layers.dense_product, dims), (0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16


def test_other_products_fall_back_to_dot_general():
  # A batched product (attention-like) and an explicit precision take no custom gradient.
  a = jnp.ones((2, 3, 4))
  b = jnp.ones((2, 4, 5))
  batched = (((2,), (1,)), ((0,), (0,)))
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda a: layers.dense_product(a, b, batched).sum()))(a))
  assert "custom_vjp" not in jaxpr
  w = jnp.ones((4, 5))
  dims = dense_dims(3, 1)
  precise = jax.make_jaxpr(
    jax.grad(lambda a: layers.dense_product(a, w, dims, jax.lax.Precision.HIGHEST).sum())
  )(a)
  assert "custom_vjp" not in str(precise)
  plain = jax.make_jaxpr(jax.grad(lambda a: layers.dense_product(a, w, dims).sum()))(a)
  assert "custom_vjp" in str(plain)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU layout decision")
@pytest.mark.parametrize("fan_in, fan_out", [(32, 64), (64, 32)])
def test_compiled_weight_gradient_is_a_row_major_product(fan_in, fan_out):
  # What autodiff of plain dot_general compiles to on XLA:CPU is a dot contracting the lhs on
  # its major axis (lhs_contracting_dims={0}), which YNNPACK does not take; ours must not, in
  # both branches (x transposed, or dy transposed).
  x = jnp.ones((8, 16, fan_in))
  dy = jnp.ones((8, 16, fan_out))
  dims = dense_dims(3, 1)

  def weight_grad(w, x):
    return jax.grad(lambda w: jnp.sum(jnp.tanh(layers.dense_product(x, w, dims)) * dy))(w)

  hlo = jax.jit(weight_grad).lower(jnp.ones((fan_in, fan_out)), x).compile().as_text()
  dots = re.findall(r"dot\(.*?lhs_contracting_dims=\{(\d+)\}", hlo)
  assert dots and all(d != "0" for d in dots), dots


def test_model_gradients_match_plain_dot_general(monkeypatch):
  config = MobileBertConfig(
    vocab_size=64,
    embedding_size=8,
    hidden_size=16,
    intra_bottleneck_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=12,
    max_position_embeddings=16,
    num_feedforward_networks=2,
    num_labels=2,
    scan_layers=True,
  )
  assert layers.dense_dot_general(config) is layers.dense_product
  model = MobileBertForQuestionAnswering(config)
  ids = jnp.arange(2 * 8, dtype=jnp.int32).reshape(2, 8) % 64
  params = model.init(jax.random.key(0), ids)["params"]

  def loss(p):
    out = model.apply({"params": p}, ids, deterministic=False, rngs={"dropout": jax.random.key(1)})
    return jnp.sum(out.start_logits**2) + jnp.sum(jnp.sin(out.end_logits))

  got_loss, got = jax.jit(jax.value_and_grad(loss))(params)
  monkeypatch.setattr(layers, "dense_dot_general", lambda config: jax.lax.dot_general)
  want_loss, want = jax.jit(jax.value_and_grad(loss))(params)
  assert got_loss == want_loss  # the forward pass is the same computation
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6), got, want)
