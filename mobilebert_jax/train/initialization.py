"""Where a training run starts from: its weights (`config.init_from`) and its tokenizer.

`init_from` may be

* "" or `preset:NAME`: train the architecture `config.model.preset` (or NAME) from scratch;
* one of our training checkpoints (a workdir, its `checkpoints/` directory, or one step of it):
  the parameters present in both models with the same shapes are taken (e.g. the encoder of a
  pre-training or other-task checkpoint, or everything of a same-task checkpoint), the rest is
  freshly initialised;
* anything `mobilebert_jax.load_pretrained` reads: an HF directory or hub id, and the TF1, TF2
  and TF-Hub checkpoints its readers recognise.

In every case the `MobileBertConfig` is the source's (or the preset's), updated with the fields
set in `config.model` and with the task's (`num_labels`, ...).

What a run trains is a `RunModel`: a fine-tuning `tasks.Task`, or a `ModelSpec` for the runs that
are not tasks (`PRETRAINING`). Checkpoints record its name (`config.task`), which is how
`run_model` finds the model class of a checkpoint given as `init_from`.

The tokenizer comes from `config.tokenizer.vocab_file`, else from the `vocab.txt` the workdir
keeps from an earlier start, else from beside the weights (`init_from`'s directory, or the hub
repository's `vocab.txt`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import ml_collections
from absl import logging
from flax import traverse_util

from mobilebert_jax import atomic_files
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForPreTraining, abstract_params, init_params
from mobilebert_jax.tasks import Task, get_task
from mobilebert_jax.tokenization import SentencePieceTokenizer, WordPieceTokenizer
from mobilebert_jax.train import checkpointing
from mobilebert_jax.train.run_files import CHECKPOINTS_DIR
from mobilebert_jax.weights import hf, layout
from mobilebert_jax.weights.loading import load_pretrained

PyTree = Any
ConfigDict = ml_collections.ConfigDict

PRESET_PREFIX = "preset:"
# The `MobileBertConfig` fields a resumed run may change: they change neither the parameter tree
# (as `scan_layers` and `param_dtype` do) nor what the model computes in float32 (as the
# architecture, dropout and the numerical options do), only how it is computed.
RESUMABLE_MODEL_FIELDS = ("remat_policy", "dtype")
VOCAB_NAMES = ("vocab.txt", "spiece.model", "sentencepiece.model")


def _no_overrides(config: ConfigDict) -> dict[str, Any]:
  del config
  return {}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A run that is not a fine-tuning task: its name, model class and the fields it fixes.

  It has the attributes of a `tasks.Task` that this module reads, so either can be passed.

  Attributes:
    name: the run's `config.task`, recorded in its checkpoints.
    model_class: the MobileBERT model class it trains.
    model_overrides: config -> `MobileBertConfig` fields the run fixes.
  """

  name: str
  model_class: type[nn.Module]
  model_overrides: Callable[[ConfigDict], dict[str, Any]] = _no_overrides


# MLM + NSP pretraining (`mobilebert_jax.trainers.pretraining`).
PRETRAINING = ModelSpec("pretraining", MobileBertForPreTraining)
# The two runs of a distillation (`mobilebert_jax.trainers.distillation`): layer-wise transfer
# (`workdir/phase1`) and pretraining distillation (`workdir`, the finished student).
DISTILLATION_TRANSFER = ModelSpec("distillation_transfer", MobileBertForPreTraining)
DISTILLATION = ModelSpec("distillation", MobileBertForPreTraining)
_MODEL_SPECS = {spec.name: spec for spec in (PRETRAINING, DISTILLATION_TRANSFER, DISTILLATION)}
RunModel = Task | ModelSpec


def run_model(name: str) -> RunModel:
  """The `ModelSpec` or fine-tuning `Task` called `name` (a checkpoint's `config.task`).

  Raises:
    ValueError: no such run kind or task.
  """
  return _MODEL_SPECS[name] if name in _MODEL_SPECS else get_task(name)


@dataclasses.dataclass(frozen=True)
class InitialWeights:
  """The model config of a run and, unless it starts from scratch, its first parameters.

  Attributes:
    model_config: the resolved architecture (with the task's head settings).
    params: unboxed parameters (host or device arrays), or None to initialise from scratch.
    description: where they come from, for the logs.
  """

  model_config: MobileBertConfig
  params: PyTree | None
  description: str


# ----------------------------------------------------------------------------------------------
# Model config and weights
# ----------------------------------------------------------------------------------------------


def config_overrides(config: ConfigDict, task: RunModel) -> dict[str, Any]:
  """The `MobileBertConfig` fields set by `config.model` (non-None) and by the task."""
  fields = {k: v for k, v in config.model.items() if k != "preset" and v is not None}
  fields.update(task.model_overrides(config))
  return fields


def resume_model_config(saved: MobileBertConfig, overrides: dict[str, Any]) -> MobileBertConfig:
  """The model config of a resumed run: the checkpoint's, with the allowed overrides applied.

  Args:
    saved: the config stored with the checkpoint.
    overrides: `config_overrides(config, task)`, the fields the run config sets.

  Returns:
    `saved` with the overrides of `RESUMABLE_MODEL_FIELDS` applied.

  Raises:
    RunConfigError: an override of any other field with a value other than the checkpoint's
      (naming the fields: the checkpoint's parameters were trained for its own architecture).
  """
  # Compared after `replace` normalises them (label maps, sequences), field by field.
  changed = {
    k: v
    for k, v in overrides.items()
    if getattr(saved.with_overrides(**{k: v}), k) != getattr(saved, k)
  }
  refused = sorted(k for k in changed if k not in RESUMABLE_MODEL_FIELDS)
  if refused:
    listing = ", ".join(f"{k}={changed[k]!r} (checkpoint: {getattr(saved, k)!r})" for k in refused)
    raise RunConfigError(
      f"the workdir's checkpoint fixes the model, so these --config.model overrides cannot apply "
      f"on resume: {listing}. Only {', '.join(RESUMABLE_MODEL_FIELDS)} may change; use a new "
      "--workdir with --init_from=<this workdir> to start a new run from its weights"
    )
  if changed:
    logging.info("resuming with model overrides %s", changed)
  return saved.with_overrides(**changed)


def initial_weights(config: ConfigDict, task: RunModel, tokenizer: Any) -> InitialWeights:
  """Resolves `config.init_from` (see the module docstring).

  Raises:
    FileNotFoundError: `init_from` names nothing readable (the message lists what is).
    ValueError: a bad preset or model override, or a tokenizer larger than the embeddings.
  """
  source = (config.init_from or "").strip()
  overrides = config_overrides(config, task)
  if not source or source.startswith(PRESET_PREFIX):
    preset = source.removeprefix(PRESET_PREFIX) or config.model.preset
    overrides.setdefault("vocab_size", tokenizer.vocab_size)
    try:
      model_config = MobileBertConfig.from_preset(preset, **overrides)
    except KeyError as e:
      raise ValueError(str(e.args[0])) from None
    except ValueError as e:  # an impossible --config.model combination: one line on the CLI
      raise RunConfigError(f"--config.model: {e}") from None
    weights = InitialWeights(model_config, None, f"from scratch ({preset} architecture)")
  elif find_checkpoint(source) is not None:
    weights = _from_our_checkpoint(source, task, overrides, config.seed)
  else:
    module, params, report = load_pretrained(
      source, task.model_class, rng=config.seed, return_report=True, **overrides
    )
    weights = InitialWeights(module.config, params, f"{report.format} checkpoint {source}")
  _check_vocab(weights.model_config, tokenizer, config)
  return weights


def _check_vocab(model_config: MobileBertConfig, tokenizer: Any, config: ConfigDict) -> None:
  if tokenizer.vocab_size > model_config.vocab_size:
    raise ValueError(
      f"the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding table only "
      f"{model_config.vocab_size} rows: use the vocabulary the weights were trained with"
    )
  if config.data.max_seq_length > model_config.max_position_embeddings:
    raise ValueError(
      f"--config.data.max_seq_length={config.data.max_seq_length} exceeds the model's "
      f"max_position_embeddings={model_config.max_position_embeddings}"
    )


def find_checkpoint(path: str) -> tuple[str, int | None] | None:
  """Our checkpoint at `path`: (checkpoint root, step or None for the latest), else None.

  `path` may be a workdir (with `checkpoints/`), a checkpoint root, or one step directory.
  """
  if not os.path.isdir(path):
    return None
  path = os.path.abspath(path)
  if os.path.isdir(os.path.join(path, checkpointing.STATE_ITEM)):  # one step directory
    name = os.path.basename(path)
    return (os.path.dirname(path), int(name)) if name.isdigit() else None
  for candidate in (path, os.path.join(path, CHECKPOINTS_DIR)):
    if os.path.isdir(candidate) and any(
      n.isdigit() and os.path.isdir(os.path.join(candidate, n, checkpointing.STATE_ITEM))
      for n in os.listdir(candidate)
    ):
      return candidate, None
  return None


def _from_our_checkpoint(
  source: str, task: RunModel, overrides: dict[str, Any], seed: int
) -> InitialWeights:
  """Parameters shared (same path, same shape) with one of our training checkpoints."""
  root, step = find_checkpoint(source)
  metadata = checkpointing.read_metadata(root, step)
  saved_config = MobileBertConfig.from_dict(metadata["model_config"], source="hf")
  saved_task = run_model(metadata["train_config"]["task"])
  model_config = saved_config.with_overrides(**overrides)

  # Compare in the checkpoint's layer layout (scanned or not), convert at the end.
  as_saved = model_config.replace(scan_layers=saved_config.scan_layers)
  saved_leaves = traverse_util.flatten_dict(abstract_params(saved_task.model_class(saved_config)))
  fresh = traverse_util.flatten_dict(init_params(task.model_class(as_saved), seed))
  shared = {
    path: jax.ShapeDtypeStruct(value.shape, value.dtype)
    for path, value in fresh.items()
    if path in saved_leaves and saved_leaves[path].shape == value.shape
  }
  if not shared:
    raise ValueError(f"{source}: the checkpoint shares no parameter with {task.model_class}")
  restored = checkpointing.load_params_from_checkpoint(
    root, traverse_util.unflatten_dict(shared), step=metadata["step"]
  )
  fresh.update(traverse_util.flatten_dict(restored))
  params = traverse_util.unflatten_dict(fresh)
  if saved_config.scan_layers != model_config.scan_layers:
    convert = layout.stack_layers if model_config.scan_layers else layout.unstack_layers
    params = convert(params)
  fresh_paths = sorted("/".join(p) for p in fresh if p not in shared)
  logging.info(
    "init_from %s (step %s, task %s): %d tensors loaded, %d freshly initialised %s",
    root,
    metadata.get("step"),
    saved_task.name,
    len(shared),
    len(fresh_paths),
    fresh_paths[:8],
  )
  return InitialWeights(model_config, params, f"our checkpoint {root} step {metadata.get('step')}")


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def vocab_in(*folders: str) -> str | None:
  """The first vocabulary file (`VOCAB_NAMES`, in that order) lying in `folders`, else None."""
  for folder in filter(None, folders):
    for name in VOCAB_NAMES:
      if os.path.isfile(os.path.join(folder, name)):
        return os.path.join(folder, name)
  return None


def check_source_exists(source: str, flag: str) -> None:
  """Raises if `source` is meant as a local path (not a hub id) and nothing is there.

  Args:
    source: a weights source as the user gave it.
    flag: the command-line flag that gave it, for the message (e.g. "--teacher").

  Raises:
    FileNotFoundError: "`flag`=`source` does not exist".
  """
  looks_like_path = source.startswith((".", "~", os.sep)) or source.count("/") > 1
  if looks_like_path and not os.path.exists(source):
    raise FileNotFoundError(f"{flag}={source} does not exist")


def find_vocab_file(config: ConfigDict, workdir: str) -> str:
  """The vocabulary to use (see the module docstring for the order).

  Raises:
    FileNotFoundError: no vocabulary anywhere, or `vocab_file` does not exist.
  """
  explicit = config.tokenizer.get("vocab_file")
  if explicit:
    if not os.path.isfile(explicit):
      raise FileNotFoundError(f"--config.tokenizer.vocab_file={explicit} does not exist")
    return explicit
  kept = vocab_in(workdir)
  if kept:
    return kept
  source = (config.init_from or "").strip()
  if source and not source.startswith(PRESET_PREFIX):
    directory = source if os.path.isdir(source) else os.path.dirname(source)
    checkpoint = find_checkpoint(source)
    look_in = [directory]
    if checkpoint is not None:  # a workdir of ours keeps its vocabulary next to `checkpoints/`
      look_in.append(os.path.dirname(checkpoint[0]))
    beside = vocab_in(*look_in)
    if beside:
      return beside
    check_source_exists(source, "--init_from")
    if not os.path.exists(source) and not os.path.exists(directory or source):
      return _hub_vocab(source)
  raise FileNotFoundError(
    f"no vocabulary found (init_from={source!r}); set --config.tokenizer.vocab_file=PATH to a "
    "BERT vocab.txt or a SentencePiece .model"
  )


def _hub_vocab(repo_id: str) -> str:
  # `open_hub` makes a machine without network fail at once instead of after `hf_hub_download`'s
  # retries (about 23 s), and reads the local cache then.
  access = hf.open_hub(repo_id)
  try:
    return access.download("vocab.txt")
  except Exception as e:  # offline, missing repo or file: all mean "no vocabulary from there"
    cache_only = (
      ""
      if access.offline_reason is None
      else f"; only the local cache was read: {access.offline_reason}"
    )
    raise FileNotFoundError(
      f"could not get vocab.txt of {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: "
      f"{e}{cache_only}); set --config.tokenizer.vocab_file=PATH, "
      f"or download the repo where the Hub is reachable with `{access.download_command()}` and "
      "pass --init_from=DIR"
    ) from e


def load_tokenizer(vocab_file: str, do_lower_case: bool) -> Any:
  """A WordPiece tokenizer for `vocab.txt` files, SentencePiece for `.model` files."""
  if vocab_file.endswith(".model"):
    return SentencePieceTokenizer.from_file(vocab_file, do_lower_case=do_lower_case)
  return WordPieceTokenizer.from_file(vocab_file, do_lower_case=do_lower_case)


def keep_vocab(vocab_file: str, workdir: str) -> None:
  """Copies the vocabulary into the workdir (once), so a resumed run needs no other files."""
  name = VOCAB_NAMES[1] if vocab_file.endswith(".model") else VOCAB_NAMES[0]
  kept = os.path.join(workdir, name)
  if os.path.abspath(vocab_file) != os.path.abspath(kept) and not os.path.exists(kept):
    atomic_files.copy_file(vocab_file, kept)
