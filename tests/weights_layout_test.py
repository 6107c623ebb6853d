"""`stack_layers` / `unstack_layers`: the unscanned (`layer_{i}`) and scanned (`layers`) layouts."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import (
  MobileBertForPreTraining,
  MobileBertForSequenceClassification,
  MobileBertModel,
  abstract_params,
)
from mobilebert_jax.weights.layout import is_scanned, stack_layers, unstack_layers

RELEASED = MobileBertConfig.from_preset("mobilebert-uncased")
TINY = MobileBertConfig(
  vocab_size=50,
  embedding_size=8,
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=24,
  intra_bottleneck_size=16,
  max_position_embeddings=16,
  num_feedforward_networks=2,
)


def _signature(tree) -> dict:
  """Path -> (shape, dtype) of every leaf, and the logical names of boxed leaves."""
  flat = traverse_util.flatten_dict(tree, is_leaf=lambda _, x: isinstance(x, nn.Partitioned))
  out = {}
  for path, leaf in flat.items():
    names = leaf.names if isinstance(leaf, nn.Partitioned) else None
    value = leaf.value if isinstance(leaf, nn.Partitioned) else leaf
    out[path] = (tuple(value.shape), jnp.dtype(value.dtype), names)
  return out


@pytest.mark.parametrize("model_cls", [MobileBertModel, MobileBertForPreTraining])
@pytest.mark.parametrize("boxed", [False, True])
def test_released_abstract_shapes_round_trip(model_cls, boxed):
  plain = abstract_params(model_cls(RELEASED), boxed=boxed)
  scanned = abstract_params(model_cls(RELEASED.replace(scan_layers=True)), boxed=boxed)
  stacked = stack_layers(plain, RELEASED.num_hidden_layers)
  # Same tree, shapes, dtypes and (boxed) logical axis names as the scanned model's own.
  assert _signature(stacked) == _signature(scanned)
  assert _signature(unstack_layers(scanned)) == _signature(plain)
  assert is_scanned(scanned) and not is_scanned(plain)


def test_real_params_round_trip_and_apply_identically():
  # Every leaf random (every block different), so a mixed-up layer order cannot pass.
  shapes = abstract_params(MobileBertForSequenceClassification(TINY))
  leaves, treedef = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  plain = treedef.unflatten(
    [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
  )
  stacked = stack_layers(plain, TINY.num_hidden_layers)
  layer_1 = plain["mobilebert"]["encoder"]["layer_1"]["attention"]["query"]["kernel"]
  np.testing.assert_array_equal(
    stacked["mobilebert"]["encoder"]["layers"]["attention"]["query"]["kernel"][1], layer_1
  )
  restored = unstack_layers(stacked)
  assert jax.tree.structure(restored) == jax.tree.structure(plain)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(plain), strict=True):
    np.testing.assert_array_equal(a, b)

  ids = jnp.array([[5, 9, 3, 7, 0, 0], [4, 4, 8, 2, 6, 1]])
  mask = (ids != 0).astype(jnp.int32)
  types = jnp.array([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]])
  outputs = []
  for config, params in ((TINY, plain), (TINY.replace(scan_layers=True), stacked)):
    out = MobileBertForSequenceClassification(config).apply(
      {"params": params}, ids, mask, types, output_hidden_states=True
    )
    outputs.append([out.logits, *out.hidden_states])
  # Same parameters, same math; only XLA's rounding differs between the compiled scan body and
  # the unrolled blocks (a few float32 ulps).
  for a, b in zip(*outputs, strict=True):
    assert np.all(np.isfinite(b)) and np.max(np.abs(b)) > 0
    assert np.max(np.abs(a - b)) <= 1e-6 * np.max(np.abs(b))


def test_numpy_leaves_and_several_encoders():
  block = {"dense": {"kernel": np.ones((2, 3)), "bias": np.zeros(3)}}
  tree = {
    "student": {
      "encoder": {f"layer_{i}": jax.tree.map(lambda x, i=i: x + i, block) for i in (0, 1)}
    },
    "teacher": {"encoder": {"layer_0": block}, "pooler": {"w": np.ones(2)}},
  }
  stacked = stack_layers(tree)
  kernel = stacked["student"]["encoder"]["layers"]["dense"]["kernel"]
  assert isinstance(kernel, np.ndarray) and kernel.shape == (2, 2, 3)
  np.testing.assert_array_equal(kernel[1], np.ones((2, 3)) + 1)
  assert stacked["teacher"]["encoder"]["layers"]["dense"]["bias"].shape == (1, 3)
  assert stacked["teacher"]["pooler"]["w"] is tree["teacher"]["pooler"]["w"]
  back = unstack_layers(stacked)
  np.testing.assert_array_equal(back["student"]["encoder"]["layer_1"]["dense"]["bias"], np.ones(3))
  assert set(back["teacher"]["encoder"]) == {"layer_0"}


def test_errors_name_the_problem():
  block = {"kernel": np.ones((2, 3))}
  with pytest.raises(ValueError, match="missing layer_1"):
    stack_layers({"encoder": {"layer_0": block, "layer_2": block}})
  with pytest.raises(ValueError, match="has 2 blocks but num_layers=3"):
    stack_layers({"encoder": {"layer_0": block, "layer_1": block}}, num_layers=3)
  with pytest.raises(ValueError, match=r"different shapes across blocks: \[\(2, 3\), \(3, 3\)\]"):
    stack_layers({"encoder": {"layer_0": block, "layer_1": {"kernel": np.ones((3, 3))}}})
  with pytest.raises(ValueError, match="layer_1 and encoder/layer_0 have different parameters"):
    stack_layers({"encoder": {"layer_0": block, "layer_1": {"other": np.ones((2, 3))}}})
  with pytest.raises(ValueError, match="is it scanned already"):
    stack_layers({"encoder": {"layers": block}})
  with pytest.raises(ValueError, match="disagree on the number of layers"):
    unstack_layers({"encoder": {"layers": {"a": np.ones((2, 3)), "b": np.ones((3,))}}})
  with pytest.raises(ValueError, match="is it unscanned"):
    unstack_layers({"encoder": {"layer_0": block}})
