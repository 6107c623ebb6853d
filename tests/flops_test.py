"""The analytic FLOP count of `train.flops` equals the matmul work of the model's own jaxpr.

`jaxpr_dot_flops` walks `jax.make_jaxpr(model.apply)` (into jit, scan, remat and custom-derivative
sub-jaxprs, a scan body counted `length` times) and sums 2·prod(batch)·prod(contracting)·
prod(free) over every `dot_general`: every variant of the block, every head, masked positions,
`num_blocks`, unrolled and scanned, must match `forward_flops` exactly; the gradient's jaxpr must
match `train_step_flops` (3× forward) exactly. Tracing only: nothing is compiled or run, and the
parameters are abstract. Also the released architectures' published numbers, and the peak table.
"""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import pytest

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import (
  MobileBertForMaskedLM,
  MobileBertForMultipleChoice,
  MobileBertForNextSentencePrediction,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  MobileBertForTokenClassification,
  abstract_params,
)
from mobilebert_jax.train import flops

BATCH, LENGTH, CHOICES, PREDICTIONS = 2, 12, 3, 5

_SMALL = dict(
  vocab_size=97,
  embedding_size=8,
  hidden_size=32,
  num_hidden_layers=3,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=32,
  num_labels=3,
)
CONFIGS = {
  # The released student's shape: shared key/query bottleneck, values from the block input.
  "student": MobileBertConfig(
    **_SMALL, intra_bottleneck_size=16, num_feedforward_networks=3, classifier_activation=True
  ),
  # MobileBERT_TINY's: Q, K and V from the input bottleneck.
  "tiny": MobileBertConfig(
    **_SMALL,
    intra_bottleneck_size=16,
    use_bottleneck_attention=True,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=2,
    classifier_activation=False,
  ),
  # IB-BERT's: a bottleneck wider than H, Q, K and V from the block input, one FFN, LayerNorm.
  "teacher": MobileBertConfig(
    **_SMALL,
    intra_bottleneck_size=48,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    hidden_act="gelu_new",
  ),
  # Plain BERT without an embedding projection (E = H, no trigram) ...
  "bert": MobileBertConfig(
    **{**_SMALL, "embedding_size": 32},
    trigram_input=False,
    use_bottleneck=False,
    intra_bottleneck_size=32,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
  ),
  # ... and with one (E != H, no trigram: the projection reads E).
  "bert_projected": MobileBertConfig(
    **_SMALL,
    trigram_input=False,
    use_bottleneck=False,
    num_feedforward_networks=2,
  ),
}

# (model class, apply keyword arguments, head, masked positions for the count, num_blocks).
CASES = {
  "encoder": (MobileBertModel, {}, "none", None, None),
  "encoder_2_blocks": (MobileBertModel, {"num_blocks": 2}, "none", None, 2),
  "pooler": (MobileBertModel, {}, "pooler", None, None),
  "pretraining": (MobileBertForPreTraining, {}, "pretraining", None, None),
  "pretraining_masked_2_blocks": (
    MobileBertForPreTraining,
    {"masked_positions": True, "num_blocks": 2},
    "pretraining",
    PREDICTIONS,
    2,
  ),
  "mlm": (MobileBertForMaskedLM, {}, "mlm", None, None),
  "mlm_masked": (MobileBertForMaskedLM, {"masked_positions": True}, "mlm", PREDICTIONS, None),
  "nsp": (MobileBertForNextSentencePrediction, {}, "nsp", None, None),
  "classification": (MobileBertForSequenceClassification, {}, "classification", None, None),
  "multiple_choice": (MobileBertForMultipleChoice, {}, "multiple_choice", None, None),
  "token_classification": (
    MobileBertForTokenClassification,
    {},
    "token_classification",
    None,
    None,
  ),
  "qa": (MobileBertForQuestionAnswering, {}, "qa", None, None),
}


def jaxpr_dot_flops(jaxpr: jax.extend.core.Jaxpr) -> int:
  """2 × the multiply-adds of every `dot_general` in a jaxpr and the jaxprs inside it.

  A scan body counts `length` times; jit, remat and custom_jvp/vjp bodies once (they run once in
  a forward pass). Control flow whose trip count the jaxpr does not fix is refused.
  """
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      lhs, rhs = (v.aval.shape for v in eqn.invars)
      (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
      rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
      total += 2 * math.prod(lhs) * math.prod(rhs_free)  # lhs = batch · contracting · free
      continue
    if name in ("while", "cond"):
      raise AssertionError(f"unexpected {name} in the model's jaxpr")
    repeats = eqn.params["length"] if name == "scan" else 1
    for value in eqn.params.values():
      for sub in value if isinstance(value, tuple | list) else (value,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          total += repeats * jaxpr_dot_flops(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          total += repeats * jaxpr_dot_flops(sub)
  return total


def traced_flops(config: MobileBertConfig, case: str, *, grad: bool = False) -> tuple[int, int]:
  """(dot FLOPs of the case's forward or gradient jaxpr, sequences in its batch)."""
  model_class, kwargs, head, _, _ = CASES[case]
  model = (
    MobileBertModel(config, add_pooling_layer=False) if head == "none" else model_class(config)
  )
  multiple_choice = model_class is MobileBertForMultipleChoice
  shape = (BATCH, CHOICES, LENGTH) if multiple_choice else (BATCH, LENGTH)
  inputs = {"input_ids": jax.ShapeDtypeStruct(shape, jnp.int32)}
  kwargs = dict(kwargs)
  if kwargs.pop("masked_positions", False):
    inputs["masked_positions"] = jax.ShapeDtypeStruct((BATCH, PREDICTIONS), jnp.int32)

  def forward(params, inputs):
    outputs = model.apply({"params": params}, **inputs, **kwargs)
    return sum(jnp.sum(x) for x in jax.tree.leaves(outputs))

  fn = jax.grad(forward) if grad else forward
  jaxpr = jax.make_jaxpr(fn)(abstract_params(model), inputs)
  return jaxpr_dot_flops(jaxpr.jaxpr), math.prod(shape[:-1])


def analytic(config: MobileBertConfig, case: str, fn=flops.forward_flops) -> int:
  _, _, head, masked, num_blocks = CASES[case]
  return fn(config, LENGTH, head=head, masked_positions=masked, num_blocks=num_blocks)


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_count_equals_the_jaxpr(config_name, case, scan):
  config = CONFIGS[config_name].replace(scan_layers=scan)
  traced, sequences = traced_flops(config, case)
  assert traced == sequences * analytic(config, case)


@pytest.mark.parametrize(
  ("scan", "policy"), [(False, "full"), (True, "full"), (True, "dots")], ids=str
)
def test_remat_does_not_change_the_forward_count(scan, policy):
  config = CONFIGS["student"].replace(scan_layers=scan, remat_policy=policy)
  traced, sequences = traced_flops(config, "pretraining_masked_2_blocks")
  assert traced == sequences * analytic(config, "pretraining_masked_2_blocks")


@pytest.mark.parametrize("scan", [False, True], ids=["unrolled", "scanned"])
@pytest.mark.parametrize(
  ("config_name", "case"),
  [
    ("student", "pretraining_masked_2_blocks"),
    ("student", "qa"),
    ("tiny", "mlm"),
    ("teacher", "classification"),
    ("bert", "token_classification"),
    ("bert_projected", "multiple_choice"),
  ],
)
def test_train_step_is_three_forwards_exactly(config_name, case, scan):
  # Every product's operands depend on a parameter, so the gradient computes both transposes.
  config = CONFIGS[config_name].replace(scan_layers=scan)
  traced, sequences = traced_flops(config, case, grad=True)
  assert traced == sequences * analytic(config, case, flops.train_step_flops)


def test_distillation_step_is_teacher_forward_plus_student_step():
  student, teacher = CONFIGS["student"], CONFIGS["teacher"]
  total = flops.distillation_step_flops(
    student, teacher, LENGTH, head="pretraining", masked_positions=PREDICTIONS, num_blocks=2
  )
  assert total == analytic(teacher, "pretraining_masked_2_blocks") + analytic(
    student, "pretraining_masked_2_blocks", flops.train_step_flops
  )
  layerwise = flops.distillation_step_flops(student, teacher, LENGTH, num_blocks=2)
  assert layerwise == analytic(teacher, "encoder_2_blocks") + analytic(
    student, "encoder_2_blocks", flops.train_step_flops
  )
  # A teacher head without MLM ignores the student's masked positions.
  assert flops.distillation_step_flops(
    student, teacher, LENGTH, head="mlm", teacher_head="none", masked_positions=PREDICTIONS
  ) == flops.forward_flops(teacher, LENGTH) + flops.train_step_flops(
    student, LENGTH, head="mlm", masked_positions=PREDICTIONS
  )


def test_head_of_every_model_class():
  assert {flops.head_of(case[0]) for name, case in CASES.items() if case[2] != "none"} == set(
    flops.HEADS
  ) - {"none"}


def test_bad_arguments_are_refused():
  config = CONFIGS["student"]
  with pytest.raises(ValueError, match="unknown head"):
    flops.forward_flops(config, LENGTH, head="ner")
  with pytest.raises(ValueError, match="masked_positions"):
    flops.forward_flops(config, LENGTH, head="qa", masked_positions=3)
  with pytest.raises(ValueError, match="num_blocks"):
    flops.forward_flops(config, LENGTH, num_blocks=4)


# ----------------------------------------------------------------------------------------------
# The released architectures (pure arithmetic: no parameters)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 128, 384, 512])
def test_released_student_matches_the_per_token_formula(length):
  config = MobileBertConfig.from_preset("mobilebert-uncased")
  per_token = 2 * (24 * (835_584 + 256 * length) + 196_608)
  assert flops.forward_flops(config, length) == length * per_token


def test_released_numbers():
  student = MobileBertConfig.from_preset("mobilebert-uncased")
  # 8 × 128 tokens, heads excluded: 43.08 GFLOP forward, 3× that for a train step.
  assert 8 * flops.forward_flops(student, 128) == 43_083_890_688
  assert 8 * flops.train_step_flops(student, 128) == 3 * 43_083_890_688
  # The paper's Table 4 (5.7 G; TINY 3.1 G; BERT-base 22.5 G per 128-token sequence).
  assert flops.forward_flops(student, 128) / 1e9 == pytest.approx(5.39, abs=0.005)
  tiny = MobileBertConfig.from_preset("mobilebert-tiny")
  assert flops.forward_flops(tiny, 128) / 1e9 == pytest.approx(3.07, abs=0.005)
  bert = MobileBertConfig.from_preset("bert-base-uncased")
  assert flops.forward_flops(bert, 128) / 1e9 == pytest.approx(22.35, abs=0.005)
  # The teacher: per token 2·(24·(12,058,624 + 2048·T) + 196,608).
  teacher = MobileBertConfig.from_preset("ibbert-large")
  assert flops.forward_flops(teacher, 128) == 128 * 2 * (24 * (12_058_624 + 2048 * 128) + 196_608)
  # The MLM head over all 128 positions of the released model costs 3/4 of its encoder again;
  # over 20 masked positions an eighth of that.
  mlm_per_position = 2 * (512 * 512 + 512 * 30522)
  assert flops.forward_flops(student, 128, head="mlm") == (
    flops.forward_flops(student, 128) + 128 * mlm_per_position
  )
  assert flops.forward_flops(student, 128, head="pretraining", masked_positions=20) == (
    flops.forward_flops(student, 128) + 20 * mlm_per_position + 2 * 512 * 2
  )


# ----------------------------------------------------------------------------------------------
# Peaks
# ----------------------------------------------------------------------------------------------


def fake_device(kind: str, platform: str = "gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize(
  ("kind", "bf16", "f32"),
  [
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5e", 197e12, 197e12),
    ("TPU v5", 459e12, 459e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v6 lite", 918e12, 918e12),
    ("NVIDIA A100-SXM4-40GB", 312e12, 156e12),
    ("NVIDIA A100 80GB PCIe", 312e12, 156e12),
    ("NVIDIA H100 80GB HBM3", 989.5e12, 494.5e12),
    ("NVIDIA H100 PCIe", 756.5e12, 378e12),
    ("NVIDIA H100 NVL", 835.5e12, 417.5e12),
    ("NVIDIA H200", 989.5e12, 494.5e12),
    ("NVIDIA H200 NVL", 835.5e12, 417.5e12),
    ("TPU v4 lite", None, None),  # the inference chip, not a v4
    ("NVIDIA GeForce RTX 4090", None, None),
  ],
)
def test_peak_table(kind, bf16, f32):
  platform = "tpu" if kind.startswith("TPU") else "gpu"
  device = fake_device(kind, platform)
  assert flops.device_peak_flops(device, "bfloat16") == bf16
  assert flops.device_peak_flops(device, "float16") == bf16
  assert flops.device_peak_flops(device, "float32") == f32


def test_full_precision_float32_uses_the_fp32_figure():
  with jax.default_matmul_precision("highest"):
    assert flops.device_peak_flops(fake_device("NVIDIA H100 80GB HBM3"), "float32") == 67e12
    assert flops.device_peak_flops(fake_device("TPU v5 lite", "tpu"), "float32") is None
  with pytest.raises(ValueError, match="dtype"):
    flops.device_peak_flops(fake_device("TPU v4", "tpu"), "int8")


def test_cpu_peak_is_measured_once_and_shared_by_the_fake_devices():
  measured = flops.measured_cpu_matmul_flops()
  assert measured > 1e8  # any CPU of this century does 0.1 GFLOP/s
  assert flops.measured_cpu_matmul_flops() == measured  # cached
  cpus = jax.local_devices(backend="cpu")
  assert flops.device_peak_flops(cpus[0]) == measured / len(cpus)
  assert flops.peak_flops(cpus) == pytest.approx(measured)
  assert flops.peak_flops([cpus[0], fake_device("NVIDIA GeForce RTX 4090")]) is None
