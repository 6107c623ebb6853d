"""What an export starts from: a fine-tuning workdir, an Orbax checkpoint of ours, or weights.

`resolve_source(SRC)` accepts, in this order:

1. a fine-tuning workdir written by `trainer.train_and_evaluate` (or its `checkpoints/`
   directory, or one step of it): read with `inference.load_finetuned`, so the model, its task
   (which decides the calibration and evaluation data), the tokenizer and the run's settings are
   those the run trained with;
2. any other checkpoint of ours (pretraining runs, `mobilebert_jax.convert --to=orbax`): the
   class recorded with it, or its encoder;
3. anything `weights.load_pretrained` reads (Hugging Face directories, TF1/TF2 checkpoints,
   TF-Hub SavedModels), into `--model_class` (default: the bare encoder).

Every variable collection stored with a checkpoint comes along, not only `params`: a model
trained with quantization-aware training keeps its learned activation ranges in a collection of
its own, and the exported graph must apply them exactly as the trainer's eval step does
(`steps.make_eval_step` applies `{"params": ..., **collections}`).

The model is exported in its unrolled, float32 form: TFLite turns a scanned stack into a while
loop the delegates do not run, and remat and bfloat16 compute are training-time choices.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mobilebert_jax import inference, tasks
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import MODEL_CLASSES, abstract_params
from mobilebert_jax.train import checkpointing, initialization, summaries
from mobilebert_jax.weights import layout, load_pretrained

PyTree = Any
ENCODER_SCOPE = "mobilebert"
DEFAULT_MODEL_CLASS = MobileBertModel.__name__


@dataclasses.dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class ExportSource:
  """A model ready to export.

  Attributes:
    module: the model, built from `config`.
    variables: every variable collection, `{"params": ..., **others}`, unscanned float32.
    config: the architecture as exported (unrolled, float32 compute).
    description: where it came from, for reports.
    kind: "workdir" (a fine-tuning run), "checkpoint" (another checkpoint of ours) or
      "weights" (anything `load_pretrained` reads).
    task: the fine-tuning task of a workdir (None otherwise).
    run_config: the run's training config of a workdir (None otherwise).
    tokenizer: the run's tokenizer of a workdir (None otherwise).
    step: the checkpoint's step (None for weights).
    vocab_file: the vocabulary to ship with a SavedModel (a workdir's; a weights directory's
      vocab.txt), or None.
    do_lower_case: the tokenizer's casing where the source records it, else None.
  """

  module: nn.Module
  variables: dict[str, PyTree]
  config: MobileBertConfig
  description: str
  kind: str
  task: tasks.Task | None = None
  run_config: ml_collections.ConfigDict | None = None
  tokenizer: Any = None
  step: int | None = None
  vocab_file: str | None = None
  do_lower_case: bool | None = None

  @property
  def model_class(self) -> str:
    return type(self.module).__name__

  @property
  def collections(self) -> tuple[str, ...]:
    """The names of the variable collections besides `params`."""
    return tuple(sorted(k for k in self.variables if k != "params"))

  def with_config(self, **changes: Any) -> ExportSource:
    """The same weights in a model whose config has `changes` (e.g. `masked_attention_logit`)."""
    config = self.config.replace(**changes)
    return dataclasses.replace(self, module=type(self.module)(config), config=config)


def resolve_source(
  source: str | os.PathLike[str] | ExportSource,
  *,
  model_class: str | None = None,
  step: int | None = None,
) -> ExportSource:
  """Loads SRC for export (see the module docstring for what SRC may be).

  Args:
    source: a path or remote id, or an `ExportSource` (returned as is, or as its encoder).
    model_class: the class to export; default: the checkpoint's own class, or
      `MobileBertModel` for weights. A checkpoint's class may be replaced by its encoder only.
    step: the checkpoint step of a workdir or checkpoint (default: the latest).

  Returns:
    The `ExportSource`.

  Raises:
    FileNotFoundError: SRC is neither a checkpoint of ours nor readable by `load_pretrained`.
    ValueError: an unknown `model_class`, or one the checkpoint cannot provide.
  """
  if model_class is not None and model_class not in MODEL_CLASSES:
    raise ValueError(f"--model_class must be one of {sorted(MODEL_CLASSES)}, got {model_class!r}")
  if isinstance(source, ExportSource):
    return _as_class(source, model_class)
  path = os.fspath(source)
  found = initialization.find_checkpoint(path) if os.path.isdir(path) else None
  if found is None:
    if step is not None:
      raise ValueError(f"step={step} applies to checkpoints of ours; {path} is not one")
    return _from_weights(path, model_class or DEFAULT_MODEL_CLASS)
  root, step_dir_step = found
  metadata = checkpointing.read_metadata(root, step if step is not None else step_dir_step)
  train_config = metadata.get("train_config") or {}
  if train_config.get("task") in tasks.TASKS:
    return _as_class(_from_workdir(path, metadata["step"], root), model_class)
  return _as_class(_from_checkpoint(root, metadata), model_class)


# ----------------------------------------------------------------------------------------------
# The three kinds of source
# ----------------------------------------------------------------------------------------------


def _from_workdir(path: str, step: int, root: str) -> ExportSource:
  finetuned = inference.load_finetuned(path, step=step)
  variables = {"params": finetuned.params, **_restore_collections(root, step)}
  return _exportable(
    ExportSource(
      module=finetuned.module,
      variables=variables,
      config=finetuned.config,
      description=f"fine-tuning workdir {path} ({finetuned.task}, step {step})",
      kind="workdir",
      task=tasks.get_task(finetuned.task),
      run_config=finetuned.run_config,
      tokenizer=finetuned.tokenizer,
      step=step,
      vocab_file=finetuned.vocab_file,
      do_lower_case=bool(finetuned.run_config.tokenizer.do_lower_case),
    )
  )


def _from_checkpoint(root: str, metadata: Mapping[str, Any]) -> ExportSource:
  train_config = metadata.get("train_config") or {}
  if not metadata.get("model_config"):
    raise ValueError(f"{root} step {metadata.get('step')}: no model config recorded")
  config = MobileBertConfig.from_dict(metadata["model_config"], source="hf")
  saved_class = train_config.get("model_class")
  if saved_class is None:
    saved_class = initialization.run_model(train_config.get("task")).model_class.__name__
  if saved_class not in MODEL_CLASSES:
    raise ValueError(f"{root}: unknown model class {saved_class!r} recorded with the checkpoint")
  module = MODEL_CLASSES[saved_class](config)
  step = metadata["step"]
  with summaries.quiet_library_logs(level=logging.ERROR):
    params = checkpointing.load_params_from_checkpoint(root, abstract_params(module), step=step)
  variables = {"params": params, **_restore_collections(root, step)}
  return _exportable(
    ExportSource(
      module=module,
      variables=variables,
      config=config,
      description=f"checkpoint {root} ({saved_class}, step {step})",
      kind="checkpoint",
      step=step,
    )
  )


def _from_weights(path: str, model_class: str) -> ExportSource:
  module, params, report = load_pretrained(path, MODEL_CLASSES[model_class], return_report=True)
  if report.initialized:
    logging.warning(
      "%s lacks %d tensors of %s, which are freshly initialised: %s",
      path,
      len(report.initialized),
      model_class,
      ", ".join(report.initialized[:5]),
    )
  return _exportable(
    ExportSource(
      module=module,
      variables={"params": params},
      config=module.config,
      description=f"{report.source} ({report.format})",
      kind="weights",
      vocab_file=_local_vocab(path),
    )
  )


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _local_vocab(path: str) -> str | None:
  """A vocabulary lying in a local weights directory (as HF and TF-Hub directories keep it)."""
  return initialization.vocab_in(path, os.path.join(path, "assets"))


def _restore_collections(root: str, step: int) -> dict[str, PyTree]:
  """Every non-parameter collection saved with the train state (`TrainState.collections`)."""
  with summaries.quiet_library_logs(level=logging.ERROR):
    return checkpointing.load_collections_from_checkpoint(root, step)


def _as_class(source: ExportSource, model_class: str | None) -> ExportSource:
  """`source` itself, or its encoder when `model_class` is `MobileBertModel`."""
  if model_class is None or model_class == source.model_class:
    return source
  if model_class != DEFAULT_MODEL_CLASS or not all(
    isinstance(tree, Mapping) and ENCODER_SCOPE in tree for tree in source.variables.values()
  ):
    raise ValueError(
      f"{source.description} holds a {source.model_class}; it exports as that class or, with "
      f"--model_class={DEFAULT_MODEL_CLASS}, as its encoder (not as {model_class})"
    )
  module = MobileBertModel(source.config)
  variables = {name: tree[ENCODER_SCOPE] for name, tree in source.variables.items()}
  expected = jax.tree.structure(abstract_params(module))
  if jax.tree.structure(variables["params"]) != expected:
    raise ValueError(
      f"{source.description}: the {source.model_class}'s encoder has no pooler, which "
      f"{DEFAULT_MODEL_CLASS} with classifier_activation=True needs"
    )
  return dataclasses.replace(source, module=module, variables=variables, task=None)


def _exportable(source: ExportSource) -> ExportSource:
  """Unrolls the blocks and computes in float32 (see the module docstring)."""
  config = source.config
  variables = dict(source.variables)
  if config.scan_layers:
    variables = {
      name: layout.unstack_layers(tree) if layout.is_scanned(tree) else tree
      for name, tree in variables.items()
    }
  variables["params"] = jax.tree.map(
    lambda x: np.asarray(jax.device_get(x), dtype=np.float32), variables["params"]
  )
  config = config.replace(
    scan_layers=False, remat_policy="none", dtype="float32", param_dtype="float32"
  )
  return dataclasses.replace(
    source, module=type(source.module)(config), config=config, variables=variables
  )
