"""Distillation's pieces (`train.distillation`) against a transcription of the original (TF1).

* the student's initialisation from the teacher (what is copied, what is not, shape errors);
* the layer map;
* stage k computed with blocks 0..k only equals the full computation (loss and gradients);
* the TF1 reference: phase 1's losses transcribed from `run_pretraining.py` (written here with
  jax.numpy, so that jax.grad gives their gradients on the same model forward), the original's
  gated LAMB and, from a fresh optimizer, phase 2's soft-target MLM + NSP with TF1's LAMB and
  warm-up, in NumPy; steps cross every stage boundary and go into phase 2, and our staged
  steps (`transfer_loss_fn` / `distillation_loss_fn` in `steps.make_train_step`) must give the
  same parameters and moments within 1e-5 relative.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForPreTraining, init_params
from mobilebert_jax.train import distillation, optim, steps
from mobilebert_jax.train.train_state import TrainState

pytestmark = pytest.mark.usefixtures("fast_compiles")

LAYERS = 3
PERIOD = 2  # steps per stage
LR = 1.5e-3
WEIGHT_DECAY = 0.01
VOCAB, LENGTH, BATCH, PREDICTIONS = 40, 8, 3, 3
PHASE2_STEPS, PHASE2_WARMUP, PHASE2_END_RATE = 3, 2, 0.1


def tiny_configs(scan_layers: bool) -> tuple[MobileBertConfig, MobileBertConfig]:
  """(student, teacher): a NoNorm bottleneck student and a LayerNorm IB-BERT-like teacher."""
  shared = dict(
    vocab_size=VOCAB,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=LAYERS,
    num_attention_heads=2,
    max_position_embeddings=16,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  student = MobileBertConfig.from_preset(
    "mobilebert-uncased",
    **shared,
    intra_bottleneck_size=8,
    intermediate_size=16,
    num_feedforward_networks=2,
    scan_layers=scan_layers,
  )
  teacher = MobileBertConfig.from_preset(
    "ibbert-large",
    **shared,
    intra_bottleneck_size=32,
    intermediate_size=32,
    num_feedforward_networks=1,
    scan_layers=False,
  )
  return student, teacher


def randomised(params, seed: int, sharp_attention: bool = True):
  """Every leaf random (norm scales around 1); query/key larger, so attention is not uniform."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  for path, value in flat.items():
    name = "/".join(path)
    noise = rng.standard_normal(value.shape).astype(np.float32)
    if name.endswith("norm/scale") or name.endswith("layer_norm/scale"):
      flat[path] = 1.0 + 0.1 * noise
    elif sharp_attention and re.search(r"attention/(query|key)/kernel", name):
      flat[path] = 0.6 * noise
    else:
      flat[path] = 0.15 * noise
  return traverse_util.unflatten_dict(flat)


def random_batch(seed: int) -> dict[str, jnp.ndarray]:
  """A padded batch with masked positions, some of whose weights are 0."""
  rng = np.random.default_rng(seed)
  lengths = np.array([LENGTH, 5, 6])
  mask = (np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
  weights = np.ones((BATCH, PREDICTIONS), np.float32)
  weights[1, 2] = 0.0
  return {
    "input_ids": jnp.asarray(rng.integers(1, VOCAB, (BATCH, LENGTH)) * mask, jnp.int32),
    "attention_mask": jnp.asarray(mask),
    "token_type_ids": jnp.asarray((np.arange(LENGTH)[None, :] >= 3) * mask, jnp.int32),
    "masked_lm_positions": jnp.asarray([[1, 4, 6], [0, 2, 3], [1, 2, 5]], jnp.int32),
    "masked_lm_ids": jnp.asarray(rng.integers(1, VOCAB, (BATCH, PREDICTIONS)), jnp.int32),
    "masked_lm_weights": jnp.asarray(weights),
    "next_sentence_labels": jnp.asarray([0, 1, 1], jnp.int32),
  }


@pytest.fixture(scope="module")
def models():
  """(student model, teacher model, student params, teacher params), unrolled student."""
  student_config, teacher_config = tiny_configs(scan_layers=False)
  student, teacher = (
    MobileBertForPreTraining(student_config),
    MobileBertForPreTraining(teacher_config),
  )
  return (
    student,
    teacher,
    randomised(init_params(student, 0), 1),
    randomised(init_params(teacher, 0), 2),
  )


# ----------------------------------------------------------------------------------------------
# Initialisation and the layer map
# ----------------------------------------------------------------------------------------------


def test_copy_from_teacher_takes_what_the_original_takes(models):
  student, teacher, student_params, teacher_params = models
  copied, report = distillation.copy_from_teacher(
    student_params,
    teacher_params,
    student_config=student.config,
    teacher_config=teacher.config,
  )
  assert set(report.copied) == {
    "mobilebert/embeddings/word_embeddings",
    "mobilebert/embeddings/position_embeddings",
    "mobilebert/embeddings/token_type_embeddings",
    "mobilebert/embeddings/embedding_transformation/kernel",
    "mobilebert/embeddings/embedding_transformation/bias",
    "cls/predictions/transform_dense/kernel",
    "cls/predictions/transform_dense/bias",
    "cls/predictions/transform_layer_norm/scale",
    "cls/predictions/transform_layer_norm/bias",
    "cls/predictions/extra_output_weights",
    "cls/predictions/bias",
    "cls/seq_relationship/kernel",
    "cls/seq_relationship/bias",
  }
  # NoNorm student, LayerNorm teacher: the original's names differ, the norm is not copied.
  assert set(report.kept) == {"mobilebert/embeddings/norm/scale", "mobilebert/embeddings/norm/bias"}
  flat, old = traverse_util.flatten_dict(copied), traverse_util.flatten_dict(student_params)
  source = traverse_util.flatten_dict(teacher_params)
  for path, value in flat.items():
    name = "/".join(path)
    expected = source[path] if name in report.copied else old[path]
    np.testing.assert_array_equal(value, expected, err_msg=name)


def test_copy_from_teacher_names_the_mismatched_tensor(models):
  student, teacher, student_params, teacher_params = models
  flat = traverse_util.flatten_dict(teacher_params)
  flat[("mobilebert", "embeddings", "word_embeddings")] = np.zeros((VOCAB + 5, 8), np.float32)
  with pytest.raises(
    ValueError, match=r"word_embeddings is \(45, 8\) in the teacher but \(40, 8\)"
  ):
    distillation.copy_from_teacher(
      student_params,
      traverse_util.unflatten_dict(flat),
      student_config=student.config,
      teacher_config=teacher.config,
    )


@pytest.mark.parametrize(
  "spec, student, teacher, expected",
  [
    ("", 3, 3, (0, 1, 2)),
    ("uniform", 2, 4, (1, 3)),
    ("uniform", 12, 24, tuple(range(1, 24, 2))),
    ("1,3", 2, 4, (1, 3)),
    ([0, 2], 2, 3, (0, 2)),
  ],
)
def test_layer_map(spec, student, teacher, expected):
  assert distillation.resolve_layer_map(spec, student, teacher) == expected


@pytest.mark.parametrize(
  "spec, student, teacher, message",
  [
    ("", 2, 4, "layer_map"),
    ("uniform", 3, 4, "multiple"),
    ("3,1", 2, 4, "increasing"),
    ("0,4", 2, 4, "increasing"),
    ("1", 2, 4, "1 entries for 2"),
    ("a,b", 2, 4, "comma-separated"),
  ],
)
def test_bad_layer_maps_are_named(spec, student, teacher, message):
  with pytest.raises(ValueError, match=message):
    distillation.resolve_layer_map(spec, student, teacher)


# ----------------------------------------------------------------------------------------------
# Stage k runs blocks 0..k only, with the full computation's loss and gradient
# ----------------------------------------------------------------------------------------------


def settings(**changes) -> distillation.TransferSettings:
  return distillation.TransferSettings(
    layer_map=tuple(range(LAYERS)), steps_per_stage=PERIOD, **changes
  )


@pytest.mark.parametrize("step", [1, 3, 4, 5])
def test_a_stage_computes_only_its_blocks_with_the_full_result(models, step):
  student, teacher, student_params, teacher_params = models
  transfer = settings()
  stage = transfer.stage_of(step)
  assert transfer.blocks(stage) == (stage + 1, stage + 1)
  context = steps.StepContext(step=jnp.int32(step), collections={}, frozen=teacher_params)
  batch = random_batch(step)

  def loss_of(loss_fn):
    def f(params):
      loss, terms, _ = loss_fn(params, batch, jax.random.key(0), context)
      return loss, terms

    return jax.jit(jax.value_and_grad(f, has_aux=True))(student_params)

  (staged, terms), staged_grads = loss_of(
    distillation.transfer_loss_fn(student, teacher, transfer, stage)
  )
  (full, full_terms), full_grads = loss_of(
    distillation.transfer_loss_fn(student, teacher, transfer, LAYERS - 1)
  )
  assert float(staged) > 0
  np.testing.assert_allclose(staged, full, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), terms, full_terms)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), staged_grads,
               full_grads)  # fmt: skip
  # Later blocks get no gradient from the stage's loss.
  later = staged_grads["mobilebert"]["encoder"][f"layer_{LAYERS - 1}"]
  if stage < LAYERS - 1:
    assert all(float(jnp.max(jnp.abs(g))) == 0.0 for g in jax.tree.leaves(later))


# ----------------------------------------------------------------------------------------------
# The TF1 reference
# ----------------------------------------------------------------------------------------------


def tf1_layer_norm(x):
  """contrib `layer_norm` without parameters (ε 1e-12), over the last axis."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) / jnp.sqrt(variance + 1e-12)


def tf1_phase1_loss(student_model, teacher_model, params, teacher_params, batch, step):
  """`run_pretraining.py`'s layer-wise loss with the gate of each layer at global step `step`."""
  inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  kwargs = dict(output_hidden_states=True, output_attention_logits=True)
  s = student_model.apply({"params": params}, **inputs, **kwargs)
  t = teacher_model.apply({"params": teacher_params}, **inputs, **kwargs)
  t_hidden = [jax.lax.stop_gradient(h) for h in t.hidden_states]
  t_maps = [jax.lax.stop_gradient(a) for a in t.attention_logits]
  total = 0.0
  for layer in range(LAYERS):
    # piecewise_constant([P·ℓ, P·(ℓ+1)], [0, 1, 0.1]) > 0.5
    gate = ((PERIOD * layer < step) & (step <= PERIOD * (layer + 1))).astype(jnp.float32)
    h_s, h_t = s.hidden_states[layer + 1], t_hidden[layer + 1]
    feature = jnp.mean(jnp.square(tf1_layer_norm(h_t) - tf1_layer_norm(h_s)))
    mean_s, mean_t = jnp.mean(h_s, -1), jnp.mean(h_t, -1)
    var_s = jnp.mean(jnp.square(h_s - mean_s[..., None]), -1)
    var_t = jnp.mean(jnp.square(h_t - mean_t[..., None]), -1)
    beta = jnp.mean(jnp.square(mean_t - mean_s))
    gamma = jnp.mean(jnp.abs(var_t - var_s))
    target = jax.nn.softmax(t_maps[layer], -1)
    attention = jnp.mean(-jnp.sum(target * jax.nn.log_softmax(s.attention_logits[layer], -1), -1))
    total = total + gate * (100 * feature + 5000 * beta + 5 * gamma + attention) / LAYERS
  return total


def tf1_phase2_loss(student_model, teacher_model, params, teacher_params, batch):
  """Pretraining distillation: CE against 0.5·one-hot + 0.5·softmax(teacher) + NSP."""
  inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
  positions = batch["masked_lm_positions"]
  s = student_model.apply({"params": params}, **inputs, masked_positions=positions)
  t = teacher_model.apply({"params": teacher_params}, **inputs, masked_positions=positions)
  targets = 0.5 * jax.nn.one_hot(batch["masked_lm_ids"], VOCAB) + 0.5 * jax.nn.softmax(
    jax.lax.stop_gradient(t.prediction_logits), -1
  )
  per_position = -jnp.sum(targets * jax.nn.log_softmax(s.prediction_logits, -1), -1)
  w = batch["masked_lm_weights"]
  mlm = jnp.sum(w * per_position) / (jnp.sum(w) + 1e-5)
  labels = jax.nn.one_hot(batch["next_sentence_labels"], 2)
  nsp = jnp.mean(-jnp.sum(labels * jax.nn.log_softmax(s.seq_relationship_logits, -1), -1))
  return mlm + nsp


def tf1_multiplier(step: int, name: str) -> float:
  """3·bg(s)·{0, 1, 0.1} for `bert/encoder/layer_ℓ/...`, 0 for every other variable."""
  match = re.search(r"encoder/layer_(\d+)/", name)
  if not match:
    return 0.0
  layer, r = int(match.group(1)), step % PERIOD
  bg = min(0.9 + 0.1 * math.sqrt(1 - r / PERIOD), 10 * r / PERIOD)
  pc = 0.0 if step <= PERIOD * layer else 1.0 if step <= PERIOD * (layer + 1) else 0.1
  return 3 * bg * pc


def tf1_lamb_step(params, m, v, grads, multipliers, rate):
  """TF1's LAMB (no bias correction) with the phase-1 gates, float32, per variable name."""
  b1, b2, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-6)
  norm = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in grads.values()))
  scale = np.float32(min(1.0 / norm, 1.0)) if norm > 0 else np.float32(1.0)
  out = ({}, {}, {})
  for name, w in params.items():
    g = grads[name] * scale
    multiplier = np.float32(multipliers[name])
    gate = np.float32(multiplier > 0)
    next_m = gate * (b1 * m[name] + np.float32(1 - 0.9) * g)
    next_v = gate * (b2 * v[name] + np.float32(1 - 0.999) * np.square(g))
    update = next_m / (np.sqrt(next_v) + eps)
    excluded = name.endswith("bias") or "norm/" in name  # LayerNorm, FakeLayerNorm, bias
    if not excluded:
      update = update + np.float32(WEIGHT_DECAY) * w * gate
    ratio = np.float32(1.0)
    if not excluded:
      w_norm, u_norm = np.linalg.norm(w), np.linalg.norm(update)
      if w_norm > 0 and u_norm > 0:
        ratio = w_norm / u_norm
    out[0][name] = w - multiplier * ratio * np.float32(rate) * update
    out[1][name], out[2][name] = next_m, next_v
  return out


def tf1_phase2_rate(step: int) -> float:
  """TF1: polynomial (linear) decay to lr·end over the run, warm-up to the undecayed lr."""
  decayed = (LR - LR * PHASE2_END_RATE) * (1 - step / PHASE2_STEPS) + LR * PHASE2_END_RATE
  return LR * step / PHASE2_WARMUP if step < PHASE2_WARMUP else decayed


def flat_numpy(tree) -> dict[str, np.ndarray]:
  return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def assert_close(ours, reference: dict[str, np.ndarray], what: str) -> None:
  """Each leaf within 1e-5 of its largest entry, or of 1e-3 of the tree's largest: the key bias
  has a zero gradient in exact arithmetic (softmax ignores a constant per query), so its moments
  are rounding noise on both sides."""
  floor = 1e-3 * max(float(np.max(np.abs(x))) for x in reference.values())
  for name, value in flat_numpy(ours).items():
    expected = reference[name]
    scale = max(float(np.max(np.abs(expected))), floor, 1e-30)
    error = float(np.max(np.abs(value - expected))) / scale
    assert error <= 1e-5, f"{what}: {name} differs by {error:.2e} (relative to its max)"


@pytest.mark.slow
def test_staged_phase_one_and_phase_two_match_the_original(models):
  student, teacher, student_params, teacher_params = models
  params, _ = distillation.copy_from_teacher(
    student_params, teacher_params, student_config=student.config, teacher_config=teacher.config
  )
  transfer = settings()
  phase1_total = LAYERS * PERIOD

  # Ours: the staged steps of the trainer, with the phase-1 optimizer.
  tx = distillation.transfer_optimizer(
    transfer, total_steps=phase1_total, name="lamb", learning_rate=LR, end_lr_rate=1.0
  ).transformation
  state = TrainState.create(params=params, optimizer=tx, rng=jax.random.key(0))
  compiled = {}

  def our_step(state, batch, loss_fn_for_stage, stage):
    if stage not in compiled:
      compiled[stage] = jax.jit(steps.make_train_step(loss_fn_for_stage(stage), tx))
    return compiled[stage](state, batch, teacher_params)

  # The reference's state, by TF1-style variable names (our "/"-joined paths).
  ref = flat_numpy(params)
  ref_m = {k: np.zeros_like(x) for k, x in ref.items()}
  ref_v = {k: np.zeros_like(x) for k, x in ref.items()}
  treedef = traverse_util.flatten_dict(params)

  def unflatten(flat):
    return traverse_util.unflatten_dict({k: jnp.asarray(flat["/".join(k)]) for k in treedef})

  tf1_loss_and_grad = jax.jit(
    jax.value_and_grad(
      lambda p, batch, s: tf1_phase1_loss(student, teacher, p, teacher_params, batch, s)
    )
  )
  for step in range(phase1_total):
    batch = random_batch(100 + step)
    stage = transfer.stage_of(step)
    state, metrics = our_step(
      state,
      batch,
      lambda k: distillation.transfer_loss_fn(student, teacher, transfer, k),
      stage,
    )
    reference_loss, grads = tf1_loss_and_grad(unflatten(ref), batch, jnp.int32(step))
    grads = flat_numpy(grads)
    multipliers = {name: tf1_multiplier(step, name) for name in ref}
    ref, ref_m, ref_v = tf1_lamb_step(ref, ref_m, ref_v, grads, multipliers, LR)
    np.testing.assert_allclose(metrics["loss"], reference_loss, rtol=1e-5, atol=1e-7)
    assert (float(reference_loss) > 0) == (step > 0)  # no gate is on at s = 0
    adam = state.opt_state.inner["adam"]
    assert_close(state.params, ref, f"phase 1 step {step} params")
    assert_close(adam.mu, ref_m, f"phase 1 step {step} first moments")
    assert_close(adam.nu, ref_v, f"phase 1 step {step} second moments")
  # Embeddings and heads never moved in phase 1.
  for name in ("mobilebert/embeddings/word_embeddings", "cls/seq_relationship/kernel"):
    np.testing.assert_array_equal(flat_numpy(state.params)[name], flat_numpy(params)[name])

  # Phase 2: a fresh optimizer and step counter from phase 1's weights.
  phase2_tx = optim.build_optimizer(
    "lamb",
    LR,
    total_steps=PHASE2_STEPS,
    warmup_steps=PHASE2_WARMUP,
    end_lr_rate=PHASE2_END_RATE,
    weight_decay=WEIGHT_DECAY,
  ).transformation
  state = TrainState.create(params=state.params, optimizer=phase2_tx, rng=jax.random.key(0))
  phase2_step = jax.jit(
    steps.make_train_step(
      distillation.distillation_loss_fn(student, teacher, distillation.DistillationSettings()),
      phase2_tx,
    )
  )
  ref_m = {k: np.zeros_like(x) for k, x in ref.items()}
  ref_v = {k: np.zeros_like(x) for k, x in ref.items()}
  phase2_loss_and_grad = jax.jit(
    jax.value_and_grad(lambda p, batch: tf1_phase2_loss(student, teacher, p, teacher_params, batch))
  )
  for step in range(PHASE2_STEPS):
    batch = random_batch(200 + step)
    state, metrics = phase2_step(state, batch, teacher_params)
    reference_loss, grads = phase2_loss_and_grad(unflatten(ref), batch)
    grads = flat_numpy(grads)
    ref, ref_m, ref_v = tf1_lamb_step(
      ref, ref_m, ref_v, grads, dict.fromkeys(ref, 1.0), tf1_phase2_rate(step)
    )
    np.testing.assert_allclose(metrics["loss"], reference_loss, rtol=1e-5)
    assert_close(state.params, ref, f"phase 2 step {step} params")
    assert_close(state.opt_state["adam"].mu, ref_m, f"phase 2 step {step} first moments")
    assert_close(state.opt_state["adam"].nu, ref_v, f"phase 2 step {step} second moments")


def test_a_bfloat16_teacher_gives_nearly_the_same_transfer_loss(models):
  student, teacher, student_params, teacher_params = models
  transfer = settings()
  batch = random_batch(7)
  half = MobileBertForPreTraining(teacher.config.replace(dtype="bfloat16"))
  half_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), teacher_params)
  losses = []
  for model, params in ((teacher, teacher_params), (half, half_params)):
    context = steps.StepContext(step=jnp.int32(PERIOD + 1), collections={}, frozen=params)
    loss_fn = distillation.transfer_loss_fn(student, model, transfer, 1)
    loss, terms, _ = jax.jit(loss_fn)(student_params, batch, jax.random.key(0), context)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(terms))
    losses.append(float(loss))
  assert losses[0] > 0
  np.testing.assert_allclose(losses[1], losses[0], rtol=3e-2)
