"""The start and the end of a run, the same for every trainer.

A trainer (`mobilebert_jax.trainers`) calls these in the order a run happens:

    resume = setup.find_resume(workdir, config, run_name)   # before any data is read
    tokenizer = setup.run_tokenizer(config, workdir)
    devices = setup.make_devices(config)                    # mesh, rules, batch checks
    initial = setup.first_weights(config, run_model, tokenizer, resume)
    ...  # model, optimizer, jitted steps, data iterator, checkpoint manager, metric writer
    start = setup.start_train_state(...)                    # restored, built or initialised
    setup.record_start(...)                                 # start-up line and run files
    ...  # loop.run_train_loop
    setup.record_final_metrics(...)                         # eval_metrics.json

The resume rule: a workdir with a checkpoint resumes from it (the newest that restores, or
`config.resume_step`), with the data iterator's position and the dropout keys; the checkpoint
then fixes the model (only `initialization.RESUMABLE_MODEL_FIELDS` may change) and
`config.init_from` is ignored. A workdir whose checkpoints were all set aside as corrupt is
refused rather than silently restarted, and so is one holding another kind of run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import optax
from absl import logging
from flax import linen as nn
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model import quantization
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import (
  checkpointing,
  initialization,
  loop,
  run_files,
  sharding,
  steps,
  summaries,
)
from mobilebert_jax.train.train_state import TrainState

ConfigDict = ml_collections.ConfigDict
PyTree = Any


# ----------------------------------------------------------------------------------------------
# Before the data: the workdir's checkpoint and the tokenizer
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Resume:
  """The workdir's checkpoint to resume, if any.

  Attributes:
    checkpoint_dir: `workdir/checkpoints`.
    metadata: the metadata of the checkpoint to resume (None: the run starts afresh).
  """

  checkpoint_dir: str
  metadata: dict[str, Any] | None

  @property
  def resuming(self) -> bool:
    return self.metadata is not None


def find_resume(workdir: str, config: ConfigDict, run_name: str) -> Resume:
  """Looks for a checkpoint to resume in `workdir` (see the module docstring for the rule).

  Args:
    workdir: the run directory (absolute).
    config: the run config (`resume_step`).
    run_name: what this run trains (`config.task`: a task name, or "pretraining"); a checkpoint
      of another kind of run is refused.

  Raises:
    RunConfigError: the workdir holds a checkpoint of another kind of run.
    CheckpointError: `resume_step` has no readable checkpoint, or every checkpoint of the
      workdir was set aside as unreadable.
  """
  checkpoint_dir = os.path.join(workdir, run_files.CHECKPOINTS_DIR)
  metadata = run_files.latest_checkpoint_metadata(checkpoint_dir, config.resume_step)
  if metadata is None:
    run_files.refuse_if_checkpoints_were_lost(checkpoint_dir)
    return Resume(checkpoint_dir, None)
  saved = (metadata.get("train_config") or {}).get("task")
  if saved != run_name:
    raise RunConfigError(
      f"{checkpoint_dir} holds a checkpoint of task {saved!r}, not {run_name!r}: use "
      "another --workdir (or pass the old one as --init_from to start from its weights)"
    )
  return Resume(checkpoint_dir, metadata)


def run_tokenizer(config: ConfigDict, workdir: str) -> Any:
  """The run's tokenizer (`initialization.find_vocab_file`); process 0 keeps its vocabulary.

  Raises:
    FileNotFoundError: no vocabulary anywhere, or `tokenizer.vocab_file` does not exist.
  """
  vocab_file = initialization.find_vocab_file(config, workdir)
  tokenizer = initialization.load_tokenizer(vocab_file, config.tokenizer.do_lower_case)
  if jax.process_index() == 0:
    initialization.keep_vocab(vocab_file, workdir)
  logging.info("vocabulary %s (%d tokens)", vocab_file, tokenizer.vocab_size)
  return tokenizer


# ----------------------------------------------------------------------------------------------
# Devices
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Devices:
  """The mesh a run trains on and what follows from it.

  Attributes:
    mesh: the (data, fsdp) mesh of `config.mesh_shape`.
    rules: the logical axis rules of `config.sharding_rules`.
    batch_sharding: batch arrays split over every device on their leading dimension.
    eval_batch_size: `config.eval.batch_size` rounded up to a multiple of the device count.
  """

  mesh: Mesh
  rules: sharding.LogicalRules
  batch_sharding: NamedSharding
  eval_batch_size: int


def make_devices(config: ConfigDict) -> Devices:
  """The mesh, rules and batch sharding of `config`, with its batch size checked against them.

  Raises:
    ValueError: a bad mesh shape or rule preset, or a batch that does not split into
      `grad_accum_steps` microbatches that divide over the devices.
  """
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  rules = sharding.logical_axis_rules(config.sharding_rules)
  check_batch_size(config, mesh.size)
  eval_batch_size = -(-config.eval.batch_size // mesh.size) * mesh.size
  return Devices(mesh, rules, sharding.batch_sharding(mesh), eval_batch_size)


def check_batch_size(config: ConfigDict, num_devices: int) -> None:
  """Raises ValueError unless each of the `grad_accum_steps` microbatches divides over devices."""
  per_update = config.batch_size // max(config.grad_accum_steps, 1)
  if config.batch_size % config.grad_accum_steps or per_update % num_devices:
    raise ValueError(
      f"--config.batch_size={config.batch_size} must split into grad_accum_steps="
      f"{config.grad_accum_steps} microbatches that each divide over the {num_devices} devices"
    )


# ----------------------------------------------------------------------------------------------
# The model and the train state
# ----------------------------------------------------------------------------------------------


def first_weights(
  config: ConfigDict, run_model: initialization.RunModel, tokenizer: Any, resume: Resume
) -> initialization.InitialWeights:
  """The run's model config and, for a fresh run, its first weights.

  On resume the model config is the checkpoint's, with the allowed overrides
  (`initialization.resume_model_config`), and `params` is None (the state is restored later);
  otherwise it is `initialization.initial_weights(config, run_model, tokenizer)`.

  Raises:
    RunConfigError: on resume, an override the checkpoint's parameters do not allow.
    FileNotFoundError, ValueError: a fresh run's `init_from` or overrides are bad.
  """
  if not resume.resuming:
    return initialization.initial_weights(config, run_model, tokenizer)
  saved = MobileBertConfig.from_dict(resume.metadata["model_config"], source="hf")
  model_config = initialization.resume_model_config(
    saved, initialization.config_overrides(config, run_model)
  )
  return initialization.InitialWeights(model_config, None, f"resumed from {resume.checkpoint_dir}")


@dataclasses.dataclass(frozen=True)
class StartState:
  """The state a run's loop starts from.

  Attributes:
    state: the sharded train state.
    step: the number of updates already applied.
    weights_source: where its weights come from, for the logs and `run_info.json`.
  """

  state: TrainState
  step: int
  weights_source: str


def start_train_state(
  *,
  config: ConfigDict,
  resume: Resume,
  initial: initialization.InitialWeights,
  model: nn.Module,
  optimizer: optax.GradientTransformation,
  devices: Devices,
  state_shardings: TrainState,
  manager: checkpointing.CheckpointManager,
  data_iterator: Any,
) -> StartState:
  """Restores the workdir's checkpoint, or builds the state around the first weights, or inits.

  On resume the data iterator is moved to the position saved with the checkpoint, so the run
  continues with exactly the batches it would have drawn.

  Args:
    config: the run config (`seed`, `resume_step`).
    resume: from `find_resume`.
    initial: from `first_weights`.
    model: the model.
    optimizer: the optax transformation.
    devices: from `make_devices`.
    state_shardings: `sharding.train_state_shardings(model, optimizer, mesh, rules)`.
    manager: the run's checkpoint manager.
    data_iterator: the training batches (`get_state()` / `set_state()`).

  Raises:
    CheckpointError: no checkpoint restores (each failure listed; the bad ones are set aside).
  """
  if resume.resuming:
    abstract = sharding.abstract_train_state(model, optimizer, devices.mesh, devices.rules)
    restored = manager.restore_or_fall_back(abstract, config.resume_step)
    data_iterator.set_state(restored.data_state)
    source = f"resumed from {resume.checkpoint_dir} step {restored.step}"
    return StartState(restored.state, restored.step, source)
  calibration_batches = config.get("qat_calibration_batches") or 0
  if calibration_batches and initial.params is None:
    raise RunConfigError(
      "qat_calibration_batches calibrates the ranges of a trained float model; set init_from"
    )
  if initial.params is not None:
    collections = sharding.initial_collections(model)
    if calibration_batches:
      collections = calibrated_collections(
        model, initial.params, collections, data_iterator, calibration_batches
      )
    state = sharding.create_train_state_from_params(
      initial.params, optimizer, state_shardings, rng=config.seed, collections=collections
    )
  else:
    state = sharding.create_train_state(
      model, optimizer, devices.mesh, devices.rules, rng=config.seed
    )
  return StartState(state, 0, initial.description)


def calibrated_collections(
  model: nn.Module,
  params: PyTree,
  collections: Mapping[str, PyTree],
  data_iterator: Any,
  num_batches: int,
) -> dict[str, PyTree]:
  """`collections` with QAT ranges calibrated on the next `num_batches` training batches.

  The iterator is put back where it was, so training sees the same batches as without the
  calibration (`quantization.calibrate_ranges` says why calibrate).

  Raises:
    RunConfigError: the model has no QAT ranges.
  """
  if quantization.RANGES not in collections:
    raise RunConfigError(
      "qat_calibration_batches applies only with --config.model.quantization_aware=true"
    )
  position = data_iterator.get_state()
  batches = [steps.default_model_inputs(next(data_iterator)) for _ in range(num_batches)]
  data_iterator.set_state(position)
  ranges = quantization.calibrate_ranges(model, params, collections[quantization.RANGES], batches)
  if jax.process_count() > 1:
    # Each process saw its own rows of the global batches; every process must start alike.
    ranges = widest_ranges(multihost_utils.process_allgather(ranges))
  learned = quantization.learned_ranges({quantization.RANGES: ranges})
  widest = max(max(-low, high) for low, high in learned.values())
  logging.info(
    "QAT ranges calibrated on %d training batches (widest |range| %.3g)", num_batches, widest
  )
  return {**collections, quantization.RANGES: ranges}


def widest_ranges(gathered: PyTree) -> PyTree:
  """QAT ranges stacked on a leading axis (e.g. one per process) -> the range holding them all."""
  return jax.tree_util.tree_map_with_path(
    lambda path, v: v.min(axis=0) if path[-1].key == "min" else v.max(axis=0), gathered
  )


# ----------------------------------------------------------------------------------------------
# What a run records
# ----------------------------------------------------------------------------------------------


def record_start(
  *,
  workdir: str,
  config: ConfigDict,
  model_config: MobileBertConfig,
  devices: Devices,
  start: StartState,
  total_steps: int,
  writer: summaries.MetricWriter,
  what: str,
) -> None:
  """Logs the start-up line and writes the run files and the config summary (process 0).

  Args:
    workdir: the run directory.
    config: the run config.
    model_config: the resolved architecture.
    devices: from `make_devices`.
    start: from `start_train_state`.
    total_steps: the step the run ends at.
    writer: the metric writer.
    what: the run in a few words, first on the start-up line (e.g. the task and data size).
  """
  num_params = sharding.count_params(start.state.params)
  logging.info(
    "%s | %s | steps %d -> %d | weights: %s",
    what,
    sharding.describe_setup(devices.mesh, config.batch_size, num_params, config.sharding_rules),
    start.step,
    total_steps,
    start.weights_source,
  )
  if start.step > total_steps:
    logging.warning("the checkpoint (step %d) is past num_train_steps", start.step)
  if jax.process_index() == 0:
    run_files.write_run_files(
      workdir, config, model_config, start.weights_source, start.step, num_params
    )
    writer.write_text("config", config.to_json_best_effort(indent=2), start.step)


def record_final_metrics(
  workdir: str, writer: summaries.MetricWriter, step: int, metrics: Mapping[str, float]
) -> None:
  """Writes the final evaluation as `eval/...` summaries and `eval_metrics.json` (process 0)."""
  writer.write_scalars(step, {f"eval/{k}": v for k, v in metrics.items()})
  logging.info("final eval (step %d): %s", step, loop.format_metrics(metrics))
  if jax.process_index() == 0:
    run_files.write_json(os.path.join(workdir, run_files.EVAL_METRICS_FILE), dict(metrics))
