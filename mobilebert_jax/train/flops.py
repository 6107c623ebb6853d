"""Model FLOPs of a configuration, and the peak FLOP rate of the devices, for throughput and MFU.

**What is counted.** Two FLOPs per multiply-add of every matrix product the model runs: each
`Dense` (the embedding projection, the bottlenecks, Q/K/V and attention output, the FFNs, the
pooler and the heads), attention's two batched products QKᵀ and PV over all T×T query/key pairs
(padded keys included: they are computed, then masked), and the MLM head's product with the
[vocab, hidden] output matrix. That is exactly the `dot_general` work of the model's jaxpr
(`tests/flops_test.py` counts it and checks equality for every variant and head).

**What is left out**: norms (NoNorm, LayerNorm), softmax, activations, dropout, bias and residual
additions, the attention scale and mask, and the embedding gathers and trigram concatenation.
Together they are a few percent of the matmul work (O(T·H) per block against O(T·H·b)), and
they are what the usual "model FLOPs" of MFU (PaLM, appendix B) leaves out too.

**Cross-check** (docs/model.md §block). The released student, per token and per block:
input and shared bottlenecks 2·H·b, Q and K 2·b·b, V H·b, attention output b·b, four FFNs
4·2·b·I and the output bottleneck b·H make 835,584 multiply-adds, plus 2·T·b = 256·T for QKᵀ and
PV; the trigram projection adds 3E·H = 196,608 once. So a forward pass costs
2·(24·(835,584 + 256·T) + 196,608) FLOPs per token: 42,074,112 at T = 128, i.e.
**43.08 GFLOP for a batch of 8×128 without heads** (`forward_flops(released, 128) * 8`), and
129.25 GFLOP for its train step. Per 128-token sequence that is 5.39 GFLOP, against the paper's
~5.7 G (Table 4; the paper does not say what its count includes, and its MobileBERT_TINY 3.1 G and
BERT-base 22.5 G agree with our 3.07 G and 22.35 G, so the extra ~0.3 G of the student is
element-wise work or a different attention input we cannot pin down). Per 8×128 forward without
heads: MobileBERT_TINY 24.56 GFLOP, the IB-BERT teacher 605.99 GFLOP.

**Train step = 3 × forward.** The backward pass of a product Y = X·W computes dX = dY·Wᵀ and
dW = Xᵀ·dY, two products of the forward's size, so a step costs the forward plus twice it; it is
exact here because every product's operands depend on a parameter (the first one's input comes
from the word table; `tests/flops_test.py` checks it on the gradient's jaxpr). Rematerialisation
recomputes forward work on top of that: model FLOPs (and so MFU) do not count it, by definition.

**Peaks.** `device_peak_flops` gives the dense (no sparsity) datasheet peak of a TPU or NVIDIA
GPU for the matmul dtype, or on CPU a measured float32 matmul rate; `peak_flops` sums it over the
devices a run uses. MFU = model FLOPs per second / that sum.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from absl import logging

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel, resolve_num_blocks
from mobilebert_jax.model.models import (
  MobileBertForMaskedLM,
  MobileBertForMultipleChoice,
  MobileBertForNextSentencePrediction,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  MobileBertForTokenClassification,
)

# What follows the encoder: "none" is embeddings and blocks only; "pooler" adds the pooler
# (`MobileBertModel`); the others are the heads of the model classes (see `head_of`).
HEADS = (
  "none",
  "pooler",
  "mlm",
  "nsp",
  "pretraining",
  "classification",
  "multiple_choice",
  "token_classification",
  "qa",
)
_HEAD_OF_CLASS = {
  MobileBertModel: "pooler",
  MobileBertForPreTraining: "pretraining",
  MobileBertForMaskedLM: "mlm",
  MobileBertForNextSentencePrediction: "nsp",
  MobileBertForSequenceClassification: "classification",
  MobileBertForMultipleChoice: "multiple_choice",
  MobileBertForTokenClassification: "token_classification",
  MobileBertForQuestionAnswering: "qa",
}
# Heads that read the pooled first token (and so run the pooler dense, if the config has one).
_POOLED_HEADS = ("pooler", "nsp", "pretraining", "classification", "multiple_choice")


# ----------------------------------------------------------------------------------------------
# Model FLOPs
# ----------------------------------------------------------------------------------------------


def head_of(model_class: type) -> str:
  """The `head` argument of `forward_flops` that matches a model class.

  Args:
    model_class: one of the eight model classes (`mobilebert_jax.model.models`).

  Returns:
    A name from `HEADS`.

  Raises:
    KeyError: not a MobileBERT model class.
  """
  return _HEAD_OF_CLASS[model_class]


def embedding_flops(config: MobileBertConfig, seq_len: int) -> int:
  """FLOPs of the embeddings of one sequence: the (trigram) projection, if the config has one.

  Args:
    config: the architecture.
    seq_len: T, the padded sequence length.

  Returns:
    2·T·(3E or E)·H, or 0 without `embedding_transformation`.
  """
  if not config.has_embedding_projection:
    return 0
  return 2 * seq_len * config.embedding_input_size * config.hidden_size


def block_flops(config: MobileBertConfig, seq_len: int) -> int:
  """FLOPs of one block on one sequence (docs/model.md §block, §attention-inputs).

  Args:
    config: the architecture.
    seq_len: T, the padded sequence length.

  Returns:
    2·T·(multiply-adds per token), all products of the block.
  """
  hidden, width = config.hidden_size, config.true_hidden_size  # H, and b (H without bottleneck)
  per_token = 0
  if config.use_bottleneck:
    per_token += hidden * width  # input bottleneck, H -> b
    if config.uses_shared_bottleneck:
      per_token += hidden * width  # shared key/query bottleneck, H -> b
  # Q and K project from `attention_input_size`, V from `value_input_size`, each onto A·d = b.
  per_token += 2 * config.attention_input_size * width + config.value_input_size * width
  per_token += 2 * seq_len * width  # QKᵀ and PV: each query meets T keys over A·d = b features
  per_token += width * width  # attention output [A, d] -> b
  per_token += config.num_feedforward_networks * 2 * width * config.intermediate_size
  if config.use_bottleneck:
    per_token += width * hidden  # output bottleneck, b -> H
  return 2 * seq_len * per_token


def head_flops(
  config: MobileBertConfig, seq_len: int, head: str, masked_positions: int | None = None
) -> int:
  """FLOPs after the last block for one sequence: pooler and task head.

  Args:
    config: the architecture (`num_labels` sizes the classifiers).
    seq_len: T, the padded sequence length.
    head: a name from `HEADS`.
    masked_positions: P, the number of masked positions the MLM head predicts per sequence
      (the second axis of the model's `masked_positions` [B, P]); None: all T positions.

  Returns:
    The FLOPs of the pooler dense (with `classifier_activation`, on the first position only)
    and of the head.

  Raises:
    ValueError: an unknown head, or `masked_positions` for a head without MLM.
  """
  if head not in HEADS:
    raise ValueError(f"unknown head {head!r}; known: {HEADS}")
  if masked_positions is not None and head not in ("mlm", "pretraining"):
    raise ValueError(f"masked_positions applies to the MLM heads, not to head={head!r}")
  hidden = config.hidden_size
  flops = 0
  if head in _POOLED_HEADS and config.classifier_activation:
    flops += 2 * hidden * hidden
  if head in ("mlm", "pretraining"):
    positions = seq_len if masked_positions is None else masked_positions
    # Transform dense H -> H, then the product with [word table | extra weights], [V, H].
    flops += 2 * positions * (hidden * hidden + hidden * config.vocab_size)
  if head in ("nsp", "pretraining"):
    flops += 2 * hidden * 2
  if head == "classification":
    flops += 2 * hidden * config.num_labels
  if head == "multiple_choice":
    flops += 2 * hidden  # one score per sequence (per choice)
  if head == "token_classification":
    flops += 2 * seq_len * hidden * config.num_labels
  if head == "qa":
    flops += 2 * seq_len * hidden * 2  # start and end logits
  return flops


def forward_flops(
  config: MobileBertConfig,
  seq_len: int,
  *,
  head: str = "none",
  masked_positions: int | None = None,
  num_blocks: int | None = None,
) -> int:
  """Model FLOPs of a forward pass over one sequence of `seq_len` tokens.

  Args:
    config: the architecture.
    seq_len: T, the padded sequence length (padding costs what real tokens cost).
    head: what follows the encoder, a name from `HEADS` ("none": embeddings and blocks only);
      `head_of(model_class)` gives the one of a model class. For "multiple_choice" the count
      is per choice: multiply by the number of choices for an example.
    masked_positions: P, the MLM head's predictions per sequence; None: all T positions.
    num_blocks: run only the first `num_blocks` blocks (as the model's `num_blocks`); None: all.

  Returns:
    FLOPs (2 per multiply-add), an int.

  Raises:
    ValueError: a bad head, `masked_positions` or `num_blocks`.
  """
  depth = resolve_num_blocks(config, num_blocks)
  return (
    embedding_flops(config, seq_len)
    + depth * block_flops(config, seq_len)
    + head_flops(config, seq_len, head, masked_positions)
  )


def train_step_flops(
  config: MobileBertConfig,
  seq_len: int,
  *,
  head: str = "none",
  masked_positions: int | None = None,
  num_blocks: int | None = None,
) -> int:
  """Model FLOPs of a train step (forward and backward) per sequence: 3 × `forward_flops`.

  The backward pass computes two products of the forward's size for each forward product (the
  input gradient and the weight gradient), see the module docstring. Arguments as for
  `forward_flops`.
  """
  return 3 * forward_flops(
    config, seq_len, head=head, masked_positions=masked_positions, num_blocks=num_blocks
  )


def distillation_step_flops(
  student_config: MobileBertConfig,
  teacher_config: MobileBertConfig,
  seq_len: int,
  *,
  head: str = "none",
  teacher_head: str | None = None,
  masked_positions: int | None = None,
  num_blocks: int | None = None,
) -> int:
  """Model FLOPs of a distillation step per sequence: teacher forward + student train step.

  The teacher only runs forward (its parameters are frozen); the transfer losses (feature-map
  MSE, attention KL, logit KD) are element-wise and not counted. Layer-wise transfer runs
  `head="none"` with `num_blocks`; pretraining distillation `head="pretraining"`.

  Args:
    student_config: the student's architecture.
    teacher_config: the teacher's architecture.
    seq_len: T, the padded sequence length.
    head: the student's head (a name from `HEADS`).
    teacher_head: the teacher's head; None: the same as the student's.
    masked_positions: P for the MLM heads of both; None: all T positions.
    num_blocks: blocks run by both (progressive transfer trains stage k with k + 1); None: all.

  Returns:
    FLOPs, an int.
  """
  teacher_head = head if teacher_head is None else teacher_head
  teacher_masked = masked_positions if teacher_head in ("mlm", "pretraining") else None
  teacher = forward_flops(
    teacher_config,
    seq_len,
    head=teacher_head,
    masked_positions=teacher_masked,
    num_blocks=num_blocks,
  )
  student = train_step_flops(
    student_config, seq_len, head=head, masked_positions=masked_positions, num_blocks=num_blocks
  )
  return teacher + student


# ----------------------------------------------------------------------------------------------
# Device peaks
# ----------------------------------------------------------------------------------------------

# Dense (no sparsity) peak FLOP/s of one JAX device, from the vendors' datasheets, as
# (bfloat16/float16 matmuls, float32 matmuls at JAX's default precision, float32 at "highest").
# TPUs run a float32 matmul at default precision as one bfloat16 pass on the MXU, so its bound is
# the bfloat16 peak; they publish no figure for full-precision passes (None: no MFU then).
# NVIDIA GPUs from Ampere on run float32 matmuls as TF32 tensor-core products by default.
_TPU_PEAKS = {
  # Cloud TPU v4: 275 TFLOPS bf16 per chip; one JAX device per chip (megacore).
  "tpu v4": (275e12, 275e12, None),
  # Cloud TPU v5e ("TPU v5 lite"): 197 TFLOPS bf16 per chip.
  "tpu v5 lite": (197e12, 197e12, None),
  "tpu v5e": (197e12, 197e12, None),
  # Cloud TPU v5p ("TPU v5"): 459 TFLOPS bf16 per chip; one JAX device per chip (megacore).
  "tpu v5": (459e12, 459e12, None),
  "tpu v5p": (459e12, 459e12, None),
  # Cloud TPU v6e / Trillium ("TPU v6 lite"): 918 TFLOPS bf16 per chip.
  "tpu v6 lite": (918e12, 918e12, None),
  "tpu v6e": (918e12, 918e12, None),
}
# Matched in order on the lower-cased `device_kind` (e.g. "NVIDIA H100 80GB HBM3" is the SXM
# part, "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-40GB").
_GPU_PEAKS = (
  # A100 datasheet (SXM and PCIe alike): BF16 tensor core 312 TF, TF32 156 TF, FP32 19.5 TF
  # (the datasheet's 624 / 312 TF are with sparsity).
  (("a100",), (312e12, 156e12, 19.5e12)),
  # H100 datasheet, PCIe: BF16 1,513 TF and TF32 756 TF with sparsity (halved here), FP32 51 TF.
  (("h100", "pcie"), (756.5e12, 378e12, 51e12)),
  # H100 NVL: BF16 1,671 TF and TF32 835 TF with sparsity (halved), FP32 60 TF.
  (("h100", "nvl"), (835.5e12, 417.5e12, 60e12)),
  # H100 SXM: BF16 1,979 TF and TF32 989 TF with sparsity (halved), FP32 67 TF.
  (("h100",), (989.5e12, 494.5e12, 67e12)),
  # H200 datasheet, NVL: as the H100 NVL (1,671 / 835 TF with sparsity, FP32 60 TF).
  (("h200", "nvl"), (835.5e12, 417.5e12, 60e12)),
  # H200 SXM: as the H100 SXM (1,979 / 989 TF with sparsity, FP32 67 TF). Also matches GH200,
  # whose GPU has the same figures.
  (("h200",), (989.5e12, 494.5e12, 67e12)),
)
_CPU_MATMUL_SIZE = 1024
_CPU_MATMUL_REPEATS = 5


def device_peak_flops(device: jax.Device | None = None, dtype: str = "bfloat16") -> float | None:
  """Peak matmul FLOP/s of one device for a compute dtype.

  Args:
    device: a JAX device; None: `jax.devices()[0]`.
    dtype: the model's compute dtype, "bfloat16", "float16" or "float32".

  Returns:
    FLOP/s: the datasheet's dense peak for known TPUs and NVIDIA GPUs (see the tables above); on
    CPU the measured float32 matmul rate (`measured_cpu_matmul_flops`) divided by the process's
    CPU devices, since fake CPU devices (`--xla_force_host_platform_device_count`) share the one
    thread pool the measurement used. None for an unknown accelerator.

  Raises:
    ValueError: an unknown dtype.
  """
  if dtype not in ("bfloat16", "float16", "float32"):
    raise ValueError(f"dtype must be bfloat16, float16 or float32, got {dtype!r}")
  device = jax.devices()[0] if device is None else device
  if device.platform == "cpu":
    return measured_cpu_matmul_flops() / len(jax.local_devices(backend="cpu"))
  peaks = _known_peaks(device.device_kind)
  if peaks is None:
    return None
  if dtype != "float32":
    return peaks[0]
  precision = str(jax.config.jax_default_matmul_precision or "default").lower()
  return peaks[2] if precision in ("highest", "float32") else peaks[1]


def peak_flops(
  devices: Sequence[jax.Device] | None = None, dtype: str = "bfloat16"
) -> float | None:
  """Peak matmul FLOP/s of several devices together (the MFU denominator).

  Args:
    devices: the devices a run computes on; None: `jax.devices()` (all processes').
    dtype: the model's compute dtype.

  Returns:
    The sum of `device_peak_flops` over the devices, or None if one of them is unknown.
  """
  devices = jax.devices() if devices is None else devices
  peaks = [device_peak_flops(d, dtype) for d in devices]
  return None if any(p is None for p in peaks) else float(sum(peaks))


@functools.cache
def measured_cpu_matmul_flops() -> float:
  """The float32 matmul rate of this host's CPU backend, measured once per process.

  Times a jitted 1024×1024 `x @ x` on the first CPU device, best of a few runs after compiling.
  It measures the threads XLA's CPU backend uses in this process (all cores by default, fewer if
  the process is limited), so it is the ceiling a CPU run can reach, not the chip's datasheet.

  Returns:
    FLOP/s (2·n³ per product).
  """
  size = _CPU_MATMUL_SIZE
  cpu = jax.local_devices(backend="cpu")[0]
  x = jax.device_put(jnp.full((size, size), 1.0 / size, jnp.float32), cpu)
  matmul = jax.jit(lambda a: a @ a)
  matmul(x).block_until_ready()  # compile
  best = float("inf")
  for _ in range(_CPU_MATMUL_REPEATS):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  rate = 2 * size**3 / max(best, 1e-9)
  logging.info(
    "CPU peak for MFU: measured %.4g GFLOP/s (float32 %dx%d matmul, best of %d)",
    rate / 1e9,
    size,
    size,
    _CPU_MATMUL_REPEATS,
  )
  return rate


def _known_peaks(device_kind: str) -> tuple[float, float, float | None] | None:
  kind = device_kind.strip().lower()
  if kind in _TPU_PEAKS:
    return _TPU_PEAKS[kind]
  for words, peaks in _GPU_PEAKS:
    if all(word in kind for word in words):
      return peaks
  return None
