"""Errors that describe a user's mistake rather than a bug.

The command lines print these as one line and exit with status 1 (`mobilebert_jax.cli.run`);
anything else keeps its traceback, because it is a bug to report.
"""


class RunConfigError(ValueError):
  """A run's settings contradict each other, the workdir or the data (the message says how)."""
