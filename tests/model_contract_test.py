"""Contracts of the model pieces the training code builds on.

* `masked_positions`: the MLM head gathers before its transform, and its logits are the rows of
  the full logits at those positions.
* `num_blocks`: the encoder runs blocks 0..k as one code path with the full stack (unrolled or
  scanned): the same hidden states, exactly zero gradients for the later blocks, no work for them.
* `output_attention_logits`: the masked pre-softmax logits the softmax sees, under both masking
  rules, with a finite `log_softmax` (what attention transfer takes).
* the `Dense` quantization hook: one function reaches every dense layer, and the default is
  `jax.lax.dot_general` itself, bit for bit.

Parameters are random (every bias and norm too), with the query/key kernels scaled up so that
attention is far from uniform, and the batch is padded, so a wrong row, block or mask shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from model_test import TINY, batch, random_params  # the house tiny config and its helpers

from mobilebert_jax.model import layers
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.layers import Dense
from mobilebert_jax.model.models import MODEL_CLASSES, MobileBertForPreTraining, abstract_params
from mobilebert_jax.weights import layout

DEPTH = 4  # blocks of the block-range tests: several k, each a strict prefix


def relative_error(ours: Any, ref: Any) -> float:
  """max|ours - ref| / max|ref| (the project's parity measure)."""
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def sharpen(params: Any, factor: float = 8.0) -> Any:
  """Scales every query and key kernel by `factor` (logits by factor²): peaked attention.

  With the random parameters of `random_params`, 8 takes the logits' spread from ~0.05 to ~3:
  the largest probability of a map is then above 0.9 instead of near-uniform (~1/12).
  """
  flat = traverse_util.flatten_dict(params)
  for path in flat:
    if path[-1] == "kernel" and len(path) >= 2 and path[-2] in ("query", "key"):
      flat[path] = flat[path] * factor
  return traverse_util.unflatten_dict(flat)


def model_params(model_name: str, config, seed: int) -> Any:
  """Sharpened random parameters of a model class in the layout `config.scan_layers` asks for."""
  params = sharpen(
    random_params(MODEL_CLASSES[model_name](config.replace(scan_layers=False)), seed)
  )
  if config.scan_layers:
    params = layout.stack_layers(params, num_layers=config.num_hidden_layers)
  return params


def iter_eqns(jaxpr: Any) -> Iterator[Any]:
  """Every equation of a jaxpr, including those of nested jaxprs (jit, scan, remat, custom_jvp)."""

  def nested(value: Any) -> Iterator[Any]:
    if hasattr(value, "eqns"):
      yield value
    elif hasattr(getattr(value, "jaxpr", None), "eqns"):
      yield value.jaxpr
    elif isinstance(value, tuple | list):
      for item in value:
        yield from nested(item)

  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for sub in nested(value):
        yield from iter_eqns(sub)


def output_shapes(fn, *args) -> set[tuple[int, ...]]:
  """Shapes of every intermediate value `fn(*args)` computes."""
  closed = jax.make_jaxpr(fn)(*args)
  return {tuple(v.aval.shape) for eqn in iter_eqns(closed.jaxpr) for v in eqn.outvars}


def kernel_owners(params: Any) -> set[tuple[str, ...]]:
  """Paths of the modules that own a `kernel`: exactly the `Dense` layers of our models."""
  return {path[:-1] for path in traverse_util.flatten_dict(params) if path[-1] == "kernel"}


class DenseRecorder:
  """Replaces `layers.dense_dot_general` and records which `Dense` each matmul came from.

  A method interceptor keeps the stack of `Dense` calls in progress, so every call of the hook's
  function is attributed to the module path of the layer that made it (unrolled, scanned and
  rematerialised alike).
  """

  def __init__(self, scale: float = 1.0):
    self.scale = scale
    self.active: list[tuple[str, ...]] = []
    self.reset()

  def reset(self):
    """Forgets the calls so far (e.g. those of building the parameters)."""
    self.dense_calls: list[tuple[str, ...]] = []
    self.matmuls: list[tuple[tuple[str, ...] | None, tuple[int, ...]]] = []

  def hook(self, config):
    del config

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
      self.matmuls.append((self.active[-1] if self.active else None, tuple(lhs.shape)))
      y = jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
      return y * jnp.asarray(self.scale, y.dtype) if self.scale != 1.0 else y

    return dot_general

  def interceptor(self, next_fun, args, kwargs, context):
    if not (isinstance(context.module, Dense) and context.method_name == "__call__"):
      return next_fun(*args, **kwargs)
    self.active.append(tuple(context.module.path))
    self.dense_calls.append(self.active[-1])
    try:
      return next_fun(*args, **kwargs)
    finally:
      self.active.pop()


@pytest.fixture
def dense_recorder(monkeypatch):
  recorder = DenseRecorder()
  monkeypatch.setattr(layers, "dense_dot_general", recorder.hook)
  with nn.intercept_methods(recorder.interceptor):
    yield recorder


# ----------------------------------------------------------------------------------------------
# Masked-LM logits at masked positions only
# ----------------------------------------------------------------------------------------------

# [3, 5] positions: duplicates, the first and last positions, and padded ones (examples 1, 2 are
# padded from position 6 on), as TF1 pads `masked_lm_positions` with 0.
POSITIONS = np.array([[0, 3, 3, 11, 7], [1, 2, 9, 0, 0], [5, 10, 4, 6, 0]], np.int32)


def mlm_logits(out: Any) -> jax.Array:
  return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("model_name", ["MobileBertForPreTraining", "MobileBertForMaskedLM"])
def test_masked_positions_give_the_rows_of_the_full_logits(model_name: str, scan: bool):
  config = TINY.replace(scan_layers=scan)
  params = model_params(model_name, config, seed=11)
  ids, mask, types = batch(config, batch_size=3, length=12, seed=3)
  model = MODEL_CLASSES[model_name](config)

  def forward(p, positions):
    return model.apply(
      {"params": p}, ids, attention_mask=mask, token_type_ids=types, masked_positions=positions
    )

  forward = jax.jit(forward)
  full = forward(params, None)
  gathered = forward(params, jnp.asarray(POSITIONS))
  full_logits, logits = np.asarray(mlm_logits(full)), np.asarray(mlm_logits(gathered))
  assert full_logits.shape == (3, 12, config.vocab_size)
  assert logits.shape == (3, 5, config.vocab_size) and logits.dtype == np.float32
  expected = np.take_along_axis(full_logits, POSITIONS[..., None], axis=1)
  assert relative_error(logits, expected) <= 1e-6
  if model_name == "MobileBertForPreTraining":
    np.testing.assert_array_equal(
      np.asarray(gathered.seq_relationship_logits), np.asarray(full.seq_relationship_logits)
    )


def test_masked_positions_are_gathered_before_the_transform(dense_recorder):
  """The [B, T, V] logits are never formed, and the MLM transform sees [B, P, H] rows."""
  config = TINY
  model = MobileBertForPreTraining(config)
  params = model_params("MobileBertForPreTraining", config, seed=12)
  ids, mask, types = batch(config, batch_size=3, length=12, seed=3)

  def forward(positions):
    out = model.apply({"params": params}, ids, mask, types, masked_positions=positions)
    return out.prediction_logits

  full_shape = (3, 12, config.vocab_size)
  assert full_shape in output_shapes(forward, None)  # the check can see the full logits
  dense_recorder.reset()
  shapes = output_shapes(forward, jnp.asarray(POSITIONS))
  assert full_shape not in shapes and (3, 5, config.vocab_size) in shapes
  transform = [
    s for path, s in dense_recorder.matmuls if path[-2:] == ("predictions", "transform_dense")
  ]
  assert transform == [(3, 5, config.hidden_size)]


@pytest.mark.parametrize(
  ("positions", "message"),
  [
    (np.zeros((3, 2), np.float32), "must be integers"),
    (np.zeros((6,), np.int32), r"must be \[batch, num_predictions\]"),
    (np.zeros((2, 2), np.int32), "batch size 2 but the input has 3"),
    (np.array([[0, 12]] * 3, np.int32), r"masked position 12 is outside the sequence \[0, 12\)"),
    (np.array([[0, -1]] * 3, np.int32), r"masked position -1 is outside"),
  ],
  ids=["float", "rank1", "batch", "past-end", "negative"],
)
def test_bad_masked_positions_raise_clear_errors(positions: np.ndarray, message: str):
  model = MODEL_CLASSES["MobileBertForMaskedLM"](TINY)
  params = model_params("MobileBertForMaskedLM", TINY, seed=13)
  ids, mask, types = batch(TINY, batch_size=3, length=12)
  with pytest.raises(ValueError, match=message):
    model.apply({"params": params}, ids, mask, types, masked_positions=jnp.asarray(positions))


def test_out_of_range_masked_position_under_jit_gives_nan_not_a_clamp():
  model = MODEL_CLASSES["MobileBertForMaskedLM"](TINY)
  params = model_params("MobileBertForMaskedLM", TINY, seed=13)
  ids, mask, types = batch(TINY, batch_size=3, length=12)
  positions = jnp.asarray([[0, 12], [1, -1], [2, 3]], jnp.int32)
  logits = np.asarray(
    jax.jit(lambda p, pos: model.apply({"params": p}, ids, mask, types, masked_positions=pos))(
      params, positions
    ).logits
  )
  assert np.all(np.isnan(logits[0, 1])) and np.all(np.isnan(logits[1, 1]))
  assert np.all(np.isfinite(logits[:, 0])) and np.all(np.isfinite(logits[2]))


# ----------------------------------------------------------------------------------------------
# Blocks 0..k only
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deep_model():
  """A 4-block base model's sharpened random parameters (unscanned) and a padded batch."""
  config = TINY.replace(num_hidden_layers=DEPTH)
  params = sharpen(random_params(MobileBertModel(config), 21))
  return config, params, batch(config, batch_size=3, length=12, seed=4)


def layout_for(config, params: Any, scan: bool) -> tuple[Any, Any]:
  config = config.replace(scan_layers=scan)
  return config, (layout.stack_layers(params, num_layers=DEPTH) if scan else params)


def block_grads(grads: Any, scan: bool) -> list[Any]:
  """The gradient tree of each block, in order, from either layout."""
  encoder = grads["encoder"]
  if scan:
    return [jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(DEPTH)]
  return [encoder[f"layer_{i}"] for i in range(DEPTH)]


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_block_range_reproduces_the_full_stack(deep_model, scan: bool):
  config, params, (ids, mask, types) = deep_model
  config, params = layout_for(config, params, scan)
  model = MobileBertModel(config)

  def forward(p, num_blocks):
    return model.apply(
      {"params": p},
      ids,
      mask,
      types,
      output_hidden_states=True,
      output_attentions=True,
      output_attention_logits=True,
      num_blocks=num_blocks,
    )

  forward = jax.jit(forward, static_argnums=1)
  full = forward(params, None)
  for num_blocks in range(1, DEPTH):
    out = forward(params, num_blocks)
    assert len(out.hidden_states) == num_blocks + 1
    assert len(out.attentions) == len(out.attention_logits) == num_blocks
    assert relative_error(out.last_hidden_state, full.hidden_states[num_blocks]) <= 1e-6
    for name in ("hidden_states", "attentions", "attention_logits"):
      for ours, ref in zip(getattr(out, name), getattr(full, name), strict=False):
        assert relative_error(ours, ref) <= 1e-6, name
  # The full depth spelled out is the default call.
  np.testing.assert_array_equal(
    np.asarray(forward(params, DEPTH).last_hidden_state), np.asarray(full.last_hidden_state)
  )


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_block_range_gradients_are_zero_for_later_blocks(deep_model, scan: bool):
  """Equal to the full model's gradients of the same function of hidden_states[num_blocks]."""
  num_blocks = 2
  config, params, (ids, mask, types) = deep_model
  config, params = layout_for(config, params, scan)
  model = MobileBertModel(config)

  def loss(p, truncated: bool):
    out = model.apply(
      {"params": p},
      ids,
      mask,
      types,
      output_hidden_states=not truncated,
      output_attention_logits=True,
      num_blocks=num_blocks if truncated else None,
    )
    hidden = out.last_hidden_state if truncated else out.hidden_states[num_blocks]
    logits = out.attention_logits[num_blocks - 1]
    return jnp.sum(jnp.sin(hidden)) + jnp.sum(jax.nn.log_softmax(logits) * 1e-3)

  grad = jax.jit(jax.grad(loss), static_argnums=1)
  truncated, reference = grad(params, True), grad(params, False)
  for i, (ours, ref) in enumerate(
    zip(block_grads(truncated, scan), block_grads(reference, scan), strict=True)
  ):
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
      if i >= num_blocks:
        assert not np.any(np.asarray(a)), f"block {i} has a gradient"
      else:
        assert np.any(np.asarray(a)) and relative_error(a, b) <= 1e-5, f"block {i}"
  for a, b in zip(
    jax.tree.leaves(truncated["embeddings"]), jax.tree.leaves(reference["embeddings"]), strict=True
  ):
    assert relative_error(a, b) <= 1e-5


def test_block_range_does_no_work_for_later_blocks(deep_model):
  """Unrolled: the matmul count grows by one block's per block; scanned: the scan is k+1 long."""
  config, params, (ids, mask, types) = deep_model

  def matmuls(num_blocks: int) -> int:
    closed = jax.make_jaxpr(
      lambda p: MobileBertModel(config).apply(
        {"params": p}, ids, mask, types, num_blocks=num_blocks
      )
    )(params)
    return sum(eqn.primitive.name == "dot_general" for eqn in iter_eqns(closed.jaxpr))

  counts = [matmuls(n) for n in range(1, DEPTH + 1)]
  per_block = counts[1] - counts[0]
  assert per_block > 0 and counts == [counts[0] + i * per_block for i in range(DEPTH)]

  scan_config, stacked = layout_for(config, params, True)
  for num_blocks in (1, 2, DEPTH):
    closed = jax.make_jaxpr(
      lambda p, n=num_blocks: MobileBertModel(scan_config).apply(
        {"params": p}, ids, mask, types, num_blocks=n
      )
    )(stacked)
    lengths = [
      eqn.params["length"] for eqn in iter_eqns(closed.jaxpr) if eqn.primitive.name == "scan"
    ]
    assert lengths == [num_blocks]


@pytest.mark.parametrize(
  ("num_blocks", "error", "message"),
  [
    (0, ValueError, r"num_blocks=0 is outside \[1, num_hidden_layers=4\]"),
    (5, ValueError, r"num_blocks=5 is outside"),
    (1.0, TypeError, "static Python int"),
    (True, TypeError, "static Python int"),
    (jnp.asarray(2), TypeError, "static Python int"),
  ],
  ids=["zero", "too-many", "float", "bool", "array"],
)
def test_bad_num_blocks_raise_clear_errors(deep_model, num_blocks, error, message):
  config, params, (ids, mask, types) = deep_model
  with pytest.raises(error, match=message):
    MobileBertModel(config).apply({"params": params}, ids, mask, types, num_blocks=num_blocks)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
def test_initialisation_needs_the_full_stack(scan: bool):
  config = TINY.replace(num_hidden_layers=DEPTH, scan_layers=scan)
  model = MobileBertModel(config)
  ids = jnp.zeros((1, 4), jnp.int32)
  with pytest.raises(ValueError, match="initialise the full model"):
    jax.eval_shape(lambda: model.init(jax.random.key(0), ids, num_blocks=2))
  # The full-depth parameters, as `init` makes them, then apply at any depth.
  params = jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), nn.meta.unbox(abstract_params(model))
  )
  out = jax.eval_shape(lambda p: model.apply({"params": p}, ids, num_blocks=2), params)
  assert out.last_hidden_state.shape == (1, 4, config.hidden_size)


def test_pretraining_model_passes_num_blocks_through(deep_model):
  config, base_params, (ids, mask, types) = deep_model
  params = sharpen(random_params(MobileBertForPreTraining(config), 22))
  params["mobilebert"] = base_params
  model = MobileBertForPreTraining(config)
  out = model.apply({"params": params}, ids, mask, types, output_hidden_states=True, num_blocks=2)
  base = MobileBertModel(config).apply(
    {"params": base_params}, ids, mask, types, output_hidden_states=True, num_blocks=2
  )
  assert len(out.hidden_states) == 3
  for a, b in zip(out.hidden_states, base.hidden_states, strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The heads read block 1's output (documented; not meaningful for layer-wise transfer).
  assert out.prediction_logits.shape == (3, 12, config.vocab_size)


# ----------------------------------------------------------------------------------------------
# Attention logits
# ----------------------------------------------------------------------------------------------


def numpy_layer0_logits(p: dict, x: np.ndarray, mask: np.ndarray, config, fill) -> np.ndarray:
  """Masked scaled scores of a released-style block (shared Q/K bottleneck) in float64 NumPy."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  kq = p["kq_shared_bottleneck"]
  shared = (x @ kq["dense"]["kernel"] + kq["dense"]["bias"]) * kq["norm"]["scale"]
  shared = shared + kq["norm"]["bias"]
  att = p["attention"]
  q = np.einsum("bti,ihd->bthd", shared, att["query"]["kernel"]) + att["query"]["bias"]
  k = np.einsum("bti,ihd->bthd", shared, att["key"]["kernel"]) + att["key"]["bias"]
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(config.attention_head_size)
  return np.where(mask[:, None, None, :] != 0, scores, fill)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scan"])
@pytest.mark.parametrize("fill", [None, -6.0], ids=["zero-probability", "tf1-minus-6"])
def test_attention_logits_are_what_the_softmax_sees(fill, scan: bool):
  config = TINY.replace(masked_attention_logit=fill, scan_layers=scan)
  params = model_params("MobileBertModel", config, seed=31)
  ids, mask, types = batch(config, batch_size=3, length=12, seed=5)
  out = jax.jit(
    lambda p: MobileBertModel(config).apply(
      {"params": p},
      ids,
      mask,
      types,
      output_hidden_states=True,
      output_attentions=True,
      output_attention_logits=True,
    )
  )(params)
  assert len(out.attention_logits) == config.num_hidden_layers
  keep = np.broadcast_to(np.asarray(mask)[:, None, None, :] != 0, (3, 2, 12, 12))
  masked_value = np.finfo(np.float32).min if fill is None else np.float32(fill)
  for logits, probs in zip(out.attention_logits, out.attentions, strict=True):
    logits, probs = np.asarray(logits), np.asarray(probs)
    assert logits.dtype == np.float32 and logits.shape == (3, 2, 12, 12)
    assert np.max(np.abs(np.asarray(jax.nn.softmax(logits)) - probs)) <= 1e-6
    assert np.max(probs) > 0.9  # the attention is far from uniform
    assert np.all(logits[~keep] == masked_value)
    if fill is None:
      assert np.all(probs[~keep] == 0.0)
    else:
      assert np.all(probs[~keep] > 0.0)
    log_probs = np.asarray(jax.nn.log_softmax(logits))
    assert np.all(np.isfinite(log_probs))
    with np.errstate(divide="ignore"):
      assert np.max(np.abs(log_probs[keep] - np.log(probs[keep]))) <= 1e-4

  block0 = params["encoder"]["layers" if scan else "layer_0"]
  if scan:
    block0 = jax.tree.map(lambda x: x[0], block0)
  expected = numpy_layer0_logits(
    block0, np.asarray(out.hidden_states[0], np.float64), np.asarray(mask), config, masked_value
  )
  got = np.asarray(out.attention_logits[0])
  assert relative_error(got[keep], expected[keep]) <= 1e-5


def test_attention_transfer_on_the_logits_has_finite_loss_and_gradient():
  """TF1's attention transfer, −Σ softmax(teacher)·log_softmax(student), with zero-probability
  masking: finite from the logits, NaN from log(probabilities) (0·−inf at padded keys)."""
  config = TINY
  model = MobileBertModel(config)
  student = model_params("MobileBertModel", config, seed=41)
  teacher = model_params("MobileBertModel", config, seed=42)
  ids, mask, types = batch(config, batch_size=3, length=12, seed=6)

  def apply(p):
    return model.apply(
      {"params": p}, ids, mask, types, output_attentions=True, output_attention_logits=True
    )

  target = jax.nn.softmax(apply(teacher).attention_logits[-1])

  def transfer(p, from_logits: bool):
    out = apply(p)
    if from_logits:
      log_student = jax.nn.log_softmax(out.attention_logits[-1])
    else:
      log_student = jnp.log(out.attentions[-1])
    return jnp.mean(-jnp.sum(target * log_student, axis=-1))

  loss, grads = jax.value_and_grad(transfer)(student, True)
  assert np.isfinite(float(loss)) and float(loss) > 0
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g) for g in leaves)
  assert np.isnan(float(transfer(student, False)))


def test_attention_logits_stay_float32_in_bfloat16():
  config = TINY.replace(dtype="bfloat16")
  params = model_params("MobileBertModel", config, seed=32)
  ids, mask, types = batch(config)
  out = MobileBertModel(config).apply(
    {"params": params}, ids, mask, types, output_attentions=True, output_attention_logits=True
  )
  logits = out.attention_logits[0]
  assert logits.dtype == jnp.float32
  assert np.max(np.abs(np.asarray(jax.nn.softmax(logits) - out.attentions[0]))) <= 1e-6


def test_outputs_without_the_new_arguments_are_unchanged():
  out = MobileBertModel(TINY).apply(
    {"params": model_params("MobileBertModel", TINY, seed=33)},
    *batch(TINY),
    output_hidden_states=True,
    output_attentions=True,
  )
  assert out.attention_logits is None


# ----------------------------------------------------------------------------------------------
# The Dense quantization hook
# ----------------------------------------------------------------------------------------------


def test_default_hook_computes_lax_dot_general_bit_for_bit():
  """The default is `dense_product`, whose forward is one `jax.lax.dot_general` call (the function
  Qwix intercepts, with its gradient laid out for the CPU matmul library), and Dense's formula is
  unchanged."""
  assert layers.dense_dot_general(TINY) is layers.dense_product
  rng = np.random.default_rng(0)
  for dtype in ("float32", "bfloat16"):
    config = TINY.replace(dtype=dtype)
    compute = jnp.dtype(dtype)
    for features, contract_dims, x_shape in (
      (24, 1, (2, 5, 16)),
      ((2, 8), 1, (2, 5, 16)),
      (16, 2, (2, 5, 2, 8)),
    ):
      layer = Dense(
        features,
        tuple(f"axis{i}" for i in range(contract_dims + len(np.atleast_1d(features)))),
        config,
        contract_dims=contract_dims,
      )
      x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
      params = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32),
        nn.meta.unbox(jax.eval_shape(layer.init, jax.random.key(0), x))["params"],
      )
      got = layer.apply({"params": params}, x)
      kernel = params["kernel"].astype(compute)
      before = jax.lax.dot_general(
        x.astype(compute),
        kernel,
        ((tuple(range(x.ndim - contract_dims, x.ndim)), tuple(range(contract_dims))), ((), ())),
      ) + params["bias"].astype(compute)
      assert got.dtype == compute
      np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(before, np.float32))


@pytest.mark.parametrize(
  ("model_name", "scan"),
  [
    ("MobileBertForPreTraining", False),
    ("MobileBertForPreTraining", True),
    ("MobileBertForQuestionAnswering", False),
    ("MobileBertForSequenceClassification", False),
  ],
)
def test_hook_reaches_every_dense(dense_recorder, model_name: str, scan: bool):
  """Each Dense call makes exactly one call of the hook's function, and every Dense is seen."""
  config = TINY.replace(scan_layers=scan, remat_policy="full" if scan else "none")
  params = model_params(model_name, config, seed=51)
  ids, mask, types = batch(config)
  dense_recorder.reset()
  MODEL_CLASSES[model_name](config).apply({"params": params}, ids, mask, types)
  owners = kernel_owners(params)
  assert set(dense_recorder.dense_calls) == owners
  assert sorted(path for path, _ in dense_recorder.matmuls) == sorted(dense_recorder.dense_calls)
  assert len(owners) >= 10  # embeddings, bottlenecks, Q/K/V/O, FFNs and the heads


def test_hook_result_is_what_dense_returns(monkeypatch):
  """A hook that doubles its product doubles the layer's output before the bias: it is used."""
  recorder = DenseRecorder(scale=2.0)
  monkeypatch.setattr(layers, "dense_dot_general", recorder.hook)
  layer = Dense(8, ("in", "out"), TINY)
  x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)), jnp.float32)
  params = {"kernel": jnp.ones((4, 8)) * 0.5, "bias": jnp.arange(8.0)}
  got = np.asarray(layer.apply({"params": params}, x))
  expected = 2.0 * np.asarray(x) @ np.asarray(params["kernel"]) + np.arange(8.0)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert len(recorder.matmuls) == 1
  # A layer given its own dot_general does not consult the hook.
  own = Dense(8, ("in", "out"), TINY, dot_general=jax.lax.dot_general)
  undoubled = np.asarray(x) @ np.asarray(params["kernel"]) + np.arange(8.0)
  np.testing.assert_allclose(np.asarray(own.apply({"params": params}, x)), undoubled, rtol=1e-6)
  assert len(recorder.matmuls) == 1


def test_default_path_can_be_intercepted_like_qwix(monkeypatch):
  """Qwix intercepts `jax.lax.dot_general` inside each module; with the default hook, every
  Dense of the model calls it (here replaced by a recorder, as Qwix patches its code)."""
  recorder = DenseRecorder()
  original = jax.lax.dot_general

  def intercepted(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    recorder.matmuls.append((recorder.active[-1] if recorder.active else None, tuple(lhs.shape)))
    return original(lhs, rhs, dimension_numbers, precision, preferred_element_type)

  monkeypatch.setattr(jax.lax, "dot_general", intercepted)
  config = TINY.replace(scan_layers=True)
  params = model_params("MobileBertForPreTraining", config, seed=52)
  with nn.intercept_methods(recorder.interceptor):
    MobileBertForPreTraining(config).apply({"params": params}, *batch(config))
  assert {path for path, _ in recorder.matmuls if path is not None} == kernel_owners(params)
