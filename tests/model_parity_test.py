"""Parity of every model class with transformers' PyTorch MobileBERT (eager attention, fp32).

Each case builds the transformers model of a class for a small config, randomises all of its
parameters, converts the weights through the `hf_names` table (`reference_util`), runs both
models on a right-padded two-segment batch, and requires max|ours - ref| <= 1e-5 * max|ref| for
every output tensor: last hidden state, pooled output, every hidden state, every attention map
and every logit.

The configs cover the three ways a block can feed attention (docs/model.md §attention-inputs):
  * shared key/query bottleneck (the released student),
  * queries, keys and values from the input bottleneck (MobileBERT_TINY),
  * neither, i.e. queries, keys and values from the 512-d block input (the IB-BERT teacher).
    transformers sizes the query/key kernels with `true_hidden_size` but feeds them the block
    input (docs/pitfalls.md P10), so it can build this path only when intra_bottleneck_size equals
    hidden_size; it is compared here in that case. The teacher's real shape (b != H) cannot be
    compared against transformers; `test_transformers_cannot_build_the_teacher_path` pins that
    down; the TF2 Model Garden reference covers it (`weights_tf2_test.py`).
and the plain-BERT path (use_bottleneck=False), NoNorm and LayerNorm (LayerNorm with the
`hf_layer_norm_eps_quirk`, docs/pitfalls.md P8), relu/relu6/gelu/gelu_new, F = 1..4, and pooled
outputs with and without `classifier_activation`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import reference_util as ru
import torch

from mobilebert_jax.model.config import MobileBertConfig

pytestmark = pytest.mark.torch

# Small widths, all different so that a transposed or mis-sized tensor cannot go unnoticed.
_SMALL = dict(
  vocab_size=97,
  embedding_size=16,
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=40,
  intra_bottleneck_size=24,
  max_position_embeddings=32,
  num_labels=3,
)

VARIANTS: dict[str, dict] = {
  # The released student's block at small width: shared Q/K bottleneck, V from the block input.
  "kq_shared-no_norm-relu-F4": dict(
    key_query_shared_bottleneck=True,
    num_feedforward_networks=4,
    hidden_act="relu",
    classifier_activation=False,
  ),
  # MobileBERT_TINY's block: Q, K and V from the input bottleneck.
  "bottleneck_attention-no_norm-relu6-F2": dict(
    use_bottleneck_attention=True,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=2,
    hidden_act="relu6",
    classifier_activation=True,
  ),
  # The teacher's wiring (Q, K, V from the block input, residual from the input bottleneck),
  # with b = H so that transformers can build it.
  "neither-b_eq_h-layer_norm-gelu_new-F1": dict(
    key_query_shared_bottleneck=False,
    intra_bottleneck_size=48,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    hf_layer_norm_eps_quirk=True,
    hidden_act="gelu_new",
    classifier_activation=True,
  ),
  # The paper's "w/o OPT" student: LayerNorm and exact GELU with the shared bottleneck.
  "kq_shared-layer_norm-gelu-F3": dict(
    key_query_shared_bottleneck=True,
    num_feedforward_networks=3,
    normalization_type="layer_norm",
    hf_layer_norm_eps_quirk=True,
    hidden_act="gelu",
    classifier_activation=False,
  ),
  # Plain BERT blocks (no bottleneck, no trigram; E != H keeps the embedding projection).
  "plain-layer_norm-gelu-F2": dict(
    use_bottleneck=False,
    trigram_input=False,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=2,
    normalization_type="layer_norm",
    hf_layer_norm_eps_quirk=True,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    classifier_activation=True,
  ),
  # Plain blocks with NoNorm and the trigram input (no released model, but a legal config).
  "plain-trigram-no_norm-relu-F1": dict(
    use_bottleneck=False,
    trigram_input=True,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    hidden_act="relu",
    classifier_activation=False,
  ),
}


def small_config(variant: str, model_class: str) -> MobileBertConfig:
  """The small config of a variant, with the label count transformers needs for the class."""
  config = MobileBertConfig(**{**_SMALL, **VARIANTS[variant]})
  if model_class == "MobileBertForQuestionAnswering":
    # transformers sizes qa_outputs with num_labels and splits it into (start, end).
    config = config.replace(num_labels=2)
  return config


def batch_for(config: MobileBertConfig, model_class: str, seed: int = 0) -> ru.Batch:
  """The test batch: 3 x 12, or 2 questions x 3 choices x 12 for multiple choice."""
  if model_class == "MobileBertForMultipleChoice":
    return ru.make_batch(config, batch_size=2, length=12, seed=seed, num_choices=3)
  return ru.make_batch(config, batch_size=3, length=12, seed=seed)


@pytest.mark.parametrize("model_class", ru.MODEL_CLASS_NAMES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_output_matches_transformers(variant: str, model_class: str):
  config = small_config(variant, model_class)
  torch_model, params = ru.build_reference(config, model_class, seed=1)
  batch = batch_for(config, model_class)
  assert batch.attention_mask.min() == 0 and batch.token_type_ids.max() == 1  # padding, 2 segments

  ref = ru.run_reference(torch_model, batch)
  ours = ru.run_ours(config, model_class, params, batch)

  errors = ru.output_errors(ours, ref)
  expected_hidden = config.num_hidden_layers + 1
  assert sum(k.startswith("hidden_states[") for k in errors) == expected_hidden
  assert sum(k.startswith("attentions[") for k in errors) == config.num_hidden_layers
  ru.assert_parity(errors)


@pytest.mark.parametrize("classifier_activation", [True, False])
def test_pooled_output_with_and_without_classifier_activation(classifier_activation: bool):
  config = small_config("kq_shared-no_norm-relu-F4", "MobileBertModel").replace(
    classifier_activation=classifier_activation
  )
  torch_model, params = ru.build_reference(config, "MobileBertModel", seed=2)
  batch = ru.make_batch(config)
  ref = ru.run_reference(torch_model, batch)
  ours = ru.run_ours(config, "MobileBertModel", params, batch)

  ru.assert_parity({"pooler_output": ru.relative_error(ours.pooler_output, ref.pooler_output)})
  first_token = np.asarray(ours.last_hidden_state)[:, 0]
  if classifier_activation:
    assert "pooler" in params
    assert np.max(np.abs(np.asarray(ours.pooler_output))) <= 1.0  # tanh
  else:
    assert "pooler" not in params  # the released model has no pooler dense (docs/pitfalls.md P6)
    np.testing.assert_array_equal(np.asarray(ours.pooler_output), first_token)


def test_multiple_choice_scores_every_choice():
  config = small_config("kq_shared-no_norm-relu-F4", "MobileBertForMultipleChoice")
  torch_model, params = ru.build_reference(config, "MobileBertForMultipleChoice", seed=3)
  batch = ru.make_batch(config, batch_size=2, length=10, num_choices=4, seed=5)
  ref = ru.run_reference(torch_model, batch)
  ours = ru.run_ours(config, "MobileBertForMultipleChoice", params, batch)
  assert ours.logits.shape == (2, 4)
  assert ours.hidden_states[0].shape == (8, 10, config.hidden_size)
  ru.assert_parity(ru.output_errors(ours, ref))
  # A choice's score depends on that choice's tokens only: permuting choices permutes scores.
  permutation = np.array([2, 0, 3, 1])
  permuted = ru.Batch(
    batch.input_ids[:, permutation],
    batch.attention_mask[:, permutation],
    batch.token_type_ids[:, permutation],
  )
  ours_permuted = ru.run_ours(config, "MobileBertForMultipleChoice", params, permuted, False, False)
  np.testing.assert_allclose(
    np.asarray(ours_permuted.logits), np.asarray(ours.logits)[:, permutation], rtol=1e-6
  )


def test_layer_norm_eps_quirk_is_what_transformers_does():
  """transformers' embedding LayerNorm and last FFN-output LayerNorm use eps 1e-5
  (docs/pitfalls.md P8).

  With unit-variance inputs the two epsilons differ by ~1e-5 relative, too little to see, so
  the embedding tables and projection are scaled down until the embedding LayerNorm's input
  variance is ~1e-6 and the epsilon matters: then only the quirk reproduces transformers.
  """
  config = small_config("kq_shared-layer_norm-gelu-F3", "MobileBertModel")
  torch_model = ru.build_torch_model(config, "MobileBertModel", seed=4)
  with torch.no_grad():
    embeddings = torch_model.embeddings
    for table in (embeddings.position_embeddings, embeddings.token_type_embeddings):
      table.weight.mul_(1e-3)
    embeddings.embedding_transformation.weight.mul_(1e-3)
    embeddings.embedding_transformation.bias.mul_(1e-3)
  params = ru.state_dict_to_params(torch_model.state_dict(), config, "MobileBertModel")
  batch = ru.make_batch(config)
  ref = ru.run_reference(torch_model, batch)

  with_quirk = ru.run_ours(config, "MobileBertModel", params, batch)
  ru.assert_parity(ru.output_errors(with_quirk, ref))
  without = ru.run_ours(
    config.replace(hf_layer_norm_eps_quirk=False), "MobileBertModel", params, batch
  )
  assert ru.relative_error(without.hidden_states[0], ref.hidden_states[0]) > 1e-2


def test_transformers_cannot_build_the_teacher_path():
  """docs/pitfalls.md P10: with b != H and neither attention flag, transformers' query kernel has
  the wrong width.

  Our model runs it (and `weights_tf2_test.py` checks its numbers against TF2). If a future
  transformers release fixes this, this test fails and the case should join the matrix above.
  """
  config = MobileBertConfig(
    **{**_SMALL, "key_query_shared_bottleneck": False, "normalization_type": "layer_norm"}
  )
  assert config.attention_input_size == config.hidden_size != config.true_hidden_size
  torch_model = ru.build_torch_model(config, "MobileBertModel")
  query = torch_model.encoder.layer[0].attention.self.query
  assert query.in_features == config.intra_bottleneck_size  # should be hidden_size
  batch = ru.make_batch(config)
  with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
    ru.run_reference(torch_model, batch)


# ----------------------------------------------------------------------------------------------
# The released configuration
# ----------------------------------------------------------------------------------------------


def test_released_configuration_pretraining_model():
  """google/mobilebert-uncased's architecture (docs/model.md §presets), random weights: 25 hidden
  states, 24 attention maps, MLM and NSP logits.

  The transformers model is also run in float64, which tells whether the comparison is well
  conditioned: fp32 transformers must itself be within the tolerance of fp64, and we must be as
  close to fp64 as it is.
  """
  config = MobileBertConfig.from_preset("mobilebert-uncased")
  torch_model, params = ru.build_reference(config, "MobileBertForPreTraining", seed=0)
  batch = ru.make_batch(config, batch_size=2, length=32, seed=0)
  ref = ru.run_reference(torch_model, batch)
  ref64 = ru.run_reference(copy.deepcopy(torch_model).double(), batch)
  ours = ru.run_ours(config, "MobileBertForPreTraining", params, batch)

  errors = ru.output_errors(ours, ref)
  assert sum(k.startswith("hidden_states[") for k in errors) == 25
  assert sum(k.startswith("attentions[") for k in errors) == 24
  assert ours.prediction_logits.shape == (2, 32, 30522)
  ru.assert_parity(errors)

  reference_accuracy = ru.output_errors(ru.run_reference(torch_model, batch), ref64)
  ru.assert_parity(reference_accuracy)  # the test input is well conditioned
  our_accuracy = ru.output_errors(ours, ref64)
  assert max(our_accuracy.values()) <= 3 * max(reference_accuracy.values())
