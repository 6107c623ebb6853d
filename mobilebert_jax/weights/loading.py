"""`load_pretrained` and `save_pretrained`, and the registry of checkpoint readers.

Loading is split in two so that every checkpoint format shares one merge step:

* A **reader** knows one format. It recognises a source from its path or name, finds the
  architecture stored with it, and turns its tensors into our layout.
* The **merge** (`load_pretrained`) knows our model. It builds the config, checks every tensor
  against the parameter it claims to be, initialises what the source lacks, stacks the blocks
  for `scan_layers`, and reports what it did.

The reader protocol (what a format implements, and the `SourceTensors` it hands the merge) is
in `mobilebert_jax.weights.protocol`. Readers register with `register_reader`; those registered
with `fallback=True` (remote ids, which any string could look like) are asked only after every
local reader declined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import MODEL_CLASSES, abstract_params, dummy_inputs
from mobilebert_jax.weights import hf, layout, tf_checkpoint, tfhub
from mobilebert_jax.weights.protocol import Path, SourceTensors, WeightReader
from mobilebert_jax.weights.report import LoadReport

logger = logging.getLogger(__name__)

PyTree = Any

# Keyword arguments of `load_pretrained` that are not config overrides.
RESERVED_ARGUMENTS = ("config", "rng", "return_report", "revision")


# ----------------------------------------------------------------------------------------------
# The reader registry
# ----------------------------------------------------------------------------------------------

_READERS: list[WeightReader] = []
_FALLBACK_READERS: list[WeightReader] = []


def register_reader(reader: WeightReader, *, fallback: bool = False) -> None:
  """Adds a checkpoint reader (replacing a registered one of the same name).

  Args:
    reader: an object following the reader protocol (see `protocol`).
    fallback: ask this reader only after every other one declined (for remote ids).
  """
  if not isinstance(reader, WeightReader):
    raise TypeError(f"{reader!r} does not follow the WeightReader protocol")
  unregister_reader(reader.name)
  (_FALLBACK_READERS if fallback else _READERS).append(reader)


def unregister_reader(name: str) -> None:
  """Removes the reader called `name` (no error if there is none)."""
  for registry in (_READERS, _FALLBACK_READERS):
    registry[:] = [r for r in registry if r.name != name]


def registered_readers() -> tuple[WeightReader, ...]:
  """The registered readers, in the order `find_reader` asks them."""
  return (*_READERS, *_FALLBACK_READERS)


def find_reader(source: str | os.PathLike[str]) -> WeightReader:
  """The first registered reader that recognises `source`.

  Raises:
    FileNotFoundError: no reader recognises it (the message lists what each one reads).
  """
  source = os.fspath(source)
  for reader in registered_readers():
    if reader.detect(source):
      return reader
  accepted = "\n".join(f"  - {r.name}: {r.accepts}" for r in registered_readers())
  if os.path.isdir(source):
    found = sorted(os.listdir(source))[:20]
    what = f"directory {source!r} holds no checkpoint this package can read (it has {found})"
  elif os.path.exists(source):
    what = f"{source!r} is not a checkpoint file this package can read"
  else:
    what = f"{source!r} is neither an existing file or directory nor a known remote id"
  raise FileNotFoundError(f"{what}. Readable sources:\n{accepted}")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_pretrained(
  source: str | os.PathLike[str],
  model_cls: type[nn.Module] = MobileBertModel,
  config: MobileBertConfig | None = None,
  *,
  rng: jax.Array | int = 0,
  return_report: bool = False,
  revision: str | None = None,
  **config_overrides: Any,
) -> tuple[nn.Module, PyTree] | tuple[nn.Module, PyTree, LoadReport]:
  """Builds a model and fills its parameters from a checkpoint.

  Hugging Face sources are a directory (or a file in it) with `config.json` and
  `model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin` (read
  through PyTorch), or a hub id such as "google/mobilebert-uncased". Other formats plug in
  through `register_reader`. A checkpoint of any of the eight classes loads into any class:
  shared parameters are taken, the rest of the target is freshly initialised and the rest of
  the source is reported as unused (logged at WARNING, or at INFO when `return_report` hands
  the report to the caller).

  Args:
    source: path or remote id of the checkpoint.
    model_cls: the class to build (one of the eight, or a subclass of one).
    config: the architecture; by default the one stored with the weights.
    rng: PRNG key or integer seed for parameters the source lacks (deterministic).
    return_report: also return the `LoadReport` (whose summary is then logged at INFO only).
    revision: version of a remote source (hub branch, tag or commit); ignored for local paths.
    **config_overrides: config fields to change, e.g. `num_labels=3`, `scan_layers=True`,
      `dtype="bfloat16"`, `param_dtype="bfloat16"`. Loaded tensors are stored in
      `param_dtype` (default float32: bfloat16/float16 files are widened exactly), so there is
      no separate cast argument. A format's implied switches apply before these, also with
      `config`: HF sources set `hf_layer_norm_eps_quirk=True` (docs/pitfalls.md P8) unless it is
      overridden here.

  Returns:
    `(module, params)`, or `(module, params, report)` with `return_report=True`. `params` is
    the tree for `module.apply({"params": params}, ...)` (JAX arrays on the default device),
    scanned when `config.scan_layers`. Fresh parameters are the ones `init_params` gives the
    unscanned model for `rng` (then stacked), whatever the layout.

  Raises:
    FileNotFoundError: the source, its weights or (without `config`) its config are missing.
    ValueError: a tensor's shape disagrees with the model (naming both shapes), or a bad
      override.
    ImportError: the format needs a package that is not installed (e.g. torch for `.bin`).
  """
  class_name = canonical_class_name(model_cls)
  reader = find_reader(source)
  opened = reader.open(os.fspath(source), revision=revision)

  if config is None:
    config = opened.config()
    if config is None:
      raise FileNotFoundError(
        f"{opened.description} carries no model config; pass config=MobileBertConfig(...) "
        "(or MobileBertConfig.from_json_file(...)) to load_pretrained"
      )
  config = _apply_overrides(config, opened.config_defaults, config_overrides)
  module = model_cls(config)

  unscanned = config.replace(scan_layers=False) if config.scan_layers else config
  expected = traverse_util.flatten_dict(abstract_params(model_cls(unscanned)))
  shapes = {path: tuple(leaf.shape) for path, leaf in expected.items()}
  found = opened.read(unscanned, class_name, shapes)

  flat, account = _merge(found, expected, model_cls(unscanned), rng)
  report = LoadReport(
    source=opened.description,
    format=opened.format,
    model_class=class_name,
    config=config,
    **account,
  )
  params = traverse_util.unflatten_dict(flat)
  if config.scan_layers:
    params = layout.stack_layers(params, config.num_hidden_layers)
  params = jax.tree.map(jnp.asarray, params)

  # A dtype widening alone is routine; anything the reader remarked on is not, unless the
  # caller asked for the report: then it is theirs to show, and a warning would say it twice.
  if (report.initialized or report.unused or found.notes) and not return_report:
    logger.warning("%s", report.summary())
  else:
    logger.info("%s", report.summary())
  if return_report:
    return module, params, report
  return module, params


def canonical_class_name(model_cls: type[nn.Module]) -> str:
  """The name of the model class `model_cls` is (or derives from), e.g. "MobileBertModel".

  Raises:
    TypeError: `model_cls` is none of the eight classes nor a subclass of one.
  """
  for klass in getattr(model_cls, "__mro__", ()):
    if MODEL_CLASSES.get(klass.__name__) is klass:
      return klass.__name__
  raise TypeError(
    f"model_cls must be one of the MobileBERT model classes ({sorted(MODEL_CLASSES)}) or a "
    f"subclass of one, got {model_cls!r}"
  )


def _apply_overrides(
  config: MobileBertConfig, defaults: Mapping[str, Any], overrides: Mapping[str, Any]
) -> MobileBertConfig:
  """Applies the format's implied switches, then the caller's overrides (which win)."""
  try:
    return config.replace(**defaults).with_overrides(**overrides)
  except ValueError as e:
    reserved = ", ".join(RESERVED_ARGUMENTS)
    raise ValueError(
      f"{e}. load_pretrained passes its extra keyword arguments to the config (besides {reserved})"
    ) from e


def _merge(
  found: SourceTensors,
  expected: Mapping[Path, jax.ShapeDtypeStruct],
  unscanned_module: nn.Module,
  rng: jax.Array | int,
) -> tuple[dict[Path, np.ndarray], dict[str, Any]]:
  """Checks the reader's tensors against the model and initialises the rest.

  Returns:
    (our flat params in `param_dtype`, the `LoadReport` fields that describe the tensors).
  """
  config: MobileBertConfig = unscanned_module.config
  param_dtype = jnp.dtype(config.param_dtype)
  mismatched = []
  unexpected = []
  for path, array in found.tensors.items():
    if path not in expected:
      unexpected.append(found.names.get(path, "/".join(path)))
    elif tuple(array.shape) != tuple(expected[path].shape):
      # Readers check shapes in their own layout; this guards a reader that forgot to.
      mismatched.append(
        f"{found.names.get(path, '/'.join(path))} -> {'/'.join(path)}: source "
        f"{tuple(array.shape)}, model {tuple(expected[path].shape)}"
      )
  if mismatched:
    raise ValueError("shape mismatch between checkpoint and model: " + "; ".join(mismatched))

  flat: dict[Path, np.ndarray] = {}
  source_dtypes = set()
  for path in expected:
    if path in found.tensors:
      array = np.asarray(found.tensors[path])
      source_dtypes.add(str(array.dtype))
      flat[path] = array.astype(param_dtype, copy=False)
  missing = [path for path in expected if path not in flat]
  if missing:
    fresh = _fresh_params(unscanned_module, rng)
    for path in missing:
      flat[path] = np.asarray(fresh[path])

  notes = list(found.notes)
  cast_from = sorted(source_dtypes - {param_dtype.name})
  if cast_from:
    notes.append(f"Source tensors stored as {', '.join(cast_from)} were cast to {param_dtype}.")
  account = dict(
    loaded=tuple("/".join(p) for p in expected if p in found.tensors),
    initialized=tuple("/".join(p) for p in missing),
    unused=tuple(sorted({*found.unused, *unexpected})),
    ignored=tuple(sorted(found.ignored)),
    notes=tuple(notes),
    pad_row_is_zero=_pad_row_is_zero(found.tensors, config),
  )
  return flat, account


def _fresh_params(module: nn.Module, rng: jax.Array | int) -> dict[Path, jax.Array]:
  """The parameters `init_params(module, rng)` would give, computed without `jit`.

  Compiling the whole initialisation (forward pass included) costs far more than running it
  once op by op on a one-token input, and a load initialises at most once.
  """
  if isinstance(rng, int):
    rng = jax.random.key(rng)
  variables = module.init(rng, dummy_inputs(module, length=1))
  return traverse_util.flatten_dict(nn.meta.unbox(variables["params"]))


def _pad_row_is_zero(tensors: Mapping[Path, np.ndarray], config: MobileBertConfig) -> bool | None:
  """Whether the loaded word table's [PAD] row is zero (docs/pitfalls.md P3); None if not loaded."""
  for path, array in tensors.items():
    if path[-2:] == ("embeddings", "word_embeddings"):
      if not 0 <= config.pad_token_id < array.shape[0]:
        return None
      return not np.any(np.asarray(array[config.pad_token_id], dtype=np.float32))
  return None


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------


def save_pretrained(directory: str | os.PathLike[str], module: nn.Module, params: PyTree) -> str:
  """Writes a Hugging Face directory that transformers' `MobileBertFor*` classes load.

  The directory gets `config.json` (with `architectures` and `model_type`) and
  `model.safetensors` in transformers' key names and layouts; scanned parameters are unstacked.
  The write is atomic: a new directory appears only once complete, and in an existing one
  `config.json` is removed first and written last, so a directory with a `config.json` never
  holds half-written weights. Weight files of an earlier save (other shards, `.bin`) are
  removed; other files (e.g. a tokenizer) are kept.

  Args:
    directory: where to write (created if needed).
    module: the model instance (its class and config are saved).
    params: its parameters, scanned or not; on several hosts, gather them first.

  Returns:
    The directory path.

  Raises:
    TypeError: `module` is not a MobileBERT model class.
    ValueError: `params` does not fit `module` (missing, extra or misshapen parameters).
  """
  class_name = canonical_class_name(type(module))
  config: MobileBertConfig = module.config
  params = _plain_tree(params)
  if layout.is_scanned(params):
    params = layout.unstack_layers(params)
  unscanned = config.replace(scan_layers=False) if config.scan_layers else config
  expected = traverse_util.flatten_dict(abstract_params(MODEL_CLASSES[class_name](unscanned)))
  flat = traverse_util.flatten_dict(params)
  _check_tree(flat, expected, class_name)
  if config.normalization_type == "layer_norm" and not config.hf_layer_norm_eps_quirk:
    logger.warning(
      "Saving a LayerNorm model built without hf_layer_norm_eps_quirk: transformers will run the "
      "embedding LayerNorm and every block's final FFN LayerNorm with eps 1e-5 instead of "
      "layer_norm_eps=%g (docs/pitfalls.md P8), so its outputs will differ slightly from this "
      "model's.",
      config.layer_norm_eps,
    )
  arrays = {path: np.asarray(jax.device_get(value)) for path, value in flat.items()}
  return hf.write_hf_directory(directory, unscanned, class_name, arrays)


def _plain_tree(params: PyTree) -> PyTree:
  """Strips flax boxes and frozen dicts, keeping the values."""
  if isinstance(params, Mapping):
    return {k: _plain_tree(v) for k, v in params.items()}
  if isinstance(params, nn.Partitioned):
    return params.value
  return params


def _check_tree(
  flat: Mapping[Path, Any], expected: Mapping[Path, jax.ShapeDtypeStruct], class_name: str
) -> None:
  missing = sorted("/".join(p) for p in expected if p not in flat)
  extra = sorted("/".join(p) for p in flat if p not in expected)
  wrong = [
    f"{'/'.join(p)}: {tuple(np.shape(flat[p]))} instead of {tuple(s.shape)}"
    for p, s in expected.items()
    if p in flat and tuple(np.shape(flat[p])) != tuple(s.shape)
  ]
  problems = []
  if missing:
    problems.append(f"missing {missing[:10]}{' ...' if len(missing) > 10 else ''}")
  if extra:
    problems.append(f"not in the model {extra[:10]}{' ...' if len(extra) > 10 else ''}")
  if wrong:
    problems.append("wrong shapes: " + "; ".join(wrong[:10]))
  if problems:
    raise ValueError(f"params do not fit {class_name} with this config: " + ", ".join(problems))


# Local formats first; hub ids only when no local reader recognises the source. The TF readers
# go before the HF one: they recognise a source by its `.index` or `saved_model.pb` file, while
# the HF reader takes any directory with a `config.json`, which a TF checkpoint may have too.
# Neither imports TensorFlow until a TF source is opened.
register_reader(tf_checkpoint.TfCheckpointReader())
register_reader(tfhub.TfHubReader())
register_reader(hf.HfReader())
register_reader(hf.HfHubReader(), fallback=True)
