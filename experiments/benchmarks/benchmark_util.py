"""Shared plumbing of the CPU benchmarks: thread pinning, timing, provenance, weight copying.

`pin_cpus` must run before JAX or PyTorch is imported: both size their thread pools when they
start. It restricts the whole process to the first N CPUs with `sched_setaffinity`, which bounds
XLA's and PyTorch's parallelism alike (no process can run on more cores than its affinity mask,
whatever its pool sizes), and then `match_torch_threads` makes PyTorch use exactly N intra-op
threads and one inter-op thread, so it does not oversubscribe the N cores either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

PyTree = Any


def pin_cpus(num_cpus: int) -> list[int]:
  """Restricts this process (and the threads it will start) to the first `num_cpus` CPUs.

  Call before importing jax or torch.

  Args:
    num_cpus: how many CPUs to keep.

  Returns:
    The CPU ids now allowed.

  Raises:
    ValueError: more CPUs asked for than the process may use.
  """
  available = sorted(os.sched_getaffinity(0))
  if num_cpus > len(available):
    raise ValueError(f"asked for {num_cpus} CPUs but only {available} are available")
  chosen = available[:num_cpus]
  os.sched_setaffinity(0, chosen)
  # OpenMP (PyTorch's intra-op pool) and Eigen read these when they start.
  os.environ["OMP_NUM_THREADS"] = str(num_cpus)
  os.environ["MKL_NUM_THREADS"] = str(num_cpus)
  if num_cpus == 1:
    # One CPU: let XLA run single-threaded rather than time-slice a pool on one core.
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = (
      f"{flags} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
  return chosen


def match_torch_threads(num_cpus: int) -> None:
  """Makes PyTorch use `num_cpus` intra-op threads and one inter-op thread."""
  import torch

  torch.set_num_threads(num_cpus)
  # Allowed once per process, before any inter-op work; a second call raises.
  with contextlib.suppress(RuntimeError):
    torch.set_num_interop_threads(1)


def load_average() -> tuple[float, float, float]:
  """The 1, 5 and 15 minute load averages."""
  return os.getloadavg()


@dataclasses.dataclass
class Timing:
  """Wall times of the repeats of one measurement, in seconds."""

  times: list[float]
  load_before: tuple[float, float, float]
  load_after: tuple[float, float, float]

  @property
  def median(self) -> float:
    return statistics.median(self.times)

  @property
  def spread(self) -> tuple[float, float]:
    return min(self.times), max(self.times)


def time_blocks(
  run_a: Callable[[], None], run_b: Callable[[], None], repeats: int, warmup: int
) -> tuple[Timing, Timing]:
  """Times two workloads in blocks ordered a, b, b, a; each block starts with `warmup` calls.

  Why blocks and this order: on a shared machine the background load drifts, so timing all of
  a and then all of b would favour whichever ran in the quieter period; the a-b-b-a order
  gives both the same average position in time. Alternating single calls (a, b, a, b, ...) is
  worse here: after a PyTorch training step, the next XLA step in the same process was measured
  ~2x slower (memory state left behind by the other framework); the first call of each block
  absorbs that, and `warmup` calls are not timed.

  Args:
    run_a: first workload (blocks until done).
    run_b: second workload.
    repeats: timed calls per workload, split over its two blocks.
    warmup: untimed calls at the start of every block.

  Returns:
    (timing of a, timing of b).
  """
  first, second = (repeats + 1) // 2, repeats // 2
  times: dict[int, list[float]] = {0: [], 1: []}
  before = load_average()
  for which, count in ((0, first), (1, first), (1, second), (0, second)):
    if count == 0:
      continue
    run = run_a if which == 0 else run_b
    for _ in range(warmup):
      run()
    for _ in range(count):
      start = time.perf_counter()
      run()
      times[which].append(time.perf_counter() - start)
  after = load_average()
  return Timing(times[0], before, after), Timing(times[1], before, after)


def git_revision(path: str) -> str:
  """The commit SHA of the repository holding `path`, with "+dirty" if files are modified."""
  try:
    sha = subprocess.run(
      ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
      ["git", "status", "--porcelain", "--untracked-files=no"],
      cwd=path,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return sha + ("+dirty" if status else "")


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo (platform's answer elsewhere)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def software_versions() -> dict[str, str]:
  """Versions of the packages that determine the numbers."""
  import importlib.metadata

  versions = {"python": platform.python_version()}
  for package in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers"):
    try:
      versions[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      versions[package] = "not installed"
  return versions


def torch_state_dict_to_params(state_dict: dict[str, Any], config: Any, model_class: str) -> PyTree:
  """Copies a transformers state dict into our parameter tree (unscanned) via `hf_names`.

  Both models of a benchmark then hold the same numbers, so neither meets denormals or
  special values the other does not.
  """
  import numpy as np
  from flax import traverse_util

  from mobilebert_jax.model.models import MODEL_CLASSES, abstract_params
  from mobilebert_jax.weights import hf_names

  shapes = traverse_util.flatten_dict(abstract_params(MODEL_CLASSES[model_class](config)))
  params = {}
  for mapping in hf_names.model_table(config, model_class):
    array = state_dict[mapping.theirs].detach().cpu().numpy()
    params[mapping.ours] = hf_names.to_ours(array, mapping.transform, shapes[mapping.ours].shape)
  missing = set(shapes) - set(params)
  if missing:
    raise ValueError(f"no value for {sorted(missing)[:3]}")
  return traverse_util.unflatten_dict({k: np.asarray(v, np.float32) for k, v in params.items()})


def released_models(model_class: str, attn_implementation: str = "sdpa") -> tuple[Any, PyTree, Any]:
  """The released configuration in both frameworks with the same random weights.

  transformers' initialiser (seed 0) draws the weights; `torch_state_dict_to_params` copies them
  into ours.

  Args:
    model_class: e.g. "MobileBertForQuestionAnswering" (two labels where a head has labels).
    attn_implementation: transformers' attention ("sdpa", its default, or "eager").

  Returns:
    (our `MobileBertConfig`, our unscanned float32 params, transformers' model in train mode).
  """
  import torch
  import transformers

  from mobilebert_jax.model.config import MobileBertConfig

  config = MobileBertConfig.from_preset("mobilebert-uncased", num_labels=2)
  hf_kwargs = {
    k: v
    for k, v in config.to_hf_dict().items()
    if k not in ("model_type", "true_hidden_size", "label2id", "id2label")
  }
  torch.manual_seed(0)
  peer = getattr(transformers, model_class)(
    transformers.MobileBertConfig(**hf_kwargs, attn_implementation=attn_implementation)
  )
  return config, torch_state_dict_to_params(peer.state_dict(), config, model_class), peer


def run_json_subprocess(
  command: list[str], *, cwd: str, env: dict[str, str] | None = None, timeout_s: float = 1800
) -> dict[str, Any]:
  """Runs a benchmark child process and returns the JSON object on the last line of its stdout.

  A measurement that must start from a fresh process (compile caches, memory high-water marks)
  runs this way; the child's stderr is shown only when it fails.

  Raises:
    RuntimeError: the child failed or printed no JSON.
  """
  import json

  result = subprocess.run(
    command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False
  )
  lines = result.stdout.strip().splitlines()
  if result.returncode != 0 or not lines:
    raise RuntimeError(
      f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    )
  return json.loads(lines[-1])
