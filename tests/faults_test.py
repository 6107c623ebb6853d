"""Faults of long runs, end to end on the tiny SQuAD model, as a user meets them.

* preemption: SIGTERM mid-run -> a checkpoint at the signal's step, exit 143 with one line, and
  the rerun ends with the same parameters as an uninterrupted run;
* a corrupt checkpoint (bytes flipped in an array file, which Orbax would restore silently as
  other numbers): the rerun reports it in one line, moves it aside and resumes from the previous
  one, to the same final parameters; a pinned `resume_step`; every checkpoint corrupt -> one line,
  exit 1;
* a checkpoint that cannot be written (a real OS write failure: a file-size limit, which fails
  writes with EFBIG as a full disk fails them with ENOSPC): one line naming the directory and the
  cause, exit 1, no "exception was never retrieved" noise (the failed writes of Orbax's other
  array tasks, which asyncio reports when it collects them, often after that line).
"""

from __future__ import annotations

import asyncio
import gc
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from mobilebert_jax import MobileBertConfig, cli, finetune, tasks
from mobilebert_jax.demo import VOCAB_FILE
from mobilebert_jax.errors import CheckpointError, CorruptCheckpointError
from mobilebert_jax.model.models import abstract_params
from mobilebert_jax.train import checkpointing, run_files
from mobilebert_jax.train.train_state import TrainState

pytestmark = pytest.mark.usefixtures("fast_compiles")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, "tests", "testdata")
ARGS = (
  "--task=squad",
  "--config=configs/squad.py:size=tiny",
  f"--config.data.data_dir={TESTDATA}/squad",
  f"--config.tokenizer.vocab_file={VOCAB_FILE}",
  "--config.progress_bar=false",
)
# The subprocesses compile as the in-process runs do (the `fast_compiles` fixture), so both
# compute bit for bit the same steps.
SUBPROCESS_ENV = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}


def run(workdir, *overrides: str) -> dict[str, float]:
  return finetune.main(["mobilebert-finetune", f"--workdir={workdir}", *ARGS, *overrides])


def command(workdir, *overrides: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "mobilebert_jax.finetune",
    f"--workdir={workdir}",
    *ARGS,
    *overrides,
  ]


def final_params(workdir, step: int):
  with open(os.path.join(workdir, run_files.MODEL_CONFIG_FILE)) as f:
    model_config = MobileBertConfig.from_dict(json.load(f), source="hf")
  model = tasks.get_task("squad").model_class(model_config)
  root = os.path.join(workdir, run_files.CHECKPOINTS_DIR)
  params = checkpointing.load_params_from_checkpoint(root, abstract_params(model), step=step)
  return jax.tree.map(np.asarray, params)


def assert_same_params(workdir, reference, step: int) -> None:
  jax.tree.map(
    np.testing.assert_array_equal, final_params(workdir, step), final_params(reference, step)
  )


def run_info(workdir) -> dict:
  with open(os.path.join(workdir, run_files.RUN_INFO_FILE)) as f:
    return json.load(f)


def corrupt(step_dir) -> None:
  """Flips 64 bytes in the middle of every data file of a checkpoint's state.

  Every file, because OCDBT data files may also hold bytes no array refers to any more: a flip
  there changes nothing, and the test would not test what it says.
  """
  for path in glob.glob(f"{step_dir}/state/**/d/*", recursive=True):
    corrupt_file(path)


def corrupt_file(largest: str) -> str:
  """Flips 64 bytes in the middle of a file."""
  with open(largest, "rb") as f:
    data = bytearray(f.read())
  middle = len(data) // 2
  data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
  with open(largest, "wb") as f:
    f.write(data)
  return largest


def run_cli_in_process(monkeypatch, capsys, workdir, *overrides: str) -> tuple[int, list[str]]:
  """The console script's behaviour (exit status, stderr lines) without a new process."""
  monkeypatch.setattr(
    sys, "argv", ["mobilebert-finetune", f"--workdir={workdir}", *ARGS, *overrides]
  )
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_info:
    cli.run(
      "mobilebert-finetune", "", finetune._define_flags, finetune.parse_flags, finetune.finetune
    )
  return exit_info.value.code, capsys.readouterr().err.splitlines()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
  """An uninterrupted 6-step run with checkpoints at 2, 4 and 6."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  run(workdir, "--config.num_train_steps=6", "--config.checkpoint_every_steps=2",
      "--config.keep_checkpoints=5", "--config.model.hidden_dropout_prob=0.1")  # fmt: skip
  return workdir


def killed_after_step_4(reference, tmp_path) -> str:
  """The reference workdir as a run killed after saving step 4 leaves it."""
  workdir = str(tmp_path / "killed")
  shutil.copytree(reference, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  os.remove(os.path.join(workdir, run_files.EVAL_METRICS_FILE))
  return workdir


RERUN = ("--config.num_train_steps=6", "--config.checkpoint_every_steps=2",
         "--config.keep_checkpoints=5", "--config.model.hidden_dropout_prob=0.1")  # fmt: skip


# ----------------------------------------------------------------------------------------------
# Preemption
# ----------------------------------------------------------------------------------------------


def test_sigterm_saves_the_current_step_and_the_rerun_ends_as_uninterrupted(tmp_path):
  reference = str(tmp_path / "reference")
  steps = ("--config.num_train_steps=30", "--config.checkpoint_every_steps=1000",
           "--config.log_every_steps=1", "--config.model.hidden_dropout_prob=0.1")  # fmt: skip
  run(reference, *steps)

  workdir = tmp_path / "preempted"
  log = tmp_path / "preempted.log"  # a file, not a pipe: a full pipe would stall the process
  with open(log, "w") as out:
    process = subprocess.Popen(
      command(workdir, *steps), cwd=REPO, env=SUBPROCESS_ENV, stdout=out, stderr=out
    )
    try:
      deadline = time.time() + 240
      signalled_at = None
      while signalled_at is None:
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no training step within 240 s"
        records = _read_jsonl(workdir / "metrics.jsonl")
        done = [r["step"] for r in records if "train/loss" in r]
        if done and done[-1] >= 3:
          signalled_at = done[-1]
          process.send_signal(signal.SIGTERM)
        time.sleep(0.02)
      status = process.wait(timeout=120)
    finally:
      if process.poll() is None:
        process.kill()
  output = log.read_text()
  assert status == 143, output[-3000:]
  saved = sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())
  assert saved and saved[-1] >= signalled_at and saved[-1] < 30
  last_line = output.strip().splitlines()[-1]
  assert last_line.startswith(f"mobilebert-finetune: preempted: saved checkpoint step {saved[-1]}")
  assert "Traceback" not in output
  assert not (workdir / run_files.EVAL_METRICS_FILE).exists()

  run(workdir, *steps)
  assert run_info(workdir)["start_step"] == saved[-1]
  assert_same_params(workdir, reference, 30)


# ----------------------------------------------------------------------------------------------
# Corrupt checkpoints
# ----------------------------------------------------------------------------------------------


def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_previous_one_resumed(
  reference, tmp_path, caplog
):
  workdir = killed_after_step_4(reference, tmp_path)
  corrupt(os.path.join(workdir, "checkpoints", "4"))
  run(workdir, *RERUN)
  assert run_info(workdir)["start_step"] == 2
  assert_same_params(workdir, reference, 6)
  # Moved aside, not deleted, and said so in one line.
  assert os.path.isdir(os.path.join(workdir, "checkpoints.unreadable", "4", "state"))
  reports = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(reports) == 1 and "checkpoint step 4" in reports[0]
  assert "\n" not in reports[0] and len(reports[0]) < 1000


def test_resume_step_pins_the_checkpoint(reference, tmp_path):
  workdir = killed_after_step_4(reference, tmp_path)
  run(workdir, *RERUN, "--config.resume_step=2")
  assert run_info(workdir)["start_step"] == 2
  assert_same_params(workdir, reference, 6)


def test_all_checkpoints_corrupt_is_one_line(reference, tmp_path, monkeypatch, capsys):
  workdir = killed_after_step_4(reference, tmp_path)
  for step in (2, 4):
    corrupt(os.path.join(workdir, "checkpoints", str(step)))
  # The console script: one line naming every failure, status 1.
  status, lines = run_cli_in_process(monkeypatch, capsys, workdir, *RERUN)
  assert status == 1
  assert re.match(
    r"mobilebert-finetune: no checkpoint in .* restores: step 4: .*; step 2: ", lines[0]
  )
  assert not any("Traceback" in line for line in lines)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints.unreadable"))) == ["2", "4"]
  # Running again does not silently start the workdir from scratch.
  with pytest.raises(CheckpointError, match=r"do not restore; inspect them, or delete"):
    run(workdir, *RERUN)


def test_altered_array_bytes_are_caught_by_the_fingerprints(tmp_path):
  """Bytes flipped inside an array's data restore without any error from Orbax/TensorStore
  (the chunks carry no checksum); the fingerprints saved with the checkpoint catch them."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = TrainState(
    step=jnp.int32(3),
    params={"w": jnp.arange(200_000, dtype=jnp.float32), "b": jnp.ones(4)},
    opt_state=(),
    rng=jax.random.key(0),
  )
  with checkpointing.CheckpointManager(tmp_path / "ckpt", save_interval_steps=1) as manager:
    manager.save(3, state)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state
  )
  with checkpointing.CheckpointManager(tmp_path / "ckpt", read_only=True) as manager:
    intact = manager.restore(abstract).state
    np.testing.assert_array_equal(intact.params["w"], state.params["w"])
    data_files = glob.glob(str(tmp_path / "ckpt" / "3" / "state" / "ocdbt.process_*" / "d" / "*"))
    corrupt_file(max(data_files, key=os.path.getsize))
    with pytest.raises(CorruptCheckpointError, match=r"1 array\(s\) differ .*params/w"):
      manager.restore(abstract)


# ----------------------------------------------------------------------------------------------
# Write failures
# ----------------------------------------------------------------------------------------------

# Every checkpoint of the tiny model holds a 63 KB tree-metadata file (`state/_METADATA`) besides
# its array files, so no checkpoint fits under this limit: the array files alone would not do,
# since how Orbax splits the arrays into files (tens to hundreds of KB each) depends on its
# threads' timing.
# Every file the run writes before its first checkpoint stays under 20 KB.
FILE_SIZE_LIMIT = 40_000


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_one_line(tmp_path):
  workdir = tmp_path / "full"
  limit = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
    f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_SIZE_LIMIT}, {FILE_SIZE_LIMIT})); "
    "sys.argv = sys.argv[1:]; runpy.run_module('mobilebert_jax.finetune', run_name='__main__')"
  )
  argv = command(workdir, "--config.num_train_steps=4", "--config.checkpoint_every_steps=2")
  result = subprocess.run(
    [sys.executable, "-c", limit, *argv[2:]],
    cwd=REPO,
    env=SUBPROCESS_ENV,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 1, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("mobilebert-finetune: could not write checkpoint step 2 to ")
  assert str(workdir / "checkpoints") in last and "File too large" in last
  assert "no checkpoint was saved" in last
  assert "Traceback" not in result.stderr
  assert "exception was never retrieved" not in result.stderr
  assert not (workdir / run_files.EVAL_METRICS_FILE).exists()


def _log_of_an_error_never_retrieved(fail: Callable[[asyncio.Future], None]) -> list[str]:
  """What asyncio logs, through the console scripts' filter, of a future that failed unseen."""
  records: list[logging.LogRecord] = []
  handler = logging.Handler()
  handler.emit = records.append
  asyncio_logger = logging.getLogger("asyncio")
  quiet = cli._UnretrievedCheckpointWriteErrors()
  asyncio_logger.addHandler(handler)
  asyncio_logger.addFilter(quiet)
  try:
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    fail(future)
    loop.close()
    del future
    gc.collect()  # asyncio reports an unretrieved error when the future is collected
  finally:
    asyncio_logger.removeHandler(handler)
    asyncio_logger.removeFilter(quiet)
  return [r.getMessage().split("\n")[0] for r in records]


def _raised_error(function: Callable[[], None]) -> Exception:
  try:
    function()
  except Exception as e:
    return e
  raise AssertionError(f"{function} did not raise")


def test_unretrieved_errors_of_checkpoint_writes_are_not_logged_after_the_one_line():
  def fails_inside_orbax() -> None:
    ocp.args.Composite()["state"]  # a KeyError raised in Orbax's own code

  inside_orbax = _raised_error(fails_inside_orbax)
  assert _log_of_an_error_never_retrieved(lambda f: f.set_exception(inside_orbax)) == []
  # As TensorStore's futures fail: an error made in C++, with no Python frames.
  from_tensorstore = ValueError('OUT_OF_RANGE: Error writing "params.w/0": File too large')
  assert _log_of_an_error_never_retrieved(lambda f: f.set_exception(from_tensorstore)) == []


def test_other_unretrieved_errors_are_still_logged():
  def fails_here() -> None:
    raise KeyError("state")

  here = _raised_error(fails_here)
  logged = _log_of_an_error_never_retrieved(lambda f: f.set_exception(here))
  assert logged == ["Future exception was never retrieved"]


def _read_jsonl(path) -> list[dict]:
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    return []
  return [json.loads(line) for line in text.splitlines() if line.endswith("}")]
