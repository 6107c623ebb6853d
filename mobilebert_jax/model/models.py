"""The eight MobileBERT model classes, named and shaped as in transformers.

Every class is a `flax.linen.Module` called as

    module.apply({"params": params}, input_ids, attention_mask=None, token_type_ids=None,
                 deterministic=True, output_hidden_states=False, output_attentions=False)

(the pretraining and masked-LM classes also take keyword-only `masked_positions`, and
`MobileBertModel` and `MobileBertForPreTraining` `output_attention_logits` and `num_blocks`)
and returns a frozen output dataclass (`mobilebert_jax.model.outputs`). The encoder lives under the
`mobilebert` scope as in transformers; heads under `cls`, `classifier` or `qa_outputs`. Training
requires `deterministic=False` and `rngs={"dropout": key}`. The loss of each head is in
`mobilebert_jax.train.losses`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.heads import MobileBertClsHeads
from mobilebert_jax.model.layers import Dense
from mobilebert_jax.model.outputs import (
  MaskedLMOutput,
  MobileBertForPreTrainingOutput,
  MultipleChoiceModelOutput,
  NextSentencePredictorOutput,
  QuestionAnsweringModelOutput,
  SequenceClassifierOutput,
  TokenClassifierOutput,
)

Array = jax.Array
PyTree = Any


class MobileBertForPreTraining(nn.Module):
  """Encoder + masked-LM head + next-sentence head."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=True)
    self.cls = MobileBertClsHeads(self.config, masked_lm=True, next_sentence=True)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    *,
    masked_positions: Array | None = None,
    output_attention_logits: bool = False,
    num_blocks: int | None = None,
  ) -> MobileBertForPreTrainingOutput:
    """Runs the encoder and both pretraining heads.

    Args:
      input_ids, attention_mask, token_type_ids, deterministic, output_hidden_states,
        output_attentions: see the module docstring and `MobileBertModel`.
      masked_positions: optional [batch, num_predictions] int positions: the MLM head then
        gathers them before its transform and returns logits for them only.
      output_attention_logits: return every block's masked pre-softmax attention logits.
      num_blocks: run only the first `num_blocks` blocks (see `MobileBertModel`); both heads
        then read the last block run. Layer-wise transfer needs no heads: apply the encoder
        alone there, e.g. `method=lambda m, *a, **k: m.mobilebert(*a, **k)`, to skip their work.

    Returns:
      `MobileBertForPreTrainingOutput`: MLM logits [B, T, V] (or [B, P, V] at
      `masked_positions`) and NSP logits [B, 2], float32.
    """
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
      output_attention_logits=output_attention_logits,
      num_blocks=num_blocks,
    )
    mlm, nsp = self.cls(
      out.last_hidden_state,
      out.pooler_output,
      self.mobilebert.word_embedding_table(),
      masked_positions,
    )
    return MobileBertForPreTrainingOutput(
      prediction_logits=mlm,
      seq_relationship_logits=nsp,
      hidden_states=out.hidden_states,
      attentions=out.attentions,
      attention_logits=out.attention_logits,
    )


class MobileBertForMaskedLM(nn.Module):
  """Encoder (no pooler) + masked-LM head."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=False)
    self.cls = MobileBertClsHeads(self.config, masked_lm=True, next_sentence=False)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    *,
    masked_positions: Array | None = None,
  ) -> MaskedLMOutput:
    """See the module docstring. Returns `logits` [B, T, V].

    With `masked_positions` [batch, num_predictions] (int), the head gathers those positions
    before its transform and `logits` is [B, P, V].
    """
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    mlm, _ = self.cls(
      out.last_hidden_state, None, self.mobilebert.word_embedding_table(), masked_positions
    )
    return MaskedLMOutput(logits=mlm, hidden_states=out.hidden_states, attentions=out.attentions)


class MobileBertForNextSentencePrediction(nn.Module):
  """Encoder + next-sentence head on the pooled output."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=True)
    self.cls = MobileBertClsHeads(self.config, masked_lm=False, next_sentence=True)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> NextSentencePredictorOutput:
    """See the module docstring. Returns `logits` [B, 2]; 0 = "B follows A"."""
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    _, nsp = self.cls(None, out.pooler_output, None)
    return NextSentencePredictorOutput(
      logits=nsp, hidden_states=out.hidden_states, attentions=out.attentions
    )


class MobileBertForSequenceClassification(nn.Module):
  """Encoder + dropout + linear classifier on the pooled output.

  `config.num_labels == 1` makes it a regression head (see `losses.sequence_classification_loss`).
  """

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=True)
    self.dropout = nn.Dropout(self.config.effective_classifier_dropout)
    self.classifier = Dense(self.config.num_labels, ("hidden", "classes"), self.config)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> SequenceClassifierOutput:
    """See the module docstring. Returns `logits` [B, num_labels] float32."""
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    pooled = self.dropout(out.pooler_output, deterministic=deterministic)
    logits = self.classifier(pooled).astype(jnp.float32)
    return SequenceClassifierOutput(
      logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
    )


class MobileBertForMultipleChoice(nn.Module):
  """Encoder + dropout + one score per choice; inputs are [batch, num_choices, length]."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=True)
    self.dropout = nn.Dropout(self.config.effective_classifier_dropout)
    self.classifier = Dense(1, ("hidden", "classes"), self.config)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> MultipleChoiceModelOutput:
    """Scores each choice.

    Args:
      input_ids: [batch, num_choices, length].
      attention_mask: [batch, num_choices, length] or None.
      token_type_ids: [batch, num_choices, length] or None.
      deterministic: disables dropout.
      output_hidden_states: see `MobileBertModel`; entries are [batch * num_choices, ...].
      output_attentions: see `MobileBertModel`.

    Returns:
      `MultipleChoiceModelOutput` with `logits` [batch, num_choices] float32.

    Raises:
      ValueError: inputs that are not 3-D or whose shapes disagree.
    """
    if input_ids.ndim != 3:
      raise ValueError(
        f"MobileBertForMultipleChoice takes input_ids [batch, num_choices, length], got shape "
        f"{tuple(input_ids.shape)}"
      )
    batch, choices, length = input_ids.shape
    for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
      if other is not None and tuple(other.shape) != tuple(input_ids.shape):
        raise ValueError(
          f"{name} has shape {tuple(other.shape)} but input_ids has shape {tuple(input_ids.shape)}"
        )

    def flat(x):
      return None if x is None else x.reshape(batch * choices, length)

    out = self.mobilebert(
      flat(input_ids),
      flat(attention_mask),
      flat(token_type_ids),
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    pooled = self.dropout(out.pooler_output, deterministic=deterministic)
    logits = self.classifier(pooled).astype(jnp.float32).reshape(batch, choices)
    return MultipleChoiceModelOutput(
      logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
    )


class MobileBertForTokenClassification(nn.Module):
  """Encoder (no pooler) + dropout + per-token linear classifier."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=False)
    self.dropout = nn.Dropout(self.config.effective_classifier_dropout)
    self.classifier = Dense(self.config.num_labels, ("hidden", "classes"), self.config)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> TokenClassifierOutput:
    """See the module docstring. Returns `logits` [B, T, num_labels] float32."""
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    sequence = self.dropout(out.last_hidden_state, deterministic=deterministic)
    logits = self.classifier(sequence).astype(jnp.float32)
    return TokenClassifierOutput(
      logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
    )


class MobileBertForQuestionAnswering(nn.Module):
  """Encoder (no pooler) + span head `qa_outputs`: channel 0 = start, 1 = end."""

  config: MobileBertConfig

  def setup(self):
    self.mobilebert = MobileBertModel(self.config, add_pooling_layer=False)
    self.qa_outputs = Dense(2, ("hidden", "classes"), self.config)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
  ) -> QuestionAnsweringModelOutput:
    """See the module docstring. Returns `start_logits`, `end_logits` [B, T] float32."""
    out = self.mobilebert(
      input_ids,
      attention_mask,
      token_type_ids,
      deterministic,
      output_hidden_states,
      output_attentions,
    )
    logits = self.qa_outputs(out.last_hidden_state).astype(jnp.float32)
    return QuestionAnsweringModelOutput(
      start_logits=logits[..., 0],
      end_logits=logits[..., 1],
      hidden_states=out.hidden_states,
      attentions=out.attentions,
    )


MODEL_CLASSES: dict[str, type[nn.Module]] = {
  cls.__name__: cls
  for cls in (
    MobileBertModel,
    MobileBertForPreTraining,
    MobileBertForMaskedLM,
    MobileBertForNextSentencePrediction,
    MobileBertForSequenceClassification,
    MobileBertForMultipleChoice,
    MobileBertForTokenClassification,
    MobileBertForQuestionAnswering,
  )
}


def dummy_inputs(module: nn.Module, batch: int = 1, length: int = 8) -> Array:
  """Token ids of the right rank for `module.init` ([batch, 1, length] for multiple choice)."""
  if isinstance(module, MobileBertForMultipleChoice):
    return jnp.zeros((batch, 1, length), dtype=jnp.int32)
  return jnp.zeros((batch, length), dtype=jnp.int32)


def init_params(module: nn.Module, rng: jax.Array | int = 0, length: int = 8) -> PyTree:
  """Initialises a model's parameters and strips the logical-axis boxes.

  Args:
    module: any model class instance.
    rng: a PRNG key or an integer seed.
    length: sequence length of the dummy input (parameters do not depend on it).

  Returns:
    The parameter tree (plain arrays), as used in `module.apply({"params": params}, ...)`.
  """
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  # Eager on purpose: jitting `init` compiles the whole forward pass (minutes for the released
  # model on a CPU) only to run it once.
  variables = module.init(rng, dummy_inputs(module, length=length))
  return nn.meta.unbox(variables["params"])


def abstract_params(module: nn.Module, boxed: bool = False) -> PyTree:
  """Shapes and dtypes of a model's parameters, without allocating them.

  Args:
    module: any model class instance.
    boxed: keep the `nn.LogicallyPartitioned` boxes (for sharding), else plain
      `jax.ShapeDtypeStruct` leaves.

  Returns:
    A tree of `jax.ShapeDtypeStruct` (possibly boxed).
  """
  variables = jax.eval_shape(module.init, jax.random.key(0), dummy_inputs(module))
  params = variables["params"]
  return params if boxed else nn.meta.unbox(params)
