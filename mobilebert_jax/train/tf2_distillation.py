"""Distillation as the TF2 Model Garden computes it (`--config.distill.semantics=tf2`).

What `official/projects/mobilebert/distillation.py` (tf-models-official 2.20,
`BertDistillationTask`) does, quirks included, so that its users can compare and so that the
parity test (`tests/distill_tf2_parity_test.py`) can hold this module to the real TF2 code.
The run has L + 1 stages for an L-block student, each with a fresh optimizer and step count:

* layer-wise stage k < L: the student's embedding layer and blocks 0..k against teacher blocks
  0..j(k) (`stage_loss`); only the student's embedding layer and blocks 0..k train
  (`trainable_mask`);
* the last stage, pretraining distillation (PD): MLM against soft targets plus NSP on the whole
  student (`distillation_loss`).

`loss_and_grads` differentiates either, `stage_optimizer` is the stage's LAMB with Keras'
per-variable `clipnorm`, `copy_embeddings_tf2` the Model Garden's initialisation.

What the Model Garden gets wrong, or does differently from the original TF1 code
(docs/training.md §distillation; anchors §1.3), all reproduced here:

1. The attention term takes a softmax of attention *probabilities* (a double softmax): the
   target is nearly uniform (the term sits near ln T) and padded keys get weight again.
2. The feature LayerNorm has Keras' ε = 1e-3 (TF1: 1e-12).
3. The layer-wise loss is a [B, T] tensor, differentiated as its sum: the scalar terms count
   B·T times, and nothing divides by the number of replicas (in the PD stage the replicas'
   losses add up: `distillation_loss(num_replicas=)`). Stage k divides by k + 1.
4. The initial embedding copy is by position (`set_weights(get_weights())`), and a NoNorm
   student stores its (β, γ) in the opposite order to a LayerNorm teacher's (γ, β): the copy
   swaps them (`copy_embeddings_tf2`). Only the embedding layer is copied; the student's MLM
   and NSP heads start random (TF1 copies them).
5. Clipping is per variable (Keras `clipnorm`), not by the global norm; LAMB has bias correction.
   Found by the parity test: for a table read by a gather (word embeddings in layer-wise stages,
   token-type embeddings always), Keras clips the `IndexedSlices` gradient by the norm of its
   un-summed rows, one per token: √(Σ_tokens ‖∂L/∂row‖²), not the norm of the dense gradient.
   `loss_and_grads` returns those norms (`gathered_norms`) for `stage_optimizer` to use.
6. `train_step` runs both models with dropout (`training=True`; the teacher's `trainable=False`
   does not turn it off). Pass `dropout_rng` to do the same; without it, no dropout (the
   Model Garden's `validation_step`).
7. The PD stage warms up from 0 to the *decayed* rate at the end of the warm-up, then decays
   linearly from the stage start (TF1 ramps to the undecayed peak).
8. A teacher built from its yaml resolves `hidden_activation: gelu` through Keras in its blocks
   (the exact erf GELU, our `hidden_act="gelu"`) but through `tf_utils` in its MLM head (the
   tanh approximation, our "gelu_new"). Our config has one activation for both: "gelu" matches
   its blocks (the layer-wise stages), and the PD stage's soft targets then differ slightly.

Batches are dicts with `input_ids`, `attention_mask`, `token_type_ids` [B, T] and, for the PD
stage, `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights` [B, P] and
`next_sentence_labels` [B] (or [B, 1]).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mobilebert_jax.model.encoder import MobileBertEmbeddings, MobileBertModel
from mobilebert_jax.train import optim, progressive, transfer_losses
from mobilebert_jax.train.transfer_losses import TransferFactors

Array = jax.Array
PyTree = Any

# The Model Garden's exclusions from weight decay and the trust ratio (run_distillation.py),
# matched with `re.search` against our paths: "norm" catches every norm's scale and bias (and
# the MLM head's `transform_layer_norm`), "bias" every bias, as they do on the TF names.
TF2_EXCLUDE_FROM_WEIGHT_DECAY = ("LayerNorm", "bias", "norm")
# The tables the Model Garden's embedding layer reads with a gather (paths under the encoder).
WORD_TABLE = "embeddings/word_embeddings"
TYPE_TABLE = "embeddings/token_type_embeddings"
DEFAULT_FACTORS = TransferFactors()  # the original's 100 / 1 / 5000 / 5


@dataclasses.dataclass(frozen=True)
class StageSchedule:
  """A stage's learning rate (the Model Garden's `*DistillConfig` fields).

  Linear warm-up from 0 to the decayed rate at `warmup_steps`, then polynomial decay (power 1)
  from `initial_learning_rate` to `end_learning_rate` over `decay_steps`, both counted from
  the stage's first step.
  """

  initial_learning_rate: float
  end_learning_rate: float
  decay_steps: int
  warmup_steps: int = 0

  def __call__(self, count: Array | int) -> Array:
    """The rate at the stage's 0-based update `count` (float32, as TF computes it)."""
    step = jnp.asarray(count).astype(jnp.float32)
    init = jnp.float32(self.initial_learning_rate)
    end = jnp.float32(self.end_learning_rate)
    decay = jnp.float32(self.decay_steps)

    def decayed(s):
      return (init - end) * (1.0 - jnp.minimum(s, decay) / decay) + end

    if self.warmup_steps == 0:
      return decayed(step)
    warmup = jnp.float32(self.warmup_steps)
    return jnp.where(step < warmup, step / warmup * decayed(warmup), decayed(step))


# The Model Garden's defaults: constant 1.5e-3 for 10k steps per layer-wise stage, then 10k
# warm-up steps and a decay over 500k steps.
LAYER_WISE_SCHEDULE = StageSchedule(1.5e-3, 1.5e-3, decay_steps=10_000)
PRETRAIN_SCHEDULE = StageSchedule(1.5e-3, 1.5e-7, decay_steps=500_000, warmup_steps=10_000)


# ----------------------------------------------------------------------------------------------
# Forward passes and losses
# ----------------------------------------------------------------------------------------------


def _encode(
  model: nn.Module,
  params: PyTree,
  batch: Mapping[str, Array],
  num_blocks: int,
  rng: Array | None,
) -> Any:
  """The encoder alone (no heads), blocks 0..num_blocks-1, with attention probabilities."""
  kwargs = dict(
    attention_mask=batch["attention_mask"],
    token_type_ids=batch["token_type_ids"],
    deterministic=rng is None,
    output_attentions=True,
    num_blocks=num_blocks,
  )
  rngs = None if rng is None else {"dropout": rng}
  if isinstance(model, MobileBertModel):
    return model.apply({"params": params}, batch["input_ids"], rngs=rngs, **kwargs)
  return model.apply(
    {"params": params},
    batch["input_ids"],
    rngs=rngs,
    method=lambda m, *a, **k: m.mobilebert(*a, **k),
    **kwargs,
  )


def _intercepting(interceptor: Callable | None) -> contextlib.AbstractContextManager:
  return contextlib.nullcontext() if interceptor is None else nn.intercept_methods(interceptor)


def _rngs(dropout_rng: Array | None) -> tuple[Array | None, Array | None]:
  if dropout_rng is None:
    return None, None
  student, teacher = jax.random.split(dropout_rng)
  return student, teacher


def stage_loss(
  student_model: nn.Module,
  teacher_model: nn.Module,
  student_params: PyTree,
  teacher_params: PyTree,
  batch: Mapping[str, Array],
  stage: int,
  *,
  layer_map: Sequence[int] | None = None,
  factors: TransferFactors = DEFAULT_FACTORS,
  dropout_rng: Array | None = None,
  student_interceptor: Callable | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Layer-wise stage `stage`'s loss as the Model Garden computes it.

  The student runs its embedding layer and blocks 0..stage, the teacher blocks 0..j with
  j = `layer_map[stage]` (its `transfer_teacher_layers`; default j = stage), on the same batch.
  The loss compares the two last blocks' outputs [B, T, H] and attention probabilities
  [B, N, T, T]: Σ_{b,t} (FT[b, t] + β + γ + AT) / (stage + 1)
  (`transfer_losses.tf2_stage_loss`: ε 1e-3, double softmax, sum over [B, T]).

  Args:
    student_model, teacher_model: `MobileBertForPreTraining` (or any class with the encoder
      under `mobilebert`, or `MobileBertModel` itself); their heads are not run.
    student_params, teacher_params: their parameters (the teacher's get no gradient).
    batch: `input_ids`, `attention_mask`, `token_type_ids` [B, T].
    stage: k in [0, L).
    layer_map: the teacher block of each student block.
    factors: the four loss factors.
    dropout_rng: run both models with dropout, as the Model Garden's `train_step` does.
    student_interceptor: a Flax method interceptor active while the student runs
      (`loss_and_grads` probes the embedding layer with it).

  Returns:
    `(loss, terms)`: the summed scalar loss, and the factor-scaled `feature`, `attention`,
    `mean`, `variance` as the Model Garden's metrics report them (FT averaged over [B, T]).
  """
  teacher_block = stage if layer_map is None else int(layer_map[stage])
  student_rng, teacher_rng = _rngs(dropout_rng)
  with _intercepting(student_interceptor):
    student = _encode(student_model, student_params, batch, stage + 1, student_rng)
  teacher = _encode(teacher_model, teacher_params, batch, teacher_block + 1, teacher_rng)
  return transfer_losses.tf2_stage_loss(
    student.last_hidden_state,
    jax.lax.stop_gradient(teacher.last_hidden_state),
    student.attentions[-1],
    jax.lax.stop_gradient(teacher.attentions[-1]),
    stage,
    factors=factors,
  )


def _mlm_logits(out: Any) -> Array:
  logits = getattr(out, "prediction_logits", None)
  return out.logits if logits is None else logits


def distillation_loss(
  student_model: nn.Module,
  teacher_model: nn.Module,
  student_params: PyTree,
  teacher_params: PyTree,
  batch: Mapping[str, Array],
  *,
  ground_truth_ratio: float = 0.5,
  use_nsp: bool = True,
  num_replicas: int = 1,
  dropout_rng: Array | None = None,
  student_interceptor: Callable | None = None,
) -> tuple[Array, dict[str, Array]]:
  """The pretraining-distillation (last) stage's loss as the Model Garden computes it.

  MLM = Σ w·CE(student, y) / Σ w (`divide_no_nan`), y = α·one-hot + (1 − α)·softmax(teacher
  MLM logits), no temperature; NSP = mean CE of the student's NSP logits. Loss = MLM + NSP.

  Args:
    student_model: `MobileBertForPreTraining`.
    teacher_model: `MobileBertForPreTraining` or `MobileBertForMaskedLM`.
    student_params, teacher_params: their parameters (the teacher's get no gradient).
    batch: the model inputs and `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights`
      [B, P], `next_sentence_labels` [B] (or [B, 1]).
    ground_truth_ratio: α (`distill_ground_truth_ratio`); at 1 the teacher is not run.
    use_nsp: add the NSP loss (the Model Garden does when the batch has NSP labels).
    num_replicas: R. The Model Garden computes this loss per replica (each normalised by its
      own Σ w and row count) and sums the replicas' gradients without dividing by R: the loss
      is then Σ_r (MLM_r + NSP_r) over R contiguous slices of the batch. (The layer-wise loss,
      a sum of per-token terms and of means, is the same whatever R.)
    dropout_rng: run both models with dropout, as the Model Garden's `train_step` does.
    student_interceptor: see `stage_loss`.

  Returns:
    `(loss, terms)`: the loss TF differentiates, and `mlm` and (with `use_nsp`) `nsp`
    averaged over the replicas, as its metrics report them.
  """
  student_rng, teacher_rng = _rngs(dropout_rng)
  inputs = dict(
    attention_mask=batch["attention_mask"],
    token_type_ids=batch["token_type_ids"],
    masked_positions=batch["masked_lm_positions"],
  )

  def run(model, params, rng):
    rngs = None if rng is None else {"dropout": rng}
    return model.apply(
      {"params": params}, batch["input_ids"], deterministic=rng is None, rngs=rngs, **inputs
    )

  with _intercepting(student_interceptor):
    student = run(student_model, student_params, student_rng)
  student_logits = _mlm_logits(student)
  if ground_truth_ratio == 1.0:
    teacher_logits = jnp.zeros_like(student_logits)  # weighted by 1 − α = 0
  else:
    teacher = run(teacher_model, teacher_params, teacher_rng)
    teacher_logits = jax.lax.stop_gradient(_mlm_logits(teacher))
  if student_logits.shape[0] % num_replicas:
    raise ValueError(f"batch {student_logits.shape[0]} does not split into {num_replicas} replicas")

  def per_replica(x):  # [B, ...] -> [R, B / R, ...]: contiguous slices, as a strategy splits
    return x.reshape(num_replicas, -1, *x.shape[1:])

  mlm = jax.vmap(
    functools.partial(
      transfer_losses.soft_mlm_loss, ground_truth_ratio=ground_truth_ratio, denominator_eps=0.0
    )
  )(
    per_replica(student_logits),
    per_replica(teacher_logits),
    per_replica(batch["masked_lm_ids"]),
    per_replica(batch["masked_lm_weights"]),
  )
  losses = {"mlm": mlm}  # [R] each
  if use_nsp:
    nsp_logits = student.seq_relationship_logits.astype(jnp.float32)
    labels = jnp.reshape(batch["next_sentence_labels"], (-1,))
    nsp = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, labels)
    losses["nsp"] = jnp.mean(per_replica(nsp), axis=1)
  loss = sum(jnp.sum(value) for value in losses.values())
  return loss, {name: jnp.mean(value) for name, value in losses.items()}


# ----------------------------------------------------------------------------------------------
# Gradients, with the norms Keras clips gathered tables by
# ----------------------------------------------------------------------------------------------


def _table_prefix(model: nn.Module) -> str:
  return "" if isinstance(model, MobileBertModel) else "mobilebert/"


def _probe_embeddings(probes: Mapping[str, Array], applied: list[str]) -> Callable:
  """An interceptor adding `probes` to two inputs inside the student's embedding layer.

  `probes["trigram"]` [B, T, 3E] is added to the input of `embedding_transformation` (the
  trigram of the looked-up word rows), `probes["sum"]` [B, T, H] to the input of its norm
  (word + position + type). The gradients with respect to them are the per-token gradients
  of the rows the two gathers read.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name == "__call__" and isinstance(module.parent, MobileBertEmbeddings):
      key = {"embedding_transformation": "trigram", "norm": "sum"}.get(module.name)
      if key is not None:
        applied.append(key)
        args = (args[0] + probes[key].astype(args[0].dtype), *args[1:])
    return next_fun(*args, **kwargs)

  return interceptor


def _word_row_gradients(trigram_grad: Array, embedding_size: int) -> Array:
  """Per-token gradients of the looked-up word rows e[b, t] from those of their trigram.

  The trigram at t is [e[t+1], e[t], e[t−1]], so e[s] is read at s−1 (first slot), s (middle)
  and s+1 (last slot).

  Args:
    trigram_grad: [B, T, 3E].
    embedding_size: E.

  Returns:
    [B, T, E].
  """
  e = embedding_size
  first, middle, last = (
    trigram_grad[..., :e],
    trigram_grad[..., e : 2 * e],
    trigram_grad[..., 2 * e :],
  )
  zero = jnp.zeros_like(middle[:, :1])
  from_previous = jnp.concatenate([zero, first[:, :-1]], axis=1)
  from_next = jnp.concatenate([last[:, 1:], zero], axis=1)
  return middle + from_previous + from_next


def loss_and_grads(
  student_model: nn.Module,
  teacher_model: nn.Module,
  student_params: PyTree,
  teacher_params: PyTree,
  batch: Mapping[str, Array],
  stage: int,
  *,
  layer_map: Sequence[int] | None = None,
  factors: TransferFactors = DEFAULT_FACTORS,
  ground_truth_ratio: float = 0.5,
  use_nsp: bool = True,
  num_replicas: int = 1,
  dropout_rng: Array | None = None,
) -> tuple[Array, dict[str, Array], PyTree, dict[str, Array]]:
  """Stage `stage`'s loss, terms and gradients, and the norms Keras clips gathered tables by.

  Stage L (the student's depth) is the PD stage (`distillation_loss`), earlier ones layer-wise
  (`stage_loss`). The gradient is that of the summed loss, as `tape.gradient` takes it; it is
  not masked (see `trainable_mask`).

  Keras' `clipnorm` sees the gradient of a table read by a gather as `IndexedSlices`, one row
  per token, duplicates not summed, and clips it by the norm of those rows. That is the word
  table in layer-wise stages (in the PD stage the tied MLM output layer makes its gradient
  dense) and the token-type table in every stage. The per-token row gradients come from probes
  added inside the embedding layer (`_probe_embeddings`) in the same backward pass.

  Args:
    student_model, teacher_model, student_params, teacher_params, batch, layer_map, factors,
      dropout_rng: see `stage_loss`.
    stage: 0..L.
    ground_truth_ratio, use_nsp, num_replicas: see `distillation_loss`.

  Returns:
    `(loss, terms, grads, gathered_norms)`: `gathered_norms` maps the "/"-joined path of each
    gathered table (`mobilebert/embeddings/word_embeddings`, ...) to the norm to clip it by;
    pass it to `stage_optimizer`'s update as `gathered_norms=`.

  Raises:
    ValueError: a student without trigram input (every Model Garden MobileBERT has it), or a
      stage outside [0, L].
  """
  config = student_model.config
  depth = config.num_hidden_layers
  if not 0 <= stage <= depth:
    raise ValueError(f"stage {stage} is outside [0, {depth}] for a {depth}-block student")
  if not config.trigram_input:
    raise ValueError("the TF2 mode needs a trigram-input student, as every Model Garden one is")
  batch_size, length = batch["input_ids"].shape
  probes = {
    "trigram": jnp.zeros((batch_size, length, 3 * config.embedding_size), jnp.float32),
    "sum": jnp.zeros((batch_size, length, config.hidden_size), jnp.float32),
  }
  applied: list[str] = []

  def objective(params, probes):
    interceptor = _probe_embeddings(probes, applied)
    if stage < depth:
      return stage_loss(
        student_model,
        teacher_model,
        params,
        teacher_params,
        batch,
        stage,
        layer_map=layer_map,
        factors=factors,
        dropout_rng=dropout_rng,
        student_interceptor=interceptor,
      )
    return distillation_loss(
      student_model,
      teacher_model,
      params,
      teacher_params,
      batch,
      ground_truth_ratio=ground_truth_ratio,
      use_nsp=use_nsp,
      num_replicas=num_replicas,
      dropout_rng=dropout_rng,
      student_interceptor=interceptor,
    )

  (loss, terms), (grads, probe_grads) = jax.value_and_grad(objective, (0, 1), has_aux=True)(
    student_params, probes
  )
  if sorted(applied) != ["sum", "trigram"]:
    raise AssertionError(f"embedding probes applied to {applied}, expected one each")
  word_rows = _word_row_gradients(probe_grads["trigram"], config.embedding_size)
  if config.padding_invariant_trigram:
    word_rows = word_rows * batch["attention_mask"][..., None].astype(word_rows.dtype)
  prefix = _table_prefix(student_model)
  gathered = {prefix + TYPE_TABLE: jnp.sqrt(jnp.sum(jnp.square(probe_grads["sum"])))}
  if stage < depth:
    gathered[prefix + WORD_TABLE] = jnp.sqrt(jnp.sum(jnp.square(word_rows)))
  return loss, terms, grads, gathered


# ----------------------------------------------------------------------------------------------
# What trains, and how
# ----------------------------------------------------------------------------------------------


def trainable_mask(params: PyTree, stage: int, num_layers: int) -> PyTree:
  """Which student parameters stage `stage` trains, as multipliers (1 trains, 0 is frozen).

  Layer-wise stage k < L: the embedding layer and blocks 0..k (the Model Garden's stage model
  holds only those variables); the PD stage (k = L): everything. A stacked leaf
  (`encoder/layers/...`, leading [L] axis) gets one multiplier per block, shaped [L, 1, ...].

  Args:
    params: the student's parameter tree (paths as `optim.path_to_str` names them).
    stage: 0..L.
    num_layers: L, the student's depth.

  Returns:
    A tree like `params` of float32 multipliers broadcastable to each leaf.
  """
  if not 0 <= stage <= num_layers:
    raise ValueError(f"stage {stage} is outside [0, {num_layers}]")
  active = (jnp.arange(num_layers) <= stage).astype(jnp.float32)

  def one(path, leaf):
    if stage == num_layers:
      return jnp.ones([], jnp.float32)
    name = optim.path_to_str(path)
    layer = progressive.layer_of(name)
    if layer == "stacked":
      return active.reshape((-1,) + (1,) * (leaf.ndim - 1))
    if layer is not None:
      return active[layer]
    is_embedding = name.startswith(("embeddings/", "mobilebert/embeddings/"))
    return jnp.asarray(1.0 if is_embedding else 0.0, jnp.float32)

  return jax.tree_util.tree_map_with_path(one, params)


def keras_clipnorm(
  grads: PyTree,
  max_norm: float,
  gathered_norms: Mapping[str, Array] | None = None,
  stacked_layer_patterns: Sequence[str] = optim.DEFAULT_STACKED_LAYER_PATTERNS,
) -> PyTree:
  """Keras `clipnorm`: g·c / max(n, c) per variable, n its norm (per block for stacked leaves),
  or the given norm for the gathered tables (`loss_and_grads`)."""
  clipped, _ = optim.clip_by_variable_norm(max_norm, stacked_layer_patterns).update(grads, None)
  gathered_norms = dict(gathered_norms or {})

  def one(path, g, c):
    norm = gathered_norms.pop(optim.path_to_str(path), None)
    if norm is None:
      return c
    return g.astype(jnp.float32) * max_norm / jnp.maximum(norm, max_norm)

  out = jax.tree_util.tree_map_with_path(one, grads, clipped)
  if gathered_norms:
    raise ValueError(f"gathered_norms for paths not in the tree: {sorted(gathered_norms)}")
  return out


def stage_optimizer(
  stage: int,
  num_layers: int,
  *,
  layer_wise: StageSchedule = LAYER_WISE_SCHEDULE,
  pretrain: StageSchedule = PRETRAIN_SCHEDULE,
  weight_decay: float = 0.01,
  clip_norm: float = 1.0,
  stacked_layer_patterns: Sequence[str] = optim.DEFAULT_STACKED_LAYER_PATTERNS,
) -> optim.Optimizer:
  """The Model Garden's optimizer for one stage (build a fresh one, and state, per stage).

  Keras `clipnorm` (`keras_clipnorm`), then LAMB with bias correction (β 0.9/0.999, ε 1e-6,
  weight decay 0.01, exclusions `TF2_EXCLUDE_FROM_WEIGHT_DECAY` from decay and trust ratio) at
  `layer_wise` (stages < L) or `pretrain` (stage L) rates, counted from the stage's start.
  Frozen parameters (`trainable_mask`) get zero gradients, so their moments stay 0, and no
  update (not even weight decay).

  Call `update(grads, state, params, gathered_norms=...)` with `loss_and_grads`'s norms;
  without them every variable is clipped by its dense gradient's norm.

  Returns:
    `Optimizer(transformation, schedule)`; the transformation is an
    `optax.GradientTransformationExtraArgs`.
  """
  schedule = pretrain if stage == num_layers else layer_wise
  inner = optim.build_optimizer(
    "lamb",
    schedule,
    # Keras forms 1 − β from the float32 β: 1 − 0.999 is then 0.99998713e-3, not 1e-3 (a
    # 1.3e-5 relative change of the second moment, which the parity test resolves).
    b1=float(np.float32(0.9)),
    b2=float(np.float32(0.999)),
    weight_decay=weight_decay,
    clip_norm=None,  # Keras clips first, by norms only the forward pass knows (see above)
    bias_correction=True,
    exclude_from_weight_decay=TF2_EXCLUDE_FROM_WEIGHT_DECAY,
    stacked_layer_patterns=stacked_layer_patterns,
  ).transformation

  def update_fn(grads, state, params=None, *, gathered_norms=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("stage_optimizer needs params (for the trainable mask and LAMB)")
    mask = trainable_mask(params, stage, num_layers)
    grads = jax.tree.map(lambda g, m: g.astype(jnp.float32) * m, grads, mask)
    grads = keras_clipnorm(grads, clip_norm, gathered_norms, stacked_layer_patterns)
    updates, state = inner.update(grads, state, params)
    return jax.tree.map(lambda u, m: u * m, updates, mask), state

  return optim.Optimizer(optax.GradientTransformationExtraArgs(inner.init, update_fn), schedule)


# ----------------------------------------------------------------------------------------------
# Initialisation
# ----------------------------------------------------------------------------------------------

_BY_POSITION = (
  "word_embeddings",
  "token_type_embeddings",
  "position_embeddings",
  "embedding_transformation/kernel",
  "embedding_transformation/bias",
)


def copy_embeddings_tf2(
  student_params: PyTree,
  teacher_params: PyTree,
  student_normalization: str,
  teacher_normalization: str,
) -> tuple[PyTree, list[str]]:
  """The Model Garden's initialisation of the student from the teacher (quirk 4 included).

  Only the embedding layer is copied, by position: tables and projection as they are, and
  the norm's two vectors in each layer's own order, which differs between NoNorm (β, γ) and
  LayerNorm (γ, β). With a NoNorm student and a LayerNorm teacher the student's scale becomes
  the teacher's shift and vice versa. The project's default (TF1) initialisation copies by name.

  Args:
    student_params, teacher_params: `MobileBertForPreTraining`-style trees (the embedding
      layer under `mobilebert/embeddings`).
    student_normalization, teacher_normalization: their `config.normalization_type`.

  Returns:
    `(new_student_params, copied)`: the copy lists "student path <- teacher path".

  Raises:
    ValueError: a tensor whose shapes differ (named, with both shapes).
  """
  swap = student_normalization != teacher_normalization
  pairs = [(name, name) for name in _BY_POSITION]
  pairs += [("norm/scale", "norm/bias" if swap else "norm/scale")]
  pairs += [("norm/bias", "norm/scale" if swap else "norm/bias")]
  student_embeddings = student_params["mobilebert"]["embeddings"]
  teacher_embeddings = teacher_params["mobilebert"]["embeddings"]

  def get(tree, name):
    for key in name.split("/"):
      tree = tree[key]
    return tree

  copied = []
  new = jax.tree.map(lambda x: x, student_embeddings)  # fresh containers, same leaves
  for ours, theirs in pairs:
    value = get(teacher_embeddings, theirs)
    old = get(student_embeddings, ours)
    if value.shape != old.shape:
      raise ValueError(
        f"cannot copy teacher mobilebert/embeddings/{theirs} {tuple(value.shape)} into student "
        f"mobilebert/embeddings/{ours} {tuple(old.shape)}"
      )
    scope, _, leaf = ours.rpartition("/")
    target = get(new, scope) if scope else new
    target[leaf] = jnp.asarray(value, old.dtype)
    copied.append(f"mobilebert/embeddings/{ours} <- mobilebert/embeddings/{theirs}")
  mobilebert = {**student_params["mobilebert"], "embeddings": new}
  return {**student_params, "mobilebert": mobilebert}, copied
