"""The explicit name table between our parameter tree and transformers' PyTorch state dict.

One `TensorMapping` per tensor (docs/references.md §hf-names). transformers stores linear weights
[out, in]; we store kernels [in, out], with the query/key/value kernels split per head
([in, heads, head_size]) and the attention-output kernel [heads, head_size, out], as the TF2 Model
Garden does. The head split is a plain row-major reshape (feature index = head * head_size + k) in
every reference. The transforms are those of `mapping`: "transpose" for a linear weight,
"heads_last_transposed" and "heads_last" for a query/key/value weight and bias,
"heads_first_transposed" for the attention-output weight.

The table is the only place that knows transformers' names: the importer and the exporter both
walk it, so a tensor can neither be forgotten on the way in nor on the way out.
"""

from __future__ import annotations

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights.mapping import TensorMapping, Transform

# Re-exported for the callers that walk this table themselves (the parity tests' and the
# benchmarks' weight copies).
from mobilebert_jax.weights.mapping import their_shape as their_shape
from mobilebert_jax.weights.mapping import to_ours as to_ours
from mobilebert_jax.weights.mapping import to_theirs as to_theirs

# transformers' `base_model_prefix`: the encoder's scope in every class but `MobileBertModel`.
BASE_MODEL_PREFIX = "mobilebert."

# Which model classes have which top-level parts, as in transformers.
_HAS_POOLER = {
  "MobileBertModel": True,
  "MobileBertForPreTraining": True,
  "MobileBertForMaskedLM": False,
  "MobileBertForNextSentencePrediction": True,
  "MobileBertForSequenceClassification": True,
  "MobileBertForMultipleChoice": True,
  "MobileBertForTokenClassification": False,
  "MobileBertForQuestionAnswering": False,
}


def _dense(
  ours: tuple[str, ...], theirs: str, kernel: Transform = "transpose", bias: Transform = "copy"
) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "kernel"), f"{theirs}.weight", kernel),
    TensorMapping((*ours, "bias"), f"{theirs}.bias", bias),
  ]


def _norm(ours: tuple[str, ...], theirs: str) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "scale"), f"{theirs}.weight"),
    TensorMapping((*ours, "bias"), f"{theirs}.bias"),
  ]


def _block(config: MobileBertConfig, ours: tuple[str, ...], theirs: str) -> list[TensorMapping]:
  table: list[TensorMapping] = []
  if config.use_bottleneck:
    table += _dense((*ours, "bottleneck_input", "dense"), f"{theirs}.bottleneck.input.dense")
    table += _norm((*ours, "bottleneck_input", "norm"), f"{theirs}.bottleneck.input.LayerNorm")
    if config.uses_shared_bottleneck:
      table += _dense(
        (*ours, "kq_shared_bottleneck", "dense"), f"{theirs}.bottleneck.attention.dense"
      )
      table += _norm(
        (*ours, "kq_shared_bottleneck", "norm"), f"{theirs}.bottleneck.attention.LayerNorm"
      )
  for proj in ("query", "key", "value"):
    table += _dense(
      (*ours, "attention", proj),
      f"{theirs}.attention.self.{proj}",
      kernel="heads_last_transposed",
      bias="heads_last",
    )
  table += _dense(
    (*ours, "attention", "output"),
    f"{theirs}.attention.output.dense",
    kernel="heads_first_transposed",
  )
  table += _norm((*ours, "attention", "norm"), f"{theirs}.attention.output.LayerNorm")
  last = config.num_feedforward_networks - 1
  for f in range(config.num_feedforward_networks):
    # transformers numbers the first F-1 FFNs `ffn.{f}` and calls the last one the block's own
    # `intermediate`/`output`.
    if f < last:
      names = (
        f"{theirs}.ffn.{f}.intermediate.dense",
        f"{theirs}.ffn.{f}.output.dense",
        f"{theirs}.ffn.{f}.output.LayerNorm",
      )
    else:
      names = (
        f"{theirs}.intermediate.dense",
        f"{theirs}.output.dense",
        f"{theirs}.output.LayerNorm",
      )
    table += _dense((*ours, f"ffn_{f}", "intermediate"), names[0])
    table += _dense((*ours, f"ffn_{f}", "output"), names[1])
    table += _norm((*ours, f"ffn_{f}", "norm"), names[2])
  if config.use_bottleneck:
    table += _dense((*ours, "bottleneck_output", "dense"), f"{theirs}.output.bottleneck.dense")
    table += _norm((*ours, "bottleneck_output", "norm"), f"{theirs}.output.bottleneck.LayerNorm")
  return table


def encoder_table(
  config: MobileBertConfig, ours: tuple[str, ...], theirs: str, add_pooling_layer: bool
) -> list[TensorMapping]:
  """Name table of `MobileBertModel` (embeddings, unscanned blocks, pooler).

  Args:
    config: model config.
    ours: prefix of the encoder in our tree (() or ("mobilebert",)).
    theirs: prefix in transformers ("" or "mobilebert.").
    add_pooling_layer: whether the model has a pooler.

  Returns:
    The mappings, blocks as `layer_{i}` (stack them for `scan_layers`).
  """
  emb, temb = (*ours, "embeddings"), f"{theirs}embeddings"
  table = [
    TensorMapping((*emb, "word_embeddings"), f"{temb}.word_embeddings.weight"),
    TensorMapping((*emb, "position_embeddings"), f"{temb}.position_embeddings.weight"),
    TensorMapping((*emb, "token_type_embeddings"), f"{temb}.token_type_embeddings.weight"),
  ]
  if config.has_embedding_projection:
    table += _dense((*emb, "embedding_transformation"), f"{temb}.embedding_transformation")
  table += _norm((*emb, "norm"), f"{temb}.LayerNorm")
  for i in range(config.num_hidden_layers):
    table += _block(config, (*ours, "encoder", f"layer_{i}"), f"{theirs}encoder.layer.{i}")
  if add_pooling_layer and config.classifier_activation:
    table += _dense((*ours, "pooler", "dense"), f"{theirs}pooler.dense")
  return table


def _mlm_table(config: MobileBertConfig) -> list[TensorMapping]:
  head = ("cls", "predictions")
  table = _dense((*head, "transform_dense"), "cls.predictions.transform.dense")
  table += _norm((*head, "transform_layer_norm"), "cls.predictions.transform.LayerNorm")
  if config.hidden_size > config.embedding_size:
    table.append(
      TensorMapping((*head, "extra_output_weights"), "cls.predictions.dense.weight", "transpose")
    )
  table.append(TensorMapping((*head, "bias"), "cls.predictions.bias"))
  return table


def model_table(config: MobileBertConfig, model_class: str) -> list[TensorMapping]:
  """Full name table of one model class.

  Args:
    config: model config.
    model_class: class name, e.g. "MobileBertForQuestionAnswering".

  Returns:
    Mappings for every parameter of that class (unscanned layout).
  """
  if model_class not in _HAS_POOLER:
    raise ValueError(f"unknown model class {model_class!r}; known: {sorted(_HAS_POOLER)}")
  pooler = _HAS_POOLER[model_class]
  if model_class == "MobileBertModel":
    return encoder_table(config, (), "", pooler)
  table = encoder_table(config, ("mobilebert",), BASE_MODEL_PREFIX, pooler)
  if model_class in ("MobileBertForPreTraining", "MobileBertForMaskedLM"):
    table += _mlm_table(config)
  if model_class in ("MobileBertForPreTraining", "MobileBertForNextSentencePrediction"):
    table += _dense(("cls", "seq_relationship"), "cls.seq_relationship")
  if model_class in (
    "MobileBertForSequenceClassification",
    "MobileBertForMultipleChoice",
    "MobileBertForTokenClassification",
  ):
    table += _dense(("classifier",), "classifier")
  if model_class == "MobileBertForQuestionAnswering":
    table += _dense(("qa_outputs",), "qa_outputs")
  return table


def tied_or_buffer_keys(model_class: str) -> dict[str, str]:
  """Keys transformers may store besides the table: tied copies and buffers.

  They carry no information of their own, so the importer neither loads them nor reports them
  as unused, and the exporter leaves them out, as transformers' own safetensors files do
  (transformers re-ties the copies when it loads).

  Returns:
    key -> why it is not in the table.
  """
  prefix = "" if model_class == "MobileBertModel" else BASE_MODEL_PREFIX
  keys = {f"{prefix}embeddings.position_ids": "a buffer (0..max_position_embeddings-1)"}
  if model_class in ("MobileBertForPreTraining", "MobileBertForMaskedLM"):
    for copy, original in tied_copies().items():
      keys[copy] = f"tied to {original}"
  return keys


def tied_copies() -> dict[str, str]:
  """Tied copies transformers may store in a state dict -> the key whose value they repeat.

  Both names are in the namespace of the classes with an MLM head (`mobilebert.` prefix). The
  two tensors have the same shape and must be equal; a checkpoint where they differ cannot be
  represented by a tied model.
  """
  return {
    "cls.predictions.decoder.weight": f"{BASE_MODEL_PREFIX}embeddings.word_embeddings.weight",
    "cls.predictions.decoder.bias": "cls.predictions.bias",
  }
