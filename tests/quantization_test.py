"""Quantization-aware training (`mobilebert_jax.model.quantization`, `quantization_aware=True`).

The fake quantization is checked bit for bit against TF's own `fake_quant_with_min_max_vars`
(values, range nudging, narrow range, ties) and its gradient op; the range update against TF's
`assign_moving_average`. The model switch must leave the float model untouched when off, and a
tiny QAT fine-tuning run must checkpoint its ranges, resume them exactly and evaluate with them.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_test import TINY as HOUSE_TINY

from mobilebert_jax.model import quantization
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForQuestionAnswering
from mobilebert_jax.train import checkpointing, run_files
from mobilebert_jax.trainers import finetuning as trainer

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.usefixtures("fast_compiles")

# The house tiny config (docs/testing.md §tiny-config) with ReLU6, as QAT needs.
TINY = HOUSE_TINY.replace(hidden_act="relu6")
# (min, max, narrow_range): symmetric, asymmetric, ranges without 0 (nudged), tiny, wide.
RANGES = [
  (-6.0, 6.0, False),
  (-6.0, 6.0, True),
  (-0.3, 2.7, False),
  (-1.234, 0.01, False),
  (0.5, 3.0, False),
  (-3.0, -1.0, False),
  (-0.7, 9.3, True),
  (-0.0123, 0.0456, False),
  (-5.9, 61.3, False),
  (0.0, 0.0, False),
]


def sample_values() -> np.ndarray:
  """Normal values at two scales plus a dense grid that hits rounding ties and both clamps."""
  rng = np.random.default_rng(0)
  return np.concatenate(
    [
      4.0 * rng.standard_normal(20_000),
      0.3 * rng.standard_normal(20_000),
      np.linspace(-8.0, 8.0, 40_001),
    ]
  ).astype(np.float32)


@pytest.mark.parametrize(("low", "high", "narrow"), RANGES)
def test_fake_quant_is_tf_fake_quant_with_min_max_vars_bit_for_bit(low, high, narrow):
  x = sample_values()
  expected = tf.quantization.fake_quant_with_min_max_vars(
    x, low, high, num_bits=8, narrow_range=narrow
  ).numpy()
  # Ranges as traced arguments (the model's case) and as constants folded into the program.
  traced = jax.jit(lambda v, a, b: quantization.fake_quant(v, a, b, narrow_range=narrow))
  folded = jax.jit(lambda v: quantization.fake_quant(v, low, high, narrow_range=narrow))
  np.testing.assert_array_equal(np.asarray(traced(x, np.float32(low), np.float32(high))), expected)
  np.testing.assert_array_equal(np.asarray(folded(x)), expected)


@pytest.mark.parametrize(("low", "high", "narrow"), RANGES[:7])
def test_straight_through_gradient_is_tf_gradient(low, high, narrow):
  x = sample_values()
  upstream = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  expected = tf.quantization.fake_quant_with_min_max_vars_gradient(
    upstream, x, low, high, num_bits=8, narrow_range=narrow
  )[0].numpy()

  def loss(v):
    return jnp.sum(quantization.fake_quant(v, low, high, narrow_range=narrow) * upstream)

  actual = np.asarray(jax.jit(jax.grad(loss))(x))
  np.testing.assert_array_equal(actual, expected)
  # Straight through inside the range, blocked outside (so both cases are exercised).
  assert np.any(actual == upstream) and np.any(actual == 0)


def test_weights_are_symmetric_narrow_range_from_their_current_values():
  w = (0.05 * np.random.default_rng(2).standard_normal((64, 48))).astype(np.float32)
  absmax = float(np.abs(w).max())
  expected = tf.quantization.fake_quant_with_min_max_vars(
    w, -absmax, absmax, num_bits=8, narrow_range=True
  ).numpy()
  q = np.asarray(jax.jit(quantization.quantize_weight)(w))
  np.testing.assert_array_equal(q, expected)
  steps = q / (absmax / 127)
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the [-127, 127] grid
  assert np.abs(np.round(steps)).max() == 127
  grad = jax.grad(lambda v: jnp.sum(quantization.quantize_weight(v) * 3.0))(w)
  np.testing.assert_array_equal(np.asarray(grad), np.full_like(w, 3.0))


def test_per_channel_weights_are_tf_per_channel_fake_quant_over_the_output_axes():
  """One symmetric scale per output channel: TF's per-channel op on the [in, out] kernel."""
  rng = np.random.default_rng(3)
  # Output channels of very different sizes, and one all zero (TF gives zeros, not NaN).
  w = (rng.standard_normal((48, 4, 8)) * np.geomspace(1e-3, 1.0, 32).reshape(4, 8)).astype(
    np.float32
  )
  w[:, 1, 3] = 0.0
  absmax = np.abs(w).max(axis=0).reshape(-1)
  expected = tf.quantization.fake_quant_with_min_max_vars_per_channel(
    w.reshape(48, 32), -absmax, absmax, num_bits=8, narrow_range=True
  ).numpy()
  q = np.asarray(jax.jit(lambda v: quantization.quantize_weight(v, reduce_axes=(0,)))(w))
  np.testing.assert_array_equal(q.reshape(48, 32), expected)
  assert np.all(q[:, 1, 3] == 0)
  # Per tensor, the small channels would have collapsed to zero.
  per_tensor = np.asarray(quantization.quantize_weight(w))
  assert np.count_nonzero(per_tensor[:, 0, 0]) == 0 and np.count_nonzero(q[:, 0, 0]) > 40

  # Inside a quantization-aware Dense the contracting axes are the ones reduced.
  x = jnp.asarray(rng.uniform(-1.0, 1.0, (2, 48)).astype(np.float32))
  dimension_numbers = (((1,), (0,)), ((), ()))
  dot = quantization.FakeQuantDotGeneral(per_channel=True)
  variables = dot.init(jax.random.key(0), x, jnp.asarray(w), dimension_numbers)
  actual = dot.apply(variables, x, jnp.asarray(w), dimension_numbers)
  x_q = quantization.fake_quant(x, -6.0, 6.0)
  np.testing.assert_allclose(
    np.asarray(actual).reshape(2, 32), np.asarray(x_q) @ expected, rtol=1e-5, atol=1e-6
  )


def test_moving_average_is_tf_assign_moving_average_and_quantizes_on_the_updated_range():
  from tensorflow.python.training import moving_averages

  quantizer = quantization.ActivationQuantizer()
  x = jnp.asarray(np.linspace(-2.0, 9.0, 101, dtype=np.float32))
  variables = quantizer.init(jax.random.key(0), x)
  np.testing.assert_array_equal(variables[quantization.RANGES]["min"], np.float32(-6.0))
  np.testing.assert_array_equal(variables[quantization.RANGES]["max"], np.float32(6.0))

  tf_min, tf_max = tf.Variable(-6.0), tf.Variable(6.0)
  ranges = variables
  apply = jax.jit(lambda v, x: quantizer.apply(v, x, mutable=[quantization.RANGES]))
  for batch in (x, 0.5 * x + 1.0, x * x):
    out, ranges = apply(ranges, batch)
    b = np.asarray(batch)
    low = moving_averages.assign_moving_average(tf_min, min(b.min(), 0.0), 0.999, zero_debias=False)
    high = moving_averages.assign_moving_average(
      tf_max, max(b.max(), 0.0), 0.999, zero_debias=False
    )
    stored = ranges[quantization.RANGES]
    assert float(stored["min"]) == float(low.numpy()) and float(stored["max"]) == float(high)
    expected = tf.quantization.fake_quant_with_min_max_vars(b, low, high).numpy()
    np.testing.assert_array_equal(np.asarray(out), expected)

  # Frozen (not mutable): the stored range is used and stays.
  frozen = quantizer.apply(ranges, 100.0 * x)
  assert float(np.asarray(frozen).max()) <= float(ranges[quantization.RANGES]["max"]) + 1e-6


def test_attention_logits_follow_the_original_and_are_clipped():
  scorer = quantization.AttentionScoreQuantizer()
  raw = jnp.asarray(np.random.default_rng(3).normal(0, 30, (1, 2, 4, 4)).astype(np.float32))
  mask = jnp.asarray([[[[True, True, True, False]]]])
  variables = scorer.init(jax.random.key(0), raw, mask, 0.25, -6.0)
  logits = np.asarray(scorer.apply(variables, raw, mask, 0.25, -6.0))
  # Masked keys get the (quantized) fill; everything lies in [-6, 60].
  grid = 12.0 / 255  # the initial [-6, 6] range
  np.testing.assert_allclose(logits[..., 3], -6.0, atol=grid)
  assert logits.min() >= -6.0 and logits.max() <= 60.0
  # The last quantization is on the initial [-6, 6] grid: (k - 128) * 12/255 (zero point 128).
  kept = logits[..., :3][logits[..., :3] > -6.0]
  np.testing.assert_allclose(kept / grid, np.round(kept / grid), atol=1e-3)


def tiny_model(**changes) -> MobileBertForQuestionAnswering:
  return MobileBertForQuestionAnswering(TINY.replace(**changes))


def inputs():
  ids = jnp.asarray([[2, 17, 33, 9, 81, 5, 0, 0], [2, 4, 6, 8, 10, 12, 14, 3]], jnp.int32)
  return ids, (ids > 0).astype(jnp.int32)


def test_off_is_the_float_model_unchanged():
  ids, mask = inputs()
  for act in ("relu", "relu6"):
    model = tiny_model(hidden_act=act)
    variables = model.init(jax.random.key(0), ids, mask)
    assert set(variables) == {"params"}
    jaxpr = str(jax.make_jaxpr(lambda v, m=model: m.apply(v, ids, mask))(variables))
    for primitive in ("floor", "optimization_barrier", "clamp"):
      assert primitive not in jaxpr


def test_quantization_aware_model_quantizes_and_stays_close_to_float():
  ids, mask = inputs()
  float_model = tiny_model()
  qat_model = tiny_model(quantization_aware=True)
  variables = qat_model.init(jax.random.key(0), ids, mask)
  assert set(variables) == {"params", quantization.RANGES}
  # Kernels (and tables) 10x their initial scale: activations of order 1, as the [-6, 6] ranges
  # expect (at the initial scale the outputs are ~1e-3, below the 8-bit grid).
  params = jax.tree.map(lambda x: 10.0 * x if x.ndim >= 2 else x, variables["params"])
  variables = {**variables, "params": params}
  params = {"params": params}
  # NoNorm: input, γ, β, product; Dense: input; attention: 3 score points + context.
  assert len(quantization.learned_ranges(variables)) == 84
  expected = float_model.apply(params, ids, mask)
  actual = qat_model.apply(variables, ids, mask)
  error = np.abs(np.asarray(actual.start_logits) - np.asarray(expected.start_logits)).max()
  scale = np.abs(np.asarray(expected.start_logits)).max()
  assert 0 < error < 0.25 * scale

  # The export form clips instead of quantizing: no rounding (and no barrier) in its program.
  export_model = tiny_model(quantization_aware=True, quantization_export=True)
  jaxpr = str(jax.make_jaxpr(lambda v: export_model.apply(v, ids, mask))(variables))
  assert "optimization_barrier" not in jaxpr
  # Only the scalar zero points of the ranges are rounded, no activation.
  rounded = [line for line in jaxpr.splitlines() if "= floor" in line]
  assert rounded and all(":f32[] = floor" in line for line in rounded)


def test_calibration_sets_each_range_to_the_float_values_it_sees():
  """`calibrate_ranges`: every range is the min/max (with 0) of its point's float values."""
  ids, mask = inputs()
  model = tiny_model(quantization_aware=True)
  variables = model.init(jax.random.key(0), ids, mask)
  params = {"params": variables["params"]}
  batches = [
    {"input_ids": ids, "attention_mask": mask},
    {"input_ids": ids[:, ::-1] + 3, "attention_mask": jnp.ones_like(mask)},
  ]
  ranges = quantization.calibrate_ranges(
    model, variables["params"], variables[quantization.RANGES], batches
  )

  # Each quantizer's input, captured in calibration mode (where it returns its input).
  def seen(batch):
    _, state = model.apply(
      {**params, quantization.RANGES: variables[quantization.RANGES]},
      **batch,
      mutable=[quantization.CALIBRATION, "intermediates"],
      capture_intermediates=lambda m, _: isinstance(m, quantization.ActivationQuantizer),
    )
    flat = jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]
    return {
      tuple(k.key for k in path[:-2]): np.asarray(v) for path, v in flat if "__call__" in str(path)
    }

  values = [seen(batch) for batch in batches]
  learned = jax.tree_util.tree_flatten_with_path(ranges)[0]
  assert len(learned) == 2 * 84
  for path, bound in learned:
    point, end = tuple(k.key for k in path[:-1]), path[-1].key
    both = np.concatenate([v[point].ravel() for v in values])
    expected = min(both.min(), 0.0) if end == "min" else max(both.max(), 0.0)
    assert float(bound) == float(expected), point

  # Calibration runs the float model: weights and activations unquantized. (Unpadded rows and
  # small initial weights, so that neither the -6 mask fill nor the score clip acts.)
  batch = batches[1]
  float_model = tiny_model(masked_attention_logit=-6.0)
  expected = float_model.apply(params, **batch).start_logits
  calibrating, _ = model.apply(
    {**params, quantization.RANGES: ranges}, **batch, mutable=[quantization.CALIBRATION]
  )
  np.testing.assert_allclose(calibrating.start_logits, expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="at least one batch"):
    quantization.calibrate_ranges(model, variables["params"], variables[quantization.RANGES], [])


def test_task_head_logit_ranges_stop_at_their_floor():
  """With `tflite` points the QA logits' range ends at -32 in calibration and in training."""
  ids, mask = inputs()
  model = tiny_model(quantization_aware=True, quantization_points="tflite")
  variables = model.init(jax.random.key(0), ids, mask)
  # Large kernels: float QA logits far below the floor, and other outputs beyond [-6, 6].
  params = jax.tree.map(lambda x: 200.0 * x if x.ndim >= 2 else x, variables["params"])
  logits = tiny_model(masked_attention_logit=-6.0).apply({"params": params}, ids, mask)
  assert np.asarray(logits.start_logits).min() < 2 * quantization.TASK_LOGIT_FLOOR
  ranges = quantization.calibrate_ranges(
    model, params, variables[quantization.RANGES], [{"input_ids": ids, "attention_mask": mask}]
  )
  calibrated = quantization.learned_ranges({quantization.RANGES: ranges})
  assert calibrated["qa_outputs/output_quant"][0] == quantization.TASK_LOGIT_FLOOR
  assert calibrated["qa_outputs/output_quant"][1] > 0.0
  outputs = [low for path, (low, _) in calibrated.items() if path.endswith("output_quant")]
  assert min(outputs) < 2 * quantization.TASK_LOGIT_FLOOR  # only the head has a floor

  # A training step moves the minimum towards the floor, not towards the batch minimum.
  _, state = model.apply(
    {"params": params, quantization.RANGES: variables[quantization.RANGES]},
    ids,
    mask,
    mutable=[quantization.RANGES],
  )
  low, _ = quantization.learned_ranges(state)["qa_outputs/output_quant"]
  expected = quantization.ema_update(np.float32(-6.0), np.float32(quantization.TASK_LOGIT_FLOOR))
  np.testing.assert_allclose(low, expected, rtol=1e-6)


def test_tflite_points_add_dense_outputs_and_the_softmax_grid():
  """`quantization_points="tflite"`: every Dense output gets a range; probabilities are k/256."""
  ids, mask = inputs()
  original = tiny_model(quantization_aware=True)
  tflite = tiny_model(quantization_aware=True, quantization_points="tflite")
  variables = tflite.init(jax.random.key(0), ids, mask)
  params = jax.tree.map(lambda x: 10.0 * x if x.ndim >= 2 else x, variables["params"])
  variables = {**variables, "params": params}
  ranges = quantization.learned_ranges(variables)
  original_ranges = quantization.learned_ranges(original.init(jax.random.key(0), ids, mask))
  added = sorted(set(ranges) - set(original_ranges))
  removed = sorted(set(original_ranges) - set(ranges))
  # One output range per Dense: per block q, k, v, attention output, 2 bottlenecks, 2 FFNs x 2,
  # bottleneck output, plus the embedding projection and the QA head.
  # The logits: one range after the [-6, 60] clip instead of the masked and filled ones.
  outputs = [path for path in added if path.endswith("output_quant")]
  assert len(outputs) == 2 * 11 + 2
  assert [path.rsplit("/", 1)[1] for path in set(added) - set(outputs)] == ["logits_quant"] * 2
  assert [path.rsplit("/", 1)[1] for path in removed] == ["filled_quant", "masked_quant"] * 2

  # Larger query/key kernels for logits spread over the grid (not all near 0).
  sharper = jax.tree_util.tree_map_with_path(
    lambda path, x: 8.0 * x if {"query", "key"} & {getattr(k, "key", None) for k in path} else x,
    params,
  )
  logit_ranges = {"min": jnp.float32(-6.0), "max": jnp.float32(60.0)}
  sharp_ranges = jax.tree_util.tree_map_with_path(
    lambda path, x: logit_ranges[path[-1].key] if "logits_quant" in str(path) else x,
    variables[quantization.RANGES],
  )
  out, state = tflite.apply(
    {"params": sharper, quantization.RANGES: sharp_ranges},
    ids,
    mask,
    output_attentions=True,
    capture_intermediates=lambda m, _: isinstance(m, quantization.AttentionScoreQuantizer),
    mutable=["intermediates"],
  )
  for probabilities in out.attentions:
    grid = 256.0 * np.asarray(probabilities)
    np.testing.assert_allclose(grid, np.round(grid), atol=2e-4)
    assert grid.max() <= 255.0 + 2e-4
  # The softmax's input, with the logits' ranges at the whole clip [-6, 60]: on its int8 grid
  # (scale 66/255, zero point 23: the nudged range [-5.953, 60.047]), padded keys at -6.
  logits = jax.tree.leaves(state["intermediates"])
  assert len(logits) == 2
  for layer_logits in map(np.asarray, logits):
    steps = (layer_logits + 23 * 66 / 255) / (66 / 255)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert steps.min() >= -1e-3 and steps.max() <= 255 + 1e-3
    assert len(np.unique(np.round(steps))) > 10  # not collapsed onto a few grid points
    np.testing.assert_allclose(layer_logits[0, :, :, 6:], -23 * 66 / 255, rtol=1e-6)
  reference = original.apply(
    {
      "params": params,
      quantization.RANGES: original.init(jax.random.key(0), ids, mask)[quantization.RANGES],
    },
    ids,
    mask,
    output_attentions=True,
  )
  assert not np.allclose(np.asarray(out.start_logits), np.asarray(reference.start_logits))

  # The export form clips the outputs too, and rounds no activation.
  export_model = tiny_model(
    quantization_aware=True, quantization_points="tflite", quantization_export=True
  )
  jaxpr = str(jax.make_jaxpr(lambda v: export_model.apply(v, ids, mask))(variables))
  rounded = [line for line in jaxpr.splitlines() if "= floor" in line]
  assert rounded and all(":f32[] = floor" in line for line in rounded)
  with pytest.raises(ValueError, match="quantization_points must be one of original, tflite"):
    TINY.replace(quantization_aware=True, quantization_points="all")


def test_quantization_aware_needs_relu6_and_no_norm():
  with pytest.raises(ValueError, match="quantization_aware needs hidden_act='relu6'"):
    MobileBertConfig(quantization_aware=True)
  with pytest.raises(ValueError, match="quantization_export applies only"):
    MobileBertConfig(hidden_act="relu6", quantization_export=True)
  with pytest.raises(ValueError, match="quantization_per_channel applies only"):
    MobileBertConfig(hidden_act="relu6", quantization_per_channel=True)
  assert MobileBertConfig.from_preset("mobilebert-uncased-qat", quantization_aware=True)
  config = TINY.replace(quantization_aware=True)
  # Recorded with a run (our config files), not in a transformers config.json.
  assert MobileBertConfig.from_dict(config.to_dict(), source="hf") == config
  assert "quantization_aware" not in config.to_hf_dict()


# ----------------------------------------------------------------------------------------------
# Fine-tuning with --config.model.quantization_aware=true
# ----------------------------------------------------------------------------------------------


def test_qat_override_without_relu6_is_a_run_config_error():
  """The CLI prints a `RunConfigError` as one line (no traceback)."""
  from mobilebert_jax import tasks
  from mobilebert_jax.cli import load_config_file, package_config
  from mobilebert_jax.errors import RunConfigError
  from mobilebert_jax.train import initialization

  config = load_config_file(package_config("squad.py", "demo"))
  config.model.quantization_aware = True
  tokenizer = initialization.load_tokenizer(config.tokenizer.vocab_file, True)
  with pytest.raises(RunConfigError, match="quantization_aware needs hidden_act='relu6'"):
    initialization.initial_weights(config, tasks.get_task("squad"), tokenizer)


def test_run_calibration_uses_the_next_training_batches_and_leaves_the_data_order():
  """`qat_calibration_batches`: ranges from the next training batches, then the same batches."""
  from mobilebert_jax.data.batching import BatchIterator
  from mobilebert_jax.errors import RunConfigError
  from mobilebert_jax.train import setup

  ids, mask = inputs()
  rows = np.random.default_rng(4).integers(1, 90, (16, ids.shape[1])).astype(np.int32)
  features = {"input_ids": rows, "attention_mask": np.ones_like(rows)}
  batches = BatchIterator(features, global_batch_size=4, shuffle=True, seed=3)
  twin = BatchIterator(features, global_batch_size=4, shuffle=True, seed=3)
  next(batches), next(twin)
  expected_batches = [next(twin) for _ in range(3)]
  model = tiny_model(quantization_aware=True)
  variables = model.init(jax.random.key(0), ids, mask)
  collections = {quantization.RANGES: variables[quantization.RANGES]}

  calibrated = setup.calibrated_collections(model, variables["params"], collections, batches, 2)
  expected = quantization.calibrate_ranges(
    model,
    variables["params"],
    variables[quantization.RANGES],
    [{k: b[k] for k in ("input_ids", "attention_mask")} for b in expected_batches[:2]],
  )
  jax.tree.map(np.testing.assert_array_equal, calibrated[quantization.RANGES], expected)
  assert quantization.learned_ranges(calibrated) != quantization.learned_ranges(collections)
  # Training then draws the batches it would have drawn without the calibration.
  np.testing.assert_array_equal(next(batches)["input_ids"], expected_batches[0]["input_ids"])
  with pytest.raises(RunConfigError, match="applies only with --config"):
    setup.calibrated_collections(tiny_model(), variables["params"], {}, batches, 2)
  # Several processes: the widest of their ranges, point by point.
  per_process = {"a": {"min": np.asarray([-1.0, -3.0]), "max": np.asarray([2.0, 1.0])}}
  assert jax.tree.map(float, setup.widest_ranges(per_process)) == {"a": {"min": -3.0, "max": 2.0}}


def test_run_calibration_without_a_float_model_is_a_run_config_error(tmp_path):
  from mobilebert_jax.cli import load_config_file, package_config
  from mobilebert_jax.demo import DEV_FILE, VOCAB_FILE
  from mobilebert_jax.errors import RunConfigError

  config = load_config_file(package_config("squad.py", "size=tiny"))
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.update(train_file=DEV_FILE, eval_file=DEV_FILE, max_seq_length=48)
  config.model.update(quantization_aware=True, hidden_act="relu6")
  config.update(init_from="", qat_calibration_batches=2, num_train_steps=1)
  with pytest.raises(RunConfigError, match="calibrates the ranges of a trained float model"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def saved_ranges(workdir, step: int) -> dict:
  """The `quant_ranges` collection of checkpoint `step`, as host arrays."""
  restored = checkpointing.load_collections_from_checkpoint(
    os.path.join(workdir, "checkpoints"), step
  )
  return jax.tree.map(np.asarray, restored)


@pytest.mark.slow
def test_qat_fine_tuning_checkpoints_resumes_and_evaluates_with_its_ranges(tmp_path):
  from mobilebert_jax.cli import load_config_file, package_config
  from mobilebert_jax.demo import TRAIN_FILE, VOCAB_FILE
  from mobilebert_jax.errors import RunConfigError

  with open(TRAIN_FILE, encoding="utf-8") as f:
    articles = json.load(f)["data"][:2]
  train_file = tmp_path / "train.json"
  train_file.write_text(json.dumps({"version": "1.1", "data": articles}))
  config = load_config_file(package_config("squad.py", "size=tiny"))
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.update(train_file=str(train_file), eval_file=str(train_file), max_seq_length=48)
  config.model.update(quantization_aware=True, hidden_act="relu6")
  config.update(num_train_steps=4, checkpoint_every_steps=2, keep_checkpoints=5)

  reference = tmp_path / "reference"
  reference_metrics = trainer.train_and_evaluate(config, str(reference))
  ranges_2, ranges_4 = saved_ranges(reference, 2), saved_ranges(reference, 4)
  flat_2 = quantization.learned_ranges(ranges_2)
  flat_4 = quantization.learned_ranges(ranges_4)
  # Scanned blocks (size=tiny): per-layer ranges; every one moved by its EMA, 0 inside.
  assert len(flat_4) == 84 and flat_2.keys() == flat_4.keys()
  assert all(flat_2[k] != flat_4[k] for k in flat_4)
  assert all(low <= 0.0 <= high for low, high in flat_4.values())

  # A QAT run is no teacher for `distill_from`: its logits come from the fake-quantized model.
  with pytest.raises(RunConfigError, match="is quantization-aware; use a float run"):
    student = config.copy_and_resolve_references()
    student.distill_from = str(reference)
    trainer.train_and_evaluate(student, str(tmp_path / "student"))

  # Killed after step 2: the resumed run restores the ranges and ends on the same ones.
  resumed = tmp_path / "resumed"
  shutil.copytree(reference, resumed)
  shutil.rmtree(resumed / "checkpoints" / "4")
  os.remove(resumed / run_files.EVAL_METRICS_FILE)
  resumed_metrics = trainer.train_and_evaluate(config, str(resumed))
  jax.tree.map(np.testing.assert_array_equal, saved_ranges(resumed, 4), ranges_4)
  assert resumed_metrics == reference_metrics

  # Evaluation (during and after training) applied the model with the state's ranges, frozen:
  # without them the QAT model cannot run at all (Flax: ScopeCollectionNotFound).
  assert set(reference_metrics) >= {"exact_match", "f1"}
  model = MobileBertForQuestionAnswering(config_of(reference))
  ids = jnp.ones((1, 8), jnp.int32)
  params = model.init(jax.random.key(0), ids)["params"]
  with pytest.raises(Exception, match="quant_ranges"):
    model.apply({"params": params}, ids)


def config_of(workdir) -> MobileBertConfig:
  with open(os.path.join(workdir, run_files.MODEL_CONFIG_FILE)) as f:
    config = MobileBertConfig.from_dict(json.load(f), source="hf")
  assert config.quantization_aware  # recorded with the run
  return config
