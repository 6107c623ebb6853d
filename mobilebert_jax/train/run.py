"""One training run over the shared library: state, jitted steps, checkpoints, loop, evaluation.

A trainer describes a run as a `RunSpec` (its model, optimizer, batches, step and evaluation)
and `train` does the rest in the order a run happens: the state's shardings, the jitted step(s),
the checkpoint manager and metric writer, the start state (restored, built around the first
weights, or initialised: `setup.start_train_state`), the run files, `loop.run_train_loop`, and
the final evaluation. Pretraining runs one; distillation runs several in sequence (its phases).

A run may change its step at given update counts (`stage_of`): progressive knowledge transfer
compiles one step per stage, each running only the blocks its losses read. Steps are compiled
when their stage first comes; a frozen tree (a teacher's parameters) is passed to every step as
its third argument, never donated and never differentiated.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging

from mobilebert_jax.train import (
  checkpointing,
  distributed,
  flops,
  initialization,
  loop,
  optim,
  setup,
  sharding,
  steps,
  summaries,
)
from mobilebert_jax.train.train_state import TrainState

ConfigDict = ml_collections.ConfigDict
PyTree = Any
Array = jax.Array


def one_stage(step: int) -> None:
  """`stage_of` of a run with a single step function."""
  del step


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What a run trains and how; everything else is the shared library's.

  Attributes:
    config: the run config (`task` names the run in its checkpoints; cadences, mesh, seed).
    workdir: the run directory.
    model: the Flax model whose parameters train.
    total_steps: the run's last update.
    optimizer: the optimizer and its schedule.
    train_batches: this host's batches (`next`, `get_state`, `set_state`).
    make_step: stage -> pure `train_step(state, batch[, frozen]) -> (state, metrics)`.
    stage_of: update count (before the update) -> its stage (`one_stage`: a single step).
    frozen: a tree every step reads but does not train (a teacher's parameters), or None.
    frozen_shardings: its shardings (with `frozen`).
    batch_counts: (stage, global batch) -> amounts it holds (`loop.LoopSettings.batch_counts`).
    describe_stage: stage -> a line logged when its step is compiled.
    make_evaluate: state shardings -> `evaluate(params) -> metrics` (held-out data), or None.
    what: the run in a few words, first on the start-up line.
  """

  config: ConfigDict
  workdir: str
  model: nn.Module
  total_steps: int
  optimizer: optim.Optimizer
  train_batches: Any
  make_step: Callable[[Any], steps.TrainStepFn]
  stage_of: Callable[[int], Any] = one_stage
  frozen: PyTree | None = None
  frozen_shardings: PyTree | None = None
  batch_counts: Callable[[Any, PyTree], Mapping[str, float]] | None = None
  describe_stage: Callable[[Any], str] | None = None
  make_evaluate: Callable[[TrainState], Callable[[PyTree], dict[str, float]]] | None = None
  what: str = "training"


class StagedTrainStep:
  """`train_step(state, batch)` for the loop: the compiled step of the update's stage.

  Steps are compiled when their stage first comes and the previous stage's is dropped. `step`
  is the number of updates applied so far; `train` sets it to the start step.
  """

  def __init__(
    self,
    make_step: Callable[[Any], sharding.MeshFunction],
    stage_of: Callable[[int], Any],
    frozen: PyTree | None,
    describe: Callable[[Any], str] | None = None,
  ):
    self._make_step = make_step
    self._stage_of = stage_of
    self._frozen = frozen
    self._describe = describe
    self._stage: Any = None
    self._step_fn: sharding.MeshFunction | None = None
    self.step = 0

  def next_stage(self) -> Any:
    """The stage of the next update."""
    return self._stage_of(self.step)

  def __call__(self, state: TrainState, batch: PyTree) -> tuple[TrainState, dict[str, Array]]:
    stage = self.next_stage()
    if self._step_fn is None or stage != self._stage:
      self._step_fn, self._stage = None, stage
      if self._describe is not None:
        logging.info("%s", self._describe(stage))
      self._step_fn = self._make_step(stage)
    self.step += 1
    if self._frozen is None:
      return self._step_fn(state, batch)
    return self._step_fn(state, batch, self._frozen)


def train(
  spec: RunSpec,
  *,
  resume: setup.Resume,
  initial: initialization.InitialWeights,
  devices: setup.Devices,
) -> tuple[TrainState, dict[str, float]]:
  """Runs `spec` from where its workdir stands (see the module docstring).

  Args:
    spec: the run.
    resume: `setup.find_resume(spec.workdir, ...)`.
    initial: `setup.first_weights(...)` or the trainer's own first weights (`params` None with a
      resume, or to initialise from the seed).
    devices: `setup.make_devices(config)`.

  Returns:
    The final state and the final held-out metrics (empty without `make_evaluate`; also
    written to `eval_metrics.json`).

  Raises:
    As `setup.start_train_state` and `loop.run_train_loop`.
  """
  config, model_config = spec.config, spec.model.config
  transformation = spec.optimizer.transformation
  state_shardings = sharding.train_state_shardings(
    spec.model, transformation, devices.mesh, devices.rules
  )
  staged = StagedTrainStep(
    lambda stage: sharding.jit_train_step(
      spec.make_step(stage), devices.mesh, devices.rules, state_shardings, spec.frozen_shardings
    ),
    spec.stage_of,
    spec.frozen,
    spec.describe_stage,
  )
  evaluate = spec.make_evaluate(state_shardings) if spec.make_evaluate else None
  batch_counts = None
  if spec.batch_counts is not None:

    def batch_counts(batch: PyTree) -> Mapping[str, float]:
      return spec.batch_counts(staged.next_stage(), batch)

  manager = checkpointing.CheckpointManager(
    resume.checkpoint_dir,
    save_interval_steps=config.checkpoint_every_steps,
    max_to_keep=config.keep_checkpoints,
    model_config=model_config,
    train_config=config,
  )
  writer = summaries.MetricWriter(spec.workdir)
  with manager, writer:
    start = setup.start_train_state(
      config=config,
      resume=resume,
      initial=initial,
      model=spec.model,
      optimizer=transformation,
      devices=devices,
      state_shardings=state_shardings,
      manager=manager,
      data_iterator=spec.train_batches,
    )
    del initial  # the host copy of the first weights is no longer needed
    setup.record_start(
      workdir=spec.workdir,
      config=config,
      model_config=model_config,
      devices=devices,
      start=start,
      total_steps=spec.total_steps,
      writer=writer,
      what=spec.what,
    )
    staged.step = start.step
    state = loop.run_train_loop(
      start.state,
      start_step=start.step,
      settings=loop.LoopSettings(
        total_steps=spec.total_steps,
        log_every_steps=config.log_every_steps,
        eval_every_steps=config.eval_every_steps if evaluate else 0,
        progress_bar=config.progress_bar,
        batch_counts=batch_counts,
        peak_flops_per_sec=flops.peak_flops(list(devices.mesh.devices.flat), model_config.dtype),
        profile_steps=config.get("profile_steps") or None,
        profile_dir=os.path.join(spec.workdir, "profile"),
      ),
      train_step=staged,
      next_batch=lambda: distributed.global_batch_from_local(
        next(spec.train_batches), devices.batch_sharding
      ),
      data_state=spec.train_batches.get_state,
      manager=manager,
      writer=writer,
      evaluate=(lambda s: evaluate(s.params)) if evaluate else None,
    )
    metrics: dict[str, float] = {}
    if evaluate is not None:
      metrics = evaluate(state.params)
      setup.record_final_metrics(spec.workdir, writer, max(spec.total_steps, start.step), metrics)
  return state, metrics
