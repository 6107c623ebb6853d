"""`--compilation_cache_dir`: a second run of the same command compiles nothing.

The command lines (`cli.run`) point JAX's persistent compilation cache at a per-user directory
by default. The slow tests run a tiny SQuAD fine-tuning as a user would (`python -m`, a fresh
process each time, as only a new process shows what the cache saves) with
`XDG_CACHE_HOME` in a temporary directory, so nothing is written to the real cache. JAX's
compile log (`JAX_LOG_COMPILES=1`) names every compilation and every cache hit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from mobilebert_jax import cli, finetune
from mobilebert_jax.demo import VOCAB_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTDATA = os.path.join(REPO, "tests", "testdata")
COMMAND = [
  "--task=squad",
  "--config=configs/squad.py:size=tiny",
  f"--config.data.data_dir={os.path.join(TESTDATA, 'squad')}",
  f"--config.tokenizer.vocab_file={VOCAB_FILE}",
  "--config.num_train_steps=2",
]
COMPILED = re.compile(r"Finished XLA compilation of (\S+)")
HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def run_command(workdir, xdg_cache_home, *flags: str) -> tuple[list[str], list[str]]:
  """Runs the command in a new process; returns (compiled modules, cache hits) from its log."""
  env = dict(os.environ)
  for name in list(env):
    # The user's own JAX cache settings must not leak into the test.
    if name.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE", "JAX_ENABLE_COMP")):
      del env[name]
  env.update(
    XDG_CACHE_HOME=str(xdg_cache_home),
    JAX_LOG_COMPILES="1",
    # Only speeds compiling up; the cache keys include it, the same in every run.
    JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    JAX_PLATFORMS="cpu",
    XLA_FLAGS="",  # one CPU device compiles faster than conftest's eight
  )
  result = subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.finetune", f"--workdir={workdir}", *COMMAND, *flags],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=REPO,
    env=env,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert os.path.isfile(os.path.join(workdir, "eval_metrics.json"))
  # The compile log writes `jit(<lambda>)` where the hit names the module `jit__lambda`.
  compiled = [re.sub(r"\W", "_", name).rstrip("_") for name in COMPILED.findall(result.stderr)]
  return sorted(compiled), sorted(HIT.findall(result.stderr))


def files_under(path) -> dict[str, int]:
  """Relative path -> size of every file under `path` ({} when it does not exist)."""
  found = {}
  for root, _, names in os.walk(path):
    for name in names:
      full = os.path.join(root, name)
      found[os.path.relpath(full, path)] = os.path.getsize(full)
  return found


def test_default_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert cli.default_compilation_cache_dir() == str(tmp_path / "mobilebert_jax" / "jax_cache")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert cli.default_compilation_cache_dir() == str(
    tmp_path / "home" / ".cache" / "mobilebert_jax" / "jax_cache"
  )


def test_every_command_line_has_the_flag(tmp_path):
  parsed = finetune.parse_flags(
    ["mobilebert-finetune", f"--workdir={tmp_path}", *COMMAND, "--compilation_cache_dir=none"]
  )
  assert parsed.compilation_cache_dir == "none"
  parsed = finetune.parse_flags(["mobilebert-finetune", f"--workdir={tmp_path}", *COMMAND])
  assert parsed.compilation_cache_dir is None


@pytest.fixture
def jax_cache_settings():
  """Restores JAX's cache settings, which `configure_compilation_cache` changes process-wide."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  names = (
    "jax_compilation_cache_dir",
    "jax_enable_compilation_cache",
    "jax_persistent_cache_min_compile_time_secs",
  )
  saved = {name: getattr(jax.config, name) for name in names}
  yield jax.config
  for name, value in saved.items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def test_in_process_calls_keep_the_process_settings_unless_asked(tmp_path, jax_cache_settings):
  def parse(*flags: str):
    return finetune.parse_flags(["mobilebert-finetune", f"--workdir={tmp_path}", *COMMAND, *flags])

  before = jax_cache_settings.jax_compilation_cache_dir
  assert cli.configure_compilation_cache(parse(), use_default=False) == before
  assert jax_cache_settings.jax_compilation_cache_dir == before

  wanted = str(tmp_path / "cache")
  flag = f"--compilation_cache_dir={wanted}"
  assert cli.configure_compilation_cache(parse(flag), use_default=False) == wanted
  assert jax_cache_settings.jax_compilation_cache_dir == wanted and os.path.isdir(wanted)

  off = parse("--compilation_cache_dir=none")
  assert cli.configure_compilation_cache(off, use_default=True) is None
  assert jax_cache_settings.jax_compilation_cache_dir is None


@pytest.mark.slow
def test_a_second_run_loads_every_compiled_step(tmp_path):
  cache = tmp_path / "xdg" / "mobilebert_jax" / "jax_cache"
  # First run: the default directory, empty; everything compiles and is written.
  compiled, hits = run_command(tmp_path / "run1", tmp_path / "xdg")
  written = files_under(cache)
  assert hits == []
  assert any(name.startswith("jit_step_without_frozen-") for name in written)  # the train step
  assert len(written) >= len(set(compiled)) > 0

  # Second run, naming the same directory: every compilation is a hit, nothing new is written.
  compiled_again, hits = run_command(
    tmp_path / "run2", tmp_path / "elsewhere", f"--compilation_cache_dir={cache}"
  )
  assert hits == compiled_again == compiled, (hits, compiled_again, compiled)
  assert "jit_step_without_frozen" in hits
  assert files_under(cache) == written
  assert files_under(tmp_path / "elsewhere") == {}


@pytest.mark.slow
def test_none_writes_no_cache(tmp_path):
  compiled, hits = run_command(tmp_path / "run", tmp_path / "xdg", "--compilation_cache_dir=none")
  assert compiled and hits == []
  assert files_under(tmp_path / "xdg") == {}
