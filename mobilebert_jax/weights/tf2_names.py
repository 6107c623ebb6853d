"""The explicit name tables between our parameters and the TF2 Model Garden MobileBERT.

The Model Garden stores every tensor in our layout already (dense kernels [in, out], query/key/
value kernels [in, A, d] with biases [A, d], attention-output kernel [A, d, out]), so every
mapping is a copy. A TF2 tensor has two names, and each has its table
(docs/references.md §tf2-names):

* **Object keys**, what `tf.train.Checkpoint(**pretrainer.checkpoint_items)` writes: the path of
  attributes from the checkpoint root, e.g.
  `encoder/layer_with_weights-3/block_layers/attention/0/_query_dense/kernel`. Keras numbers the
  encoder's layers that have weights: 0 is the embedding layer, 1..L the blocks, L+1 the pooler
  (only with `classifier_activation`). `object_table` gives the keys of that standard layout;
  `canonical_object_keys` rewrites the keys of any checkpoint into it (other roots, other
  numbering; see there).
* **Variable names** (`.name`), what a SavedModel (TF-Hub) keeps and what the Model Garden's
  TF1->TF2 converter writes in between: name scopes such as
  `transformer_layer_3/attention/query/kernel`. `variable_table` gives them;
  `canonical_variable_name` removes what differs between exports (`:0`, Keras' `_1` suffixes on
  automatically named layers, a model prefix).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights.mapping import TensorMapping
from mobilebert_jax.weights.protocol import Path

# ----------------------------------------------------------------------------------------------
# Object keys (`tf.train.Checkpoint`)
# ----------------------------------------------------------------------------------------------

ENCODER_ROOT = "encoder"
MLM_ROOT = "masked_lm"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# `MobileBertMaskedLM` shares the encoder's word table; a checkpoint that saves both objects
# stores it once, under the MLM head.
WORD_TABLE_KEY = f"{ENCODER_ROOT}/layer_with_weights-0/word_embedding/embeddings"
MLM_WORD_TABLE_KEY = f"{MLM_ROOT}/embedding_table"
OBJECT_ALIASES = {MLM_WORD_TABLE_KEY: WORD_TABLE_KEY}


def _dense(ours: Path, theirs: str) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "kernel"), f"{theirs}/kernel"),
    TensorMapping((*ours, "bias"), f"{theirs}/bias"),
  ]


def _norm(ours: Path, theirs: str) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "scale"), f"{theirs}/gamma"),
    TensorMapping((*ours, "bias"), f"{theirs}/beta"),
  ]


def _object_block(config: MobileBertConfig, ours: Path, theirs: str) -> list[TensorMapping]:
  layers = f"{theirs}/block_layers"
  table = _dense((*ours, "bottleneck_input", "dense"), f"{layers}/bottleneck_input/0")
  table += _norm((*ours, "bottleneck_input", "norm"), f"{layers}/bottleneck_input/1")
  if config.uses_shared_bottleneck:
    table += _dense((*ours, "kq_shared_bottleneck", "dense"), f"{layers}/kq_shared_bottleneck/0")
    table += _norm((*ours, "kq_shared_bottleneck", "norm"), f"{layers}/kq_shared_bottleneck/1")
  # Keras MultiHeadAttention's own dense layers.
  for projection in ("query", "key", "value"):
    table += _dense((*ours, "attention", projection), f"{layers}/attention/0/_{projection}_dense")
  table += _dense((*ours, "attention", "output"), f"{layers}/attention/0/_output_dense")
  table += _norm((*ours, "attention", "norm"), f"{layers}/attention/1")
  for f in range(config.num_feedforward_networks):
    table += _dense((*ours, f"ffn_{f}", "intermediate"), f"{layers}/ffn/{f}/0")
    table += _dense((*ours, f"ffn_{f}", "output"), f"{layers}/ffn/{f}/1")
    table += _norm((*ours, f"ffn_{f}", "norm"), f"{layers}/ffn/{f}/2")
  # Index 1 of the output bottleneck is its dropout layer.
  table += _dense((*ours, "bottleneck_output", "dense"), f"{layers}/bottleneck_output/0")
  table += _norm((*ours, "bottleneck_output", "norm"), f"{layers}/bottleneck_output/2")
  return table


def object_table(config: MobileBertConfig, model_class: str) -> list[TensorMapping]:
  """Object keys (standard layout, without `VALUE_SUFFIX`) of every tensor of a pretrainer
  checkpoint of this architecture, named for `model_class` (heads it lacks go unused)."""
  ours = () if model_class == "MobileBertModel" else ("mobilebert",)
  emb, temb = (*ours, "embeddings"), f"{ENCODER_ROOT}/layer_with_weights-0"
  table = [
    TensorMapping((*emb, "word_embeddings"), WORD_TABLE_KEY),
    TensorMapping((*emb, "position_embeddings"), f"{temb}/pos_embedding/embeddings"),
    TensorMapping((*emb, "token_type_embeddings"), f"{temb}/type_embedding/embeddings"),
  ]
  table += _dense((*emb, "embedding_transformation"), f"{temb}/word_embedding_proj")
  table += _norm((*emb, "norm"), f"{temb}/layer_norm")
  for i in range(config.num_hidden_layers):
    table += _object_block(
      config, (*ours, "encoder", f"layer_{i}"), f"{ENCODER_ROOT}/layer_with_weights-{i + 1}"
    )
  if config.classifier_activation:
    pooler = f"{ENCODER_ROOT}/layer_with_weights-{config.num_hidden_layers + 1}"
    table += _dense((*ours, "pooler", "dense"), pooler)
  mlm = ("cls", "predictions")
  table += _dense((*mlm, "transform_dense"), f"{MLM_ROOT}/dense")
  table += _norm((*mlm, "transform_layer_norm"), f"{MLM_ROOT}/layer_norm")
  if config.hidden_size > config.embedding_size:
    table.append(TensorMapping((*mlm, "extra_output_weights"), f"{MLM_ROOT}/extra_output_weights"))
  # The attribute is named "output_bias/bias"; object keys escape its "/" as ".S".
  table.append(TensorMapping((*mlm, "bias"), f"{MLM_ROOT}/output_bias.Sbias"))
  return table


def is_object_bookkeeping(key: str) -> bool:
  """Whether an object key is checkpoint or optimizer state rather than a model tensor."""
  first = key.split("/", 1)[0]
  return (
    key == "_CHECKPOINTABLE_OBJECT_GRAPH"
    or first in ("save_counter", "global_step", "optimizer")
    or "/.OPTIMIZER_SLOT/" in key
    or not key.endswith(VALUE_SUFFIX)
  )


class ObjectLayoutError(ValueError):
  """An object-based checkpoint that does not hold exactly one MobileBERT encoder."""


def canonical_object_keys(keys: Iterable[str], num_blocks: int | None = None) -> dict[str, str]:
  """Maps the model tensors' object keys of a checkpoint to the standard layout of `object_table`.

  Observed variants (tf-models-official 2.20, TF 2.20), all handled:

  * `tf.train.Checkpoint(**pretrainer.checkpoint_items)`: roots `encoder/` and `masked_lm/`
    (the released TF2 checkpoints, and the Model Garden's TF1->TF2 converter). The word table
    is then stored only as `masked_lm/embedding_table`.
  * `tf.train.Checkpoint(encoder=encoder)`: `encoder/` only, the word table under
    `encoder/layer_with_weights-0/word_embedding/embeddings`.
  * `tf.train.Checkpoint(model=pretrainer, ...)` (Model Garden training runs): roots
    `model/encoder_network/` and `model/masked_lm/`, plus `optimizer/...` and `global_step`.
  * `pretrainer.save_weights(...)`: roots `encoder_network/` and `masked_lm/`.

  The encoder is recognised by content rather than by its root's name: the prefix under which
  `layer_with_weights-K` groups hold an embedding layer (`type_embedding`, `pos_embedding`,
  `word_embedding_proj`) and blocks (`block_layers/...`); blocks are renumbered 1..L in their
  order, the pooler (a group holding just `kernel` and `bias`) becomes L+1. The MLM head is the
  prefix holding `output_bias.Sbias`.

  Args:
    keys: the checkpoint's object keys (bookkeeping included or not).
    num_blocks: the expected number of blocks, checked when given.

  Returns:
    original key -> canonical key (without `VALUE_SUFFIX`) for every model tensor that sits
    in the encoder or the MLM head; other keys are absent (they are not MobileBERT's).

  Raises:
    ObjectLayoutError: no encoder or several, or a block count other than `num_blocks`.
  """
  tensors = [k for k in keys if not is_object_bookkeeping(k)]
  groups: dict[tuple[str, int], dict[str, str]] = {}
  for key in tensors:
    name = key[: -len(VALUE_SUFFIX)]
    at = name.rfind("layer_with_weights-")
    if at < 0 or (at > 0 and name[at - 1] != "/"):
      continue
    number, _, member = name[at + len("layer_with_weights-") :].partition("/")
    if not number.isdigit() or not member:
      continue
    groups.setdefault((name[: max(at - 1, 0)], int(number)), {})[member] = key

  roles: dict[str, dict[str, list[int]]] = {}
  for (root, number), members in groups.items():
    role = _group_role(members)
    if role is not None:
      roles.setdefault(root, {}).setdefault(role, []).append(number)
  roots = [r for r, found in roles.items() if "embeddings" in found and "block" in found]
  if not roots:
    tops = sorted({k.split("/", 1)[0] for k in tensors})
    raise ObjectLayoutError(
      "no MobileBERT encoder (an embedding layer and `block_layers`) among the checkpoint's "
      f"objects; its top-level objects are {tops[:12]}. (A SavedModel's variables/ checkpoint "
      "is read through the SavedModel directory.)"
    )
  if len(roots) > 1:
    raise ObjectLayoutError(f"the checkpoint holds several MobileBERT encoders, under {roots}")
  root = roots[0]
  found = roles[root]
  if len(found["embeddings"]) > 1 or len(found.get("pooler", [])) > 1:
    raise ObjectLayoutError(f"{root or '(root)'} has several embedding or pooler layers")
  blocks = sorted(found["block"])
  if num_blocks is not None and len(blocks) != num_blocks:
    raise ObjectLayoutError(
      f"the checkpoint's encoder ({root or 'root'}) has {len(blocks)} transformer blocks but "
      f"the config says num_hidden_layers={num_blocks}"
    )
  renumber = {found["embeddings"][0]: 0}
  renumber.update({number: i + 1 for i, number in enumerate(blocks)})
  for number in found.get("pooler", []):
    renumber[number] = len(blocks) + 1

  canonical: dict[str, str] = {}
  for (group_root, number), members in groups.items():
    if group_root != root or number not in renumber:
      continue
    for member, key in members.items():
      canonical[key] = f"{ENCODER_ROOT}/layer_with_weights-{renumber[number]}/{member}"

  bias_member = "output_bias.Sbias" + VALUE_SUFFIX
  mlm_roots = sorted({k[: -len(bias_member)] for k in tensors if k.endswith(bias_member)})
  if len(mlm_roots) > 1:
    raise ObjectLayoutError(f"the checkpoint holds several MLM heads, under {mlm_roots}")
  if mlm_roots:
    mlm = mlm_roots[0]  # "masked_lm/", "model/masked_lm/", or "" for the head saved alone
    for key in tensors:
      if key.startswith(mlm) and key not in canonical:
        canonical[key] = f"{MLM_ROOT}/{key[len(mlm) : -len(VALUE_SUFFIX)]}"
  return canonical


def _group_role(members: Mapping[str, str]) -> str | None:
  names = set(members)
  if any(m.startswith("block_layers/") for m in names):
    return "block"
  embedding_parts = ("type_embedding/", "pos_embedding/", "word_embedding_proj/")
  if any(m.startswith(embedding_parts) for m in names):
    return "embeddings"
  if names == {"kernel", "bias"}:
    return "pooler"
  return None


# ----------------------------------------------------------------------------------------------
# Variable names (`.name`)
# ----------------------------------------------------------------------------------------------

EMBEDDING_SCOPE = "mobile_bert_embedding"
MLM_SCOPE = "bert/cls/predictions"


def _variable_block(config: MobileBertConfig, ours: Path, theirs: str) -> list[TensorMapping]:
  table = _dense((*ours, "bottleneck_input", "dense"), f"{theirs}/bottleneck_input/dense")
  table += _norm((*ours, "bottleneck_input", "norm"), f"{theirs}/bottleneck_input/norm")
  if config.uses_shared_bottleneck:
    table += _dense(
      (*ours, "kq_shared_bottleneck", "dense"), f"{theirs}/kq_shared_bottleneck/dense"
    )
    table += _norm((*ours, "kq_shared_bottleneck", "norm"), f"{theirs}/kq_shared_bottleneck/norm")
  for projection in ("query", "key", "value"):
    table += _dense((*ours, "attention", projection), f"{theirs}/attention/{projection}")
  table += _dense((*ours, "attention", "output"), f"{theirs}/attention/attention_output")
  table += _norm((*ours, "attention", "norm"), f"{theirs}/attention/norm")
  for f in range(config.num_feedforward_networks):
    scope = f"{theirs}/ffn_layer_{f}"
    table += _dense((*ours, f"ffn_{f}", "intermediate"), f"{scope}/intermediate_dense")
    table += _dense((*ours, f"ffn_{f}", "output"), f"{scope}/output_dense")
    table += _norm((*ours, f"ffn_{f}", "norm"), f"{scope}/norm")
  table += _dense((*ours, "bottleneck_output", "dense"), f"{theirs}/bottleneck_output/dense")
  table += _norm((*ours, "bottleneck_output", "norm"), f"{theirs}/bottleneck_output/norm")
  return table


def variable_table(config: MobileBertConfig, model_class: str) -> list[TensorMapping]:
  """Canonical variable names (without ":0") of every tensor of a TF2 pretrainer of this
  architecture, named for `model_class` (heads it lacks go unused)."""
  ours = () if model_class == "MobileBertModel" else ("mobilebert",)
  emb = (*ours, "embeddings")
  table = [
    TensorMapping((*emb, "word_embeddings"), f"{EMBEDDING_SCOPE}/word_embedding/embeddings"),
    TensorMapping(
      (*emb, "position_embeddings"), f"{EMBEDDING_SCOPE}/position_embedding/embeddings"
    ),
    TensorMapping((*emb, "token_type_embeddings"), f"{EMBEDDING_SCOPE}/type_embedding/embeddings"),
  ]
  table += _dense((*emb, "embedding_transformation"), f"{EMBEDDING_SCOPE}/embedding_projection")
  table += _norm((*emb, "norm"), f"{EMBEDDING_SCOPE}/embedding_norm")
  for i in range(config.num_hidden_layers):
    table += _variable_block(config, (*ours, "encoder", f"layer_{i}"), f"transformer_layer_{i}")
  if config.classifier_activation:
    table += _dense((*ours, "pooler", "dense"), "pooler")
  mlm = ("cls", "predictions")
  table += _dense((*mlm, "transform_dense"), f"{MLM_SCOPE}/transform/dense")
  table += _norm((*mlm, "transform_layer_norm"), f"{MLM_SCOPE}/transform/LayerNorm")
  if config.hidden_size > config.embedding_size:
    table.append(TensorMapping((*mlm, "extra_output_weights"), f"{MLM_SCOPE}/extra_output_weights"))
  table.append(TensorMapping((*mlm, "bias"), f"{MLM_SCOPE}/output_bias/bias"))
  return table


_OUTPUT_INDEX = re.compile(r":\d+$")
_MODEL_PREFIX = re.compile(r"^mobile_bert_encoder(_\d+)?/")
_EMBEDDING_PREFIX = re.compile(rf"^{EMBEDDING_SCOPE}(_\d+)?/")
_MLM_PREFIX = re.compile(r"^(?:[\w.-]+/)?cls/predictions/")


def canonical_variable_name(name: str) -> str:
  """A TF2 variable name in the form of `variable_table`.

  Removes the output index (":0"), the model prefix the converter's `--use_model_prefix` adds
  (`mobile_bert_encoder/`), and the "_N" suffix Keras gives an automatically named layer when
  a process builds several models (`mobile_bert_embedding_1/`, `bert_1/cls/predictions/`).
  Blocks and the pooler are named explicitly and keep their names.
  """
  name = _OUTPUT_INDEX.sub("", name)
  name = _MODEL_PREFIX.sub("", name)
  name = _EMBEDDING_PREFIX.sub(f"{EMBEDDING_SCOPE}/", name)
  return _MLM_PREFIX.sub(f"{MLM_SCOPE}/", name)


def looks_like_tf2_variable_names(names: Iterable[str]) -> bool:
  """Whether a name-based checkpoint uses the TF2 variable names."""
  return any(
    canonical_variable_name(n).startswith((f"{EMBEDDING_SCOPE}/", "transformer_layer_"))
    for n in names
  )
