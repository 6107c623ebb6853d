"""Pretraining: `train_and_evaluate(config, workdir)`, masked LM + next sentence from raw text.

The function reads top to bottom in the order a run happens, as `trainers/finetuning.py` does:
tokenizer and data, mesh, model and its first weights, optimizer and steps, checkpoints and the
train state, the train loop, the final evaluation. Everything but the objective and the data is
the shared library (`train.setup`, `train.loop`, ...). It trains any configuration: the
IB-BERT_LARGE teacher, a MobileBERT student from scratch, plain BERT (`configs/pretrain.py`),
from scratch or from any `init_from` fine-tuning accepts.

The objective (`make_mlm_nsp_loss`): the MLM head runs at the [B, P] masked positions only, and

    loss = Σ w·CE(MLM) / (Σ w + 1e-5) + mean CE(NSP),   w = masked_lm_weights [B, P],

the normalisation of the TF1 `run_pretraining.py` of both BERT and MobileBERT (spec §8.3, the
script that trained the teacher). transformers' `MobileBertForPreTraining` takes the plain mean
over the N masked tokens; ours is that times N / (N + 1e-5), a relative 1e-5 / N (2e-9 for a
batch of 256 x 20 predictions), and stays 0 rather than 0/0 for a batch with nothing masked.
`config.loss.mlm_denominator_eps=0` gives transformers' value exactly. Train metrics and
`eval_metrics.json` report `mlm_loss`, `mlm_accuracy` (over masked tokens), `nsp_loss` and
`nsp_accuracy`; evaluation sums over the whole held-out split, padded last batch included.

Data: `train_batches_at` is the one function that knows the input pipeline: BERT-style instances
of `mobilebert_jax.data.pretraining`, created in memory from text files or written once to
ArrayRecord shards, read by the Grain pipeline of `data.pretraining_pipeline`, or streamed from
TFDS. Any iterator with `next()` -> this host's slice of the global batch and JSON `get_state()`
/ `set_state()` can take its place. With
`data.phase2_seq_length` set, BERT's sequence-length schedule runs the first steps on
`max_seq_length` instances and the last `phase2_fraction` on instances of the second length
(`pretraining_pipeline.PhasedBatches` over one iterator per length); the position in both is
saved with every checkpoint, so a resumed run continues on either side of the switch with the
same batches.

A run writes what a fine-tuning run writes (`config.json`, `model_config.json`, `run_info.json`,
`vocab.txt`, `checkpoints/`, `metrics.jsonl`, `tensorboard/`, `eval_metrics.json`) except
predictions. Rerunning with the same workdir resumes from its latest checkpoint
(`train.setup`'s resume rule). Fine-tuning accepts the workdir as `--init_from`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from mobilebert_jax.data import pretraining
from mobilebert_jax.data.batching import WEIGHTS_KEY, StreamBatchIterator
from mobilebert_jax.data.pretraining_pipeline import (
  InstanceShards,
  PhasedBatches,
  PretrainingBatches,
  phase_switch_step,
  pretraining_batches,
)
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForPreTraining
from mobilebert_jax.train import (
  distributed,
  evaluation,
  flops,
  initialization,
  loop,
  optim,
  run,
  setup,
  sharding,
  steps,
)

Array = jax.Array
ConfigDict = ml_collections.ConfigDict
PyTree = Any

# Where the training instances come from (`config.data.source`).
SOURCES = ("files", "array_record", "tfds")


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains a model as `config` says, writing everything into `workdir`.

  Args:
    config: a pretraining config (`configs/pretrain.py`).
    workdir: the run directory; an existing checkpoint there is resumed.

  Returns:
    The final held-out metrics (also written to `workdir/eval_metrics.json`); empty when the
    config names no held-out data.

  Raises:
    loop.NonFiniteLossError: the loss became NaN or infinite (the message names the step).
    RunConfigError, FileNotFoundError: bad data, init source or settings (with the reason).
  """
  if config.task != initialization.PRETRAINING.name:
    raise RunConfigError(f"config.task is {config.task!r}: not a pretraining config")
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  # A checkpoint in the workdir decides the model; look before reading any data.
  resume = setup.find_resume(workdir, config, config.task)

  # ------------------------------------------------------------------------------------------
  # Tokenizer and data
  # ------------------------------------------------------------------------------------------
  tokenizer = setup.run_tokenizer(config, workdir)
  total_steps = run_length(config)
  train_batches = train_batch_schedule(config, tokenizer, total_steps)
  eval_sets = eval_features(config, tokenizer)

  # ------------------------------------------------------------------------------------------
  # Mesh
  # ------------------------------------------------------------------------------------------
  devices = setup.make_devices(config)

  # ------------------------------------------------------------------------------------------
  # Model: the checkpoint's when resuming, else from `init_from` (or from scratch)
  # ------------------------------------------------------------------------------------------
  initial = setup.first_weights(config, initialization.PRETRAINING, tokenizer, resume)
  model_config = initial.model_config
  check_lengths(config, model_config)
  model = MobileBertForPreTraining(model_config)

  # ------------------------------------------------------------------------------------------
  # Optimizer and step; the run (state, checkpoints, loop, final evaluation) is the library's
  # ------------------------------------------------------------------------------------------
  try:
    optimizer = optim.build_optimizer(**config.optimizer.to_dict(), total_steps=max(total_steps, 1))
  except ValueError as e:
    raise RunConfigError(f"--config.optimizer: {e}") from None
  train_step = steps.make_train_step(
    steps.model_loss_fn(
      model, make_mlm_nsp_loss(config.loss.mlm_denominator_eps), model_inputs_fn=pretraining_inputs
    ),
    optimizer.transformation,
    grad_accum_steps=config.grad_accum_steps,
    learning_rate_fn=optimizer.schedule,
  )
  counts = _batch_counts(model_config)
  _, final_metrics = run.train(
    run.RunSpec(
      config=config,
      workdir=workdir,
      model=model,
      total_steps=total_steps,
      optimizer=optimizer,
      train_batches=train_batches,
      make_step=lambda stage: train_step,
      batch_counts=lambda stage, batch: counts(batch),
      make_evaluate=(lambda shardings: held_out_evaluator(model, eval_sets, devices, shardings))
      if eval_sets
      else None,
      what="pretraining",
    ),
    resume=resume,
    initial=initial,
    devices=devices,
  )
  if not eval_sets:
    logging.warning("no held-out data (--config.data.eval_files): nothing to evaluate")
  return final_metrics


def held_out_evaluator(
  model: MobileBertForPreTraining,
  eval_sets: Mapping[str, Mapping[str, np.ndarray]],
  devices: setup.Devices,
  state_shardings: Any,
) -> Callable[[PyTree], dict[str, float]]:
  """`evaluate(params) -> metrics` of a MLM + NSP model on the held-out sets (`eval_features`)."""
  eval_step = sharding.jit_eval_step(
    steps.make_eval_step(model, outputs_fn=mlm_nsp_sums, model_inputs_fn=pretraining_inputs),
    devices.mesh,
    devices.rules,
    state_shardings.params,
  )
  return lambda params: evaluate(eval_step, params, eval_sets, devices)


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------


def pretraining_inputs(batch: Mapping[str, Array]) -> dict[str, Array]:
  """The model's inputs: the token arrays and the [B, P] positions the MLM head scores."""
  return {**steps.default_model_inputs(batch), "masked_positions": batch["masked_lm_positions"]}


def mlm_nsp_sums(outputs: Any, batch: Mapping[str, Array]) -> dict[str, Array]:
  """The batch's MLM and NSP cross-entropies and hits, summed with their weights.

  Args:
    outputs: `MobileBertForPreTrainingOutput` with MLM logits [B, P, V] at
      `masked_lm_positions` and NSP logits [B, 2].
    batch: `masked_lm_ids`, `masked_lm_weights` [B, P], `next_sentence_labels` [B], and
      `weights` [B] (0 for the rows that pad an eval batch) when present.

  Returns:
    float32 scalars: `mlm_loss`, `mlm_accuracy`, `mlm_weight` (Σ w·CE, Σ w·hit and Σ w over
    the masked positions, w = masked_lm_weights × the row's weight) and `nsp_loss`,
    `nsp_accuracy`, `nsp_weight` (the same over the rows).
  """
  logits = outputs.prediction_logits.astype(jnp.float32)
  ids = batch["masked_lm_ids"]
  rows = jnp.asarray(batch.get(WEIGHTS_KEY, jnp.ones(ids.shape[:1])), jnp.float32)
  weights = batch["masked_lm_weights"].astype(jnp.float32) * rows[:, None]
  mlm_ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
  mlm_hits = (jnp.argmax(logits, axis=-1) == ids).astype(jnp.float32)
  nsp_logits = outputs.seq_relationship_logits.astype(jnp.float32)
  labels = batch["next_sentence_labels"].reshape(-1)
  nsp_ce = optax.softmax_cross_entropy_with_integer_labels(nsp_logits, labels)
  nsp_hits = (jnp.argmax(nsp_logits, axis=-1) == labels).astype(jnp.float32)
  return {
    "mlm_loss": jnp.sum(weights * mlm_ce),
    "mlm_accuracy": jnp.sum(weights * mlm_hits),
    "mlm_weight": jnp.sum(weights),
    "nsp_loss": jnp.sum(rows * nsp_ce),
    "nsp_accuracy": jnp.sum(rows * nsp_hits),
    "nsp_weight": jnp.sum(rows),
  }


def make_mlm_nsp_loss(
  mlm_denominator_eps: float = 1e-5,
) -> Callable[[Any, Mapping[str, Array]], tuple[Array, dict[str, Array]]]:
  """The task loss `(outputs, batch) -> (loss, aux)` of the module docstring, for `model_loss_fn`.

  With gradient accumulation each microbatch's MLM term is normalised by its own Σ w, as TF1
  would normalise a batch of that size, and the microbatches are averaged (`make_train_step`).

  Args:
    mlm_denominator_eps: added to Σ w of the MLM loss (TF1: 1e-5; 0: transformers' mean).
  """

  def loss_fn(outputs: Any, batch: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
    sums = mlm_nsp_sums(outputs, batch)
    mlm_denominator = sums["mlm_weight"] + mlm_denominator_eps
    mlm_loss = sums["mlm_loss"] / jnp.where(mlm_denominator > 0, mlm_denominator, 1.0)
    nsp_loss = sums["nsp_loss"] / jnp.maximum(sums["nsp_weight"], 1e-12)
    aux = {
      "mlm_loss": mlm_loss,
      "mlm_accuracy": sums["mlm_accuracy"] / jnp.maximum(sums["mlm_weight"], 1e-12),
      "nsp_loss": nsp_loss,
      "nsp_accuracy": sums["nsp_accuracy"] / jnp.maximum(sums["nsp_weight"], 1e-12),
    }
    return mlm_loss + nsp_loss, aux

  return loss_fn


def metrics_from_sums(sums: Mapping[str, float]) -> dict[str, float]:
  """Split-level metrics from `mlm_nsp_sums` added over batches: means per masked token / row."""
  mlm, nsp = max(sums["mlm_weight"], 1e-12), max(sums["nsp_weight"], 1e-12)
  metrics = {
    "mlm_loss": sums["mlm_loss"] / mlm,
    "mlm_accuracy": sums["mlm_accuracy"] / mlm,
    "nsp_loss": sums["nsp_loss"] / nsp,
    "nsp_accuracy": sums["nsp_accuracy"] / nsp,
  }
  metrics["loss"] = metrics["mlm_loss"] + metrics["nsp_loss"]
  return metrics


def evaluate(
  eval_step: Callable[..., Any],
  params: PyTree,
  eval_sets: Mapping[str, Mapping[str, np.ndarray]],
  devices: setup.Devices,
) -> dict[str, float]:
  """The held-out metrics of every eval set, each prefixed with its name (see `eval_features`)."""
  metrics: dict[str, float] = {}
  for prefix, features in eval_sets.items():
    sums = evaluation.sum_over_batches(
      eval_step,
      params,
      features,
      global_batch_size=devices.eval_batch_size,
      batch_sharding=devices.batch_sharding,
    )
    metrics.update({f"{prefix}{k}": v for k, v in metrics_from_sums(sums).items()})
  return metrics


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def train_batch_schedule(config: ConfigDict, tokenizer: Any, total_steps: int) -> Any:
  """The training batches of the whole run: one length, or BERT's two (`PhasedBatches`)."""
  data = config.data
  first = train_batches_at(config, tokenizer, data.max_seq_length, data.max_predictions_per_seq)
  if not data.phase2_seq_length or total_steps == 0:
    return first
  switch = phase1_steps(config, total_steps)
  second = train_batches_at(
    config, tokenizer, data.phase2_seq_length, data.phase2_max_predictions_per_seq
  )
  logging.info(
    "sequence-length schedule: steps 1-%d at %d tokens, %d-%d at %d tokens",
    switch,
    data.max_seq_length,
    switch + 1,
    total_steps,
    data.phase2_seq_length,
  )
  return PhasedBatches([first, second], [switch])


def train_batches_at(
  config: ConfigDict, tokenizer: Any, seq_length: int, max_predictions: int
) -> PretrainingBatches | StreamBatchIterator:
  """This host's training batches of `seq_length`-token instances, repeated without end.

  The one place that knows the input pipeline. "files" creates the instances of
  `data.train_files` in memory and "array_record" reads those written once to ArrayRecord
  shards (`data.train_dirs`, by `data.pretraining_pipeline.write_instances`); both go through the
  same Grain pipeline (`pretraining_batches`: a global shuffle per epoch, each host reading its
  rows of every global batch, a position that resumes exactly). "tfds" streams a TFDS split
  (`StreamBatchIterator`, one host), since a stream of fresh instances is not random access.

  Raises:
    RunConfigError, FileNotFoundError: bad data settings, or files that do not exist or hold
      fewer than two documents.
  """
  instances = _instance_config(config, seq_length, max_predictions)
  data = config.data
  if _source(config) == "tfds":
    if jax.process_count() > 1:
      # Each host's stream has its own position; checkpoints record one for all.
      raise RunConfigError(
        "--config.data.source=tfds streams on one host only; use text files on several hosts"
      )
    if not data.tfds_name:
      raise RunConfigError("--config.data.source=tfds needs --config.data.tfds_name=NAME")
    examples = pretraining.pretraining_example_stream(
      lambda: _tfds_documents(config, tokenizer, data.tfds_train_split, whole=False),
      tokenizer,
      instances,
      seed=data.seed,
      pool_size=data.pool_size,
    )
    return StreamBatchIterator(
      examples,
      distributed.local_batch_size(config.batch_size),
      shuffle_buffer_size=data.shuffle_buffer_size,
      seed=config.seed,
    )
  if _source(config) == "array_record":
    field = "train_dirs" if seq_length == data.max_seq_length else "phase2_train_dirs"
    directories = _directories(data[field], field, seq_length, max_predictions)
    source, what = directories, f"ArrayRecord instances in {', '.join(directories)}"
  else:
    paths = _expand_globs(data.train_files, "train_files")
    source = _read_files(paths, tokenizer, instances, data.seed)
    count = len(source["input_ids"])
    what = f"{count} training instances of {seq_length} tokens from {len(paths)} file(s)"
  logging.info("%s (Grain pipeline)", what)
  try:
    return pretraining_batches(source, config.batch_size, seed=config.seed, shuffle=True)
  except ValueError as e:
    raise RunConfigError(f"--config.data: {e}") from None


def eval_features(config: ConfigDict, tokenizer: Any) -> dict[str, dict[str, np.ndarray]]:
  """The held-out instances (one pass, `dupe_factor` 1), by metric prefix.

  "" holds them at `max_seq_length`; with a second phase, `seq<L>/` holds them at its length.
  Empty when no held-out data is configured.
  """
  data = config.data
  source = _source(config)
  tfds = source == "tfds"
  wanted = {"tfds": data.tfds_eval_split, "files": data.eval_files, "array_record": data.eval_dirs}
  if not wanted[source]:
    return {}
  lengths = {"": (data.max_seq_length, data.max_predictions_per_seq)}
  if data.phase2_seq_length:
    lengths[f"seq{data.phase2_seq_length}/"] = (
      data.phase2_seq_length,
      data.phase2_max_predictions_per_seq,
    )
  sets = {}
  for prefix, (length, predictions) in lengths.items():
    instances = _instance_config(config, length, predictions, dupe_factor=1)
    if source == "array_record":
      field = "eval_dirs" if not prefix else "phase2_eval_dirs"
      if data[field]:
        sets[prefix] = _read_all(_directories(data[field], field, length, predictions))
    elif tfds:
      documents = _tfds_documents(config, tokenizer, data.tfds_eval_split, whole=True)
      try:
        sets[prefix] = pretraining.pretraining_features(
          documents, tokenizer, instances, seed=data.seed
        )
      except ValueError as e:
        raise RunConfigError(f"--config.data.tfds_eval_split: {e}") from None
    else:
      paths = _expand_globs(data.eval_files, "eval_files")
      sets[prefix] = _read_files(paths, tokenizer, instances, data.seed)
    logging.info("%d held-out instances of %d tokens", len(sets[prefix]["input_ids"]), length)
  return sets


def phase1_steps(config: ConfigDict, total_steps: int) -> int:
  """Steps of the first phase: ⌊(1 − phase2_fraction) · total_steps⌋ (`phase_switch_step`).

  Raises:
    RunConfigError: `phase2_fraction` outside (0, 1), or a phase without steps.
  """
  fraction = config.data.phase2_fraction
  if not 0.0 < fraction < 1.0:
    raise RunConfigError(f"--config.data.phase2_fraction={fraction} must lie in (0, 1)")
  switch = phase_switch_step(total_steps, 1.0 - fraction)
  if not 0 < switch < total_steps:
    raise RunConfigError(
      f"--config.data.phase2_fraction={fraction} of num_train_steps={total_steps} leaves a "
      "phase without steps"
    )
  return switch


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def run_length(config: ConfigDict) -> int:
  """`num_train_steps`, checked: a pretraining run counts updates, not epochs."""
  steps_ = config.num_train_steps
  if steps_ is None or steps_ < 0:
    raise RunConfigError(f"--config.num_train_steps must be a number >= 0, got {steps_}")
  return int(steps_)


def _source(config: ConfigDict) -> str:
  source = config.data.source
  if source not in SOURCES:
    raise RunConfigError(f"--config.data.source={source!r} must be one of {', '.join(SOURCES)}")
  return source


def _directories(spec: str | None, field: str, seq_length: int, max_predictions: int) -> list[str]:
  """The ArrayRecord instance directories of `--config.data.FIELD` (comma-separated), checked.

  Raises:
    RunConfigError: none given, one without a manifest, or instances of another shape.
  """
  directories = [d.strip() for d in (spec or "").split(",") if d.strip()]
  if not directories:
    raise RunConfigError(
      f"--config.data.source=array_record needs --config.data.{field}=DIR[,DIR...] "
      "(written by mobilebert_jax.data.pretraining_pipeline.write_instances)"
    )
  for directory in directories:
    try:
      shards = InstanceShards(directory)
    except (FileNotFoundError, ValueError) as e:
      raise RunConfigError(f"--config.data.{field}: {e}") from None
    shape = (shards.max_seq_length, shards.max_predictions_per_seq)
    if shape != (seq_length, max_predictions):
      raise RunConfigError(
        f"--config.data.{field}: {directory} holds instances of {shape[0]} tokens and "
        f"{shape[1]} predictions, the run wants {seq_length} and {max_predictions}"
      )
  return directories


def _read_all(directories: list[str]) -> dict[str, np.ndarray]:
  """Every instance of the directories, in order, as feature arrays (held-out data)."""
  batches = pretraining_batches(
    directories, 256, seed=0, shuffle=False, num_epochs=1, drop_remainder=False
  )
  with batches:
    parts = list(batches)
  keep = np.concatenate([p[WEIGHTS_KEY] for p in parts]) > 0
  return {k: np.concatenate([p[k] for p in parts])[keep] for k in parts[0] if k != WEIGHTS_KEY}


def _instance_config(
  config: ConfigDict, seq_length: int, max_predictions: int, dupe_factor: int | None = None
) -> pretraining.PretrainingConfig:
  data = config.data
  try:
    return pretraining.PretrainingConfig(
      max_seq_length=seq_length,
      max_predictions_per_seq=max_predictions,
      masked_lm_prob=data.masked_lm_prob,
      short_seq_prob=data.short_seq_prob,
      dupe_factor=data.dupe_factor if dupe_factor is None else dupe_factor,
      whole_word_mask=data.whole_word_mask,
    )
  except ValueError as e:
    raise RunConfigError(f"--config.data: {e}") from None


def _expand_globs(patterns: str | None, field: str) -> list[str]:
  """The files of comma-separated globs, each pattern's matches sorted, in pattern order."""
  if not patterns:
    raise RunConfigError(
      f"pass --config.data.{field}=GLOB (text files, one sentence per line, a blank line "
      "between documents), or --config.data.source=tfds"
    )
  paths: list[str] = []
  for pattern in filter(None, (p.strip() for p in patterns.split(","))):
    matches = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matches:
      raise FileNotFoundError(f"--config.data.{field}: {pattern} matches no file")
    paths.extend(m for m in matches if m not in paths)
  return paths


def _read_files(
  paths: list[str], tokenizer: Any, instances: pretraining.PretrainingConfig, seed: int
) -> dict[str, np.ndarray]:
  try:
    return pretraining.pretraining_features_from_files(paths, tokenizer, instances, seed=seed)
  except ValueError as e:  # too few documents, a line that is not UTF-8: the message says where
    raise RunConfigError(str(e)) from None


def _tfds_documents(config: ConfigDict, tokenizer: Any, split: str, *, whole: bool) -> Any:
  """The documents of a TFDS split: this host's slice, or all of it (`whole`, held-out data)."""
  data = config.data
  return pretraining.tfds_documents(
    data.tfds_name,
    split,
    tokenizer,
    text_field=data.tfds_text_field,
    data_dir=data.tfds_data_dir,
    download=data.tfds_download,
    **({"process_index": 0, "process_count": 1} if whole else {}),
  )


def _batch_counts(model_config: MobileBertConfig) -> Callable[[PyTree], dict[str, int]]:
  """What one global training batch holds, read from its shapes, for the loop's rates.

  The model FLOPs (`train.flops`) are those of a train step with the MLM head at the batch's P
  masked positions, over its padded length (either phase's).
  """

  def counts(batch: PyTree) -> dict[str, int]:
    sequences, length = batch["input_ids"].shape
    predictions = batch["masked_lm_positions"].shape[1]
    step_flops = flops.train_step_flops(
      model_config, length, head="pretraining", masked_positions=predictions
    )
    return {
      "sequences": sequences,
      "tokens": sequences * length,
      loop.FLOPS: sequences * step_flops,
    }

  return counts


def check_lengths(config: ConfigDict, model_config: MobileBertConfig) -> None:
  """Raises RunConfigError for a sequence length beyond the model's position table."""
  for field in ("max_seq_length", "phase2_seq_length"):
    length = config.data[field]
    if length and length > model_config.max_position_embeddings:
      raise RunConfigError(
        f"--config.data.{field}={length} exceeds the model's max_position_embeddings="
        f"{model_config.max_position_embeddings}"
      )
