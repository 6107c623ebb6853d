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
`mobilebert_jax.train.loop`, shared with the other trainers. With `distill_from` a fine-tuned
teacher's logits join the task loss as soft targets (`mobilebert_jax.train.logit_distillation`);
the teacher is the step's frozen argument.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from typing import Any

import ml_collections
from absl import logging

from mobilebert_jax import inference, tasks
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.data.bucketing import BucketedBatchIterator
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import abstract_params
from mobilebert_jax.train import (
  checkpointing,
  distributed,
  evaluation,
  flops,
  logit_distillation,
  loop,
  optim,
  setup,
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
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config.task)
  # A checkpoint in the workdir decides the model; look before reading any data.
  resume = setup.find_resume(workdir, config, task.name)

  # ------------------------------------------------------------------------------------------
  # Tokenizer and data
  # ------------------------------------------------------------------------------------------
  tokenizer = setup.run_tokenizer(config, workdir)
  started = time.time()
  train_features = task.train_features(config, tokenizer)
  eval_sets = task.eval_sets(config, tokenizer)
  num_train = len(next(iter(train_features.values())))
  logging.info(
    "%s: %d training rows, eval sets %s (%.1fs to read and featurise)",
    task.name,
    num_train,
    {s.name: len(s) for s in eval_sets},
    time.time() - started,
  )
  total_steps = _total_steps(config, num_train)

  # ------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------
  devices = setup.make_devices(config)

  # ------------------------------------------------------------------------------------------
  # Model: the checkpoint's when resuming, else from `init_from` (or from scratch)
  # ------------------------------------------------------------------------------------------
  initial = setup.first_weights(config, task, tokenizer, resume)
  model_config = initial.model_config
  model = task.model_class(model_config)

  # ------------------------------------------------------------------------------------------
  # Optimizer and steps
  # ------------------------------------------------------------------------------------------
  optimizer, schedule = optim.build_optimizer(
    **config.optimizer.to_dict(), total_steps=max(total_steps, 1)
  )
  state_shardings = sharding.train_state_shardings(model, optimizer, devices.mesh, devices.rules)
  task_loss = task.make_loss(model_config)
  teacher = _logit_teacher(config, task, tokenizer, devices) if config.get("distill_from") else None
  if teacher is None:
    loss_fn = steps.model_loss_fn(model, task_loss)
  else:
    loss_fn = logit_distillation.distilled_loss_fn(
      model,
      task_loss,
      teacher.module,
      weight=config.distill_weight,
      temperature=config.distill_temperature,
    )
  jitted_step = sharding.jit_train_step(
    steps.make_train_step(
      loss_fn, optimizer, grad_accum_steps=config.grad_accum_steps, learning_rate_fn=schedule
    ),
    devices.mesh,
    devices.rules,
    state_shardings,
    frozen_shardings=None if teacher is None else teacher.shardings,
  )
  train_step = jitted_step if teacher is None else (lambda s, b: jitted_step(s, b, teacher.params))
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, outputs_fn=evaluation.with_bookkeeping(task.eval_outputs)),
    devices.mesh,
    devices.rules,
    state_shardings.params,
    state_shardings.collections,
  )

  def run_eval(params: PyTree, collections: PyTree, output_dir: str | None) -> dict[str, float]:
    # The model's collections (e.g. QAT ranges) are read, frozen, by every eval step.
    eval_fn = (lambda p, b: eval_step(p, b, collections)) if collections else eval_step
    return evaluation.evaluate(
      eval_fn,
      params,
      eval_sets,
      global_batch_size=devices.eval_batch_size,
      batch_sharding=devices.batch_sharding,
      output_dir=output_dir,
    )

  # ------------------------------------------------------------------------------------------
  # Checkpoints and the train state: restored, built around the first weights, or initialised
  # ------------------------------------------------------------------------------------------
  train_batches = _train_batches(config, train_features)
  manager = checkpointing.CheckpointManager(
    resume.checkpoint_dir,
    save_interval_steps=config.checkpoint_every_steps,
    max_to_keep=config.keep_checkpoints,
    best_metric=task.main_metric if config.eval_every_steps > 0 else None,
    model_config=model_config,
    train_config=config,
  )
  writer = summaries.MetricWriter(workdir)
  with manager, writer:
    start = setup.start_train_state(
      config=config,
      resume=resume,
      initial=initial,
      model=model,
      optimizer=optimizer,
      devices=devices,
      state_shardings=state_shardings,
      manager=manager,
      data_iterator=train_batches,
    )
    del initial  # the host copy of the first weights is no longer needed
    setup.record_start(
      workdir=workdir,
      config=config,
      model_config=model_config,
      devices=devices,
      start=start,
      total_steps=total_steps,
      writer=writer,
      what=f"{task.name} ({num_train} training rows)",
    )

    # ----------------------------------------------------------------------------------------
    # Train loop
    # ----------------------------------------------------------------------------------------
    state = loop.run_train_loop(
      start.state,
      start_step=start.step,
      settings=loop.LoopSettings(
        total_steps=total_steps,
        log_every_steps=config.log_every_steps,
        eval_every_steps=config.eval_every_steps,
        progress_bar=config.progress_bar,
        counts_per_step={"examples": config.batch_size},
        batch_counts=_batch_counts(
          model_config,
          flops.head_of(task.model_class),
          teacher_config=None if teacher is None else teacher.module.config,
        ),
        peak_flops_per_sec=flops.peak_flops(list(devices.mesh.devices.flat), model_config.dtype),
        profile_steps=config.get("profile_steps") or None,
        profile_dir=os.path.join(workdir, "profile"),
      ),
      train_step=train_step,
      next_batch=lambda: distributed.global_batch_from_local(
        next(train_batches), devices.batch_sharding
      ),
      data_state=train_batches.get_state,
      manager=manager,
      writer=writer,
      evaluate=lambda s: run_eval(s.params, s.collections, None),
    )

    # ----------------------------------------------------------------------------------------
    # Final evaluation
    # ----------------------------------------------------------------------------------------
    final_metrics = run_eval(state.params, state.collections, workdir)
    setup.record_final_metrics(workdir, writer, max(total_steps, start.step), final_metrics)
  return final_metrics


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Teacher:
  module: Any
  params: PyTree
  shardings: PyTree


def _logit_teacher(
  config: ConfigDict, task: tasks.Task, tokenizer: Any, devices: setup.Devices
) -> _Teacher:
  """The `distill_from` fine-tuning run, its parameters sharded like a model's.

  Raises:
    RunConfigError: not a float fine-tuning run of this task and vocabulary, or bad
      distillation settings.
  """
  if not 0.0 <= config.distill_weight <= 1.0:
    raise RunConfigError(f"distill_weight must lie in [0, 1], got {config.distill_weight}")
  if config.distill_temperature <= 0:
    raise RunConfigError(f"distill_temperature must be > 0, got {config.distill_temperature}")
  if task.model_overrides(config).get("problem_type") == "regression":
    raise RunConfigError(f"distill_from: {task.name} is a regression, without logits to soften")
  try:
    teacher = inference.load_finetuned(config.distill_from)
  except (FileNotFoundError, ValueError) as e:
    raise RunConfigError(f"distill_from: {e}") from None
  if teacher.task != task.name:
    raise RunConfigError(
      f"distill_from: {config.distill_from} fine-tuned {teacher.task!r}, this run is {task.name!r}"
    )
  if teacher.config.quantization_aware:
    raise RunConfigError(
      f"distill_from: {config.distill_from} is quantization-aware; use a float run"
    )
  ids = list(range(max(tokenizer.vocab_size, teacher.tokenizer.vocab_size)))
  if teacher.tokenizer.vocab_size != tokenizer.vocab_size or (
    teacher.tokenizer.convert_ids_to_tokens(ids) != tokenizer.convert_ids_to_tokens(ids)
  ):
    raise RunConfigError(
      f"distill_from: {config.distill_from} has another vocabulary than this run"
    )
  module = task.model_class(teacher.config)
  shardings = sharding.params_shardings(
    abstract_params(module, boxed=True), devices.mesh, devices.rules
  )
  logging.info(
    "distilling from %s (weight %s, temperature %s)",
    config.distill_from,
    config.distill_weight,
    config.distill_temperature,
  )
  return _Teacher(module, sharding.put_tree(teacher.params, shardings), shardings)


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


def _train_batches(
  config: ConfigDict, features: dict[str, Any]
) -> BatchIterator | BucketedBatchIterator:
  """The training batches: full length, or cut to `config.data.bucket_lengths` when set.

  Bucketed batches reach the same jitted step, which compiles once per bucket length; an epoch
  has as many batches either way, so `_total_steps` holds for both. Evaluation stays at full
  length. What bucketing does to the model's outputs: `mobilebert_jax.data.bucketing`.
  """
  bucket_lengths = tuple(config.data.get("bucket_lengths") or ())
  if not bucket_lengths:
    return BatchIterator(
      features, config.batch_size, shuffle=True, seed=config.seed, drop_remainder=True
    )
  batches = BucketedBatchIterator(
    features,
    config.batch_size,
    bucket_lengths=bucket_lengths,
    shuffle=True,
    seed=config.seed,
    drop_remainder=True,
  )
  logging.info("%s", batches.describe())
  return batches


def _batch_counts(
  model_config: MobileBertConfig, head: str, teacher_config: MobileBertConfig | None = None
) -> Callable[[PyTree], dict[str, int]]:
  """What one global training batch holds, read from its shapes, for the loop's rates.

  Sequences count each choice of a multiple-choice example. Tokens are padded tokens (the
  batch's length: `max_seq_length`, or its bucket's), and the model FLOPs (`train.flops`, a
  train step of the task's head, plus the forward pass of a `distill_from` teacher) are those
  of the padded batch, which is what the devices run.
  """

  def counts(batch: PyTree) -> dict[str, int]:
    *leading, length = batch["input_ids"].shape  # [B, T], or [B, choices, T]
    sequences = math.prod(leading)
    per_sequence = flops.train_step_flops(model_config, length, head=head)
    if teacher_config is not None:
      per_sequence += flops.forward_flops(teacher_config, length, head=head)
    return {
      "sequences": sequences,
      "tokens": sequences * length,
      loop.FLOPS: sequences * per_sequence,
    }

  return counts
