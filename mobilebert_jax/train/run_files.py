"""What every run keeps in its workdir besides checkpoints: run files, atomic JSON, resume look-up.

    config.json        the resolved run config       model_config.json  the architecture
    run_info.json      code revision, devices, where the weights came from
    eval_metrics.json  the final metrics
    checkpoints/       Orbax checkpoints (`checkpointing`)

Every file is written atomically (a temporary name, then a rename), so a reader, or a rerun
after a crash, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import checkpointing

CHECKPOINTS_DIR = "checkpoints"
EVAL_METRICS_FILE = "eval_metrics.json"
CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
RUN_INFO_FILE = "run_info.json"


def write_json(path: str, value: Any) -> None:
  """Writes `value` as indented JSON, atomically."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


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


def latest_checkpoint_metadata(checkpoint_dir: str) -> dict[str, Any] | None:
  """The metadata of the latest checkpoint in `checkpoint_dir`, or None when it has none."""
  if not os.path.isdir(checkpoint_dir):
    return None
  manager = checkpointing.CheckpointManager(checkpoint_dir, read_only=True)
  try:
    if manager.latest_step() is None:
      return None
    return manager.metadata()
  finally:
    manager.close()
