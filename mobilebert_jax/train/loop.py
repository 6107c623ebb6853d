"""The loop body every trainer shares: steps, logging, the finiteness guard, evals, checkpoints.

A trainer sets up its state, steps, data and checkpoint manager, then hands them to
`run_train_loop`, which runs steps `start_step + 1 .. total_steps` and, at fixed points:

* logs the mean of every train metric over the steps since the last log (`log_every_steps`),
  with steps/s and the amounts the steps processed as rates (`sequences_per_sec`,
  `tokens_per_sec`, ...; from the model FLOPs of each step `tflops_per_sec` and `mfu`: `rates`),
  to the metric writer, the log and the progress bar;
* traces steps `profile_steps = (start, stop)` with `jax.profiler` into `profile_dir`;
* evaluates (`eval_every_steps`, through the trainer's `evaluate(state)`) and writes `eval/...`;
* saves a checkpoint when one is due, after an eval (keep-best ranks it by its metrics) and at
  the end, with the data iterator's position;
* on a preemption notice (SIGTERM, or JAX's multi-host sync point: `preemption`), finishes the
  step, saves it, waits until the checkpoint is written and raises `RunPreempted`; a rerun
  resumes from exactly that step.

Rates cover the wall time between two logs less the evals, so the first one includes compiling
the step (and a profiled interval the tracing overhead).

Metrics stay on the devices between those points (fetching every step would stall the device
pipeline) and are checked when fetched: the loss, gradient norm and parameter norm of every
step must be finite, or `NonFiniteLossError` names the first bad step. A checkpoint is saved only
after every step up to it was checked, so a saved state never follows a non-finite update.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from mobilebert_jax.errors import RunPreempted
from mobilebert_jax.train import checkpointing, preemption, summaries

PyTree = Any
# Train metrics that must stay finite; a NaN in any of them poisons the next update.
GUARDED_METRICS = ("loss", "grad_norm", "param_norm")
# The count of model FLOPs per step, reported as `tflops_per_sec` and `mfu` rather than a rate.
FLOPS = "flops"


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
    counts_per_step: amounts every step processes, reported as rates: `{"examples": 32}` gives
      `examples_per_sec`. The name `"flops"` (model FLOPs of one update, all devices together)
      gives `tflops_per_sec` and `mfu` instead (see `rates`).
    batch_counts: amounts of one global batch read from its shapes (no device sync), for steps
      whose batches differ (length buckets), e.g. `{"sequences": B, "tokens": B * T, "flops":
      B * flops.train_step_flops(config, T, head=...)}`; added to `counts_per_step`.
    peak_flops_per_sec: the peak FLOP/s of all devices together (`flops.peak_flops`), the
      denominator of `mfu`; None: unknown device, no `mfu`.
    profile_steps: `(start, stop)`: trace steps start .. stop - 1 (steps count updates from 1,
      as checkpoints do) with `jax.profiler`; None: no trace. A run resumed inside the window
      traces the rest of it, one resumed past it none.
    profile_dir: where the trace goes (TensorBoard's profile plugin reads it); needed with
      `profile_steps`.
  """

  total_steps: int
  log_every_steps: int = 100
  eval_every_steps: int = 0
  progress_bar: bool = True
  counts_per_step: Mapping[str, float] = dataclasses.field(default_factory=dict)
  batch_counts: Callable[[PyTree], Mapping[str, float]] | None = None
  peak_flops_per_sec: float | None = None
  profile_steps: tuple[int, int] | None = None
  profile_dir: str | None = None

  def __post_init__(self):
    if self.profile_steps is None:
      return
    window = tuple(self.profile_steps)
    if len(window) != 2 or not 1 <= window[0] < window[1]:
      raise ValueError(
        f"profile_steps must be (start, stop) with 1 <= start < stop, got {self.profile_steps!r}"
      )
    if not self.profile_dir:
      raise ValueError("profile_steps needs a profile_dir to write the trace to")
    object.__setattr__(self, "profile_steps", (int(window[0]), int(window[1])))


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
  throughput = _Throughput(settings, start_step)
  with (
    summaries.ProgressBar(total_steps, start_step, enabled=settings.progress_bar) as bar,
    preemption.PreemptionWatcher() as watcher,
    _ProfileWindow(settings, start_step) as profile,
  ):
    for step in range(start_step + 1, total_steps + 1):
      batch = next_batch()
      throughput.add(batch)
      profile.before_step(step)
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_step(state, batch)
      profile.after_step(step, metrics)
      pending.add(step, metrics)
      bar.update()

      if step % settings.log_every_steps == 0 or step == total_steps:
        means = pending.pop_means()  # waits for the steps, so the rates below are measured
        means.update(throughput.pop_rates(step))
        writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
        bar.set_metrics(loss=means["loss"])
        logging.info("step %d/%d: %s", step, total_steps, format_metrics(means))

      eval_metrics = None
      due = settings.eval_every_steps and step % settings.eval_every_steps == 0
      if evaluate is not None and due and step < total_steps:
        pending.check()
        with throughput.paused():  # evaluating is not training throughput
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


def rates(
  totals: Mapping[str, float], steps: int, seconds: float, peak_flops_per_sec: float | None
) -> dict[str, float]:
  """The rates logged with the train metrics.

  Args:
    totals: amounts processed over the interval (see `LoopSettings.counts_per_step`).
    steps: updates in the interval.
    seconds: its wall time.
    peak_flops_per_sec: peak FLOP/s of all devices together, or None.

  Returns:
    `steps_per_sec` and `<name>_per_sec` for each amount, except that `flops` gives
    `tflops_per_sec` (model TFLOP/s of all devices together, not per device) and, with a peak,
    `mfu` (model FLOP/s over the devices' peak).
  """
  seconds = max(seconds, 1e-9)
  result = {"steps_per_sec": steps / seconds}
  for name, total in totals.items():
    if name == FLOPS:
      result["tflops_per_sec"] = total / seconds / 1e12
      if peak_flops_per_sec:
        result["mfu"] = total / seconds / peak_flops_per_sec
    else:
      result[f"{name}_per_sec"] = total / seconds
  return result


class _Throughput:
  """Sums what the steps since the last log processed and turns it into `rates`."""

  def __init__(self, settings: LoopSettings, start_step: int):
    self._settings = settings
    self._totals: dict[str, float] = {}
    self._last = (start_step, time.time())
    self._logged_setup = False

  def add(self, batch: PyTree) -> None:
    counts = dict(self._settings.counts_per_step)
    if self._settings.batch_counts is not None:
      for name, value in self._settings.batch_counts(batch).items():
        counts[name] = counts.get(name, 0) + value
    if not self._logged_setup:
      self._log_setup(counts)
    for name, value in counts.items():
      self._totals[name] = self._totals.get(name, 0) + value

  @contextlib.contextmanager
  def paused(self) -> Iterator[None]:
    """Leaves the time spent inside out of the next rates."""
    start = time.time()
    try:
      yield
    finally:
      step, since = self._last
      self._last = (step, since + time.time() - start)

  def pop_rates(self, step: int) -> dict[str, float]:
    now = time.time()
    result = rates(
      self._totals, step - self._last[0], now - self._last[1], self._settings.peak_flops_per_sec
    )
    self._totals, self._last = {}, (step, now)
    return result

  def _log_setup(self, counts: Mapping[str, float]) -> None:
    """Says once what `tflops_per_sec` and `mfu` are computed from."""
    self._logged_setup = True
    if FLOPS not in counts:
      return
    peak = self._settings.peak_flops_per_sec
    logging.info(
      "throughput: %.4g model GFLOP in the first step; peak of the %d %s device(s): %s",
      counts[FLOPS] / 1e9,
      jax.device_count(),
      jax.devices()[0].device_kind,
      f"{peak / 1e12:.4g} TFLOP/s" if peak else "unknown (no mfu)",
    )


class _ProfileWindow(contextlib.AbstractContextManager):
  """Traces the steps of `settings.profile_steps` that this run executes (see `LoopSettings`).

  Every process traces its own devices into the same directory (`jax.profiler` names each
  host's file after it), which is what TensorBoard's multi-host profile view reads.
  """

  def __init__(self, settings: LoopSettings, start_step: int):
    self._first = self._last = None
    self._directory = settings.profile_dir
    self._active = False
    if settings.profile_steps is None:
      return
    start, stop = settings.profile_steps
    first, last = max(start, start_step + 1), min(stop - 1, settings.total_steps)
    if first > last:
      logging.info(
        "profile_steps %s: no step of it runs (steps %d..%d), no trace",
        settings.profile_steps,
        start_step + 1,
        settings.total_steps,
      )
      return
    self._first, self._last = first, last

  def before_step(self, step: int) -> None:
    if step == self._first:
      logging.info("profiling steps %d..%d into %s", self._first, self._last, self._directory)
      jax.profiler.start_trace(self._directory)
      self._active = True

  def after_step(self, step: int, outputs: PyTree) -> None:
    if step == self._last and self._active:
      jax.block_until_ready(outputs)  # the trace must hold the last step's device work
      self._stop()

  def _stop(self) -> None:
    self._active = False
    jax.profiler.stop_trace()

  def __exit__(self, *exc: Any) -> None:
    if self._active:  # an error or a preemption inside the window: keep what was traced
      self._stop()


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
