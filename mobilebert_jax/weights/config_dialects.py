"""The config dialects of the other implementations, read into `MobileBertConfig` field values.

Three dialects describe a MobileBERT architecture:

* **hf**: a transformers `config.json`. Its keys are our field names (ours is the same form with
  this port's implementation switches added) and its defaults for absent keys are
  transformers' `MobileBertConfig` defaults, which are our dataclass defaults.
* **tf1**: an original google-research `bert_config.json`. The same key names, but the TF1
  `BertConfig` defaults describe a plain BERT (no trigram, no bottleneck, LayerNorm, 16 token
  types, ...) where transformers' describe the released MobileBERT student.
* **tf2**: the arguments of the TF2 Model Garden `MobileBertEncoderConfig` (`word_vocab_size`,
  `num_blocks`, ...), whose defaults are the IB-BERT teacher's.

A reader must therefore know which dialect it reads; `fields_from_dict` is told, or recognises
it from unambiguous markers (`detect_config_source`). The activation names differ too: "gelu" is
the exact (erf) form in transformers, Keras and here, but the tanh approximation (our
"gelu_new") in the TF1 code and the Model Garden's own `tf_utils` (`tf_activation`).

`MobileBertConfig.from_dict` and `from_json_file` read every dialect through this module, which
imports nothing of the model: it only turns a dialect's dict into our field values.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from typing import Any, Literal

ConfigDialect = Literal["hf", "tf1", "tf2"]

# Keys transformers writes into every config.json that carry no architecture information.
HF_GENERIC_KEYS = frozenset(
  {
    "architectures",
    "model_type",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "name_or_path",
    "return_dict",
    "output_hidden_states",
    "output_attentions",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "pruned_heads",
    "tie_word_embeddings",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "is_decoder",
    "cross_attention_hidden_size",
    "add_cross_attention",
    "tie_encoder_decoder",
    "finetuning_task",
    "tokenizer_class",
    "prefix",
    "bos_token_id",
    "eos_token_id",
    "sep_token_id",
    "decoder_start_token_id",
    "task_specific_params",
    "gradient_checkpointing",
    "position_embedding_type",
    "use_cache",
    "_attn_implementation",
    "_commit_hash",
    "label2id",
    "output_past",
    "max_length",
    "min_length",
    "architectures_",
  }
)

# The TF1 `BertConfig` constructor defaults (google-research mobilebert/modeling.py), used for
# keys a `bert_config.json` leaves out. `None` sizes mean "same as hidden_size".
TF1_DEFAULTS: Mapping[str, Any] = {
  "hidden_size": 768,
  "num_hidden_layers": 12,
  "num_attention_heads": 12,
  "intermediate_size": 3072,
  "hidden_act": "gelu",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "max_position_embeddings": 512,
  "type_vocab_size": 16,
  "initializer_range": 0.02,
  "embedding_size": None,
  "trigram_input": False,
  "use_bottleneck": False,
  "intra_bottleneck_size": None,
  "use_bottleneck_attention": False,
  "key_query_shared_bottleneck": False,
  "num_feedforward_networks": 1,
  "normalization_type": "layer_norm",
  "classifier_activation": True,
}
TF1_ONLY_KEYS = frozenset({"quantize", "use_quantized_training", "num_layers", "directory_prefix"})

# TF2 Model Garden `MobileBertEncoderConfig` argument names -> our field names.
TF2_KEY_MAP: Mapping[str, str] = {
  "word_vocab_size": "vocab_size",
  "word_embed_size": "embedding_size",
  "type_vocab_size": "type_vocab_size",
  "max_sequence_length": "max_position_embeddings",
  "num_blocks": "num_hidden_layers",
  "hidden_size": "hidden_size",
  "num_attention_heads": "num_attention_heads",
  "intermediate_size": "intermediate_size",
  "intermediate_act_fn": "hidden_act",
  "hidden_activation": "hidden_act",
  "hidden_dropout_prob": "hidden_dropout_prob",
  "attention_probs_dropout_prob": "attention_probs_dropout_prob",
  "intra_bottleneck_size": "intra_bottleneck_size",
  "initializer_range": "initializer_range",
  "use_bottleneck_attention": "use_bottleneck_attention",
  "key_query_shared_bottleneck": "key_query_shared_bottleneck",
  "num_feedforward_networks": "num_feedforward_networks",
  "normalization_type": "normalization_type",
  "classifier_activation": "classifier_activation",
}
# TF2 encoder arguments that describe no architecture.
TF2_OTHER_KEYS = frozenset({"input_mask_dtype", "name", "quantization_friendly"})
# TF2 `MobileBertEncoderConfig` defaults: the IB-BERT teacher's values (docs/pitfalls.md P7).
TF2_DEFAULTS: Mapping[str, Any] = {
  "vocab_size": 30522,
  "embedding_size": 128,
  "type_vocab_size": 2,
  "max_position_embeddings": 512,
  "num_hidden_layers": 24,
  "hidden_size": 512,
  "num_attention_heads": 4,
  "intermediate_size": 4096,
  "hidden_act": "gelu_new",
  "hidden_dropout_prob": 0.1,
  "attention_probs_dropout_prob": 0.1,
  "intra_bottleneck_size": 1024,
  "initializer_range": 0.02,
  "use_bottleneck_attention": False,
  "key_query_shared_bottleneck": False,
  "num_feedforward_networks": 1,
  "normalization_type": "layer_norm",
  "classifier_activation": True,
  "trigram_input": True,
  "use_bottleneck": True,
}


def tf_activation(name: Any) -> Any:
  """Our name of an activation named by the TF1 code or the Model Garden's `tf_utils`.

  Their "gelu" is the tanh approximation, our "gelu_new"; the other names agree.
  """
  return "gelu_new" if name == "gelu" else name


def keras_activation(name: Any) -> Any:
  """Our name of an activation Keras builds from a string: its "gelu" is exact, like ours."""
  return name


def detect_config_source(data: Mapping[str, Any]) -> ConfigDialect:
  """Recognises the dialect of a config dict.

  transformers always writes `model_type`; the TF2 Model Garden uses its own argument names
  (`word_vocab_size`, `num_blocks`); a dict with `vocab_size` and neither marker is an original
  TF1 `bert_config.json`.

  Args:
    data: parsed JSON.

  Returns:
    "hf", "tf1" or "tf2".

  Raises:
    ValueError: the dict is none of these (with the reason).
  """
  model_type = data.get("model_type")
  if model_type is not None:
    if model_type != "mobilebert":
      raise ValueError(
        f"config has model_type={model_type!r}; a transformers MobileBERT config has "
        "model_type='mobilebert'"
      )
    return "hf"
  if "word_vocab_size" in data or "num_blocks" in data:
    return "tf2"
  if "vocab_size" in data:
    return "tf1"
  raise ValueError(
    "config is neither a transformers config.json (no model_type), nor an original TF1 "
    "bert_config.json (no vocab_size), nor TF2 Model Garden encoder arguments (no "
    f"word_vocab_size); its keys are {sorted(data)}"
  )


def fields_from_dict(
  data: Mapping[str, Any],
  source: str,
  *,
  config_fields: Set[str],
  implementation_fields: Set[str],
) -> dict[str, Any]:
  """Reads a config dict of one dialect as `MobileBertConfig` field values.

  Args:
    data: the parsed JSON.
    source: "hf", "tf1", "tf2", or "auto" to recognise the dialect (`detect_config_source`).
    config_fields: the names of `MobileBertConfig`'s fields (the keys an hf dict may set).
    implementation_fields: those of them that are switches of this port, which only our own
      files carry (not a file transformers wrote).

  Returns:
    Field name -> value, with the dialect's defaults for what `data` leaves out where they
    differ from ours.

  Raises:
    ValueError: an unknown `source`, a dict in none of the dialects, keys the dialect does not
      have, or (hf) a `true_hidden_size` that contradicts the bottleneck settings.
  """
  if source == "auto":
    source = detect_config_source(data)
  if source == "hf":
    return _fields_from_hf(data, config_fields, implementation_fields)
  if source == "tf1":
    return _fields_from_tf1(data)
  if source == "tf2":
    return _fields_from_tf2(data)
  raise ValueError(f"source must be 'auto', 'hf', 'tf1' or 'tf2', got {source!r}")


def _fields_from_hf(
  data: Mapping[str, Any], config_fields: Set[str], implementation_fields: Set[str]
) -> dict[str, Any]:
  model_type = data.get("model_type", "mobilebert")
  if model_type != "mobilebert":
    raise ValueError(f"the config describes a {model_type!r} model, not MobileBERT")
  # A file written by transformers uses "dtype"/"torch_dtype" for the storage dtype of its
  # weights, not for our compute dtype; only our own config files carry implementation fields.
  written_by_transformers = "transformers_version" in data
  fields: dict[str, Any] = {}
  for key, value in data.items():
    if key in implementation_fields:
      if not written_by_transformers:
        fields[key] = value
    elif key in config_fields:
      fields[key] = value
  if "id2label" in data and "num_labels" not in data:
    fields["num_labels"] = len(data["id2label"])
  if "true_hidden_size" in data:
    expected = (
      fields.get("intra_bottleneck_size", 128)
      if fields.get("use_bottleneck", True)
      else fields.get("hidden_size", 512)
    )
    if data["true_hidden_size"] != expected:
      raise ValueError(
        f"true_hidden_size={data['true_hidden_size']} disagrees with the bottleneck settings "
        f"(expected {expected})"
      )
  return fields


def _fields_from_tf1(data: Mapping[str, Any]) -> dict[str, Any]:
  if "vocab_size" not in data:
    raise ValueError("a TF1 bert_config.json must give vocab_size")
  known = set(TF1_DEFAULTS) | {"vocab_size"} | TF1_ONLY_KEYS
  unknown = set(data) - known
  if unknown:
    raise ValueError(f"unknown keys for a TF1 bert_config.json: {sorted(unknown)}")
  merged = {**TF1_DEFAULTS, **{k: v for k, v in data.items() if k not in TF1_ONLY_KEYS}}
  hidden_size = merged["hidden_size"]
  if merged["embedding_size"] is None:
    merged["embedding_size"] = hidden_size
  if merged["intra_bottleneck_size"] is None:
    merged["intra_bottleneck_size"] = hidden_size
  # The TF code's "gelu" is the tanh approximation (docs/pitfalls.md P9).
  merged["hidden_act"] = tf_activation(merged["hidden_act"])
  if not merged["use_bottleneck"]:
    merged["use_bottleneck_attention"] = False
    merged["key_query_shared_bottleneck"] = False
  merged["hf_layer_norm_eps_quirk"] = False
  return merged


def _fields_from_tf2(data: Mapping[str, Any]) -> dict[str, Any]:
  unknown = set(data) - set(TF2_KEY_MAP) - TF2_OTHER_KEYS
  if unknown:
    raise ValueError(f"unknown keys for TF2 MobileBertEncoder arguments: {sorted(unknown)}")
  fields = dict(TF2_DEFAULTS)
  for key, value in data.items():
    if key in TF2_KEY_MAP:
      fields[TF2_KEY_MAP[key]] = value
  # The Model Garden MobileBERT project (`model_utils`, the TF1->TF2 converter, the TF-Hub
  # export) builds "gelu" as the tanh approximation, which this default follows. An encoder built
  # from an experiment yaml by `encoders.build_encoder` hands the string to Keras instead (exact
  # GELU in the FFNs); `tf_common.read_params_yaml` handles that case.
  fields["hidden_act"] = tf_activation(fields["hidden_act"])
  return fields
