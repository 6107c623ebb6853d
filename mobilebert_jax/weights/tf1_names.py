"""The explicit name table between our parameters and original TF1 (google-research) checkpoints.

One `TensorMapping` per tensor (docs/references.md §tf1-names). The TF1 code stores dense kernels
[in, out] like us; the query/key/value kernels [in, A*d] and their biases [A*d] are split per head
by a row-major reshape ([in, A, d], [A, d]), and the attention-output kernel [A*d, out] becomes
[A, d, out]. The heads (`cls/seq_relationship`, `cls/squad`, the classifier's top-level
`output_weights`) are created with `tf.get_variable` as [out, in] matrices and are transposed.

Norm scopes: `FakeLayerNorm` (NoNorm) for `normalization_type="no_norm"`, `LayerNorm` otherwise;
the MLM transform always has a real `LayerNorm`. Both store `gamma` (our `scale`) and `beta` (our
`bias`). The first F-1 FFNs of a block are `ffn_layer_{f}`; the last one is the block's own
`intermediate`/`output` pair (our `ffn_{F-1}`). With `use_bottleneck=False` the same table
describes the original BERT checkpoints (`bert_model.ckpt`).
"""

from __future__ import annotations

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights.mapping import TensorMapping, Transform
from mobilebert_jax.weights.protocol import Path

ENCODER_SCOPE = "bert"


def norm_scope(config: MobileBertConfig) -> str:
  """The TF1 scope name of the block and embedding norms."""
  return "FakeLayerNorm" if config.normalization_type == "no_norm" else "LayerNorm"


def _dense(
  ours: Path, theirs: str, kernel: Transform = "copy", bias: Transform = "copy"
) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "kernel"), f"{theirs}/kernel", kernel),
    TensorMapping((*ours, "bias"), f"{theirs}/bias", bias),
  ]


def _norm(ours: Path, theirs: str) -> list[TensorMapping]:
  return [
    TensorMapping((*ours, "scale"), f"{theirs}/gamma"),
    TensorMapping((*ours, "bias"), f"{theirs}/beta"),
  ]


def _block(config: MobileBertConfig, ours: Path, theirs: str) -> list[TensorMapping]:
  norm = norm_scope(config)
  table: list[TensorMapping] = []
  if config.use_bottleneck:
    table += _dense((*ours, "bottleneck_input", "dense"), f"{theirs}/bottleneck/input/dense")
    table += _norm((*ours, "bottleneck_input", "norm"), f"{theirs}/bottleneck/input/{norm}")
    if config.uses_shared_bottleneck:
      table += _dense(
        (*ours, "kq_shared_bottleneck", "dense"), f"{theirs}/bottleneck/attention/dense"
      )
      table += _norm(
        (*ours, "kq_shared_bottleneck", "norm"), f"{theirs}/bottleneck/attention/{norm}"
      )
  for projection in ("query", "key", "value"):
    table += _dense(
      (*ours, "attention", projection),
      f"{theirs}/attention/self/{projection}",
      kernel="heads_last",
      bias="heads_last",
    )
  table += _dense(
    (*ours, "attention", "output"), f"{theirs}/attention/output/dense", kernel="heads_first"
  )
  table += _norm((*ours, "attention", "norm"), f"{theirs}/attention/output/{norm}")
  last = config.num_feedforward_networks - 1
  for f in range(config.num_feedforward_networks):
    scope = f"{theirs}/ffn_layer_{f}" if f < last else theirs
    table += _dense((*ours, f"ffn_{f}", "intermediate"), f"{scope}/intermediate/dense")
    table += _dense((*ours, f"ffn_{f}", "output"), f"{scope}/output/dense")
    table += _norm((*ours, f"ffn_{f}", "norm"), f"{scope}/output/{norm}")
  if config.use_bottleneck:
    table += _dense((*ours, "bottleneck_output", "dense"), f"{theirs}/output/bottleneck/dense")
    table += _norm((*ours, "bottleneck_output", "norm"), f"{theirs}/output/bottleneck/{norm}")
  return table


def encoder_table(config: MobileBertConfig, ours: Path) -> list[TensorMapping]:
  """The `bert/` scope: embeddings, the unscanned blocks, and the pooler if it exists.

  Args:
    config: the architecture.
    ours: prefix of the encoder in our tree (() for `MobileBertModel`, else ("mobilebert",)).
  """
  emb, temb = (*ours, "embeddings"), f"{ENCODER_SCOPE}/embeddings"
  table = [
    TensorMapping((*emb, "word_embeddings"), f"{temb}/word_embeddings"),
    TensorMapping((*emb, "position_embeddings"), f"{temb}/position_embeddings"),
    TensorMapping((*emb, "token_type_embeddings"), f"{temb}/token_type_embeddings"),
  ]
  if config.has_embedding_projection:
    table += _dense((*emb, "embedding_transformation"), f"{temb}/embedding_transformation")
  table += _norm((*emb, "norm"), f"{temb}/{norm_scope(config)}")
  for i in range(config.num_hidden_layers):
    table += _block(config, (*ours, "encoder", f"layer_{i}"), f"{ENCODER_SCOPE}/encoder/layer_{i}")
  if config.classifier_activation:
    table += _dense((*ours, "pooler", "dense"), f"{ENCODER_SCOPE}/pooler/dense")
  return table


def heads_table(config: MobileBertConfig) -> list[TensorMapping]:
  """Every head a TF1 checkpoint may hold: pretraining (`run_pretraining.py`), SQuAD
  (`run_squad.py`) and classification (`run_classifier.py`)."""
  mlm = ("cls", "predictions")
  table = _dense((*mlm, "transform_dense"), "cls/predictions/transform/dense")
  table += _norm((*mlm, "transform_layer_norm"), "cls/predictions/transform/LayerNorm")
  if config.hidden_size > config.embedding_size:
    table.append(
      TensorMapping((*mlm, "extra_output_weights"), "cls/predictions/extra_output_weights")
    )
  table.append(TensorMapping((*mlm, "bias"), "cls/predictions/output_bias"))
  table += [
    TensorMapping(
      ("cls", "seq_relationship", "kernel"), "cls/seq_relationship/output_weights", "transpose"
    ),
    TensorMapping(("cls", "seq_relationship", "bias"), "cls/seq_relationship/output_bias"),
    # Row 0 scores the answer start, row 1 its end: our channels 0 and 1.
    TensorMapping(("qa_outputs", "kernel"), "cls/squad/output_weights", "transpose"),
    TensorMapping(("qa_outputs", "bias"), "cls/squad/output_bias"),
    TensorMapping(("classifier", "kernel"), "output_weights", "transpose"),
    TensorMapping(("classifier", "bias"), "output_bias"),
  ]
  return table


def model_table(config: MobileBertConfig, model_class: str) -> list[TensorMapping]:
  """Every tensor a TF1 checkpoint of this architecture may hold, named for `model_class`.

  The table covers all heads; those the class lacks leave their tensors unused.
  """
  ours = () if model_class == "MobileBertModel" else ("mobilebert",)
  return encoder_table(config, ours) + heads_table(config)


# Top-level counters and optimizer state of TF1 training graphs.
BOOKKEEPING_NAMES = frozenset({"global_step", "beta1_power", "beta2_power"})
# The last name component of optimizer slots: `adam_m`/`adam_v` (the google-research
# AdamWeightDecayOptimizer and LAMB), and the slot names of `tf.train` optimizers.
SLOT_SUFFIXES = frozenset(
  {
    "adam_m",
    "adam_v",
    "Adam",
    "Adam_1",
    "AdamWeightDecayOptimizer",
    "AdamWeightDecayOptimizer_1",
    "LAMB",
    "LAMB_1",
    "LAMBOptimizer",
    "LAMBOptimizer_1",
    "Momentum",
    "Adagrad",
  }
)
# Quantization-aware training (`use_quantized_training`) adds range variables
# `.../MobileBert{Act,Weight}FakeQuantWithMinMaxVars[_N]/{min,max}`.
FAKE_QUANT_SCOPE = "FakeQuantWithMinMaxVars"


def is_optimizer_state(name: str) -> bool:
  """Whether a TF1 checkpoint tensor is an optimizer slot or a training counter."""
  return name in BOOKKEEPING_NAMES or name.rsplit("/", 1)[-1] in SLOT_SUFFIXES


def is_fake_quant_range(name: str) -> bool:
  """Whether a TF1 tensor is a QAT fake-quantization range (`.../min`, `.../max`)."""
  parts = name.split("/")
  return len(parts) >= 2 and parts[-1] in ("min", "max") and FAKE_QUANT_SCOPE in parts[-2]
