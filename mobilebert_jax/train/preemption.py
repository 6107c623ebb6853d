"""Noticing a preemption: SIGTERM on one host, JAX's preemption sync point on several.

Preemptible VMs and cluster schedulers announce an eviction with SIGTERM and kill the process a
little later. Python's default is to die at once, losing every step since the last checkpoint,
so a run watches for the notice instead and, at the end of the current step, saves a checkpoint
and stops (`loop.run_train_loop`).

* One process: a SIGTERM handler (installed while the loop runs, the previous one restored
  after) sets a flag that the loop reads after each step.
* Several processes (`jax.distributed`): the hosts must save at the same step, and they may
  receive the notice at different times. JAX's preemption service (started by
  `jax.distributed.initialize`, which installs its own SIGTERM handling) agrees on a step;
  `multihost_utils.reached_preemption_sync_point(step)` is True on every host at that step.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
from absl import logging


class PreemptionWatcher:
  """Context manager: `watcher.requested(step)` is True once the run should save and stop."""

  def __init__(self) -> None:
    self._notice: int | None = None  # the signal received, if any
    self._previous: Any = None
    self._installed = False

  def __enter__(self) -> PreemptionWatcher:
    # Signal handlers can only be set from the main thread (a notebook's or a test's worker
    # thread runs the loop without one), and with several processes JAX's service handles it.
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)
      self._installed = True
    return self

  def __exit__(self, *exc: Any) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
      self._installed = False

  def _on_signal(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self._notice is None:
      logging.warning("received signal %d: saving a checkpoint after the current step", signum)
    self._notice = signum

  def requested(self, step: int) -> bool:
    """Whether to save at `step` and stop (call once per step, on every host)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        return False
    return self._notice is not None
