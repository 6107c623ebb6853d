"""`mobilebert_jax.train.losses` against the losses transformers computes when given labels.

For every head, the transformers model is run with labels; our loss function is applied to the
*reference's* logits, so the comparison isolates the loss definition (the logits themselves are
covered by `model_parity_test.py`). Then the `weights` argument is checked: zero weight on the
last example must give exactly transformers' loss on the batch without that example.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import reference_util as ru
import torch

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import losses

pytestmark = pytest.mark.torch

_SMALL = MobileBertConfig(
  vocab_size=97,
  embedding_size=16,
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=40,
  intra_bottleneck_size=24,
  max_position_embeddings=32,
  num_feedforward_networks=2,
  classifier_activation=False,
  num_labels=3,
)
_BATCH, _LENGTH, _CHOICES = 3, 12, 2


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def _token_labels(batch: ru.Batch, num_classes: int, keep: float) -> np.ndarray:
  """Per-token labels; -100 on padding and on a random (1 - keep) share of real tokens."""
  rng = _rng(1)
  labels = rng.integers(0, num_classes, size=batch.input_ids.shape)
  scored = (batch.attention_mask == 1) & (rng.random(batch.input_ids.shape) < keep)
  scored[:, 0] = True  # every example contributes
  return np.where(scored, labels, losses.IGNORE_INDEX).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Case:
  """One head: which model, which labels, and how our loss reads the reference output."""

  model_class: str
  config: MobileBertConfig
  labels: Callable[[ru.Batch], dict[str, np.ndarray]]
  ours: Callable[[Any, dict[str, Any], MobileBertConfig, Any], jnp.ndarray]
  choices: int | None = None


def _jnp(x: Any) -> jnp.ndarray:
  return jnp.asarray(ru.to_numpy(x))


CASES: dict[str, Case] = {
  "pretraining": Case(
    "MobileBertForPreTraining",
    _SMALL,
    lambda b: {
      "labels": _token_labels(b, _SMALL.vocab_size, 0.3),
      "next_sentence_label": np.array([0, 1, 1]),
    },
    # pretraining_loss has no weights argument; its two terms do.
    lambda out, lab, cfg, w: (
      losses.masked_lm_loss(
        _jnp(out.prediction_logits), jnp.asarray(lab["labels"]), None if w is None else w[:, None]
      )
      + losses.next_sentence_loss(
        _jnp(out.seq_relationship_logits), jnp.asarray(lab["next_sentence_label"]), w
      )
    ),
  ),
  "masked_lm": Case(
    "MobileBertForMaskedLM",
    _SMALL,
    lambda b: {"labels": _token_labels(b, _SMALL.vocab_size, 0.2)},
    lambda out, lab, cfg, w: losses.masked_lm_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), None if w is None else w[:, None]
    ),
  ),
  "next_sentence": Case(
    "MobileBertForNextSentencePrediction",
    _SMALL,
    lambda b: {"labels": np.array([1, 0, 1])},
    lambda out, lab, cfg, w: losses.next_sentence_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), w
    ),
  ),
  "sequence_single_label": Case(
    "MobileBertForSequenceClassification",
    _SMALL,
    lambda b: {"labels": np.array([2, 0, 1])},
    lambda out, lab, cfg, w: losses.sequence_classification_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), cfg, w
    ),
  ),
  "sequence_regression": Case(
    "MobileBertForSequenceClassification",
    _SMALL.replace(num_labels=1),
    lambda b: {"labels": np.array([0.5, -1.25, 3.0], np.float32)},
    lambda out, lab, cfg, w: losses.sequence_classification_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), cfg, w
    ),
  ),
  "sequence_regression_multi_output": Case(
    "MobileBertForSequenceClassification",
    _SMALL.replace(problem_type="regression"),
    lambda b: {"labels": _rng(2).normal(size=(_BATCH, 3)).astype(np.float32)},
    lambda out, lab, cfg, w: losses.sequence_classification_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), cfg, w
    ),
  ),
  "sequence_multi_label": Case(
    "MobileBertForSequenceClassification",
    _SMALL,
    lambda b: {"labels": np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]], np.float32)},
    lambda out, lab, cfg, w: losses.sequence_classification_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), cfg, w
    ),
  ),
  "multiple_choice": Case(
    "MobileBertForMultipleChoice",
    _SMALL,
    lambda b: {"labels": np.array([1, 0, 1])},
    lambda out, lab, cfg, w: losses.multiple_choice_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), w
    ),
    choices=_CHOICES,
  ),
  "token_classification": Case(
    "MobileBertForTokenClassification",
    _SMALL,
    lambda b: {"labels": _token_labels(b, 3, 0.8)},
    lambda out, lab, cfg, w: losses.token_classification_loss(
      _jnp(out.logits), jnp.asarray(lab["labels"]), None if w is None else w[:, None]
    ),
  ),
  # Positions past the window are clamped to T and not scored; negative ones clamp to 0 and are
  # scored as position 0 (transformers' rule, reproduced rather than judged).
  "question_answering_out_of_range": Case(
    "MobileBertForQuestionAnswering",
    _SMALL.replace(num_labels=2),
    lambda b: {"start_positions": np.array([3, 40, -2]), "end_positions": np.array([5, 7, 12])},
    lambda out, lab, cfg, w: losses.question_answering_loss(
      _jnp(out.start_logits),
      _jnp(out.end_logits),
      jnp.asarray(lab["start_positions"]),
      jnp.asarray(lab["end_positions"]),
      w,
    ),
  ),
}


def _batch(case: Case) -> ru.Batch:
  return ru.make_batch(
    case.config, batch_size=_BATCH, length=_LENGTH, seed=7, num_choices=case.choices
  )


def _first(batch: ru.Batch, n: int) -> ru.Batch:
  return ru.Batch(batch.input_ids[:n], batch.attention_mask[:n], batch.token_type_ids[:n])


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_matches_transformers(name: str):
  case = CASES[name]
  torch_model = ru.build_torch_model(case.config, case.model_class, seed=3)
  batch = _batch(case)
  labels = case.labels(batch)
  ref = ru.run_reference(torch_model, batch, **labels)
  ref_loss = float(ref.loss)
  assert np.isfinite(ref_loss) and ref_loss > 0

  ours = float(case.ours(ref, labels, case.config, None))
  assert abs(ours - ref_loss) <= ru.RELATIVE_TOLERANCE * abs(ref_loss), (ours, ref_loss)

  # Weight 0 on the last example == transformers on the first two examples only.
  subset = {k: v[: _BATCH - 1] for k, v in labels.items()}
  ref_subset = ru.run_reference(torch_model, _first(batch, _BATCH - 1), **subset)
  weights = jnp.array([1.0, 1.0, 0.0])
  weighted = float(case.ours(ref, labels, case.config, weights))
  expected = float(ref_subset.loss)
  assert abs(weighted - expected) <= ru.RELATIVE_TOLERANCE * abs(expected), (weighted, expected)
  assert abs(weighted - ours) > ru.RELATIVE_TOLERANCE * abs(ours)  # the weights did something


def test_nothing_to_score_gives_zero_not_nan():
  """Where transformers divides 0 by 0 (every label ignored), our losses return 0.

  A fixed-shape training batch can consist only of padding examples; a NaN loss there would
  poison the parameters through the gradient.
  """
  logits_np = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
  ignored_np = np.full((2, 5), losses.IGNORE_INDEX, np.int64)
  ref = torch.nn.CrossEntropyLoss()(
    torch.from_numpy(logits_np).reshape(-1, 7), torch.from_numpy(ignored_np).ravel()
  )
  logits, ignored = jnp.asarray(logits_np), jnp.asarray(ignored_np)
  assert torch.isnan(ref)
  assert float(losses.masked_lm_loss(logits, ignored)) == 0.0
  assert float(losses.token_classification_loss(logits, ignored)) == 0.0

  start = end = logits[:, :, 0]
  outside = jnp.array([5, 9])  # both past the window of length 5
  assert float(losses.question_answering_loss(start, end, outside, outside)) == 0.0
  zero_weights = jnp.zeros((2,))
  labels = jnp.array([1, 2])
  assert float(losses.multiple_choice_loss(logits[:, 0], labels, zero_weights)) == 0.0


def test_problem_type_follows_transformers_rules():
  config = _SMALL
  assert losses.resolve_problem_type(config, jnp.array([0, 1])) == "single_label_classification"
  assert losses.resolve_problem_type(config, jnp.zeros((2, 3))) == "multi_label_classification"
  assert losses.resolve_problem_type(config.replace(num_labels=1), jnp.array([0, 1])) == (
    "regression"
  )
  explicit = config.replace(problem_type="regression")
  assert losses.resolve_problem_type(explicit, jnp.array([0, 1])) == "regression"


def test_losses_have_gradients_for_every_logit_that_is_scored():
  """The loss is differentiable and ignores exactly the unscored entries."""
  import jax

  logits = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 5)), jnp.float32)
  labels = jnp.array([[1, -100, 3, -100], [0, 4, -100, -100]])
  grads = jax.grad(losses.token_classification_loss)(logits, labels)
  scored = np.asarray(labels) != losses.IGNORE_INDEX
  assert np.all(np.abs(np.asarray(grads)).sum(-1)[scored] > 0)
  assert np.all(np.asarray(grads)[~scored] == 0)
