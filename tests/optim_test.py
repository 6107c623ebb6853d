"""Tests of `mobilebert_jax.train.optim` against the original update rules.

The references:
- a NumPy transcription (ours, float32 throughout) of the TF1 `LAMBOptimizer` and
  `AdamWeightDecayOptimizer` update rules of google-research `mobilebert/lamb_optimizer.py` and
  `mobilebert/optimization.py`, together with `create_optimizer`'s global-norm clipping and
  learning rate, applied to TF1-named variables with the original exclusion regexes;
- the TF2 Model Garden LAMB itself (`official.modeling.optimization.lamb.LAMB`) on tf.Variables;
- `optax.adamw`.

Tolerance. Ours and the references do the same float32 operations but not always in the same
order (sums inside the norms, `a*b*c` groupings, fused multiply-adds in XLA), so every value
may differ by a few float32 ulps per step and the differences carry through later steps. All
comparisons use the project's parity measure max|ours − ref| / max|ref| per tensor with the
project bound 1e-5 (CONTRIBUTING.md); the measured maxima are 2e-7 to 7e-7. A wrong exclusion,
a missing trust ratio or bias correction changes these tensors by 1e-3 to 1, far above the bound.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobilebert_jax import (
  MobileBertConfig,
  MobileBertForQuestionAnswering,
  init_params,
)
from mobilebert_jax.train.optim import (
  DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
  TF1_EXCLUDE_FROM_WEIGHT_DECAY,
  build_optimizer,
  path_mask,
  path_to_str,
)
from mobilebert_jax.train.schedules import build_schedule
from mobilebert_jax.weights import tf1_names

TOLERANCE = 1e-5
NUM_STEPS = 10

# Schedule of the step-by-step comparisons: step 0 has rate 0 (warm-up), steps 8 and 9 lie
# beyond the end of the decay.
LR, TOTAL_STEPS, WARMUP_STEPS, END_LR_RATE = 0.01, 8, 3, 1e-4
# Larger than the usual 0.01, so that a weight-decay mistake moves the results well above the
# tolerance.
WEIGHT_DECAY = 0.05


# ----------------------------------------------------------------------------------------------
# A toy tree shaped like a MobileBERT parameter tree, and the TF1 names of its tensors
# ----------------------------------------------------------------------------------------------

# our path -> (shape, TF1 variable name). A stacked leaf (under `encoder/layers/`) stands for
# one TF1 variable per slice of its leading axis; its name has "{}" for the layer number.
TOY_TREE = {
  "mobilebert/embeddings/word_embeddings": ((64, 16), "bert/embeddings/word_embeddings"),
  "mobilebert/embeddings/embedding_transformation/kernel": (
    (48, 32),
    "bert/embeddings/embedding_transformation/kernel",
  ),
  "mobilebert/embeddings/embedding_transformation/bias": (
    (32,),
    "bert/embeddings/embedding_transformation/bias",
  ),
  "mobilebert/embeddings/norm/scale": ((32,), "bert/embeddings/FakeLayerNorm/gamma"),
  "mobilebert/embeddings/norm/bias": ((32,), "bert/embeddings/FakeLayerNorm/beta"),
  "mobilebert/encoder/layer_0/attention/query/kernel": (
    (16, 2, 8),
    "bert/encoder/layer_0/attention/self/query/kernel",
  ),
  "mobilebert/encoder/layer_0/attention/query/bias": (
    (2, 8),
    "bert/encoder/layer_0/attention/self/query/bias",
  ),
  "mobilebert/encoder/layer_0/attention/norm/scale": (
    (16,),
    "bert/encoder/layer_0/attention/output/FakeLayerNorm/gamma",
  ),
  "mobilebert/encoder/layer_0/attention/norm/bias": (
    (16,),
    "bert/encoder/layer_0/attention/output/FakeLayerNorm/beta",
  ),
  # Initialised to zero: exercises the ‖w‖ = 0 branch of the trust ratio.
  "mobilebert/encoder/layer_0/ffn_0/output/kernel": (
    (16, 16),
    "bert/encoder/layer_0/ffn_layer_0/output/dense/kernel",
  ),
  # Stacked: layers 1 and 2 of the original; slice 1 starts at zero.
  "mobilebert/encoder/layers/bottleneck_input/dense/kernel": (
    (2, 32, 16),
    "bert/encoder/layer_{}/bottleneck/input/dense/kernel",
  ),
  "mobilebert/encoder/layers/bottleneck_input/dense/bias": (
    (2, 16),
    "bert/encoder/layer_{}/bottleneck/input/dense/bias",
  ),
  "mobilebert/encoder/layers/bottleneck_input/norm/scale": (
    (2, 16),
    "bert/encoder/layer_{}/bottleneck/input/FakeLayerNorm/gamma",
  ),
  "cls/predictions/transform_layer_norm/scale": (
    (32,),
    "cls/predictions/transform/LayerNorm/gamma",
  ),
  "cls/predictions/transform_layer_norm/bias": ((32,), "cls/predictions/transform/LayerNorm/beta"),
  "cls/predictions/bias": ((64,), "cls/predictions/output_bias"),
  "cls/seq_relationship/kernel": ((32, 2), "cls/seq_relationship/output_weights"),
}
ZERO_INIT = {"mobilebert/encoder/layer_0/ffn_0/output/kernel"}
STACK_OFFSET = 1  # slice i of a stacked leaf is TF1 layer i + 1


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree


def flatten(tree) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return {path_to_str(path): np.asarray(leaf) for path, leaf in leaves}


def to_tf1(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Our flat tree -> TF1 variables (stacked leaves split per layer)."""
  out = {}
  for path, (_, tf1_name) in TOY_TREE.items():
    if "{}" in tf1_name:
      for i, piece in enumerate(flat[path]):
        out[tf1_name.format(i + STACK_OFFSET)] = np.array(piece, np.float32)
    else:
      out[tf1_name] = np.array(flat[path], np.float32)
  return out


def toy_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
  flat = {}
  for path, (shape, _) in TOY_TREE.items():
    if path.endswith("scale"):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      value = 0.05 * rng.standard_normal(shape)
    if path in ZERO_INIT:
      value = np.zeros(shape)
    flat[path] = value.astype(np.float32)
  flat["mobilebert/encoder/layers/bottleneck_input/dense/kernel"][1] = 0.0
  return flat


def toy_grads(rng: np.random.Generator, step: int) -> dict[str, np.ndarray]:
  # Alternate small (global norm < 1, not clipped) and large (clipped) gradients, with a
  # different scale per tensor so that the per-variable trust ratios differ.
  base = 0.002 if step % 2 == 0 else 0.05
  return {
    path: (base * (1 + i % 3) * rng.standard_normal(shape)).astype(np.float32)
    for i, (path, (shape, _)) in enumerate(TOY_TREE.items())
  }


# ----------------------------------------------------------------------------------------------
# NumPy transcription of the TF1 code (float32 throughout)
# ----------------------------------------------------------------------------------------------


def tf1_learning_rate(step: int) -> np.float32:
  """`create_optimizer`: polynomial_decay(power 1) of the global step, then linear warm-up."""
  init_lr = np.float32(LR)
  end_lr = init_lr * np.float32(END_LR_RATE)
  progress = np.float32(min(step, TOTAL_STEPS)) / np.float32(TOTAL_STEPS)
  lr = (init_lr - end_lr) * (np.float32(1.0) - progress) + end_lr
  if step < WARMUP_STEPS:
    lr = init_lr * (np.float32(step) / np.float32(WARMUP_STEPS))
  return np.float32(lr)


def tf1_clip_by_global_norm(grads: dict[str, np.ndarray], clip_norm: float) -> dict:
  """`tf.clip_by_global_norm`: every tensor × clip·min(1/‖g‖, 1/clip)."""
  global_norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
  clip = np.float32(clip_norm)
  scale = clip * np.minimum(np.float32(1.0) / global_norm, np.float32(1.0) / clip)
  return {name: g * scale for name, g in grads.items()}


def tf1_excluded(name: str) -> bool:
  """`_do_use_weight_decay` / `_do_layer_adaptation` with the `create_optimizer` list."""
  return any(re.search(r, name) is not None for r in TF1_EXCLUDE_FROM_WEIGHT_DECAY)


def tf1_step(params, m, v, grads, step, *, layer_adaptation: bool):
  """One `apply_gradients` of TF1 LAMB (layer_adaptation) or AdamWeightDecayOptimizer.

  Returns the new params, m, v and the applied update (lr·ratio·u) per variable.
  """
  beta_1, beta_2, epsilon = 0.9, 0.999, 1e-6
  lr = tf1_learning_rate(step)
  grads = tf1_clip_by_global_norm(grads, 1.0)
  new_params, new_m, new_v, applied = {}, {}, {}, {}
  for name, param in params.items():
    grad = grads[name]
    next_m = np.float32(beta_1) * m[name] + np.float32(1.0 - beta_1) * grad
    next_v = np.float32(beta_2) * v[name] + np.float32(1.0 - beta_2) * np.square(grad)
    update = next_m / (np.sqrt(next_v) + np.float32(epsilon))
    if not tf1_excluded(name):
      update = update + np.float32(WEIGHT_DECAY) * param
    ratio = np.float32(1.0)
    if layer_adaptation and not tf1_excluded(name):
      w_norm = np.linalg.norm(param)
      g_norm = np.linalg.norm(update)
      if w_norm > 0 and g_norm > 0:
        ratio = w_norm / g_norm
    update_with_lr = ratio * lr * update
    new_params[name] = param - update_with_lr
    new_m[name], new_v[name], applied[name] = next_m, next_v, update_with_lr
  return new_params, new_m, new_v, applied


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  scale = np.max(np.abs(ref))
  diff = np.max(np.abs(ours - ref)) if ours.size else 0.0
  return float(diff / scale) if scale > 0 else float(diff)


def assert_close(ours: dict, ref: dict, what: str, errors: list[float]):
  assert ours.keys() == ref.keys()
  for name in ref:
    err = relative_error(ours[name], ref[name])
    errors.append(err)
    assert err <= TOLERANCE, f"{what} {name}: relative error {err:.3g}"


def our_optimizer(name: str, **overrides) -> optax.GradientTransformation:
  kwargs = dict(
    learning_rate=LR,
    total_steps=TOTAL_STEPS,
    warmup_steps=WARMUP_STEPS,
    end_lr_rate=END_LR_RATE,
    weight_decay=WEIGHT_DECAY,
  )
  kwargs.update(overrides)
  return build_optimizer(name, **kwargs).transformation


def run_ours(optimizer, flat_params, grads_per_step):
  """Runs the steps; yields (params, state, updates) as flat dicts after each step."""
  params = jax.tree.map(jnp.asarray, unflatten(flat_params))
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for grads in grads_per_step:
    updates, state = update(jax.tree.map(jnp.asarray, unflatten(grads)), state, params)
    params = optax.apply_updates(params, updates)
    yield flatten(params), state, flatten(updates)


# ----------------------------------------------------------------------------------------------
# Exclusions
# ----------------------------------------------------------------------------------------------


def test_default_exclusions_match_tf1_names_on_toy_tree():
  params = unflatten(toy_params(np.random.default_rng(0)))
  excluded = flatten(path_mask(DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY)(params))
  for path, (_, tf1_name) in TOY_TREE.items():
    assert bool(excluded[path]) == tf1_excluded(tf1_name.format(1)), path
  # Sanity: the toy tree has both kinds.
  assert 0 < sum(map(bool, excluded.values())) < len(excluded)


@pytest.mark.parametrize("normalization_type", ["no_norm", "layer_norm"])
def test_default_exclusions_match_tf1_regexes_on_the_tf1_name_table(normalization_type):
  """Every tensor a TF1 checkpoint may hold (all heads), with its original TF1 name.

  The original decision is the TF1 regex list applied to the TF1 name; ours is our default
  list applied to our path.
  """
  config = MobileBertConfig(
    vocab_size=64,
    embedding_size=16,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=16,
    intra_bottleneck_size=16,
    num_feedforward_networks=3,
    max_position_embeddings=16,
    normalization_type=normalization_type,
    classifier_activation=True,
  )
  table = tf1_names.model_table(config, "MobileBertForPreTraining")
  ours = unflatten({"/".join(t.ours): 0 for t in table})
  excluded = flatten(path_mask(DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY)(ours))
  assert len(excluded) == len(table)
  for mapping in table:
    assert bool(excluded["/".join(mapping.ours)]) == tf1_excluded(mapping.theirs), mapping
  # The embedding table and kernels are decayed; all norms and biases are not.
  assert not excluded["mobilebert/embeddings/word_embeddings"]
  assert not excluded["cls/predictions/extra_output_weights"]
  assert excluded["cls/predictions/transform_layer_norm/scale"]
  assert excluded["mobilebert/encoder/layer_1/ffn_0/norm/scale"]
  assert excluded["qa_outputs/bias"]


def test_a_frozen_teacher_subtree_leaves_the_student_update_unchanged():
  """`optax.multi_transform` with `set_to_zero`: the teacher neither moves nor counts in the
  global norm, so the student trains exactly as it would alone (TF1: no teacher gradients)."""
  rng = np.random.default_rng(8)
  student = unflatten(toy_params(rng))
  teacher = {"encoder": {"kernel": jnp.ones((4, 4)), "bias": jnp.ones(4)}}
  params = {"student": student, "teacher": teacher}
  labels = {
    "student": jax.tree.map(lambda _: "train", student),
    "teacher": {"encoder": {"kernel": "frozen", "bias": "frozen"}},
  }
  both = optax.multi_transform(
    {"train": our_optimizer("lamb"), "frozen": optax.set_to_zero()}, labels
  )
  alone = our_optimizer("lamb")
  state_both, state_alone = both.init(params), alone.init(student)
  update_both, update_alone = jax.jit(both.update), jax.jit(alone.update)
  for step in range(3):
    grads = unflatten(toy_grads(rng, step))
    # Large teacher gradients that would dominate the global norm if they were counted.
    teacher_grads = jax.tree.map(lambda x: 100.0 * jnp.ones_like(x), teacher)
    u_both, state_both = update_both(
      {"student": grads, "teacher": teacher_grads}, state_both, params
    )
    u_alone, state_alone = update_alone(grads, state_alone, student)
    params = optax.apply_updates(params, u_both)
    student = optax.apply_updates(student, u_alone)
  jax.tree.map(np.testing.assert_array_equal, params["teacher"], teacher)
  errors: list[float] = []
  assert_close(flatten(params["student"]), flatten(student), "student", errors)


def test_teacher_subtree_is_excluded():
  mask = path_mask(DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY)(
    {"teacher": {"encoder": {"kernel": 0}}, "student": {"kernel": 0}}
  )
  assert mask == {"teacher": {"encoder": {"kernel": True}}, "student": {"kernel": False}}


# ----------------------------------------------------------------------------------------------
# LAMB and AdamW against the TF1 rules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lamb", "adamw_tf1"])
def test_matches_numpy_transcription_of_tf1(name):
  rng = np.random.default_rng(1)
  flat = toy_params(rng)
  grads = [toy_grads(rng, step) for step in range(NUM_STEPS)]
  layer_adaptation = name == "lamb"

  ref_params = to_tf1(flat)
  ref_m = {k: np.zeros_like(p) for k, p in ref_params.items()}
  ref_v = {k: np.zeros_like(p) for k, p in ref_params.items()}
  errors: list[float] = []
  for step, (params, state, updates) in enumerate(run_ours(our_optimizer(name), flat, grads)):
    ref_params, ref_m, ref_v, applied = tf1_step(
      ref_params, ref_m, ref_v, to_tf1(grads[step]), step, layer_adaptation=layer_adaptation
    )
    adam = state["adam"]
    assert_close(to_tf1(params), ref_params, f"step {step} params", errors)
    assert_close(to_tf1(flatten(adam.mu)), ref_m, f"step {step} m", errors)
    assert_close(to_tf1(flatten(adam.nu)), ref_v, f"step {step} v", errors)
    negated = {k: -u for k, u in to_tf1(updates).items()}
    if step > 0:  # step 0 has lr 0: the update is 0 on both sides.
      assert_close(negated, applied, f"step {step} update", errors)
  print(f"{name} vs TF1 NumPy transcription: max relative error {max(errors):.3g}")
  # The run moved the parameters by much more than the tolerance.
  assert (
    relative_error(
      to_tf1(params)["bert/embeddings/word_embeddings"],
      to_tf1(flat)["bert/embeddings/word_embeddings"],
    )
    > 1e-3
  )


def test_tf1_lamb_differs_from_bias_corrected_and_from_optax_lamb():
  """The comparison above would catch the usual mistakes: each changes the result a lot."""
  rng = np.random.default_rng(2)
  flat = toy_params(rng)
  grads = [toy_grads(rng, step) for step in range(4)]
  ours = list(run_ours(our_optimizer("lamb"), flat, grads))[-1][0]
  corrected = list(run_ours(our_optimizer("lamb", bias_correction=True), flat, grads))[-1][0]
  optax_lamb = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.lamb(
      build_schedule(LR, TOTAL_STEPS, WARMUP_STEPS, end_lr_rate=END_LR_RATE),
      eps=1e-6,
      weight_decay=WEIGHT_DECAY,
      mask=path_mask(DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY, invert=True),
    ),
  )
  theirs = list(run_ours(optax_lamb, flat, grads))[-1][0]
  norm = "mobilebert/embeddings/norm/scale"
  kernel = "mobilebert/embeddings/embedding_transformation/kernel"
  # Bias correction changes every adaptive tensor's step (excluded ones move by lr·m̂/√v̂).
  assert relative_error(corrected[norm] - flat[norm], ours[norm] - flat[norm]) > 1e-2
  # optax.lamb applies the trust ratio to excluded leaves too.
  assert relative_error(theirs[norm] - flat[norm], ours[norm] - flat[norm]) > 1e-2
  assert np.all(np.isfinite(theirs[kernel]))


@pytest.mark.tf
@pytest.mark.parametrize("clip_mode", ["global", "per_variable"])
def test_bias_corrected_lamb_matches_tf2_model_garden(clip_mode):
  """TF2 LAMB after `tf.clip_by_global_norm`, or with Keras' per-variable `clipnorm` (as the TF2
  distillation runs it): the stacked toy leaf is clipped per layer like its TF variables."""
  tf = pytest.importorskip("tensorflow")
  tf_keras = pytest.importorskip("tf_keras")
  lamb_module = pytest.importorskip("official.modeling.optimization.lamb")

  rng = np.random.default_rng(3)
  flat = toy_params(rng)
  grads = [toy_grads(rng, step) for step in range(NUM_STEPS)]
  table = np.array([tf1_learning_rate(s) for s in range(NUM_STEPS + 1)], np.float32)
  ours_schedule = build_schedule(LR, TOTAL_STEPS, WARMUP_STEPS, end_lr_rate=END_LR_RATE)
  np.testing.assert_array_equal(np.asarray(ours_schedule(np.arange(NUM_STEPS + 1))), table)

  class TableSchedule(tf_keras.optimizers.schedules.LearningRateSchedule):
    """The same rates as ours, so that only the optimizer is compared."""

    def __call__(self, step):
      return tf.gather(tf.constant(table), tf.cast(step, tf.int32))

    def get_config(self):
      return {}

  initial = to_tf1(flat)
  variables = {name: tf.Variable(value, name=name) for name, value in initial.items()}
  # Both clipping modes act on some steps and variables, and leave others alone.
  norms = [np.linalg.norm(g) for step_grads in grads for g in to_tf1(step_grads).values()]
  assert min(norms) < 1.0 < max(norms)
  global_norms = [np.sqrt(sum(np.sum(g**2) for g in step.values())) for step in grads]
  assert min(global_norms) < 1.0 < max(global_norms)
  keras_clipping = {"clipnorm": 1.0} if clip_mode == "per_variable" else {}
  tf_lamb = lamb_module.LAMB(
    learning_rate=TableSchedule(),
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
    weight_decay_rate=WEIGHT_DECAY,
    exclude_from_weight_decay=list(TF1_EXCLUDE_FROM_WEIGHT_DECAY),
    **keras_clipping,
  )
  names = list(variables)
  errors: list[float] = []
  # The Keras optimizer keeps β1, β2 as float32 hyper-parameters and computes 1 − β in float32
  # (1 − fl(0.999) = 0.00099998713), whereas the TF1 code and optax round 1 − 0.999 computed in
  # double (0.001): a 1.3e-5 relative difference in v. Passing float32 betas makes our 1 − β the
  # same float32 subtraction.
  ours_lamb = our_optimizer(
    "lamb", bias_correction=True, b1=np.float32(0.9), b2=np.float32(0.999), clip_mode=clip_mode
  )
  ours_run = run_ours(ours_lamb, flat, grads)
  for step, (params, state, _) in enumerate(ours_run):
    step_grads = [tf.constant(to_tf1(grads[step])[n]) for n in names]
    if clip_mode == "global":
      clipped, _ = tf.clip_by_global_norm(step_grads, 1.0)
    else:
      clipped = step_grads  # the optimizer's `clipnorm` clips them
    tf_lamb.apply_gradients(zip(clipped, [variables[n] for n in names], strict=True))
    ref_params = {n: variables[n].numpy() for n in names}
    ref_m = {n: tf_lamb.get_slot(variables[n], "m").numpy() for n in names}
    ref_v = {n: tf_lamb.get_slot(variables[n], "v").numpy() for n in names}
    assert_close(to_tf1(params), ref_params, f"step {step} params", errors)
    assert_close(to_tf1(flatten(state["adam"].mu)), ref_m, f"step {step} m", errors)
    assert_close(to_tf1(flatten(state["adam"].nu)), ref_v, f"step {step} v", errors)
  print(f"LAMB vs TF2 Model Garden LAMB ({clip_mode}): max relative error {max(errors):.3g}")


def test_adamw_matches_optax_adamw_with_mask():
  rng = np.random.default_rng(4)
  flat = toy_params(rng)
  grads = [toy_grads(rng, step) for step in range(NUM_STEPS)]
  schedule = build_schedule(LR, TOTAL_STEPS, WARMUP_STEPS, end_lr_rate=END_LR_RATE)
  reference = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(
      schedule,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      weight_decay=WEIGHT_DECAY,
      mask=path_mask(DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY, invert=True),
    ),
  )
  errors: list[float] = []
  pairs = zip(
    run_ours(our_optimizer("adamw"), flat, grads), run_ours(reference, flat, grads), strict=True
  )
  for step, ((ours, state, _), (theirs, ref_state, _)) in enumerate(pairs):
    assert_close(ours, theirs, f"step {step} params", errors)
    assert_close(flatten(state["adam"].mu), flatten(ref_state[1][0].mu), f"step {step} m", errors)
    assert_close(flatten(state["adam"].nu), flatten(ref_state[1][0].nu), f"step {step} v", errors)
  print(f"adamw vs optax.adamw: max relative error {max(errors):.3g}")


def test_adamw_without_bias_correction_is_adamw_tf1():
  params = {"dense": {"kernel": jnp.full((3, 2), 0.5), "bias": jnp.full((2,), 0.1)}}
  grads = {"dense": {"kernel": jnp.full((3, 2), 0.2), "bias": jnp.full((2,), -0.3)}}
  results = []
  for name, correction in (("adamw", False), ("adamw_tf1", None), ("adamw", True)):
    opt = our_optimizer(name, bias_correction=correction)
    state = opt.init(params)
    for _ in range(3):
      updates, state = opt.update(grads, state, params)
    results.append(updates)
  jax.tree.map(np.testing.assert_array_equal, results[0], results[1])
  assert not np.allclose(results[0]["dense"]["kernel"], results[2]["dense"]["kernel"], rtol=1e-2)


# ----------------------------------------------------------------------------------------------
# Scanned layers
# ----------------------------------------------------------------------------------------------


def stack_layers(encoder: dict, num_layers: int) -> dict:
  """{layer_0: t0, layer_1: t1, ...} -> {layers: stacked}, the `nn.scan` layout."""
  layers = [encoder[f"layer_{i}"] for i in range(num_layers)]
  return {"layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(encoder: dict, num_layers: int) -> dict:
  return {
    f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], encoder["layers"]) for i in range(num_layers)
  }


def test_scanned_and_unscanned_lamb_updates_are_identical():
  layers = 3
  config = MobileBertConfig(
    vocab_size=32,
    embedding_size=8,
    hidden_size=16,
    num_hidden_layers=layers,
    num_attention_heads=2,
    intermediate_size=8,
    intra_bottleneck_size=8,
    num_feedforward_networks=1,
    max_position_embeddings=8,
  )
  # Shapes only (no compilation); the scanned layout comes from the model itself.
  unscanned_shapes = jax.eval_shape(lambda: init_params(MobileBertForQuestionAnswering(config)))
  scanned_shapes = jax.eval_shape(
    lambda: init_params(MobileBertForQuestionAnswering(config.replace(scan_layers=True)))
  )

  def to_scanned(tree):
    tree = jax.tree.map(lambda x: x, tree)  # copy of the containers
    tree["mobilebert"]["encoder"] = stack_layers(tree["mobilebert"]["encoder"], layers)
    return tree

  def to_unscanned(tree):
    tree = jax.tree.map(lambda x: x, tree)
    tree["mobilebert"]["encoder"] = unstack_layers(tree["mobilebert"]["encoder"], layers)
    return tree

  # Every layer gets a different scale, so that per-layer and whole-leaf norms differ.
  rng = np.random.default_rng(7)

  def randomise(path, x):
    layer = re.search(r"/layer_(\d+)/", path_to_str(path))
    scale = 1.0 + 3.0 * int(layer.group(1)) if layer else 1.0
    return jnp.asarray(scale * rng.standard_normal(x.shape), jnp.float32)

  unscanned = jax.tree_util.tree_map_with_path(randomise, unscanned_shapes)
  grads = [
    jax.tree.map(lambda x: jnp.asarray(0.01 * rng.standard_normal(x.shape), jnp.float32), unscanned)
    for _ in range(4)
  ]
  shape_of = lambda t: jax.tree.map(lambda x: x.shape, t)  # noqa: E731
  assert shape_of(to_scanned(unscanned)) == shape_of(scanned_shapes)

  def run(optimizer, convert):
    params = convert(unscanned)
    state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    for g in grads:
      updates, state = update(convert(g), state, params)
      params = optax.apply_updates(params, updates)
    return params

  opt = our_optimizer("lamb")
  reference = flatten(run(opt, lambda t: t))
  scanned = flatten(to_unscanned(run(opt, to_scanned)))
  errors = [relative_error(scanned[k], reference[k]) for k in reference]
  print(f"scanned vs unscanned LAMB: max relative error {max(errors):.3g}")
  assert max(errors) <= TOLERANCE

  # Without the per-layer norms the scanned run drifts away: the check above has teeth.
  wrong = flatten(to_unscanned(run(our_optimizer("lamb", stacked_layer_patterns=()), to_scanned)))
  kernel = "mobilebert/encoder/layer_0/bottleneck_input/dense/kernel"
  start = flatten(unscanned)[kernel]
  assert relative_error(wrong[kernel] - start, reference[kernel] - start) > 1e-2


# ----------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lamb", "adamw"])
def test_low_precision_grads_give_float32_state_and_updates(name):
  rng = np.random.default_rng(6)
  params = jax.tree.map(jnp.asarray, unflatten(toy_params(rng)))
  # bf16, fp16 and fp32 gradients in one tree (as a bf16-compute model may hand over).
  dtypes = [jnp.bfloat16, jnp.float16, jnp.float32]
  low = unflatten(
    {path: jnp.asarray(g, dtypes[i % 3]) for i, (path, g) in enumerate(toy_grads(rng, 1).items())}
  )
  upcast = jax.tree.map(lambda g: g.astype(jnp.float32), low)
  optimizer = our_optimizer(name)
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  for _ in range(2):
    updates, state_low = update(low, state, params)
    expected, state_f32 = update(upcast, state, params)
    for tree in (updates, state_low["adam"].mu, state_low["adam"].nu):
      assert {x.dtype for x in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}
    # The cast happens first: the rest is the float32 computation (to float32 rounding; the two
    # programs are compiled separately and XLA may order the reductions differently).
    errors: list[float] = []
    assert_close(flatten(updates), flatten(expected), "updates", errors)
    assert_close(flatten(state_low), flatten(state_f32), "state", errors)
    params, state = optax.apply_updates(params, updates), state_low
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_moments_are_float32_for_bfloat16_params():
  params = {"dense": {"kernel": jnp.ones((4, 4), jnp.bfloat16), "bias": jnp.zeros(4, jnp.bfloat16)}}
  state = our_optimizer("lamb").init(params)
  assert {x.dtype for x in jax.tree.leaves(state["adam"].mu)} == {jnp.dtype(jnp.float32)}
  assert {x.dtype for x in jax.tree.leaves(state["adam"].nu)} == {jnp.dtype(jnp.float32)}


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    (dict(name="sgd"), "Unknown optimizer 'sgd'"),
    (dict(name="adamw_tf1", bias_correction=True), "without bias correction"),
    (dict(warmup_steps=-1), "non-negative integer"),
    (dict(warmup_steps=9), "longer than the whole run"),
    (dict(warmup_steps=2, warmup_proportion=0.1), "not both"),
    (dict(warmup_steps=None, warmup_proportion=1.5), r"\[0, 1\]"),
    (dict(decay="cosine"), "Unknown learning-rate decay"),
    (dict(clip_norm=0.0), "clip_norm must be > 0"),
    (dict(clip_mode="per_layer"), "Unknown clip_mode 'per_layer'"),
    (dict(weight_decay=-0.1), "weight_decay must be >= 0"),
    (dict(b2=1.0), "b1 and b2"),
    (dict(exclude_from_weight_decay=["bias("]), r"Invalid regex 'bias\(' in exclude_from_weight"),
    (dict(name="adamw", exclude_from_layer_adaptation=["bias"]), "only applies to LAMB"),
  ],
)
def test_clear_errors(kwargs, message):
  settings = dict(name="lamb", learning_rate=1e-3, total_steps=8, warmup_steps=2)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    build_optimizer(**settings)


def test_a_bare_string_of_patterns_is_rejected():
  with pytest.raises(TypeError, match="sequence of regexes"):
    build_optimizer("lamb", 1e-3, 8, exclude_from_weight_decay="bias")


def test_ready_schedule_is_used_as_is():
  schedule = optax.constant_schedule(0.5)
  opt, returned_schedule = build_optimizer("adamw_tf1", schedule, weight_decay=0.0, clip_norm=None)
  assert returned_schedule is schedule
  params = {"w": jnp.ones(3)}
  updates, _ = opt.update({"w": jnp.ones(3)}, opt.init(params), params)
  # Step 1 without bias correction: m = 0.1, v = 0.001 → u = 0.1 / (√0.001 + 1e-6).
  expected = -0.5 * np.float32(0.1) / (np.sqrt(np.float32(0.001)) + np.float32(1e-6))
  np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)
  with pytest.raises(ValueError, match="already a schedule"):
    build_optimizer("lamb", schedule, total_steps=10)
