"""What every TensorFlow reader shares: the lazy TF import, finding and listing checkpoints, the
config stored beside them, and mapping a checkpoint's tensors onto our parameters.

Format detection happens in two steps, so that recognising a source never imports TensorFlow:

1. From the path alone (`resolve_checkpoint_prefix`, `is_saved_model_dir`): a checkpoint prefix
   (`dir/model.ckpt-1234`, whose `.index` file exists), the `.index` or a `.data-*` file itself, a
   directory with a `checkpoint` state file (its latest checkpoint) or with exactly one `*.index`
   file; or a SavedModel directory (`saved_model.pb` and `variables/`).
2. From the variable names, once TF has listed them (`TfCheckpointReader.open`): an object-based
   checkpoint (TF2 `tf.train.Checkpoint`, which always stores `_CHECKPOINTABLE_OBJECT_GRAPH`), a
   name-based checkpoint with the original google-research names (`bert/...`, TF1), or a
   name-based checkpoint with the TF2 Model Garden variable names (`transformer_layer_0/...`, as
   the Model Garden's TF1->TF2 converter writes in between).

Every reader maps tensors with an explicit table of `TensorMapping`s (`tf1_names`, `tf2_names`)
through `map_variables`, which also validates shapes and sorts out what stays unused.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import numpy as np

from mobilebert_jax.model.config import MobileBertConfig, detect_config_source
from mobilebert_jax.weights.loading import Path, SourceTensors

TF_EXTRA_HINT = 'pip install "mobilebert-jax[tf]"'
PRESET_HINT = 'config=MobileBertConfig.from_preset("mobilebert-uncased")'

# TF sources compute LayerNorm with `layer_norm_eps` everywhere (transformers' quirk, P8, is off).
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

  `bert_config.json` is read in the TF1 dialect (TF1 defaults for absent keys, pitfall P7);
  `config.json` in whichever dialect it is written (transformers, TF1, or TF2 encoder
  arguments); `params.yaml` as a Model Garden experiment config (`read_params_yaml`).

  Returns:
    The config and its file, or None when there is none.

  Raises:
    ValueError: the file exists but is not a readable MobileBERT config.
  """
  for name in CONFIG_FILES:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    if name == TF1_CONFIG_FILE:
      return ConfigFile(path, MobileBertConfig.from_json_file(path, source="tf1"))
    if name == CONFIG_FILE:
      return ConfigFile(path, read_config_json(path))
    return read_params_yaml(path)
  return None


def read_config_json(path: str) -> MobileBertConfig:
  """Reads a `config.json` of any dialect (transformers, TF1 `BertConfig`, TF2 encoder args)."""
  with open(path, encoding="utf-8") as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path} does not hold a JSON object, so it is not a model config")
  try:
    dialect = detect_config_source(data)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e
  if dialect == "hf":
    from mobilebert_jax.weights import hf  # transformers' files carry storage-only keys

    return hf.read_hf_config(path)
  return MobileBertConfig.from_json_file(path, source=dialect)


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
  ffn_act = _keras_activation(arguments.get("hidden_activation", "gelu"))
  config = MobileBertConfig.from_dict(arguments, source="tf2", hidden_act=ffn_act)
  notes = []
  mlm_act = model.get("mlm_activation")
  if mlm_act is not None and _tf_utils_activation(mlm_act) != ffn_act:
    notes.append(
      f"{path}: the Model Garden runs the FFNs with {ffn_act!r} but the MLM transform with "
      f"{_tf_utils_activation(mlm_act)!r} (mlm_activation={mlm_act!r}); this model uses "
      f"{ffn_act!r} for both, so its MLM logits differ slightly from the TF2 model's."
    )
  return ConfigFile(path, config, tuple(notes))


def _keras_activation(name: str) -> str:
  return {"gelu": "gelu"}.get(name, name)


def _tf_utils_activation(name: str) -> str:
  return {"gelu": "gelu_new"}.get(name, name)


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


# ----------------------------------------------------------------------------------------------
# Name tables and layout conversion
# ----------------------------------------------------------------------------------------------

Transform = Literal["copy", "transpose", "heads_last", "heads_first"]


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One tensor: our path, the source's name, and how its layout becomes ours.

  Attributes:
    ours: path in our (unscanned) parameter tree.
    theirs: the source's name of the tensor.
    transform: "copy" (same layout); "transpose" (a 2-D [out, in] matrix -> our [in, out]
      kernel); "heads_last" (the source merges our last two axes, e.g. a query kernel
      [in, A*d] -> ours [in, A, d], or its bias [A*d] -> [A, d]); "heads_first" (the source
      merges our first two axes: the attention-output kernel [A*d, out] -> ours [A, d, out]).
      Both head splits are plain row-major reshapes (feature index = head * d + k), as in
      every reference.
  """

  ours: Path
  theirs: str
  transform: Transform = "copy"


def their_shape(our_shape: tuple[int, ...], transform: Transform) -> tuple[int, ...]:
  """The shape the source stores a tensor of `our_shape` in."""
  shape = tuple(int(d) for d in our_shape)
  if transform == "copy":
    return shape
  if transform == "transpose" and len(shape) == 2:
    return shape[::-1]
  if transform == "heads_last" and len(shape) >= 2:
    return (*shape[:-2], shape[-2] * shape[-1])
  if transform == "heads_first" and len(shape) >= 2:
    return (shape[0] * shape[1], *shape[2:])
  raise ValueError(f"transform {transform!r} does not apply to a tensor of shape {shape}")


def to_ours(array: np.ndarray, transform: Transform, our_shape: tuple[int, ...]) -> np.ndarray:
  """Converts a source tensor to our layout (a new contiguous array)."""
  array = np.asarray(array)
  if transform == "transpose":
    return np.ascontiguousarray(array.T)
  return np.ascontiguousarray(array).reshape(our_shape)


# ----------------------------------------------------------------------------------------------
# Mapping a source's tensors onto one model class
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SourceVariable:
  """One tensor of a source, read only when a parameter takes it.

  Attributes:
    name: the name the source stores it under (what messages and reports show).
    shape: its shape in the source.
    load: returns its value as a NumPy array.
  """

  name: str
  shape: tuple[int, ...]
  load: Callable[[], np.ndarray]


def map_variables(
  variables: Mapping[str, SourceVariable],
  table: Iterable[TensorMapping],
  shapes: Mapping[Path, tuple[int, ...]],
  *,
  model_class: str,
  where: str,
  aliases: Mapping[str, str] | None = None,
  ignored: Iterable[str] = (),
  notes: Iterable[str] = (),
) -> SourceTensors:
  """Maps a source's tensors onto the parameters of one model class with a name table.

  Args:
    variables: the source's tensors by their table name (`TensorMapping.theirs`); each knows
      its own stored name for messages.
    table: every tensor a checkpoint of this architecture may hold (heads of all classes
      included); entries whose parameter the target class lacks leave their tensor unused.
    shapes: the target's parameter paths and shapes (from `load_pretrained`).
    model_class: the target class name, for messages.
    where: the source, for messages.
    aliases: table name of a second copy -> table name of the tensor it repeats (the TF2 word
      table stored under the MLM head). The copy is used only when the original is absent.
    ignored: source names already set aside on purpose (optimizer slots, counters).
    notes: remarks to pass on to the report.

  Returns:
    The `SourceTensors` for `load_pretrained`'s merge.

  Raises:
    ValueError: naming every tensor whose shape disagrees with the model, with both shapes.
  """
  aliases = dict(aliases or {})
  by_name = {m.theirs: m for m in table}
  tensors: dict[Path, np.ndarray] = {}
  names: dict[Path, str] = {}
  unused: list[str] = []
  set_aside = list(ignored)
  notes = list(notes)
  mismatched: list[str] = []
  for key, variable in variables.items():
    original = aliases.get(key)
    if original is not None and original in variables:
      set_aside.append(variable.name)
      notes.extend(_copy_note(variable, variables[original]))
      continue
    mapping = by_name.get(original or key)
    if mapping is None or mapping.ours not in shapes:
      unused.append(variable.name)
      continue
    our_shape = tuple(shapes[mapping.ours])
    want = their_shape(our_shape, mapping.transform)
    if tuple(variable.shape) != want:
      mismatched.append(
        f"{variable.name} has shape {tuple(variable.shape)}, but {model_class} with this config "
        f"expects {want} (our {'/'.join(mapping.ours)}: {our_shape})"
      )
      continue
    tensors[mapping.ours] = to_ours(variable.load(), mapping.transform, our_shape)
    names[mapping.ours] = variable.name
  if mismatched:
    raise ValueError(
      f"{where} and the model disagree on tensor shapes (is the config right?):\n  "
      + "\n  ".join(mismatched)
    )
  return SourceTensors(tensors, names, tuple(unused), tuple(set_aside), tuple(notes))


def _copy_note(copy: SourceVariable, original: SourceVariable) -> list[str]:
  a, b = copy.load(), original.load()
  if a.shape == b.shape and np.array_equal(a, b):
    return []
  if a.shape != b.shape:
    detail = f"shapes {a.shape} and {b.shape}"
  else:
    gap = np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
    detail = f"max |difference| {gap:.3g}"
  return [
    f"{copy.name} should repeat {original.name} but differs ({detail}); the model shares one "
    f"tensor, so {original.name} was loaded."
  ]


# ----------------------------------------------------------------------------------------------
# The reader of TensorFlow checkpoints
# ----------------------------------------------------------------------------------------------


class TfCheckpointReader:
  """TF1 name-based and TF2 checkpoints (a `WeightReader`, see `loading`).

  `detect` looks at file names only; `open` lists the variables with TensorFlow and picks the
  name table from them (module docstring).
  """

  name = "tf-checkpoint"
  accepts = (
    "a TensorFlow checkpoint: a prefix such as dir/model.ckpt-1234 (or its .index file), or a "
    "directory with a `checkpoint` state file or a single *.index file; original TF1 "
    "(google-research) or TF2 Model Garden, config from bert_config.json/config.json beside it"
  )

  def detect(self, source: str) -> bool:
    return resolve_checkpoint_prefix(source) is not None

  def open(self, source: str, *, revision: str | None = None) -> Any:
    del revision  # local files have one version
    # tf1 and tf2 import this module.
    from mobilebert_jax.weights import tf1, tf2, tf2_names

    prefix = checkpoint_prefix(source)
    reader, shapes = list_checkpoint(prefix)
    if OBJECT_GRAPH_KEY in shapes:
      return tf2.Tf2ObjectSource(prefix, reader, shapes)
    if tf1.looks_like_tf1(shapes):
      return tf1.Tf1Source(prefix, reader, shapes)
    if tf2_names.looks_like_tf2_variable_names(shapes):
      return tf2.Tf2NamedSource(prefix, reader, shapes)
    sample = sorted(shapes)[:8]
    raise ValueError(
      f"{prefix} is a TensorFlow checkpoint but not of MobileBERT: it has neither TF1 names "
      f"(bert/embeddings/..., bert/encoder/layer_N/...) nor TF2 Model Garden ones; its first "
      f"tensors are {sample}"
    )
