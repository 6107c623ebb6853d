"""Device mesh, logical-axis rule presets, and sharded train-state creation.

The model names every parameter dimension with a logical axis (`vocab`, `hidden`, `mlp`, ...,
see `PARAM_AXES`) and constrains activations at block boundaries to (`batch`, `length`,
`hidden`). This module maps those names onto a two-axis device mesh:

* `data`: pure data parallelism (batch split, parameters replicated);
* `fsdp`: the batch is split over it too, and with the `fsdp` rule preset the large parameter
  dimensions are sharded over it as well (ZeRO-3 style: XLA all-gathers a weight where it is
  used and reduce-scatters its gradient).

Two presets (`RULE_PRESETS`):

* `dp` (default): every parameter replicated, batch over ("data", "fsdp"). Right for the 25M
  parameter student at any batch size that fits.
* `fsdp`: additionally shards `mlp`, `vocab`, `hidden`, `bottleneck`, `embed_input`,
  `hidden_out` (and `embed` when `vocab` cannot be) over `fsdp`, for the IB-BERT teacher or for
  batches whose optimizer state must be spread.

Typical use (single or multi-host; call `distributed.initialize_distributed` first):

    mesh = make_mesh((-1, 1))
    rules = logical_axis_rules("dp")
    state_sh = train_state_shardings(model, optimizer, mesh, rules)
    state = create_train_state(model, optimizer, mesh, rules, rng=jax.random.key(0))
    step = jit_train_step(make_train_step(...), mesh, rules, state_sh)
    state, metrics = step(state, global_batch)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mobilebert_jax.model.models import dummy_inputs
from mobilebert_jax.train.train_state import TrainState

PyTree = Any
LogicalRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
# The batch is split over every mesh axis: with `dp` rules the fsdp axis is just more data
# parallelism, with `fsdp` rules it is data parallelism whose weights are gathered on use.
BATCH_MESH_AXES = (DATA_AXIS, FSDP_AXIS)

# Logical names of parameter dimensions used by the model code (layers.py, encoder.py,
# heads.py, models.py). `validate_rules` rejects a tree that uses a name not listed in the rules,
# so a new name cannot silently end up replicated.
PARAM_AXES = (
  "vocab",
  "embed",
  "embed_input",
  "hidden",
  "hidden_out",
  "bottleneck",
  "mlp",
  "heads",
  "kv",
  "position",
  "type_vocab",
  "mlm_extra",
  "classes",
  "layers",
)
ACTIVATION_AXES = ("batch", "length")

# Activation rules come first: flax resolves rules in order and a mesh axis is used at most once
# per array, so `batch` must claim ("data", "fsdp") before `hidden` could claim `fsdp` in the
# (batch, length, hidden) constraint.
_ACTIVATION_RULES: LogicalRules = (("batch", BATCH_MESH_AXES), ("length", None))

# In priority order: for a kernel with two shardable dimensions the first listed wins (the FFN
# kernels [bottleneck, mlp] shard mlp, the widest). `embed` follows `vocab` so that the word
# embedding table shards its embedding dimension when the vocabulary (30522 = 2·3·5087) does
# not divide the fsdp axis.
_FSDP_SHARDED_AXES = ("mlp", "vocab", "embed", "hidden", "bottleneck", "embed_input", "hidden_out")

RULE_PRESETS: dict[str, LogicalRules] = {
  "dp": _ACTIVATION_RULES + tuple((name, None) for name in PARAM_AXES),
  "fsdp": (
    _ACTIVATION_RULES
    + tuple((name, FSDP_AXIS) for name in _FSDP_SHARDED_AXES)
    + tuple((name, None) for name in PARAM_AXES if name not in _FSDP_SHARDED_AXES)
  ),
}


# ----------------------------------------------------------------------------------------------
# Mesh and rules
# ----------------------------------------------------------------------------------------------


def make_mesh(
  mesh_shape: Sequence[int] = (-1, 1), devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Builds the (data, fsdp) device mesh with Auto axis types.

  Linen's logical-axis machinery (`nn.with_logical_constraint`, rule-based shardings) assumes
  Auto axes, while `jax.make_mesh` defaults to Explicit since JAX 0.9, so the axis types are
  passed explicitly.

  Args:
    mesh_shape: (data, fsdp) sizes; one entry may be -1, meaning "all remaining devices". The
      default (-1, 1) puts every device on `data`.
    devices: devices to use (default: all devices of all processes).

  Returns:
    A `jax.sharding.Mesh` with axes ("data", "fsdp").

  Raises:
    ValueError: a shape of the wrong length, more than one -1, non-positive sizes, or sizes whose
      product is not the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = tuple(int(s) for s in mesh_shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh_shape must have {len(MESH_AXES)} entries {MESH_AXES}, got {shape}")
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh_shape {shape}: sizes must be positive, with at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"mesh_shape {shape}: {len(devices)} devices are not divisible by {known}")
    shape = tuple(len(devices) // known if s == -1 else s for s in shape)
  if math.prod(shape) != len(devices):
    raise ValueError(
      f"mesh_shape {shape} needs {math.prod(shape)} devices but {len(devices)} are available"
    )
  return jax.make_mesh(
    shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_axis_rules(preset: str = "dp") -> LogicalRules:
  """Returns a rule preset ("dp" or "fsdp"), see the module docstring.

  Raises:
    ValueError: unknown preset name.
  """
  try:
    return RULE_PRESETS[preset]
  except KeyError:
    raise ValueError(
      f"Unknown sharding rule preset {preset!r}; known: {sorted(RULE_PRESETS)}"
    ) from None


def _is_box(x: Any) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def validate_rules(boxed_tree: PyTree, rules: LogicalRules) -> None:
  """Checks that every logical axis name in a boxed tree has a rule.

  Args:
    boxed_tree: a tree with `nn.LogicallyPartitioned` leaves (e.g. `abstract_params(model,
      boxed=True)`).
    rules: logical axis rules.

  Raises:
    ValueError: names without a rule, with one parameter path using each.
  """
  known = {name for name, _ in rules}
  unknown: dict[str, str] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(boxed_tree, is_leaf=_is_box):
    if _is_box(leaf):
      for name in leaf.names:
        if name is not None and name not in known:
          unknown.setdefault(name, jax.tree_util.keystr(path))
  if unknown:
    detail = ", ".join(f"{name!r} (e.g. {where})" for name, where in sorted(unknown.items()))
    raise ValueError(f"Logical axis names without a sharding rule: {detail}")


def _mesh_axes_size(mesh: Mesh, axes: str | tuple[str, ...] | None) -> int:
  if axes is None:
    return 1
  if isinstance(axes, str):
    axes = (axes,)
  return math.prod(mesh.shape[a] for a in axes)


def logical_to_mesh_spec(
  names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules
) -> PartitionSpec:
  """Maps one array's logical axis names to a mesh PartitionSpec, respecting divisibility.

  Same priority semantics as `nn.logical_to_mesh_axes` (which does the work), except that a rule
  is skipped for a dimension whose size its mesh axes do not divide: the dimension then falls
  through to later rules, and another dimension of the array may take the mesh axis. (jit
  rejects shardings that do not divide the array, e.g. a 30522-row vocabulary over 4 devices.)

  Args:
    names: logical name (or None) per dimension.
    shape: the array shape.
    mesh: the device mesh.
    rules: logical axis rules in priority order.

  Returns:
    The PartitionSpec over mesh axes.
  """
  if len(names) != len(shape):
    raise ValueError(f"logical names {tuple(names)} do not match shape {tuple(shape)}")
  usable = tuple(
    (name, axes)
    for name, axes in rules
    if name not in names or shape[list(names).index(name)] % _mesh_axes_size(mesh, axes) == 0
  )
  return nn.logical_to_mesh_axes(tuple(names), usable)


def replicated(mesh: Mesh) -> NamedSharding:
  """The fully replicated sharding on `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of batch arrays: leading (example) dimension over every mesh axis."""
  return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def params_shardings(boxed_params: PyTree, mesh: Mesh, rules: LogicalRules) -> PyTree:
  """NamedSharding of every parameter from its logical axis names.

  The logical specs come from `nn.get_partition_spec`; each is resolved with
  `logical_to_mesh_spec` (flax rule semantics plus a divisibility check).

  Args:
    boxed_params: parameters (abstract or concrete) with `nn.LogicallyPartitioned` leaves, e.g.
      `abstract_params(model, boxed=True)`. Unboxed leaves are replicated.
    mesh: the device mesh.
    rules: logical axis rules.

  Returns:
    The unboxed tree structure with a `NamedSharding` per leaf.
  """
  validate_rules(boxed_params, rules)
  logical_specs = nn.get_partition_spec(boxed_params)
  shapes = jax.tree.map(lambda x: tuple(x.shape), nn.meta.unbox(boxed_params))

  def one(spec: PartitionSpec, shape: tuple[int, ...]) -> NamedSharding:
    names = tuple(spec) + (None,) * (len(shape) - len(spec))
    return NamedSharding(mesh, logical_to_mesh_spec(names, shape, mesh, rules))

  return jax.tree.map(one, logical_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_like_params(
  tree: PyTree, abstract_params: PyTree, param_shardings: PyTree, mesh: Mesh
) -> PyTree:
  """Shardings for a tree that contains copies of the parameter tree (an optimizer state).

  Every subtree of `tree` with the parameters' structure (Adam's `mu` and `nu`, a momentum
  trace, ...; `optax.masked` placeholders allowed) gets the parameter shardings for leaves of the
  parameter's shape; every other leaf (step counts, schedule state, factored statistics of a
  different shape) is replicated. This works on any optax state without knowing its classes,
  and keeps the optimizer code free of sharding metadata.

  Args:
    tree: the (abstract) optimizer state.
    abstract_params: the (abstract) unboxed parameters.
    param_shardings: `params_shardings(...)` of those parameters.
    mesh: the device mesh.

  Returns:
    A tree of `NamedSharding` with the structure of `tree`.
  """
  rep = replicated(mesh)

  def leaf_sharding(param: Any, sharding: NamedSharding, leaf: Any) -> Any:
    if hasattr(leaf, "shape"):
      return sharding if tuple(leaf.shape) == tuple(param.shape) else rep
    # `optax.MaskedNode` and similar empty placeholders stay as they are; anything else in a
    # parameter's place (a per-parameter tuple of statistics, ...) is replicated.
    return jax.tree.map(lambda _: rep, leaf)

  def visit(node: Any) -> Any:
    try:
      return jax.tree.map(leaf_sharding, abstract_params, param_shardings, node)
    except (ValueError, TypeError):
      pass  # Not a copy of the parameter tree: look inside.
    children, treedef = jax.tree_util.tree_flatten(node, is_leaf=lambda x: x is not node)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:
      return rep if hasattr(node, "shape") else node
    return jax.tree_util.tree_unflatten(treedef, [visit(child) for child in children])

  return visit(tree)


# ----------------------------------------------------------------------------------------------
# Train state
# ----------------------------------------------------------------------------------------------


def make_init_fn(
  model: nn.Module, optimizer: optax.GradientTransformation
) -> Callable[[jax.Array], TrainState]:
  """Returns `init_fn(rng) -> TrainState`, a pure function to run under `jax.jit`.

  The parameters come from `model.init` with the first half of `jax.random.split(rng)`, the
  dropout base key is the second half; every other collection `model.init` creates becomes the
  state's `collections`.
  """

  def init_fn(rng: jax.Array) -> TrainState:
    params_rng, dropout_rng = jax.random.split(rng)
    variables = dict(nn.meta.unbox(model.init(params_rng, dummy_inputs(model))))
    params = variables.pop("params")
    return TrainState.create(
      params=params, optimizer=optimizer, rng=dropout_rng, collections=dict(variables)
    )

  return init_fn


def initial_collections(model: nn.Module) -> dict[str, PyTree]:
  """The model's initial non-parameter collections (e.g. QAT ranges), as `model.init` makes them.

  For a state built around given parameters. Under `jit` the unused random parameters are dead
  code, so this costs no parameter initialisation; a model without collections gives {}.
  """

  def init(rng: jax.Array) -> dict[str, PyTree]:
    variables = dict(nn.meta.unbox(model.init(rng, dummy_inputs(model))))
    variables.pop("params", None)
    return variables

  return jax.device_get(jax.jit(init)(jax.random.key(0)))


def _abstract_key() -> jax.ShapeDtypeStruct:
  return jax.eval_shape(lambda: jax.random.key(0))


def train_state_shardings(
  model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, rules: LogicalRules
) -> TrainState:
  """The `NamedSharding` of every leaf of the model's train state.

  Args:
    model: the model (any model class instance).
    optimizer: the optax transformation (its state's shardings follow the parameters').
    mesh: the device mesh.
    rules: logical axis rules.

  Returns:
    A `TrainState` whose leaves are `NamedSharding`s: params (and collections) by their logical
    names (unnamed leaves replicated), optimizer state like the params (scalars replicated),
    step and rng replicated.
  """
  boxed = dict(jax.eval_shape(model.init, jax.random.key(0), dummy_inputs(model)))
  abstract = jax.eval_shape(make_init_fn(model, optimizer), _abstract_key())
  p_sh = params_shardings(boxed.pop("params"), mesh, rules)
  return TrainState(
    step=replicated(mesh),
    params=p_sh,
    opt_state=shard_like_params(abstract.opt_state, abstract.params, p_sh, mesh),
    rng=replicated(mesh),
    collections={name: params_shardings(tree, mesh, rules) for name, tree in boxed.items()},
  )


def abstract_train_state(
  model: nn.Module, optimizer: optax.GradientTransformation, mesh: Mesh, rules: LogicalRules
) -> TrainState:
  """Shapes, dtypes and target shardings of the train state, allocating nothing.

  This is what a checkpoint restore needs: leaves are `jax.ShapeDtypeStruct(shape, dtype,
  sharding=NamedSharding)`, so the restored arrays land directly in the layout of `mesh`.
  """
  abstract = jax.eval_shape(make_init_fn(model, optimizer), _abstract_key())
  shardings = train_state_shardings(model, optimizer, mesh, rules)
  return with_shardings(abstract, shardings)


def with_shardings(abstract: PyTree, shardings: PyTree) -> PyTree:
  """Attaches shardings to a tree of `jax.ShapeDtypeStruct` (or arrays)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
  )


def create_train_state(
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  rules: LogicalRules,
  rng: jax.Array | int = 0,
) -> TrainState:
  """Initialises the train state directly in its sharded layout.

  `jax.jit(init_fn, out_shardings=...)` makes every device compute only its own shards: no full
  copy of the parameters or optimizer state ever exists on one device or on the host. With the
  (default) partitionable threefry PRNG the values do not depend on the mesh.

  Args:
    model: the model.
    optimizer: the optax transformation.
    mesh: the device mesh.
    rules: logical axis rules.
    rng: PRNG key or integer seed.

  Returns:
    The sharded `TrainState` (step 0).
  """
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  shardings = train_state_shardings(model, optimizer, mesh, rules)
  init = jax.jit(make_init_fn(model, optimizer), out_shardings=shardings)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return init(rng)


def create_train_state_from_params(
  params: PyTree,
  optimizer: optax.GradientTransformation,
  shardings: TrainState,
  rng: jax.Array | int = 0,
  collections: PyTree | None = None,
) -> TrainState:
  """Builds a sharded step-0 train state around given parameters (e.g. imported weights).

  Host arrays are placed with `jax.make_array_from_callback`, so on several hosts each process
  transfers only the shards its devices hold (every process must pass the same full values).

  Args:
    params: the unboxed parameter tree (NumPy or JAX arrays), shaped like the model's.
    optimizer: the optax transformation.
    shardings: `train_state_shardings(...)` of the model.
    rng: dropout base key or integer seed.
    collections: the model's initial non-parameter variables (the model's own initial values,
      e.g. from `model.init`; default: none).

  Returns:
    The sharded `TrainState` (step 0, fresh optimizer state).
  """
  if isinstance(rng, int):
    rng = jax.random.split(jax.random.key(rng))[1]
  placed = put_tree(params, shardings.params)
  placed_collections = put_tree(collections or {}, shardings.collections)

  def init(p: PyTree, c: PyTree, key: jax.Array) -> TrainState:
    return TrainState.create(params=p, optimizer=optimizer, rng=key, collections=c)

  mesh = shardings.step.mesh
  # The placed copies are donated: the state reuses their buffers.
  build = jax.jit(init, out_shardings=shardings, donate_argnums=(0, 1))
  with jax.set_mesh(mesh):
    return build(placed, placed_collections, jax.device_put(rng, replicated(mesh)))


def put_tree(tree: PyTree, shardings: PyTree) -> PyTree:
  """Places a tree of host or device arrays with the given shardings (multi-host safe)."""

  def put(x: Any, sharding: NamedSharding) -> jax.Array:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # already a global array: let JAX reshard it
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  try:
    return jax.tree.map(put, tree, shardings)
  except ValueError as e:
    raise ValueError(f"Tree does not match the sharding tree: {e}") from None


# ----------------------------------------------------------------------------------------------
# Jitted steps
# ----------------------------------------------------------------------------------------------


class MeshFunction:
  """A jitted function that always runs inside its mesh and logical axis rules.

  `nn.with_logical_constraint` reads the mesh and rules from context at trace time; entering
  them on every call (cheap Python) means callers cannot forget them, and the compiled
  executable is cached across calls as usual.

  Attributes:
    jitted: the underlying `jax.jit` object (for `.lower(...).compile()`, cost analysis, ...).
    mesh: the device mesh.
    rules: the logical axis rules.
  """

  def __init__(self, jitted: Any, mesh: Mesh, rules: LogicalRules):
    self.jitted = jitted
    self.mesh = mesh
    self.rules = rules

  def __call__(self, *args: Any) -> Any:
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self.jitted(*args)

  def lower(self, *args: Any) -> Any:
    """`jax.jit(...).lower(*args)` inside the mesh and rules."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
      return self.jitted.lower(*args)


def jit_train_step(
  train_step: Callable[..., tuple[TrainState, PyTree]],
  mesh: Mesh,
  rules: LogicalRules,
  state_shardings: TrainState,
  frozen_shardings: PyTree | None = None,
  *,
  donate_state: bool = True,
) -> MeshFunction:
  """Jits `train_step(state, batch[, frozen]) -> (state, metrics)` with explicit shardings.

  The state keeps its shardings from step to step (in and out shardings are the same tree, so
  nothing is resharded and nothing recompiles); the batch is split over all devices on its
  leading dimension; metrics are replicated scalars. The input state is donated: its buffers are
  reused for the output, so the caller must not touch the old state after the call.

  With `frozen_shardings` the step takes a third argument, the frozen tree (a teacher's
  parameters, ...), laid out by those shardings. It is an argument, not a closure: closed-over
  arrays would be baked into the executable as constants (a copy per compile, and a recompile
  for new values). It is never donated, so the same arrays serve every step.

  Args:
    train_step: from `steps.make_train_step`.
    mesh: the device mesh.
    rules: logical axis rules.
    state_shardings: `train_state_shardings(...)`.
    frozen_shardings: the frozen tree's shardings (e.g. from `params_shardings`), or None for a
      step without one.
    donate_state: donate the input state's buffers.

  Returns:
    A `MeshFunction` to call as `step(state, batch)`, or `step(state, batch, frozen)`.
  """
  out_shardings = (state_shardings, replicated(mesh))
  donate = (0,) if donate_state else ()
  if frozen_shardings is None:

    def step_without_frozen(state: TrainState, batch: PyTree) -> tuple[TrainState, PyTree]:
      return train_step(state, batch)

    jitted = jax.jit(
      step_without_frozen,
      in_shardings=(state_shardings, batch_sharding(mesh)),
      out_shardings=out_shardings,
      donate_argnums=donate,
    )
  else:
    jitted = jax.jit(
      train_step,
      in_shardings=(state_shardings, batch_sharding(mesh), frozen_shardings),
      out_shardings=out_shardings,
      donate_argnums=donate,
    )
  return MeshFunction(jitted, mesh, rules)


def jit_eval_step(
  eval_step: Callable[..., PyTree],
  mesh: Mesh,
  rules: LogicalRules,
  params_shardings: PyTree,
  collections_shardings: PyTree | None = None,
  *,
  replicate_outputs: bool = True,
) -> MeshFunction:
  """Jits `eval_step(params, batch[, collections]) -> outputs`.

  Args:
    eval_step: from `steps.make_eval_step`.
    mesh: the device mesh.
    rules: logical axis rules.
    params_shardings: the parameters' shardings (`train_state_shardings(...).params`).
    collections_shardings: the model collections' shardings (`...collections`) when the model
      has any; the step then takes them as a third argument.
    replicate_outputs: gather the outputs onto every device, so that every process can
      `jax.device_get` them (multi-host); when False, XLA keeps them batch-sharded.

  Returns:
    A `MeshFunction` to call as `eval(params, batch)` (or `eval(params, batch, collections)`).
  """
  if collections_shardings:
    fn, in_shardings = eval_step, (params_shardings, batch_sharding(mesh), collections_shardings)
  else:

    def fn(params: PyTree, batch: PyTree) -> PyTree:
      return eval_step(params, batch)

    in_shardings = (params_shardings, batch_sharding(mesh))
  jitted = jax.jit(
    fn,
    in_shardings=in_shardings,
    out_shardings=replicated(mesh) if replicate_outputs else None,
  )
  return MeshFunction(jitted, mesh, rules)


# ----------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------


def count_params(params: PyTree) -> int:
  """Number of scalars in a (possibly abstract or boxed) parameter tree."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.meta.unbox(params)))


def describe_setup(
  mesh: Mesh, global_batch_size: int, num_params: int, rules_name: str = ""
) -> str:
  """One start-up line: devices, processes, mesh shape, global batch and parameter count."""
  devices = mesh.devices.size
  per_device = global_batch_size / devices
  kind = jax.devices()[0].device_kind
  rules = f" rules={rules_name}" if rules_name else ""
  return (
    f"devices={devices} ({jax.local_device_count()} local, {kind}) "
    f"processes={jax.process_count()} (this={jax.process_index()}) "
    f"mesh={dict(mesh.shape)}{rules} global_batch={global_batch_size} "
    f"(per device {per_device:g}) params={num_params:,}"
  )


def log_setup(mesh: Mesh, global_batch_size: int, num_params: int, rules_name: str = "") -> str:
  """Logs `describe_setup(...)` at INFO level and returns it."""
  line = describe_setup(mesh, global_batch_size, num_params, rules_name)
  logger.info("%s", line)
  return line


def format_shardings(tree: PyTree) -> str:
  """One line per leaf: path, shape, dtype and PartitionSpec (arrays or ShapeDtypeStructs)."""
  lines = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    sharding = getattr(leaf, "sharding", None)
    spec = sharding.spec if isinstance(sharding, NamedSharding) else sharding
    dtype = getattr(leaf, "dtype", type(leaf).__name__)
    shape = tuple(getattr(leaf, "shape", ()))
    lines.append(f"{jax.tree_util.keystr(path)} {shape} {dtype} {spec}")
  return "\n".join(lines)


def print_shardings(tree: PyTree, print_fn: Callable[[str], Any] = print) -> None:
  """Prints `format_shardings(tree)` (pass `logger.info` to log instead)."""
  print_fn(format_shardings(tree))


def spec_tree(shardings: PyTree) -> PyTree:
  """PartitionSpecs of a tree of NamedShardings (for golden comparisons)."""
  return jax.tree.map(lambda s: s.spec, shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
