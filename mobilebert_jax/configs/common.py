"""Shared blocks of the fine-tuning configs, and `parse_arg` for `--config=FILE:ARG` variants.

Every task config (`squad.py`, `glue.py`, `conll2003.py`, `swag.py`) starts from
`base_config()`, whose fields are documented below, and changes what its recipe needs. Field
meanings:

  task             canonical task name (`mobilebert_jax.tasks`).
  seed             parameter initialisation, dropout and data order.
  init_from        where the weights come from when the workdir has no checkpoint: an HF
                   directory or hub id, a TF1/TF2/TF-Hub checkpoint (whatever
                   `mobilebert_jax.load_pretrained` reads), one of our Orbax checkpoints
                   (a workdir or its `checkpoints/` directory), `preset:NAME` to train the named
                   architecture from scratch, or "" to train `model.preset` from scratch.
  model.preset     the architecture used when training from scratch (see `PRESETS`).
  model.<field>    any `MobileBertConfig` field; None keeps the value of the checkpoint (or
                   preset). The task sets `num_labels`, `id2label` and `problem_type`.
  tokenizer        `vocab_file` (None: the `vocab.txt` of `init_from`, or of the workdir when
                   resuming) and `do_lower_case`.
  data             `source` ("files" or "tfds"), `data_dir` / `*_file`, `max_seq_length`, TFDS
                   options, and the task's own fields.
  data.bucket_lengths   () (default): training batches at `max_seq_length`. A tuple such as
                   (32, 64, 96, 128): each training batch holds rows of one length bucket, cut
                   to that length (`mobilebert_jax.data.bucketing`; `max_seq_length` is added as
                   the last bucket), so mostly short rows (GLUE, CoNLL) cost less; the train step
                   compiles once per bucket. Valid for every task (SQuAD's answer positions are
                   checked to stay inside their bucket); evaluation stays at full length. Each
                   row keeps the [PAD] that follows its last real token, which MobileBERT's
                   trigram reads (docs/pitfalls.md P3), so outputs equal the full-length ones up
                   to rounding; `model.padding_invariant_trigram=True` makes them independent of
                   the padded length altogether. Only `model.masked_attention_logit=-6.0` (P5)
                   lets the number of padded columns change the outputs.
  optimizer        the optax chain of `mobilebert_jax.train.optim.build_optimizer`, with a linear
                   warm-up over `warmup_proportion` of the run and linear decay to
                   `end_lr_rate * learning_rate`.
  batch_size       global batch (all devices, all hosts) per optimizer update.
  num_epochs       run length in passes over the training features, unless `num_train_steps`
                   is set; 0 steps evaluates the initial model.
  grad_accum_steps microbatches per update (the batch is split into that many).
  eval             `batch_size` (rounded up to a multiple of the device count) and the task's
                   decoding settings.
  eval_every_steps evaluate during training every N steps (0: only at the end).
  checkpoint_every_steps, keep_checkpoints   Orbax checkpoint interval and how many to keep (the
                   best by the task's main metric is kept too when evaluating during training).
  distill_from     "" (default): no teacher. A fine-tuning workdir of the same task (e.g. the
                   float model a QAT run starts from): its logits become soft targets
                   (`mobilebert_jax.train.logit_distillation`), mixed in with `distill_weight`
                   (0..1, default 0.5) at `distill_temperature` (default 1.0).
  qat_calibration_batches   0 (default): a quantization-aware run starts its activation ranges
                   at [-6, 6], as the original QAT. N: at the min/max of the `init_from` float
                   model over the first N training batches (post-training calibration), so the
                   first QAT steps do not clip what the float model computes; with
                   `model.quantization_points="tflite"` it gave the best int8 files
                   (docs/quantization.md).
  resume_step      resume from this step of the workdir's checkpoints (None: the newest one
                   that restores; a corrupt one is moved aside to `checkpoints.unreadable/`).
  log_every_steps  how often train metrics are fetched, checked and written.
  mesh_shape       (data, fsdp) device mesh; -1 takes the remaining devices.
  sharding_rules   "dp" (parameters replicated) or "fsdp" (large dimensions sharded).
  progress_bar     show a tqdm bar (process 0).
  profile_steps    None (default): no profile. `(start, stop)`, e.g.
                   `--config.profile_steps=10,13`: a `jax.profiler` trace of steps start .. stop-1
                   into `WORKDIR/profile` (TensorBoard's profile tab), every process its own
                   devices; a run resumed past `start` traces what is left of the window.

Variants: `parse_arg("task=rte,size=tiny", task="", size="")` turns the text after the colon of
`--config=configs/glue.py:task=rte,size=tiny` into a ConfigDict with the defaults' types; a bare
word (`demo`) means `demo=True`.
"""

from __future__ import annotations

import dataclasses
import types
import typing

import ml_collections
from ml_collections.config_dict import placeholder

from mobilebert_jax.model.config import MobileBertConfig

# Fields the task decides (a regression head, the label names, ...), not the user.
TASK_MODEL_FIELDS = ("num_labels", "problem_type", "id2label")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,key2=value2` (or bare `flag` words) into a ConfigDict.

  Args:
    arg: the text after the config file's colon, or None.
    **defaults: every accepted key with its default; values are converted to its type.

  Returns:
    A ConfigDict with every key of `defaults`.

  Raises:
    ValueError: an unknown key, or a value that does not convert.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config variant {key!r} in {arg!r}; known: {sorted(defaults)}")
    default = defaults[key]
    if not has_value:
      if not isinstance(default, bool):
        raise ValueError(f"config variant {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config variant {key}={value!r} must be true or false")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise ValueError(
          f"config variant {key}={value!r} is not a {type(default).__name__}"
        ) from None
  return result


def _placeholder_type(annotation) -> type | None:
  """int/float/str/bool for `X` or `X | None` annotations; None for anything else."""
  if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    annotation = args[0] if len(args) == 1 else None
  return annotation if annotation in (int, float, str, bool) else None


def model_config(preset: str = "mobilebert-uncased", **fields) -> ml_collections.ConfigDict:
  """`config.model`: a preset name plus every `MobileBertConfig` field as an override slot.

  Each field is a typed placeholder (None: keep the checkpoint's or preset's value), so
  `--config.model.hidden_dropout_prob=0.1` works and a misspelt field fails.

  Args:
    preset: the architecture for training from scratch.
    **fields: values to set now, e.g. `classifier_dropout=0.1`.
  """
  hints = typing.get_type_hints(MobileBertConfig)
  slots = {"preset": preset}
  for field in dataclasses.fields(MobileBertConfig):
    kind = _placeholder_type(hints[field.name])
    if field.name in TASK_MODEL_FIELDS or kind is None:
      continue
    slots[field.name] = placeholder(kind)
  unknown = set(fields) - set(slots)
  if unknown:
    raise ValueError(f"model_config: {sorted(unknown)} are not MobileBertConfig fields")
  config = ml_collections.ConfigDict(slots)
  config.update(fields)
  return config


def base_config(task: str) -> ml_collections.ConfigDict:
  """The fields every task shares, with the fine-tuning defaults of docs/training.md §fine-tuning
  (AdamW, TF1 form)."""
  config = ml_collections.ConfigDict()
  config.task = task
  config.seed = 0
  config.init_from = "google/mobilebert-uncased"
  config.model = model_config()
  config.tokenizer = ml_collections.ConfigDict(
    {"vocab_file": placeholder(str), "do_lower_case": True}
  )
  config.data = ml_collections.ConfigDict(
    {
      "source": "files",
      "data_dir": placeholder(str),
      "train_file": placeholder(str),
      "eval_file": placeholder(str),
      "max_seq_length": 128,
      "bucket_lengths": (),
      "tfds_data_dir": placeholder(str),
      "tfds_download": True,
    }
  )
  # MobileBERT's `create_optimizer`: AdamWeightDecayOptimizer (no bias correction), weight decay
  # 0.01 except norms and biases, global clip 1.0, linear warm-up then decay to lr * 1e-4.
  config.optimizer = ml_collections.ConfigDict(
    {
      "name": "adamw_tf1",
      "learning_rate": 5e-5,
      "weight_decay": 0.01,
      "clip_norm": 1.0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-6,
      "warmup_proportion": 0.1,
      "end_lr_rate": 1e-4,
    }
  )
  config.batch_size = 32
  config.num_epochs = 3.0
  config.num_train_steps = placeholder(int)
  config.grad_accum_steps = 1
  config.eval = ml_collections.ConfigDict({"batch_size": 64})
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 2
  config.distill_from = ""
  config.distill_weight = 0.5
  config.distill_temperature = 1.0
  config.qat_calibration_batches = 0
  config.resume_step = placeholder(int)
  config.log_every_steps = 50
  config.mesh_shape = (-1, 1)
  config.sharding_rules = "dp"
  config.progress_bar = True
  config.profile_steps = placeholder(tuple)
  return config


def apply_size(config: ml_collections.ConfigDict, size: str) -> bool:
  """Applies the `size=` variant ("" keeps the recipe, "tiny" calls `tiny`).

  Returns:
    Whether the tiny variant was applied (task configs shrink their own fields then).

  Raises:
    ValueError: any other size.
  """
  if size == "tiny":
    tiny(config)
    return True
  if size:
    raise ValueError(f"unknown size {size!r}; the only size variant is 'tiny'")
  return False


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`size=tiny`: a small MobileBERT-shaped model from scratch and a few steps, for smoke tests.

  The vocabulary still has to be given (`--config.tokenizer.vocab_file`); `vocab_size` follows
  it.
  """
  config.init_from = ""
  config.model.update(
    embedding_size=16,
    hidden_size=32,
    intra_bottleneck_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_feedforward_networks=2,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    scan_layers=True,
  )
  config.data.max_seq_length = 64
  config.batch_size = 8
  config.num_train_steps = 4
  config.eval.batch_size = 16
  config.log_every_steps = 2
  config.checkpoint_every_steps = 2
  config.optimizer.learning_rate = 1e-3
  config.progress_bar = False
  return config
