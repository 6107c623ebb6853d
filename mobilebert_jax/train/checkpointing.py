"""Training checkpoints on Orbax (the only module of the package that imports Orbax).

A checkpoint directory holds one sub-directory per saved step:

    <directory>/<step>/state/      the `TrainState` (params, opt_state, step, rng), OCDBT arrays
    <directory>/<step>/data/       JSON: the data iterator's state (`iterator.get_state()`)
    <directory>/<step>/metadata/   JSON: model config, training config, code revision, versions,
                                   step, metrics, mesh
    <directory>/<step>/metrics/    JSON: the metrics used to rank checkpoints (when tracked)

Saves are asynchronous: `save` returns once the arrays are copied off the devices (so the next
train step may donate and overwrite them) and a background thread writes the files. Orbax writes
each step into a temporary `<step>.orbax-checkpoint-tmp*` directory and renames it when complete,
so a run killed mid-save leaves a temporary directory that is never taken for a checkpoint (the
next writing manager deletes it before its first save); the previous complete step stays the
latest.

Retention: the last `max_to_keep` checkpoints, plus the best `keep_best` by `best_metric`
(e.g. dev F1) among checkpoints saved with metrics.

Restoring takes an abstract state whose leaves carry their target shardings
(`sharding.abstract_train_state`), so a checkpoint written on one mesh restores onto any other
(or onto one device). `load_params_from_checkpoint` restores parameters only, possibly into a
different model class (pre-training checkpoint -> QA model: take the `mobilebert` subtree).

Orbax API choice: the v0 `CheckpointManager` with `args.Composite` items, rather than the v1
`training.Checkpointer`, which orbax-checkpoint 0.12.x still ships under `experimental/`. The v0
manager takes the same save-decision and preservation policy objects, writes asynchronously,
tracks metrics across restarts, and supports partial restores; this wrapper keeps a later move to
v1 a change to this file only.

Faults: every save records a fingerprint of each array (`fingerprints`) in the metadata, and a
restore compares them, because Orbax's array files carry no checksum and corrupted bytes would
otherwise restore silently as other numbers. `restore_or_fall_back` skips a checkpoint that does
not restore (unreadable or altered files), moves it aside into `<directory>.unreadable/` (never
deleting it) and takes the next older one. An asynchronous write that failed (no space, no
permission) is raised on the main thread at the next save or at `close()`, as one
`CheckpointWriteError` naming the directory, the cause and the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import flax
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import NamedSharding
from orbax.checkpoint import checkpoint_managers as ocp_managers

from mobilebert_jax.errors import (
  CheckpointError,
  CheckpointWriteError,
  CorruptCheckpointError,
)
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import fingerprints, summaries

PyTree = Any
logger = logging.getLogger(__name__)

STATE_ITEM = "state"
DATA_ITEM = "data"
METADATA_ITEM = "metadata"
_ITEMS = (STATE_ITEM, DATA_ITEM, METADATA_ITEM)
FORMAT_NAME = "mobilebert_jax.train_checkpoint"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Provenance
# ----------------------------------------------------------------------------------------------


@functools.cache
def code_revision() -> dict[str, Any]:
  """The package version and, when the package runs from a git checkout, the commit.

  Returns:
    {"package_version": str, "git_sha": str | None, "git_dirty": bool | None}; git fields are
    None outside a checkout or without git.
  """
  from mobilebert_jax import __version__  # here: the package __init__ may import this module

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sha = dirty = None
  try:
    run = functools.partial(
      subprocess.run, cwd=root, capture_output=True, text=True, timeout=10, check=True
    )
    sha = run(["git", "rev-parse", "HEAD"]).stdout.strip() or None
    if sha is not None:
      dirty = bool(run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    pass
  return {"package_version": __version__, "git_sha": sha, "git_dirty": dirty}


def _library_versions() -> dict[str, str]:
  return {
    "jax": jax.__version__,
    "flax": flax.__version__,
    "optax": optax.__version__,
    "orbax_checkpoint": getattr(ocp, "__version__", "unknown"),
  }


def _to_json_value(value: Any, where: str) -> Any:
  """Converts configs to JSON values: mappings, sequences, scalars; repr() for the rest."""
  if hasattr(value, "to_dict") and callable(value.to_dict):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _to_json_value(v, f"{where}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (np.generic, np.ndarray, jax.Array)) and np.ndim(value) == 0:
    return np.asarray(value).item()
  # Callables, paths, enums, ...: recorded for provenance, not for reconstruction.
  logger.debug("checkpoint metadata: %s stored as its repr()", where)
  return repr(value)


def _fetch_scalar(x: Any) -> Any:
  """A Python scalar from a (possibly multi-host replicated) scalar array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)
  return np.asarray(x).item()


def _mesh_description(state: PyTree) -> dict[str, int] | None:
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      return {str(k): int(v) for k, v in sharding.mesh.shape.items()}
  return None


# ----------------------------------------------------------------------------------------------
# Tree checks (clear errors before Orbax's)
# ----------------------------------------------------------------------------------------------


def _stored_shape(leaf: Any) -> tuple[int, ...]:
  """A leaf's shape as stored: typed PRNG keys are stored as their uint32 key data."""
  if not hasattr(leaf, "shape"):
    return ()
  dtype = getattr(leaf, "dtype", None)
  if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return tuple(jax.eval_shape(jax.random.key_data, leaf).shape)
  return tuple(leaf.shape)


def _flatten_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  return {
    "/".join(_key_name(k) for k in path): _stored_shape(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
  }


def _key_name(key: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _compare_trees(
  saved: PyTree, target: PyTree, what: str, allow_extra_saved: bool = False
) -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped leaves."""
  saved_shapes = _flatten_shapes(saved)
  target_shapes = _flatten_shapes(target)
  missing = sorted(set(target_shapes) - set(saved_shapes))
  extra = [] if allow_extra_saved else sorted(set(saved_shapes) - set(target_shapes))
  mismatched = sorted(
    f"{k}: checkpoint {saved_shapes[k]} vs target {target_shapes[k]}"
    for k in set(saved_shapes) & set(target_shapes)
    if saved_shapes[k] != target_shapes[k]
  )
  if missing or extra or mismatched:
    parts = []
    if missing:
      parts.append(f"missing from the checkpoint: {_clip(missing)}")
    if extra:
      parts.append(f"in the checkpoint but not in the target: {_clip(extra)}")
    if mismatched:
      parts.append(f"shape mismatches: {_clip(mismatched)}")
    raise ValueError(f"{what} does not match the target tree; " + "; ".join(parts))


def _clip(items: Sequence[str], limit: int = 8) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _abstract(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs carrying shardings (arrays are converted; structs kept)."""

  def one(x: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None)
    if sharding is None:
      raise ValueError(
        "restore targets need a sharding on every leaf (use sharding.abstract_train_state, or "
        f"jax.ShapeDtypeStruct(..., sharding=...)); got {x!r}"
      )
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)


# ----------------------------------------------------------------------------------------------
# The manager
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RestoredCheckpoint:
  """What `CheckpointManager.restore` returns.

  Attributes:
    step: the restored step.
    state: the train state, laid out as the abstract target said.
    data_state: the data iterator state saved with it (None if none was saved).
    metadata: the checkpoint's metadata JSON (configs, code revision, metrics, ...).
  """

  step: int
  state: PyTree
  data_state: Any
  metadata: dict[str, Any]


class CheckpointManager:
  """Periodic asynchronous checkpoints of a training run, with resume.

  Use as a context manager (or call `close()`), which waits for pending writes:

      with CheckpointManager(workdir / "checkpoints", save_interval_steps=1000, max_to_keep=3,
                             best_metric="f1", model_config=config, train_config=cfg) as ckpt:
        if ckpt.latest_step() is not None:
          restored = ckpt.restore(sharding.abstract_train_state(model, tx, mesh, rules))
          state, step = restored.state, restored.step
          iterator.set_state(restored.data_state)
        else:
          state, step = sharding.create_train_state(model, tx, mesh, rules, rng=seed), 0
        while step < total_steps:
          batch = distributed.global_batch_from_local(next(iterator), batch_sharding)
          state, metrics = train_step(state, batch)
          step += 1  # counted on the host: reading state.step would wait for the device
          scores = {"f1": evaluate(state.params)} if step % eval_every == 0 else None
          ckpt.save(step, state, data_state=iterator.get_state(), metrics=scores,
                    force=scores is not None)

  Call `save` every step: it returns False at once (without touching the devices) when the
  step is not due. Keep-best only ranks checkpoints saved with `metrics` (e.g. {"f1": 88.1}),
  and a step is saved once, so evaluate before saving the step and pass the scores to that save
  (as above).

  Args:
    directory: the root directory (created if missing, unless `read_only`).
    save_interval_steps: save when `step % save_interval_steps == 0` (None: only `force=True`
      saves and saves on a preemption notice).
    max_to_keep: keep this many most recent checkpoints (None keeps all).
    best_metric: name of the metric ranking checkpoints; None disables keep-best.
    best_mode: "max" (F1, accuracy) or "min" (loss) for `best_metric`.
    keep_best: how many best checkpoints to keep in addition to the recent ones.
    async_save: write in a background thread (False: `save` blocks until written).
    model_config: the `MobileBertConfig` (or its dict) to record in every checkpoint.
    train_config: the training configuration (a dict or `ConfigDict`) to record.
    read_only: open an existing directory for reading only (evaluation, `--init_from`).

  Raises:
    ValueError: invalid retention settings.
  """

  def __init__(
    self,
    directory: str | os.PathLike[str],
    *,
    save_interval_steps: int | None = None,
    max_to_keep: int | None = 3,
    best_metric: str | None = None,
    best_mode: Literal["max", "min"] = "max",
    keep_best: int = 1,
    async_save: bool = True,
    model_config: MobileBertConfig | Mapping[str, Any] | None = None,
    train_config: Any = None,
    read_only: bool = False,
  ):
    if save_interval_steps is not None and save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1 or None, got {save_interval_steps}")
    if max_to_keep is not None and max_to_keep < 1:
      raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
    if best_mode not in ("max", "min"):
      raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
    if best_metric is not None and keep_best < 1:
      raise ValueError(f"keep_best must be >= 1 when best_metric is set, got {keep_best}")
    self.directory = epath.Path(os.fspath(directory)).absolute()
    self.best_metric = best_metric
    self.best_mode = best_mode

    save_policies: list[Any] = [ocp_managers.PreemptionCheckpointingPolicy()]
    if save_interval_steps is not None:
      save_policies.insert(0, ocp_managers.FixedIntervalPolicy(save_interval_steps))
    keep: list[Any] = [ocp_managers.LatestN(n=max_to_keep)]
    best_fn = None
    if best_metric is not None:
      best_fn = functools.partial(_metric_value, name=best_metric)
      keep.append(
        ocp_managers.BestN(
          get_metric_fn=best_fn,
          reverse=best_mode == "min",
          n=keep_best,
          keep_checkpoints_without_metrics=False,
        )
      )
    options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp_managers.AnySavePolicy(save_policies),
      preservation_policy=ocp_managers.AnyPreservationPolicy(keep),
      # Orbax writes a step's metrics (and re-reads them after a restart, so the best checkpoint
      # survives resumption) only when it "tracks the best": best_fn must be set for that,
      # although the preservation policy above is what decides retention.
      best_fn=best_fn,
      best_mode=best_mode,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,
      read_only=read_only,
      create=not read_only,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
    self._pending_step: int | None = None  # the step of the last save started
    self._base_metadata: dict[str, Any] = {
      "format": FORMAT_NAME,
      "format_version": FORMAT_VERSION,
      "model_config": _to_json_value(model_config, "model_config"),
      "train_config": _to_json_value(train_config, "train_config"),
      "code": code_revision(),
      "versions": _library_versions(),
    }

  # -- queries -----------------------------------------------------------------------------------

  def all_steps(self) -> list[int]:
    """The complete checkpoints' steps, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The most recent complete checkpoint's step (None if there is none)."""
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    """The step with the best `best_metric` (None without a tracked metric or checkpoints)."""
    if self.best_metric is None:
      return None
    ranked = [
      (float(m[self.best_metric]), s)
      for s in self.all_steps()
      if (m := self._manager.metrics(s)) is not None and self.best_metric in m
    ]
    if not ranked:
      return None
    pick = max if self.best_mode == "max" else min
    return pick(ranked)[1]

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` would save (interval due or preemption notice)."""
    return self._manager.should_save(step)

  def metadata(self, step: int | None = None) -> dict[str, Any]:
    """The metadata JSON of a checkpoint (default: the latest).

    Raises:
      FileNotFoundError: no such checkpoint.
    """
    step = self._resolve_step(step)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(**{METADATA_ITEM: ocp.args.JsonRestore()})
    )
    return dict(restored[METADATA_ITEM])

  # -- save --------------------------------------------------------------------------------------

  def save(
    self,
    step: int,
    state: PyTree,
    *,
    data_state: Any = None,
    metrics: Mapping[str, Any] | None = None,
    force: bool = False,
  ) -> bool:
    """Saves `state` as step `step` if due (or if `force`).

    Args:
      step: the state's step (its `state.step`; checked when the save happens).
      state: the train state (sharded arrays; never copied whole to one host).
      data_state: JSON-serialisable data iterator state, captured *after* the batch of `step`
        was drawn, so that restoring it yields the batch of step `step + 1` next.
      metrics: scalar metrics of this state (e.g. dev F1); needed for keep-best.
      force: save even if the interval is not due.

    Returns:
      True if a save was started.

    Raises:
      ValueError: `state.step` differs from `step`, metrics without the tracked metric, or
        (multi-host) processes passing different data states.
    """
    step = int(step)
    if not force and not self._manager.should_save(step):
      return False
    if step in self._manager.all_steps() or step == self._pending_step:
      logger.info("checkpoint for step %d already exists; not saving it again", step)
      return False
    state_step = getattr(state, "step", None)
    if state_step is not None and _fetch_scalar(state_step) != step:
      raise ValueError(f"save(step={step}) got a state whose step is {_fetch_scalar(state_step)}")
    metrics_json = None
    if metrics is not None:
      metrics_json = {str(k): float(_fetch_scalar(v)) for k, v in metrics.items()}
      if self.best_metric is not None and self.best_metric not in metrics_json:
        raise ValueError(
          f"metrics {sorted(metrics_json)} lack the tracked metric {self.best_metric!r}"
        )
    data_json = {"iterator": _to_json_value(data_state, "data_state")}
    _check_same_on_all_processes(data_json)
    self._raise_failed_writes()
    metadata = dict(self._base_metadata)
    metadata.update(
      fingerprints=fingerprints.compute(state),
      step=step,
      saved_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      metrics=metrics_json,
      mesh=_mesh_description(state),
      process_count=jax.process_count(),
    )
    args = ocp.args.Composite(
      **{
        STATE_ITEM: ocp.args.StandardSave(state),
        DATA_ITEM: ocp.args.JsonSave(data_json),
        METADATA_ITEM: ocp.args.JsonSave(metadata),
      }
    )
    # Metrics only go to Orbax when keep-best is on: they rank checkpoints there.
    try:
      saved = self._manager.save(
        step, args=args, metrics=metrics_json if self.best_metric else None, force=True
      )
    except Exception as e:  # the previous save's failure surfaces here, as any error type
      raise self._write_error(self._failed_step(step), e) from e
    if saved:
      self._pending_step = step
      logger.info("checkpoint save started: step %d -> %s", step, self.directory)
    return saved

  # -- restore -----------------------------------------------------------------------------------

  def restore(self, abstract_state: PyTree, step: int | None = None) -> RestoredCheckpoint:
    """Restores a checkpoint onto the layout of `abstract_state`.

    Args:
      abstract_state: the target tree (e.g. `sharding.abstract_train_state(...)`): leaves are
        `jax.ShapeDtypeStruct`s (or arrays) with the target sharding, which may be on a mesh of
        any shape; the dtype may differ from the saved one (it is cast).
      step: the step to restore (default: the latest).

    Returns:
      A `RestoredCheckpoint`.

    Raises:
      FileNotFoundError: no checkpoint (at that step).
      ValueError: the target's structure or shapes differ from the checkpoint's.
    """
    step = self._resolve_step(step)
    target = _abstract(abstract_state)
    try:
      saved_tree = self._manager.item_metadata(step)[STATE_ITEM]
    except Exception as e:  # unreadable metadata files: any exception type of any layer
      raise CorruptCheckpointError(step, _one_line(e), str(self.directory)) from e
    if saved_tree is not None:
      saved_tree = getattr(saved_tree, "tree", saved_tree)
      _compare_trees(saved_tree, _state_as_saved(target), f"checkpoint step {step}")
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          **{
            STATE_ITEM: ocp.args.StandardRestore(target),
            DATA_ITEM: ocp.args.JsonRestore(),
            METADATA_ITEM: ocp.args.JsonRestore(),
          }
        ),
      )
    except Exception as e:  # TensorStore, JSON, asyncio, OS errors: the files are bad
      raise CorruptCheckpointError(step, _one_line(e), str(self.directory)) from e
    metadata = dict(restored[METADATA_ITEM] or {})
    bad = fingerprints.mismatches(metadata.get("fingerprints") or {}, restored[STATE_ITEM])
    if bad:
      raise CorruptCheckpointError(
        step,
        f"{len(bad)} array(s) differ from what was saved ({_clip(bad, 3)})",
        str(self.directory),
      )
    data = restored[DATA_ITEM]
    return RestoredCheckpoint(
      step=step,
      state=restored[STATE_ITEM],
      data_state=None if data is None else data.get("iterator"),
      metadata=metadata,
    )

  def restore_or_fall_back(
    self, abstract_state: PyTree, step: int | None = None
  ) -> RestoredCheckpoint:
    """Restores `step`, or else the newest checkpoint that restores.

    Without `step`, checkpoints are tried from the newest down; each one that does not restore
    (`CorruptCheckpointError`) is reported in one log line and moved aside into
    `<directory>.unreadable/<step>` for a person to inspect, and the next older one is tried.

    Args:
      abstract_state: the target tree, as for `restore`.
      step: restore exactly this step (a user's pin): its failure is raised, nothing moves.

    Returns:
      The `RestoredCheckpoint`.

    Raises:
      CheckpointError: no checkpoint restores (every failure is listed), or the pinned one
        does not exist or does not restore.
      ValueError: the target tree does not match the checkpoints (the wrong model).
    """
    if step is not None:
      if step not in self.all_steps():
        raise CheckpointError(
          f"no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}"
        )
      return self.restore(abstract_state, step)
    failures = []
    for candidate in reversed(self.all_steps()):
      try:
        return self.restore(abstract_state, candidate)
      except CorruptCheckpointError as e:
        moved_to = self._set_aside(candidate)
        logger.warning("%s; moved it to %s and trying the previous one", e, moved_to)
        failures.append(f"step {candidate}: {e.reason} (moved to {moved_to})")
    if not failures:
      raise CheckpointError(f"no complete checkpoint in {self.directory}")
    raise CheckpointError(
      f"no checkpoint in {self.directory} restores: {'; '.join(failures)}. Inspect them, or "
      "start afresh with another --workdir"
    )

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` into `<directory>.unreadable/` (process 0; all wait for it)."""
    aside = epath.Path(unreadable_directory(self.directory))
    target = aside / str(step)
    if jax.process_index() == 0:
      aside.mkdir(parents=True, exist_ok=True)
      suffix = 1
      while target.exists():  # an earlier run set aside the same step: keep both
        target, suffix = aside / f"{step}.{suffix}", suffix + 1
      os.rename(self.directory / str(step), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
    self._manager.reload()
    return str(target)

  # -- lifecycle ---------------------------------------------------------------------------------

  def wait_until_finished(self) -> None:
    """Blocks until pending asynchronous saves are written (and old ones deleted).

    Raises:
      CheckpointWriteError: a pending save failed.
    """
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # the background writer's error, re-raised here
      raise self._write_error(self._pending_step, e) from e
    self._raise_failed_writes()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads.

    Raises:
      CheckpointWriteError: a pending save failed (the manager is closed all the same).
    """
    try:
      self.wait_until_finished()
    finally:
      self._manager.close()

  def _raise_failed_writes(self) -> None:
    """Raises the error of a finished asynchronous save, if one failed."""
    try:
      self._manager.check_for_errors()
    except Exception as e:
      raise self._write_error(self._pending_step, e) from e

  def _failed_step(self, current: int) -> int:
    """The step whose write failed: the pending one if it never completed, else `current`."""
    pending = self._pending_step
    return pending if pending is not None and pending not in self.all_steps() else current

  def _write_error(self, step: int | None, cause: BaseException) -> CheckpointWriteError:
    latest = [s for s in self._manager.all_steps() if s != step]
    last_good = (
      f"the last good checkpoint is step {max(latest)}" if latest else "no checkpoint was saved"
    )
    return CheckpointWriteError(
      f"could not write checkpoint step {step} to {self.directory}: {_one_line(cause)}; "
      f"{last_good} (free space or fix permissions there, then rerun to resume)"
    )

  def __enter__(self) -> CheckpointManager:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()

  def _resolve_step(self, step: int | None) -> int:
    steps = self._manager.all_steps()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    elif step not in steps:
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory}; available: {sorted(steps)}"
      )
    return int(step)


def read_metadata(root: str | os.PathLike[str], step: int | None = None) -> dict[str, Any]:
  """The metadata JSON of one checkpoint under `root` (default: the latest), opened read-only.

  Orbax's routine warnings of a read-only open (no saving, no per-item metadata file) are kept
  quiet; its errors still show.

  Raises:
    FileNotFoundError: no such checkpoint.
  """
  with summaries.quiet_library_logs(level=logging.ERROR):
    manager = CheckpointManager(root, read_only=True)
    try:
      return manager.metadata(step)
    finally:
      manager.close()


def unreadable_directory(directory: str | os.PathLike[str]) -> str:
  """Where `restore_or_fall_back` moves the checkpoints of `directory` that do not restore."""
  directory = os.path.abspath(os.fspath(directory))
  return f"{directory}.unreadable"


def _one_line(error: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message`, for one-line reports of a library's error.

  TensorStore appends its whole JSON spec to the first line; that part is dropped, and what
  is left is cut at `limit` characters.
  """
  lines = str(error).strip().splitlines()
  text = (lines[0] if lines else "").split(" [tensorstore_spec", 1)[0]
  if len(text) > limit:  # keep both ends: what was being done, and the OS's reason at the end
    text = f"{text[: limit // 2]} ... {text[-(limit // 2) :]}"
  return f"{type(error).__name__}: {text}".rstrip(": ")


def _metric_value(metrics: Mapping[str, Any], name: str) -> float:
  return float(metrics[name])


def _state_as_saved(state: PyTree) -> PyTree:
  """The nested-dict view Orbax's metadata uses for a (dataclass) state tree."""
  if dataclasses.is_dataclass(state) and not isinstance(state, type):
    return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
  return state


def _check_same_on_all_processes(value: Any) -> None:
  """Raises if processes disagree on a JSON value (only one copy is written)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils

  digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).digest()
  multihost_utils.assert_equal(
    np.frombuffer(digest, dtype=np.uint8),
    fail_message="processes passed different data iterator states to save(); the iterator "
    "state must describe the global position (it is written once, by process 0)",
  )


# ----------------------------------------------------------------------------------------------
# Parameters only
# ----------------------------------------------------------------------------------------------


def _find_state_dir(path: epath.Path, step: int | None) -> epath.Path:
  if (path / STATE_ITEM).is_dir():  # a step directory
    if step is not None:
      raise ValueError(f"{path} is a single checkpoint; do not pass step={step}")
    return path / STATE_ITEM
  if (path / "_METADATA").exists() and path.name == STATE_ITEM:  # the state item itself
    return path
  if not path.is_dir():
    raise FileNotFoundError(f"no checkpoint directory at {path}")
  manager = CheckpointManager(path, read_only=True)
  try:
    return path / str(manager._resolve_step(step)) / STATE_ITEM
  finally:
    manager.close()


def _subtree(tree: Mapping[str, Any], source: str, where: str) -> Any:
  node: Any = tree
  for part in [p for p in source.split("/") if p]:
    if not isinstance(node, Mapping) or part not in node:
      keys = sorted(node) if isinstance(node, Mapping) else type(node).__name__
      raise ValueError(f"{where}: no {source!r} in the checkpoint's params (found {keys})")
    node = node[part]
  return node


def _nest(source: str, value: Any) -> Any:
  for part in reversed([p for p in source.split("/") if p]):
    value = {part: value}
  return value


def _saved_tree(checkpointer: ocp.PyTreeCheckpointer, state_dir: epath.Path) -> Any:
  """The metadata tree of a saved train state (shapes and dtypes, no arrays)."""
  saved = checkpointer.metadata(state_dir)
  saved = getattr(saved, "item_metadata", saved)
  return getattr(saved, "tree", saved)


def _restore_part(
  checkpointer: ocp.PyTreeCheckpointer, state_dir: epath.Path, item: PyTree
) -> PyTree:
  """Restores only the entries of the saved state that `item` names, as `item` lays them out."""
  return checkpointer.restore(
    state_dir,
    args=ocp.args.PyTreeRestore(
      item=item,
      restore_args=ocp.checkpoint_utils.construct_restore_args(item),
      partial_restore=True,
    ),
  )


def load_params_from_checkpoint(
  path: str | os.PathLike[str],
  abstract_params: Mapping[str, Any],
  *,
  step: int | None = None,
  subtrees: Sequence[str] | Mapping[str, str] | None = None,
) -> dict[str, Any]:
  """Restores parameters only from one of our training checkpoints (for `--init_from`).

  The optimizer state is not read. The target may be a different model class: give the
  subtrees to take, e.g. `subtrees=["mobilebert"]` to start a QA model from a pre-training
  checkpoint (its `cls` head and `pooler` are ignored), or `subtrees={"mobilebert": ""}` to take
  a bare `MobileBertModel`'s parameters (the checkpoint's whole params tree) as the encoder.

  Args:
    path: a checkpoint root (the latest, or `step`, is used), one step directory, or its
      `state` directory.
    abstract_params: the target parameter tree (`jax.ShapeDtypeStruct` leaves with target
      shardings, or arrays); with `subtrees`, only its entries named there are used.
    step: the step to read from a root directory (default: the latest).
    subtrees: None to restore the whole `abstract_params`; a list of top-level keys to take
      from the same keys of the checkpoint; or a mapping target key -> source path in the
      checkpoint's params ("a/b" for nested, "" for the whole tree).

  Returns:
    The restored parameters: the whole tree, or a dict with just the requested top-level keys
    (merge it into freshly initialised parameters for the rest).

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    ValueError: a requested subtree or leaf is missing from the checkpoint or has another shape.
  """
  state_dir = _find_state_dir(epath.Path(os.fspath(path)).absolute(), step)
  checkpointer = ocp.PyTreeCheckpointer()
  try:
    saved = _saved_tree(checkpointer, state_dir)
    if not isinstance(saved, Mapping) or "params" not in saved:
      raise ValueError(f"{state_dir} is not a train-state checkpoint (no 'params')")
    saved_params = saved["params"]
    if subtrees is None:
      plan = {None: ""}
    elif isinstance(subtrees, Mapping):
      plan = dict(subtrees)
    else:
      plan = {key: key for key in subtrees}
    out: dict[str, Any] = {}
    for target_key, source in plan.items():
      target = abstract_params if target_key is None else abstract_params[target_key]
      target = _abstract_or_local(target)
      where = f"{state_dir} params/{source}"
      _compare_trees(_subtree(saved_params, source, where), target, where, allow_extra_saved=True)
      item = {"params": _nest(source, target)}
      restored = _restore_part(checkpointer, state_dir, item)
      value = _subtree(restored["params"], source, where)
      if target_key is None:
        return value
      out[target_key] = value
    return out
  finally:
    checkpointer.close()


def load_collections_from_checkpoint(
  path: str | os.PathLike[str], step: int | None = None
) -> dict[str, PyTree]:
  """Every non-parameter variable collection of a train-state checkpoint (`TrainState.collections`).

  For example the learned activation ranges of quantization-aware training. The arrays come
  back on the first local device, as saved.

  Args:
    path: a checkpoint root (the latest, or `step`, is used), one step directory, or its
      `state` directory.
    step: the step to read from a root directory (default: the latest).

  Returns:
    Collection name -> its tree; empty when the state saved none.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
  """
  state_dir = _find_state_dir(epath.Path(os.fspath(path)).absolute(), step)
  with ocp.PyTreeCheckpointer() as checkpointer:
    saved = _saved_tree(checkpointer, state_dir)
    stored = saved.get("collections") if isinstance(saved, Mapping) else None
    if not stored or not jax.tree.leaves(stored):
      return {}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    item = {
      "collections": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), stored
      )
    }
    restored = _restore_part(checkpointer, state_dir, item)
  return dict(restored["collections"])


def _abstract_or_local(tree: PyTree) -> PyTree:
  """ShapeDtypeStructs; leaves without a sharding go to the first local device."""
  local = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def one(x: Any) -> jax.ShapeDtypeStruct:
    sharding = getattr(x, "sharding", None) or local
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

  return jax.tree.map(one, tree)
