"""Sharding: meshes, rule presets, sharded state, and sharded training equal to one device.

Runs on the 8 fake CPU devices of conftest.py. Compilation dominates the cost, so every jitted
program here runs with `jax_disable_most_optimizations` (restored afterwards) on a tiny model;
the comparisons are between two programs compiled the same way.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from resume_worker import CONFIG  # the tiny model the checkpoint tests share

from mobilebert_jax import MobileBertForPreTraining, MobileBertForQuestionAnswering, abstract_params
from mobilebert_jax.train import distributed, losses, steps
from mobilebert_jax.train import sharding as shd
from mobilebert_jax.train.optim import build_optimizer
from mobilebert_jax.train.schedules import build_schedule

P = PartitionSpec
BATCH = 16
LENGTH = 16
NUM_STEPS = 3
# Parity tolerance, as max|sharded - single| / max|single| over each compared tree. Sharding
# changes only the order of float32 sums (the batch gradient is summed per device and then
# across devices; fsdp splits contractions over devices), i.e. rounding at ~1e-7 relative per
# reduction, compounded over NUM_STEPS updates. 1e-5 is the project's fp32 parity bound.
RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("fast_compiles")


def qa_loss(outputs, batch):
  loss = losses.question_answering_loss(
    outputs.start_logits, outputs.end_logits, batch["start_positions"], batch["end_positions"]
  )
  return loss, {
    "start_accuracy": jnp.mean(jnp.argmax(outputs.start_logits, -1) == batch["start_positions"])
  }


def make_batches(num: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(num):
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=BATCH)
    mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    out.append(
      {
        "input_ids": (rng.integers(1, CONFIG.vocab_size, (BATCH, LENGTH)) * mask).astype(np.int32),
        "attention_mask": mask,
        "token_type_ids": (np.arange(LENGTH)[None, :] >= 4).astype(np.int32) * mask,
        "start_positions": rng.integers(0, LENGTH // 2, BATCH).astype(np.int32),
        "end_positions": rng.integers(LENGTH // 2, LENGTH, BATCH).astype(np.int32),
      }
    )
  return out


def optimizer() -> optax.GradientTransformation:
  # The real LAMB chain (clipping, Adam moments, masked decay, per-layer trust ratios): its norms
  # are reductions over sharded parameters under fsdp.
  return build_optimizer("lamb", 1e-2, total_steps=100).transformation


def one_device_mesh():
  return shd.make_mesh((1, 1), devices=jax.devices()[:1])


def to_host(state):
  """NumPy copies of a train state's leaves (the PRNG key as its key data), safe from donation."""
  return jax.tree.map(np.array, jax.device_get(state.replace(rng=jax.random.key_data(state.rng))))


def to_device(host_state, shardings):
  """The inverse of `to_host`, laid out as `shardings` says."""
  return jax.device_put(host_state.replace(rng=jax.random.wrap_key_data(host_state.rng)), shardings)


def without_shift_only_params(params):
  """Zeroes the parameters whose exact gradient is zero under the span loss.

  The start/end softmax over positions ignores a shift common to all positions, so the QA
  bias, and the last block's output biases (which reach the logits only through the QA kernel
  as such a shift), have gradients that are exactly zero in real arithmetic and pure rounding
  noise in float32. LAMB/Adam normalise that noise into O(lr) steps whose sign depends on the
  order of the sums, so these values are noise in every run and are left out of comparisons.
  """
  params = jax.tree.map(np.array, params)
  params["qa_outputs"]["bias"][:] = 0
  last = params["mobilebert"]["encoder"]["layers"]["bottleneck_output"]
  last["dense"]["bias"][-1] = 0
  last["norm"]["bias"][-1] = 0
  return params


def rel_error(a, b) -> float:
  """max|a - b| / max|b| over two trees."""
  diffs = jax.tree.leaves(
    jax.tree.map(lambda x, y: np.max(np.abs(np.asarray(x) - np.asarray(y))), a, b)
  )
  scale = max(float(np.max(np.abs(np.asarray(y)))) for y in jax.tree.leaves(b))
  return float(max(diffs)) / scale


def run_training(model, tx, mesh, rules, initial_state, batches, grad_accum_steps=1):
  """Trains from a host copy of `initial_state`; returns (losses, final state, #traces, metrics)."""
  traces = []
  train_step = steps.make_train_step(
    steps.model_loss_fn(model, qa_loss),
    tx,
    grad_accum_steps=grad_accum_steps,
    learning_rate_fn=build_schedule(1e-2, 100),
  )

  def counted(state, batch):
    traces.append(1)  # runs once per trace, never per call of the compiled step
    return train_step(state, batch)

  shardings = shd.train_state_shardings(model, tx, mesh, rules)
  step = shd.jit_train_step(counted, mesh, rules, shardings)
  state = to_device(initial_state, shardings)
  losses_, metrics = [], []
  for batch in batches:
    state, m = step(state, distributed.global_batch_from_local(batch, shd.batch_sharding(mesh)))
    losses_.append(float(m["loss"]))
    metrics.append(jax.device_get(m))
  return np.array(losses_), state, len(traces), metrics


@pytest.fixture(scope="module")
def reference():
  """One-device training run: initial state (host), batches, losses, final params."""
  model = MobileBertForQuestionAnswering(CONFIG)
  tx = optimizer()
  mesh = one_device_mesh()
  rules = shd.logical_axis_rules("dp")
  init_state = to_host(shd.create_train_state(model, tx, mesh, rules, rng=0))
  batches = make_batches(NUM_STEPS)
  losses_, state, traces, metrics = run_training(model, tx, mesh, rules, init_state, batches)
  assert traces == 1
  return {
    "model": model,
    "tx": tx,
    "init_state": init_state,
    "batches": batches,
    "losses": losses_,
    "params": jax.tree.map(np.array, jax.device_get(state.params)),
    "metrics": metrics,
  }


# ----------------------------------------------------------------------------------------------
# Mesh and rules (no compilation)
# ----------------------------------------------------------------------------------------------


def test_make_mesh_shapes_axis_types_and_errors():
  mesh = shd.make_mesh()
  assert dict(mesh.shape) == {"data": 8, "fsdp": 1}
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  assert dict(shd.make_mesh((2, -1)).shape) == {"data": 2, "fsdp": 4}
  assert dict(shd.make_mesh((1, 8)).shape) == {"data": 1, "fsdp": 8}
  for bad, message in [
    ((3, -1), "not divisible"),
    ((2, 2), "needs 4 devices"),
    ((-1, -1), "at most one -1"),
    ((8,), "2 entries"),
    ((0, 8), "positive"),
  ]:
    with pytest.raises(ValueError, match=message):
      shd.make_mesh(bad)
  with pytest.raises(ValueError, match="Unknown sharding rule preset"):
    shd.logical_axis_rules("tp")


def test_presets_cover_every_axis_name_of_the_models():
  for cls in (MobileBertForPreTraining, MobileBertForQuestionAnswering):
    boxed = abstract_params(cls(CONFIG), boxed=True)
    for preset in shd.RULE_PRESETS:
      shd.validate_rules(boxed, shd.logical_axis_rules(preset))
  # A name without a rule is an error (it would otherwise be replicated silently).
  rules = tuple(r for r in shd.logical_axis_rules("fsdp") if r[0] != "mlp")
  with pytest.raises(ValueError, match=r"'mlp' \(e\.g\. .*intermediate"):
    shd.validate_rules(abstract_params(MobileBertForQuestionAnswering(CONFIG), boxed=True), rules)


def test_logical_to_mesh_spec_priority_and_divisibility():
  mesh = shd.make_mesh((2, 4))
  fsdp = shd.logical_axis_rules("fsdp")
  # mlp outranks bottleneck; the layer axis is never sharded.
  assert shd.logical_to_mesh_spec(("layers", "bottleneck", "mlp"), (24, 128, 512), mesh, fsdp) == P(
    None, None, "fsdp"
  )
  # The released vocabulary (30522 = 2·3·5087) does not divide fsdp=4: the table shards `embed`.
  assert shd.logical_to_mesh_spec(("vocab", "embed"), (30522, 128), mesh, fsdp) == P(None, "fsdp")
  assert shd.logical_to_mesh_spec(("vocab", "embed"), (30520, 128), mesh, fsdp) == P("fsdp", None)
  # Nothing divisible: replicated rather than a jit error.
  assert shd.logical_to_mesh_spec(("hidden",), (30,), mesh, fsdp) == P(None)
  # Activations: the batch claims both mesh axes before `hidden` could claim fsdp.
  assert shd.logical_to_mesh_spec(("batch", "length", "hidden"), (16, 8, 32), mesh, fsdp) == P(
    ("data", "fsdp"), None, None
  )
  dp = shd.logical_axis_rules("dp")
  assert shd.logical_to_mesh_spec(("bottleneck", "mlp"), (128, 512), mesh, dp) == P(None, None)


@pytest.mark.parametrize("preset", ["dp", "fsdp"])
def test_train_state_shardings_follow_the_rules(preset):
  model = MobileBertForQuestionAnswering(CONFIG)
  tx = optimizer()
  mesh = shd.make_mesh((2, 4))
  sh = shd.train_state_shardings(model, tx, mesh, shd.logical_axis_rules(preset))
  layers = sh.params["mobilebert"]["encoder"]["layers"]
  specs = {
    "ffn_in": layers["ffn_0"]["intermediate"]["kernel"].spec,  # (layers, bottleneck, mlp)
    "ffn_out": layers["ffn_0"]["output"]["kernel"].spec,  # (layers, mlp, bottleneck)
    "bottleneck_in": layers["bottleneck_input"]["dense"]["kernel"].spec,  # (layers, hidden, b)
    "key_bias": layers["attention"]["key"]["bias"].spec,  # (layers, heads, kv)
    "words": sh.params["mobilebert"]["embeddings"]["word_embeddings"].spec,  # (vocab, embed)
    "qa": sh.params["qa_outputs"]["kernel"].spec,  # (hidden, classes)
  }
  if preset == "dp":
    assert all(all(a is None for a in spec) for spec in specs.values()), specs
  else:
    assert specs == {
      "ffn_in": P(None, None, "fsdp"),
      "ffn_out": P(None, "fsdp", None),
      "bottleneck_in": P(None, "fsdp", None),
      "key_bias": P(None, None, None),
      "words": P("fsdp", None),
      "qa": P("fsdp", None),
    }
  # The optimizer's Adam moments follow the parameters; its scalar counters are replicated.
  adam = sh.opt_state["adam"]
  assert jax.tree.structure(adam.mu) == jax.tree.structure(sh.params)
  assert shd.spec_tree(adam.mu) == shd.spec_tree(sh.params)
  assert shd.spec_tree(adam.nu) == shd.spec_tree(sh.params)
  assert adam.count.spec == P()
  assert sh.step.spec == P() and sh.rng.spec == P()
  text = shd.format_shardings(
    shd.abstract_train_state(model, tx, mesh, shd.logical_axis_rules(preset))
  )
  line = next(
    x for x in text.splitlines() if "ffn_0']['intermediate']['kernel']" in x and "params" in x
  )
  assert "(2, 16, 32) float32" in line


def test_optimizer_state_shardings_follow_parameter_copies():
  mesh = shd.make_mesh((2, 4))
  params = {
    "w": jax.ShapeDtypeStruct((8, 4), jnp.float32),
    "b": jax.ShapeDtypeStruct((3,), jnp.float32),
  }
  param_sh = {"w": NamedSharding(mesh, P("fsdp", None)), "b": NamedSharding(mesh, P())}

  def specs(tx):
    state = jax.eval_shape(tx.init, params)
    return shd.spec_tree(shd.shard_like_params(state, params, param_sh, mesh))

  trace = specs(optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1, momentum=0.9)))
  assert trace[1][0].trace == {"w": P("fsdp", None), "b": P()}
  masked = specs(optax.masked(optax.adam(1e-3), {"w": True, "b": False})).inner_state[0]
  assert masked.mu == {"w": P("fsdp", None), "b": optax.MaskedNode()}
  assert masked.count == P()
  # Factored statistics have other shapes than their parameter: replicated.
  factored = specs(optax.adafactor(1e-3, min_dim_size_to_factor=2))[0]
  assert factored.v_row == {"w": P(), "b": P()} and factored.v_col == {"w": P(), "b": P()}


# ----------------------------------------------------------------------------------------------
# Sharded state and training
# ----------------------------------------------------------------------------------------------


def test_sharded_init_matches_single_device_and_is_really_sharded(reference):
  model, tx = reference["model"], reference["tx"]
  mesh = shd.make_mesh((2, 4))
  state = shd.create_train_state(model, tx, mesh, shd.logical_axis_rules("fsdp"), rng=0)
  kernel = state.params["mobilebert"]["encoder"]["layers"]["ffn_0"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == P(None, None, "fsdp")
  assert kernel.shape == (2, 16, 32)
  assert {s.data.shape for s in kernel.addressable_shards} == {(2, 16, 8)}
  mu = state.opt_state["adam"].mu["mobilebert"]["encoder"]["layers"]["ffn_0"]["intermediate"]
  assert {s.data.shape for s in mu["kernel"].addressable_shards} == {(2, 16, 8)}
  # Same numbers as the one-device init: the partitionable threefry PRNG ignores the layout.
  host = to_host(state)
  for got, want in zip(
    jax.tree.leaves(host.params), jax.tree.leaves(reference["init_state"].params), strict=True
  ):
    np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(host.rng, reference["init_state"].rng)


# Under `dp` every mesh shape is the same 8-way batch split (checked on 8x1); under `fsdp` the
# 2x4 and 1x8 meshes shard weights 4 and 8 ways (8x1 would shard nothing).
@pytest.mark.parametrize("mesh_shape,preset", [((8, 1), "dp"), ((2, 4), "fsdp"), ((1, 8), "fsdp")])
def test_sharded_training_matches_single_device(reference, mesh_shape, preset):
  mesh = shd.make_mesh(mesh_shape)
  losses_, state, traces, metrics = run_training(
    reference["model"],
    reference["tx"],
    mesh,
    shd.logical_axis_rules(preset),
    reference["init_state"],
    reference["batches"],
  )
  assert traces == 1, "the step recompiled"
  loss_err = float(np.max(np.abs(losses_ - reference["losses"]) / np.abs(reference["losses"])))
  param_err = rel_error(
    without_shift_only_params(jax.device_get(state.params)),
    without_shift_only_params(reference["params"]),
  )
  print(f"{mesh_shape} {preset}: loss rel err {loss_err:.2e}, params rel err {param_err:.2e}")
  assert loss_err <= RTOL
  assert param_err <= RTOL
  # Training moved the parameters by far more than the tolerance, so the check has teeth.
  assert rel_error(reference["params"], reference["init_state"].params) > 1e3 * RTOL
  for got, want in zip(metrics, reference["metrics"], strict=True):
    assert set(got) == {
      "loss",
      "grad_norm",
      "update_norm",
      "param_norm",
      "learning_rate",
      "start_accuracy",
    }
    for key in ("grad_norm", "param_norm", "start_accuracy", "learning_rate"):
      np.testing.assert_allclose(got[key], want[key], rtol=RTOL)
  assert [float(m["learning_rate"]) for m in metrics] == pytest.approx(
    [1e-2, 0.99e-2, 0.98e-2], rel=1e-5
  )
  # The state kept its layout through the donated steps.
  kernel = state.params["mobilebert"]["encoder"]["layers"]["ffn_0"]["intermediate"]["kernel"]
  assert kernel.sharding.spec == (
    P(None, None, "fsdp") if preset == "fsdp" else P(None, None, None)
  )


def test_gradient_accumulation_matches_the_full_batch(reference):
  config = CONFIG.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = MobileBertForQuestionAnswering(config)  # same parameters, no dropout
  tx = reference["tx"]
  init_state = reference["init_state"]
  batches = make_batches(2, seed=1)
  full_losses, full, _, _ = run_training(
    model, tx, one_device_mesh(), shd.logical_axis_rules("dp"), init_state, batches
  )
  accum_losses, accum, traces, _ = run_training(
    model,
    tx,
    shd.make_mesh((2, 4)),
    shd.logical_axis_rules("fsdp"),
    init_state,
    batches,
    grad_accum_steps=2,
  )
  assert traces == 1
  np.testing.assert_allclose(accum_losses, full_losses, rtol=RTOL)
  assert (
    rel_error(
      without_shift_only_params(jax.device_get(accum.params)),
      without_shift_only_params(jax.device_get(full.params)),
    )
    <= RTOL
  )
  with pytest.raises(ValueError, match="positive integer"):
    steps.make_train_step(steps.model_loss_fn(model, qa_loss), tx, grad_accum_steps=0)


def test_sharded_eval_matches_single_device(reference):
  model = reference["model"]
  params = reference["params"]
  batch = reference["batches"][0]

  def outputs_fn(out, batch):
    return {"start_logits": out.start_logits, "end_logits": out.end_logits}

  eval_step = steps.make_eval_step(model, outputs_fn=outputs_fn)
  results = []
  for mesh, preset in [(one_device_mesh(), "dp"), (shd.make_mesh((2, 4)), "fsdp")]:
    rules = shd.logical_axis_rules(preset)
    sh = shd.train_state_shardings(model, reference["tx"], mesh, rules)
    fn = shd.jit_eval_step(eval_step, mesh, rules, sh.params)
    out = fn(
      jax.device_put(params, sh.params),
      distributed.global_batch_from_local(batch, shd.batch_sharding(mesh)),
    )
    assert out["start_logits"].shape == (BATCH, LENGTH)
    assert out["start_logits"].sharding.is_fully_replicated
    results.append(jax.device_get(out))
  assert rel_error(results[1], results[0]) <= RTOL


def test_create_train_state_from_params_places_given_weights(reference):
  model, tx = reference["model"], reference["tx"]
  mesh = shd.make_mesh((2, 4))
  sh = shd.train_state_shardings(model, tx, mesh, shd.logical_axis_rules("fsdp"))
  state = shd.create_train_state_from_params(reference["params"], tx, sh, rng=3)
  assert int(state.step) == 0
  words = state.params["mobilebert"]["embeddings"]["word_embeddings"]
  assert words.sharding.spec == P("fsdp", None)
  np.testing.assert_array_equal(
    words, reference["params"]["mobilebert"]["embeddings"]["word_embeddings"]
  )
  assert float(optax.tree.norm(state.opt_state["adam"].mu)) == 0.0
  with pytest.raises(ValueError, match="does not match"):
    shd.create_train_state_from_params({"mobilebert": {}}, tx, sh)


# ----------------------------------------------------------------------------------------------
# Multi-host helpers (single process here) and reporting
# ----------------------------------------------------------------------------------------------


def test_global_batch_from_local_and_batch_helpers():
  mesh = shd.make_mesh((2, 4))
  local = {"input_ids": np.arange(16 * 3).reshape(16, 3), "weights": np.ones(16, np.float32)}
  batch = distributed.global_batch_from_local(local, shd.batch_sharding(mesh))
  assert batch["input_ids"].shape == (16, 3)
  assert batch["input_ids"].sharding.spec == P(("data", "fsdp"))
  assert {s.data.shape for s in batch["input_ids"].addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(batch["input_ids"], local["input_ids"])
  with pytest.raises(ValueError, match="common leading"):
    distributed.global_batch_from_local(
      {"a": np.zeros((16, 2)), "b": np.zeros((8,))}, shd.batch_sharding(mesh)
    )
  with pytest.raises(ValueError, match="cannot be split"):
    distributed.global_batch_from_local({"a": np.zeros((12, 2))}, shd.batch_sharding(mesh))
  assert distributed.local_batch_size(32, process_count=4) == 8
  with pytest.raises(ValueError, match="multiple of the process count"):
    distributed.local_batch_size(30, process_count=4)


def test_initialize_distributed_is_a_no_op_unless_asked(monkeypatch):
  monkeypatch.delenv(distributed.DISTRIBUTED_ENV, raising=False)
  assert distributed.initialize_distributed() is False
  assert distributed.initialize_distributed(False) is False
  monkeypatch.setenv(distributed.DISTRIBUTED_ENV, "1")
  assert distributed.distributed_requested() is True
  assert distributed.distributed_requested(False) is False


def test_startup_line_reports_the_setup():
  mesh = shd.make_mesh((2, 4))
  n = shd.count_params(abstract_params(MobileBertForQuestionAnswering(CONFIG)))
  line = shd.describe_setup(mesh, 32, n, "fsdp")
  assert re.search(r"devices=8 \(8 local, cpu\) processes=1 \(this=0\)", line), line
  assert "mesh={'data': 2, 'fsdp': 4} rules=fsdp global_batch=32 (per device 4)" in line
  assert f"params={n:,}" in line and n > 10_000
