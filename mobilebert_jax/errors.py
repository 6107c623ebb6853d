"""Exceptions that end a run for a reason the user can act on, rather than a bug.

The command lines print these as one line (`mobilebert_jax.cli.run`): a user's mistake or a
checkpoint that cannot be written or read exits with status 1, a preemption with 143; anything
else keeps its traceback, because it is a bug to report.
"""


class RunConfigError(ValueError):
  """A run's settings contradict each other, the workdir or the data (the message says how)."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read (the message names it, the cause and what to do)."""


class CorruptCheckpointError(CheckpointError):
  """One checkpoint does not restore: unreadable files, or arrays that differ from what was saved.

  Attributes:
    step: the checkpoint's step.
    reason: what failed, in one line.
  """

  def __init__(self, step: int, reason: str, directory: str = ""):
    self.step = step
    self.reason = reason
    where = f" in {directory}" if directory else ""
    super().__init__(f"checkpoint step {step}{where} does not restore: {reason}")


class CheckpointWriteError(CheckpointError):
  """Writing a checkpoint failed (no space, no permission, ...); earlier ones are intact."""


class RunPreempted(Exception):  # noqa: N818  (not an error: the run stopped as asked)
  """The run received a preemption notice, saved a checkpoint at `step` and stopped.

  Attributes:
    step: the step of the checkpoint it saved; rerunning the command resumes there.
    directory: the checkpoint directory.
  """

  exit_status = 143  # 128 + SIGTERM, what the process would have returned without the handler

  def __init__(self, step: int, directory: str):
    self.step = step
    self.directory = directory
    super().__init__(
      f"preempted: saved checkpoint step {step} in {directory} and stopped; run the same "
      "command again to resume from it"
    )
