"""`loop.run_train_loop`'s throughput rates and profile window, on a fake step (no model).

The step adds one to a counter; the checkpoint manager and the metric writer are stand-ins that
record what the loop asks of them. The profiler is replaced by a recorder, except in one test
that writes a real trace of two steps.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import pytest

from mobilebert_jax.train import loop


class FakeManager:
  directory = "/nonexistent/checkpoints"

  def __init__(self):
    self.saved = []

  def should_save(self, step):
    return False

  def save(self, step, state, **kwargs):
    self.saved.append(step)
    return True

  def latest_step(self):
    return self.saved[-1] if self.saved else None

  def wait_until_finished(self):
    pass


class FakeWriter:
  def __init__(self):
    self.records = []

  def write_scalars(self, step, scalars):
    self.records.append((step, dict(scalars)))


def fake_step(state, batch):
  del batch
  return state + 1, {"loss": jnp.float32(1.0), "grad_norm": jnp.float32(1.0)}


def run(settings, start_step=0, *, batch=None, events=None):
  """Runs the loop; `events` (a list) records the steps and the profiler calls in order."""

  def step(state, batch):
    if events is not None:
      events.append(("step", int(state) + 1))
    return fake_step(state, batch)

  writer = FakeWriter()
  state = loop.run_train_loop(
    jnp.int32(start_step),
    start_step=start_step,
    settings=settings,
    train_step=step,
    next_batch=lambda: batch if batch is not None else {"input_ids": jnp.zeros((4, 16), jnp.int32)},
    data_state=lambda: {},
    manager=FakeManager(),
    writer=writer,
  )
  assert int(state) == settings.total_steps
  return writer.records


def test_rates_from_counts_flops_and_peak():
  rates = loop.rates({"sequences": 64, "tokens": 64 * 128, "flops": 3e12}, 2, 4.0, 1.5e12)
  assert rates == {
    "steps_per_sec": 0.5,
    "sequences_per_sec": 16.0,
    "tokens_per_sec": 2048.0,
    "tflops_per_sec": 0.75,
    "mfu": 0.5,
  }
  assert "mfu" not in loop.rates({"flops": 3e12}, 2, 4.0, None)  # unknown peak


def test_train_logs_carry_throughput_from_each_batch():
  def batch_counts(batch):
    batch_size, length = batch["input_ids"].shape
    return {"sequences": batch_size, "tokens": batch_size * length, "flops": 1e9 * batch_size}

  settings = loop.LoopSettings(
    total_steps=4,
    log_every_steps=2,
    progress_bar=False,
    counts_per_step={"examples": 4},
    batch_counts=batch_counts,
    peak_flops_per_sec=1e12,
  )
  records = run(settings)
  assert [step for step, _ in records] == [2, 4]
  for _, scalars in records:
    steps_per_sec = scalars["train/steps_per_sec"]
    assert scalars["train/examples_per_sec"] == pytest.approx(4 * steps_per_sec)
    assert scalars["train/sequences_per_sec"] == pytest.approx(4 * steps_per_sec)
    assert scalars["train/tokens_per_sec"] == pytest.approx(64 * steps_per_sec)
    assert scalars["train/tflops_per_sec"] == pytest.approx(4e9 * steps_per_sec / 1e12)
    assert scalars["train/mfu"] == pytest.approx(4e9 * steps_per_sec / 1e12)


def test_no_flops_no_flop_rates():
  records = run(loop.LoopSettings(total_steps=2, log_every_steps=2, progress_bar=False))
  assert set(records[0][1]) == {"train/loss", "train/grad_norm", "train/steps_per_sec"}


@pytest.fixture
def profiler_calls(monkeypatch):
  events = []
  monkeypatch.setattr(jax.profiler, "start_trace", lambda d: events.append(("start", d)))
  monkeypatch.setattr(jax.profiler, "stop_trace", lambda: events.append(("stop",)))
  return events


@pytest.mark.parametrize(
  ("window", "start_step", "total_steps", "expected"),
  [
    # Steps 2 and 3 are traced.
    ((2, 4), 0, 5, [1, "start", 2, 3, "stop", 4, 5]),
    # Resumed after step 2: the rest of the window.
    ((2, 4), 2, 5, ["start", 3, "stop", 4, 5]),
    # Resumed past the window: nothing.
    ((2, 4), 3, 5, [4, 5]),
    # The run ends inside the window: stopped at the end.
    ((2, 10), 0, 3, [1, "start", 2, 3, "stop"]),
  ],
)
def test_profile_window(profiler_calls, window, start_step, total_steps, expected):
  settings = loop.LoopSettings(
    total_steps=total_steps,
    log_every_steps=100,
    progress_bar=False,
    profile_steps=window,
    profile_dir="/tmp/profile",
  )
  run(settings, start_step, events=profiler_calls)
  assert [e[1] if e[0] == "step" else e[0] for e in profiler_calls] == expected
  assert all(e[1] == "/tmp/profile" for e in profiler_calls if e[0] == "start")


def test_profile_stops_when_a_step_fails(profiler_calls):
  def failing_step(state, batch):
    if int(state) == 2:
      raise RuntimeError("boom")
    return fake_step(state, batch)

  settings = loop.LoopSettings(
    total_steps=5, progress_bar=False, profile_steps=(2, 5), profile_dir="/tmp/profile"
  )
  with pytest.raises(RuntimeError, match="boom"):
    loop.run_train_loop(
      jnp.int32(0),
      start_step=0,
      settings=settings,
      train_step=failing_step,
      next_batch=lambda: {},
      data_state=lambda: {},
      manager=FakeManager(),
      writer=FakeWriter(),
    )
  assert [e[0] for e in profiler_calls] == ["start", "stop"]


@pytest.mark.parametrize("window", [(0, 3), (3, 3), (1, 2, 3)])
def test_bad_profile_windows_are_refused(window):
  with pytest.raises(ValueError, match="profile_steps"):
    loop.LoopSettings(total_steps=5, profile_steps=window, profile_dir="/tmp/profile")
  with pytest.raises(ValueError, match="profile_dir"):
    loop.LoopSettings(total_steps=5, profile_steps=(1, 2))


def test_a_real_trace_is_written(tmp_path):
  step = jax.jit(fake_step)
  settings = loop.LoopSettings(
    total_steps=3, progress_bar=False, profile_steps=[2, 4], profile_dir=str(tmp_path / "profile")
  )
  writer = FakeWriter()
  loop.run_train_loop(
    jnp.int32(0),
    start_step=0,
    settings=settings,
    train_step=step,
    next_batch=lambda: {},
    data_state=lambda: {},
    manager=FakeManager(),
    writer=writer,
  )
  traces = glob.glob(os.path.join(tmp_path, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, os.listdir(tmp_path / "profile")
