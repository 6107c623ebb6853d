"""Knowledge-transfer losses of MobileBERT's distillation, in the original's and TF2's forms.

Phase 1 (layer-wise transfer) compares student block ℓ with teacher block j(ℓ) (the same index
unless a layer map says otherwise), on hidden states h [B, T, H] and masked pre-softmax
attention scores S [B, N, T, T] (`output_attention_logits=True`):

* feature map (FT): mean (LN(h_t) − LN(h_s))², LN parameter-free with ε;
* attention (AT): mean over (b, n, q) of −Σ_k softmax(S_t) · log_softmax(S_s);
* mean (β): mean over (b, t) of (μ_t − μ_s)², μ the per-token mean over the features;
* variance (γ): mean over (b, t) of |σ²_t − σ²_s|, σ² the per-token population variance.

`Semantics` selects how they are combined (docs/training.md §distillation):

* "tf1" (google-research `run_pretraining.py`, the default): factors 100 / 1 / 5000 / 5, ε 1e-12,
  FT averaged over every element (padding included), the scores' softmax taken once, the sum over
  the gated layers divided by L (the student's depth). The original takes the teacher's μ and σ²
  over all L + 1 teacher hidden states at once (almost certainly a typo for the matching layer,
  which the paper defines and TF2 uses); `tf1_all_layer_statistics=True` reproduces it, the
  default uses the matching layer.
* "tf2" (Model Garden `distillation.py`): ε 1e-3, FT averaged over the features only and the
  per-token loss (FT + β + γ + AT) / (k + 1) summed over [B, T], and the attention term applied to
  the teacher's and student's *probabilities* (a second softmax on top of the first).

Phase 2 (pretraining distillation) is `soft_mlm_loss`: cross-entropy of the student's MLM
logits against α·one-hot + (1 − α)·teacher distribution, weighted by the masked positions'
weights, plus the usual NSP loss (`losses.next_sentence_loss`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

Array = jax.Array
# TF1's normaliser of weighted MLM losses: Σ w + 1e-5 (the original's `numerator / denominator`).
TF1_MLM_DENOMINATOR_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class TransferFactors:
  """The loss factors (the original's command-line defaults)."""

  feature: float = 100.0
  attention: float = 1.0
  mean: float = 5000.0
  variance: float = 5.0


@dataclasses.dataclass(frozen=True)
class Semantics:
  """How phase-1 losses are formed (see the module docstring).

  Attributes:
    name: "tf1" or "tf2".
    layer_norm_eps: ε of the parameter-free LayerNorm of the feature-map loss.
    tf1_all_layer_statistics: TF1 only: the teacher's μ, σ² over all its hidden states.
  """

  name: str = "tf1"
  layer_norm_eps: float = 1e-12
  tf1_all_layer_statistics: bool = False

  @classmethod
  def tf2(cls) -> Semantics:
    return cls(name="tf2", layer_norm_eps=1e-3)

  def __post_init__(self):
    if self.name not in ("tf1", "tf2"):
      raise ValueError(f"semantics must be 'tf1' or 'tf2', got {self.name!r}")


def plain_layer_norm(x: Array, eps: float) -> Array:
  """LayerNorm over the last axis without scale or bias, in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def _stats(h: Array) -> tuple[Array, Array]:
  h = h.astype(jnp.float32)
  mean = jnp.mean(h, axis=-1)
  return mean, jnp.mean(jnp.square(h - mean[..., None]), axis=-1)


def attention_cross_entropy(teacher_scores: Array, student_scores: Array) -> Array:
  """−Σ_k softmax(S_t) · log_softmax(S_s) per (b, n, q): [B, N, T] from [B, N, T, T] scores."""
  target = jax.nn.softmax(teacher_scores.astype(jnp.float32), axis=-1)
  return -jnp.sum(target * jax.nn.log_softmax(student_scores.astype(jnp.float32), axis=-1), -1)


def layer_transfer_terms(
  student_hidden: Array,
  teacher_hidden: Array,
  student_scores: Array,
  teacher_scores: Array,
  *,
  semantics: Semantics,
  teacher_hiddens_all: Sequence[Array] | None = None,
) -> dict[str, Array]:
  """The four unscaled transfer terms of one student block against one teacher block.

  Args:
    student_hidden, teacher_hidden: the blocks' outputs, [B, T, H] each.
    student_scores, teacher_scores: the blocks' masked pre-softmax attention scores
      [B, N, T, T] ("tf1"), or their attention probabilities ("tf2", whose attention term
      takes a softmax of them again, as the Model Garden code does).
    semantics: see `Semantics`.
    teacher_hiddens_all: every teacher hidden state (embedding output first), for
      `tf1_all_layer_statistics`.

  Returns:
    `feature`, `attention`, `mean`, `variance`: scalars ("tf1") or per-token [B, T] arrays
    ("tf2": the Model Garden code keeps the feature term per token; the other three are
    scalars there too and are broadcast when combined).
  """
  eps = semantics.layer_norm_eps
  diff = plain_layer_norm(teacher_hidden, eps) - plain_layer_norm(student_hidden, eps)
  mean_s, var_s = _stats(student_hidden)
  if semantics.name == "tf1" and semantics.tf1_all_layer_statistics:
    if teacher_hiddens_all is None:
      raise ValueError("tf1_all_layer_statistics needs teacher_hiddens_all")
    stats = [_stats(h) for h in teacher_hiddens_all]
    mean_t = jnp.stack([m for m, _ in stats])  # [L+1, B, T]
    var_t = jnp.stack([v for _, v in stats])
  else:
    mean_t, var_t = _stats(teacher_hidden)
  terms = {
    "attention": jnp.mean(attention_cross_entropy(teacher_scores, student_scores)),
    "mean": jnp.mean(jnp.square(mean_t - mean_s)),
    "variance": jnp.mean(jnp.abs(var_t - var_s)),
  }
  if semantics.name == "tf2":
    terms["feature"] = jnp.mean(jnp.square(diff), axis=-1)  # [B, T]
  else:
    terms["feature"] = jnp.mean(jnp.square(diff))
  return terms


def progressive_transfer_loss(
  student_hiddens: Sequence[Array],
  teacher_hiddens: Sequence[Array],
  student_scores: Sequence[Array],
  teacher_scores: Sequence[Array],
  gates: Array,
  *,
  layer_map: Sequence[int] | None = None,
  semantics: Semantics = Semantics(),
  factors: TransferFactors = TransferFactors(),
) -> tuple[Array, dict[str, Array]]:
  """Phase 1's loss under the original's semantics (TF1), for any set of active layers.

  Args:
    student_hiddens: the student's hidden states, embedding output first ([B, T, H] each); only
      the blocks up to the last one with a non-zero gate need to be there.
    teacher_hiddens: the teacher's, likewise (all L_t + 1 for `tf1_all_layer_statistics`).
    student_scores, teacher_scores: masked pre-softmax attention scores per block.
    gates: [L] weights of the student blocks' losses (`progressive.stage_gates`; all ones for
      the "auxiliary" strategy); static zeros may drop blocks from `student_hiddens`.
    layer_map: teacher block of each student block (default: the same index).
    semantics: must be "tf1" here (the TF2 form is `tf2_stage_loss`).
    factors: the four factors.

  Returns:
    `(loss, terms)`: the scalar loss, and the factor-scaled terms summed over the gated layers
    and divided by L (`feature`, `attention`, `mean`, `variance`).
  """
  if semantics.name != "tf1":
    raise ValueError("progressive_transfer_loss is the TF1 form; use tf2_stage_loss for 'tf2'")
  num_layers = int(gates.shape[0])
  layer_map = list(range(num_layers)) if layer_map is None else list(layer_map)
  totals = {"feature": 0.0, "attention": 0.0, "mean": 0.0, "variance": 0.0}
  for layer in range(min(num_layers, len(student_hiddens) - 1, len(student_scores))):
    t = layer_map[layer]
    terms = layer_transfer_terms(
      student_hiddens[layer + 1],
      teacher_hiddens[t + 1],
      student_scores[layer],
      teacher_scores[t],
      semantics=semantics,
      teacher_hiddens_all=teacher_hiddens,
    )
    for name in totals:
      totals[name] = totals[name] + gates[layer] * terms[name]
  scaled = {name: getattr(factors, name) * value / num_layers for name, value in totals.items()}
  return sum(scaled.values()), scaled


def tf2_stage_loss(
  student_hidden: Array,
  teacher_hidden: Array,
  student_probs: Array,
  teacher_probs: Array,
  stage: int,
  *,
  factors: TransferFactors = TransferFactors(),
) -> tuple[Array, dict[str, Array]]:
  """Layer-wise stage `stage`'s loss as the TF2 Model Garden computes it (quirks included).

  The per-token loss (FT[b, t] + β + γ + AT) / (stage + 1) is summed over [B, T] (Keras
  differentiates a non-scalar loss as its sum), with ε 1e-3 and the attention term on the
  probabilities (a double softmax).

  Returns:
    `(loss, terms)` with the factor-scaled terms averaged as the Model Garden's metrics report
    them (FT's mean over [B, T]).
  """
  terms = layer_transfer_terms(
    student_hidden, teacher_hidden, student_probs, teacher_probs, semantics=Semantics.tf2()
  )
  scaled = {name: getattr(factors, name) * value for name, value in terms.items()}
  per_token = scaled["feature"] + scaled["mean"] + scaled["variance"] + scaled["attention"]
  loss = jnp.sum(per_token / (stage + 1))
  reported = dict(scaled, feature=jnp.mean(scaled["feature"]))
  return loss, reported


def soft_mlm_loss(
  student_logits: Array,
  teacher_logits: Array,
  label_ids: Array,
  label_weights: Array,
  *,
  ground_truth_ratio: float = 0.5,
  denominator_eps: float = TF1_MLM_DENOMINATOR_EPS,
) -> Array:
  """Pretraining distillation's MLM loss at the masked positions.

  Cross-entropy of the student's distribution against y = α·one-hot(label) + (1 − α)·softmax
  (teacher logits), weighted: Σ w·CE / (Σ w + eps). The original applies its temperature to the
  teacher's sequence output before the MLM head, so it is not a parameter here.

  Args:
    student_logits, teacher_logits: [B, P, V] logits at the masked positions.
    label_ids: [B, P] the original tokens.
    label_weights: [B, P] 1 for real predictions, 0 for padding.
    ground_truth_ratio: α.
    denominator_eps: added to Σ w (1e-5 in TF1; the Model Garden divides with `divide_no_nan`:
      pass 0 and no all-zero batch).

  Returns:
    The scalar loss.
  """
  vocab = student_logits.shape[-1]
  target = ground_truth_ratio * jax.nn.one_hot(label_ids, vocab) + (
    1.0 - ground_truth_ratio
  ) * jax.nn.softmax(teacher_logits.astype(jnp.float32), axis=-1)
  ce = -jnp.sum(target * jax.nn.log_softmax(student_logits.astype(jnp.float32), axis=-1), -1)
  weights = label_weights.astype(jnp.float32)
  denominator = jnp.sum(weights) + denominator_eps
  return jnp.sum(weights * ce) / jnp.where(denominator > 0, denominator, 1.0)
