"""LAMB and AdamW as the original MobileBERT/BERT code applies them, as optax transformations.

`build_optimizer` returns one `optax.GradientTransformation` for

- "lamb": google-research `mobilebert/lamb_optimizer.py` (TF1). Per variable, with g the
  globally clipped gradient: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², **no bias correction**,
  u = m/(√v + ε) + wd·w (decay only for non-excluded variables), r = ‖w‖/‖u‖ (1 if either norm
  is 0; 1 for excluded variables), w ← w − lr·r·u. `bias_correction=True` gives the TF2 Model
  Garden LAMB (`official/modeling/optimization/lamb.py`): m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ).
- "adamw_tf1": BERT's `AdamWeightDecayOptimizer`: the same without the trust ratio.
- "adamw": the usual bias-corrected AdamW (what `optax.adamw` computes), same exclusions.

All three clip the gradients first, by default by their global norm (TF1 `create_optimizer`
clips to 1.0 before the optimizer); `clip_mode="per_variable"` clips each variable by its own
norm instead, as Keras' `clipnorm` does in the TF2 Model Garden distillation (docs/pitfalls.md P16).
They take the learning-rate schedule of `mobilebert_jax.train.schedules`.

Why not `optax.lamb`: its `mask` only removes leaves from weight decay, while the original also
leaves them out of the trust ratio, and `optax.scale_by_adam` always bias-corrects.

Exclusions. The original matches regexes against TF variable names with `re.search`, using
`["teacher", "LayerNorm", "layer_norm", "bias", "FakeLayerNorm"]` for both weight decay and layer
adaptation. Our parameter paths are "/"-joined tree keys (`mobilebert/encoder/layer_0/...`);
`DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY` selects the same tensors:

| TF1 name                                       | our path                                    |
|------------------------------------------------|---------------------------------------------|
| `.../FakeLayerNorm/{gamma,beta}` (NoNorm)      | `.../norm/{scale,bias}`                     |
| `.../LayerNorm/{gamma,beta}` (LayerNorm)       | `.../norm/{scale,bias}`,                    |
|                                                | `cls/predictions/transform_layer_norm/...`  |
| `.../bias`, `cls/predictions/output_bias`, ... | `.../bias`, `cls/predictions/bias`          |
| `teacher/...` (distillation teacher)           | `teacher/...`                               |

i.e. `norm/scale$` (every norm scale, NoNorm or LayerNorm), `bias$` (every bias, norm biases
included) and a `teacher` path component. Kernels and embedding tables are decayed and adapted.
Excluded is not frozen: in TF1 the teacher was frozen by getting no gradient; here, freeze a
subtree with `optax.multi_transform` (or keep it out of the trained parameters).

Scanned layers. With `scan_layers=True` one leaf `encoder/layers/.../kernel` [L, ...] holds the
L variables `layer_0 ... layer_{L-1}` of the original, and the trust ratio is computed per layer
slice (norms over all axes but the leading one) for leaves whose path matches
`stacked_layer_patterns`, so scanned and unscanned models train identically; so is the
per-variable clipping. Everything else in the update is elementwise or global.

Precision. Gradients are cast to float32 first, the moments are float32 whatever the parameter or
gradient dtype, and the updates leave the chain in float32 (bf16 compute over fp32 parameters).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from mobilebert_jax.train.schedules import DEFAULT_END_LR_RATE, build_schedule

PyTree = Any

OPTIMIZERS = ("lamb", "adamw", "adamw_tf1")
CLIP_MODES = ("global", "per_variable")

# The list the TF1 code passes for both LAMB and AdamW (matched against TF variable names).
TF1_EXCLUDE_FROM_WEIGHT_DECAY = ("teacher", "LayerNorm", "layer_norm", "bias", "FakeLayerNorm")

# The same selection expressed over our "/"-joined parameter paths (see the module docstring).
DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY = (r"(^|/)teacher/", r"norm/scale$", r"bias$")

# Leaves with a leading layer axis: the blocks under `nn.scan` (`.../encoder/layers/...`).
DEFAULT_STACKED_LAYER_PATTERNS = (r"(^|/)layers/",)


# ----------------------------------------------------------------------------------------------
# Parameter paths and regex masks
# ----------------------------------------------------------------------------------------------


def path_to_str(key_path: Sequence[Any]) -> str:
  """The "/"-joined name of a key path, e.g. "mobilebert/encoder/layer_0/attention/norm/scale"."""
  return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def _compile(patterns: Sequence[str] | str, what: str) -> tuple[re.Pattern, ...]:
  if isinstance(patterns, str):
    # A bare string would otherwise be split into one pattern per character.
    raise TypeError(f"{what} must be a sequence of regexes, got the string {patterns!r}.")
  compiled = []
  for pattern in patterns:
    try:
      compiled.append(re.compile(pattern))
    except re.error as e:
      raise ValueError(f"Invalid regex {pattern!r} in {what}: {e}") from None
  return tuple(compiled)


def _matches(compiled: tuple[re.Pattern, ...], name: str) -> bool:
  return any(p.search(name) is not None for p in compiled)


def _variable_norm(x: jax.Array, name: str, stacked: tuple[re.Pattern, ...]) -> jax.Array:
  """float32 L2 norm of one original variable: of the leaf, or per leading-axis slice.

  Returns:
    A scalar-like array broadcastable to `x` ([L, 1, ...] for a stacked leaf).
  """
  axes = None
  if _matches(stacked, name):
    if x.ndim == 0:
      raise ValueError(f"{name} matches stacked_layer_patterns but is a scalar.")
    axes = tuple(range(1, x.ndim))
  x = x.astype(jnp.float32)
  return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def path_mask(patterns: Sequence[str], *, invert: bool = False) -> Callable[[PyTree], PyTree]:
  """A function tree -> tree of bools: True where the leaf's path matches one of `patterns`.

  Matching uses `re.search` on the "/"-joined path, as the TF code does on variable names.

  Args:
    patterns: regexes.
    invert: return True where *no* pattern matches instead (e.g. "decay this leaf").

  Returns:
    A callable usable as an optax `mask`.
  """
  compiled = _compile(patterns, "patterns")

  def mask_fn(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map_with_path(
      lambda path, _: _matches(compiled, path_to_str(path)) != invert, tree
    )

  return mask_fn


# ----------------------------------------------------------------------------------------------
# Transformations
# ----------------------------------------------------------------------------------------------


def upcast_to_float32() -> optax.GradientTransformation:
  """Casts floating updates to float32, so everything downstream runs in float32."""

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree.map(
      lambda u: u.astype(jnp.float32) if jnp.issubdtype(u.dtype, jnp.floating) else u, updates
    )
    return updates, state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_adam_tf(
  b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, bias_correction: bool = False
) -> optax.GradientTransformation:
  """Adam direction m/(√v + ε) as the TF optimizers compute it, moments kept in float32.

  Without bias correction this is the TF1 `LAMBOptimizer`/`AdamWeightDecayOptimizer` rule; with
  it, the TF2 Model Garden LAMB and `optax.scale_by_adam` rule (ε outside the root).

  Args:
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to √v (or √v̂).
    bias_correction: divide the moments by (1 − βᵗ), t the 1-based update count.

  Returns:
    A transformation whose state is an `optax.ScaleByAdamState` (count, mu, nu).
  """

  def init_fn(params):
    return optax.ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=jnp.float32),
      nu=optax.tree.zeros_like(params, dtype=jnp.float32),
    )

  def update_fn(updates, state, params=None):
    del params
    g32 = jax.tree.map(lambda g: g.astype(jnp.float32), updates)
    mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, g32)
    nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, g32)
    count = optax.safe_increment(state.count)
    if bias_correction:
      t = count.astype(jnp.float32)
      mu_c = 1.0 - jnp.power(jnp.float32(b1), t)
      nu_c = 1.0 - jnp.power(jnp.float32(b2), t)
      direction = jax.tree.map(lambda m, v: (m / mu_c) / (jnp.sqrt(v / nu_c) + eps), mu, nu)
    else:
      direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu, nu)
    return direction, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def scale_by_layerwise_trust_ratio(
  exclude: Sequence[str] = DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
  stacked_layer_patterns: Sequence[str] = DEFAULT_STACKED_LAYER_PATTERNS,
) -> optax.GradientTransformation:
  """LAMB's layer adaptation u ← (‖w‖/‖u‖)·u, per original variable.

  The ratio is 1 when either norm is 0, and excluded leaves are passed through unchanged (TF1
  `_do_layer_adaptation`). For leaves whose path matches `stacked_layer_patterns` the norms are
  taken per slice of the leading (layer) axis: a [L, ...] leaf gets L ratios.

  Args:
    exclude: regexes of paths left without adaptation.
    stacked_layer_patterns: regexes of paths whose leaves carry a leading layer axis.

  Returns:
    A stateless transformation (needs `params`).
  """
  excluded = _compile(exclude, "exclude_from_layer_adaptation")
  stacked = _compile(stacked_layer_patterns, "stacked_layer_patterns")

  def scale(key_path, u, w):
    name = path_to_str(key_path)
    if _matches(excluded, name):
      return u
    w_norm = _variable_norm(w, name, stacked)
    u_norm = _variable_norm(u, name, stacked)
    # Both branches are computed; the select keeps the inf/nan of w/0 out of the result.
    ratio = jnp.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, 1.0)
    return u.astype(jnp.float32) * ratio

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("scale_by_layerwise_trust_ratio needs `params` in update().")
    return jax.tree_util.tree_map_with_path(scale, updates, params), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def clip_by_variable_norm(
  max_norm: float, stacked_layer_patterns: Sequence[str] = DEFAULT_STACKED_LAYER_PATTERNS
) -> optax.GradientTransformation:
  """Clips every variable's gradient to L2 norm `max_norm` on its own (Keras `clipnorm`).

  g ← g·c / max(‖g‖, c), as `tf.clip_by_norm`, per original variable (per layer slice for
  stacked leaves).

  Args:
    max_norm: the threshold c.
    stacked_layer_patterns: regexes of paths whose leaves carry a leading layer axis.

  Returns:
    A stateless transformation.
  """
  stacked = _compile(stacked_layer_patterns, "stacked_layer_patterns")

  def clip(key_path, g):
    norm = _variable_norm(g, path_to_str(key_path), stacked)
    return (g.astype(jnp.float32) * max_norm) / jnp.maximum(norm, max_norm)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(clip, updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


# ----------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------


class Optimizer(NamedTuple):
  """An optax transformation and the learning-rate schedule it applies.

  Attributes:
    transformation: the optax chain.
    schedule: `step -> rate` for the 0-based update count (what the summaries report).
  """

  transformation: optax.GradientTransformation
  schedule: optax.Schedule


def build_optimizer(
  name: str,
  learning_rate: float | optax.Schedule,
  total_steps: int | None = None,
  warmup_steps: int | None = None,
  warmup_proportion: float | None = None,
  *,
  decay: str = "linear",
  power: float = 1.0,
  end_lr_rate: float = DEFAULT_END_LR_RATE,
  decay_from_warmup: bool = False,
  weight_decay: float = 0.01,
  clip_norm: float | None = 1.0,
  clip_mode: str = "global",
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  bias_correction: bool | None = None,
  exclude_from_weight_decay: Sequence[str] = DEFAULT_EXCLUDE_FROM_WEIGHT_DECAY,
  exclude_from_layer_adaptation: Sequence[str] | None = None,
  stacked_layer_patterns: Sequence[str] = DEFAULT_STACKED_LAYER_PATTERNS,
) -> Optimizer:
  """Builds LAMB or AdamW with gradient clipping and a warm-up/decay schedule.

  The chain is: float32 cast → clip → Adam direction → + wd·w on non-excluded leaves → (LAMB)
  per-variable trust ratio on non-excluded leaves → × −lr(step). Its state is an
  `optax.named_chain` state (keys "upcast", "clip", "adam", "weight_decay", "trust_ratio",
  "learning_rate" as present; the moments are `state["adam"].mu` / `.nu`). It comes with its
  schedule, the rate applied at each 0-based step (for logging).

  To freeze part of the tree (e.g. a distillation teacher), wrap the result in
  `optax.multi_transform` with `optax.set_to_zero()` for the frozen labels: the frozen leaves
  then take no part in the global norm, as TF1's teacher variables (which got no gradient).

  Args:
    name: "lamb" (TF1 LAMB), "adamw" (bias-corrected AdamW) or "adamw_tf1" (TF1
      `AdamWeightDecayOptimizer`).
    learning_rate: peak rate, or a ready optax schedule (then leave the schedule arguments at
      their defaults).
    total_steps: run length in updates (schedule end).
    warmup_steps: linear warm-up length (exclusive with `warmup_proportion`).
    warmup_proportion: warm-up as a fraction of `total_steps`.
    decay: "linear", "polynomial" or "constant" (see `mobilebert_jax.train.schedules`).
    power: polynomial decay exponent.
    end_lr_rate: final rate / peak rate (TF1 MobileBERT default 1e-4; BERT uses 0).
    decay_from_warmup: anchor the decay at the end of warm-up (transformers) rather than step 0
      (TF1).
    weight_decay: decoupled weight-decay rate (added to the update, scaled by lr).
    clip_norm: clipping threshold; None disables clipping.
    clip_mode: "global" (one norm over all gradients, TF1) or "per_variable" (each variable by
      its own norm, Keras `clipnorm` as in the TF2 Model Garden distillation).
    b1: Adam β1.
    b2: Adam β2.
    eps: Adam ε (added to √v).
    bias_correction: Adam bias correction; None means the variant's default (False for "lamb"
      and "adamw_tf1", True for "adamw"). True with "lamb" is the TF2 Model Garden LAMB.
    exclude_from_weight_decay: regexes over "/"-joined parameter paths (module docstring).
    exclude_from_layer_adaptation: regexes of leaves left without trust ratio; None means the
      same as `exclude_from_weight_decay` (as in TF1, where an empty list also means that; here
      an empty list adapts every leaf). LAMB only.
    stacked_layer_patterns: regexes of leaves with a leading layer axis (scanned blocks), whose
      trust ratio and per-variable clipping are per layer.

  Returns:
    `Optimizer(transformation, schedule)` (unpacks as a pair): call
    `transformation.update(grads, state, params)`; params are required.

  Raises:
    ValueError: unknown `name`, contradictory or out-of-range settings.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"Unknown optimizer {name!r}; expected one of {OPTIMIZERS}.")
  if name == "adamw_tf1" and bias_correction:
    raise ValueError("adamw_tf1 is the TF1 form without bias correction; use name='adamw'.")
  if bias_correction is None:
    bias_correction = name == "adamw"
  if not 0.0 <= b1 < 1.0 or not 0.0 <= b2 < 1.0:
    raise ValueError(f"b1 and b2 must lie in [0, 1), got b1={b1}, b2={b2}.")
  if not eps >= 0.0:
    raise ValueError(f"eps must be >= 0, got {eps}.")
  if not weight_decay >= 0.0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  if clip_norm is not None and not clip_norm > 0.0:
    raise ValueError(f"clip_norm must be > 0 (or None to disable clipping), got {clip_norm}.")
  if clip_mode not in CLIP_MODES:
    raise ValueError(f"Unknown clip_mode {clip_mode!r}; expected one of {CLIP_MODES}.")
  _compile(exclude_from_weight_decay, "exclude_from_weight_decay")
  if name != "lamb" and exclude_from_layer_adaptation is not None:
    raise ValueError(f"exclude_from_layer_adaptation only applies to LAMB, not {name!r}.")

  if callable(learning_rate):
    schedule_args = (total_steps, warmup_steps, warmup_proportion, decay, power, end_lr_rate)
    if schedule_args != (None, None, None, "linear", 1.0, DEFAULT_END_LR_RATE) or (
      decay_from_warmup
    ):
      raise ValueError("learning_rate is already a schedule; leave the schedule arguments unset.")
    schedule = learning_rate
  else:
    schedule = build_schedule(
      learning_rate,
      total_steps,
      warmup_steps,
      warmup_proportion,
      decay=decay,
      power=power,
      end_lr_rate=end_lr_rate,
      decay_from_warmup=decay_from_warmup,
    )

  decay_mask = path_mask(exclude_from_weight_decay, invert=True)
  steps = [("upcast", upcast_to_float32())]
  if clip_norm is not None and clip_mode == "global":
    steps.append(("clip", optax.clip_by_global_norm(clip_norm)))
  elif clip_norm is not None:
    steps.append(("clip", clip_by_variable_norm(clip_norm, stacked_layer_patterns)))
  steps.append(("adam", scale_by_adam_tf(b1, b2, eps, bias_correction)))
  steps.append(("weight_decay", optax.add_decayed_weights(weight_decay, mask=decay_mask)))
  if name == "lamb":
    if exclude_from_layer_adaptation is None:
      exclude_from_layer_adaptation = exclude_from_weight_decay
    steps.append(
      (
        "trust_ratio",
        scale_by_layerwise_trust_ratio(exclude_from_layer_adaptation, stacked_layer_patterns),
      )
    )
  steps.append(("learning_rate", optax.scale_by_learning_rate(schedule)))
  return Optimizer(optax.named_chain(*steps), schedule)
