"""Properties of our model that need no reference implementation.

Parameter counts and golden parameter shapes, the equivalence of the implementation switches
(`scan_layers`, `remat_policy`), dropout placement, input validation, the padding-invariant
trigram (docs/pitfalls.md P3) and the TF1 "-6" attention mask (docs/pitfalls.md P5).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import (
  MODEL_CLASSES,
  MobileBertForMultipleChoice,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  abstract_params,
)
from mobilebert_jax.train import losses
from mobilebert_jax.weights import layout

TESTDATA = pathlib.Path(__file__).parent / "testdata"
# Set to 1 to rewrite the golden parameter-shape files after an intended change.
REGENERATE_ENV = "MOBILEBERT_JAX_REGENERATE_GOLDEN"

# The house tiny config (docs/testing.md §tiny-config), with every optional part switched on.
TINY = MobileBertConfig(
  vocab_size=128,
  embedding_size=16,
  hidden_size=32,
  intra_bottleneck_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=16,
  num_feedforward_networks=2,
  classifier_activation=True,
)


def count(tree: Any) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def random_params(module: nn.Module, seed: int = 0) -> Any:
  """Random parameters of the right shapes, made in NumPy from the abstract shapes.

  Cheaper than `init` (which runs the whole model once, seconds for 24 blocks on this CPU), and
  `init`'s biases (0) and norm scales (1) would hide bugs anyway. Norm scales are 1 + N(0, 0.2²),
  biases and offsets N(0, 0.2²), embeddings N(0, 0.5²), kernels N(0, 0.25 / fan_in), so
  activations stay O(1).
  """
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(abstract_params(module))
  params = {}
  for path, shape in flat.items():
    name = path[-1]
    if name == "scale":
      value = 1.0 + 0.2 * rng.standard_normal(shape.shape)
    elif name == "bias":
      value = 0.2 * rng.standard_normal(shape.shape)
    elif name == "kernel":
      # Attention-output kernels are [heads, head_size, out]; all others [in, ...].
      fan_in = (
        math.prod(shape.shape[:-1])
        if path[-2:] == ("output", "kernel") and len(shape.shape) == 3
        else shape.shape[0]
      )
      value = 0.5 * fan_in**-0.5 * rng.standard_normal(shape.shape)
    else:  # embedding tables and the MLM extra output weights
      value = 0.5 * rng.standard_normal(shape.shape)
    params[path] = jnp.asarray(value, jnp.float32)
  return traverse_util.unflatten_dict(params)


def batch(config: MobileBertConfig, batch_size: int = 2, length: int = 10, seed: int = 0):
  """(ids, mask, types): every example but the first is right-padded after 6 tokens; 2 segments."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, config.vocab_size, (batch_size, length))
  mask = np.ones((batch_size, length), np.int32)
  mask[1:, 6:] = 0
  ids = np.where(mask == 1, ids, 0)
  types = np.zeros((batch_size, length), np.int32)
  types[:, length // 2 :] = 1
  types = types * mask
  return jnp.asarray(ids, jnp.int32), jnp.asarray(mask), jnp.asarray(types)


# ----------------------------------------------------------------------------------------------
# Parameter counts and golden shapes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("preset", "model", "expected"),
  [
    ("mobilebert-uncased", "MobileBertModel", 24_581_888),
    ("mobilebert-tiny", "MobileBertModel", 15_485_696),
    ("ibbert-large", "MobileBertModel-no-pooler", 294_205_184),
    ("mobilebert-uncased", "MobileBertForPreTraining", 36_597_564),
    # The TF2 pretrainer (encoder + MLM, no NSP, no pooler) = our masked-LM class.
    ("mobilebert-uncased", "MobileBertForMaskedLM", 36_596_538),
  ],
)
def test_parameter_counts_match_spec(preset: str, model: str, expected: int):
  """docs/model.md §parameter-counts, counted from abstract shapes (nothing is allocated)."""
  config = MobileBertConfig.from_preset(preset)
  if model == "MobileBertModel-no-pooler":
    module = MobileBertModel(config, add_pooling_layer=False)
  else:
    module = MODEL_CLASSES[model](config)
  shapes = abstract_params(module)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(shapes))
  assert count(shapes) == expected


def test_teacher_pooler_adds_its_dense():
  config = MobileBertConfig.from_preset("ibbert-large")
  assert config.classifier_activation
  assert count(abstract_params(MobileBertModel(config))) == 294_205_184 + 512 * 512 + 512


def shape_table(module: nn.Module) -> dict[str, dict[str, Any]]:
  """{param path: {shape, dtype, axes}} of a module, from abstract boxed parameters."""
  flat = traverse_util.flatten_dict(abstract_params(module, boxed=True), sep="/")
  table = {}
  for path, boxed in sorted(flat.items()):
    value = boxed.value if isinstance(boxed, nn.LogicallyPartitioned) else boxed
    axes = list(boxed.names) if isinstance(boxed, nn.LogicallyPartitioned) else None
    table[path] = {"shape": list(value.shape), "dtype": str(value.dtype), "axes": axes}
  return table


def shape_diff(golden: dict[str, dict], actual: dict[str, dict]) -> list[str]:
  """Human-readable differences between two shape tables (empty when equal)."""
  lines = []
  for path in sorted(set(golden) - set(actual)):
    lines.append(f"  missing     {path}  {golden[path]}")
  for path in sorted(set(actual) - set(golden)):
    lines.append(f"  unexpected  {path}  {actual[path]}")
  for path in sorted(set(golden) & set(actual)):
    if golden[path] != actual[path]:
      lines.append(f"  changed     {path}  golden {golden[path]}  now {actual[path]}")
  return lines


GOLDEN_CASES = {
  "param_shapes_tiny.json": TINY,
  "param_shapes_mobilebert_uncased.json": MobileBertConfig.from_preset("mobilebert-uncased"),
}


@pytest.mark.parametrize("filename", sorted(GOLDEN_CASES))
def test_parameter_shapes_match_golden_file(filename: str):
  """Shapes, dtypes and logical axis names of `MobileBertForPreTraining` (encoder + both heads).

  The files are the contract with checkpoints and sharding rules; regenerate them with
  MOBILEBERT_JAX_REGENERATE_GOLDEN=1 only for an intended change, and review the diff.
  """
  config = GOLDEN_CASES[filename]
  actual = {
    "model_class": "MobileBertForPreTraining",
    "config": config.to_dict(include_implementation=False),
    "num_params": count(abstract_params(MobileBertForPreTraining(config))),
    "params": shape_table(MobileBertForPreTraining(config)),
  }
  path = TESTDATA / filename
  if os.environ.get(REGENERATE_ENV) == "1":
    path.write_text(json.dumps(actual, indent=1, sort_keys=True) + "\n")
    pytest.skip(f"regenerated {path}")
  golden = json.loads(path.read_text())
  assert golden["config"] == actual["config"], "the test config changed: regenerate the file"
  diff = shape_diff(golden["params"], actual["params"])
  assert not diff, f"parameters differ from {path.name}:\n" + "\n".join(diff)
  assert golden["num_params"] == actual["num_params"]


def test_golden_shape_diff_is_readable():
  golden = {"a/kernel": {"shape": [2, 3], "dtype": "float32", "axes": ["x", "y"]}}
  actual = {
    "a/kernel": {"shape": [3, 2], "dtype": "float32", "axes": ["x", "y"]},
    "b": {"shape": [1], "dtype": "float32", "axes": ["z"]},
  }
  diff = shape_diff(golden, actual)
  assert diff[0].startswith("  unexpected  b")
  assert "changed     a/kernel" in diff[1] and "[2, 3]" in diff[1] and "[3, 2]" in diff[1]


# ----------------------------------------------------------------------------------------------
# Implementation switches: scan and remat change nothing
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qa():
  """A tiny QA model's (randomised) unscanned parameters and a batch."""
  config = TINY.replace(num_labels=2)
  return config, random_params(MobileBertForQuestionAnswering(config), 0), batch(config)


def qa_loss(config: MobileBertConfig, params: Any, ids, mask, types) -> jnp.ndarray:
  out = MobileBertForQuestionAnswering(config).apply(
    {"params": params}, ids, attention_mask=mask, token_type_ids=types
  )
  return losses.question_answering_loss(
    out.start_logits, out.end_logits, jnp.array([1, 2]), jnp.array([3, 5])
  )


@pytest.mark.parametrize("model_class", ["MobileBertForPreTraining", "MobileBertForMultipleChoice"])
def test_scan_layers_gives_identical_outputs(model_class: str):
  """The block stack is the same code either way; the heads do not see the difference."""
  config = TINY.replace(num_hidden_layers=3)
  module = MODEL_CLASSES[model_class](config)
  params = random_params(module, 1)
  scanned_config = config.replace(scan_layers=True)
  scanned_params = layout.stack_layers(params, num_layers=3)
  # The stacked tree is exactly what the scanned model initialises.
  expected_shapes = abstract_params(MODEL_CLASSES[model_class](scanned_config))
  assert jax.tree.structure(expected_shapes) == jax.tree.structure(scanned_params)
  assert jax.tree.map(lambda s: s.shape, expected_shapes) == jax.tree.map(jnp.shape, scanned_params)

  ids, mask, types = batch(config)
  if model_class == "MobileBertForMultipleChoice":
    ids, mask, types = (x.reshape(1, 2, -1) for x in (ids, mask, types))

  def forward(cfg: MobileBertConfig):
    return jax.jit(
      lambda p, i, m, t: MODEL_CLASSES[model_class](cfg).apply(
        {"params": p},
        i,
        attention_mask=m,
        token_type_ids=t,
        output_hidden_states=True,
        output_attentions=True,
      )
    )

  unrolled = forward(config)(params, ids, mask, types)
  scanned = forward(scanned_config)(scanned_params, ids, mask, types)
  assert jax.tree.structure(unrolled) == jax.tree.structure(scanned)
  assert len(scanned.hidden_states) == 4 and len(scanned.attentions) == 3
  for a, b in zip(jax.tree.leaves(unrolled), jax.tree.leaves(scanned), strict=True):
    # Compiled, both run the same operations in the same order: equal to the last bit. (Run
    # eagerly, the unrolled model is not fused and differs from either by ~1e-6 relative.)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def remat_reference(tiny_qa):
  """Loss and gradients without remat, per `scan_layers` (each compile costs seconds)."""
  config, params, inputs = tiny_qa
  cache = {}

  def get(scan_layers: bool):
    if scan_layers not in cache:
      p = layout.stack_layers(params) if scan_layers else params
      cfg = config.replace(scan_layers=scan_layers)
      cache[scan_layers] = (cfg, p, loss_and_grads(cfg, p, inputs))
    return cache[scan_layers]

  return get


def loss_and_grads(config: MobileBertConfig, params: Any, inputs) -> tuple[jnp.ndarray, Any]:
  return jax.jit(jax.value_and_grad(lambda p, *x: qa_loss(config, p, *x)))(params, *inputs)


@pytest.mark.parametrize(
  ("policy", "scan_layers"),
  [
    ("full", False),
    ("dots", False),
    ("dots_with_no_batch_dims", False),
    ("full", True),
    ("dots", True),
  ],
)
def test_remat_policies_give_identical_outputs_and_gradients(
  tiny_qa, remat_reference, policy: str, scan_layers: bool
):
  inputs = tiny_qa[2]
  config, params, (reference_loss, reference_grads) = remat_reference(scan_layers)
  loss, grads = loss_and_grads(config.replace(remat_policy=policy), params, inputs)
  assert float(loss) == float(reference_loss)  # the forward pass is the same computation
  flat_ref, noise_ref = split_zero_by_symmetry(reference_grads, config.num_hidden_layers)
  flat, noise = split_zero_by_symmetry(grads, config.num_hidden_layers)
  assert set(flat) == set(flat_ref)
  for path in flat_ref:
    # Rematerialisation recomputes the same operations: the gradients are equal to the bit.
    np.testing.assert_array_equal(flat[path], flat_ref[path], path)
  assert sum(float(np.max(np.abs(g))) > 0 for g in flat.values()) > len(flat) // 2
  largest = max(float(np.max(np.abs(g))) for g in flat_ref.values())
  for g in noise + noise_ref:
    assert float(np.max(np.abs(g))) < 1e-6 * largest  # rounding noise, and no more


def split_zero_by_symmetry(grads: Any, num_layers: int) -> tuple[dict[str, np.ndarray], list]:
  """Splits the QA gradients into those with a value and those that are zero in exact arithmetic.

  The span loss is a softmax over positions, unchanged by a shift shared by every position's
  logits. So the QA bias and the last block's output-norm bias (which moves every position's final
  hidden state alike) have no gradient: in fp32 theirs is the rounding noise of cancelling sums,
  whose bits follow the summation order XLA picks for each program. A remat program may sum in
  another order (seen on AMD EPYC: ~3e-9 apart, against a largest gradient of ~0.9).

  Returns:
    ({path: gradient}, [the zero-by-symmetry gradients]); a scanned stack keeps its other layers.
  """
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(grads, sep="/").items()}
  noise = [flat.pop("qa_outputs/bias")]
  last_output_bias = f"mobilebert/encoder/layer_{num_layers - 1}/bottleneck_output/norm/bias"
  stacked_output_bias = "mobilebert/encoder/layers/bottleneck_output/norm/bias"
  if last_output_bias in flat:
    noise.append(flat.pop(last_output_bias))
  else:  # scan_layers: the blocks' biases are stacked on a leading axis
    noise.append(flat[stacked_output_bias][-1])
    flat[stacked_output_bias] = flat[stacked_output_bias][:-1]
  return flat, noise


# ----------------------------------------------------------------------------------------------
# Dropout
# ----------------------------------------------------------------------------------------------


def dropout_sites(
  module: nn.Module, params: Any, *args, seed: int = 0
) -> tuple[list[tuple[str, float, int]], Any]:
  """Runs a training-mode forward; returns every Dropout call (path, rate, input rank) and the
  output."""
  calls = []

  def record(next_fun, fun_args, fun_kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.method_name == "__call__":
      assert fun_kwargs.get("deterministic") is False
      rank = jnp.ndim(fun_args[0])
      calls.append(("/".join(context.module.path), context.module.rate, rank))
    return next_fun(*fun_args, **fun_kwargs)

  with nn.intercept_methods(record):
    output = module.apply(
      {"params": params}, *args, deterministic=False, rngs={"dropout": jax.random.key(seed)}
    )
  return calls, output


def test_released_model_only_drops_attention_probabilities():
  """docs/model.md §dropout: in the released config every dropout but the attention one has
  rate 0."""
  config = MobileBertConfig.from_preset("mobilebert-uncased")
  module = MobileBertForSequenceClassification(config)
  params = random_params(module)
  ids, mask, types = batch(config, length=8)

  sites, train_output = dropout_sites(module, params, ids, mask, types, seed=1)
  active = [site for site in sites if site[1] > 0]
  assert len(active) == config.num_hidden_layers
  for path, rate, rank in active:
    assert path.endswith("/attention/Dropout_0") and rate == 0.1
    assert rank == 4  # [batch, heads, query, key]: the probabilities

  def logits(cfg: MobileBertConfig, deterministic: bool, seed: int = 0) -> np.ndarray:
    out = MobileBertForSequenceClassification(cfg).apply(
      {"params": params},
      ids,
      attention_mask=mask,
      token_type_ids=types,
      deterministic=deterministic,
      rngs={"dropout": jax.random.key(seed)},
    )
    return np.asarray(out.logits)

  eval_logits = logits(config, True)
  train_a, train_b = np.asarray(train_output.logits), logits(config, False, 2)
  assert not np.array_equal(train_a, train_b)
  assert not np.array_equal(train_a, eval_logits)
  no_attention_dropout = config.replace(attention_probs_dropout_prob=0.0)
  np.testing.assert_array_equal(logits(no_attention_dropout, False, 1), eval_logits)


@pytest.mark.parametrize("use_bottleneck", [False, True])
def test_dropout_sites_follow_the_references(use_bottleneck: bool):
  """docs/model.md §dropout with hidden dropout on. Plain path: embeddings, attention probabilities,
  attention output, the last FFN's output, classifier. Bottleneck path: embeddings, attention
  probabilities, output bottleneck, classifier; never the attention output or any FFN.
  """
  config = TINY.replace(
    use_bottleneck=use_bottleneck,
    trigram_input=use_bottleneck,
    num_hidden_layers=1,
    num_feedforward_networks=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.2,
  )
  module = MobileBertForSequenceClassification(config)
  params = random_params(module, 0)
  sites, _ = dropout_sites(module, params, *batch(config))
  layer = "mobilebert/encoder/layer_0"
  by_path = {path: (rate, rank) for path, rate, rank in sites}
  expected = {
    "mobilebert/embeddings/Dropout_0": (0.1, 3),
    f"{layer}/attention/Dropout_0": (0.2, 4),
    "dropout": (0.1, 2),
  }
  if use_bottleneck:
    expected[f"{layer}/bottleneck_output/Dropout_0"] = (0.1, 3)
  else:
    expected[f"{layer}/attention/Dropout_1"] = (0.1, 3)
    expected[f"{layer}/ffn_1/Dropout_0"] = (0.1, 3)
  assert by_path == expected
  assert len(sites) == len(expected)

  # Hidden dropout alone (attention dropout off) changes the outputs.
  hidden_only = config.replace(attention_probs_dropout_prob=0.0)
  ids, mask, types = batch(config)
  outs = [
    MobileBertForSequenceClassification(hidden_only)
    .apply(
      {"params": params}, ids, mask, types, deterministic=False, rngs={"dropout": jax.random.key(s)}
    )
    .logits
    for s in (1, 2)
  ]
  assert not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
  config = TINY.replace(type_vocab_size=2)
  return config, random_params(MobileBertModel(config), 2)


def _apply(config, params, ids, mask=None, types=None):
  return MobileBertModel(config).apply(
    {"params": params}, ids, attention_mask=mask, token_type_ids=types
  )


@pytest.mark.parametrize(
  ("case", "message"),
  [
    ("id_too_large", r"token id 128 is outside the vocabulary \[0, 128\)"),
    ("id_negative", r"token id -1 is outside the vocabulary \[0, 128\)"),
    ("type_too_large", r"token type id 2 is outside \[0, type_vocab_size=2\)"),
    ("type_negative", r"token type id -1 is outside"),
    ("too_long", r"sequence length 17 exceeds max_position_embeddings \(16\)"),
    ("mask_shape", r"attention_mask has shape \(2, 9\) but input_ids has shape \(2, 10\)"),
    ("types_shape", r"token_type_ids has shape \(1, 10\) but input_ids has shape \(2, 10\)"),
    ("ids_rank", r"input_ids must be \[batch, length\], got shape \(2, 1, 10\)"),
    ("float_ids", r"input_ids must be integers"),
  ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, case: str, message: str):
  config, params = tiny_model
  ids, mask, types = batch(config)
  if case == "id_too_large":
    ids = ids.at[0, 3].set(config.vocab_size)
  elif case == "id_negative":
    ids = ids.at[1, 0].set(-1)
  elif case == "type_too_large":
    types = types.at[0, 2].set(2)
  elif case == "type_negative":
    types = types.at[0, 2].set(-1)
  elif case == "too_long":
    ids = jnp.ones((1, 17), jnp.int32)
    mask = types = None
  elif case == "mask_shape":
    mask = mask[:, :9]
  elif case == "types_shape":
    types = types[:1]
  elif case == "ids_rank":
    ids, mask, types = ids[:, None], None, None
  elif case == "float_ids":
    ids = ids.astype(jnp.float32)
  with pytest.raises(ValueError, match=message):
    _apply(config, params, ids, mask, types)


def test_multiple_choice_rejects_two_dimensional_ids():
  config = TINY
  module = MobileBertForMultipleChoice(config)
  params = random_params(module, 0)
  ids, mask, _ = batch(config)
  with pytest.raises(ValueError, match=r"\[batch, num_choices, length\], got shape \(2, 10\)"):
    module.apply({"params": params}, ids)
  with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 10\)"):
    module.apply({"params": params}, ids[:, None], attention_mask=mask)


def test_jit_with_inputs_closed_over_as_constants(tiny_model):
  """`jax.jit(lambda p: model.apply(p, ids))` with ids captured from the enclosing scope."""
  config, params = tiny_model
  ids, mask, types = batch(config)
  out = np.asarray(jax.jit(lambda p: _apply(config, p, ids, mask, types))(params).last_hidden_state)
  expected = np.asarray(_apply(config, params, ids, mask, types).last_hidden_state)
  assert np.max(np.abs(out - expected)) <= 1e-5 * np.max(np.abs(expected))


@pytest.mark.parametrize("bad", ["id_too_large", "id_negative", "type_too_large"])
def test_out_of_range_ids_under_jit_give_nan_not_a_clamp(tiny_model, bad: str):
  """Under jit the ids cannot be checked; a bad id must poison its example, not be clamped."""
  config, params = tiny_model
  ids, mask, types = batch(config)
  if bad == "id_too_large":
    ids = ids.at[0, 4].set(config.vocab_size)
  elif bad == "id_negative":
    ids = ids.at[0, 4].set(-3)
  else:
    types = types.at[0, 4].set(config.type_vocab_size)
  run = jax.jit(lambda p, i, m, t: _apply(config, p, i, m, t))
  out = run(params, ids, mask, types)
  good = np.asarray(_apply(config, params, ids[1:], mask[1:], types[1:]).last_hidden_state[0])

  assert np.all(np.isnan(np.asarray(out.last_hidden_state[0])))  # the whole example
  assert np.all(np.isnan(np.asarray(out.pooler_output[0])))
  other = np.asarray(out.last_hidden_state[1])  # untouched: the batch does not mix examples
  assert np.max(np.abs(other - good)) <= 1e-5 * np.max(np.abs(good))


# ----------------------------------------------------------------------------------------------
# Padding and the trigram (docs/pitfalls.md P3)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("invariant", [True, False])
def test_padding_invariant_trigram(invariant: bool):
  """With the option on, real positions do not depend on the padded length; off, the last real
  token's "next" slot sees the [PAD] row (non-zero here, as in the released table) and they do.
  """
  config = TINY.replace(padding_invariant_trigram=invariant, classifier_activation=False)
  params = random_params(MobileBertModel(config), 3)
  pad_row = params["embeddings"]["word_embeddings"][0]
  assert float(jnp.max(jnp.abs(pad_row))) > 0.1

  rng = np.random.default_rng(4)
  real = 7
  tokens = rng.integers(1, config.vocab_size, real)
  outputs = []
  for length in (real, 11, 16):
    ids = np.zeros((1, length), np.int32)
    ids[0, :real] = tokens
    mask = (np.arange(length) < real).astype(np.int32)[None]
    types = np.zeros_like(ids)
    types[0, 4:real] = 1
    out = _apply(config, params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(types))
    outputs.append(np.asarray(out.last_hidden_state[0, :real]))
  unpadded, padded_11, padded_16 = outputs
  scale = np.max(np.abs(unpadded))
  error_11 = np.max(np.abs(padded_11 - unpadded)) / scale
  error_16 = np.max(np.abs(padded_16 - unpadded)) / scale
  if invariant:
    assert error_11 <= 1e-5 and error_16 <= 1e-5
  else:
    assert error_11 > 1e-2 and error_16 > 1e-2


# ----------------------------------------------------------------------------------------------
# The TF1 "-6" mask (docs/pitfalls.md P5), against a NumPy block
# ----------------------------------------------------------------------------------------------


def numpy_block(p: dict, x: np.ndarray, mask: np.ndarray, config: MobileBertConfig, fill):
  """One released-style block (shared Q/K bottleneck, NoNorm, ReLU) in float64 NumPy.

  Args:
    p: the block's parameters (our layout).
    x: [batch, length, hidden] block input.
    mask: [batch, length] 1 for real keys.
    config: the config.
    fill: None for -inf masking (probability exactly 0); a float reproduces TF1's rule
      s*m + (1 - m)*fill, i.e. masked logits *replaced* by `fill`.

  Returns:
    (block output [batch, length, hidden], probabilities [batch, heads, length, length]).
  """
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), p)

  def dense(q, v):
    return v @ q["kernel"] + q["bias"]

  def no_norm(q, v):
    return v * q["scale"] + q["bias"]

  bottleneck = no_norm(p["bottleneck_input"]["norm"], dense(p["bottleneck_input"]["dense"], x))
  shared = no_norm(p["kq_shared_bottleneck"]["norm"], dense(p["kq_shared_bottleneck"]["dense"], x))
  att = p["attention"]
  q = np.einsum("bti,ihd->bthd", shared, att["query"]["kernel"]) + att["query"]["bias"]
  k = np.einsum("bti,ihd->bthd", shared, att["key"]["kernel"]) + att["key"]["bias"]
  v = np.einsum("bti,ihd->bthd", x, att["value"]["kernel"]) + att["value"]["bias"]
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(config.attention_head_size)
  keep = mask[:, None, None, :].astype(bool)
  scores = np.where(keep, scores, -np.inf if fill is None else fill)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  context = np.einsum("bhqk,bkhd->bqhd", probs, v)
  out = np.einsum("bqhd,hdo->bqo", context, att["output"]["kernel"]) + att["output"]["bias"]
  z = no_norm(att["norm"], out + bottleneck)
  for f in range(config.num_feedforward_networks):
    ffn = p[f"ffn_{f}"]
    h = np.maximum(dense(ffn["intermediate"], z), 0.0)
    z = no_norm(ffn["norm"], dense(ffn["output"], h) + z)
  ob = p["bottleneck_output"]
  return no_norm(ob["norm"], dense(ob["dense"], z) + x), probs


@pytest.mark.parametrize("fill", [None, -6.0])
def test_masked_attention_logit_matches_numpy_block(fill):
  config = TINY.replace(
    num_hidden_layers=1, masked_attention_logit=fill, classifier_activation=False
  )
  params = random_params(MobileBertModel(config), 5)
  ids, mask, types = batch(config, batch_size=3, length=12, seed=6)
  out = MobileBertModel(config).apply(
    {"params": params},
    ids,
    attention_mask=mask,
    token_type_ids=types,
    output_hidden_states=True,
    output_attentions=True,
  )
  block_input = np.asarray(out.hidden_states[0], np.float64)
  expected, expected_probs = numpy_block(
    params["encoder"]["layer_0"], block_input, np.asarray(mask), config, fill
  )

  probs = np.asarray(out.attentions[0])
  assert np.max(np.abs(probs - expected_probs)) <= 1e-5
  got = np.asarray(out.hidden_states[1])
  assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))

  padded_keys = probs[1:, :, :, 6:]  # examples 1, 2 are padded after 6 tokens
  if fill is None:
    assert np.all(padded_keys == 0.0)
  else:
    # Every padded key keeps the weight of a real key with logit -6: visible, not negligible.
    assert np.all(padded_keys > 0.0)
    assert np.max(padded_keys) > 1e-4
