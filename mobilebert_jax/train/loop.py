"""The loop body every trainer shares: steps, logging, the finiteness guard, evals, checkpoints.

A trainer sets up its state, steps, data and checkpoint manager, then hands them to
`run_train_loop`, which runs steps `start_step + 1 .. total_steps` and, at fixed points:

* logs the mean of every train metric over the steps since the last log (`log_every_steps`),
  with steps/s and any per-step counts as rates (`examples_per_sec`, `tokens_per_sec`, ...), to
  the metric writer, the log and the progress bar;
* evaluates (`eval_every_steps`, through the trainer's `evaluate(state)`) and writes `eval/...`;
* saves a checkpoint when one is due, after an eval (keep-best ranks it by its metrics) and at
  the end, with the data iterator's position;
* on a preemption notice (SIGTERM, or JAX's multi-host sync point: `preemption`), finishes the
  step, saves it, waits until the checkpoint is written and raises `RunPreempted`; a rerun
  resumes from exactly that step.

Metrics stay on the devices between those points (fetching every step would stall the device
pipeline) and are checked when fetched: the loss, gradient norm and parameter norm of every
step must be finite, or `NonFiniteLossError` names the first bad step. A checkpoint is saved only
after every step up to it was checked, so a saved state never follows a non-finite update.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from mobilebert_jax.errors import RunPreempted
from mobilebert_jax.train import checkpointing, preemption, summaries

PyTree = Any
# Train metrics that must stay finite; a NaN in any of them poisons the next update.
GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss (or gradient or parameter norm)."""


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """How often the loop does what.

  Attributes:
    total_steps: the last step to run.
    log_every_steps: fetch, check and write train metrics every N steps (and at the end).
    eval_every_steps: evaluate every N steps before the end (0: never during training).
    progress_bar: show a tqdm bar (process 0).
    counts_per_step: per-step amounts reported as rates, e.g. `{"examples": 32,
      "tokens": 32 * 384}` gives `examples_per_sec` and `tokens_per_sec`.
  """

  total_steps: int
  log_every_steps: int = 100
  eval_every_steps: int = 0
  progress_bar: bool = True
  counts_per_step: Mapping[str, float] = dataclasses.field(default_factory=dict)


def run_train_loop(
  state: PyTree,
  *,
  start_step: int,
  settings: LoopSettings,
  train_step: Callable[[PyTree, PyTree], tuple[PyTree, Mapping[str, jax.Array]]],
  next_batch: Callable[[], PyTree],
  data_state: Callable[[], Any],
  manager: checkpointing.CheckpointManager,
  writer: summaries.MetricWriter,
  evaluate: Callable[[PyTree], dict[str, float]] | None = None,
) -> PyTree:
  """Runs steps `start_step + 1 .. settings.total_steps` (see the module docstring).

  Args:
    state: the train state after `start_step` updates.
    start_step: the number of updates already applied.
    settings: cadences and reporting.
    train_step: the jitted step, `train_step(state, batch) -> (state, metrics)` (bind a frozen
      tree with a closure over the call, not over the traced function).
    next_batch: returns the next global batch (device arrays, already sharded).
    data_state: returns the data iterator's position after the last batch drawn (saved with
      each checkpoint).
    manager: the checkpoint manager (its `should_save` decides the cadence).
    writer: the metric writer.
    evaluate: `evaluate(state) -> metrics`, run every `eval_every_steps`; None: no evals.

  Returns:
    The state after the last step.

  Raises:
    NonFiniteLossError: a step's loss, gradient norm or parameter norm was not finite (the
      message names the step and the checkpoint a rerun resumes from).
    RunPreempted: a preemption notice came; the step it names is saved.
    CheckpointWriteError: a checkpoint could not be written (the earlier ones are intact).
  """
  total_steps = settings.total_steps
  pending = _PendingMetrics(manager)
  last_log = (start_step, time.time())
  with (
    summaries.ProgressBar(total_steps, start_step, enabled=settings.progress_bar) as bar,
    preemption.PreemptionWatcher() as watcher,
  ):
    for step in range(start_step + 1, total_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_step(state, next_batch())
      pending.add(step, metrics)
      bar.update()

      if step % settings.log_every_steps == 0 or step == total_steps:
        means = pending.pop_means()
        steps_per_sec = (step - last_log[0]) / max(time.time() - last_log[1], 1e-9)
        means["steps_per_sec"] = steps_per_sec
        for name, count in settings.counts_per_step.items():
          means[f"{name}_per_sec"] = steps_per_sec * count
        last_log = (step, time.time())
        writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
        bar.set_metrics(loss=means["loss"])
        logging.info("step %d/%d: %s", step, total_steps, format_metrics(means))

      eval_metrics = None
      due = settings.eval_every_steps and step % settings.eval_every_steps == 0
      if evaluate is not None and due and step < total_steps:
        pending.check()
        eval_metrics = evaluate(state)
        writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
        logging.info("eval at step %d: %s", step, format_metrics(eval_metrics))

      if eval_metrics is not None or step == total_steps or manager.should_save(step):
        pending.check()  # never save a state that follows a non-finite step
        manager.save(step, state, data_state=data_state(), metrics=eval_metrics, force=True)

      if step < total_steps and watcher.requested(step):
        pending.check()
        manager.save(step, state, data_state=data_state(), force=True)  # False if just saved
        manager.wait_until_finished()
        logging.warning("preempted: checkpoint step %d written to %s", step, manager.directory)
        raise RunPreempted(step, str(manager.directory))
  return state


def format_metrics(metrics: Mapping[str, float]) -> str:
  """`name=value, ...` with 4 significant digits, for the logs."""
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


class _PendingMetrics:
  """Per-step train metrics kept on the devices until they are needed on the host."""

  def __init__(self, manager: checkpointing.CheckpointManager):
    self._manager = manager
    self._on_device: list[tuple[int, Mapping[str, jax.Array]]] = []
    self._on_host: list[tuple[int, Mapping[str, np.ndarray]]] = []

  def add(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    self._on_device.append((step, metrics))

  def check(self) -> None:
    """Fetches the pending steps and raises if any of them is not finite.

    Raises:
      NonFiniteLossError: naming the first bad step and the checkpoint a rerun resumes from.
    """
    fetched = jax.device_get(self._on_device)
    self._on_device = []
    for step, metrics in fetched:
      bad = sorted(k for k in GUARDED_METRICS if k in metrics and not np.isfinite(metrics[k]))
      if bad:
        raise NonFiniteLossError(_divergence_message(step, metrics, bad, self._manager))
    self._on_host.extend(fetched)

  def pop_means(self) -> dict[str, float]:
    """Checks the steps since the last call and returns the mean of each metric over them."""
    self.check()
    steps, self._on_host = self._on_host, []
    if not steps:
      return {}
    return {k: float(np.mean([m[k] for _, m in steps])) for k in steps[-1][1]}


def _divergence_message(
  step: int, metrics: Mapping[str, Any], bad: list[str], manager: checkpointing.CheckpointManager
) -> str:
  latest = manager.latest_step()
  if latest is None:
    resume = "no checkpoint was saved before it"
  else:
    resume = (
      f"the last checkpoint (step {latest} in {manager.directory}) was saved before it and is "
      "intact; rerunning with the same workdir resumes from it"
    )
  values = ", ".join(f"{k}={float(metrics[k])}" for k in GUARDED_METRICS if k in metrics)
  return (
    f"training diverged at step {step}: {values} ({', '.join(bad)} not finite). Lower the "
    f"learning rate (--config.optimizer.learning_rate) or check the data; {resume}."
  )
