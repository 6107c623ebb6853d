"""TensorFlow references for the TF importer tests: Model Garden models and TF1 checkpoints.

Everything here is written from docs/references.md and docs/model.md, not from the importer, so that
a test compares two independent readings of the same facts:

* `build_tf2_pretrainer` builds what the Model Garden MobileBERT project builds
  (`official/projects/mobilebert/model_utils.create_mobilebert_pretrainer`: MobileBERTEncoder +
  MobileBertMaskedLM in BertPretrainerV2, from a TF1 `bert_config.json` dict) and gives every
  variable a random value (biases, NoNorm and LayerNorm gamma/beta included: the default
  initialisation hides mapping errors). `save_tf2_checkpoint` writes it the ways TF2 code does.
* `tf1_tensors_from_hf` and `tf1_tensors_from_tf2` spell out the original TF1 variable names and
  shapes (docs/references.md §tf1-names) and fill them from a reference model with their own
  transforms (docs/references.md §hf-names from transformers' PyTorch state dict,
  docs/references.md §tf1-to-tf2 from the Model Garden's variable names); `write_tf1_checkpoint`
  saves them with `tf.compat.v1.train.Saver`, optimizer slots and `global_step` included, as a TF1
  training run leaves them.

Model outputs are compared with `relative_error` (max|ours - ref| / max|ref|, the project's
parity metric, which must stay <= 1e-5).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Model Garden runs on tf_keras

import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tf_keras
from official.projects.mobilebert import export_tfhub, model_utils

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MODEL_CLASSES

RELATIVE_TOLERANCE = 1e-5

# tf-models-official 2.20's model_utils.py uses `tf_keras` without importing it (a NameError in
# create_mobilebert_pretrainer); it means the tf_keras module, so give it that.
if not hasattr(model_utils, "tf_keras"):
  model_utils.tf_keras = tf_keras


# ----------------------------------------------------------------------------------------------
# Configurations: the google-research `bert_config.json` files (docs/model.md §config-files)
# ----------------------------------------------------------------------------------------------

# The four files, with exactly their original keys, are the fixtures `config_test.py` reads too.
_TF1_CONFIG_DIR = pathlib.Path(__file__).with_name("testdata") / "tf1_configs"


def _tf1_config(file_name: str) -> dict:
  return json.loads((_TF1_CONFIG_DIR / file_name).read_text(encoding="utf-8"))


RELEASED = _tf1_config("uncased_L-24_H-128_B-512_A-4_F-4_OPT.json")
QAT = _tf1_config("uncased_L-24_H-128_B-512_A-4_F-4_OPT_QAT.json")
TINY = _tf1_config("uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT.json")
# IB-BERT_LARGE: normalization_type, the attention flags, num_feedforward_networks and
# classifier_activation are absent and take the TF1 defaults (layer_norm, False, 1, True).
TEACHER = _tf1_config("uncased_L-24_H-1024_B-512_A-4.json")

# The TF1 `BertConfig` defaults, for keys a config file leaves out (docs/pitfalls.md P7).
TF1_DEFAULTS = {
  "hidden_act": "gelu",
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


def small(tf1_config: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
  """A TF1 config of the same kind with test-sized widths (and an odd vocabulary size).

  The structure (trigram, bottlenecks, attention inputs, FFN count, norms, activation, pooler)
  is kept; a teacher-like config keeps an intra-block width above the inter-block width.
  """
  wide = tf1_config.get("intra_bottleneck_size", 0) > tf1_config["hidden_size"]
  sizes = {
    "vocab_size": 97,
    "embedding_size": 8,
    "hidden_size": 32,
    "intra_bottleneck_size": 48 if wide else 16,
    "intermediate_size": 64 if wide else 24,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "max_position_embeddings": 24,
  }
  return {**tf1_config, **sizes, **changes}


def resolved(tf1_config: Mapping[str, Any]) -> dict[str, Any]:
  """A TF1 config with the TF1 defaults filled in (sizes None -> hidden_size)."""
  out = {**TF1_DEFAULTS, **tf1_config}
  for key in ("embedding_size", "intra_bottleneck_size"):
    if out[key] is None:
      out[key] = out["hidden_size"]
  return out


def our_config(tf1_config: Mapping[str, Any], **overrides: Any) -> MobileBertConfig:
  """Our config of a TF1 config (through the TF1 dialect reader)."""
  return MobileBertConfig.from_dict(dict(tf1_config), source="tf1", **overrides)


def write_bert_config(directory: str, tf1_config: Mapping[str, Any]) -> str:
  """Writes `bert_config.json` (TF1 dialect) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, "bert_config.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(dict(tf1_config), f, indent=2)
  return path


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
  """int32 inputs [batch, length] and MLM positions [batch, predictions]."""

  input_ids: np.ndarray
  input_mask: np.ndarray
  type_ids: np.ndarray
  positions: np.ndarray


def make_batch(vocab_size: int, batch_size: int = 2, length: int = 16, seed: int = 0) -> Batch:
  """Right-padded rows (row 1 ends after 11 tokens) with both token types; [PAD] = 0."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab_size, (batch_size, length)).astype(np.int32)
  mask = np.ones_like(ids)
  if batch_size > 1:
    mask[1, 11:] = 0
  ids[mask == 0] = 0
  types = np.zeros_like(ids)
  types[:, length // 2 :] = 1
  types[mask == 0] = 0
  positions = np.tile(np.array([[1, 4, 7]], np.int32), (batch_size, 1))
  return Batch(ids, mask, types, positions)


# ----------------------------------------------------------------------------------------------
# The TF2 Model Garden reference
# ----------------------------------------------------------------------------------------------


def build_tf2_pretrainer(tf1_config: Mapping[str, Any], seed: int = 0, weight_gain: float = 0.35):
  """The Model Garden MobileBERT pretrainer of a TF1 config, every variable randomised.

  Args:
    tf1_config: a `bert_config.json` dict (read with the Model Garden's own `BertConfig`).
    seed: NumPy seed of the random values.
    weight_gain: a kernel's standard deviation times sqrt(fan_in). Below 1 so that a NoNorm
      stack (which has nothing bounding its activations) stays far from fp32 chaos, as in
      `tests/reference_util.randomize_`.

  Returns:
    The `BertPretrainerV2`.
  """
  bert_config = model_utils.BertConfig.from_dict(dict(tf1_config))
  pretrainer = model_utils.create_mobilebert_pretrainer(bert_config)
  randomize_tf2_(pretrainer, seed, weight_gain)
  return pretrainer


def randomize_tf2_(model, seed: int = 0, weight_gain: float = 0.35) -> None:
  """Assigns every variable of a Keras MobileBERT a random, non-default value, in place."""
  rng = np.random.default_rng(seed)
  seen = set()
  for variable in model.variables:
    if id(variable) in seen:
      continue
    seen.add(id(variable))
    name, shape = variable.name, tuple(variable.shape)
    if name.endswith(("gamma:0",)):
      value = 1.0 + 0.3 * rng.standard_normal(shape)
    elif name.endswith(("beta:0", "bias:0")):
      value = 0.3 * rng.standard_normal(shape)
    elif "embeddings:0" in name or "extra_output_weights" in name:
      value = 0.5 * rng.standard_normal(shape)
    elif name.endswith("kernel:0"):
      # [in, ...] kernels, except the attention output [heads, head_size, out].
      fan_in = int(np.prod(shape[:-1])) if "attention_output" in name else shape[0]
      value = weight_gain / np.sqrt(fan_in) * rng.standard_normal(shape)
    else:
      raise AssertionError(f"no random value rule for {name}")
    variable.assign(value.astype(np.float32))


def run_tf2(pretrainer, batch: Batch) -> dict[str, Any]:
  """Runs the pretrainer (inference mode) and returns its outputs as NumPy arrays.

  Returns:
    `sequence_output` [B, T, H], `pooled_output` [B, H], `encoder_outputs` (list of L+1
    [B, T, H]), `attention_scores` (list of L [B, A, T, T] probabilities), `mlm_logits`
    [B, P, V] at `batch.positions`.
  """
  out = _call_tf2(pretrainer, batch)
  return {
    key: [np.asarray(t) for t in value] if isinstance(value, list) else np.asarray(value)
    for key, value in out.items()
  }


def _call_tf2(pretrainer, batch: Batch) -> dict[str, Any]:
  return pretrainer(
    {
      "input_word_ids": tf.constant(batch.input_ids),
      "input_mask": tf.constant(batch.input_mask),
      "input_type_ids": tf.constant(batch.type_ids),
      "masked_lm_positions": tf.constant(batch.positions),
    },
    training=False,
  )


def save_tf2_checkpoint(pretrainer, directory: str, layout: str = "checkpoint_items") -> str:
  """Writes the pretrainer as TF2 code does and returns the checkpoint prefix.

  Args:
    pretrainer: the `BertPretrainerV2`.
    directory: where to write.
    layout: "checkpoint_items" (`tf.train.Checkpoint(**pretrainer.checkpoint_items)`, the
      released TF2 checkpoints and the Model Garden converter), "encoder"
      (`tf.train.Checkpoint(encoder=...)`), "training" (`tf.train.Checkpoint(model=...,
      optimizer=..., global_step=...)` after one Adam step, as a Model Garden training run) or
      "save_weights" (`pretrainer.save_weights`).
  """
  os.makedirs(directory, exist_ok=True)
  prefix = os.path.join(directory, "ckpt")
  if layout == "checkpoint_items":
    return tf.train.Checkpoint(**pretrainer.checkpoint_items).save(prefix)
  if layout == "encoder":
    return tf.train.Checkpoint(encoder=pretrainer.encoder_network).save(prefix)
  if layout == "save_weights":
    pretrainer.save_weights(prefix)
    return prefix
  if layout == "training":
    optimizer = tf_keras.optimizers.Adam(learning_rate=0.0)  # slots exist, weights unchanged
    vocab_size = int(pretrainer.encoder_network.get_embedding_table().shape[0])
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(_call_tf2(pretrainer, make_batch(vocab_size, 1, 8))["mlm_logits"])
    grads = tape.gradient(loss, pretrainer.trainable_variables)
    optimizer.apply_gradients(zip(grads, pretrainer.trainable_variables, strict=True))
    step = tf.Variable(7, dtype=tf.int64)
    return tf.train.Checkpoint(model=pretrainer, optimizer=optimizer, global_step=step).save(prefix)
  raise ValueError(f"unknown layout {layout!r}")


def export_tf_hub(tf1_config: Mapping[str, Any], directory: str, seed: int = 0):
  """Exports a randomised encoder as `official/projects/mobilebert/export_tfhub.py` does.

  Returns:
    (the directory, the core Keras model, its pretrainer).
  """
  bert_config = model_utils.BertConfig.from_dict(dict(tf1_config))
  core_model, pretrainer = export_tfhub.create_mobilebert_model(bert_config)
  randomize_tf2_(pretrainer, seed)
  vocab = os.path.join(os.path.dirname(os.path.abspath(directory)), "vocab.txt")
  with open(vocab, "w", encoding="utf-8") as f:
    f.write("\n".join(f"[unused{i}]" for i in range(tf1_config["vocab_size"])) + "\n")
  core_model.vocab_file = tf.saved_model.Asset(vocab)
  core_model.do_lower_case = tf.Variable(True, trainable=False)
  core_model.save(directory, include_optimizer=False, save_format="tf")
  return directory, core_model, pretrainer


# ----------------------------------------------------------------------------------------------
# TF1 checkpoints, named from docs/references.md §tf1-names
# ----------------------------------------------------------------------------------------------


def _norm_scope(cfg: Mapping[str, Any]) -> str:
  return "FakeLayerNorm" if cfg["normalization_type"] == "no_norm" else "LayerNorm"


def tf1_expected_shapes(
  tf1_config: Mapping[str, Any], heads: Iterable[str] = ()
) -> dict[str, tuple]:
  """The variable names and shapes of a TF1 MobileBERT checkpoint (docs/references.md §tf1-names).

  Args:
    tf1_config: the `bert_config.json` dict.
    heads: any of "pretraining" (`cls/predictions`, `cls/seq_relationship`), "squad"
      (`cls/squad`), ("classifier", n) (top-level `output_weights` [n, H]).
  """
  cfg = resolved(tf1_config)
  h, e, b, i = (
    cfg["hidden_size"],
    cfg["embedding_size"],
    cfg["intra_bottleneck_size"],
    cfg["intermediate_size"],
  )
  x = _norm_scope(cfg)
  bottleneck = cfg["use_bottleneck"]
  width = b if bottleneck else h
  shared = bottleneck and cfg["key_query_shared_bottleneck"] and not cfg["use_bottleneck_attention"]
  qk_in = b if bottleneck and (cfg["use_bottleneck_attention"] or shared) else h
  v_in = b if bottleneck and cfg["use_bottleneck_attention"] else h
  out = {
    "bert/embeddings/word_embeddings": (cfg["vocab_size"], e),
    "bert/embeddings/position_embeddings": (cfg["max_position_embeddings"], h),
    "bert/embeddings/token_type_embeddings": (cfg["type_vocab_size"], h),
    f"bert/embeddings/{x}/gamma": (h,),
    f"bert/embeddings/{x}/beta": (h,),
  }
  if cfg["trigram_input"] or e != h:
    out["bert/embeddings/embedding_transformation/kernel"] = (
      3 * e if cfg["trigram_input"] else e,
      h,
    )
    out["bert/embeddings/embedding_transformation/bias"] = (h,)

  def dense(name, n_in, n_out):
    out[f"{name}/kernel"] = (n_in, n_out)
    out[f"{name}/bias"] = (n_out,)

  def norm(name, n):
    out[f"{name}/gamma"] = (n,)
    out[f"{name}/beta"] = (n,)

  for layer in range(cfg["num_hidden_layers"]):
    p = f"bert/encoder/layer_{layer}"
    if bottleneck:
      dense(f"{p}/bottleneck/input/dense", h, b)
      norm(f"{p}/bottleneck/input/{x}", b)
      if shared:
        dense(f"{p}/bottleneck/attention/dense", h, b)
        norm(f"{p}/bottleneck/attention/{x}", b)
    dense(f"{p}/attention/self/query", qk_in, width)
    dense(f"{p}/attention/self/key", qk_in, width)
    dense(f"{p}/attention/self/value", v_in, width)
    dense(f"{p}/attention/output/dense", width, width)
    norm(f"{p}/attention/output/{x}", width)
    for f in range(cfg["num_feedforward_networks"] - 1):
      dense(f"{p}/ffn_layer_{f}/intermediate/dense", width, i)
      dense(f"{p}/ffn_layer_{f}/output/dense", i, width)
      norm(f"{p}/ffn_layer_{f}/output/{x}", width)
    dense(f"{p}/intermediate/dense", width, i)
    dense(f"{p}/output/dense", i, width)
    norm(f"{p}/output/{x}", width)
    if bottleneck:
      dense(f"{p}/output/bottleneck/dense", b, h)
      norm(f"{p}/output/bottleneck/{x}", h)
  if cfg["classifier_activation"]:
    dense("bert/pooler/dense", h, h)
  for head in heads:
    if head == "pretraining":
      dense("cls/predictions/transform/dense", h, h)
      norm("cls/predictions/transform/LayerNorm", h)
      if h > e:
        out["cls/predictions/extra_output_weights"] = (cfg["vocab_size"], h - e)
      out["cls/predictions/output_bias"] = (cfg["vocab_size"],)
      out["cls/seq_relationship/output_weights"] = (2, h)
      out["cls/seq_relationship/output_bias"] = (2,)
    elif head == "squad":
      out["cls/squad/output_weights"] = (2, h)
      out["cls/squad/output_bias"] = (2,)
    elif isinstance(head, tuple) and head[0] == "classifier":
      out["output_weights"] = (head[1], h)
      out["output_bias"] = (head[1],)
    else:
      raise ValueError(f"unknown head {head!r}")
  return out


def tf1_tensors_from_hf(model, tf1_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The TF1 checkpoint of a transformers MobileBERT (docs/references.md §hf-names read backwards).

  transformers' linear weights are [out, in]; TF1 dense kernels are [in, out] (transposed),
  while the TF1 heads made with `tf.get_variable` (`output_weights`) are [out, in] like torch.
  The MLM `cls.predictions.dense.weight` [H-E, V] is TF1's `extra_output_weights` [V, H-E].

  Raises:
    AssertionError: a state-dict entry left unconverted, or a name or shape other than those of
      docs/references.md §tf1-names (`tf1_expected_shapes`).
  """
  cfg = resolved(tf1_config)
  x = _norm_scope(cfg)
  state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()

  def take(key: str, name: str, transpose: bool = False) -> None:
    value = state[key]
    out[name] = np.ascontiguousarray(value.T if transpose else value)
    used.add(key)

  def dense(key: str, name: str) -> None:
    take(f"{key}.weight", f"{name}/kernel", transpose=True)
    take(f"{key}.bias", f"{name}/bias")

  def norm(key: str, name: str) -> None:
    take(f"{key}.weight", f"{name}/gamma")
    take(f"{key}.bias", f"{name}/beta")

  m = "mobilebert"
  take(f"{m}.embeddings.word_embeddings.weight", "bert/embeddings/word_embeddings")
  take(f"{m}.embeddings.position_embeddings.weight", "bert/embeddings/position_embeddings")
  take(f"{m}.embeddings.token_type_embeddings.weight", "bert/embeddings/token_type_embeddings")
  if f"{m}.embeddings.embedding_transformation.weight" in state:
    dense(f"{m}.embeddings.embedding_transformation", "bert/embeddings/embedding_transformation")
  norm(f"{m}.embeddings.LayerNorm", f"bert/embeddings/{x}")
  last = cfg["num_feedforward_networks"] - 1
  for layer in range(cfg["num_hidden_layers"]):
    hf, tf1 = f"{m}.encoder.layer.{layer}", f"bert/encoder/layer_{layer}"
    if cfg["use_bottleneck"]:
      dense(f"{hf}.bottleneck.input.dense", f"{tf1}/bottleneck/input/dense")
      norm(f"{hf}.bottleneck.input.LayerNorm", f"{tf1}/bottleneck/input/{x}")
      if f"{hf}.bottleneck.attention.dense.weight" in state:
        dense(f"{hf}.bottleneck.attention.dense", f"{tf1}/bottleneck/attention/dense")
        norm(f"{hf}.bottleneck.attention.LayerNorm", f"{tf1}/bottleneck/attention/{x}")
      dense(f"{hf}.output.bottleneck.dense", f"{tf1}/output/bottleneck/dense")
      norm(f"{hf}.output.bottleneck.LayerNorm", f"{tf1}/output/bottleneck/{x}")
    for projection in ("query", "key", "value"):
      dense(f"{hf}.attention.self.{projection}", f"{tf1}/attention/self/{projection}")
    dense(f"{hf}.attention.output.dense", f"{tf1}/attention/output/dense")
    norm(f"{hf}.attention.output.LayerNorm", f"{tf1}/attention/output/{x}")
    for f in range(last):
      dense(f"{hf}.ffn.{f}.intermediate.dense", f"{tf1}/ffn_layer_{f}/intermediate/dense")
      dense(f"{hf}.ffn.{f}.output.dense", f"{tf1}/ffn_layer_{f}/output/dense")
      norm(f"{hf}.ffn.{f}.output.LayerNorm", f"{tf1}/ffn_layer_{f}/output/{x}")
    dense(f"{hf}.intermediate.dense", f"{tf1}/intermediate/dense")
    dense(f"{hf}.output.dense", f"{tf1}/output/dense")
    norm(f"{hf}.output.LayerNorm", f"{tf1}/output/{x}")
  heads: list[Any] = []
  if f"{m}.pooler.dense.weight" in state:
    dense(f"{m}.pooler.dense", "bert/pooler/dense")
  if "cls.predictions.bias" in state:
    heads.append("pretraining")
    dense("cls.predictions.transform.dense", "cls/predictions/transform/dense")
    norm("cls.predictions.transform.LayerNorm", "cls/predictions/transform/LayerNorm")
    if "cls.predictions.dense.weight" in state:
      take("cls.predictions.dense.weight", "cls/predictions/extra_output_weights", transpose=True)
    take("cls.predictions.bias", "cls/predictions/output_bias")
    used.update(("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"))  # tied
    take("cls.seq_relationship.weight", "cls/seq_relationship/output_weights")
    take("cls.seq_relationship.bias", "cls/seq_relationship/output_bias")
  if "qa_outputs.weight" in state:
    heads.append("squad")
    take("qa_outputs.weight", "cls/squad/output_weights")
    take("qa_outputs.bias", "cls/squad/output_bias")
  if "classifier.weight" in state:
    heads.append(("classifier", state["classifier.weight"].shape[0]))
    take("classifier.weight", "output_weights")
    take("classifier.bias", "output_bias")
  left = sorted(set(state) - used - {f"{m}.embeddings.position_ids"})
  assert not left, f"state-dict entries without a TF1 name: {left}"
  _check_against_spec(out, tf1_config, heads)
  return out


def _check_against_spec(tensors: Mapping[str, np.ndarray], tf1_config, heads) -> None:
  expected = tf1_expected_shapes(tf1_config, heads)
  assert set(tensors) == set(expected), (
    "names differ from docs/references.md §tf1-names: extra "
    f"{sorted(set(tensors) - set(expected))[:5]}, missing "
    f"{sorted(set(expected) - set(tensors))[:5]}"
  )
  wrong = {k: (v.shape, expected[k]) for k, v in tensors.items() if v.shape != expected[k]}
  assert not wrong, (
    f"shapes differ from docs/references.md §tf1-names: {dict(list(wrong.items())[:5])}"
  )


def tf2_variables(model) -> dict[str, np.ndarray]:
  """A Keras MobileBERT's variables by `.name`, without ":0" and Keras' "_N" layer suffixes."""
  out = {}
  for variable in model.variables:
    name = re.sub(r":\d+$", "", variable.name)
    name = re.sub(r"^mobile_bert_embedding_\d+/", "mobile_bert_embedding/", name)
    name = re.sub(r"^bert_\d+/", "bert/", name)
    out[name] = variable.numpy()
  return out


def tf1_tensors_from_tf2(pretrainer, tf1_config: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The TF1 checkpoint of a Model Garden pretrainer (the renaming of
  docs/references.md §tf1-to-tf2, read backwards).

  TF2 keeps query/key/value kernels [in, A, d] and biases [A, d], and the attention-output
  kernel [A, d, out]; TF1 flattens the head axes ([in, A*d], [A*d], [A*d, out]). The TF2
  pretrainer has no NSP head, so none is written.

  Raises:
    AssertionError: a TF2 variable left unconverted, or a name or shape other than those of
      docs/references.md §tf1-names.
  """
  cfg = resolved(tf1_config)
  x = _norm_scope(cfg)
  variables = tf2_variables(pretrainer)
  out: dict[str, np.ndarray] = {}
  used: set[str] = set()

  def take(name2: str, name1: str, flatten: str | None = None) -> None:
    value = variables[name2]
    if flatten == "last":  # [..., A, d] -> [..., A*d]
      value = value.reshape(*value.shape[:-2], -1)
    elif flatten == "first":  # [A, d, out] -> [A*d, out]
      value = value.reshape(-1, value.shape[-1])
    out[name1] = np.ascontiguousarray(value)
    used.add(name2)

  def dense(name2: str, name1: str, flatten: str | None = None) -> None:
    take(f"{name2}/kernel", f"{name1}/kernel", flatten)
    take(f"{name2}/bias", f"{name1}/bias", "last" if flatten == "last" else None)

  def norm(name2: str, name1: str) -> None:
    take(f"{name2}/gamma", f"{name1}/gamma")
    take(f"{name2}/beta", f"{name1}/beta")

  emb = "mobile_bert_embedding"
  take(f"{emb}/word_embedding/embeddings", "bert/embeddings/word_embeddings")
  take(f"{emb}/type_embedding/embeddings", "bert/embeddings/token_type_embeddings")
  take(f"{emb}/position_embedding/embeddings", "bert/embeddings/position_embeddings")
  dense(f"{emb}/embedding_projection", "bert/embeddings/embedding_transformation")
  norm(f"{emb}/embedding_norm", f"bert/embeddings/{x}")
  last = cfg["num_feedforward_networks"] - 1
  for layer in range(cfg["num_hidden_layers"]):
    t2, t1 = f"transformer_layer_{layer}", f"bert/encoder/layer_{layer}"
    dense(f"{t2}/bottleneck_input/dense", f"{t1}/bottleneck/input/dense")
    norm(f"{t2}/bottleneck_input/norm", f"{t1}/bottleneck/input/{x}")
    if f"{t2}/kq_shared_bottleneck/dense/kernel" in variables:
      dense(f"{t2}/kq_shared_bottleneck/dense", f"{t1}/bottleneck/attention/dense")
      norm(f"{t2}/kq_shared_bottleneck/norm", f"{t1}/bottleneck/attention/{x}")
    for projection in ("query", "key", "value"):
      dense(f"{t2}/attention/{projection}", f"{t1}/attention/self/{projection}", "last")
    dense(f"{t2}/attention/attention_output", f"{t1}/attention/output/dense", "first")
    norm(f"{t2}/attention/norm", f"{t1}/attention/output/{x}")
    for f in range(last + 1):
      scope = f"{t1}/ffn_layer_{f}" if f < last else t1
      dense(f"{t2}/ffn_layer_{f}/intermediate_dense", f"{scope}/intermediate/dense")
      dense(f"{t2}/ffn_layer_{f}/output_dense", f"{scope}/output/dense")
      norm(f"{t2}/ffn_layer_{f}/norm", f"{scope}/output/{x}")
    dense(f"{t2}/bottleneck_output/dense", f"{t1}/output/bottleneck/dense")
    norm(f"{t2}/bottleneck_output/norm", f"{t1}/output/bottleneck/{x}")
  if "pooler/kernel" in variables:
    dense("pooler", "bert/pooler/dense")
  mlm = "bert/cls/predictions"
  dense(f"{mlm}/transform/dense", "cls/predictions/transform/dense")
  norm(f"{mlm}/transform/LayerNorm", "cls/predictions/transform/LayerNorm")
  take(f"{mlm}/extra_output_weights", "cls/predictions/extra_output_weights")
  take(f"{mlm}/output_bias/bias", "cls/predictions/output_bias")
  left = sorted(set(variables) - used)
  assert not left, f"TF2 variables without a TF1 name: {left}"
  # docs/references.md §tf1-names with the pretraining heads but no NSP (the TF2 pretrainer
  # has none).
  expected = tf1_expected_shapes(tf1_config, ["pretraining"])
  expected = {k: v for k, v in expected.items() if not k.startswith("cls/seq_relationship")}
  assert set(out) == set(expected), sorted(set(out) ^ set(expected))[:6]
  wrong = {k: (v.shape, expected[k]) for k, v in out.items() if v.shape != expected[k]}
  assert not wrong, (
    f"shapes differ from docs/references.md §tf1-names: {dict(list(wrong.items())[:5])}"
  )
  return out


def write_tf1_checkpoint(
  tensors: Mapping[str, np.ndarray],
  directory: str,
  *,
  step: int = 1234,
  slots: bool | Iterable[str] = True,
  extra: Mapping[str, np.ndarray] | None = None,
) -> str:
  """Saves tensors as a TF1 training run does (`tf.compat.v1.train.Saver`, graph mode).

  Args:
    tensors: TF1 variable name -> value.
    directory: where `model.ckpt-{step}.*` and the `checkpoint` state file go.
    step: the value of `global_step` and the checkpoint's number.
    slots: add `<name>/adam_m` and `<name>/adam_v` (random values) for every tensor (True), for
      the named ones, or for none (False).
    extra: more tensors to store verbatim (e.g. QAT ranges, a stray variable).

  Returns:
    The checkpoint prefix (`directory/model.ckpt-{step}`).
  """
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(step)
  slot_names = set(tensors) if slots is True else set(slots or ())
  values = dict(tensors)
  for name in sorted(slot_names):
    for slot in ("adam_m", "adam_v"):
      values[f"{name}/{slot}"] = rng.standard_normal(tensors[name].shape).astype(np.float32)
  values.update(extra or {})
  graph = tf.Graph()
  with graph.as_default():
    assignments, feeds = [], {}
    for name, value in values.items():
      variable = tf.compat.v1.get_variable(
        name, shape=value.shape, dtype=tf.as_dtype(value.dtype), initializer=tf.zeros_initializer()
      )
      # Values go in through placeholders: as graph constants they would bloat the GraphDef.
      feed = tf.compat.v1.placeholder(variable.dtype.base_dtype, value.shape)
      assignments.append(variable.assign(feed).op)
      feeds[feed] = value
    global_step = tf.compat.v1.train.get_or_create_global_step()
    assignments.append(global_step.assign(step).op)
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session(graph=graph) as session:
      session.run(assignments, feeds)
      return saver.save(session, os.path.join(directory, "model.ckpt"), global_step=step)


# ----------------------------------------------------------------------------------------------
# Our side and the comparison
# ----------------------------------------------------------------------------------------------


def run_ours(module, params, batch: Batch):
  """Runs one of our modules (deterministic) with hidden states and attentions returned."""
  return module.apply(
    {"params": params},
    jnp.asarray(batch.input_ids),
    attention_mask=jnp.asarray(batch.input_mask),
    token_type_ids=jnp.asarray(batch.type_ids),
    output_hidden_states=True,
    output_attentions=True,
  )


def gather_positions(logits, positions: np.ndarray) -> np.ndarray:
  """Our all-position logits [B, T, V] at MLM positions [B, P] -> [B, P, V]."""
  return np.take_along_axis(np.asarray(logits), positions[:, :, None], axis=1)


def relative_error(ours: Any, ref: Any) -> float:
  """max|ours - ref| / max|ref| in float64, after checking shapes and finiteness."""
  a = np.asarray(ours, dtype=np.float64)
  b = np.asarray(ref, dtype=np.float64)
  assert a.shape == b.shape, f"shape {a.shape} vs reference {b.shape}"
  assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), "non-finite values"
  scale = np.max(np.abs(b))
  assert scale > 0, "the reference is identically zero; the comparison would be vacuous"
  return float(np.max(np.abs(a - b)) / scale)


def compare_with_tf2(config: MobileBertConfig, params_model, params_mlm, tf2_out, batch: Batch):
  """Relative errors of our MobileBertModel / MobileBertForMaskedLM outputs vs the TF2 ones.

  Args:
    config: our config.
    params_model: `MobileBertModel` params (or None to skip the encoder outputs).
    params_mlm: `MobileBertForMaskedLM` params (or None to skip the MLM logits).
    tf2_out: `run_tf2`'s outputs.
    batch: the inputs both ran on.
  """
  errors: dict[str, float] = {}
  if params_model is not None:
    out = run_ours(MODEL_CLASSES["MobileBertModel"](config), params_model, batch)
    errors["sequence_output"] = relative_error(out.last_hidden_state, tf2_out["sequence_output"])
    errors["pooled_output"] = relative_error(out.pooler_output, tf2_out["pooled_output"])
    assert len(out.hidden_states) == len(tf2_out["encoder_outputs"])
    for i, (a, b) in enumerate(zip(out.hidden_states, tf2_out["encoder_outputs"], strict=True)):
      errors[f"encoder_outputs[{i}]"] = relative_error(a, b)
    for i, (a, b) in enumerate(zip(out.attentions, tf2_out["attention_scores"], strict=True)):
      errors[f"attention_scores[{i}]"] = relative_error(a, b)
  if params_mlm is not None:
    out = run_ours(MODEL_CLASSES["MobileBertForMaskedLM"](config), params_mlm, batch)
    errors["mlm_logits"] = relative_error(
      gather_positions(out.logits, batch.positions), tf2_out["mlm_logits"]
    )
  return errors


def assert_parity(errors: Mapping[str, float], tolerance: float = RELATIVE_TOLERANCE) -> float:
  """Asserts every error is within `tolerance`; returns the worst one."""
  assert errors, "nothing was compared"
  bad = {k: v for k, v in errors.items() if not v <= tolerance}
  assert not bad, f"relative error above {tolerance:g}: " + ", ".join(
    f"{k}={v:.3g}" for k, v in sorted(bad.items())
  )
  return max(errors.values())
