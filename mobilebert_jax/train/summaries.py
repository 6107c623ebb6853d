"""Training summaries: TensorBoard events, a JSON-lines metrics file and a progress bar.

Only process 0 writes (on other processes every call is a no-op), so a multi-host job produces one
set of files:

* `WORKDIR/tensorboard/events.out.tfevents.*` via tensorboardX (`tensorboard --logdir WORKDIR`);
* `WORKDIR/metrics.jsonl`, one `{"step": ..., "time": ..., "<name>": value, ...}` object per
  line, appended across restarts, for scripts and notebooks that do not read event files;
* a tqdm bar on stderr with steps/s, time left and the latest loss.

`quiet_library_logs()` keeps chatty libraries' INFO lines (Orbax logs a dozen per checkpoint) out
of the training log, for the command line and notebooks alike (the command lines keep it until
the process exits: `quiet_library_logs_until_exit()`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import tqdm
from absl import logging as absl_logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _is_main_process() -> bool:
  return jax.process_index() == 0


def _json_number(value: float) -> float | str:
  """JSON has no NaN/Infinity: non-finite values are written as strings ("nan", "inf")."""
  return value if math.isfinite(value) else str(value)


class MetricWriter:
  """Writes scalar metrics to TensorBoard and to `metrics.jsonl` (process 0 only).

  Args:
    workdir: the run directory.
    enabled: write at all; defaults to "this is process 0".
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = _is_main_process() if enabled is None else enabled
    self._tensorboard = None
    self._jsonl = None
    if self.enabled:
      # Imported here: tensorboardX is only needed on the process that writes.
      from tensorboardX import SummaryWriter

      os.makedirs(workdir, exist_ok=True)
      self._tensorboard = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))
      self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a", encoding="utf-8")  # noqa: SIM115

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Writes `name -> number` at `step` (names with "/" group in TensorBoard)."""
    if not self.enabled or not scalars:
      return
    values = {name: float(value) for name, value in scalars.items()}
    for name, value in values.items():
      self._tensorboard.add_scalar(name, value, global_step=step)
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({name: _json_number(value) for name, value in values.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()

  def write_text(self, tag: str, text: str, step: int = 0) -> None:
    """A text summary (e.g. the resolved config), shown in TensorBoard's text tab."""
    if self.enabled:
      # Markdown: indent by four spaces so the text shows as a code block.
      self._tensorboard.add_text(tag, "    " + text.replace("\n", "\n    "), global_step=step)

  def flush(self) -> None:
    if self.enabled:
      self._tensorboard.flush()
      self._jsonl.flush()

  def close(self) -> None:
    if self.enabled and self._jsonl is not None:
      self._tensorboard.close()
      self._jsonl.close()
      self._jsonl = None

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class ProgressBar:
  """A tqdm bar over training steps: steps/s and time left from tqdm, the loss as a postfix.

  Args:
    total_steps: the run's last step.
    initial_step: where the run (re)starts.
    enabled: show the bar at all; it is shown on process 0 only.
  """

  def __init__(self, total_steps: int, initial_step: int = 0, *, enabled: bool = True):
    self._bar = None
    if enabled and _is_main_process():
      self._bar = tqdm.tqdm(
        total=total_steps,
        initial=initial_step,
        unit="step",
        desc="train",
        dynamic_ncols=True,
        smoothing=0.1,
      )

  def update(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def set_metrics(self, **metrics: float) -> None:
    """Shows e.g. `loss=1.234` next to the bar."""
    if self._bar is not None:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items()}, refresh=False)

  def write(self, message: str) -> None:
    """Prints a line above the bar (plain print when there is no bar)."""
    if self._bar is not None:
      self._bar.write(message)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> ProgressBar:
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class _LibraryLogFilter(logging.Filter):
  """Drops records below `level`, and tracebacks, logged from the named libraries' sources."""

  def __init__(self, libraries: Sequence[str], level: int):
    super().__init__()
    self._parts = tuple(f"{os.sep}{name}{os.sep}" for name in libraries)
    self._level = level

  def filter(self, record: logging.LogRecord) -> bool:
    if not any(p in record.pathname for p in self._parts):
      return True
    # Orbax logs the traceback of a failed background write in every thread it passes through
    # (dozens of lines for one full disk) and re-raises the error to the caller, which reports
    # it once (`checkpointing.CheckpointWriteError`).
    return record.levelno >= self._level and not record.exc_info


@contextlib.contextmanager
def loggers_at_level(names: Sequence[str], level: int = logging.ERROR) -> Iterator[None]:
  """Sets the loggers `names` to `level` while it runs, then restores their own levels.

  For a command whose report would repeat what a library logs (`convert`, `export`); restoring
  matters when the command runs in-process (tests, notebooks), whose later logs it must not
  silence.
  """
  saved = {name: logging.getLogger(name).level for name in names}
  for name in names:
    logging.getLogger(name).setLevel(level)
  try:
    yield
  finally:
    for name, old in saved.items():
      logging.getLogger(name).setLevel(old)


@contextlib.contextmanager
def quiet_library_logs(
  libraries: Sequence[str] = ("orbax",), level: int = logging.WARNING
) -> Iterator[None]:
  """Hides the log lines of `libraries` below `level`, and their tracebacks, while it runs.

      with summaries.quiet_library_logs():
        trainer.train_and_evaluate(config, workdir)

  Records are recognised by the file that logs them (`.../orbax/...`), so the filter works
  whichever logger they go through: it sits on absl's logger (Orbax logs through absl) and on
  the root logger's handlers present on entry (absl's handler under `app.run`).

  Args:
    libraries: top-level package names, e.g. ("orbax", "tensorflow").
    level: the lowest level still shown: WARNING hides INFO and DEBUG chatter; ERROR also
      hides warnings (Orbax warns about routine things, e.g. every read-only open).
  """
  quiet, targets = _add_library_log_filter(libraries, level)
  try:
    yield
  finally:
    for target in targets:
      target.removeFilter(quiet)


def quiet_library_logs_until_exit(
  libraries: Sequence[str] = ("orbax",), level: int = logging.WARNING
) -> None:
  """`quiet_library_logs` for the rest of the process: for console scripts, not notebooks.

  A library's threads may still be finishing, and logging, while the interpreter exits: after
  a failed checkpoint write, Orbax's writer threads log their part of the failure after the
  command has reported it in one line.
  """
  _add_library_log_filter(libraries, level)


def _add_library_log_filter(
  libraries: Sequence[str], level: int
) -> tuple[_LibraryLogFilter, list[logging.Filterer]]:
  quiet = _LibraryLogFilter(libraries, level)
  targets = [absl_logging.get_absl_logger(), *logging.getLogger().handlers]
  for target in targets:
    target.addFilter(quiet)
  return quiet, targets
