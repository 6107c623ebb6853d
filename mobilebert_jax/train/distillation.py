"""MobileBERT's distillation as step losses and optimizers over the shared training library.

The distillation trainer (`trainers/distillation.py`) is the pretraining loop with the teacher's
parameters as the step's frozen tree (`StepContext.frozen`: a jit argument, never donated, never
differentiated) and these pieces injected (docs/training.md §distillation for the recipe):

* `copy_from_teacher`: the student's first weights outside the encoder, as the original's
  `init_embedding` (every student variable outside the encoder whose name exists in the teacher,
  shapes required to match; the embedding norm only when both use the same normalisation, since
  TF1's names differ then: `FakeLayerNorm` vs `LayerNorm`);
* `transfer_loss_fn`: phase 1's layer-wise transfer (TF1 semantics, `transfer_losses`) of one
  stage: student and teacher run only up to the blocks the stage's losses read, so the loss and
  its gradient equal those of the full models while stage k costs k + 1 blocks;
* `distillation_loss_fn`: phase 2's MLM against α·one-hot + (1 − α)·teacher distribution, plus
  NSP on the true labels (and, for the "auxiliary" strategy, every layer's transfer terms);
* `transfer_optimizer`: LAMB inside `progressive.gate_by_layer` (per-block rates 3·bg·{0, 1, 0.1}
  and moment gates for "progressive", every block at the base rate for "joint"; everything
  outside the encoder frozen).

Both models run without dropout, as the original (`is_training=False` in both phases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import losses, optim, progressive, transfer_losses
from mobilebert_jax.train.steps import StepContext, StepLossFn

Array = jax.Array
PyTree = Any
Batch = Mapping[str, Array]

STRATEGIES = ("progressive", "joint", "auxiliary")
_ENCODER_PREFIX = ("mobilebert", "encoder")
_EMBEDDING_NORM = ("mobilebert", "embeddings", "norm")


# ----------------------------------------------------------------------------------------------
# Initialisation from the teacher
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CopyReport:
  """What `copy_from_teacher` did, by "/"-joined parameter path.

  Attributes:
    copied: taken from the teacher.
    kept: student parameters outside the encoder that the teacher lacks (or, for the embedding
      norm of a different normalisation, that the original does not copy): left as initialised.
  """

  copied: tuple[str, ...]
  kept: tuple[str, ...]


def copy_from_teacher(
  student_params: PyTree,
  teacher_params: PyTree,
  *,
  student_config: MobileBertConfig,
  teacher_config: MobileBertConfig,
) -> tuple[PyTree, CopyReport]:
  """The student's parameters with everything outside the encoder copied from the teacher.

  Both trees are `MobileBertForPreTraining` parameters (unrolled or scanned alike: nothing inside
  the encoder is touched).

  Raises:
    ValueError: a parameter both models have differs in shape (a different vocabulary,
      embedding width or block width); the message names it and both shapes.
  """
  student = traverse_util.flatten_dict(student_params)
  teacher = traverse_util.flatten_dict(teacher_params)
  same_norm = student_config.normalization_type == teacher_config.normalization_type
  copied, kept = [], []
  for path, value in student.items():
    if path[:2] == _ENCODER_PREFIX:
      continue
    name = "/".join(path)
    if path not in teacher or (path[:3] == _EMBEDDING_NORM and not same_norm):
      kept.append(name)
      continue
    source = teacher[path]
    if tuple(source.shape) != tuple(value.shape):
      raise ValueError(
        f"cannot initialise the student from the teacher: {name} is {tuple(source.shape)} in "
        f"the teacher but {tuple(value.shape)} in the student (the two must share the "
        "vocabulary, embedding size and block width)"
      )
    student[path] = jnp.asarray(source, value.dtype)
    copied.append(name)
  return traverse_util.unflatten_dict(student), CopyReport(tuple(copied), tuple(kept))


# ----------------------------------------------------------------------------------------------
# Which blocks a loss reads
# ----------------------------------------------------------------------------------------------


def resolve_layer_map(spec: str | Sequence[int] | None, student_layers: int, teacher_layers: int):
  """The teacher block j(ℓ) compared with each student block ℓ, a tuple of L_s ints.

  Args:
    spec: None or "" (the same index: the depths must agree), "uniform" (j(ℓ) = (ℓ + 1)·L_t /
      L_s − 1, the last blocks aligned), or explicit indices ("1,3" or a sequence).
    student_layers: L_s.
    teacher_layers: L_t.

  Raises:
    ValueError: depths that differ without a map, or a map of the wrong length, out of range or
      not increasing.
  """
  if spec is None or (isinstance(spec, str) and not spec.strip()):
    if student_layers != teacher_layers:
      raise ValueError(
        f"the student has {student_layers} blocks and the teacher {teacher_layers}: set "
        "--config.distill.layer_map ('uniform' or one teacher block per student block)"
      )
    return tuple(range(student_layers))
  if isinstance(spec, str) and spec.strip() == "uniform":
    if teacher_layers % student_layers:
      raise ValueError(
        f"layer_map=uniform needs the teacher's depth ({teacher_layers}) to be a multiple of "
        f"the student's ({student_layers})"
      )
    step = teacher_layers // student_layers
    return tuple((layer + 1) * step - 1 for layer in range(student_layers))
  if isinstance(spec, str):
    try:
      spec = [int(x) for x in spec.split(",")]
    except ValueError:
      raise ValueError(f"layer_map {spec!r} is not 'uniform' or comma-separated ints") from None
  mapping = tuple(int(x) for x in spec)
  if len(mapping) != student_layers:
    raise ValueError(f"layer_map has {len(mapping)} entries for {student_layers} student blocks")
  if not all(0 <= j < teacher_layers for j in mapping) or list(mapping) != sorted(set(mapping)):
    raise ValueError(
      f"layer_map {list(mapping)} must be increasing teacher blocks in [0, {teacher_layers})"
    )
  return mapping


@dataclasses.dataclass(frozen=True)
class TransferSettings:
  """How phase 1 (and the auxiliary strategy) compare the two models.

  Attributes:
    layer_map: teacher block of each student block (`resolve_layer_map`).
    semantics: the TF1 form of the losses (`transfer_losses.Semantics`).
    factors: the four loss factors.
    steps_per_stage: P, the steps of one stage (progressive strategy).
    strategy: "progressive", "joint" or "auxiliary".
  """

  layer_map: tuple[int, ...]
  semantics: transfer_losses.Semantics = dataclasses.field(
    default_factory=transfer_losses.Semantics
  )
  factors: transfer_losses.TransferFactors = dataclasses.field(
    default_factory=transfer_losses.TransferFactors
  )
  steps_per_stage: int = 1
  strategy: str = "progressive"

  @property
  def num_layers(self) -> int:
    return len(self.layer_map)

  def stage_of(self, step: int) -> int | None:
    """The stage whose compiled step runs update `step` (0-based count before it); None: all.

    Progressive: stage k holds P·k < s ≤ P·(k + 1) (s = 0, whose loss is zero, runs stage 0).
    The other strategies compare every block at every step.
    """
    if self.strategy != "progressive":
      return None
    return min(max(step - 1, 0) // self.steps_per_stage, self.num_layers - 1)

  def blocks(self, stage: int | None) -> tuple[int, int | None]:
    """(student blocks, teacher blocks) a stage's losses read; None: all of the teacher's."""
    if stage is None:
      student = self.num_layers
    else:
      student = stage + 1
    if self.semantics.tf1_all_layer_statistics:
      return student, None  # the teacher's statistics over all its hidden states
    return student, self.layer_map[student - 1] + 1

  def gates(self, step: Array) -> Array:
    """[L] weights of the blocks' transfer losses at update `step` (traced)."""
    if self.strategy == "progressive":
      return progressive.stage_gates(step, self.num_layers, self.steps_per_stage)
    return jnp.ones([self.num_layers], jnp.float32)


# ----------------------------------------------------------------------------------------------
# Step losses
# ----------------------------------------------------------------------------------------------


def _encoder(module: Any, *args: Any, **kwargs: Any) -> Any:
  """`method=` for `apply`: the encoder alone (no heads)."""
  return module.mobilebert(*args, **kwargs)


def _encoder_inputs(batch: Batch) -> dict[str, Array]:
  return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def _transfer_states(
  student_model: Any,
  teacher_model: Any,
  params: PyTree,
  teacher_params: PyTree,
  batch: Batch,
  blocks: tuple[int, int | None],
) -> tuple[Any, Any]:
  """Hidden states and attention logits of both encoders up to the blocks the losses read."""
  inputs = _encoder_inputs(batch)
  kwargs = dict(deterministic=True, output_hidden_states=True, output_attention_logits=True)
  student = student_model.apply(
    {"params": params}, **inputs, **kwargs, num_blocks=blocks[0], method=_encoder
  )
  teacher = teacher_model.apply(
    {"params": jax.lax.stop_gradient(teacher_params)},
    **inputs,
    **kwargs,
    num_blocks=blocks[1],
    method=_encoder,
  )
  return student, teacher


def _transfer_loss(
  student: Any, teacher: Any, gates: Array, settings: TransferSettings
) -> tuple[Array, dict[str, Array]]:
  return transfer_losses.progressive_transfer_loss(
    student.hidden_states,
    teacher.hidden_states,
    student.attention_logits,
    teacher.attention_logits,
    gates,
    layer_map=settings.layer_map,
    semantics=settings.semantics,
    factors=settings.factors,
  )


def transfer_loss_fn(
  student_model: Any, teacher_model: Any, settings: TransferSettings, stage: int | None
) -> StepLossFn:
  """Phase 1's step loss for the updates of `stage` (None: every block, "joint").

  The teacher's parameters are the step's frozen tree. Metrics: the four factor-scaled terms
  (`feature`, `attention`, `mean`, `variance`, summed over the gated blocks and divided by L).
  """
  blocks = settings.blocks(stage)

  def loss_fn(
    params: PyTree, batch: Batch, rng: Array, context: StepContext
  ) -> tuple[Array, dict[str, Array], PyTree]:
    del rng  # no dropout in either model
    student, teacher = _transfer_states(
      student_model, teacher_model, params, context.frozen, batch, blocks
    )
    loss, terms = _transfer_loss(student, teacher, settings.gates(context.step), settings)
    return loss, terms, context.collections

  return loss_fn


@dataclasses.dataclass(frozen=True)
class DistillationSettings:
  """Phase 2's loss (pretraining distillation).

  Attributes:
    ground_truth_ratio: α of the soft targets α·one-hot + (1 − α)·teacher distribution.
    temperature: multiplies the teacher's sequence output before its MLM head (where the
      original applies it; 1 leaves it alone).
    mlm_denominator_eps: the MLM loss is Σ w·CE / (Σ w + eps) (TF1: 1e-5).
    transfer: the transfer settings of the "auxiliary" strategy (every block's terms added to
      this loss), else None.
  """

  ground_truth_ratio: float = 0.5
  temperature: float = 1.0
  mlm_denominator_eps: float = transfer_losses.TF1_MLM_DENOMINATOR_EPS
  transfer: TransferSettings | None = None


def teacher_mlm_logits(
  module: Any,
  inputs: Mapping[str, Array],
  masked_positions: Array,
  temperature: float,
) -> Array:
  """`method=` for the teacher: MLM logits [B, P, V] with the temperature on its sequence output."""
  out = module.mobilebert(**inputs, deterministic=True)
  sequence = out.last_hidden_state
  if temperature != 1.0:
    sequence = sequence * jnp.asarray(temperature, sequence.dtype)
  table = module.mobilebert.word_embedding_table()
  logits, _ = module.cls(sequence, out.pooler_output, table, masked_positions)
  return logits


def distillation_loss_fn(
  student_model: Any, teacher_model: Any, settings: DistillationSettings
) -> StepLossFn:
  """Phase 2's step loss: soft-target MLM + NSP (+ every block's transfer terms, "auxiliary").

  Metrics: `mlm_loss` (against the soft targets), `mlm_accuracy` (against the true tokens),
  `nsp_loss`, `nsp_accuracy`, and for "auxiliary" the four transfer terms.
  """

  def loss_fn(
    params: PyTree, batch: Batch, rng: Array, context: StepContext
  ) -> tuple[Array, dict[str, Array], PyTree]:
    del rng  # no dropout in either model
    teacher_params = jax.lax.stop_gradient(context.frozen)
    inputs = _encoder_inputs(batch)
    positions = batch["masked_lm_positions"]
    auxiliary = settings.transfer is not None
    student = student_model.apply(
      {"params": params},
      **inputs,
      deterministic=True,
      masked_positions=positions,
      output_hidden_states=auxiliary,
      output_attention_logits=auxiliary,
    )
    teacher_logits = teacher_model.apply(
      {"params": teacher_params},
      inputs,
      positions,
      settings.temperature,
      method=teacher_mlm_logits,
    )
    labels, weights = batch["masked_lm_ids"], batch["masked_lm_weights"]
    mlm = transfer_losses.soft_mlm_loss(
      student.prediction_logits,
      teacher_logits,
      labels,
      weights,
      ground_truth_ratio=settings.ground_truth_ratio,
      denominator_eps=settings.mlm_denominator_eps,
    )
    nsp_logits = student.seq_relationship_logits.astype(jnp.float32)
    nsp_labels = batch["next_sentence_labels"].reshape(-1)
    nsp = losses.next_sentence_loss(nsp_logits, nsp_labels)
    w = weights.astype(jnp.float32)
    hits = (jnp.argmax(student.prediction_logits, -1) == labels).astype(jnp.float32)
    metrics = {
      "mlm_loss": mlm,
      "mlm_accuracy": jnp.sum(w * hits) / jnp.maximum(jnp.sum(w), 1e-12),
      "nsp_loss": nsp,
      "nsp_accuracy": jnp.mean((jnp.argmax(nsp_logits, -1) == nsp_labels).astype(jnp.float32)),
    }
    loss = mlm + nsp
    if auxiliary:
      blocks = settings.transfer.blocks(None)
      teacher = teacher_model.apply(
        {"params": teacher_params},
        **inputs,
        deterministic=True,
        output_hidden_states=True,
        output_attention_logits=True,
        num_blocks=blocks[1],
        method=_encoder,
      )
      transfer, terms = _transfer_loss(
        student, teacher, settings.transfer.gates(context.step), settings.transfer
      )
      loss = loss + transfer
      metrics.update(terms)
    return loss, metrics, context.collections

  return loss_fn


# ----------------------------------------------------------------------------------------------
# Phase 1's optimizer
# ----------------------------------------------------------------------------------------------


def transfer_optimizer(
  settings: TransferSettings,
  *,
  total_steps: int,
  layer_rate_boost: float = 3.0,
  **optimizer_kwargs: Any,
) -> optim.Optimizer:
  """LAMB (or any `build_optimizer` chain) gated per encoder block for phase 1.

  "progressive": block ℓ's rate is boost·bg(s)·{0, 1, 0.1} of the base rate, moments zeroed
  where it is 0 (`progressive.layer_rate_multipliers`); "joint": every block at the base rate.
  Everything outside the encoder is frozen either way.

  Args:
    settings: the transfer settings (strategy, L, P).
    total_steps: phase 1's length (for the base schedule).
    layer_rate_boost: the original's 3.
    **optimizer_kwargs: `optim.build_optimizer`'s arguments (name, learning_rate, ...).
  """
  inner = optim.build_optimizer(**optimizer_kwargs, total_steps=max(total_steps, 1))
  num_layers, period = settings.num_layers, settings.steps_per_stage
  if settings.strategy == "progressive":

    def multipliers(step: Array) -> Array:
      return progressive.layer_rate_multipliers(step, num_layers, period, layer_rate_boost)

  else:

    def multipliers(step: Array) -> Array:
      del step
      return jnp.ones([num_layers], jnp.float32)

  gated = progressive.gate_by_layer(inner.transformation, multipliers)
  return optim.Optimizer(gated, inner.schedule)
