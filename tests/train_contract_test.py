"""The training contract the trainers share (`train.steps`, `train.sharding`, `train.train_state`).

* a frozen tree (a teacher) is a jit argument: not donated, not baked in as a constant, and new
  values need no recompile;
* a model's mutable collection is carried in `TrainState.collections`: updated by every step,
  threaded through accumulated microbatches in order, and round-tripped through a checkpoint;
* fine-tuning's loss (`model_loss_fn`) with no frozen tree and no collections is unchanged;
* on resume only the implementation switches that keep the parameters may be overridden.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from resume_worker import CONFIG

from mobilebert_jax import MobileBertForQuestionAnswering
from mobilebert_jax.train import checkpointing, initialization, sharding, steps, train_state
from mobilebert_jax.train import losses as loss_lib

BATCH = 8
LENGTH = 12

pytestmark = pytest.mark.usefixtures("fast_compiles")


def qa_batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  mask = (np.arange(LENGTH)[None, :] < rng.integers(6, LENGTH + 1, (BATCH, 1))).astype(np.int32)
  return {
    "input_ids": (rng.integers(1, CONFIG.vocab_size, (BATCH, LENGTH)) * mask).astype(np.int32),
    "attention_mask": mask,
    "start_positions": rng.integers(0, 6, BATCH).astype(np.int32),
    "end_positions": rng.integers(0, 6, BATCH).astype(np.int32),
  }


def one_device():
  mesh = sharding.make_mesh((1, 1), devices=jax.devices()[:1])
  return mesh, sharding.logical_axis_rules("dp")


# ----------------------------------------------------------------------------------------------
# The frozen tree
# ----------------------------------------------------------------------------------------------


def distillation_loss(model: nn.Module):
  """Student logits against a frozen teacher's (same architecture), a distillation in small."""

  def loss_fn(params, batch, rng, context):
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    student = model.apply({"params": params}, **inputs, deterministic=False, rngs={"dropout": rng})
    teacher = model.apply({"params": context.frozen["teacher"]}, **inputs, deterministic=True)
    teacher = jax.lax.stop_gradient(teacher)
    loss = jnp.mean((student.start_logits - teacher.start_logits) ** 2)
    return loss, {"step_seen": context.step.astype(jnp.float32)}, context.collections

  return loss_fn


def test_frozen_tree_is_an_argument_neither_donated_nor_a_constant():
  model = MobileBertForQuestionAnswering(CONFIG)
  tx = optax.sgd(1e-2)
  mesh, rules = one_device()
  state_sh = sharding.train_state_shardings(model, tx, mesh, rules)
  frozen_sh = {"teacher": state_sh.params}
  step = sharding.jit_train_step(
    steps.make_train_step(distillation_loss(model), tx), mesh, rules, state_sh, frozen_sh
  )
  state = sharding.create_train_state(model, tx, mesh, rules, rng=0)
  teacher_a = sharding.create_train_state(model, tx, mesh, rules, rng=1).params
  teacher_b = sharding.create_train_state(model, tx, mesh, rules, rng=2).params
  # Only what the loss reads (JAX drops unused arguments from the executable).
  inputs = {k: v for k, v in qa_batch().items() if k in ("input_ids", "attention_mask")}
  batch = jax.device_put(inputs, sharding.batch_sharding(mesh))

  lowered = step.lower(state, batch, {"teacher": teacher_a})
  (state_info, _, frozen_info), _ = lowered.args_info
  assert all(a.donated for a in jax.tree.leaves(state_info))
  assert not any(a.donated for a in jax.tree.leaves(frozen_info))
  # The executable's entry takes every state leaf, the batch and every teacher leaf; a
  # closed-over teacher would be constants inside the program instead.
  main = re.search(r"func\.func public @main\((.*?)\) ->", lowered.as_text(), re.S).group(1)
  num_args = len(re.findall(r"%arg\d+:", main))
  num_teacher = len(jax.tree.leaves(teacher_a))
  assert num_args == len(jax.tree.leaves(state)) + len(batch) + num_teacher
  closed_over = jax.jit(
    lambda s, b: steps.make_train_step(distillation_loss(model), tx)(s, b, {"teacher": teacher_a})
  )
  with jax.set_mesh(mesh):
    baked = closed_over.lower(state, batch).as_text()
  # What the argument form avoids: the teacher's values written into the program (hex, 8
  # characters per float32).
  teacher_size = sum(x.size for x in jax.tree.leaves(teacher_a))
  assert len(baked) - len(lowered.as_text()) > 4 * teacher_size

  initial = jax.device_get(state.params)
  state_copy = jax.tree.map(jnp.copy, state)
  state_a, metrics_a = step(state, batch, {"teacher": teacher_a})
  assert not any(x.is_deleted() for x in jax.tree.leaves(teacher_a))  # still usable
  _, metrics_b = step(state_copy, batch, {"teacher": teacher_b})
  assert step.jitted._cache_size() == 1  # new teacher values, same executable
  assert float(metrics_a["loss"]) != float(metrics_b["loss"])
  assert float(metrics_a["step_seen"]) == 0.0
  # The student moved towards the teacher.
  moved = [
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(state_a.params), jax.tree.leaves(initial), strict=True)
  ]
  assert max(moved) > 0


# ----------------------------------------------------------------------------------------------
# Mutable collections
# ----------------------------------------------------------------------------------------------


class RangeTracker(nn.Module):
  """A dense layer that tracks a moving average of its input's absolute maximum (a QAT range)."""

  decay: float = 0.5

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    x = x.astype(jnp.float32)
    seen = self.variable("quant_stats", "amax", lambda: jnp.full((), 6.0, jnp.float32))
    if not deterministic and not self.is_initializing():
      seen.value = self.decay * seen.value + (1 - self.decay) * jnp.max(jnp.abs(x))
    kernel = self.param(
      "kernel",
      nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "hidden")),
      (x.shape[-1], 3),
    )
    return jnp.clip(x, -seen.value, seen.value) @ kernel


def tracker_loss():
  model = RangeTracker()

  def task_loss(outputs, batch):
    return jnp.mean((outputs - batch["y"]) ** 2), {}

  return model, steps.model_loss_fn(model, task_loss, model_inputs_fn=lambda b: {"x": b["x"]})


def tracker_batch(seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {
    "x": rng.normal(size=(BATCH, 4)).astype(np.float32) * np.arange(1, BATCH + 1)[:, None],
    "y": rng.normal(size=(BATCH, 3)).astype(np.float32),
  }


def test_collections_are_updated_threaded_and_checkpointed(tmp_path, monkeypatch):
  # `sharding` builds models from `dummy_inputs`; give this toy model float inputs.
  monkeypatch.setattr(sharding, "dummy_inputs", lambda model: jnp.zeros((1, 4), jnp.float32))
  model, loss_fn = tracker_loss()
  tx = optax.sgd(1e-2)
  mesh, rules = one_device()
  state_sh = sharding.train_state_shardings(model, tx, mesh, rules)
  assert set(state_sh.collections) == {"quant_stats"}
  state = sharding.create_train_state(model, tx, mesh, rules, rng=0)
  assert float(state.collections["quant_stats"]["amax"]) == 6.0
  batch = tracker_batch()
  amax = np.abs(batch["x"]).max()

  whole = sharding.jit_train_step(steps.make_train_step(loss_fn, tx), mesh, rules, state_sh)
  updated, _ = whole(jax.tree.map(jnp.copy, state), batch)
  np.testing.assert_allclose(updated.collections["quant_stats"]["amax"], 0.5 * 6 + 0.5 * amax)

  # With two microbatches (rows 0, 2, 4, ... and 1, 3, 5, ...) the second sees the first's value.
  accumulated = sharding.jit_train_step(
    steps.make_train_step(loss_fn, tx, grad_accum_steps=2), mesh, rules, state_sh
  )
  updated2, _ = accumulated(jax.tree.map(jnp.copy, state), batch)
  first, second = np.abs(batch["x"][0::2]).max(), np.abs(batch["x"][1::2]).max()
  expected = 0.5 * (0.5 * 6 + 0.5 * first) + 0.5 * second
  np.testing.assert_allclose(updated2.collections["quant_stats"]["amax"], expected, rtol=1e-6)

  # The eval step reads the collections (and does not update them).
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, model_inputs_fn=lambda b: {"x": b["x"]}),
    mesh,
    rules,
    state_sh.params,
    state_sh.collections,
  )
  clipped = eval_step(updated.params, {"x": batch["x"]}, updated.collections)
  unclipped = eval_step(updated.params, {"x": batch["x"]}, {"quant_stats": {"amax": 1e9}})
  assert not np.allclose(clipped, unclipped)

  with checkpointing.CheckpointManager(tmp_path / "ckpt", save_interval_steps=1) as manager:
    manager.save(1, updated)
  with checkpointing.CheckpointManager(tmp_path / "ckpt", read_only=True) as manager:
    restored = manager.restore(sharding.abstract_train_state(model, tx, mesh, rules)).state
  assert isinstance(restored, train_state.TrainState)
  np.testing.assert_array_equal(
    restored.collections["quant_stats"]["amax"], updated.collections["quant_stats"]["amax"]
  )
  np.testing.assert_array_equal(restored.params["kernel"], updated.params["kernel"])


def test_fine_tuning_loss_matches_a_direct_apply():
  """`model_loss_fn` without collections is exactly the task loss of a plain `model.apply`."""
  model = MobileBertForQuestionAnswering(CONFIG)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = nn.meta.unbox(params)
  batch = qa_batch(1)
  key = jax.random.key(5)

  def task_loss(out, b):
    return loss_lib.question_answering_loss(
      out.start_logits, out.end_logits, b["start_positions"], b["end_positions"]
    ), {}

  context = steps.StepContext(step=jnp.int32(0), collections={}, frozen=None)
  loss, aux, collections = steps.model_loss_fn(model, task_loss)(params, batch, key, context)
  out = model.apply(
    {"params": params},
    input_ids=batch["input_ids"],
    attention_mask=batch["attention_mask"],
    deterministic=False,
    rngs={"dropout": key},
  )
  assert float(loss) == float(task_loss(out, batch)[0])
  assert aux == {} and collections == {}


# ----------------------------------------------------------------------------------------------
# Resume overrides
# ----------------------------------------------------------------------------------------------


def test_resume_applies_implementation_switches_and_refuses_the_rest():
  saved = CONFIG.replace(remat_policy="none")
  same = initialization.resume_model_config(saved, {"hidden_size": CONFIG.hidden_size})
  assert same == saved
  switched = initialization.resume_model_config(
    saved, {"remat_policy": "full", "dtype": "bfloat16"}
  )
  assert (switched.remat_policy, switched.dtype) == ("full", "bfloat16")
  assert switched.replace(remat_policy="none", dtype=saved.dtype) == saved
  with pytest.raises(ValueError, match=r"hidden_dropout_prob=0\.3 \(checkpoint: 0\.1\)") as err:
    initialization.resume_model_config(saved, {"hidden_dropout_prob": 0.3, "dtype": "bfloat16"})
  assert "dtype" not in str(err.value).split("Only")[0]
  with pytest.raises(ValueError, match="scan_layers"):
    initialization.resume_model_config(saved, {"scan_layers": not saved.scan_layers})
