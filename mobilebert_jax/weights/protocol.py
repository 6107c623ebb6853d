"""The reader protocol: what a checkpoint format implements, and what it hands the merge.

A **reader** knows one format. It recognises a source from its path or name, finds the
architecture stored with it, and turns its tensors into our layout; `loading.load_pretrained`
(the merge) does the rest. Readers register with `loading.register_reader`.

A reader is an object with

* `name: str`, the format's short name (shown in reports), e.g. "hf";
* `accepts: str`, a phrase saying what sources it reads (used in "cannot read" errors);
* `detect(source: str) -> bool`, a cheap test on the path or name alone (file names, markers
  such as a `config.json` or a `.index` file). It never raises for a foreign source;
* `open(source: str, *, revision: str | None) -> OpenedSource`, which resolves the files
  (downloading them for a remote source; `revision` picks a version there and local readers
  ignore it) and raises `FileNotFoundError` naming what it tried when they are not there.

An `OpenedSource` has

* `description: str`, what was opened (resolved paths or the remote id), for messages;
* `format: str`, the format's name (a reader may tell sub-formats apart, e.g. "tf1"/"tf2");
* `config_defaults: Mapping[str, Any]`, implementation switches the format implies (HF sets
  `hf_layer_norm_eps_quirk=True`); the caller's keyword overrides win over them;
* `config() -> MobileBertConfig | None`, the architecture stored with the weights, if any;
* `read(config, model_class, shapes) -> SourceTensors`, the tensors for one target class:
  `config` is the final config (always with `scan_layers=False`), `model_class` the name of
  one of the eight classes, and `shapes` maps each of its parameter paths (unscanned, e.g.
  `("mobilebert", "encoder", "layer_0", "attention", "query", "kernel")`) to the shape it
  must have. The reader maps names with its own explicit table (see `mapping`), converts
  layouts, and raises `ValueError` naming the tensor and both shapes on a mismatch. Tensors the
  source lacks are simply absent: the merge initialises them. Values keep the source's dtype;
  the merge casts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from mobilebert_jax.model.config import MobileBertConfig

# A parameter's path in our (unscanned) tree, e.g. ("mobilebert", "pooler", "dense", "kernel").
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SourceTensors:
  """What a reader hands the merge for one target model class.

  Attributes:
    tensors: our unscanned parameter path -> array, already in our layout and shape.
    names: our path -> the source's own name of that tensor (for messages and reports).
    unused: source tensor names no parameter of the target class takes.
    ignored: source tensor names skipped on purpose (tied copies, buffers).
    notes: remarks for the report (e.g. a tied copy that differs from its original).
  """

  tensors: Mapping[Path, np.ndarray]
  names: Mapping[Path, str]
  unused: tuple[str, ...] = ()
  ignored: tuple[str, ...] = ()
  notes: tuple[str, ...] = ()


@runtime_checkable
class OpenedSource(Protocol):
  """A source a reader has resolved; see the module docstring."""

  description: str
  format: str
  config_defaults: Mapping[str, Any]

  def config(self) -> MobileBertConfig | None: ...

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors: ...


@runtime_checkable
class WeightReader(Protocol):
  """A checkpoint format; see the module docstring."""

  name: str
  accepts: str

  def detect(self, source: str) -> bool: ...

  def open(self, source: str, *, revision: str | None = None) -> OpenedSource: ...
