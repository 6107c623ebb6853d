"""`load_pretrained` on TF2 Model Garden object-based checkpoints, against the Model Garden itself.

Each reference is the Model Garden MobileBERT pretrainer (what `official/projects/mobilebert`
builds from a `bert_config.json`) with every variable randomised, saved by the test as TF2 code
saves it. Our import must reproduce its sequence output, every encoder output, the pooled output,
the attention probabilities and the MLM logits at the gathered positions within
max|ours - ref| <= 1e-5 * max|ref|.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official.nlp.modeling")

import tf_reference_util as ref  # noqa: E402

from mobilebert_jax import (  # noqa: E402
  MobileBertConfig,
  MobileBertForMaskedLM,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertModel,
)
from mobilebert_jax.weights import find_reader, load_pretrained, tf2_names  # noqa: E402

pytestmark = pytest.mark.tf

LAYOUTS = ("checkpoint_items", "encoder", "training", "save_weights")


class Reference:
  """A randomised Model Garden pretrainer, its outputs on a batch, and our config of it."""

  def __init__(self, tf1_config, seed: int = 0, length: int = 16):
    self.tf1_config = tf1_config
    self.config = ref.our_config(tf1_config)
    self.pretrainer = ref.build_tf2_pretrainer(tf1_config, seed)
    self.batch = ref.make_batch(tf1_config["vocab_size"], 2, length, seed)
    self.outputs = ref.run_tf2(self.pretrainer, self.batch)

  def save(self, directory, layout: str = "checkpoint_items", config_file: bool = True) -> str:
    prefix = ref.save_tf2_checkpoint(self.pretrainer, str(directory), layout)
    if config_file:
      ref.write_bert_config(str(directory), self.tf1_config)
    return prefix


@pytest.fixture(scope="module")
def released():
  return Reference(ref.small(ref.RELEASED))


@pytest.fixture(scope="module")
def teacher():
  return Reference(ref.small(ref.TEACHER))


def load(source, model_cls, **kwargs):
  return load_pretrained(source, model_cls, return_report=True, **kwargs)


def check_against_tf2(reference: Reference, source, with_mlm: bool = True) -> float:
  _, model_params, report = load(source, MobileBertModel)
  assert not report.initialized, report.initialized
  mlm_params = None
  if with_mlm:
    _, mlm_params, mlm_report = load(source, MobileBertForMaskedLM)
    assert not mlm_report.initialized, mlm_report.summary()
    # MobileBertForMaskedLM has no pooler (as in transformers): a teacher's goes unused.
    pooler = f"encoder/layer_with_weights-{reference.config.num_hidden_layers + 1}/"
    assert all(name.startswith(pooler) for name in mlm_report.unused), mlm_report.unused
    assert len(mlm_report.unused) == 2 * reference.config.classifier_activation
  errors = ref.compare_with_tf2(
    reference.config, model_params, mlm_params, reference.outputs, reference.batch
  )
  expected_count = 2 + 2 * reference.config.num_hidden_layers + 1 + int(with_mlm)
  assert len(errors) == expected_count, sorted(errors)
  return ref.assert_parity(errors)


# ----------------------------------------------------------------------------------------------
# Parity with the Model Garden
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_released_architecture_matches_tf2(released, tmp_path, layout):
  prefix = released.save(tmp_path, layout)
  # The directory (its `checkpoint` state file) and the prefix name the same checkpoint.
  assert find_reader(str(tmp_path)).name == find_reader(prefix).name == "tf-checkpoint"
  worst = check_against_tf2(released, str(tmp_path), with_mlm=layout != "encoder")
  print(f"TF2 released-architecture ({layout}): max relative error {worst:.2e}")


def test_teacher_architecture_matches_tf2(teacher, tmp_path):
  # IB-BERT: LayerNorm, GELU (tanh in TF), one FFN, Q/K/V from the 512-d block input, pooler.
  assert teacher.config.normalization_type == "layer_norm"
  assert teacher.config.hidden_act == "gelu_new"
  assert teacher.config.classifier_activation
  teacher.save(tmp_path)
  worst = check_against_tf2(teacher, str(tmp_path))
  print(f"TF2 teacher architecture: max relative error {worst:.2e}")


def test_name_based_checkpoint_with_tf2_variable_names(released, tmp_path):
  # What the Model Garden's TF1->TF2 converter writes in between, with --use_model_prefix
  # (encoder names under `mobile_bert_encoder/`, the MLM head under `bert/cls/predictions/`).
  tensors = {
    name if name.startswith("bert/cls/") else f"mobile_bert_encoder/{name}": value
    for name, value in ref.tf2_variables(released.pretrainer).items()
  }
  prefix = ref.write_tf1_checkpoint(tensors, str(tmp_path), slots=False)
  ref.write_bert_config(str(tmp_path), released.tf1_config)
  _, _, report = load(prefix, MobileBertForMaskedLM)
  assert report.format == "tf2-names"
  assert report.ignored == ("global_step",)
  worst = check_against_tf2(released, prefix)
  print(f"TF2 variable names (name-based): max relative error {worst:.2e}")


def test_any_vocabulary_size(tmp_path):
  # The multilingual checkpoint's vocabulary (mBERT cased, 119547) is nothing special.
  reference = Reference(ref.small(ref.RELEASED, vocab_size=119547, num_hidden_layers=1), seed=3)
  reference.save(tmp_path)
  worst = check_against_tf2(reference, str(tmp_path))
  assert worst <= ref.RELATIVE_TOLERANCE


# ----------------------------------------------------------------------------------------------
# What the report says
# ----------------------------------------------------------------------------------------------


def test_pretrainer_into_each_class_reports_what_is_missing(released, tmp_path):
  prefix = released.save(tmp_path)
  # No NSP head in a TF2 pretrainer (docs/pitfalls.md P13): it is initialised, everything
  # else loads.
  _, _, report = load(prefix, MobileBertForPreTraining)
  assert report.format == "tf2"
  assert set(report.initialized) == {"cls/seq_relationship/kernel", "cls/seq_relationship/bias"}
  assert report.unused == ()
  assert "save_counter/.ATTRIBUTES/VARIABLE_VALUE" in report.ignored
  assert any("bert_config.json" in note for note in report.notes)
  # The bare encoder takes the word table from the MLM head's copy and leaves the rest unused.
  _, _, report = load(prefix, MobileBertModel)
  assert report.initialized == ()
  suffix = tf2_names.VALUE_SUFFIX
  assert set(report.unused) == {
    f"masked_lm/{name}{suffix}"
    for name in (
      "dense/kernel",
      "dense/bias",
      "layer_norm/gamma",
      "layer_norm/beta",
      "extra_output_weights",
      "output_bias.Sbias",
    )
  }
  _, _, report = load(prefix, MobileBertForQuestionAnswering)
  assert set(report.initialized) == {"qa_outputs/kernel", "qa_outputs/bias"}
  assert f"masked_lm/output_bias.Sbias{suffix}" in report.unused


def test_training_checkpoint_sets_optimizer_state_aside(released, tmp_path):
  prefix = released.save(tmp_path, "training")
  _, _, report = load(prefix, MobileBertForMaskedLM)
  assert report.complete, report.summary()
  assert any(name.startswith("optimizer/") for name in report.ignored)
  assert "global_step/.ATTRIBUTES/VARIABLE_VALUE" in report.ignored


def test_unexpected_tensor_is_reported_by_name(released, tmp_path):
  items = dict(released.pretrainer.checkpoint_items)
  stray = tf.Variable(np.ones((3, 5), np.float32))
  prefix = tf.train.Checkpoint(**items, stray_head=stray).save(str(tmp_path / "ckpt"))
  ref.write_bert_config(str(tmp_path), released.tf1_config)
  _, _, report = load(prefix, MobileBertForMaskedLM)
  assert report.unused == ("stray_head/.ATTRIBUTES/VARIABLE_VALUE",)
  assert report.initialized == ()


def test_wrong_shape_names_tensor_and_both_shapes(released, tmp_path):
  prefix = released.save(tmp_path)
  config = released.config.replace(intermediate_size=released.config.intermediate_size + 1)
  with pytest.raises(ValueError) as info:
    load(prefix, MobileBertModel, config=config)
  message = str(info.value)
  width = released.config.intermediate_size
  key = "encoder/layer_with_weights-1/block_layers/ffn/0/0/kernel/.ATTRIBUTES/VARIABLE_VALUE"
  assert key in message
  assert f"({released.config.intra_bottleneck_size}, {width})" in message
  assert f"({released.config.intra_bottleneck_size}, {width + 1})" in message


def test_block_count_mismatch(released, tmp_path):
  prefix = released.save(tmp_path)
  config = released.config.replace(num_hidden_layers=3)
  with pytest.raises(
    ValueError, match="has 2 transformer blocks but the config says num_hidden_layers=3"
  ):
    load(prefix, MobileBertModel, config=config)


# ----------------------------------------------------------------------------------------------
# Configs beside the checkpoint
# ----------------------------------------------------------------------------------------------


def test_config_json_in_tf2_encoder_arguments(released, tmp_path):
  prefix = released.save(tmp_path, config_file=False)
  cfg = ref.resolved(released.tf1_config)
  arguments = {
    "word_vocab_size": cfg["vocab_size"],
    "word_embed_size": cfg["embedding_size"],
    "type_vocab_size": cfg["type_vocab_size"],
    "max_sequence_length": cfg["max_position_embeddings"],
    "num_blocks": cfg["num_hidden_layers"],
    "hidden_size": cfg["hidden_size"],
    "num_attention_heads": cfg["num_attention_heads"],
    "intermediate_size": cfg["intermediate_size"],
    "hidden_activation": cfg["hidden_act"],
    "hidden_dropout_prob": cfg["hidden_dropout_prob"],
    "intra_bottleneck_size": cfg["intra_bottleneck_size"],
    "key_query_shared_bottleneck": True,
    "num_feedforward_networks": cfg["num_feedforward_networks"],
    "normalization_type": "no_norm",
    "classifier_activation": False,
  }
  with open(tmp_path / "config.json", "w") as f:
    json.dump(arguments, f)
  module, _, report = load(prefix, MobileBertModel)
  assert module.config == released.config
  assert report.config.hf_layer_norm_eps_quirk is False


def test_model_garden_params_yaml(released, tmp_path):
  yaml = pytest.importorskip("yaml")
  prefix = released.save(tmp_path, config_file=False)
  cfg = ref.resolved(released.tf1_config)
  params = {
    "task": {
      "model": {
        "mlm_activation": "relu",
        "encoder": {
          "type": "mobilebert",
          "mobilebert": {
            "word_vocab_size": cfg["vocab_size"],
            "word_embed_size": cfg["embedding_size"],
            "max_sequence_length": cfg["max_position_embeddings"],
            "num_blocks": cfg["num_hidden_layers"],
            "hidden_size": cfg["hidden_size"],
            "intermediate_size": cfg["intermediate_size"],
            "hidden_activation": "relu",
            "hidden_dropout_prob": 0.0,
            "intra_bottleneck_size": cfg["intra_bottleneck_size"],
            "key_query_shared_bottleneck": True,
            "num_feedforward_networks": cfg["num_feedforward_networks"],
            "normalization_type": "no_norm",
            "classifier_activation": False,
          },
        },
      }
    }
  }
  with open(tmp_path / "params.yaml", "w") as f:
    yaml.safe_dump(params, f)
  module, _, _ = load(prefix, MobileBertModel)
  assert module.config == released.config
  # Keras reads "gelu" as the exact GELU, and the Model Garden's MLM table as the tanh one.
  params["task"]["model"]["mlm_activation"] = "gelu"
  params["task"]["model"]["encoder"]["mobilebert"]["hidden_activation"] = "gelu"
  with open(tmp_path / "params.yaml", "w") as f:
    yaml.safe_dump(params, f)
  module, _, report = load(prefix, MobileBertModel)
  assert module.config.hidden_act == "gelu"
  assert any("MLM logits differ" in note for note in report.notes)
  # A distillation config does not say which model the checkpoint holds.
  with open(tmp_path / "params.yaml", "w") as f:
    yaml.safe_dump({"task": {"teacher_model": {}, "student_model": {}}}, f)
  with pytest.raises(ValueError, match="distillation"):
    load(prefix, MobileBertModel)


def test_no_config_says_how_to_pass_one(released, tmp_path):
  prefix = released.save(tmp_path, config_file=False)
  with pytest.raises(FileNotFoundError) as info:
    load(prefix, MobileBertModel)
  assert 'MobileBertConfig.from_preset("mobilebert-uncased")' in str(info.value)
  # ... and the config argument is enough.
  module, _, _ = load(prefix, MobileBertModel, config=released.config)
  assert module.config == released.config


def test_scan_layers_loads_the_same_numbers(released, tmp_path):
  prefix = released.save(tmp_path)
  _, plain = load(prefix, MobileBertModel)[:2]
  _, scanned = load(prefix, MobileBertModel, scan_layers=True)[:2]
  stacked = scanned["encoder"]["layers"]["attention"]["query"]["kernel"]
  np.testing.assert_array_equal(
    stacked[1], plain["encoder"]["layer_1"]["attention"]["query"]["kernel"]
  )


# ----------------------------------------------------------------------------------------------
# Full sizes (slow)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["released", "teacher"])
def test_full_size_matches_tf2(tmp_path, name):
  tf1_config = {"released": ref.RELEASED, "teacher": ref.TEACHER}[name]
  reference = Reference(tf1_config, seed=1)
  reference.save(tmp_path)
  assert MobileBertConfig.from_json_file(tmp_path / "bert_config.json", source="tf1") == (
    reference.config
  )
  worst = check_against_tf2(reference, str(tmp_path))
  print(f"TF2 full {name}: max relative error {worst:.2e}")
