"""`load_pretrained` on TF-Hub SavedModels of the MobileBERT encoder, against the SavedModel itself.

The SavedModel is exported by the test as `official/projects/mobilebert/export_tfhub.py` exports
it (the core encoder model with its dict signature, the `mlm` sub-model, `vocab_file` and
`do_lower_case`), from a Model Garden pretrainer with every variable randomised. The reference
outputs come from the reloaded SavedModel through the TF-Hub interface (docs/references.md §tfhub).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("official.nlp.modeling")

import tf_reference_util as ref  # noqa: E402

from mobilebert_jax import MobileBertForMaskedLM, MobileBertModel  # noqa: E402
from mobilebert_jax.weights import find_reader, load_pretrained  # noqa: E402

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
  """(SavedModel directory, TF1 config, reference outputs of the reloaded SavedModel, batch)."""
  tf1_config = ref.small(ref.RELEASED, classifier_activation=True)
  directory = str(tmp_path_factory.mktemp("hub") / "mobilebert_hub")
  ref.export_tf_hub(tf1_config, directory, seed=5)
  batch = ref.make_batch(tf1_config["vocab_size"], 2, 16, seed=5)
  loaded = tf.saved_model.load(directory)
  inputs = {
    "input_word_ids": tf.constant(batch.input_ids),
    "input_mask": tf.constant(batch.input_mask),
    "input_type_ids": tf.constant(batch.type_ids),
  }
  encoder = loaded(inputs)
  mlm = loaded.mlm({**inputs, "masked_lm_positions": tf.constant(batch.positions)})
  outputs = {
    "sequence_output": encoder["sequence_output"].numpy(),
    "pooled_output": encoder["pooled_output"].numpy(),
    "encoder_outputs": [t.numpy() for t in encoder["encoder_outputs"]],
    "attention_scores": [t.numpy() for t in encoder["attention_scores"]],
    "mlm_logits": mlm["mlm_logits"].numpy(),
  }
  np.testing.assert_array_equal(encoder["default"].numpy(), outputs["pooled_output"])
  return directory, tf1_config, outputs, batch


def test_saved_model_matches_tf_hub_outputs(hub):
  directory, tf1_config, outputs, batch = hub
  assert find_reader(directory).name == "tf-hub"
  config = ref.our_config(tf1_config)
  _, model_params, report = load_pretrained(
    directory, MobileBertModel, config=config, return_report=True
  )
  assert report.format == "tf-hub"
  # The encoder takes everything but the mlm sub-model's head.
  assert report.initialized == ()
  assert all(name.startswith("bert/cls/predictions/") for name in report.unused)
  assert len(report.unused) == 6
  assert any("do_lower_case is True" in note for note in report.notes)
  assert any("vocab.txt" in note for note in report.notes)
  # The mlm sub-model holds the MLM head; MobileBertForMaskedLM has no pooler, which goes unused.
  _, mlm_params, mlm_report = load_pretrained(
    directory, MobileBertForMaskedLM, config=config, return_report=True
  )
  assert mlm_report.initialized == ()
  assert set(mlm_report.unused) == {"pooler/kernel:0", "pooler/bias:0"}
  errors = ref.compare_with_tf2(config, model_params, mlm_params, outputs, batch)
  assert len(errors) == 3 + 2 * config.num_hidden_layers + 1
  worst = ref.assert_parity(errors)
  print(f"TF-Hub SavedModel: max relative error {worst:.2e}")


def test_config_beside_the_saved_model(hub, tmp_path):
  directory, tf1_config, _, _ = hub
  with pytest.raises(FileNotFoundError) as info:
    load_pretrained(directory, MobileBertModel)
  assert 'config=MobileBertConfig.from_preset("mobilebert-uncased")' in str(info.value)
  # A bert_config.json in the SavedModel directory is found.
  copy = shutil.copytree(directory, tmp_path / "hub")
  ref.write_bert_config(str(copy), tf1_config)
  module, _, report = load_pretrained(str(copy), MobileBertModel, return_report=True)
  assert module.config == ref.our_config(tf1_config)
  assert report.initialized == ()


def test_wrong_config_names_tensor_and_shapes(hub):
  directory, tf1_config, _, _ = hub
  config = ref.our_config(tf1_config).replace(intra_bottleneck_size=20)
  with pytest.raises(ValueError) as info:
    load_pretrained(directory, MobileBertModel, config=config)
  assert "transformer_layer_0/bottleneck_input/dense/kernel:0 has shape (32, 16)" in str(info.value)
  assert "expects (32, 20)" in str(info.value)
