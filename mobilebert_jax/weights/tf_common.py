"""What every TensorFlow reader shares: the lazy TF import, finding and listing checkpoints, and
the config stored beside them.

Format detection happens in two steps, so that recognising a source never imports TensorFlow:

1. From the path alone (`resolve_checkpoint_prefix`, `is_saved_model_dir`): a checkpoint prefix
   (`dir/model.ckpt-1234`, whose `.index` file exists), the `.index` or a `.data-*` file itself, a
   directory with a `checkpoint` state file (its latest checkpoint) or with exactly one `*.index`
   file; or a SavedModel directory (`saved_model.pb` and `variables/`).
2. From the variable names, once TF has listed them (`tf_checkpoint.TfCheckpointReader.open`): an
   object-based checkpoint (TF2 `tf.train.Checkpoint`, which always stores
   `_CHECKPOINTABLE_OBJECT_GRAPH`), a name-based checkpoint with the original google-research
   names (`bert/...`, TF1), or a name-based checkpoint with the TF2 Model Garden variable names
   (`transformer_layer_0/...`, as the Model Garden's TF1->TF2 converter writes in between).

Every reader maps tensors with an explicit table of `TensorMapping`s (`tf1_names`, `tf2_names`)
through `mapping.map_variables`, which also validates shapes and sorts out what stays unused.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from collections.abc import Mapping
from typing import Any

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights import config_dialects

TF_EXTRA_HINT = 'pip install "mobilebert-jax[tf]"'
PRESET_HINT = 'config=MobileBertConfig.from_preset("mobilebert-uncased")'

# TF sources compute LayerNorm with `layer_norm_eps` everywhere (transformers' quirk,
# docs/pitfalls.md P8, is off).
TF_CONFIG_DEFAULTS: Mapping[str, Any] = {"hf_layer_norm_eps_quirk": False}

# Files a checkpoint's config may sit in, beside it, in the order they are tried.
TF1_CONFIG_FILE = "bert_config.json"
CONFIG_FILE = "config.json"
PARAMS_YAML = "params.yaml"
CONFIG_FILES = (TF1_CONFIG_FILE, CONFIG_FILE, PARAMS_YAML)

# The key every object-based (TF2 `tf.train.Checkpoint`) checkpoint holds.
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")

_DATA_SHARD = re.compile(r"^(.*)\.data-\d{5}-of-\d{5}$")
_STATE_ENTRY = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$', re.M)


# ----------------------------------------------------------------------------------------------
# TensorFlow, imported only when a TF source is actually read
# ----------------------------------------------------------------------------------------------


def import_tensorflow(what: str) -> Any:
  """Imports TensorFlow, or explains how to install it.

  Args:
    what: the source being read, for the message.

  Returns:
    The `tensorflow` module.

  Raises:
    ImportError: TensorFlow is not installed (naming the package extra to install).
  """
  try:
    import tensorflow as tf
  except ImportError as e:
    raise ImportError(
      f"Reading {what} needs TensorFlow, which is not installed (or failed to import: {e}). "
      f"Install the extra: {TF_EXTRA_HINT}"
    ) from e
  return tf


# ----------------------------------------------------------------------------------------------
# Finding checkpoints from a path (no TensorFlow)
# ----------------------------------------------------------------------------------------------


def resolve_checkpoint_prefix(path: str) -> str | None:
  """The checkpoint prefix a path designates, or None if it designates no TF checkpoint.

  Cheap and never raises: only file names are looked at. A directory with several `*.index`
  files and no `checkpoint` state file still counts as a checkpoint directory; `open` then
  asks for one prefix (see `checkpoint_prefix`).

  Args:
    path: a prefix (`dir/model.ckpt-1234`), its `.index` or `.data-*` file, or a directory.

  Returns:
    The prefix (without `.index`), "" for an ambiguous directory, or None.
  """
  try:
    return _resolve(path)
  except (OSError, ValueError):
    return None


def checkpoint_prefix(path: str) -> str:
  """Like `resolve_checkpoint_prefix`, but explains why a path is not one checkpoint.

  Raises:
    FileNotFoundError: naming what was looked for, or listing the candidates of a directory
      that holds several checkpoints and no `checkpoint` state file.
  """
  prefix = resolve_checkpoint_prefix(path)
  if prefix:
    return prefix
  if prefix == "":
    found = sorted(os.path.basename(p)[: -len(".index")] for p in _index_files(path))
    raise FileNotFoundError(
      f"{path} holds several TensorFlow checkpoints ({', '.join(found)}) and no `checkpoint` "
      "state file saying which is the latest; pass one prefix, e.g. "
      f"{os.path.join(path, found[-1])}"
    )
  raise FileNotFoundError(
    f"{path} is not a TensorFlow checkpoint: looked for {path}.index, a `checkpoint` state "
    "file or a single *.index file"
  )


def _resolve(path: str) -> str | None:
  if os.path.isdir(path):
    state = os.path.join(path, "checkpoint")
    if os.path.isfile(state):
      latest = _latest_from_state_file(state)
      if latest is not None:
        return latest
    indexes = _index_files(path)
    if len(indexes) == 1:
      return indexes[0][: -len(".index")]
    return "" if indexes else None
  if os.path.isfile(path + ".index"):
    return path
  if path.endswith(".index") and os.path.isfile(path):
    return path[: -len(".index")]
  shard = _DATA_SHARD.match(path)
  if shard and os.path.isfile(path) and os.path.isfile(shard.group(1) + ".index"):
    return shard.group(1)
  return None


def _index_files(directory: str) -> list[str]:
  return sorted(glob.glob(os.path.join(glob.escape(directory), "*.index")))


def _latest_from_state_file(state_file: str) -> str | None:
  """The latest checkpoint named by a `checkpoint` state file, if its files are present.

  The file is a text proto (`model_checkpoint_path: "ckpt-3"`). Its paths may be relative to
  the directory or absolute; an absolute path from another machine (a copied or downloaded
  checkpoint) is looked for by its base name in the state file's directory.
  """
  with open(state_file, encoding="utf-8") as f:
    match = _STATE_ENTRY.search(f.read())
  if match is None:
    return None
  recorded = match.group(1).encode("utf-8").decode("unicode_escape")
  directory = os.path.dirname(os.path.abspath(state_file))
  candidates = [os.path.join(directory, recorded)]
  if os.path.isabs(recorded):
    # A copied or downloaded checkpoint: the files beside the state file are the ones meant.
    candidates.insert(0, os.path.join(directory, os.path.basename(recorded)))
  for candidate in candidates:
    if os.path.isfile(candidate + ".index"):
      return candidate
  return None


def is_saved_model_dir(path: str) -> bool:
  """Whether `path` is a SavedModel directory (`saved_model.pb` and `variables/`)."""
  return (
    os.path.isdir(path)
    and any(os.path.isfile(os.path.join(path, name)) for name in SAVED_MODEL_FILES)
    and os.path.isdir(os.path.join(path, "variables"))
  )


def list_checkpoint(prefix: str) -> tuple[Any, dict[str, tuple[int, ...]]]:
  """Opens a checkpoint with TensorFlow and lists its tensors.

  Returns:
    (the TF checkpoint reader, tensor name -> shape).
  """
  tf = import_tensorflow(f"the TensorFlow checkpoint {prefix}")
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f"TensorFlow cannot read the checkpoint {prefix}: {e}") from e
  shapes = {
    name: tuple(int(d) for d in shape) for name, shape in reader.get_variable_to_shape_map().items()
  }
  return reader, shapes


# ----------------------------------------------------------------------------------------------
# The config beside a checkpoint
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigFile:
  """A config file found beside a checkpoint and what it says.

  Attributes:
    path: the file.
    config: the architecture it describes.
    notes: remarks for the load report (e.g. how an activation name was read).
  """

  path: str
  config: MobileBertConfig
  notes: tuple[str, ...] = ()


def find_config(directory: str) -> ConfigFile | None:
  """Reads the first of `bert_config.json`, `config.json`, `params.yaml` in `directory`.

  Each is read by `read_config_file`.

  Returns:
    The config and its file, or None when there is none.

  Raises:
    ValueError: the file exists but is not a readable MobileBERT config.
  """
  for name in CONFIG_FILES:
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return read_config_file(path)
  return None


def read_config_file(path: str) -> ConfigFile:
  """Reads a config file in the dialect its name implies.

  `bert_config.json` is read in the TF1 dialect (TF1 defaults for absent keys, docs/pitfalls.md P7);
  a `.yaml`/`.yml` file as a Model Garden experiment config (`read_params_yaml`); any other file
  (e.g. `config.json`) as JSON in whichever dialect it is written (transformers, TF1, or TF2
  encoder arguments).

  Raises:
    ValueError: not a readable MobileBERT config.
    ImportError: a YAML file, and PyYAML is missing.
  """
  name = os.path.basename(path)
  if name == TF1_CONFIG_FILE:
    return ConfigFile(path, MobileBertConfig.from_json_file(path, source="tf1"))
  if name.endswith((".yaml", ".yml")):
    return read_params_yaml(path)
  return ConfigFile(path, MobileBertConfig.from_json_file(path))


def read_params_yaml(path: str) -> ConfigFile:
  """Reads the encoder of a TF2 Model Garden experiment config (`params.yaml`).

  The encoder arguments are under `task.model.encoder.mobilebert` (with `type: mobilebert`).
  The Model Garden builds the FFNs from `hidden_activation` through Keras, where "gelu" is the
  exact (erf) GELU, but the MLM transform from `mlm_activation` through its own table, where
  "gelu" is the tanh approximation; our config has one activation for both, so it follows the
  encoder and a note says when the MLM head then differs.

  Raises:
    ValueError: no MobileBERT encoder in the file, or a distillation config (teacher and
      student: which one the checkpoint holds is not written down).
    ImportError: PyYAML is missing.
  """
  try:
    import yaml
  except ImportError as e:
    raise ImportError(f"Reading {path} needs PyYAML (pip install pyyaml)") from e
  with open(path, encoding="utf-8") as f:
    data = yaml.safe_load(f)
  task = data.get("task") if isinstance(data, dict) else None
  if not isinstance(task, dict):
    raise ValueError(f"{path} has no `task` section, so it is not a Model Garden experiment config")
  if "model" not in task and ("student_model" in task or "teacher_model" in task):
    raise ValueError(
      f"{path} describes a distillation run (teacher and student), so it does not say which "
      f"model the checkpoint holds; pass config=... (e.g. {PRESET_HINT})"
    )
  model = task.get("model") or {}
  encoder = model.get("encoder") or {}
  arguments = encoder.get("mobilebert")
  if encoder.get("type") != "mobilebert" or not isinstance(arguments, dict):
    raise ValueError(
      f"{path}: task.model.encoder is not a MobileBERT encoder ({encoder.get('type')!r})"
    )
  # Keras names: "gelu" is exact there, unlike in the TF1 code and the Model Garden's tf_utils.
  ffn_act = config_dialects.keras_activation(arguments.get("hidden_activation", "gelu"))
  config = MobileBertConfig.from_dict(arguments, source="tf2", hidden_act=ffn_act)
  notes = []
  mlm_act = model.get("mlm_activation")
  if mlm_act is not None and config_dialects.tf_activation(mlm_act) != ffn_act:
    notes.append(
      f"{path}: the Model Garden runs the FFNs with {ffn_act!r} but the MLM transform with "
      f"{config_dialects.tf_activation(mlm_act)!r} (mlm_activation={mlm_act!r}); this model uses "
      f"{ffn_act!r} for both, so its MLM logits differ slightly from the TF2 model's."
    )
  return ConfigFile(path, config, tuple(notes))


def config_beside(checkpoint: str, description: str) -> ConfigFile:
  """The config stored beside a checkpoint (in the same directory).

  Args:
    checkpoint: the checkpoint prefix or SavedModel directory.
    description: what the checkpoint is, for the message.

  Raises:
    FileNotFoundError: there is none, saying how to pass one.
  """
  directory = (
    checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
  )
  found = find_config(directory)
  if found is None:
    raise FileNotFoundError(
      f"{description} needs a model config, and there is none beside it (looked for "
      f"{', '.join(CONFIG_FILES)} in {directory}). Pass one to load_pretrained, e.g. {PRESET_HINT}"
      ' or config=MobileBertConfig.from_json_file("bert_config.json", source="tf1")'
      " (on the command line: --config=mobilebert-uncased or --config=PATH)."
    )
  return found
