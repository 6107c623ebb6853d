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
dropout keys included), so a killed run loses at most the steps since that checkpoint; on resume
the `--config.model.*` overrides may only change implementation switches that leave the
parameters as they are (`initialization.RESUMABLE_MODEL_FIELDS`), anything else is refused.
The loop body (logging, the non-finite guard, evals, checkpoint cadence) is
`mobilebert_jax.train.loop`, shared with the other trainers.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import jax
import ml_collections
from absl import logging

from mobilebert_jax import tasks
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.train import (
  checkpointing,
  distributed,
  evaluation,
  initialization,
  loop,
  optim,
  run_files,
  sharding,
  steps,
  summaries,
)

ConfigDict = ml_collections.ConfigDict
PyTree = Any


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
  """Fine-tunes and evaluates a model as `config` says, writing everything into `workdir`.

  Args:
    config: a task config (see `configs/common.py` for the fields).
    workdir: the run directory; an existing checkpoint there is resumed.

  Returns:
    The final evaluation metrics (also written to `workdir/eval_metrics.json`).

  Raises:
    loop.NonFiniteLossError: the loss became NaN or infinite (the message names the step).
    FileNotFoundError, ValueError: bad data files, init source or settings (with the reason).
  """
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config.task)
  # A checkpoint in the workdir decides the model; look before reading any data.
  checkpoint_dir = os.path.join(workdir, run_files.CHECKPOINTS_DIR)
  resume_metadata = run_files.latest_checkpoint_metadata(checkpoint_dir, config.resume_step)
  if resume_metadata is not None:
    _check_same_task(resume_metadata, task, checkpoint_dir)
  else:
    run_files.refuse_if_checkpoints_were_lost(checkpoint_dir)

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
    saved_config = MobileBertConfig.from_dict(resume_metadata["model_config"], source="hf")
    model_config = initialization.resume_model_config(
      saved_config, initialization.config_overrides(config, task)
    )
    initial = None
  else:
    initial = initialization.initial_weights(config, task, tokenizer)
    model_config = initial.model_config
    weights_source = initial.description
  model = task.model_class(model_config)

  # ------------------------------------------------------------------------------------------
  # Optimizer and steps
  # ------------------------------------------------------------------------------------------
  optimizer, schedule = optim.build_optimizer(
    **config.optimizer.to_dict(), total_steps=max(total_steps, 1)
  )
  state_shardings = sharding.train_state_shardings(model, optimizer, mesh, rules)
  train_step = sharding.jit_train_step(
    steps.make_train_step(
      steps.model_loss_fn(model, task.make_loss(model_config)),
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
      restored = manager.restore_or_fall_back(
        sharding.abstract_train_state(model, optimizer, mesh, rules), config.resume_step
      )
      state, start_step = restored.state, restored.step
      train_batches.set_state(restored.data_state)
      weights_source = f"resumed from {checkpoint_dir} step {start_step}"
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
      run_files.write_run_files(
        workdir, config, model_config, weights_source, start_step, num_params
      )
      writer.write_text("config", config.to_json_best_effort(indent=2), start_step)

    # ----------------------------------------------------------------------------------------
    # Train loop
    # ----------------------------------------------------------------------------------------
    state = loop.run_train_loop(
      state,
      start_step=start_step,
      settings=loop.LoopSettings(
        total_steps=total_steps,
        log_every_steps=config.log_every_steps,
        eval_every_steps=config.eval_every_steps,
        progress_bar=config.progress_bar,
        counts_per_step={"examples": config.batch_size},
      ),
      train_step=train_step,
      next_batch=lambda: distributed.global_batch_from_local(next(train_batches), batch_sharding),
      data_state=train_batches.get_state,
      manager=manager,
      writer=writer,
      evaluate=lambda s: run_eval(s.params, None),
    )

    # ----------------------------------------------------------------------------------------
    # Final evaluation
    # ----------------------------------------------------------------------------------------
    final_step = max(total_steps, start_step)
    final_metrics = run_eval(state.params, workdir)
    writer.write_scalars(final_step, {f"eval/{k}": v for k, v in final_metrics.items()})
    logging.info("final eval (step %d): %s", final_step, loop.format_metrics(final_metrics))
    if is_main:
      run_files.write_json(os.path.join(workdir, run_files.EVAL_METRICS_FILE), final_metrics)
  return final_metrics


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


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


def _check_same_task(metadata: dict[str, Any], task: tasks.Task, checkpoint_dir: str) -> None:
  saved_task = (metadata.get("train_config") or {}).get("task")
  if saved_task != task.name:
    raise RunConfigError(
      f"{checkpoint_dir} holds a checkpoint of task {saved_task!r}, not {task.name!r}: use "
      "another --workdir (or pass the old one as --init_from to start from its weights)"
    )
