"""The TF2 Model Garden's own `BertDistillationTask`, run on a tiny teacher/student pair.

tf-models-official 2.20 ships `official/projects/mobilebert/distillation.py` but not the package
it imports its base class from (`official.modeling.fast_training.progressive`; anchors §1.3
quirk 10). `install_progressive_stub` registers a minimal stand-in for
`official.modeling.fast_training.progressive.policies` in `sys.modules`: the config base class
and a policy whose only state is the stage variable that `build_losses` reads. Everything else is
the wheel's code, unchanged: the stage sub-encoders, the losses, the metrics, `get_optimizer`
(LAMB with `clipnorm`) and `initialize` (the teacher restore and the embedding copy).

`Reference` builds the task, gives every variable of both pretrainers a random value, saves them
as TF2 checkpoints (for the project's importer) and computes, per stage, what TF2 computes:
the summed loss, the reported terms, every trainable variable's gradient and two optimizer steps.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # the Model Garden runs on tf_keras

import numpy as np
import tensorflow as tf
import tf_keras
from official.modeling.hyperparams import base_config

# ----------------------------------------------------------------------------------------------
# The missing `progressive.policies` module
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _ProgressiveConfig(base_config.Config):
  """Stand-in for `policies.ProgressiveConfig` (the distillation config adds all its fields)."""


class _ProgressivePolicy:
  """Stand-in for `policies.ProgressivePolicy`: holds the stage id that the task's losses read.

  The real policy also switches stages inside the progressive trainer; here the test sets
  `_stage_id` itself and builds each stage's model and optimizer with the task's own methods.
  """

  def __init__(self):
    self._stage_id = tf.Variable(0, dtype=tf.int64, trainable=False, name="stage_id")
    self._volatiles = None  # read only by `cur_checkpoint_items`, which the test does not use

  def compute_stage_id(self, global_step: int) -> int:
    """The stage that `global_step` falls in (stages of `num_steps(i)` steps each)."""
    stage, first = 0, 0
    while stage + 1 < self.num_stages() and global_step >= first + self.num_steps(stage):
      first += self.num_steps(stage)
      stage += 1
    return stage

  def update_pt_stage(self, stage_id: int, pass_old_model: bool = True) -> None:
    del pass_old_model
    self._stage_id.assign(stage_id)


def install_progressive_stub() -> None:
  """Registers the stand-in `official.modeling.fast_training.progressive.policies` module."""
  name = "official.modeling.fast_training.progressive.policies"
  if name in sys.modules:
    return
  parts = name.split(".")
  for i in range(2, len(parts)):
    package = ".".join(parts[: i + 1])
    if package not in sys.modules:
      module = types.ModuleType(package)
      module.__path__ = []  # a package, so that the next level imports from it
      sys.modules[package] = module
  policies = types.ModuleType(name)
  policies.ProgressiveConfig = _ProgressiveConfig
  policies.ProgressivePolicy = _ProgressivePolicy
  sys.modules[name] = policies
  sys.modules[".".join(parts[:-1])].policies = policies


install_progressive_stub()

from official.modeling import optimization  # noqa: E402
from official.nlp.configs import bert, encoders  # noqa: E402
from official.nlp.data import pretrain_dataloader  # noqa: E402
from official.projects.mobilebert import distillation  # noqa: E402

# ----------------------------------------------------------------------------------------------
# The pair (anchors §1.5), as TF1 `bert_config.json` dicts (our configs are read from them)
# ----------------------------------------------------------------------------------------------

_COMMON = {
  "vocab_size": 64,
  "embedding_size": 8,
  "hidden_size": 16,
  "num_attention_heads": 2,
  "max_position_embeddings": 16,
  "type_vocab_size": 2,
  "initializer_range": 0.02,
  "trigram_input": True,
  "use_bottleneck": True,
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
}
# IB-BERT-like: LayerNorm, GELU, one FFN, Q/K/V from the block input. No pooler: the teacher's
# only head is the MLM head (`cls_heads: []` in the Model Garden's teacher yaml).
#
# Which GELU: the task builds its encoders with `encoders.build_encoder`, which hands the
# string "gelu" to Keras layers, i.e. `tf_keras.activations.gelu(approximate=False)`, the exact
# erf form (our `hidden_act="gelu"`); its MLM heads resolve `mlm_activation` with
# `tf_utils.get_activation`, whose "gelu" is the tanh approximation (our "gelu_new"). Our config
# has one activation for both, so a GELU teacher matches in the layer-wise stages only.
TEACHER = {
  **_COMMON,
  "num_hidden_layers": 2,
  "intra_bottleneck_size": 32,
  "intermediate_size": 64,
  "hidden_act": "gelu",
  "normalization_type": "layer_norm",
  "num_feedforward_networks": 1,
  "key_query_shared_bottleneck": False,
  "classifier_activation": False,
}
# MobileBERT-like: NoNorm, ReLU, two FFNs, shared query/key bottleneck. Its NSP head is the
# Model Garden's `ClassificationHead` (dense + tanh on [CLS], then a 2-way dense), which is our
# pooler + `cls/seq_relationship`: our config has the pooler, the TF2 encoder does not.
STUDENT = {
  **_COMMON,
  "num_hidden_layers": 2,
  "intra_bottleneck_size": 8,
  "intermediate_size": 16,
  "hidden_act": "relu",
  "normalization_type": "no_norm",
  "num_feedforward_networks": 2,
  "key_query_shared_bottleneck": True,
  "classifier_activation": False,
}
NSP_HEAD = "next_sentence"


def _encoder_config(tf1: dict[str, Any]) -> encoders.EncoderConfig:
  return encoders.EncoderConfig(
    type="mobilebert",
    mobilebert=encoders.MobileBertEncoderConfig(
      word_vocab_size=tf1["vocab_size"],
      word_embed_size=tf1["embedding_size"],
      type_vocab_size=tf1["type_vocab_size"],
      max_sequence_length=tf1["max_position_embeddings"],
      num_blocks=tf1["num_hidden_layers"],
      hidden_size=tf1["hidden_size"],
      num_attention_heads=tf1["num_attention_heads"],
      intermediate_size=tf1["intermediate_size"],
      hidden_activation=tf1["hidden_act"],
      hidden_dropout_prob=tf1["hidden_dropout_prob"],
      attention_probs_dropout_prob=tf1["attention_probs_dropout_prob"],
      intra_bottleneck_size=tf1["intra_bottleneck_size"],
      key_query_shared_bottleneck=tf1["key_query_shared_bottleneck"],
      num_feedforward_networks=tf1["num_feedforward_networks"],
      normalization_type=tf1["normalization_type"],
      classifier_activation=tf1["classifier_activation"],
    ),
  )


# run_distillation.py's optimizer (its `optimization_config`); `get_optimizer` replaces the rate
# and warm-up per stage from the progressive config.
OPTIMIZATION = optimization.OptimizationConfig(
  optimizer=optimization.OptimizerConfig(
    type="lamb",
    lamb=optimization.LAMBConfig(
      weight_decay_rate=0.01, exclude_from_weight_decay=["LayerNorm", "bias", "norm"], clipnorm=1.0
    ),
  ),
  learning_rate=optimization.LrConfig(
    type="polynomial",
    polynomial=optimization.PolynomialLrConfig(
      initial_learning_rate=1.5e-3, decay_steps=10000, end_learning_rate=1.5e-3
    ),
  ),
  warmup=optimization.WarmupConfig(
    type="linear", linear=optimization.LinearWarmupConfig(warmup_learning_rate=0)
  ),
)


def build_task(
  teacher: dict[str, Any],
  student: dict[str, Any],
  *,
  transfer_teacher_layers: list[int] | None = None,
  layer_wise: dict[str, Any] | None = None,
  pretrain: dict[str, Any] | None = None,
) -> tuple[distillation.BertDistillationTask, distillation.BertDistillationProgressiveConfig]:
  """The Model Garden task for this pair (run_distillation.py's settings unless overridden).

  Args:
    teacher, student: TF1 config dicts.
    transfer_teacher_layers: the teacher block of each student block.
    layer_wise, pretrain: overrides of `LayerWiseDistillConfig` / `PretrainDistillConfig`.

  Returns:
    The task, and its progressive config (the task reads it whenever it builds a stage's
    optimizer, so changing it changes the next `get_optimizer`).
  """
  progressive = distillation.BertDistillationProgressiveConfig()
  progressive.layer_wise_distill_config.transfer_teacher_layers = transfer_teacher_layers
  progressive.layer_wise_distill_config.override(layer_wise or {})
  progressive.pretrain_distill_config.override(pretrain or {})
  nsp = bert.ClsHeadConfig(
    inner_dim=student["hidden_size"],
    num_classes=2,
    activation="tanh",
    dropout_rate=0.0,
    name=NSP_HEAD,
  )
  task_config = distillation.BertDistillationTaskConfig(
    teacher_model=bert.PretrainerConfig(
      encoder=_encoder_config(teacher), cls_heads=[], mlm_activation=teacher["hidden_act"]
    ),
    student_model=bert.PretrainerConfig(
      encoder=_encoder_config(student), cls_heads=[nsp], mlm_activation=student["hidden_act"]
    ),
    train_data=pretrain_dataloader.BertPretrainDataConfig(),
    validation_data=pretrain_dataloader.BertPretrainDataConfig(is_training=False),
  )
  task = distillation.BertDistillationTask(
    strategy=tf.distribute.get_strategy(),
    progressive=progressive,
    optimizer_config=OPTIMIZATION,
    task_config=task_config,
  )
  return task, progressive


# ----------------------------------------------------------------------------------------------
# Random weights and inputs
# ----------------------------------------------------------------------------------------------


def randomize_(model: tf_keras.Model, seed: int, attention_gain: float = 1.0) -> None:
  """Gives every variable of a pretrainer a random, non-default value, in place.

  Norm scales around 1, shifts and biases around 0 (NoNorm and LayerNorm alike: their defaults
  would hide a γ/β mix-up), tables N(0, 0.5²), kernels with std 0.5/√fan_in (a NoNorm stack has
  nothing bounding its activations). `attention_gain` scales the query and key kernels, so
  that attention is far from uniform (and the double softmax of the TF2 loss is exercised away
  from its flat regime).
  """
  rng = np.random.default_rng(seed)
  seen = set()
  for variable in model.variables:
    if id(variable) in seen:
      continue
    seen.add(id(variable))
    name, shape = variable.name, tuple(variable.shape)
    if name.endswith("gamma:0"):
      value = 1.0 + 0.3 * rng.standard_normal(shape)
    elif name.endswith(("beta:0", "bias:0")):
      value = 0.3 * rng.standard_normal(shape)
    elif name.endswith("kernel:0"):
      # [in, ...] kernels, except the attention output [heads, head_size, out].
      fan_in = int(np.prod(shape[:-1])) if "attention_output" in name else shape[0]
      value = 0.5 / np.sqrt(fan_in) * rng.standard_normal(shape)
      if "/query/" in name or "/key/" in name:
        value *= attention_gain
    else:  # embedding tables, extra output weights
      value = 0.5 * rng.standard_normal(shape)
    variable.assign(value.astype(np.float32))


def make_batch(
  vocab_size: int, batch_size: int = 2, length: int = 16, predictions: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
  """A pretraining batch with padding (rows end after 16, 11, 7, ... tokens), repeated token
  ids, masked positions with some weights 0, and both NSP labels."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab_size, (batch_size, length)).astype(np.int32)
  lengths = [max(length - 5 * i, 3) for i in range(batch_size)]
  mask = (np.arange(length)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
  ids[:, 3] = ids[:, 1]  # a repeated token in every row (sparse-gradient duplicates)
  ids[mask == 0] = 0
  types = (np.arange(length)[None, :] >= np.array(lengths)[:, None] // 2).astype(np.int32) * mask
  positions = np.stack([rng.choice(n, predictions, replace=False) for n in lengths]).astype(
    np.int32
  )
  weights = np.ones((batch_size, predictions), np.float32)
  weights[-1, -1] = 0.0
  return {
    "input_word_ids": ids,
    "input_mask": mask,
    "input_type_ids": types,
    "masked_lm_positions": positions,
    "masked_lm_ids": rng.integers(0, vocab_size, (batch_size, predictions)).astype(np.int32),
    "masked_lm_weights": weights,
    "next_sentence_labels": (np.arange(batch_size) % 2).astype(np.int32)[:, None],
  }


# ----------------------------------------------------------------------------------------------
# What the task computes
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class StageResult:
  """One stage as the Model Garden computes it (NumPy).

  Attributes:
    loss: Σ of the loss tensor ([B, T] in layer-wise stages, scalar in the last stage): what
      `tape.gradient` differentiates.
    terms: the metric values `build_losses` records (one batch, so the Keras `Mean`s hold them).
    grads: TF variable name (without ":0") -> dense gradient, for every trainable variable.
    clip_norms: TF variable name -> the norm `clipnorm` uses, for the gradients that are
      `IndexedSlices` (tables read by a gather): that of their un-summed rows.
    values: TF variable name -> value before the optimizer steps.
    updates: per optimizer step, TF variable name -> new value − old value.
    moments: TF variable name -> (m, v) after the last step.
    learning_rates: the rate each step used.
  """

  loss: float
  terms: dict[str, float]
  grads: dict[str, np.ndarray]
  clip_norms: dict[str, float]
  values: dict[str, np.ndarray]
  updates: list[dict[str, np.ndarray]]
  moments: dict[str, tuple[np.ndarray, np.ndarray]]
  learning_rates: list[float]


def variable_name(variable: tf.Variable) -> str:
  return variable.name.rsplit(":", 1)[0]


def run_stage(
  task: distillation.BertDistillationTask,
  stage: int,
  batch: dict[str, np.ndarray],
  optimizer_steps: int = 2,
) -> StageResult:
  """Builds stage `stage`'s model and optimizer with the task's own methods and runs them.

  The forward pass uses `training=False`: with `training=True` (what `train_step` does) dropout
  is on in both models (anchors §1.3 quirk 6), which no deterministic comparison can follow.
  The optimizer applies the same gradients `optimizer_steps` times; the weights are restored
  afterwards, so stages can run in any order.
  """
  task.update_pt_stage(stage)
  model = task.build_model(stage)
  inputs = {k: tf.constant(v) for k, v in batch.items()}
  metrics = task.build_metrics()
  with tf.GradientTape() as tape:
    outputs = model(inputs, training=False)
    loss = task.build_losses(labels=inputs, outputs=outputs, metrics=metrics)
  variables = model.trainable_variables
  grads = tape.gradient(loss, variables)
  names = [variable_name(v) for v in variables]
  assert len(set(names)) == len(names), "duplicate variable names"
  values = {n: v.numpy() for n, v in zip(names, variables, strict=True)}
  # Keras `clipnorm` clips an IndexedSlices gradient by the norm of its rows as they are.
  clip_norms = {
    n: float(tf.norm(g.values))
    for n, g in zip(names, grads, strict=True)
    if isinstance(g, tf.IndexedSlices)
  }
  reported = {m.name: float(m.result()) for m in metrics if m.count.numpy() > 0}
  reported.pop("total_loss", None)

  optimizer = task.get_optimizer(stage)
  updates, rates = [], []
  for _ in range(optimizer_steps):
    before = [v.numpy() for v in variables]
    rates.append(float(optimizer._decayed_lr(tf.float32)))
    optimizer.apply_gradients(list(zip(grads, variables, strict=True)))
    updates.append({n: v.numpy() - b for n, v, b in zip(names, variables, before, strict=True)})
  moments = {}
  if optimizer_steps:
    moments = {
      n: (optimizer.get_slot(v, "m").numpy(), optimizer.get_slot(v, "v").numpy())
      for n, v in zip(names, variables, strict=True)
    }
  for v in variables:
    v.assign(values[variable_name(v)])
  return StageResult(
    loss=float(tf.reduce_sum(loss)),
    terms=reported,
    grads={n: tf.convert_to_tensor(g).numpy() for n, g in zip(names, grads, strict=True)},
    clip_norms=clip_norms,
    values=values,
    updates=updates,
    moments=moments,
    learning_rates=rates,
  )


def schedule_values(
  task: distillation.BertDistillationTask, stage: int, steps: list[int]
) -> list[float]:
  """The learning rate of `task.get_optimizer(stage)` at each of `steps` (0-based)."""
  schedule = task.get_optimizer(stage)._get_hyper("learning_rate")
  return [float(schedule(tf.constant(step, tf.int64))) for step in steps]


def save(pretrainer: tf_keras.Model, directory: str) -> str:
  """Writes a pretrainer as the Model Garden does (`checkpoint_items`); returns the prefix."""
  os.makedirs(directory, exist_ok=True)
  return tf.train.Checkpoint(**pretrainer.checkpoint_items).save(os.path.join(directory, "ckpt"))
