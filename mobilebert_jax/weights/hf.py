"""Hugging Face directories, files and hub ids: the "hf" and "hf-hub" readers and the writer.

A transformers MobileBERT checkpoint is a `config.json` plus the state dict in one of four forms,
tried in transformers' order: `model.safetensors`, `model.safetensors.index.json` (shards),
`pytorch_model.bin`, `pytorch_model.bin.index.json`. safetensors are read with NumPy (no torch;
bfloat16 through `ml_dtypes`); `.bin` files only through `torch.load(weights_only=True)`. Every
tensor is mapped by the explicit table in `hf_names`, through `mapping.map_variables` as in the
TensorFlow readers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import tempfile
import types
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MODEL_CLASSES
from mobilebert_jax.weights import hf_names
from mobilebert_jax.weights.mapping import SourceVariable, map_variables, to_theirs
from mobilebert_jax.weights.protocol import Path, SourceTensors

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# transformers' order of preference.
WEIGHT_FILES = (SAFETENSORS_FILE, SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX)

TORCH_EXTRA_HINT = 'pip install "mobilebert-jax[torch]"'
# A hub id: "name" or "owner/name" (letters, digits, "-", "_", ".").
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


@dataclasses.dataclass(frozen=True)
class HfFiles:
  """The resolved files of one HF checkpoint.

  Attributes:
    description: what they are, for messages (a directory, or "hub id (files)").
    config_path: the `config.json`, or None when there is none.
    weight_paths: the weight file, or every shard of a sharded checkpoint.
    kind: "safetensors" or "bin".
  """

  description: str
  config_path: str | None
  weight_paths: tuple[str, ...]
  kind: str


# ----------------------------------------------------------------------------------------------
# Finding the files
# ----------------------------------------------------------------------------------------------


def find_local_files(path: str) -> HfFiles:
  """Resolves a local directory, weight file, index file or `config.json`.

  Raises:
    FileNotFoundError: naming the files looked for.
  """
  if os.path.isdir(path):
    directory, weights = path, None
    for name in WEIGHT_FILES:
      if os.path.isfile(os.path.join(path, name)):
        weights = os.path.join(path, name)
        break
    if weights is None:
      raise FileNotFoundError(
        f"{path} holds no Hugging Face weights: looked for {', '.join(WEIGHT_FILES)}"
      )
  elif os.path.isfile(path):
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.basename(path) == CONFIG_FILE:
      return find_local_files(directory)
    weights = path
  else:
    raise FileNotFoundError(f"{path} does not exist")

  def shard(name: str) -> str:
    shard_path = os.path.join(directory, name)
    if not os.path.isfile(shard_path):
      raise FileNotFoundError(f"{weights} lists the shard {name}, which is not in {directory}")
    return shard_path

  config_path = os.path.join(directory, CONFIG_FILE)
  return HfFiles(
    description=path,
    config_path=config_path if os.path.isfile(config_path) else None,
    weight_paths=_expand_index(weights, shard),
    kind=_kind_of(weights),
  )


def download_hub_files(repo_id: str, revision: str | None = None) -> HfFiles:
  """Downloads (or finds in the local cache) the config and weights of a hub model.

  Only `config.json` and the first weight form the repo has are fetched.

  Raises:
    FileNotFoundError: the repo or its weights cannot be had, saying what was tried and why.
  """
  from huggingface_hub import hf_hub_download
  from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
  )

  where = repo_id if revision is None else f"{repo_id}@{revision}"
  tried: list[str] = []

  def fetch(name: str) -> str | None:
    try:
      return hf_hub_download(repo_id, name, revision=revision)
    except LocalEntryNotFoundError:
      # Offline (HF_HUB_OFFLINE) or unreachable, and not in the local cache.
      tried.append(f"{name}: not in the local cache and the Hub is unreachable or offline")
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
      raise FileNotFoundError(
        f"Hugging Face Hub has no model {where!r} (or it is private/gated): {e}. Pass a local "
        f"directory with {CONFIG_FILE} and {SAFETENSORS_FILE} or {BIN_FILE} instead."
      ) from e
    except HFValidationError as e:
      raise FileNotFoundError(f"{repo_id!r} is neither a local path nor a valid hub id: {e}") from e
    except EntryNotFoundError:
      tried.append(f"{name}: not in the repo")
    except OSError as e:  # connection problems that are not cache misses
      tried.append(f"{name}: {type(e).__name__}: {e}")
    return None

  config_path = fetch(CONFIG_FILE)
  for name in WEIGHT_FILES:
    weights = fetch(name)
    if weights is not None:

      def shard(shard_name: str) -> str:
        got = fetch(shard_name)
        if got is None:
          raise FileNotFoundError(f"{where}: shard {shard_name} unavailable; {tried[-1]}")
        return got

      paths = _expand_index(weights, shard)
      return HfFiles(
        description=f"{where} ({os.path.dirname(paths[0])})",
        config_path=config_path,
        weight_paths=paths,
        kind=_kind_of(weights),
      )
  raise FileNotFoundError(
    f"Could not load {where!r}: it is not a local path, and as a Hugging Face Hub id none of "
    f"its weight files could be had. Tried:\n  "
    + "\n  ".join(tried)
    + f"\nPass a local directory holding {CONFIG_FILE} and {SAFETENSORS_FILE} (or {BIN_FILE})."
  )


def _kind_of(path: str) -> str:
  name = os.path.basename(path)
  if name.endswith(".safetensors") or name == SAFETENSORS_INDEX:
    return "safetensors"
  if name.endswith(".bin") or name == BIN_INDEX:
    return "bin"
  raise ValueError(f"{path}: not a Hugging Face weight file (.safetensors, .bin or their index)")


def _expand_index(path: str, locate) -> tuple[str, ...]:
  """The shard paths of an index file (`locate(name)` finds each), else `(path,)`."""
  if not path.endswith(".index.json"):
    return (path,)
  try:
    with open(path, encoding="utf-8") as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is not a weight index (a JSON object with a weight_map): {e}") from e
  shards = sorted(set(weight_map.values()))
  return tuple(locate(name) for name in shards)


# ----------------------------------------------------------------------------------------------
# Reading config and tensors
# ----------------------------------------------------------------------------------------------


def read_hf_config(path: str) -> MobileBertConfig:
  """Reads a transformers `config.json` as a `MobileBertConfig`.

  Its `dtype`/`torch_dtype` (the storage dtype of the weights) is not taken as our compute
  `dtype`; see `MobileBertConfig.from_dict`.

  Raises:
    ValueError: not JSON, not a MobileBERT config, or an impossible architecture.
  """
  return MobileBertConfig.from_json_file(path, source="hf")


class _TensorStore:
  """Name -> tensor access over one or more weight files, read lazily where the format allows."""

  def __init__(self, files: HfFiles):
    self._where: dict[str, str] = {}
    self._loaded: dict[str, np.ndarray] = {}
    self._stack = contextlib.ExitStack()
    self._handles: dict[str, Any] = {}
    for path in files.weight_paths:
      if files.kind == "safetensors":
        handle = self._stack.enter_context(safe_open(path, framework="numpy"))
        self._handles[path] = handle
        names = list(handle.keys())
      else:
        state = _torch_load(path)
        self._loaded.update(state)
        names = list(state)
      for name in names:
        if name in self._where:
          raise ValueError(f"tensor {name} appears in both {self._where[name]} and {path}")
        self._where[name] = path

  def __enter__(self) -> _TensorStore:
    return self

  def __exit__(self, *exc) -> None:
    self._stack.close()

  def keys(self) -> list[str]:
    return list(self._where)

  def file_of(self, name: str) -> str:
    return self._where[name]

  def shape(self, name: str) -> tuple[int, ...]:
    if name in self._loaded:
      return tuple(self._loaded[name].shape)
    return tuple(self._handles[self._where[name]].get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    if name in self._loaded:
      return self._loaded[name]
    return self._handles[self._where[name]].get_tensor(name)


def _torch_load(path: str) -> dict[str, np.ndarray]:
  """Reads a PyTorch state dict safely (tensors only) as NumPy arrays."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(
      f"Reading {path} needs PyTorch, which is not installed: {TORCH_EXTRA_HINT} (or convert "
      f"the checkpoint to {SAFETENSORS_FILE}, which loads without torch)"
    ) from e
  state = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(state, Mapping):
    raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
  out = {}
  for name, tensor in state.items():
    if not isinstance(tensor, torch.Tensor):
      raise ValueError(f"{path}: entry {name!r} is a {type(tensor).__name__}, not a tensor")
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
      # NumPy has no bfloat16; reinterpret the bits as ml_dtypes' bfloat16 (lossless).
      out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      out[name] = tensor.numpy()
  return out


class HfSource:
  """An opened HF checkpoint (see `OpenedSource` in `protocol`)."""

  format = "hf"
  # Reproducing transformers' numbers is the point of loading its weights (docs/pitfalls.md P8).
  config_defaults: Mapping[str, Any] = types.MappingProxyType({"hf_layer_norm_eps_quirk": True})

  def __init__(self, files: HfFiles):
    self.files = files
    self.description = files.description

  def config(self) -> MobileBertConfig | None:
    if self.files.config_path is None:
      return None
    return read_hf_config(self.files.config_path)

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors:
    """Maps the state dict onto `model_class`'s parameters with `hf_names`' table."""
    with _TensorStore(self.files) as store:
      return _map_state_dict(store, config, model_class, shapes)


def _map_state_dict(
  store: _TensorStore,
  config: MobileBertConfig,
  model_class: str,
  shapes: Mapping[Path, tuple[int, ...]],
) -> SourceTensors:
  prefix = hf_names.BASE_MODEL_PREFIX
  keys = store.keys()
  source_prefixed = any(k.startswith(prefix) for k in keys)
  target_prefixed = model_class != "MobileBertModel"
  notes = []

  # transformers' base_model_prefix rule: a bare-encoder checkpoint gains the prefix in a class
  # with heads; a head-class checkpoint loses it in the bare encoder (its heads go unused). The
  # table's names are rewritten in the checkpoint's form: without the prefix for a bare-encoder
  # checkpoint (whose names the heads then cannot match), with it for a head-class checkpoint.
  def checkpoint_name(name: str) -> str | None:
    if target_prefixed and not source_prefixed:
      return name[len(prefix) :] if name.startswith(prefix) else None
    if source_prefixed and not target_prefixed:
      return prefix + name
    return name

  if source_prefixed and not target_prefixed:
    notes.append(f"Checkpoint of a class with heads: its {prefix!r} prefix was removed.")
  elif target_prefixed and not source_prefixed:
    notes.append(f"Checkpoint of the bare MobileBertModel: the {prefix!r} prefix was added.")

  table = []
  for mapping in hf_names.model_table(config, model_class):
    name = checkpoint_name(mapping.theirs)
    if name is not None:
      table.append(dataclasses.replace(mapping, theirs=name))
  skippable = set()
  for name in MODEL_CLASSES:
    skippable.update(hf_names.tied_or_buffer_keys(name))
  variables = {
    key: SourceVariable(
      key, store.shape(key), functools.partial(store.get, key), store.file_of(key)
    )
    for key in keys
    if key not in skippable
  }
  found = map_variables(
    variables,
    table,
    shapes,
    model_class=model_class,
    where=None,
    ignored=[key for key in keys if key in skippable],
    notes=notes,
  )
  return dataclasses.replace(found, notes=(*found.notes, *_tie_notes(store, keys)))


def _tie_notes(store: _TensorStore, keys: list[str]) -> list[str]:
  """Notes for tied copies in the file that differ from the tensor they should repeat."""
  present = set(keys)
  notes = []
  for copy, original in hf_names.tied_copies().items():
    if copy in present and original in present:
      a, b = store.get(copy), store.get(original)
      if a.shape != b.shape:
        detail = f"shapes {a.shape} and {b.shape}"
      elif not np.array_equal(a, b):
        gap = np.max(np.abs(a.astype(np.float32) - b.astype(np.float32)))
        detail = f"max |difference| {gap:.3g}"
      else:
        continue
      notes.append(
        f"{copy} differs from {original} ({detail}), although transformers ties them: the "
        f"model shares one tensor, so {original} was loaded and {copy} ignored."
      )
  return notes


# ----------------------------------------------------------------------------------------------
# The two readers
# ----------------------------------------------------------------------------------------------


class HfReader:
  """Local HF checkpoints: a directory, a weight or index file, or a `config.json`."""

  name = "hf"
  accepts = (
    f"a directory (or a file in it) with {CONFIG_FILE} and {SAFETENSORS_FILE}, "
    f"{SAFETENSORS_INDEX} or {BIN_FILE}"
  )

  def detect(self, source: str) -> bool:
    # A directory counts only with weights in it: a config.json alone may sit beside another
    # format's checkpoint (e.g. TF2), which a later reader should get.
    if os.path.isdir(source):
      return any(os.path.isfile(os.path.join(source, n)) for n in WEIGHT_FILES)
    if not os.path.isfile(source):
      return False
    name = os.path.basename(source)
    if name == CONFIG_FILE:
      return self.detect(os.path.dirname(os.path.abspath(source)))
    return name in (SAFETENSORS_INDEX, BIN_INDEX) or name.endswith((".safetensors", ".bin"))

  def open(self, source: str, *, revision: str | None = None) -> HfSource:
    del revision  # local files have one version
    return HfSource(find_local_files(source))


class HfHubReader:
  """Hugging Face Hub ids ("google/mobilebert-uncased"), fetched with `huggingface_hub`."""

  name = "hf-hub"
  accepts = "a Hugging Face Hub model id such as 'google/mobilebert-uncased' (online or cached)"

  def detect(self, source: str) -> bool:
    return not os.path.exists(source) and _HUB_ID.fullmatch(source) is not None

  def open(self, source: str, *, revision: str | None = None) -> HfSource:
    return HfSource(download_hub_files(source, revision))


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def state_dict_from_params(
  flat_params: Mapping[Path, np.ndarray], config: MobileBertConfig, model_class: str
) -> dict[str, np.ndarray]:
  """Our unscanned flat params -> transformers' state dict (without tied copies and buffers)."""
  return {
    m.theirs: to_theirs(np.asarray(flat_params[m.ours]), m.transform)
    for m in hf_names.model_table(config, model_class)
  }


def hf_config_dict(config: MobileBertConfig, model_class: str) -> dict[str, Any]:
  """The `config.json` contents transformers needs to rebuild `model_class`."""
  if model_class == "MobileBertForQuestionAnswering" and config.num_labels != 2:
    # transformers sizes `qa_outputs` by num_labels; ours always has the start and end channel.
    config = config.replace(num_labels=2, id2label=None)
  data = config.to_hf_dict()
  data["architectures"] = [model_class]
  data["model_type"] = "mobilebert"
  return data


def check_transformers_can_build(config: MobileBertConfig) -> None:
  """Raises if transformers' MobileBERT cannot express `config` (docs/pitfalls.md P10).

  transformers always projects queries and keys from `true_hidden_size` features, so a block
  whose attention reads the H-wide block input (bottlenecks on, both attention flags off, as
  in the IB-BERT teacher) has no transformers equivalent unless b equals H.
  """
  if config.attention_input_size != config.true_hidden_size:
    raise ValueError(
      "transformers' MobileBERT cannot build this architecture (docs/pitfalls.md P10): with "
      "use_bottleneck=True and neither use_bottleneck_attention nor "
      "key_query_shared_bottleneck, queries and keys read the block input "
      f"({config.hidden_size} features), but transformers projects them from "
      f"intra_bottleneck_size={config.intra_bottleneck_size}. Save such a model with the Orbax "
      "checkpointing instead."
    )


def write_hf_directory(
  directory: str | os.PathLike[str],
  config: MobileBertConfig,
  model_class: str,
  flat_params: Mapping[Path, np.ndarray],
) -> str:
  """Writes `config.json` + `model.safetensors` atomically (see `loading.save_pretrained`).

  Returns:
    The directory path.
  """
  check_transformers_can_build(config)
  directory = os.path.abspath(os.fspath(directory))
  tensors = state_dict_from_params(flat_params, config, model_class)
  config_text = json.dumps(hf_config_dict(config, model_class), indent=2, sort_keys=True) + "\n"

  if not os.path.exists(directory):
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(directory)}.", dir=parent)
    try:
      _write_safetensors(os.path.join(staging, SAFETENSORS_FILE), tensors)
      _write_text(os.path.join(staging, CONFIG_FILE), config_text)
      os.rename(staging, directory)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise
    _fsync_directory(parent)
    return directory

  if not os.path.isdir(directory):
    raise NotADirectoryError(f"{directory} exists and is not a directory")
  with _temporary_files(directory) as temp:
    _write_safetensors(temp(SAFETENSORS_FILE), tensors)
    _write_text(temp(CONFIG_FILE), config_text)
    # Without config.json the directory no longer looks complete while the weights change.
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(directory, CONFIG_FILE))
    os.replace(temp(SAFETENSORS_FILE), os.path.join(directory, SAFETENSORS_FILE))
    for stale in _stale_weight_files(directory):
      os.remove(os.path.join(directory, stale))
    os.replace(temp(CONFIG_FILE), os.path.join(directory, CONFIG_FILE))
  _fsync_directory(directory)
  return directory


def _stale_weight_files(directory: str) -> list[str]:
  """Weight files of an earlier save that transformers might read instead of ours."""
  shard = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")
  return [
    name
    for name in os.listdir(directory)
    if name in (SAFETENSORS_INDEX, BIN_FILE, BIN_INDEX) or shard.fullmatch(name)
  ]


@contextlib.contextmanager
def _temporary_files(directory: str) -> Iterator[Any]:
  """Yields `temp(name)` -> a hidden temporary path in `directory`; removes leftovers."""
  token = uuid.uuid4().hex[:12]
  made: list[str] = []

  def temp(name: str) -> str:
    path = os.path.join(directory, f".{name}.{token}.tmp")
    if path not in made:
      made.append(path)
    return path

  try:
    yield temp
  finally:
    for path in made:
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _write_safetensors(path: str, tensors: Mapping[str, np.ndarray]) -> None:
  save_file(dict(tensors), path, metadata={"format": "pt"})
  _fsync_file(path)


def _write_text(path: str, text: str) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _fsync_file(path: str) -> None:
  with open(path, "rb") as f:
    os.fsync(f.fileno())


def _fsync_directory(path: str) -> None:
  # Makes the renames durable; some file systems cannot open directories, which is harmless.
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
