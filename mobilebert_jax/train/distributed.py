"""Multi-host start-up and process-local batches to global arrays.

On a TPU pod (or any multi-process JAX job) every process runs the same program, sees all
devices in `jax.devices()` but can only feed its own (`jax.local_devices()`). Each process reads
its own slice of every global batch (`data.batching.BatchIterator(process_index=...,
process_count=...)`) and `global_batch_from_local` assembles the slices into one global
`jax.Array` split over the mesh. On a single host all of this is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

logger = logging.getLogger(__name__)

# Setting this environment variable to 1/true turns `initialize_distributed()` on without a flag.
DISTRIBUTED_ENV = "MOBILEBERT_JAX_DISTRIBUTED"


def distributed_requested(flag: bool | None = None) -> bool:
  """Whether multi-host start-up is asked for: the flag, else `$MOBILEBERT_JAX_DISTRIBUTED`."""
  if flag is not None:
    return bool(flag)
  return os.environ.get(DISTRIBUTED_ENV, "").strip().lower() in ("1", "true", "yes")


def initialize_distributed(enabled: bool | None = None, **kwargs: Any) -> bool:
  """Calls `jax.distributed.initialize(**kwargs)` when enabled; otherwise does nothing.

  Must run before anything touches a JAX device (first line of `main`). On Cloud TPU, GKE and
  SLURM the coordinator, process count and id are detected automatically, so no kwargs are
  needed; elsewhere pass `coordinator_address`, `num_processes` and `process_id`.

  Args:
    enabled: True/False, or None to read `$MOBILEBERT_JAX_DISTRIBUTED`.
    **kwargs: forwarded to `jax.distributed.initialize`.

  Returns:
    True when this call (or an earlier one) initialised the distributed runtime.
  """
  if not distributed_requested(enabled):
    return False
  if jax.distributed.is_initialized():
    return True
  jax.distributed.initialize(**kwargs)
  logger.info(
    "jax.distributed initialised: process %d of %d, %d local devices of %d",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def local_batch_size(global_batch_size: int, process_count: int | None = None) -> int:
  """Examples each process loads per global batch.

  Raises:
    ValueError: the global batch does not split evenly over processes.
  """
  process_count = jax.process_count() if process_count is None else process_count
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(
      f"global batch size {global_batch_size} must be a positive multiple of the process count "
      f"{process_count}"
    )
  return global_batch_size // process_count


def global_batch_from_local(
  local_batch: Mapping[str, Any], sharding: NamedSharding
) -> dict[str, jax.Array]:
  """Assembles each process's slice of a batch into global arrays.

  Each process passes its own L examples (e.g. from `BatchIterator(process_index=p,
  process_count=n)`); `jax.make_array_from_process_local_data` puts them on the slices of the
  global batch that this process's devices hold, so no data crosses hosts. Where those slices
  lie depends on the mesh's device order, so the global row order may interleave processes,
  which a per-example loss does not notice.

  Args:
    local_batch: name -> host array [L, ...] (NumPy or anything `np.asarray` accepts).
    sharding: the batch sharding (leading dimension split).

  Returns:
    name -> global `jax.Array` [L · process_count, ...].

  Raises:
    ValueError: entries whose leading dimensions differ, or that do not split over the local
      devices.
  """
  sizes = {k: np.shape(v)[0] if np.ndim(v) else None for k, v in local_batch.items()}
  if len(set(sizes.values())) != 1 or None in sizes.values():
    raise ValueError(f"batch entries need one common leading (example) dimension, got {sizes}")
  out = {}
  for name, value in local_batch.items():
    host = np.asarray(value)
    global_shape = (host.shape[0] * jax.process_count(), *host.shape[1:])
    try:
      out[name] = jax.make_array_from_process_local_data(sharding, host, global_shape)
    except ValueError as e:
      raise ValueError(
        f"batch[{name!r}] of local shape {host.shape} cannot be split over {sharding}: {e}"
      ) from None
  return out
