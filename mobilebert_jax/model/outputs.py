"""Frozen output dataclasses of the model classes, with transformers' field names.

They are pytrees (`flax.struct.dataclass`), so they pass through `jax.jit` and `jax.tree.map`.
`hidden_states` holds the embedding output followed by one entry per block (25 for the released
model); `attentions` holds one post-softmax map [batch, heads, length, length] per block and
`attention_logits` the matching pre-softmax logits. All are None unless asked for.
"""

from __future__ import annotations

import flax.struct
import jax

Array = jax.Array


@flax.struct.dataclass
class MobileBertModelOutput:
  """Output of `MobileBertModel`.

  Attributes:
    last_hidden_state: [batch, length, hidden_size] output of the last block.
    pooler_output: [batch, hidden_size] pooled first token (None without a pooling layer).
    hidden_states: embedding output and every block's output, each [batch, length, hidden].
    attentions: per block, [batch, heads, length, length] attention probabilities.
    attention_logits: per block, [batch, heads, length, length] float32 masked pre-softmax
      attention logits: the scaled scores q·k/√d with masked keys replaced by a large negative
      finite value (zero probability) or by `config.masked_attention_logit` (the TF1 "-6" rule),
      i.e. exactly what the softmax sees, so `softmax(attention_logits[i]) == attentions[i]`
      and `log_softmax` of them is finite (TF1's attention maps, which its attention-transfer
      loss takes `log_softmax` of; the probabilities' `log` is -inf at masked keys).
  """

  last_hidden_state: Array
  pooler_output: Array | None = None
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None
  attention_logits: tuple[Array, ...] | None = None


@flax.struct.dataclass
class MobileBertForPreTrainingOutput:
  """Output of `MobileBertForPreTraining`.

  Attributes:
    prediction_logits: [batch, length, vocab_size] masked-LM logits (float32), or
      [batch, num_predictions, vocab_size] at the `masked_positions` when those are given.
    seq_relationship_logits: [batch, 2] next-sentence logits (float32); 0 = "B follows A".
    hidden_states: see `MobileBertModelOutput`.
    attentions: see `MobileBertModelOutput`.
    attention_logits: see `MobileBertModelOutput`.
  """

  prediction_logits: Array
  seq_relationship_logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None
  attention_logits: tuple[Array, ...] | None = None


@flax.struct.dataclass
class MaskedLMOutput:
  """Output of `MobileBertForMaskedLM`: `logits` [batch, length, vocab_size].

  With `masked_positions` [batch, num_predictions], `logits` is [batch, num_predictions,
  vocab_size]: the rows of the full logits at those positions.
  """

  logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class NextSentencePredictorOutput:
  """Output of `MobileBertForNextSentencePrediction`: `logits` [batch, 2]."""

  logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class SequenceClassifierOutput:
  """Output of `MobileBertForSequenceClassification`: `logits` [batch, num_labels]."""

  logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class MultipleChoiceModelOutput:
  """Output of `MobileBertForMultipleChoice`: `logits` [batch, num_choices]."""

  logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class TokenClassifierOutput:
  """Output of `MobileBertForTokenClassification`: `logits` [batch, length, num_labels]."""

  logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None


@flax.struct.dataclass
class QuestionAnsweringModelOutput:
  """Output of `MobileBertForQuestionAnswering`.

  Attributes:
    start_logits: [batch, length] span-start logits (float32).
    end_logits: [batch, length] span-end logits (float32).
    hidden_states: see `MobileBertModelOutput`.
    attentions: see `MobileBertModelOutput`.
  """

  start_logits: Array
  end_logits: Array
  hidden_states: tuple[Array, ...] | None = None
  attentions: tuple[Array, ...] | None = None
