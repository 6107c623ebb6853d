"""Kill-and-resume: a training process SIGKILLed mid-run resumes to the uninterrupted result.

Three runs of tests/resume_worker.py (tiny QA model, LAMB, dropout, shuffled BatchIterator, 2x4
fsdp mesh on 8 fake CPU devices, asynchronous checkpoints every 3 steps, last 2 kept):

1. an uninterrupted 12-step run (the reference);
2. the same run, killed with SIGKILL as soon as it reports starting the save of step 6, i.e.
   while that asynchronous save is being written and training goes on;
3. a restart in the same directory, which must resume from the latest *complete* checkpoint
   (step 3 or 6, depending on whether the killed save finished) and finish.

The resumed run must end with bitwise the same parameters as the reference: the same program
on the same CPU devices is deterministic, the dropout key is a function of (base key, step),
and the iterator resumes at the next batch. The runs share a persistent compilation cache so
only the first one pays for compiling.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resume_worker.py")
STEPS = 12
SAVE_EVERY = 3
KILL_AFTER_SAVING = 6
TIMEOUT_S = 300


def worker_command(workdir, out, cache, step_sleep=0.0):
  return [
    sys.executable,
    WORKER,
    f"--workdir={workdir}",
    f"--steps={STEPS}",
    f"--save_every={SAVE_EVERY}",
    f"--out={out}",
    f"--compilation_cache={cache}",
    f"--step_sleep={step_sleep}",
  ]


def worker_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env.pop("MOBILEBERT_JAX_DISTRIBUTED", None)
  return env


def run_to_completion(cmd) -> list[str]:
  proc = subprocess.run(
    cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=worker_env(), check=False
  )
  assert proc.returncode == 0, f"worker failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
  return proc.stdout.split("\n")


def run_and_kill(cmd, kill_line: str) -> list[str]:
  """Starts the worker and SIGKILLs it the moment it prints `kill_line`."""
  proc = subprocess.Popen(
    cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=worker_env()
  )
  lines = []
  deadline = time.monotonic() + TIMEOUT_S
  try:
    for line in proc.stdout:
      lines.append(line.strip())
      if line.strip() == kill_line:
        proc.send_signal(signal.SIGKILL)
        break
      assert time.monotonic() < deadline, "worker too slow"
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait(timeout=60)
    proc.stdout.close()  # the pipe's file object, left open, is a ResourceWarning
  assert proc.returncode == -signal.SIGKILL, (proc.returncode, lines)
  return lines


def load(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_killed_training_resumes_to_the_uninterrupted_result(tmp_path):
  cache = tmp_path / "compilation_cache"
  reference = run_to_completion(worker_command(tmp_path / "ref", tmp_path / "ref.npz", cache))
  assert reference[0] == "START" and reference[-2].startswith(f"DONE {STEPS}")

  workdir = tmp_path / "run"
  # The pause after each step keeps the kill inside training (the steps of a model this small
  # take milliseconds), while the save of step 6 is still being written in the background.
  killed = run_and_kill(
    worker_command(workdir, tmp_path / "run.npz", cache, step_sleep=0.2),
    kill_line=f"SAVING {KILL_AFTER_SAVING}",
  )
  assert killed == ["START", "SAVING 3", f"SAVING {KILL_AFTER_SAVING}"]
  assert not (tmp_path / "run.npz").exists()
  leftovers = sorted(p.name for p in workdir.iterdir())
  print("after SIGKILL:", leftovers)

  resumed = run_to_completion(worker_command(workdir, tmp_path / "run.npz", cache))
  first = resumed[0].split()
  assert first[0] == "RESUMED" and int(first[1]) in (SAVE_EVERY, KILL_AFTER_SAVING), resumed
  print("resumed from step", first[1])
  # A save cut short leaves only Orbax's temporary directory, never a step directory: the
  # restart then resumes from the previous complete checkpoint.
  interrupted = any(".orbax-checkpoint-tmp" in name for name in leftovers)
  assert int(first[1]) == (SAVE_EVERY if interrupted else KILL_AFTER_SAVING), leftovers
  assert not any(".orbax-checkpoint-tmp" in p.name for p in workdir.iterdir())
  assert resumed[-2].startswith(f"DONE {STEPS}")
  # Both runs logged the same final loss, and the parameters agree bit for bit.
  assert resumed[-2] == reference[-2]
  want, got = load(tmp_path / "ref.npz"), load(tmp_path / "run.npz")
  assert sorted(got) == sorted(want) and len(want) > 30
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  # The run really trained (the comparison is not between two untouched initialisations).
  initial = load(f"{tmp_path / 'ref.npz'}.init.npz")
  assert sum(not np.array_equal(initial[k], want[k]) for k in want) > len(want) // 2
