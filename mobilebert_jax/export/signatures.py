"""The names and shapes an exported model is called with, as the original exports named them.

Task models keep the google-research TF1 serving names (`run_squad.py --export_dir`): int32
`input_ids`, `input_mask`, `segment_ids` in, `start_logits`/`end_logits` (question answering)
or `logits` (classification, token classification, multiple choice) out. The bare encoder keeps
the TF-Hub interface of the Model Garden's `export_tfhub.py`: `input_word_ids`, `input_mask`,
`input_type_ids` in, `sequence_output`, `pooled_output` and `encoder_outputs` out. TF-Hub's
`encoder_outputs` is a list of per-block outputs; a serving signature (SavedModel, TFLite) can
only return tensors, so there it is one stacked tensor [num_blocks, batch, length, hidden] whose
entry i is the list's entry i (the SavedModel's TF-Hub `__call__` returns the list itself).

Apps that read outputs by these names (the TFLite signature runner, Android's
`Interpreter.runSignature`) work unchanged whatever order the converter puts tensors in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import (
  MobileBertForMultipleChoice,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  MobileBertForTokenClassification,
)

Array = jax.Array
PyTree = Any

# The serving signature's key, as `tf.saved_model.save` names the default one.
SERVING_KEY = "serving_default"
TASK_INPUTS = ("input_ids", "input_mask", "segment_ids")
HUB_INPUTS = ("input_word_ids", "input_mask", "input_type_ids")
# The name of our three model inputs in batches and task eval sets, in signature order.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass(frozen=True)
class Signature:
  """How one model class is called once exported.

  Attributes:
    model_class: the class name, e.g. "MobileBertForQuestionAnswering".
    inputs: the three input names, in the order ids, mask, segment ids (`MODEL_INPUTS`).
    outputs: the output names.
    num_choices: choices per example for multiple choice (inputs are then
      [batch, num_choices, length]); None for the other classes.
    select: (model outputs) -> {output name: array}.
  """

  model_class: str
  inputs: tuple[str, str, str]
  outputs: tuple[str, ...]
  num_choices: int | None
  select: Callable[[Any], dict[str, Array]]

  def input_shape(self, batch: int | None, seq_len: int) -> tuple[int | None, ...]:
    """The shape of each input: [batch, length], or [batch, num_choices, length]."""
    if self.num_choices is None:
      return (batch, seq_len)
    return (batch, self.num_choices, seq_len)

  def polymorphic_shape(self, seq_len: int) -> str:
    """The `jax.export` shape of each input with a symbolic batch `b`."""
    return f"(b, {', '.join(str(d) for d in self.input_shape(None, seq_len)[1:])})"

  def rename_inputs(self, model_inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Our batch keys (`MODEL_INPUTS`) -> this signature's input names."""
    return {name: model_inputs[key] for key, name in zip(MODEL_INPUTS, self.inputs, strict=True)}


def _encoder_outputs(outputs: Any) -> dict[str, Array]:
  # hidden_states[0] is the embedding output; TF-Hub lists the blocks' outputs only.
  return {
    "sequence_output": outputs.last_hidden_state,
    "pooled_output": outputs.pooler_output,
    "encoder_outputs": jnp.stack(outputs.hidden_states[1:]),
  }


def _span_outputs(outputs: Any) -> dict[str, Array]:
  return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits}


def _logits(outputs: Any) -> dict[str, Array]:
  return {"logits": outputs.logits}


# class name -> (inputs, outputs, select, whether the encoder's per-block outputs are needed)
_SIGNATURES: dict[str, tuple[tuple[str, str, str], tuple[str, ...], Callable, bool]] = {
  MobileBertModel.__name__: (
    HUB_INPUTS,
    ("sequence_output", "pooled_output", "encoder_outputs"),
    _encoder_outputs,
    True,
  ),
  MobileBertForQuestionAnswering.__name__: (
    TASK_INPUTS,
    ("start_logits", "end_logits"),
    _span_outputs,
    False,
  ),
  MobileBertForSequenceClassification.__name__: (TASK_INPUTS, ("logits",), _logits, False),
  MobileBertForTokenClassification.__name__: (TASK_INPUTS, ("logits",), _logits, False),
  MobileBertForMultipleChoice.__name__: (TASK_INPUTS, ("logits",), _logits, False),
}
EXPORTABLE_CLASSES = tuple(_SIGNATURES)
DEFAULT_NUM_CHOICES = 4  # SWAG's


def signature_for(module: nn.Module, num_choices: int | None = None) -> Signature:
  """The signature of `module`'s class.

  Args:
    module: a model of one of `EXPORTABLE_CLASSES`.
    num_choices: choices per example for multiple choice (default 4, SWAG's).

  Raises:
    ValueError: a class without an export signature (pretraining and masked-LM heads).
  """
  name = type(module).__name__
  if name not in _SIGNATURES:
    raise ValueError(
      f"{name} has no export signature; export one of {', '.join(EXPORTABLE_CLASSES)} "
      "(--model_class=MobileBertModel exports a checkpoint's encoder)"
    )
  inputs, outputs, select, _ = _SIGNATURES[name]
  choices = None
  if isinstance(module, MobileBertForMultipleChoice):
    choices = num_choices or DEFAULT_NUM_CHOICES
  return Signature(name, inputs, outputs, choices, select)


def serving_function(
  module: nn.Module, signature: Signature
) -> Callable[[PyTree, Array, Array, Array], dict[str, Array]]:
  """`fn(variables, ids, mask, segment_ids) -> {output name: array}`, the function exported.

  `variables` holds every collection of the model (`params` and, e.g., the activation ranges
  of quantization-aware training); the model runs deterministically and updates none of them.
  Ids, mask and segment ids are int32 and the outputs float32, as the original exports.
  """
  needs_blocks = _SIGNATURES[signature.model_class][3]

  def fn(variables: PyTree, input_ids: Array, input_mask: Array, segment_ids: Array):
    outputs = module.apply(
      variables,
      input_ids,
      input_mask,
      segment_ids,
      deterministic=True,
      output_hidden_states=needs_blocks,
    )
    return {k: v.astype(jnp.float32) for k, v in signature.select(outputs).items()}

  return fn
