"""Quantization-aware training (QAT) as the original MobileBERT did it: fake quantization in Flax.

The recipe (docs/quantization.md, spec §10, google-research `mobilebert/modeling.py` with
`use_quantized_training`) simulates 8-bit TFLite inference during fine-tuning:

- activations: asymmetric 8-bit over [min, max] ranges kept as exponential moving averages of the
  batch's min and max (decay 0.999, no zero-debiasing, initialised to [-6, 6], always containing
  0), updated in training and frozen in evaluation. Each range is a pair of float32 scalars in
  the `quant_ranges` collection (`RANGES`), next to the variable it quantizes;
- weights: symmetric narrow-range 8-bit ([-127, 127] · absmax / 127) from their current values,
  one scale per kernel (`quantization_per_channel=True`, beyond the original: one per output
  channel, as TFLite's converter quantizes fully connected kernels);
- where: the input of every `Dense` (its kernel as a weight), NoNorm's input, γ, β and product
  (γ and β as activations, as the original), the raw attention scores, the masked scores twice
  (zeroed, then filled) before clipping them to [-6, 60], and the attention context.

With `quantization_points="tflite"` (beyond the original) every `Dense` output is also
fake-quantized on its own moving-average range (a task head's logits on one that stops at
`TASK_LOGIT_FLOOR`), the attention probabilities on TFLite's fixed int8 softmax grid, and the
attention logits quantized once, after their [-6, 60] clip (on its own moving-average range),
in place of the original's two ranges before the clip: the int8 tensors of a full-integer
TFLite model where the original recipe simulates none or others
(experiments/2026-12-06_int8_accuracy measured what they cost).

Gradients are straight-through: 1 where the input lies inside the (nudged) range, 0 outside,
exactly the gradient of TF's `FakeQuantWithMinMaxVars` with respect to its input; the ranges get
no gradient (TF1's range variables were not trainable).

Why hand-written rather than Qwix: Qwix's QAT calibrates with a simple moving average, not an EMA
with decay 0.999 starting from [-6, 6]; it does not quantize NoNorm's γ/β/product or clip
attention scores; and its ODML/LiteRT conversion does not load in TF 2.20
(`/work/shared/reference/export_anchors.md` §3.7). The arithmetic below is a transcription of
`fake_quant_with_min_max_vars` (range nudging so that 0 is exactly representable, round half
up), which `tests/quantization_test.py` checks against TF's own op.

Export (`MobileBertConfig.quantization_export`): TFLite's full-integer converter cannot take a
rounding graph, and it picks every tensor's range by calibration. In the export form each
activation fake quantization becomes a clip to its learned, nudged range, so the converter's
calibration sees at most the learned ranges; weights are left to the converter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# The Flax collection of the activation ranges.
RANGES = "quant_ranges"
# Requesting this (always empty) collection as mutable switches every quantizer to calibration:
# the float values pass unchanged and each range widens to hold them (`calibrate_ranges`).
CALIBRATION = "quant_calibration"
NUM_BITS = 8
EMA_DECAY = 0.999
INIT_MIN = -6.0
INIT_MAX = 6.0
# The original clips the masked attention logits to this range before the softmax.
ATTENTION_LOGIT_RANGE = (-6.0, 60.0)
# The lowest value a task head's logits are quantized to (`quantization_points="tflite"`). A
# float QA model pushes losing positions' logits without bound (the SQuAD demo's question
# tokens reach -1,000, its answers +26): a range that follows them leaves int8 steps of
# several logits where answers are chosen among near ties, and the int8 file then picks other
# answers than its QAT model (experiments/2026-12-06_int8_accuracy). Clamping at -32 leaves
# every argmax whose winning logit is above -32 as it was (the demo's answers: +10 to +26),
# and a clamped logit of a winner >= 0 keeps a softmax weight under e^-32 of the winner's.
TASK_LOGIT_FLOOR = -32.0
# TFLite's int8 softmax output: scale 1/256, zero point -128, so [0, 255/256].
SOFTMAX_OUTPUT_MAX = 255.0 / 256.0


# ----------------------------------------------------------------------------------------------
# The arithmetic of TF's FakeQuantWithMinMaxVars
# ----------------------------------------------------------------------------------------------


def nudged_range(
  minimum: Array,
  maximum: Array,
  num_bits: int = NUM_BITS,
  narrow_range: bool = False,
  *,
  exact: bool = True,
) -> tuple[Array, Array, Array, Array]:
  """The grid TF's fake quantization uses for a range: nudged so that 0 is a grid point.

  Args:
    minimum: float32 scalar (or array of per-channel ranges), the range's lower end.
    maximum: float32 scalar (or array like `minimum`), the range's upper end.
    num_bits: bits of the integer type.
    narrow_range: use the integers [1, 2^bits - 1] instead of [0, 2^bits - 1].
    exact: keep XLA from rewriting the divisions (bit-exact with TF's kernel). False for the
      export form: TFLite's converter does not take the optimization barrier this needs, and a
      clip bound one ulp off does not matter.

  Returns:
    (nudged_min, nudged_max, scale, inverse_scale), float32, shaped like the range. The
    inverse is computed from the range, not as 1/scale, as TF does.
  """
  # XLA rewrites a division by a constant into a multiplication by its reciprocal, which rounds
  # differently from TF's kernel (e.g. 12/255 != 12 * (1/255) in float32); the barrier hides the
  # constants and constant ranges from that rewrite.
  # Per channel the integer bounds are broadcast to the ranges' shape too: XLA also rewrites an
  # array divided by a broadcast scalar into a multiplication by its reciprocal.
  minimum = jnp.asarray(minimum, jnp.float32)
  maximum = jnp.asarray(maximum, jnp.float32)
  shape = jnp.broadcast_shapes(minimum.shape, maximum.shape)
  values = (
    jnp.full(shape, 1 if narrow_range else 0, jnp.float32),
    jnp.full(shape, 2**num_bits - 1, jnp.float32),
    jnp.broadcast_to(minimum, shape),
    jnp.broadcast_to(maximum, shape),
  )
  if exact:
    values = jax.lax.optimization_barrier(values)
  quant_min, quant_max, minimum, maximum = values
  scale = (maximum - minimum) / (quant_max - quant_min)
  inverse_scale = (quant_max - quant_min) / (maximum - minimum)
  zero_point_from_min = quant_min - minimum / scale
  # std::round (half away from zero) of a value that is >= 0 wherever it is not clipped.
  nudged_zero_point = jnp.clip(
    jnp.floor(zero_point_from_min + np.float32(0.5)), quant_min, quant_max
  )
  nudged_min = (quant_min - nudged_zero_point) * scale
  nudged_max = (quant_max - nudged_zero_point) * scale
  return nudged_min, nudged_max, scale, inverse_scale


@jax.custom_vjp
def _fake_quant(
  x: Array, nudged_min: Array, nudged_max: Array, scale: Array, inverse_scale: Array
) -> Array:
  # The operation order of TF's kernel, so that ties round the same way.
  quant_zero = jnp.floor(-nudged_min * inverse_scale + np.float32(0.5))
  shifted = jnp.clip(x, nudged_min, nudged_max) - nudged_min
  out = jnp.floor(shifted / scale - quant_zero + np.float32(0.5)) * scale
  # TF returns zeros for the empty range [0, 0] (e.g. an all-zero weight).
  return jnp.where(scale == 0, jnp.zeros_like(out), out)


def _fake_quant_fwd(x, nudged_min, nudged_max, scale, inverse_scale):
  out = _fake_quant(x, nudged_min, nudged_max, scale, inverse_scale)
  return out, (x, nudged_min, nudged_max, scale, inverse_scale)


def _fake_quant_bwd(residuals, grad):
  x, nudged_min, nudged_max, scale, inverse_scale = residuals
  inside = (x >= nudged_min) & (x <= nudged_max)
  range_grads = tuple(jnp.zeros_like(v) for v in (nudged_min, nudged_max, scale, inverse_scale))
  return (jnp.where(inside, grad, 0).astype(grad.dtype), *range_grads)


_fake_quant.defvjp(_fake_quant_fwd, _fake_quant_bwd)


def fake_quant(
  x: Array,
  minimum: Array,
  maximum: Array,
  num_bits: int = NUM_BITS,
  narrow_range: bool = False,
) -> Array:
  """Quantizes and dequantizes `x` on the grid of [minimum, maximum], as TF's op does.

  Values are clamped to the nudged range and rounded half up to the nearest grid point. The
  gradient with respect to `x` passes straight through inside the nudged range and is 0 outside;
  the range gets no gradient.

  Args:
    x: any-shaped input (computed in float32, returned in x's dtype).
    minimum: float32 scalar, the range's lower end (<= 0 for a meaningful grid); or an array
      broadcastable against `x`, one range per channel.
    maximum: float32 scalar or array like `minimum`, the range's upper end.
    num_bits: bits of the integer type.
    narrow_range: use [1, 2^bits - 1] (symmetric weights) instead of [0, 2^bits - 1].

  Returns:
    Array like `x`.
  """
  grid = nudged_range(minimum, maximum, num_bits, narrow_range)
  # Hidden from constant folding for the same reason as in `nudged_range`.
  grid = jax.lax.optimization_barrier(tuple(jax.lax.stop_gradient(v) for v in grid))
  return _fake_quant(x.astype(jnp.float32), *grid).astype(x.dtype)


def quantize_weight(
  w: Array, num_bits: int = NUM_BITS, reduce_axes: tuple[int, ...] | None = None
) -> Array:
  """Symmetric narrow-range fake quantization of a weight from its current values.

  The range is [-absmax, absmax] of `w` (the original's "last value" symmetric quantizer), so
  the integer grid is [-127, 127] · absmax / 127 with zero exactly representable.

  Args:
    w: weight of any shape.
    num_bits: bits of the integer type.
    reduce_axes: the axes each absmax is taken over. None: the whole weight, one scale (the
      original). A kernel's input (contracting) axes: one scale per output channel, as TFLite's
      converter quantizes fully connected kernels (`FakeQuantWithMinMaxVarsPerChannel`'s grid).

  Returns:
    Array like `w`; the gradient passes straight through.
  """
  absmax = jax.lax.stop_gradient(
    jnp.max(jnp.abs(w.astype(jnp.float32)), axis=reduce_axes, keepdims=reduce_axes is not None)
  )
  return fake_quant(w, -absmax, absmax, num_bits, narrow_range=True)


def ema_update(old: Array, batch_value: Array, decay: float = EMA_DECAY) -> Array:
  """One step of the moving average, as TF's `assign_moving_average(zero_debias=False)`."""
  return old - (old - batch_value) * np.float32(1.0 - decay)


# ----------------------------------------------------------------------------------------------
# Flax modules
# ----------------------------------------------------------------------------------------------


class ActivationQuantizer(nn.Module):
  """Fake quantization of an activation with a moving-average range in the `RANGES` collection.

  Training (the collection is mutable and the module is not initialising): the range moves
  towards [min(batch min, 0), max(batch max, 0)] by one EMA step and `x` is quantized on the
  *updated* range, as TF1's `MovingAvgQuantize`. Otherwise the stored range is used unchanged.
  With `export` the quantization is replaced by a clip to the nudged range (see the module
  docstring). Calibration (`CALIBRATION` mutable): `x` passes unchanged, and the range, when
  mutable, widens to hold it.

  Attributes:
    export: clip instead of quantizing (the form handed to TFLite's converter).
    floor: the range never extends below this (None: no bound); values below it are clamped
      to the range's minimum like any other out-of-range value (`TASK_LOGIT_FLOOR`).
  """

  export: bool = False
  floor: float | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: any-shaped activation. Returns: the same shape and dtype."""
    minimum = self.variable(RANGES, "min", lambda: jnp.float32(INIT_MIN))
    maximum = self.variable(RANGES, "max", lambda: jnp.float32(INIT_MAX))
    if self.is_mutable_collection(CALIBRATION) and not self.is_initializing():
      if self.is_mutable_collection(RANGES):
        values = jax.lax.stop_gradient(x.astype(jnp.float32))
        minimum.value = self._floored(jnp.minimum(minimum.value, jnp.min(values)))
        maximum.value = jnp.maximum(maximum.value, jnp.max(values))
      return x
    if self.is_mutable_collection(RANGES) and not self.is_initializing():
      values = jax.lax.stop_gradient(x.astype(jnp.float32))
      minimum.value = ema_update(minimum.value, self._floored(jnp.minimum(jnp.min(values), 0.0)))
      maximum.value = ema_update(maximum.value, jnp.maximum(jnp.max(values), 0.0))
    if self.export:
      nudged_min, nudged_max, _, _ = nudged_range(minimum.value, maximum.value, exact=False)
      return jnp.clip(x.astype(jnp.float32), nudged_min, nudged_max).astype(x.dtype)
    return fake_quant(x, minimum.value, maximum.value)

  def _floored(self, value: Array) -> Array:
    return value if self.floor is None else jnp.maximum(value, np.float32(self.floor))


class FakeQuantDotGeneral(nn.Module):
  """`jax.lax.dot_general` with a fake-quantized input (moving-average range) and kernel.

  `layers.dense_dot_general` builds one inside every `Dense` of a quantization-aware model; its
  range lives at `<dense>/input_quant/{min,max}` in `RANGES`.

  Attributes:
    export: the export form (input clipped to its range, kernel left as is).
    per_channel: one weight scale per output channel (the kernel's non-contracting axes)
      instead of one per kernel.
  """

  export: bool = False
  per_channel: bool = False

  @nn.compact
  def __call__(
    self, lhs: Array, rhs: Array, dimension_numbers: Any, precision: Any = None, **kwargs: Any
  ) -> Array:
    """Same signature as `jax.lax.dot_general`; `lhs` is the activation, `rhs` the kernel."""
    lhs = ActivationQuantizer(self.export, name="input_quant")(lhs)
    if not self.export and not self.is_mutable_collection(CALIBRATION):
      (_, rhs_contracting), _ = dimension_numbers
      rhs = quantize_weight(rhs, reduce_axes=tuple(rhs_contracting) if self.per_channel else None)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, **kwargs)


def make_dot_general(export: bool, per_channel: bool = False) -> Callable[..., Array]:
  """A `FakeQuantDotGeneral` child of the calling `Dense` (call inside its compact scope)."""
  return FakeQuantDotGeneral(export, per_channel, name="fake_quant")


def no_norm(x: Array, scale: Array, bias: Array, export: bool) -> Array:
  """NoNorm with the original's fake quantization: q(q(x) · q(γ)) + q(β), all as activations.

  Call inside the NoNorm module's compact scope (it creates four `ActivationQuantizer`s).

  Args:
    x: [..., width] float32 input.
    scale: [width] float32 γ.
    bias: [width] float32 β.
    export: the export form.

  Returns:
    [..., width] float32.
  """
  x = ActivationQuantizer(export, name="input_quant")(x)
  bias = ActivationQuantizer(export, name="bias_quant")(bias)
  scale = ActivationQuantizer(export, name="scale_quant")(scale)
  product = ActivationQuantizer(export, name="product_quant")(x * scale)
  return product + bias


class AttentionScoreQuantizer(nn.Module):
  """The original's quantized attention logits: q(raw), scale, q(masked), q(filled), clip.

  With `tflite` the chain after the raw scores is what a full-integer TFLite file computes:
  the converter fuses the scaling, the fill and the clip into one int8 tensor whose range is
  the calibrated range of the clipped logits (within [-6, 60]), so the logits land directly on
  that grid (steps of at most 66/255) and the original's two moving-average ranges in between
  (often hundreds wide in a trained model, so steps of several logits) do not exist in the
  file. Here: one moving-average range on the clipped logits. Training on the coarser
  intermediate grids taught a model logits its int8 file did not reproduce
  (experiments/2026-12-06_int8_accuracy).

  Attributes:
    export: the export form.
    tflite: `quantization_points="tflite"`: the file's chain instead of the original's.
  """

  export: bool = False
  tflite: bool = False

  @nn.compact
  def __call__(self, raw_scores: Array, mask: Array, scale: float, fill: float) -> Array:
    """Turns Q·Kᵀ into the softmax's input.

    Args:
      raw_scores: [batch, heads, query, key] float32 Q·Kᵀ before scaling.
      mask: [batch, 1, 1, key] bool, True for keys that may be attended to.
      scale: 1/sqrt(head size).
      fill: the logit of masked keys (the original: -6).

    Returns:
      [batch, heads, query, key] float32 logits in [-6, 60].
    """
    scores = ActivationQuantizer(self.export, name="raw_quant")(raw_scores)
    scores = scores * np.float32(scale)
    low, high = ATTENTION_LOGIT_RANGE
    if self.tflite:
      scores = jnp.clip(
        jnp.where(mask, scores, np.float32(fill)), np.float32(low), np.float32(high)
      )
      return ActivationQuantizer(self.export, name="logits_quant")(scores)
    # The original multiplies by the 0/1 mask, quantizes, adds (1 - mask) * fill and quantizes.
    scores = ActivationQuantizer(self.export, name="masked_quant")(jnp.where(mask, scores, 0.0))
    scores = ActivationQuantizer(self.export, name="filled_quant")(
      jnp.where(mask, scores, np.float32(fill))
    )
    return jnp.clip(scores, np.float32(low), np.float32(high))


def quantize_probabilities(probs: Array, export: bool) -> Array:
  """Attention probabilities on TFLite's int8 softmax grid (`quantization_points="tflite"`).

  A full-integer TFLite softmax writes int8 with scale 1/256 and zero point -128, i.e. the
  values k/256 for k = 0..255; the fake quantization rounds to exactly that grid. The export
  form leaves the probabilities alone: the converter fixes that grid itself.

  Args:
    probs: [batch, heads, query, key] float32 probabilities.
    export: the export form.

  Returns:
    The same shape and dtype.
  """
  if export:
    return probs
  return fake_quant(probs, np.float32(0.0), np.float32(SOFTMAX_OUTPUT_MAX))


def quantize_context(context: Array, export: bool) -> Array:
  """Fake quantization of the attention context (call inside the attention's compact scope)."""
  return ActivationQuantizer(export, name="context_quant")(context)


# ----------------------------------------------------------------------------------------------
# Reading the learned ranges
# ----------------------------------------------------------------------------------------------


def calibrate_ranges(
  model: nn.Module, params: Any, ranges: Any, batches: Iterable[Mapping[str, Any]]
) -> Any:
  """Activation ranges from the float model: the min and max of every point over `batches`.

  Beyond the original, which starts every range at [-6, 6]: a float model's activations may
  reach far beyond that (±100 in the SQuAD demo's model), so its first QAT steps clip nearly
  everything and the run must first relearn what the float model knew. Starting from the
  ranges that post-training calibration finds (TFLite's min/max calibration: the float model,
  weights and activations unquantized) keeps the float model's function at step 0; the moving
  averages then take over as usual. The attention probabilities keep their fixed grid.

  A range with a `floor` (a task head's logits) is calibrated down to its floor only.

  Args:
    model: a quantization-aware model.
    params: its parameters.
    ranges: the `RANGES` collection (for its structure; the values are replaced).
    batches: model keyword inputs (`input_ids`, `attention_mask`, ...), one dict per batch.

  Returns:
    The `RANGES` collection: per point [min(0, smallest value), max(0, largest value)], the
    minimum no lower than the point's floor.

  Raises:
    ValueError: `batches` is empty.
  """

  @jax.jit
  def observe(ranges: Any, inputs: Mapping[str, Any]) -> Any:
    _, updated = model.apply(
      {"params": params, RANGES: ranges}, **inputs, mutable=[RANGES, CALIBRATION]
    )
    return updated[RANGES]

  ranges = jax.tree.map(jnp.zeros_like, ranges)
  seen = 0
  for inputs in batches:
    ranges = observe(ranges, dict(inputs))
    seen += 1
  if not seen:
    raise ValueError("calibrate_ranges needs at least one batch")
  return ranges


def learned_ranges(collections: Any) -> dict[str, tuple[float, float]]:
  """The learned (min, max) of every fake-quantization point, by '/'-joined module path.

  Args:
    collections: the model's non-parameter variables (e.g. `TrainState.collections`), or a
      variables dict holding `RANGES`. Ranges of scanned blocks ([layers] arrays) are listed
      per layer as `path[i]`.

  Returns:
    {path: (min, max)} as Python floats; empty when the model is not quantization-aware.
  """
  flat: dict[str, tuple[float, float]] = {}

  def visit(node: Any, path: tuple[str, ...]) -> None:
    if not hasattr(node, "items"):
      return
    if set(node.keys()) == {"min", "max"}:
      low, high = np.asarray(node["min"]), np.asarray(node["max"])
      name = "/".join(path)
      if low.ndim == 0:
        flat[name] = (float(low), float(high))
      else:
        for i, (a, b) in enumerate(zip(low.reshape(-1), high.reshape(-1), strict=True)):
          flat[f"{name}[{i}]"] = (float(a), float(b))
      return
    for key, child in node.items():
      visit(child, (*path, str(key)))

  visit(collections.get(RANGES, {}) if hasattr(collections, "get") else {}, ())
  return flat
