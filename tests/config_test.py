"""`MobileBertConfig`: presets, the three JSON dialects, round trips and clear errors.

`testdata/tf1_configs/` holds the four original google-research `bert_config.json` files with
exactly their keys (docs/model.md §config-files). The TINY and teacher files leave keys out, and the
TF1 and transformers config classes fill them with different defaults (docs/pitfalls.md P7), so a
reader must be told, or must recognise, which dialect it reads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

import jax
import pytest
import torch
import transformers

from mobilebert_jax.model.config import IMPLEMENTATION_FIELDS, PRESETS, MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import abstract_params
from mobilebert_jax.weights.config_dialects import detect_config_source

TF1_DIR = pathlib.Path(__file__).parent / "testdata" / "tf1_configs"
RELEASED_FILE = TF1_DIR / "uncased_L-24_H-128_B-512_A-4_F-4_OPT.json"
QAT_FILE = TF1_DIR / "uncased_L-24_H-128_B-512_A-4_F-4_OPT_QAT.json"
TINY_FILE = TF1_DIR / "uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT.json"
TEACHER_FILE = TF1_DIR / "uncased_L-24_H-1024_B-512_A-4.json"


def encoder_size(config: MobileBertConfig) -> int:
  shapes = abstract_params(MobileBertModel(config, add_pooling_layer=False))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def differing_fields(a: MobileBertConfig, b: MobileBertConfig) -> dict[str, tuple]:
  return {
    f.name: (getattr(a, f.name), getattr(b, f.name))
    for f in dataclasses.fields(a)
    if getattr(a, f.name) != getattr(b, f.name)
  }


# ----------------------------------------------------------------------------------------------
# Presets (docs/model.md §presets)
# ----------------------------------------------------------------------------------------------

# The columns of docs/model.md §config that all student presets share.
_STUDENT = dict(
  vocab_size=30522,
  embedding_size=128,
  hidden_size=512,
  num_hidden_layers=24,
  num_attention_heads=4,
  intermediate_size=512,
  hidden_dropout_prob=0.0,
  attention_probs_dropout_prob=0.1,
  max_position_embeddings=512,
  type_vocab_size=2,
  initializer_range=0.02,
  trigram_input=True,
  use_bottleneck=True,
  intra_bottleneck_size=128,
  normalization_type="no_norm",
  classifier_activation=False,
)

PRESET_FIELDS = {
  "mobilebert-uncased": dict(
    _STUDENT,
    hidden_act="relu",
    use_bottleneck_attention=False,
    key_query_shared_bottleneck=True,
    num_feedforward_networks=4,
  ),
  "mobilebert-uncased-qat": dict(
    _STUDENT,
    hidden_act="relu6",
    use_bottleneck_attention=False,
    key_query_shared_bottleneck=True,
    num_feedforward_networks=4,
  ),
  "mobilebert-uncased-no-opt": dict(
    _STUDENT,
    hidden_act="gelu_new",
    normalization_type="layer_norm",
    key_query_shared_bottleneck=True,
    num_feedforward_networks=4,
  ),
  "mobilebert-tiny": dict(
    _STUDENT, hidden_act="relu", use_bottleneck_attention=True, num_feedforward_networks=2
  ),
  "ibbert-large": dict(
    _STUDENT,
    intermediate_size=4096,
    hidden_act="gelu_new",  # the TF code's "gelu" is the tanh form (docs/pitfalls.md P9)
    hidden_dropout_prob=0.1,
    intra_bottleneck_size=1024,
    use_bottleneck_attention=False,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
  ),
  "bert-base-uncased": dict(
    vocab_size=30522,
    embedding_size=768,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    trigram_input=False,
    use_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
  ),
}


def test_every_preset_is_described():
  assert set(PRESET_FIELDS) == set(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESET_FIELDS))
def test_preset_fields(name: str):
  config = MobileBertConfig.from_preset(name)
  for field, expected in PRESET_FIELDS[name].items():
    assert getattr(config, field) == expected, field
  for field in IMPLEMENTATION_FIELDS:  # presets describe architectures only
    assert getattr(config, field) == getattr(MobileBertConfig(), field), field


def test_derived_sizes():
  released = MobileBertConfig.from_preset("mobilebert-uncased")
  assert (released.true_hidden_size, released.attention_head_size) == (128, 32)
  assert (released.attention_input_size, released.value_input_size) == (128, 512)
  assert released.uses_shared_bottleneck and released.embedding_input_size == 384
  tiny = MobileBertConfig.from_preset("mobilebert-tiny")
  assert (tiny.attention_input_size, tiny.value_input_size) == (128, 128)
  assert not tiny.uses_shared_bottleneck
  teacher = MobileBertConfig.from_preset("ibbert-large")
  assert (teacher.true_hidden_size, teacher.attention_head_size) == (1024, 256)
  assert (teacher.attention_input_size, teacher.value_input_size) == (512, 512)
  bert = MobileBertConfig.from_preset("bert-base-uncased")
  assert bert.true_hidden_size == 768 and not bert.has_embedding_projection


def test_class_defaults_are_transformers_defaults():
  """`MobileBertConfig()` is transformers' `MobileBertConfig()`: the released student except
  classifier_activation=True (docs/pitfalls.md P6), so building it by hand adds a pooler the
  checkpoint lacks."""
  ours = MobileBertConfig()
  theirs = transformers.MobileBertConfig()
  for field in dataclasses.fields(ours):
    if field.name in IMPLEMENTATION_FIELDS or field.name in ("id2label", "problem_type"):
      continue
    assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
  assert differing_fields(ours, MobileBertConfig.from_preset("mobilebert-uncased")) == {
    "classifier_activation": (True, False)
  }


def test_from_preset_overrides_and_unknown_name():
  config = MobileBertConfig.from_preset("mobilebert-uncased", num_labels=3, scan_layers=True)
  assert config.num_labels == 3 and config.scan_layers
  with pytest.raises(KeyError, match=r"Unknown MobileBERT preset 'mobilebert-large'.*known"):
    MobileBertConfig.from_preset("mobilebert-large")


# ----------------------------------------------------------------------------------------------
# Original TF1 bert_config.json files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("path", "preset"),
  [
    (RELEASED_FILE, "mobilebert-uncased"),
    (QAT_FILE, "mobilebert-uncased-qat"),
    (TINY_FILE, "mobilebert-tiny"),
    (TEACHER_FILE, "ibbert-large"),
  ],
)
def test_tf1_files_read_as_their_presets(path: pathlib.Path, preset: str):
  data = json.loads(path.read_text())
  assert detect_config_source(data) == "tf1"
  expected = MobileBertConfig.from_preset(preset)
  assert MobileBertConfig.from_json_file(path) == expected  # auto-detected
  assert MobileBertConfig.from_json_file(path, source="tf1") == expected


def test_tf1_reader_maps_gelu_to_the_tanh_form():
  assert json.loads(TEACHER_FILE.read_text())["hidden_act"] == "gelu"
  assert MobileBertConfig.from_json_file(TEACHER_FILE, source="tf1").hidden_act == "gelu_new"
  assert MobileBertConfig.from_json_file(TEACHER_FILE, source="hf").hidden_act == "gelu"


def test_teacher_file_read_with_the_wrong_defaults_is_another_model():
  """docs/pitfalls.md P7: the teacher file omits normalization_type, num_feedforward_networks, ...
  and transformers' defaults for them are the student's."""
  as_tf1 = MobileBertConfig.from_json_file(TEACHER_FILE, source="tf1")
  as_hf = MobileBertConfig.from_json_file(TEACHER_FILE, source="hf")
  assert differing_fields(as_tf1, as_hf) == {
    "hidden_act": ("gelu_new", "gelu"),
    "key_query_shared_bottleneck": (False, True),
    "num_feedforward_networks": (1, 4),
    "normalization_type": ("layer_norm", "no_norm"),
  }
  assert encoder_size(as_tf1) == 294_205_184
  assert encoder_size(as_hf) != encoder_size(as_tf1)


def test_tiny_file_read_with_the_wrong_defaults():
  """The TINY file omits only key_query_shared_bottleneck. Read as transformers does, the flag
  is True; with use_bottleneck_attention set it changes no computation (our model ignores it and
  builds the same parameters), but transformers then builds an unused shared bottleneck."""
  as_tf1 = MobileBertConfig.from_json_file(TINY_FILE, source="tf1")
  as_hf = MobileBertConfig.from_json_file(TINY_FILE, source="hf")
  assert differing_fields(as_tf1, as_hf) == {"key_query_shared_bottleneck": (False, True)}
  assert encoder_size(as_tf1) == encoder_size(as_hf) == 15_485_696

  data = json.loads(TINY_FILE.read_text())
  with torch.device("meta"):  # count transformers' parameters without allocating them
    hf_model = transformers.MobileBertModel(transformers.MobileBertConfig(**data))
  unused = sum(p.numel() for n, p in hf_model.named_parameters() if "bottleneck.attention" in n)
  assert unused == 24 * (512 * 128 + 128 + 2 * 128)
  pooler = 0  # classifier_activation is false in the file
  assert sum(p.numel() for p in hf_model.parameters()) == 15_485_696 + unused + pooler


# ----------------------------------------------------------------------------------------------
# transformers config.json files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["mobilebert-uncased", "mobilebert-tiny", "ibbert-large"])
def test_reads_config_json_written_by_transformers(tmp_path: pathlib.Path, preset: str):
  ours = MobileBertConfig.from_preset(preset, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
  hf = transformers.MobileBertConfig(**_hf_kwargs(ours))
  hf.save_pretrained(tmp_path)
  data = json.loads((tmp_path / "config.json").read_text())
  assert detect_config_source(data) == "hf"
  assert MobileBertConfig.from_json_file(tmp_path / "config.json") == ours
  assert MobileBertConfig.from_json_file(tmp_path / "config.json", source="hf") == ours


def _hf_kwargs(config: MobileBertConfig) -> dict:
  data = config.to_hf_dict()
  for key in ("model_type", "true_hidden_size", "label2id"):
    data.pop(key)
  return data


def test_reads_the_released_hub_config():
  """The hub's google/mobilebert-uncased config.json (docs/model.md §hub-config), as an older
  transformers wrote it."""
  hub = {
    "architectures": ["MobileBertForPreTraining"],
    "attention_probs_dropout_prob": 0.1,
    "classifier_activation": False,
    "embedding_size": 128,
    "hidden_act": "relu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 512,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "intra_bottleneck_size": 128,
    "key_query_shared_bottleneck": True,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "mobilebert",
    "normalization_type": "no_norm",
    "num_attention_heads": 4,
    "num_feedforward_networks": 4,
    "num_hidden_layers": 24,
    "pad_token_id": 0,
    "transformers_version": "4.6.0.dev0",
    "trigram_input": True,
    "true_hidden_size": 128,
    "type_vocab_size": 2,
    "use_bottleneck": True,
    "use_bottleneck_attention": False,
    "vocab_size": 30522,
  }
  assert MobileBertConfig.from_dict(hub) == MobileBertConfig.from_preset("mobilebert-uncased")
  # A minimal config.json gets transformers' defaults, pooler included (docs/pitfalls.md P6).
  assert MobileBertConfig.from_dict({"model_type": "mobilebert"}) == MobileBertConfig()


def test_id2label_alone_sets_num_labels():
  config = MobileBertConfig.from_dict(
    {"model_type": "mobilebert", "id2label": {"0": "neg", "1": "neu", "2": "pos"}}
  )
  assert config.num_labels == 3 and config.label_map == {0: "neg", 1: "neu", 2: "pos"}


def test_tf2_encoder_arguments():
  """TF2 Model Garden `MobileBertEncoderConfig` names; its defaults are the teacher's."""
  student = {
    "word_vocab_size": 30522,
    "word_embed_size": 128,
    "type_vocab_size": 2,
    "max_sequence_length": 512,
    "num_blocks": 24,
    "hidden_size": 512,
    "num_attention_heads": 4,
    "intermediate_size": 512,
    "intermediate_act_fn": "relu",
    "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.1,
    "intra_bottleneck_size": 128,
    "initializer_range": 0.02,
    "use_bottleneck_attention": False,
    "key_query_shared_bottleneck": True,
    "num_feedforward_networks": 4,
    "normalization_type": "no_norm",
    "classifier_activation": False,
  }
  assert detect_config_source(student) == "tf2"
  assert MobileBertConfig.from_dict(student) == MobileBertConfig.from_preset("mobilebert-uncased")
  assert MobileBertConfig.from_dict({}, source="tf2") == MobileBertConfig.from_preset(
    "ibbert-large"
  )


# ----------------------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------------------

_UNUSUAL = MobileBertConfig(
  vocab_size=1000,
  num_hidden_layers=3,
  num_labels=3,
  id2label=((0, "x"), (1, "y"), (2, "z")),
  problem_type="multi_label_classification",
  classifier_dropout=0.2,
  hidden_act="gelu_new",
  normalization_type="layer_norm",
  hf_layer_norm_eps_quirk=True,
  masked_attention_logit=-6.0,
  padding_invariant_trigram=True,
  scan_layers=True,
  remat_policy="dots",
  dtype="bfloat16",
  param_dtype="float32",
)


def _implementation_defaults() -> dict:
  return {f: getattr(MobileBertConfig(), f) for f in IMPLEMENTATION_FIELDS}


@pytest.mark.parametrize("name", [*sorted(PRESETS), "unusual"])
def test_to_json_round_trip(tmp_path: pathlib.Path, name: str):
  config = _UNUSUAL if name == "unusual" else MobileBertConfig.from_preset(name)
  assert MobileBertConfig.from_dict(json.loads(config.to_json())) == config
  assert MobileBertConfig.from_dict(config.to_dict(), source="hf") == config
  config.to_json_file(tmp_path / "config.json")
  assert MobileBertConfig.from_json_file(tmp_path / "config.json") == config

  # Without the implementation switches, a file describes the architecture only.
  architecture = json.loads(config.to_json(include_implementation=False))
  assert not IMPLEMENTATION_FIELDS & set(architecture)
  assert MobileBertConfig.from_dict(architecture) == config.replace(**_implementation_defaults())


def test_config_json_from_to_hf_dict_is_read_back_by_transformers_and_us(tmp_path):
  config = _UNUSUAL
  hf = transformers.MobileBertConfig(**_hf_kwargs(config))
  assert hf.true_hidden_size == config.true_hidden_size
  assert hf.id2label == {0: "x", 1: "y", 2: "z"}
  assert hf.problem_type == config.problem_type
  hf.save_pretrained(tmp_path)
  back = MobileBertConfig.from_json_file(tmp_path / "config.json")
  assert back == config.replace(**_implementation_defaults())


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float32])
def test_torch_dtype_in_config_json_does_not_set_our_compute_dtype(tmp_path, torch_dtype):
  """transformers v5 writes the storage dtype of the saved weights as `dtype`, the name of our
  compute-dtype field; a bf16 PyTorch checkpoint must not switch our computation to bf16."""
  small = dict(
    vocab_size=50,
    embedding_size=8,
    hidden_size=16,
    intra_bottleneck_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
  )
  model = transformers.MobileBertModel(transformers.MobileBertConfig(**small)).to(torch_dtype)
  model.save_pretrained(tmp_path)
  written = json.loads((tmp_path / "config.json").read_text())
  assert written["dtype"] == str(torch_dtype).removeprefix("torch.")
  config = MobileBertConfig.from_json_file(tmp_path / "config.json")
  assert config.dtype == "float32"
  assert config == MobileBertConfig(**small)
  # Our own files (no transformers_version) do carry the compute dtype.
  ours = MobileBertConfig(**small, dtype="bfloat16")
  assert MobileBertConfig.from_dict(json.loads(ours.to_json())).dtype == "bfloat16"


def test_constructor_normalises_id2label():
  as_dict = MobileBertConfig(num_labels=2, id2label={1: "b", 0: "a"})
  as_pairs = MobileBertConfig(num_labels=2, id2label=((0, "a"), (1, "b")))
  assert as_dict == as_pairs and hash(as_dict) == hash(as_pairs)
  generated = MobileBertConfig(num_labels=2, id2label={0: "LABEL_0", 1: "LABEL_1"})
  assert generated == MobileBertConfig(num_labels=2)


def test_to_hf_dict_drops_the_ignored_shared_bottleneck_flag():
  """Both attention flags set: transformers would build unused shared-bottleneck weights."""
  config = MobileBertConfig(use_bottleneck_attention=True, key_query_shared_bottleneck=True)
  assert config.to_hf_dict()["key_query_shared_bottleneck"] is False


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  ("content", "message"),
  [
    ('{"hidden_size": 512, "num_layers": 4}', r"neither a transformers config.json.*keys are"),
    ('{"model_type": "bert", "vocab_size": 30522}', r"model_type='bert'"),
    ("[1, 2, 3]", r"does not hold a JSON object"),
    ('{"vocab_size": 30522,', r"is not valid JSON"),
    ('{"vocab_size": 30522, "hidden_sise": 512}', r"unknown keys for a TF1.*hidden_sise"),
    ('{"num_blocks": 24, "use_bottleneck": true}', r"unknown keys for TF2.*use_bottleneck"),
  ],
)
def test_files_of_no_known_format_are_rejected(tmp_path: pathlib.Path, content: str, message):
  path = tmp_path / "some_config.json"
  path.write_text(content)
  with pytest.raises(ValueError, match=message) as error:
    MobileBertConfig.from_json_file(path)
  assert "some_config.json" in str(error.value)  # the error names the file


def test_unknown_source_is_rejected():
  with pytest.raises(ValueError, match="source must be"):
    MobileBertConfig.from_dict({"vocab_size": 10}, source="tf3")


@pytest.mark.parametrize(
  ("fields", "message"),
  [
    (dict(intra_bottleneck_size=130), r"intra_bottleneck_size \(130\) is not divisible"),
    (dict(use_bottleneck=False, hidden_size=510), r"hidden_size \(510\) is not divisible"),
    (dict(embedding_size=1024), r"embedding_size \(1024\) exceeds hidden_size \(512\)"),
    (dict(hidden_act="gelu_fast"), r"hidden_act 'gelu_fast' is not one of"),
    (dict(normalization_type="rms_norm"), r"normalization_type 'rms_norm'"),
    (dict(remat_policy="everything"), r"remat_policy 'everything'"),
    (dict(dtype="float64"), r"dtype 'float64'"),
    (dict(attention_probs_dropout_prob=1.0), r"attention_probs_dropout_prob must lie in"),
    (dict(classifier_dropout=-0.1), r"classifier_dropout must lie in"),
    (dict(num_hidden_layers=0), r"num_hidden_layers must be a positive integer"),
    (dict(vocab_size=True), r"vocab_size must be a positive integer"),
    (dict(num_labels=0), r"num_labels must be >= 1"),
    (dict(num_labels=3, id2label=((0, "a"),)), r"id2label has 1 entries but num_labels is 3"),
    (dict(problem_type="ranking"), r"unknown problem_type 'ranking'"),
    (dict(masked_attention_logit=6.0), r"masked_attention_logit must be negative"),
  ],
)
def test_impossible_configs_are_rejected(fields: dict, message: str):
  with pytest.raises(ValueError, match=message):
    MobileBertConfig(**fields)


def test_every_problem_is_reported_at_once():
  with pytest.raises(ValueError) as error:
    MobileBertConfig(hidden_act="swiglu", normalization_type="batch_norm", dtype="int8")
  for part in ("hidden_act", "normalization_type", "dtype"):
    assert part in str(error.value)


def test_inconsistent_true_hidden_size_is_rejected():
  data = {"model_type": "mobilebert", "intra_bottleneck_size": 128, "true_hidden_size": 512}
  with pytest.raises(ValueError, match=r"true_hidden_size=512 disagrees.*expected 128"):
    MobileBertConfig.from_dict(data)


def test_unknown_fields_are_rejected():
  with pytest.raises(ValueError, match=r"no field\(s\) \['hidden_sise'\]"):
    MobileBertConfig().replace(hidden_sise=3)
  with pytest.raises(ValueError, match=r"no field\(s\) \['num_layer'\]"):
    MobileBertConfig.from_dict({"model_type": "mobilebert"}, num_layer=3)
