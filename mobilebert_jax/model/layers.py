"""Small building blocks shared by the encoder and the heads.

Every parameter is created through `nn.with_logical_partitioning`, so a sharding rule set can
map its logical axis names (`vocab`, `embed`, `hidden`, `bottleneck`, `mlp`, `heads`, `kv`,
`layers`, ...) onto a device mesh without touching the model code.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mobilebert_jax.model import quantization
from mobilebert_jax.model.config import MobileBertConfig

Array = jax.Array
Axes = tuple[str | None, ...]


def dtype_of(name: str) -> jnp.dtype:
  """Maps a config dtype string ("float32", "bfloat16", "float16") to a NumPy dtype."""
  return jnp.dtype(name)


def kernel_init(config: MobileBertConfig) -> Callable:
  """Truncated-normal initialiser with σ = `initializer_range`, as the TF reference uses."""
  return nn.initializers.truncated_normal(stddev=config.initializer_range)


def partitioned(init: Callable, axes: Axes) -> Callable:
  """Attaches logical axis names to an initialiser."""
  return nn.with_logical_partitioning(init, axes)


def gelu_tanh(x: Array) -> Array:
  """GELU, tanh approximation (TF's "gelu", transformers' "gelu_new")."""
  return jax.nn.gelu(x, approximate=True)


def gelu_exact(x: Array) -> Array:
  """GELU, exact erf form (transformers' "gelu")."""
  return jax.nn.gelu(x, approximate=False)


ACTIVATION_FNS: dict[str, Callable[[Array], Array]] = {
  "relu": jax.nn.relu,
  "relu6": jax.nn.relu6,
  "gelu": gelu_exact,
  "gelu_new": gelu_tanh,
  "gelu_pytorch_tanh": gelu_tanh,
  "tanh": jnp.tanh,
  "silu": jax.nn.silu,
  "swish": jax.nn.silu,
}


def activation(name: str) -> Callable[[Array], Array]:
  """Returns the activation function of a config's `hidden_act` name."""
  try:
    return ACTIVATION_FNS[name]
  except KeyError:
    raise ValueError(f"Unknown activation {name!r}; known: {sorted(ACTIVATION_FNS)}") from None


# The signature of `jax.lax.dot_general`: (lhs, rhs, dimension_numbers, precision=None,
# preferred_element_type=None) -> Array.
DotGeneral = Callable[..., Array]


def _dense_contract_dims(
  dimension_numbers: tuple, lhs: Array, rhs: Array, precision, preferred_element_type
) -> int | None:
  """n when a `dot_general` is Dense-shaped (lhs's last n dims against rhs's first n), else None.

  Only such products of two same-dtype float arrays, with default precision and output type,
  take `dense_product`'s gradient; anything else goes to `jax.lax.dot_general` unchanged.
  """
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  n = len(lhs_contract)
  dense_shaped = (
    n > 0
    and not lhs_batch
    and not rhs_batch
    and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim))
    and tuple(rhs_contract) == tuple(range(n))
  )
  plain = precision is None and preferred_element_type is None
  floats = lhs.dtype == rhs.dtype and jnp.issubdtype(lhs.dtype, jnp.floating)
  return n if dense_shaped and plain and floats else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_product(x: Array, kernel: Array, contract_dims: int) -> Array:
  return jax.lax.dot_general(
    x,
    kernel,
    ((tuple(range(x.ndim - contract_dims, x.ndim)), tuple(range(contract_dims))), ((), ())),
  )


def _dense_product_fwd(x: Array, kernel: Array, contract_dims: int) -> tuple[Array, tuple]:
  return _dense_product(x, kernel, contract_dims), (x, kernel)


def _dense_product_bwd(contract_dims: int, residuals: tuple, dy: Array) -> tuple[Array, Array]:
  x, kernel = residuals
  out_dims = kernel.ndim - contract_dims
  # dx = dy · Wᵀ: contracting the minor dims of both operands, a form the CPU matmul library takes.
  dx = jax.lax.dot_general(
    dy,
    kernel,
    (
      (tuple(range(dy.ndim - out_dims, dy.ndim)), tuple(range(contract_dims, kernel.ndim))),
      ((), ()),
    ),
  )
  # dW = xᵀ · dy over all N = batch·length rows. Left to itself, XLA:CPU contracts x on its major
  # axis (a "transposed-lhs" dot) that YNNPACK does not take, so it falls back to a generic matmul
  # at less than half the rate (experiments/2026-12-06_train_step_speed). Transposing one operand
  # explicitly, behind an optimization barrier so the simplifier cannot fold it back into the
  # dot, gives a plain row-major product. The cheaper operand to transpose is the narrower one.
  fan_in, fan_out = math.prod(kernel.shape[:contract_dims]), math.prod(kernel.shape[contract_dims:])
  x2 = x.reshape(-1, fan_in)
  dy2 = dy.reshape(-1, fan_out)
  if fan_out < fan_in:
    # [out, in] = dyᵀ·x, then a cheap transpose of the small result; the second barrier stops the
    # simplifier from folding that transpose into the dot, which would swap it back.
    dkernel = jax.lax.optimization_barrier(jnp.matmul(jax.lax.optimization_barrier(dy2.T), x2)).T
  else:
    dkernel = jnp.matmul(jax.lax.optimization_barrier(x2.T), dy2)
  return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


_dense_product.defvjp(_dense_product_fwd, _dense_product_bwd)


def dense_product(
  lhs: Array, rhs: Array, dimension_numbers: tuple, precision=None, preferred_element_type=None
) -> Array:
  """`jax.lax.dot_general` with a weight gradient laid out for the CPU matmul library.

  The forward value is exactly `jax.lax.dot_general`'s (the same call). For a Dense-shaped
  product (x's last n axes against W's first n, same float dtype, default precision) the
  gradient is hand-written: dx = dy·Wᵀ as autodiff computes it, and dW = xᵀ·dy with the
  transpose of one operand made explicit (see `_dense_product_bwd` for why). The gradients equal
  autodiff's up to float summation order. Other products, and every product when the default
  backend is not the CPU, call `jax.lax.dot_general` directly.

  Args:
    lhs: [..., *in] input x.
    rhs: [*in, *out] kernel W.
    dimension_numbers, precision, preferred_element_type: as `jax.lax.dot_general`.

  Returns:
    [..., *out] product.
  """
  n = _dense_contract_dims(dimension_numbers, lhs, rhs, precision, preferred_element_type)
  # Only XLA:CPU needs the help; GPU/TPU compilers take transposed operands natively, and there
  # the optimization barriers would only forbid fusions.
  if n is None or jax.default_backend() != "cpu":
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type)
  return _dense_product(lhs, rhs, n)


def dense_dot_general(config: MobileBertConfig) -> DotGeneral:
  """Chooses the matmul of every `Dense` in the model: the single quantization hook.

  `Dense` calls this from inside its own `__call__` (unless the layer was given an explicit
  `dot_general`), so a quantization switch of the config changes this one function and reaches
  every dense layer of the encoder and heads. Because it runs inside the layer's compact scope it
  may also return a freshly built Flax module (an AQT-style quantized dot_general with its own
  variables), which then becomes a child of that layer.

  The float default is `dense_product`: `jax.lax.dot_general` in the forward pass (the same
  call, so the same numbers) with a weight gradient laid out for XLA:CPU's matmul library: the
  weight-gradient matmuls, ~27% of the CPU training step's op time on XLA's generic dot, now run
  on YNNPACK like the forward ones (experiments/2026-12-06_train_step_speed). Qwix
  (google/qwix) quantizes a linen model by intercepting the calls of `jax.lax.dot_general` (and
  `jax.numpy.einsum`) made inside each module and picks its rule from the module path (e.g.
  `mobilebert/encoder/layer_0/attention/query`); the forward call is still one, so
  `qwix.quantize_model(model, qwix.QtProvider(rules))` finds every `Dense` (for Qwix QAT, whose
  gradients must pass through its fake quantization, give the layers
  `dot_general=jax.lax.dot_general`).

  With `config.quantization_aware` it is a `quantization.FakeQuantDotGeneral` child of the layer
  (fake-quantized input and kernel, the original MobileBERT QAT).

  Args:
    config: model config.

  Returns:
    A function with `jax.lax.dot_general`'s signature.
  """
  if config.quantization_aware:
    return quantization.make_dot_general(
      config.quantization_export, config.quantization_per_channel
    )
  return dense_product


class Dense(nn.Module):
  """y = x·W + c with W stored [in, *features] (TF layout) and logical axis names.

  The product is one `dot_general` call, `dot_general(x, W, ((x's last contract_dims axes,
  W's first contract_dims axes), ((), ())))`, with x and W cast to the compute dtype and no
  `precision` or `preferred_element_type` arguments; the bias is added afterwards. That call is
  the quantization hook, as in `flax.linen.Dense`: the `dot_general` attribute overrides it for
  one layer, and when it is None (the default) `dense_dot_general(config)` supplies it, which is
  the one place to change to make the whole model quantization-aware (fake-quantized QAT) or
  int8. Parameters, their names, dtypes and logical axes do not depend on the hook.

  Attributes:
    features: output feature shape (an int or a tuple for per-head outputs).
    kernel_axes: logical names of the kernel dimensions (input axes first).
    config: model config (initialiser range, dtypes).
    contract_dims: how many trailing input dimensions to contract (2 for [heads, kv] inputs).
    use_bias: whether to add a bias.
    dot_general: the matmul of this layer, with `jax.lax.dot_general`'s signature; None takes
      `dense_dot_general(config)`.
  """

  features: int | Sequence[int]
  kernel_axes: Axes
  config: MobileBertConfig
  contract_dims: int = 1
  use_bias: bool = True
  dot_general: DotGeneral | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Applies the layer.

    Args:
      x: [..., *in_features] input.

    Returns:
      [..., *features] output in the compute dtype.
    """
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    in_shape = x.shape[-self.contract_dims :]
    if len(self.kernel_axes) != len(in_shape) + len(features):
      raise ValueError(
        f"kernel_axes {self.kernel_axes} do not match a kernel of "
        f"{len(in_shape) + len(features)} dims"
      )
    param_dtype = dtype_of(self.config.param_dtype)
    kernel = self.param(
      "kernel",
      partitioned(kernel_init(self.config), self.kernel_axes),
      (*in_shape, *features),
      param_dtype,
    )
    compute = dtype_of(self.config.dtype)
    x = x.astype(compute)
    kernel = kernel.astype(compute)
    dot_general = self.dot_general
    if dot_general is None:
      dot_general = dense_dot_general(self.config)
    y = dot_general(
      x,
      kernel,
      (
        (tuple(range(x.ndim - self.contract_dims, x.ndim)), tuple(range(self.contract_dims))),
        ((), ()),
      ),
    )
    if self.use_bias:
      bias_axes = self.kernel_axes[len(in_shape) :]
      bias = self.param(
        "bias", partitioned(nn.initializers.zeros_init(), bias_axes), features, param_dtype
      )
      y = y + bias.astype(compute)
    if (
      self.config.quantization_aware
      and self.config.quantization_points == "tflite"
      and self.dot_general is None
    ):
      # A full-integer TFLite model requantizes every fully connected output to int8.
      # A task head's logits: on a range no lower than the floor (quantization.TASK_LOGIT_FLOOR).
      task_logits = self.kernel_axes[-1] == "classes"
      y = quantization.ActivationQuantizer(
        self.config.quantization_export,
        floor=quantization.TASK_LOGIT_FLOOR if task_logits else None,
        name="output_quant",
      )(y)
    return y


class NoNorm(nn.Module):
  """MobileBERT's NoNorm: y = x ⊙ γ + β, with no statistics and no epsilon.

  Computed in float32 whatever the compute dtype: the residual stream of the released model
  reaches 1e7 (docs/pitfalls.md P1), so it is kept at full precision.

  Attributes:
    axis_name: logical name of the feature axis.
    config: model config.
  """

  axis_name: str
  config: MobileBertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: [..., width]. Returns: [..., width] float32."""
    param_dtype = dtype_of(self.config.param_dtype)
    width = x.shape[-1]
    scale = self.param(
      "scale", partitioned(nn.initializers.ones_init(), (self.axis_name,)), (width,), param_dtype
    )
    bias = self.param(
      "bias", partitioned(nn.initializers.zeros_init(), (self.axis_name,)), (width,), param_dtype
    )
    if self.config.quantization_aware:
      return quantization.no_norm(
        x.astype(jnp.float32),
        scale.astype(jnp.float32),
        bias.astype(jnp.float32),
        self.config.quantization_export,
      )
    return x.astype(jnp.float32) * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class LayerNorm(nn.Module):
  """LayerNorm over the last axis with the biased variance, computed in float32.

  Attributes:
    axis_name: logical name of the feature axis.
    epsilon: added to the variance.
    config: model config.
  """

  axis_name: str
  epsilon: float
  config: MobileBertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: [..., width]. Returns: [..., width] float32."""
    param_dtype = dtype_of(self.config.param_dtype)
    width = x.shape[-1]
    scale = self.param(
      "scale", partitioned(nn.initializers.ones_init(), (self.axis_name,)), (width,), param_dtype
    )
    bias = self.param(
      "bias", partitioned(nn.initializers.zeros_init(), (self.axis_name,)), (width,), param_dtype
    )
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    variance = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
    normed = centered * jax.lax.rsqrt(variance + self.epsilon)
    return normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)


def make_norm(
  config: MobileBertConfig, axis_name: str, name: str, epsilon: float | None = None
) -> nn.Module:
  """Builds the block normalisation the config asks for (NoNorm or LayerNorm).

  Args:
    config: model config.
    axis_name: logical name of the normalised axis.
    name: submodule name.
    epsilon: LayerNorm epsilon; defaults to `config.layer_norm_eps`.

  Returns:
    An unbound NoNorm or LayerNorm module.
  """
  if config.normalization_type == "no_norm":
    return NoNorm(axis_name=axis_name, config=config, name=name)
  eps = config.layer_norm_eps if epsilon is None else epsilon
  return LayerNorm(axis_name=axis_name, epsilon=eps, config=config, name=name)


# PyTorch's nn.LayerNorm default, which transformers' MobileBERT uses in two places
# (docs/pitfalls.md P8).
TORCH_DEFAULT_LAYER_NORM_EPS = 1e-5


def quirk_eps(config: MobileBertConfig) -> float | None:
  """Epsilon for the two LayerNorms that transformers builds without `layer_norm_eps`."""
  return TORCH_DEFAULT_LAYER_NORM_EPS if config.hf_layer_norm_eps_quirk else None


def constrain(x: Array, axes: Axes) -> Array:
  """Applies a logical sharding constraint (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, axes)
