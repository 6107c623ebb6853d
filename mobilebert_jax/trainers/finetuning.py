"""Fine-tuning: `train_and_evaluate(config, workdir)`, one function from data to metrics.

The function reads top to bottom in the order a run happens (banner comments mark the parts):
task and tokenizer, data, mesh, model and its first weights, optimizer, train state, jitted
steps, checkpoints, the train loop, and the final evaluation. Task differences live in
`mobilebert_jax.tasks` as small functions (features, loss, decoding, metrics); nothing here
depends on the task.

A run writes into `workdir`:

    config.json            the resolved run config         model_config.json  the architecture
    run_info.json          code revision, devices, where the weights came from
    vocab.txt              the vocabulary (so that a resumed run needs nothing else)
    checkpoints/<step>/    Orbax checkpoints (state, data iterator position, metadata)
    metrics.jsonl, tensorboard/      train and eval metrics over time
    eval_metrics.json      the final metrics
    predictions ...        the task's prediction files (predictions.json, RTE.tsv, ...)

Restarting with the same workdir resumes from its latest checkpoint (state, data position and
dropout keys included), so a killed run loses at most the steps since that checkpoint. Training
stops with `NonFiniteLossError` naming the step as soon as the loss or the gradient norm stops
being finite; a checkpoint is only ever saved after the metrics up to its step were checked.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from mobilebert_jax import tasks
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import (
  checkpointing,
  distributed,
  evaluation,
  initialization,
  optim,
  schedules,
  sharding,
  steps,
  summaries,
)

ConfigDict = ml_collections.ConfigDict
PyTree = Any

EVAL_METRICS_FILE = "eval_metrics.json"
CONFIG_FILE = "config.json"
MODEL_CONFIG_FILE = "model_config.json"
RUN_INFO_FILE = "run_info.json"
# The `build_optimizer` arguments that shape its learning-rate schedule.
_SCHEDULE_ARGS = (
  "warmup_steps",
  "warmup_proportion",
  "decay",
  "power",
  "end_lr_rate",
  "decay_from_warmup",
)
# Train metrics that must stay finite; a NaN in any of them poisons the next update.
_GUARDED_METRICS = ("loss", "grad_norm", "param_norm")


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss (or gradient or parameter norm)."""


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
  """Fine-tunes and evaluates a model as `config` says, writing everything into `workdir`.

  Args:
    config: a task config (see `configs/common.py` for the fields).
    workdir: the run directory; an existing checkpoint there is resumed.

  Returns:
    The final evaluation metrics (also written to `workdir/eval_metrics.json`).

  Raises:
    NonFiniteLossError: the loss became NaN or infinite (the message names the step).
    FileNotFoundError, ValueError: bad data files, init source or settings (with the reason).
  """
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config.task)
  # A checkpoint in the workdir decides the model; look before reading any data.
  checkpoint_dir = os.path.join(workdir, initialization.CHECKPOINTS_DIR)
  resume_metadata = _latest_checkpoint_metadata(checkpoint_dir, task)

  # ------------------------------------------------------------------------------------------
  # Tokenizer and data
  # ------------------------------------------------------------------------------------------
  vocab_file = initialization.find_vocab_file(config, workdir)
  tokenizer = initialization.load_tokenizer(vocab_file, config.tokenizer.do_lower_case)
  if is_main:
    initialization.keep_vocab(vocab_file, workdir)
  start = time.time()
  train_features = task.train_features(config, tokenizer)
  eval_sets = task.eval_sets(config, tokenizer)
  num_train = len(next(iter(train_features.values())))
  logging.info(
    "%s: %d training rows, eval sets %s (%.1fs to read and featurise; vocabulary %s)",
    task.name,
    num_train,
    {s.name: len(s) for s in eval_sets},
    time.time() - start,
    vocab_file,
  )
  total_steps = _total_steps(config, num_train)

  # ------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------
  mesh = sharding.make_mesh(tuple(config.mesh_shape))
  rules = sharding.logical_axis_rules(config.sharding_rules)
  _check_batch_size(config, mesh.size)
  eval_batch_size = -(-config.eval.batch_size // mesh.size) * mesh.size
  batch_sharding = sharding.batch_sharding(mesh)

  # ------------------------------------------------------------------------------------------
  # Model: the checkpoint's when resuming, else from `init_from` (or from scratch)
  # ------------------------------------------------------------------------------------------
  if resume_metadata is not None:
    model_config = MobileBertConfig.from_dict(resume_metadata["model_config"], source="hf")
    initial = None
    weights_source = f"resumed from {checkpoint_dir} step {resume_metadata['step']}"
  else:
    initial = initialization.initial_weights(config, task, tokenizer)
    model_config = initial.model_config
    weights_source = initial.description
  model = task.model_class(model_config)

  # ------------------------------------------------------------------------------------------
  # Optimizer
  # ------------------------------------------------------------------------------------------
  optimizer_args = config.optimizer.to_dict()
  optimizer = optim.build_optimizer(**optimizer_args, total_steps=max(total_steps, 1))
  # The optimizer's own schedule, rebuilt from the same arguments for the summaries.
  schedule_args = {k: v for k, v in optimizer_args.items() if k in _SCHEDULE_ARGS}
  schedule = schedules.build_schedule(
    optimizer_args["learning_rate"], max(total_steps, 1), **schedule_args
  )
  state_shardings = sharding.train_state_shardings(model, optimizer, mesh, rules)

  # ------------------------------------------------------------------------------------------
  # Steps
  # ------------------------------------------------------------------------------------------
  train_step = sharding.jit_train_step(
    steps.make_train_step(
      model,
      task.make_loss(model_config),
      optimizer,
      grad_accum_steps=config.grad_accum_steps,
      learning_rate_fn=schedule,
    ),
    mesh,
    rules,
    state_shardings,
  )
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, outputs_fn=evaluation.with_bookkeeping(task.eval_outputs)),
    mesh,
    rules,
    state_shardings.params,
  )

  def run_eval(params: PyTree, output_dir: str | None) -> dict[str, float]:
    return evaluation.evaluate(
      eval_step,
      params,
      eval_sets,
      global_batch_size=eval_batch_size,
      batch_sharding=batch_sharding,
      output_dir=output_dir,
    )

  # ------------------------------------------------------------------------------------------
  # Checkpoints and the train state: restored, built around the first weights, or initialised
  # ------------------------------------------------------------------------------------------
  train_batches = BatchIterator(
    train_features, config.batch_size, shuffle=True, seed=config.seed, drop_remainder=True
  )
  manager = checkpointing.CheckpointManager(
    checkpoint_dir,
    save_interval_steps=config.checkpoint_every_steps,
    max_to_keep=config.keep_checkpoints,
    best_metric=task.main_metric if config.eval_every_steps > 0 else None,
    model_config=model_config,
    train_config=config,
  )
  writer = summaries.MetricWriter(workdir)
  with manager, writer:
    if resume_metadata is not None:
      restored = manager.restore(sharding.abstract_train_state(model, optimizer, mesh, rules))
      state, start_step = restored.state, restored.step
      train_batches.set_state(restored.data_state)
    elif initial.params is not None:
      state = sharding.create_train_state_from_params(
        initial.params, optimizer, state_shardings, rng=config.seed
      )
      start_step = 0
    else:
      state = sharding.create_train_state(model, optimizer, mesh, rules, rng=config.seed)
      start_step = 0
    del initial  # the host copy of the first weights is no longer needed

    num_params = sharding.count_params(state.params)
    logging.info(
      "%s | %s | steps %d -> %d (%d training rows) | weights: %s",
      task.name,
      sharding.describe_setup(mesh, config.batch_size, num_params, config.sharding_rules),
      start_step,
      total_steps,
      num_train,
      weights_source,
    )
    if start_step > total_steps:
      logging.warning("the checkpoint (step %d) is past num_train_steps", start_step)
    if is_main:
      _write_run_files(workdir, config, model_config, weights_source, start_step, num_params)
      writer.write_text("config", config.to_json_best_effort(indent=2), start_step)

    # ----------------------------------------------------------------------------------------
    # Train loop
    # ----------------------------------------------------------------------------------------
    pending = _PendingMetrics(manager)
    last_log = (start_step, time.time())
    with summaries.ProgressBar(total_steps, start_step, enabled=config.progress_bar) as bar:
      for step in range(start_step + 1, total_steps + 1):
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = distributed.global_batch_from_local(next(train_batches), batch_sharding)
          state, metrics = train_step(state, batch)
        pending.add(step, metrics)
        bar.update()

        if step % config.log_every_steps == 0 or step == total_steps:
          means = pending.pop_means()
          elapsed_steps, elapsed = step - last_log[0], time.time() - last_log[1]
          means["steps_per_sec"] = elapsed_steps / max(elapsed, 1e-9)
          means["examples_per_sec"] = means["steps_per_sec"] * config.batch_size
          last_log = (step, time.time())
          writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
          bar.set_metrics(loss=means["loss"])
          logging.info("step %d/%d: %s", step, total_steps, _format(means))

        eval_metrics = None
        if config.eval_every_steps and step % config.eval_every_steps == 0 and step < total_steps:
          pending.check()
          eval_metrics = run_eval(state.params, None)
          writer.write_scalars(step, {f"eval/{k}": v for k, v in eval_metrics.items()})
          logging.info("eval at step %d: %s", step, _format(eval_metrics))

        if eval_metrics is not None or step == total_steps or manager.should_save(step):
          pending.check()  # never save a state that follows a non-finite step
          manager.save(
            step,
            state,
            data_state=train_batches.get_state(),
            metrics=eval_metrics,
            force=True,
          )

    # ----------------------------------------------------------------------------------------
    # Final evaluation
    # ----------------------------------------------------------------------------------------
    final_step = max(total_steps, start_step)
    final_metrics = run_eval(state.params, workdir)
    writer.write_scalars(final_step, {f"eval/{k}": v for k, v in final_metrics.items()})
    logging.info("final eval (step %d): %s", final_step, _format(final_metrics))
    if is_main:
      _write_json(os.path.join(workdir, EVAL_METRICS_FILE), final_metrics)
  return final_metrics


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


class _PendingMetrics:
  """Per-step train metrics kept on the devices until they are needed on the host.

  Fetching every step would stall the device pipeline; fetching only at log, eval and save
  points still lets a non-finite loss be reported with its exact step.
  """

  def __init__(self, manager: checkpointing.CheckpointManager):
    self._manager = manager
    self._on_device: list[tuple[int, Mapping[str, jax.Array]]] = []
    self._on_host: list[tuple[int, Mapping[str, np.ndarray]]] = []

  def add(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    self._on_device.append((step, metrics))

  def check(self) -> None:
    """Fetches the pending steps and raises if any of them is not finite.

    Raises:
      NonFiniteLossError: naming the first bad step and the checkpoint a rerun resumes from.
    """
    fetched = jax.device_get(self._on_device)
    self._on_device = []
    for step, metrics in fetched:
      bad = sorted(k for k in _GUARDED_METRICS if not np.isfinite(metrics[k]))
      if bad:
        raise NonFiniteLossError(_divergence_message(step, metrics, bad, self._manager))
    self._on_host.extend(fetched)

  def pop_means(self) -> dict[str, float]:
    """Checks the steps since the last call and returns the mean of each metric over them."""
    self.check()
    steps, self._on_host = self._on_host, []
    if not steps:
      return {}
    return {k: float(np.mean([m[k] for _, m in steps])) for k in steps[-1][1]}


def _divergence_message(
  step: int, metrics: Mapping[str, Any], bad: list[str], manager: checkpointing.CheckpointManager
) -> str:
  latest = manager.latest_step()
  if latest is None:
    resume = "no checkpoint was saved before it"
  else:
    resume = (
      f"the last checkpoint (step {latest} in {manager.directory}) was saved before it and is "
      "intact; rerunning with the same workdir resumes from it"
    )
  return (
    f"training diverged at step {step}: loss={float(metrics['loss'])}, "
    f"grad_norm={float(metrics['grad_norm'])}, param_norm={float(metrics['param_norm'])} "
    f"({', '.join(bad)} not finite). Lower the learning rate "
    f"(--config.optimizer.learning_rate) or check the data; {resume}."
  )


def _total_steps(config: ConfigDict, num_train: int) -> int:
  """The run length: `num_train_steps`, else `num_epochs` passes over full batches."""
  if config.num_train_steps is not None:
    if config.num_train_steps < 0:
      raise ValueError(f"num_train_steps must be >= 0, got {config.num_train_steps}")
    return int(config.num_train_steps)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(
      f"{num_train} training rows make no full batch of --config.batch_size={config.batch_size}"
    )
  return math.ceil(config.num_epochs * steps_per_epoch)


def _check_batch_size(config: ConfigDict, num_devices: int) -> None:
  per_update = config.batch_size // max(config.grad_accum_steps, 1)
  if config.batch_size % config.grad_accum_steps or per_update % num_devices:
    raise ValueError(
      f"--config.batch_size={config.batch_size} must split into grad_accum_steps="
      f"{config.grad_accum_steps} microbatches that each divide over the {num_devices} devices"
    )


def _latest_checkpoint_metadata(checkpoint_dir: str, task: tasks.Task) -> dict[str, Any] | None:
  """The metadata of the workdir's latest checkpoint (None if it has none), checked for the task."""
  if initialization.find_checkpoint(checkpoint_dir) is None:
    return None
  manager = checkpointing.CheckpointManager(checkpoint_dir, read_only=True)
  try:
    if manager.latest_step() is None:
      return None
    metadata = manager.metadata()
  finally:
    manager.close()
  saved_task = (metadata.get("train_config") or {}).get("task")
  if saved_task != task.name:
    raise ValueError(
      f"{checkpoint_dir} holds a checkpoint of task {saved_task!r}, not {task.name!r}: use "
      "another --workdir (or pass the old one as --init_from to start from its weights)"
    )
  return metadata


def _format(metrics: Mapping[str, float]) -> str:
  return ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


def _write_json(path: str, value: Any) -> None:
  """Writes JSON atomically: a reader sees the old file or the new one, never half of one."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def _write_run_files(
  workdir: str,
  config: ConfigDict,
  model_config: MobileBertConfig,
  weights_source: str,
  start_step: int,
  num_params: int,
) -> None:
  _write_json(os.path.join(workdir, CONFIG_FILE), json.loads(config.to_json_best_effort()))
  _write_json(os.path.join(workdir, MODEL_CONFIG_FILE), model_config.to_dict())
  _write_json(
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
