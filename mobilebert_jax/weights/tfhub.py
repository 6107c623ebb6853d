"""TF-Hub SavedModels of the MobileBERT encoder (`official/projects/mobilebert/export_tfhub.py`).

The SavedModel's own `variables/` checkpoint numbers its tensors (`variables/17`), which says
nothing about what they are, so the variables are read by their names instead: the SavedModel is
loaded with `tf.saved_model.load` (no Keras, no Model Garden), and each variable's `.name` is
mapped with `tf2_names.variable_table` after `tf2_names.canonical_variable_name`. The encoder's
variables come from the root object, the MLM head's from its `mlm` sub-model when present.

A SavedModel carries no architecture description: the config comes from a `bert_config.json` or
`config.json` in the SavedModel directory, or from the caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights import tf2_names
from mobilebert_jax.weights.mapping import SourceVariable, map_variables
from mobilebert_jax.weights.protocol import Path, SourceTensors
from mobilebert_jax.weights.tf_common import (
  TF_CONFIG_DEFAULTS,
  config_beside,
  import_tensorflow,
  is_saved_model_dir,
)


class TfHubSource:
  """An opened TF-Hub SavedModel (see `OpenedSource` in `protocol`)."""

  format = "tf-hub"
  config_defaults: Mapping[str, Any] = TF_CONFIG_DEFAULTS

  def __init__(self, directory: str):
    self.directory = directory
    self.description = f"{directory} (TF-Hub SavedModel)"
    self._config_notes: tuple[str, ...] = ()

  def config(self) -> MobileBertConfig | None:
    """The `bert_config.json` or `config.json` in the SavedModel directory.

    Raises:
      FileNotFoundError: neither (saying how to pass a config).
    """
    found = config_beside(self.directory, self.description)
    self._config_notes = (*found.notes, f"Config read from {found.path}.")
    return found.config

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors:
    """Loads the SavedModel and maps its variables onto `model_class`.

    Raises:
      ValueError: the SavedModel has no MobileBERT variables, two variables with one name, or
        shapes that disagree with the model.
    """
    tf = import_tensorflow(self.description)
    loaded = tf.saved_model.load(self.directory)
    variables: dict[str, SourceVariable] = {}
    ignored: list[str] = []
    notes = list(self._config_notes)
    flag = getattr(loaded, "do_lower_case", None)
    if flag is not None:
      # TF-Hub's encoders keep it among their variables, our exports beside them.
      notes.append(f"The SavedModel's tokenizer flag do_lower_case is {bool(flag.numpy())}.")
    seen: set[int] = set()
    for owner in (loaded, getattr(loaded, "mlm", None)):
      for variable in getattr(owner, "variables", ()) if owner is not None else ():
        if id(variable) in seen:  # the MLM sub-model shares the encoder's variables
          continue
        seen.add(id(variable))
        if variable is flag:
          ignored.append(variable.name)
          continue
        key = tf2_names.canonical_variable_name(variable.name)
        if key in variables:
          raise ValueError(
            f"{self.description}: {variables[key].name} and {variable.name} are both the "
            f"variable {key}"
          )
        variables[key] = SourceVariable(variable.name, tuple(variable.shape), _reader(variable))
    if not variables:
      raise ValueError(f"{self.description} has no variables")
    vocab = os.path.join(self.directory, "assets", "vocab.txt")
    if os.path.isfile(vocab):
      notes.append(f"The SavedModel's vocabulary is {vocab}.")
    return map_variables(
      variables,
      tf2_names.variable_table(config, model_class),
      shapes,
      model_class=model_class,
      where=self.description,
      ignored=ignored,
      notes=notes,
    )


def _reader(variable: Any):
  return lambda: np.asarray(variable.numpy())


class TfHubReader:
  """TF-Hub SavedModel directories of the MobileBERT encoder (a `WeightReader`, see `protocol`)."""

  name = "tf-hub"
  accepts = (
    "a TF-Hub SavedModel directory of the MobileBERT encoder (saved_model.pb and variables/), "
    "config from bert_config.json/config.json in it or the config argument"
  )

  def detect(self, source: str) -> bool:
    return is_saved_model_dir(source)

  def open(self, source: str, *, revision: str | None = None) -> TfHubSource:
    del revision  # local files have one version
    if not is_saved_model_dir(source):
      raise FileNotFoundError(
        f"{source} is not a SavedModel directory (saved_model.pb, variables/)"
      )
    return TfHubSource(source)
