"""Distillation: `train_and_evaluate(config, workdir)`, a MobileBERT student from a teacher.

The recipe of the paper and of the original TF1 code (docs/training.md §distillation), as two
runs of the shared training loop over the pretraining data:

1. `workdir/phase1/`: layer-wise knowledge transfer (`config.distill.strategy`): "progressive"
   (the default: L stages of P steps, stage k training block k at 3× the rate, earlier blocks
   at 0.3×, later ones frozen) or "joint" (every block at once, every step). Everything outside
   the encoder is frozen and was copied from the teacher.
2. `workdir/`: pretraining distillation, MLM against α·one-hot + (1 − α)·teacher distribution
   plus NSP, with a fresh optimizer and step counter, from phase 1's weights. The "auxiliary"
   strategy has no phase 1 and adds every block's transfer terms to this loss.

With `distill.semantics=tf2` the run is the TF2 Model Garden's instead (`tf2_phases`): one run
per layer-wise stage, `workdir/phase1/stage_<k>`, each with a fresh optimizer, then the
pretraining-distillation stage in `workdir`, with `train.tf2_distillation`'s losses and updates,
and both models running their configured dropout, as the Model Garden's train step does.

`distill.phase1_steps=0` with strategy "progressive" or "joint" gives pretraining distillation
alone (from the teacher's copied embeddings and heads). The teacher runs forward only (without
dropout, except in TF2 mode), sharded like the student and passed to the jitted step as its
frozen tree (optionally in bfloat16: `teacher_dtype`); in stage k both models run only the
blocks the stage's losses read (`distillation.TransferSettings.blocks`), one compiled step per
stage.

Each phase is an ordinary run directory (checkpoints with the data position, metrics,
TensorBoard); rerunning the command resumes where a run stopped: inside phase 1, at its end, or
inside phase 2. The finished `workdir` is a pretraining-style workdir: fine-tuning takes it as
`--init_from`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForPreTraining, abstract_params, init_params
from mobilebert_jax.train import (
  distillation,
  flops,
  initialization,
  loop,
  optim,
  run,
  setup,
  sharding,
  steps,
  tf2_distillation,
  transfer_losses,
)
from mobilebert_jax.trainers import pretraining

Array = jax.Array
ConfigDict = ml_collections.ConfigDict
PyTree = Any

PHASE1_DIR = "phase1"


@dataclasses.dataclass(frozen=True)
class Phase:
  """One run of a distillation: phase 1, phase 2, or one stage of the TF2 form.

  Attributes:
    spec: what it trains (its name is recorded in its checkpoints).
    workdir: its run directory.
    total_steps: its length in updates.
    optimizer: its optimizer (a fresh state at its start).
    stage_of: update count -> the stage whose compiled step runs it (None: one step for all).
    make_step: stage -> the pure step `train_step(state, batch, frozen) -> (state, metrics)`.
    blocks_of_stage: stage -> (student, teacher) blocks run, for the cost split; None: all.
    evaluate: evaluate the held-out MLM/NSP metrics during and after it.
  """

  spec: initialization.ModelSpec
  workdir: str
  total_steps: int
  optimizer: optim.Optimizer
  stage_of: Callable[[int], int | None]
  make_step: Callable[[int | None], steps.TrainStepFn]
  blocks_of_stage: Callable[[int | None], tuple[int | None, int | None]]
  evaluate: bool


def train_and_evaluate(config: ConfigDict, workdir: str) -> dict[str, float]:
  """Distils a student from `config.teacher` as `config` says, writing into `workdir`.

  Returns:
    The student's final held-out metrics (also in `workdir/eval_metrics.json`); empty when the
    config names no held-out data.

  Raises:
    RunConfigError, FileNotFoundError: a bad teacher, data or setting (with the reason).
    loop.NonFiniteLossError: the loss became NaN or infinite.
  """
  if config.task != initialization.DISTILLATION.name:
    raise RunConfigError(f"config.task is {config.task!r}: not a distillation config")
  if not config.teacher:
    raise RunConfigError("no teacher: pass --teacher=SOURCE (a pretraining workdir, HF dir, ...)")
  _check_distill_settings(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  # Checked here so that the message names the flag the user gave (the vocabulary search below
  # sees the teacher as `init_from`).
  initialization.check_source_exists(config.teacher, "--teacher")
  # The vocabulary: the config's, the workdir's, else the one beside the teacher's weights.
  vocab_config = config.copy_and_resolve_references()
  vocab_config.init_from = config.teacher
  tokenizer = setup.run_tokenizer(vocab_config, workdir)
  eval_sets = pretraining.eval_features(config, tokenizer)
  devices = setup.make_devices(config)

  # ------------------------------------------------------------------------------------------
  # The two models: the teacher's weights (frozen, sharded), the student's architecture
  # ------------------------------------------------------------------------------------------
  teacher_config, teacher_params = load_teacher(config, tokenizer)
  teacher_model = MobileBertForPreTraining(teacher_config)
  teacher_shardings = sharding.params_shardings(
    abstract_params(teacher_model, boxed=True), devices.mesh, devices.rules
  )
  teacher_params = sharding.put_tree(teacher_params, teacher_shardings)
  student_config = _student_config(config, tokenizer, teacher_config)
  student_model = MobileBertForPreTraining(student_config)
  pretraining.check_lengths(config, student_config)
  settings = transfer_settings(config, student_config, teacher_config)

  def first_student_params() -> PyTree:
    params = init_params(student_model, config.seed)
    if not config.distill.copy_from_teacher:
      return params
    teacher_host = jax.device_get(teacher_params)
    try:
      if config.distill.semantics == "tf2":  # the Model Garden's: the embedding layer only
        params, copied = tf2_distillation.copy_embeddings_tf2(
          params,
          teacher_host,
          student_config.normalization_type,
          teacher_config.normalization_type,
        )
        report = distillation.CopyReport(tuple(copied), ())
      else:
        params, report = distillation.copy_from_teacher(
          params, teacher_host, student_config=student_config, teacher_config=teacher_config
        )
    except ValueError as e:
      raise RunConfigError(str(e)) from None
    logging.info(
      "student initialised from the teacher: copied %d tensors %s; kept as initialised "
      "(the teacher has none of that name, or the original does not copy it): %s",
      len(report.copied),
      list(report.copied),
      list(report.kept),
    )
    return params

  run_phase = _PhaseRunner(
    config=config,
    tokenizer=tokenizer,
    devices=devices,
    student_model=student_model,
    teacher_model=teacher_model,
    teacher_params=teacher_params,
    teacher_shardings=teacher_shardings,
    eval_sets=eval_sets,
  )

  # ------------------------------------------------------------------------------------------
  # The phases in order, each from the last one's weights; a rerun resumes the last one started
  # ------------------------------------------------------------------------------------------
  if config.distill.semantics == "tf2":
    phases = tf2_phases(config, workdir, settings, student_model, teacher_model)
  else:
    phase1 = transfer_phase(config, workdir, settings, student_model, teacher_model)
    phase2 = distillation_phase(config, workdir, settings, student_model, teacher_model)
    phases = [p for p in (phase1, phase2) if p is not None]
  started = [
    i
    for i, phase in enumerate(phases)
    if setup.find_resume(phase.workdir, _phase_config(config, phase), phase.spec.name).resuming
  ]
  first = first_student_params
  metrics: dict[str, float] = {}
  for phase in phases[started[-1] if started else 0 :]:
    params, metrics = run_phase(phase, first_params=first)
    host = jax.device_get(params)
    del params
    first = functools.partial(lambda p: p, host)
  return metrics


# ----------------------------------------------------------------------------------------------
# The phases
# ----------------------------------------------------------------------------------------------


def transfer_settings(
  config: ConfigDict, student_config: MobileBertConfig, teacher_config: MobileBertConfig
) -> distillation.TransferSettings:
  """The layer-wise transfer settings of `config.distill`."""
  d = config.distill
  try:
    layer_map = distillation.resolve_layer_map(
      d.layer_map, student_config.num_hidden_layers, teacher_config.num_hidden_layers
    )
  except ValueError as e:
    raise RunConfigError(f"--config.distill.layer_map: {e}") from None
  _check_transfer_widths(student_config, teacher_config)
  return distillation.TransferSettings(
    layer_map=layer_map,
    semantics=transfer_losses.Semantics(
      name="tf1",
      layer_norm_eps=d.layer_norm_eps,
      tf1_all_layer_statistics=d.teacher_all_layer_statistics,
    ),
    factors=transfer_losses.TransferFactors(**d.factors.to_dict()),
    steps_per_stage=max(d.steps_per_stage, 1),
    strategy=d.strategy,
  )


def transfer_phase(
  config: ConfigDict,
  workdir: str,
  settings: distillation.TransferSettings,
  student_model: MobileBertForPreTraining,
  teacher_model: MobileBertForPreTraining,
) -> Phase | None:
  """Phase 1 (None for the "auxiliary" strategy or `distill.phase1_steps=0`)."""
  total = phase1_steps(config, settings.num_layers)
  if total == 0:
    return None
  optimizer = distillation.transfer_optimizer(
    settings,
    total_steps=total,
    layer_rate_boost=config.distill.layer_rate_boost,
    **config.transfer_optimizer.to_dict(),
  )
  return Phase(
    spec=initialization.DISTILLATION_TRANSFER,
    workdir=os.path.join(workdir, PHASE1_DIR),
    total_steps=total,
    optimizer=optimizer,
    stage_of=settings.stage_of,
    make_step=lambda stage: _shared_step(
      config,
      distillation.transfer_loss_fn(student_model, teacher_model, settings, stage),
      optimizer,
    ),
    blocks_of_stage=settings.blocks,
    evaluate=False,
  )


def distillation_phase(
  config: ConfigDict,
  workdir: str,
  settings: distillation.TransferSettings,
  student_model: MobileBertForPreTraining,
  teacher_model: MobileBertForPreTraining,
) -> Phase:
  """Phase 2: pretraining distillation (with every block's transfer terms for "auxiliary")."""
  d = config.distill
  loss = distillation.DistillationSettings(
    ground_truth_ratio=d.ground_truth_ratio,
    temperature=d.temperature,
    mlm_denominator_eps=config.loss.mlm_denominator_eps,
    transfer=settings if d.strategy == "auxiliary" else None,
  )
  total = pretraining.run_length(config)
  try:
    optimizer = optim.build_optimizer(**config.optimizer.to_dict(), total_steps=max(total, 1))
  except ValueError as e:
    raise RunConfigError(f"--config.optimizer: {e}") from None
  return Phase(
    spec=initialization.DISTILLATION,
    workdir=workdir,
    total_steps=total,
    optimizer=optimizer,
    stage_of=lambda step: None,
    make_step=lambda stage: _shared_step(
      config, distillation.distillation_loss_fn(student_model, teacher_model, loss), optimizer
    ),
    blocks_of_stage=lambda stage: (None, None),
    evaluate=True,
  )


def tf2_phases(
  config: ConfigDict,
  workdir: str,
  settings: distillation.TransferSettings,
  student_model: MobileBertForPreTraining,
  teacher_model: MobileBertForPreTraining,
) -> list[Phase]:
  """The TF2 Model Garden's run (`distill.semantics=tf2`): L layer-wise stages and the PD stage.

  Each stage is its own run (`workdir/phase1/stage_<k>`, then `workdir`) with a fresh optimizer
  (`tf2_distillation.stage_optimizer`: per-variable clipping, bias-corrected LAMB, the stage's
  trainable variables) and step counter, as the Model Garden rebuilds both at every stage; the
  losses are `tf2_distillation`'s, quirks included.
  """
  num_layers = settings.num_layers
  rate = config.transfer_optimizer.learning_rate
  period = config.distill.steps_per_stage
  pd_steps = pretraining.run_length(config)
  opt = config.optimizer
  warmup = opt.warmup_steps
  if warmup is None:
    warmup = int((opt.warmup_proportion or 0.0) * pd_steps)
  schedules = {
    "layer_wise": tf2_distillation.StageSchedule(rate, rate, decay_steps=max(period, 1)),
    "pretrain": tf2_distillation.StageSchedule(
      opt.learning_rate,
      opt.learning_rate * opt.end_lr_rate,
      decay_steps=max(pd_steps, 1),
      warmup_steps=warmup,
    ),
  }
  phases = []
  for stage in range(num_layers + 1):
    optimizer = tf2_distillation.stage_optimizer(
      stage,
      num_layers,
      **schedules,
      weight_decay=config.transfer_optimizer.weight_decay,
      clip_norm=config.transfer_optimizer.clip_norm,
    )
    layer_wise = stage < num_layers
    phases.append(
      Phase(
        spec=initialization.DISTILLATION_TRANSFER if layer_wise else initialization.DISTILLATION,
        workdir=os.path.join(workdir, PHASE1_DIR, f"stage_{stage}") if layer_wise else workdir,
        total_steps=period if layer_wise else pd_steps,
        optimizer=optimizer,
        stage_of=functools.partial(lambda k, step: k, stage),
        make_step=functools.partial(
          _tf2_step, config, settings, student_model, teacher_model, optimizer
        ),
        blocks_of_stage=functools.partial(
          lambda k, _: settings.blocks(k) if k < num_layers else (None, None), stage
        ),
        evaluate=not layer_wise,
      )
    )
  return phases


def _tf2_step(
  config: ConfigDict,
  settings: distillation.TransferSettings,
  student_model: MobileBertForPreTraining,
  teacher_model: MobileBertForPreTraining,
  optimizer: optim.Optimizer,
  stage: int,
) -> steps.TrainStepFn:
  """One Model Garden update of `stage` (its gradients come with the norms Keras clips by).

  The Model Garden's `train_step` calls both models with `training=True`, so both run their
  configured dropout, the teacher's included (its `trainable=False` does not turn dropout off):
  the step's key is `fold_in(state.rng, state.step)`, as in the shared step, so a resumed run
  draws the same masks.
  """
  transformation = optimizer.transformation
  with_dropout = any(
    rate > 0
    for model in (student_model, teacher_model)
    for rate in (model.config.hidden_dropout_prob, model.config.attention_probs_dropout_prob)
  )

  def train_step(state: Any, batch: PyTree, frozen: PyTree) -> tuple[Any, dict[str, Array]]:
    loss, terms, grads, norms = tf2_distillation.loss_and_grads(
      student_model,
      teacher_model,
      state.params,
      jax.lax.stop_gradient(frozen),
      batch,
      stage,
      layer_map=settings.layer_map,
      factors=settings.factors,
      ground_truth_ratio=config.distill.ground_truth_ratio,
      dropout_rng=jax.random.fold_in(state.rng, state.step) if with_dropout else None,
    )
    updates, opt_state = transformation.update(
      grads, state.opt_state, state.params, gathered_norms=norms
    )
    params = optax.apply_updates(state.params, updates)
    metrics = {
      "loss": jnp.asarray(loss, jnp.float32),
      "grad_norm": optax.tree.norm(grads).astype(jnp.float32),
      "update_norm": optax.tree.norm(updates).astype(jnp.float32),
      "param_norm": optax.tree.norm(params).astype(jnp.float32),
      "learning_rate": jnp.asarray(optimizer.schedule(state.step), jnp.float32),
      **{k: jnp.asarray(v, jnp.float32) for k, v in terms.items()},
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics

  return train_step


def _shared_step(
  config: ConfigDict, loss_fn: steps.StepLossFn, optimizer: optim.Optimizer
) -> steps.TrainStepFn:
  """The shared library's step around a distillation step loss."""
  return steps.make_train_step(
    loss_fn,
    optimizer.transformation,
    grad_accum_steps=config.grad_accum_steps,
    learning_rate_fn=optimizer.schedule,
  )


def phase1_steps(config: ConfigDict, num_layers: int) -> int:
  """Phase 1's length: `distill.phase1_steps`, or L·P when it is None (0 for "auxiliary")."""
  d = config.distill
  if d.strategy == "auxiliary":
    return 0
  if d.phase1_steps is not None:
    return int(d.phase1_steps)
  return num_layers * d.steps_per_stage


class _PhaseRunner:
  """Runs a `Phase` as one run of the shared library (`train.run`)."""

  def __init__(
    self,
    *,
    config: ConfigDict,
    tokenizer: Any,
    devices: setup.Devices,
    student_model: MobileBertForPreTraining,
    teacher_model: MobileBertForPreTraining,
    teacher_params: PyTree,
    teacher_shardings: PyTree,
    eval_sets: dict[str, Any],
  ):
    self.config = config
    self.tokenizer = tokenizer
    self.devices = devices
    self.student_model = student_model
    self.teacher_model = teacher_model
    self.teacher_params = teacher_params
    self.teacher_shardings = teacher_shardings
    self.eval_sets = eval_sets

  def __call__(
    self, phase: Phase, *, first_params: Callable[[], PyTree] | None
  ) -> tuple[PyTree, dict[str, float]]:
    """Runs (or resumes, or finds finished) `phase`; returns its final params and metrics."""
    config = _phase_config(self.config, phase)
    model_config = self.student_model.config
    os.makedirs(phase.workdir, exist_ok=True)
    resume = setup.find_resume(phase.workdir, config, phase.spec.name)
    if resume.resuming:  # the checkpoint must hold this student (a clear error otherwise)
      saved = MobileBertConfig.from_dict(resume.metadata["model_config"], source="hf")
      initialization.resume_model_config(saved, initialization.config_overrides(config, phase.spec))
    params = None if resume.resuming else first_params()
    make_evaluate = None
    if phase.evaluate and self.eval_sets:

      def make_evaluate(shardings: Any) -> Callable[[PyTree], dict[str, float]]:
        return pretraining.held_out_evaluator(
          self.student_model, self.eval_sets, self.devices, shardings
        )

    state, metrics = run.train(
      run.RunSpec(
        config=config,
        workdir=phase.workdir,
        model=self.student_model,
        total_steps=phase.total_steps,
        optimizer=phase.optimizer,
        train_batches=pretraining.train_batch_schedule(config, self.tokenizer, phase.total_steps),
        make_step=phase.make_step,
        stage_of=phase.stage_of,
        frozen=self.teacher_params,
        frozen_shardings=self.teacher_shardings,
        batch_counts=lambda stage, batch: self._batch_counts(phase, stage, batch),
        describe_stage=lambda stage: self._cost_split(phase, stage),
        make_evaluate=make_evaluate,
        what=phase.spec.name,
      ),
      resume=resume,
      initial=initialization.InitialWeights(model_config, params, "the teacher and phase 1"),
      devices=self.devices,
    )
    return state.params, metrics

  def _flops_per_sequence(
    self, phase: Phase, stage: int | None, seq_len: int, predictions: int
  ) -> tuple[int, int]:
    """(teacher forward, student train step) model FLOPs of one sequence in `stage`."""
    student_blocks, teacher_blocks = phase.blocks_of_stage(stage)
    head = "none" if phase.spec is initialization.DISTILLATION_TRANSFER else "pretraining"
    teacher_head = "none" if head == "none" else "mlm"
    teacher = flops.forward_flops(
      self.teacher_model.config,
      seq_len,
      head=teacher_head,
      masked_positions=predictions if teacher_head == "mlm" else None,
      num_blocks=teacher_blocks,
    )
    student = flops.train_step_flops(
      self.student_model.config,
      seq_len,
      head=head,
      masked_positions=predictions if head == "pretraining" else None,
      num_blocks=student_blocks,
    )
    return teacher, student

  def _batch_counts(self, phase: Phase, stage: int | None, batch: PyTree) -> dict[str, int]:
    sequences, length = batch["input_ids"].shape
    teacher, student = self._flops_per_sequence(
      phase, stage, length, batch["masked_lm_positions"].shape[1]
    )
    step_flops = sequences * (teacher + student)
    return {"sequences": sequences, "tokens": sequences * length, loop.FLOPS: step_flops}

  def _cost_split(self, phase: Phase, stage: int | None) -> str:
    data = self.config.data
    teacher, student = self._flops_per_sequence(
      phase, stage, data.max_seq_length, data.max_predictions_per_seq
    )
    blocks = phase.blocks_of_stage(stage)
    return (
      f"{phase.spec.name} stage {'all' if stage is None else stage}: blocks run (student, "
      f"teacher) {blocks}; per sequence of {data.max_seq_length} tokens the teacher's forward "
      f"is {teacher / 1e9:.3g} GFLOP ({100 * teacher / (teacher + student):.0f}% of the step), "
      f"the student's train step {student / 1e9:.3g} GFLOP"
    )


# ----------------------------------------------------------------------------------------------
# The teacher and the student
# ----------------------------------------------------------------------------------------------


def load_teacher(config: ConfigDict, tokenizer: Any) -> tuple[MobileBertConfig, PyTree]:
  """The teacher's architecture and weights (host arrays), in `config.teacher_dtype`.

  `config.teacher` is anything pretraining's `init_from` takes that has weights: one of our
  pretraining workdirs or checkpoints, an HF directory or hub id, a TF1/TF2/TF-Hub checkpoint.

  Raises:
    RunConfigError: the source has no weights (a preset), or a bad `teacher_dtype`.
    FileNotFoundError, ValueError: as `initialization.initial_weights`.
  """
  source = config.teacher.strip()
  if not source or source.startswith(initialization.PRESET_PREFIX):
    raise RunConfigError(f"--teacher={source!r} has no weights: give a trained teacher")
  if config.teacher_dtype not in ("float32", "bfloat16"):
    raise RunConfigError(
      f"--config.teacher_dtype={config.teacher_dtype!r}: expected float32 or bfloat16"
    )
  teacher_run = ml_collections.ConfigDict(
    {
      "init_from": source,
      "model": {"preset": None},
      "seed": config.seed,
      "data": {"max_seq_length": config.data.max_seq_length},
    }
  )
  try:
    weights = initialization.initial_weights(teacher_run, initialization.PRETRAINING, tokenizer)
  except FileNotFoundError as e:  # the flag the user typed, first
    raise FileNotFoundError(f"--teacher: {e}") from None
  except ValueError as e:
    raise RunConfigError(f"--teacher={source}: {e}") from None
  model_config = weights.model_config
  params = weights.params
  if config.teacher_dtype == "bfloat16":
    model_config = model_config.replace(dtype="bfloat16")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  logging.info(
    "teacher: %s (%d blocks, hidden %d, %s), forward only in %s",
    weights.description,
    model_config.num_hidden_layers,
    model_config.hidden_size,
    model_config.normalization_type,
    config.teacher_dtype,
  )
  return model_config, params


def _student_config(
  config: ConfigDict, tokenizer: Any, teacher_config: MobileBertConfig
) -> MobileBertConfig:
  """The student's architecture: `config.model` (its preset and overrides); the vocabulary size
  is the teacher's unless set, since the student takes the teacher's embedding table."""
  student_run = config.copy_and_resolve_references()
  student_run.init_from = ""
  if student_run.model.get("vocab_size") is None:
    student_run.model.vocab_size = teacher_config.vocab_size
  try:
    weights = initialization.initial_weights(student_run, initialization.DISTILLATION, tokenizer)
  except ValueError as e:
    raise RunConfigError(f"--config.model: {e}") from None
  return weights.model_config


def _check_transfer_widths(student: MobileBertConfig, teacher: MobileBertConfig) -> None:
  """Block outputs and attention maps are compared elementwise: their shapes must agree."""
  for field in ("hidden_size", "num_attention_heads"):
    if getattr(student, field) != getattr(teacher, field):
      raise RunConfigError(
        f"layer-wise transfer compares the blocks' outputs and attention maps, so student and "
        f"teacher need the same {field} (student {getattr(student, field)}, teacher "
        f"{getattr(teacher, field)})"
      )


def _check_distill_settings(config: ConfigDict) -> None:
  d = config.distill
  if d.strategy not in distillation.STRATEGIES:
    raise RunConfigError(
      f"--config.distill.strategy={d.strategy!r}: expected one of {distillation.STRATEGIES}"
    )
  if d.semantics not in ("tf1", "tf2"):
    raise RunConfigError(f"--config.distill.semantics={d.semantics!r}: expected tf1 or tf2")
  if d.semantics == "tf2" and (d.strategy != "progressive" or d.teacher_all_layer_statistics):
    raise RunConfigError(
      "--config.distill.semantics=tf2 is the Model Garden's progressive run: it has no other "
      "strategy and no all-layer teacher statistics"
    )
  if d.steps_per_stage < 1:
    raise RunConfigError(f"--config.distill.steps_per_stage={d.steps_per_stage} must be >= 1")
  if not 0.0 <= d.ground_truth_ratio <= 1.0:
    raise RunConfigError(
      f"--config.distill.ground_truth_ratio={d.ground_truth_ratio} must lie in [0, 1]"
    )


def _phase_config(config: ConfigDict, phase: Phase) -> ConfigDict:
  """The run config a phase records: `task` names the phase."""
  phase_config = config.copy_and_resolve_references()
  phase_config.task = phase.spec.name
  return phase_config
