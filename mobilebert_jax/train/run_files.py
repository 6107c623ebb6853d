"""What every run keeps in its workdir besides checkpoints: run files, atomic JSON, resume look-up.

    config.json        the resolved run config       model_config.json  the architecture
    run_info.json      code revision, devices, where the weights came from
    eval_metrics.json  the final metrics
    checkpoints/       Orbax checkpoints (`checkpointing`)

Every file is written atomically (`mobilebert_jax.atomic_files`: a synced temporary file, then a
rename), so a reader, or a rerun after a crash or a full disk, sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections

from mobilebert_jax import atomic_files
from mobilebert_jax.errors import CheckpointError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import checkpointing

CHECKPOINTS_DIR = "checkpoints"
EVAL_METRICS_FILE = "eval_metrics.json"
CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
RUN_INFO_FILE = "run_info.json"


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON with sorted keys, atomically (see `atomic_files`)."""
  atomic_files.write_json(path, value, indent=2, sort_keys=True)


def write_run_files(
  workdir: str,
  config: ml_collections.ConfigDict,
  model_config: MobileBertConfig,
  weights_source: str,
  start_step: int,
  num_params: int,
) -> None:
  """Writes `config.json`, `model_config.json` and `run_info.json` (process 0 calls this)."""
  write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json_best_effort()))
  write_json(os.path.join(workdir, MODEL_CONFIG_FILE), model_config.to_dict())
  write_json(
    os.path.join(workdir, RUN_INFO_FILE),
    {
      "code": checkpointing.code_revision(),
      "weights": weights_source,
      "start_step": start_step,
      "num_params": num_params,
      "devices": jax.device_count(),
      "processes": jax.process_count(),
      "device_kind": jax.devices()[0].device_kind,
      "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    },
  )


def latest_checkpoint_metadata(
  checkpoint_dir: str, step: int | None = None
) -> dict[str, Any] | None:
  """The metadata of a checkpoint in `checkpoint_dir`: `step`'s, else the newest readable one.

  Returns None when the directory holds no checkpoint. A checkpoint whose metadata cannot be
  read is skipped here (its restore fails later and sets it aside, see
  `CheckpointManager.restore_or_fall_back`).

  Raises:
    CheckpointError: `step` is given and has no readable checkpoint, or no checkpoint's
      metadata can be read.
  """
  if not os.path.isdir(checkpoint_dir):
    return None
  manager = checkpointing.CheckpointManager(checkpoint_dir, read_only=True)
  try:
    steps = manager.all_steps()
    if not steps:
      return None
    errors = []
    for candidate in [step] if step is not None else reversed(steps):
      try:
        return manager.metadata(candidate)
      except FileNotFoundError as e:
        errors.append(str(e))
      except Exception as e:  # unreadable JSON or files: report it, try the previous one
        errors.append(f"step {candidate}: {type(e).__name__}: {e}")
    raise CheckpointError(f"no readable checkpoint metadata in {checkpoint_dir}: {errors}")
  finally:
    manager.close()


def refuse_if_checkpoints_were_lost(checkpoint_dir: str) -> None:
  """Refuses to start from scratch in a workdir whose checkpoints were all set aside as corrupt.

  Raises:
    CheckpointError: `checkpoint_dir` holds no checkpoint but its `.unreadable` sibling does
      (starting again there would silently drop the run's progress).
  """
  aside = checkpointing.unreadable_directory(checkpoint_dir)
  if os.path.isdir(aside) and os.listdir(aside):
    raise CheckpointError(
      f"no complete checkpoint in {checkpoint_dir}, and the ones in {aside} do not restore; "
      f"inspect them, or delete {aside} to start this workdir from scratch"
    )
