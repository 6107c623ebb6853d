"""The TF2 mode of distillation against the TF2 Model Garden's own `BertDistillationTask`.

The reference is tf-models-official 2.20's `official/projects/mobilebert/distillation.py`, run as
it is (`tf2_distillation_reference`: only its missing base-class module is stood in for) on a
tiny teacher/student pair with every variable random and a padded batch. Its weights reach JAX
through the project's TF2 importer (`load_pretrained`). For every stage (layer-wise and
pretraining distillation) the summed loss, each reported term, every trainable variable's
gradient and the norms Keras clips gathered tables by match ours within 1e-5 relative; two
steps of the stage's optimizer (`task.get_optimizer`: bias-corrected LAMB with per-variable
`clipnorm`), both fed TF's gradients, match too, on unrolled and scanned trees. So do the
learning-rate schedules, the variables each stage trains and the embedding copy of
`task.initialize`. A deeper teacher with `transfer_teacher_layers` checks the layer map.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official.nlp.modeling")

import tf2_distillation_reference as tfref  # noqa: E402
import tf_reference_util as ref  # noqa: E402

from mobilebert_jax import MobileBertForPreTraining  # noqa: E402
from mobilebert_jax.train import optim  # noqa: E402
from mobilebert_jax.train import tf2_distillation as tf2  # noqa: E402
from mobilebert_jax.weights import layout, load_pretrained, tf2_names  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.usefixtures("fast_compiles")]

TOLERANCE = ref.RELATIVE_TOLERANCE
# Rates for the optimizer-step comparison: large enough that an update stands well above the
# float32 rounding of the weights it changes (at 1.5e-3 a weight's last bit is ~4e-5 of its
# update). The PD stage keeps a warm-up, so its first step has rate 0 and its second not.
LAYER_WISE_RATES = {"initial_learning_rate": 0.05, "end_learning_rate": 0.05, "decay_steps": 10}
PRETRAIN_RATES = {
  "initial_learning_rate": 0.05,
  "end_learning_rate": 0.01,
  "decay_steps": 4,
  "warmup_steps": 1,
}
# The NSP head is a Model Garden `ClassificationHead`: dense + tanh on [CLS] is our pooler.
NSP_NAMES = {
  "student/next_sentence/pooler_dense/kernel": ("mobilebert", "pooler", "dense", "kernel"),
  "student/next_sentence/pooler_dense/bias": ("mobilebert", "pooler", "dense", "bias"),
  "student/next_sentence/logits/kernel": ("cls", "seq_relationship", "kernel"),
  "student/next_sentence/logits/bias": ("cls", "seq_relationship", "bias"),
}


def get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def set_(tree, path, value):
  for key in path[:-1]:
    tree = tree[key]
  tree[path[-1]] = jnp.asarray(value)


class Pair:
  """A teacher/student pair in the Model Garden task and in JAX, with TF's per-stage results."""

  def __init__(
    self, directory, teacher_tf1, student_tf1, *, teacher_act, layer_map=None, stages, steps
  ):
    self.layer_map = layer_map
    self._ours = {}
    self.task, self.progressive = tfref.build_task(
      teacher_tf1, student_tf1, transfer_teacher_layers=layer_map
    )
    task = self.task
    for pretrainer in (task._teacher_pretrainer, task._student_pretrainer):
      pretrainer(pretrainer.inputs)  # creates every variable (heads included) before randomising
    # Sharp teacher attention (query/key kernels ×3): the double softmax of the TF2 loss then
    # sees probabilities far from uniform, and padded keys at exactly 0.
    tfref.randomize_(task._teacher_pretrainer, seed=1, attention_gain=3.0)
    tfref.randomize_(task._student_pretrainer, seed=2, attention_gain=2.0)
    self.tf_batch = tfref.make_batch(teacher_tf1["vocab_size"])
    self.num_layers = student_tf1["num_hidden_layers"]

    # Default schedules first, then the step-test rates (the task reads its config per stage).
    steps_probe = [0, 1, 5_000, 9_999, 10_000, 10_001, 250_000, 509_999, 600_000]
    self.default_rates = {
      stage: tfref.schedule_values(task, stage, steps_probe) for stage in (0, self.num_layers)
    }
    self.steps_probe = steps_probe
    self.progressive.layer_wise_distill_config.override(LAYER_WISE_RATES)
    self.progressive.pretrain_distill_config.override(PRETRAIN_RATES)
    self.results = {s: tfref.run_stage(task, s, self.tf_batch, steps) for s in stages}

    # Into JAX through the project's importer.
    teacher_dir, student_dir = directory / "teacher", directory / "student"
    teacher_prefix = tfref.save(task._teacher_pretrainer, str(teacher_dir))
    student_prefix = tfref.save(task._student_pretrainer, str(student_dir))
    self.teacher_model, self.teacher_params = self._load(
      teacher_prefix, teacher_tf1, hidden_act=teacher_act
    )
    self.student_model, self.student_params = self._load(
      student_prefix, student_tf1, classifier_activation=True
    )
    for name, path in NSP_NAMES.items():  # the importer reads encoder and MLM head only
      variable = [v for v in task._student_pretrainer.variables if v.name == f"{name}:0"]
      set_(self.student_params, path, variable[0].numpy())
    self.batch = {
      "input_ids": self.tf_batch["input_word_ids"],
      "attention_mask": self.tf_batch["input_mask"],
      "token_type_ids": self.tf_batch["input_type_ids"],
      **{k: v for k, v in self.tf_batch.items() if k.startswith(("masked_lm", "next_sentence"))},
    }
    config = self.student_model.config
    self.paths = {
      m.theirs: m.ours for m in tf2_names.variable_table(config, "MobileBertForPreTraining")
    }
    self.paths.update({name: path for name, path in NSP_NAMES.items()})

    # Last: the Model Garden's own initialisation (teacher restore, embedding copy by position).
    task.task_config.teacher_model_init_checkpoint = teacher_prefix
    task.initialize(None)
    self.initialized_embeddings = {
      tfref.variable_name(v): v.numpy()
      for v in task._student_pretrainer.encoder_network.embedding_layer.weights
    }

  @staticmethod
  def _load(prefix, tf1_config, **overrides):
    config = ref.our_config(tf1_config, **overrides)
    model, params, report = load_pretrained(
      prefix, MobileBertForPreTraining, config=config, return_report=True
    )
    # What the importer leaves fresh: the NSP head (and the student's pooler) that a Model
    # Garden pretrainer keeps in a classification head, or (teacher) does not have.
    fresh = {"cls/seq_relationship/kernel", "cls/seq_relationship/bias"}
    if config.classifier_activation:
      fresh |= {"mobilebert/pooler/dense/kernel", "mobilebert/pooler/dense/bias"}
    assert set(report.initialized) == fresh, (report.initialized, report.unused)
    return model, jax.tree.map(lambda x: x, params)  # mutable containers for the NSP copy

  def path(self, tf_name):
    return self.paths[tf2_names.canonical_variable_name(tf_name)]

  def ours(self, stage):
    """Our `loss_and_grads` of the stage (computed once)."""
    if stage in self._ours:
      return self._ours[stage]
    fn = jax.jit(
      functools.partial(
        tf2.loss_and_grads,
        self.student_model,
        self.teacher_model,
        stage=stage,
        layer_map=self.layer_map,
      )
    )
    self._ours[stage] = fn(self.student_params, self.teacher_params, self.batch)
    return self._ours[stage]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  # A ReLU teacher: the Model Garden's GELU teacher runs the exact GELU in its encoder but the
  # tanh one in its MLM head (tf2_distillation_reference.TEACHER), which no single `hidden_act`
  # of ours reproduces in the PD stage. `deep_pair` covers the GELU teacher.
  teacher = {**tfref.TEACHER, "hidden_act": "relu"}
  return Pair(
    tmp_path_factory.mktemp("tf2_pair"),
    teacher,
    tfref.STUDENT,
    teacher_act="relu",
    stages=(0, 1, 2),
    steps=2,
  )


@pytest.fixture(scope="module")
def deep_pair(tmp_path_factory):
  teacher = {**tfref.TEACHER, "num_hidden_layers": 4}
  return Pair(
    tmp_path_factory.mktemp("tf2_deep"),
    teacher,
    tfref.STUDENT,
    teacher_act="gelu",  # exact erf, as Keras resolves the encoder's "gelu"
    layer_map=[1, 3],
    stages=(0, 1),
    steps=0,
  )


TERM_NAMES = {
  "feature_transfer_mse": "feature",
  "attention_transfer_loss": "attention",
  "beta_transfer_loss": "mean",
  "gamma_transfer_loss": "variance",
  "lm_example_loss": "mlm",
  "next_sentence_loss": "nsp",
}


def check_loss_and_gradients(pair: Pair, stage: int) -> float:
  expected = pair.results[stage]
  loss, terms, grads, _ = pair.ours(stage)
  errors = {"loss": ref.relative_error(loss, expected.loss)}
  assert {TERM_NAMES[k] for k in expected.terms} == set(terms)
  for name, value in expected.terms.items():
    errors[name] = ref.relative_error(terms[TERM_NAMES[name]], value)
  for name, grad in expected.grads.items():
    ours = get(grads, pair.path(name))
    if name.endswith("/key/bias"):
      # Zero in exact arithmetic (softmax ignores a shift shared by every key of a query), so
      # both sides hold rounding noise: check that it is noise, against the query bias's.
      scale = np.max(np.abs(expected.grads[name.replace("/key/", "/query/")]))
      errors[f"grad {name} (zero)"] = max(np.max(np.abs(ours)), np.max(np.abs(grad))) / scale
      continue
    errors[f"grad {name}"] = ref.relative_error(ours, grad)
  return ref.assert_parity(errors, TOLERANCE)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_loss_terms_and_gradients_match_tf2(pair, stage):
  worst = check_loss_and_gradients(pair, stage)
  print(f"stage {stage}: max relative error of loss, terms and gradients {worst:.2e}")


@pytest.mark.parametrize("stage", [0, 1])
def test_transfer_teacher_layers_match_tf2(deep_pair, stage):
  worst = check_loss_and_gradients(deep_pair, stage)
  print(f"teacher 4 / student 2, map [1, 3], stage {stage}: max relative error {worst:.2e}")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_trainable_variables_match_tf2(pair, stage):
  mask = tf2.trainable_mask(pair.student_params, stage, pair.num_layers)
  trainable = {
    optim.path_to_str(path)
    for path, m in jax.tree_util.tree_leaves_with_path(mask)
    if float(np.max(m)) > 0
  }
  expected = {"/".join(pair.path(name)) for name in pair.results[stage].grads}
  assert trainable == expected


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_gathered_table_norms_match_tf2(pair, stage):
  # The norms Keras clips IndexedSlices gradients by (the gathered tables' token rows).
  _, _, _, gathered = pair.ours(stage)
  expected = pair.results[stage].clip_norms
  assert set(gathered) == {"/".join(pair.path(name)) for name in expected}
  errors = {
    name: ref.relative_error(gathered["/".join(pair.path(name))], norm)
    for name, norm in expected.items()
  }
  ref.assert_parity(errors, TOLERANCE)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_optimizer_steps_match_tf2(pair, stage):
  # Both optimizers take TF's gradients (ours match them to ~1e-6, but LAMB divides each entry
  # by its own √v + ε, which magnifies any difference in entries whose gradient is near ε:
  # an end-to-end comparison would measure that conditioning, not the optimizer).
  expected = pair.results[stage]
  grads = jax.tree.map(jnp.zeros_like, pair.student_params)
  for name, grad in expected.grads.items():
    set_(grads, pair.path(name), grad)
  gathered = {"/".join(pair.path(n)): jnp.float32(v) for n, v in expected.clip_norms.items()}
  layer_wise = tf2.StageSchedule(**LAYER_WISE_RATES)
  pretrain = tf2.StageSchedule(**PRETRAIN_RATES)
  tx, schedule = tf2.stage_optimizer(
    stage, pair.num_layers, layer_wise=layer_wise, pretrain=pretrain
  )
  params = pair.student_params
  state = tx.init(params)
  update = jax.jit(functools.partial(tx.update, gathered_norms=gathered))
  errors = {}
  for step, tf_updates in enumerate(expected.updates):
    assert float(schedule(step)) == pytest.approx(expected.learning_rates[step], rel=1e-6)
    updates, state = update(grads, state, params)
    for name, delta in tf_updates.items():
      if name.endswith("/key/bias"):
        # Its gradient is rounding noise (~1e-9 in the PD stage), so the step is far below the
        # float32 resolution of the weight and `delta` is mostly that weight's rounding.
        continue
      ours = np.asarray(get(updates, pair.path(name)))
      if not np.any(delta):  # the PD stage's first step: rate 0
        assert not np.any(ours), name
        continue
      errors[f"step {step} {name}"] = ref.relative_error(ours, delta)
    params = optax.apply_updates(params, updates)
  moments = state["adam"]
  for name, (m, v) in expected.moments.items():
    errors[f"m {name}"] = ref.relative_error(get(moments.mu, pair.path(name)), m)
    errors[f"v {name}"] = ref.relative_error(get(moments.nu, pair.path(name)), v)
  # Frozen parameters: no update, moments held at 0.
  mask = tf2.trainable_mask(pair.student_params, stage, pair.num_layers)
  leaves = zip(*(jax.tree.leaves(t) for t in (updates, moments.mu, mask)), strict=True)
  for leaf_update, leaf_mu, m in leaves:
    frozen = np.broadcast_to(np.asarray(m) == 0, leaf_update.shape)
    assert not np.any(np.asarray(leaf_update)[frozen]) and not np.any(np.asarray(leaf_mu)[frozen])
  worst = ref.assert_parity(errors, TOLERANCE)
  print(f"stage {stage}: two optimizer steps, max relative error {worst:.2e}")


def test_gathered_tables_are_clipped_by_their_token_rows(pair):
  # Keras clips an IndexedSlices gradient by the norm of its un-summed rows: with repeated
  # tokens that differs from the dense gradient's norm, and TF's step follows the former.
  _, _, grads, gathered = pair.ours(0)
  word = "mobilebert/embeddings/word_embeddings"
  dense_norm = float(jnp.linalg.norm(grads["mobilebert"]["embeddings"]["word_embeddings"]))
  assert set(gathered) == {word, "mobilebert/embeddings/token_type_embeddings"}
  assert abs(float(gathered[word]) - dense_norm) > 0.01 * dense_norm
  _, _, _, gathered_pd = pair.ours(pair.num_layers)  # the tied MLM layer makes it dense there
  assert set(gathered_pd) == {"mobilebert/embeddings/token_type_embeddings"}


@pytest.mark.parametrize("stage", [0, 2])
def test_default_schedules_match_tf2(pair, stage):
  schedule = tf2.LAYER_WISE_SCHEDULE if stage < pair.num_layers else tf2.PRETRAIN_SCHEDULE
  ours = [float(schedule(step)) for step in pair.steps_probe]
  np.testing.assert_allclose(ours, pair.default_rates[stage], rtol=1e-6, atol=0)
  if stage == pair.num_layers:  # warm-up from 0 to the decayed rate: half of it at 5k
    assert ours[0] == 0.0 and ours[2] == pytest.approx(0.5 * ours[4], rel=1e-6)


def test_embedding_copy_matches_tf2_initialize(pair):
  config, teacher_config = pair.student_model.config, pair.teacher_model.config
  copied, names = tf2.copy_embeddings_tf2(
    pair.student_params,
    pair.teacher_params,
    config.normalization_type,
    teacher_config.normalization_type,
  )
  assert len(names) == 7
  assert "mobilebert/embeddings/norm/scale <- mobilebert/embeddings/norm/bias" in names
  for name, value in pair.initialized_embeddings.items():
    np.testing.assert_array_equal(get(copied, pair.path(name)), value, err_msg=name)
  # The swap (quirk 4): the student's NoNorm scale is now the teacher's LayerNorm shift.
  teacher_norm = pair.teacher_params["mobilebert"]["embeddings"]["norm"]
  np.testing.assert_array_equal(
    copied["mobilebert"]["embeddings"]["norm"]["scale"], teacher_norm["bias"]
  )
  # Everything outside the embedding layer is the student's own.
  untouched = {k: v for k, v in copied.items() if k != "mobilebert"}
  assert jax.tree.all(
    jax.tree.map(lambda a, b: a is b, untouched, {k: pair.student_params[k] for k in untouched})
  )


def test_scanned_tree_takes_the_same_step(pair):
  # Stage 0 on a scanned tree ([L, ...] leaves under `encoder/layers`): block 0 trains, block 1
  # is frozen inside the same leaves, and the step is still TF's.
  expected = pair.results[0]
  grads = jax.tree.map(jnp.zeros_like, pair.student_params)
  for name, grad in expected.grads.items():
    set_(grads, pair.path(name), grad)
  gathered = {"/".join(pair.path(n)): jnp.float32(v) for n, v in expected.clip_norms.items()}
  params, grads = layout.stack_layers(pair.student_params), layout.stack_layers(grads)
  tx, _ = tf2.stage_optimizer(0, pair.num_layers, layer_wise=tf2.StageSchedule(**LAYER_WISE_RATES))
  updates, _ = jax.jit(functools.partial(tx.update, gathered_norms=gathered))(
    grads, tx.init(params), params
  )
  updates = layout.unstack_layers(updates)
  errors = {
    name: ref.relative_error(get(updates, pair.path(name)), delta)
    for name, delta in expected.updates[0].items()
    if not name.endswith("/key/bias")
  }
  assert not np.any(
    np.asarray(updates["mobilebert"]["encoder"]["layer_1"]["ffn_0"]["output"]["kernel"])
  )
  ref.assert_parity(errors, TOLERANCE)


def test_embedding_copy_names_a_mismatched_tensor(pair):
  teacher = jax.tree.map(lambda x: x, pair.teacher_params)
  teacher["mobilebert"]["embeddings"]["word_embeddings"] = jnp.zeros((65, 8))
  with pytest.raises(ValueError, match=r"word_embeddings \(65, 8\).*word_embeddings \(64, 8\)"):
    tf2.copy_embeddings_tf2(pair.student_params, teacher, "no_norm", "layer_norm")


def test_pd_loss_adds_up_over_replicas(pair):
  # With R replicas the Model Garden differentiates Σ_r loss_r, each normalised on its slice.
  halves = [{k: v[i : i + 1] for k, v in pair.batch.items()} for i in (0, 1)]
  assert pair.batch["masked_lm_weights"][1].sum() != pair.batch["masked_lm_weights"][0].sum()

  def losses(student_params):
    def loss(batch, **kwargs):
      return tf2.distillation_loss(
        pair.student_model, pair.teacher_model, student_params, pair.teacher_params, batch, **kwargs
      )

    return loss(pair.batch, num_replicas=2), [loss(half)[0] for half in halves]

  (total, terms), parts = jax.jit(losses)(pair.student_params)
  np.testing.assert_allclose(total, sum(parts), rtol=1e-6)
  assert abs(float(total) - 2 * float(pair.ours(pair.num_layers)[0])) > 1e-3  # not 2× global
  assert set(terms) == {"mlm", "nsp"}
