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

from mobilebert_jax import atomic_files
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


# How long one look at the Hub may take before the cache alone is used. Short, because on a
# machine without network every hub load pays it; HF_HUB_ETAG_TIMEOUT, when set, wins.
HUB_PROBE_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class HubAccess:
  """How the files of one hub repo can be had: from the Hub, or only from the local HF cache.

  Attributes:
    repo_id: the hub id.
    revision: branch, tag or commit; None for the default branch.
    offline_reason: None when the Hub answered; otherwise why only the local cache is read
      (HF_HUB_OFFLINE is set, or the one look at the Hub failed and how).
  """

  repo_id: str
  revision: str | None
  offline_reason: str | None

  @property
  def where(self) -> str:
    return self.repo_id if self.revision is None else f"{self.repo_id}@{self.revision}"

  def download(self, filename: str) -> str:
    """The local path of `filename`, downloaded or from the cache (`hf_hub_download`'s errors)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
      self.repo_id,
      filename,
      revision=self.revision,
      local_files_only=self.offline_reason is not None,
    )

  def download_command(self) -> str:
    """The shell command that puts this repo into a local directory DIR, for messages."""
    revision = "" if self.revision is None else f" --revision {self.revision}"
    return f"{_hub_cli()} download {self.repo_id}{revision} --local-dir DIR"


def open_hub(repo_id: str, revision: str | None = None) -> HubAccess:
  """Decides, with at most one quick request, whether the Hub or only the local cache is used.

  Without network, `hf_hub_download` retries a file that is not cached five times with backoff
  (about 23 s a file, two minutes for the files a checkpoint is looked for under). So the Hub
  is asked once, without retries and with a short timeout (`HUB_PROBE_TIMEOUT_S`), for
  `config.json`'s metadata; if it does not answer, every file is then taken from the cache
  (`local_files_only`), which fails at once for files it lacks. With HF_HUB_OFFLINE set nothing
  is requested at all.
  """
  from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
  from huggingface_hub.errors import HfHubHTTPError

  if constants.HF_HUB_OFFLINE:
    return HubAccess(repo_id, revision, "HF_HUB_OFFLINE is set, so the Hub was not asked")
  timeout = (
    constants.HF_HUB_ETAG_TIMEOUT if "HF_HUB_ETAG_TIMEOUT" in os.environ else HUB_PROBE_TIMEOUT_S
  )
  try:
    # `get_hf_file_metadata` makes a single attempt (it retries only when asked to).
    get_hf_file_metadata(hf_hub_url(repo_id, CONFIG_FILE, revision=revision), timeout=timeout)
  except HfHubHTTPError as e:
    status = e.response.status_code if e.response is not None else None
    if status is not None and status >= 500:
      # The Hub, or a proxy standing in for it, fails: retrying it is what takes minutes.
      return HubAccess(repo_id, revision, f"the Hub answered HTTP {status}")
    # Any other answer (a missing repo or file, a gated repo, ...) comes from a reachable Hub;
    # the download itself reports it.
  except Exception as e:
    # No answer. The HTTP client and so its exception types differ between huggingface_hub
    # versions (requests, httpx, httpx2); every failure to get an answer means the same here.
    return HubAccess(
      repo_id,
      revision,
      f"the Hub is unreachable ({type(e).__name__}: {e}; asked once, with a {timeout:g} s "
      "timeout that HF_HUB_ETAG_TIMEOUT sets)",
    )
  return HubAccess(repo_id, revision, None)


@functools.cache
def _hub_cli() -> str:
  """The name of huggingface_hub's command line tool: `hf` replaced `huggingface-cli` in 0.34."""
  import huggingface_hub

  major, minor = (int(part) for part in re.findall(r"\d+", huggingface_hub.__version__)[:2])
  return "hf" if (major, minor) >= (0, 34) else "huggingface-cli"


def download_hub_files(repo_id: str, revision: str | None = None) -> HfFiles:
  """Downloads (or finds in the local cache) the config and weights of a hub model.

  Only `config.json` and the first weight form the repo has are fetched. Without network (or
  with HF_HUB_OFFLINE) only the local cache is read, and a miss fails within seconds
  (`open_hub`).

  Raises:
    FileNotFoundError: the repo or its weights cannot be had, saying what was tried and why.
  """
  from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
  )

  access = open_hub(repo_id, revision)
  where = access.where
  local_hint = (
    f"Pass a local directory holding {CONFIG_FILE} and {SAFETENSORS_FILE} (or {BIN_FILE}) "
    f"instead: e.g. download it where the Hub is reachable with `{access.download_command()}` "
    "and pass DIR."
  )
  tried: list[str] = []

  def fetch(name: str) -> str | None:
    try:
      return access.download(name)
    except LocalEntryNotFoundError:
      if access.offline_reason is not None:
        tried.append(f"{name}: not in the local cache")
      else:  # The Hub answered the first look but not this one.
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
  cache_only = (
    ""
    if access.offline_reason is None
    else f"\nOnly the local cache was read: {access.offline_reason}."
  )
  raise FileNotFoundError(
    f"Could not load {where!r}: it is not a local path, and as a Hugging Face Hub id none of "
    "its weight files could be had. Tried:\n  "
    + "\n  ".join(tried)
    + cache_only
    + f"\n{local_hint}"
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
    atomic_files.fsync_directory(parent)
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
  atomic_files.fsync_directory(directory)
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
