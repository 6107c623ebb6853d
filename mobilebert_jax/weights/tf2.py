"""TF2 Model Garden checkpoints: object-based (`tf.train.Checkpoint`) and name-based.

`Tf2ObjectSource` reads what `tf.train.Checkpoint(**pretrainer.checkpoint_items)` writes (the
released TF2 checkpoints, English and multilingual, of any vocabulary size), the encoder alone
(`tf.train.Checkpoint(encoder=encoder)`), and the checkpoints of Model Garden training runs; the
key variants are listed in `tf2_names.canonical_object_keys`. The TF2 pretrainer has no NSP head
and (released config) no pooler (docs/pitfalls.md P13): a class with those gets them freshly
initialised, and the report says so.

`Tf2NamedSource` reads a name-based checkpoint whose names are the TF2 variable names, such as
the intermediate checkpoint of the Model Garden's TF1->TF2 converter.

Optimizer state, `save_counter` and `global_step` are set aside without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights import tf2_names
from mobilebert_jax.weights.mapping import SourceVariable, map_variables
from mobilebert_jax.weights.protocol import Path, SourceTensors
from mobilebert_jax.weights.tf_common import (
  TF_CONFIG_DEFAULTS,
  config_beside,
)


class _Tf2Checkpoint:
  """What both TF2 checkpoint sources share: the config beside them and lazy tensor reads."""

  config_defaults: Mapping[str, Any] = TF_CONFIG_DEFAULTS

  def __init__(self, prefix: str, reader: Any, shapes: Mapping[str, tuple[int, ...]], kind: str):
    self.prefix = prefix
    self._reader = reader
    self._shapes = dict(shapes)
    self.description = f"{prefix} ({kind})"
    self._config_notes: tuple[str, ...] = ()

  def config(self) -> MobileBertConfig | None:
    """The `bert_config.json`, `config.json` or `params.yaml` beside the checkpoint.

    Raises:
      FileNotFoundError: none of them (saying how to pass a config).
    """
    found = config_beside(self.prefix, self.description)
    self._config_notes = (*found.notes, f"Config read from {found.path}.")
    return found.config

  def _variable(self, key: str) -> SourceVariable:
    return SourceVariable(key, self._shapes[key], lambda: self._reader.get_tensor(key))


class Tf2ObjectSource(_Tf2Checkpoint):
  """An opened object-based TF2 checkpoint (see `OpenedSource` in `protocol`)."""

  format = "tf2"

  def __init__(self, prefix: str, reader: Any, shapes: Mapping[str, tuple[int, ...]]):
    super().__init__(prefix, reader, shapes, "TF2 object-based checkpoint")

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors:
    """Maps the checkpoint onto `model_class` with `tf2_names.object_table`.

    Raises:
      ValueError: no MobileBERT encoder in the checkpoint, a block count other than the
        config's, or tensor shapes that disagree with the model.
    """
    try:
      canonical = tf2_names.canonical_object_keys(self._shapes, config.num_hidden_layers)
    except tf2_names.ObjectLayoutError as e:
      raise ValueError(f"{self.description}: {e}") from e
    variables: dict[str, SourceVariable] = {}
    ignored: list[str] = []
    for key in self._shapes:
      if tf2_names.is_object_bookkeeping(key):
        ignored.append(key)
      else:
        _add(variables, canonical.get(key, key), self._variable(key), self.description)
    return map_variables(
      variables,
      tf2_names.object_table(config, model_class),
      shapes,
      model_class=model_class,
      where=self.description,
      aliases=tf2_names.OBJECT_ALIASES,
      ignored=ignored,
      notes=self._config_notes,
    )


class Tf2NamedSource(_Tf2Checkpoint):
  """An opened name-based checkpoint with TF2 variable names (see `OpenedSource` in `protocol`)."""

  format = "tf2-names"

  def __init__(self, prefix: str, reader: Any, shapes: Mapping[str, tuple[int, ...]]):
    super().__init__(prefix, reader, shapes, "name-based checkpoint with TF2 variable names")

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors:
    """Maps the checkpoint onto `model_class` with `tf2_names.variable_table`."""
    variables: dict[str, SourceVariable] = {}
    ignored: list[str] = []
    for name in self._shapes:
      if name in ("global_step", "save_counter"):
        ignored.append(name)
      else:
        _add(
          variables, tf2_names.canonical_variable_name(name), self._variable(name), self.description
        )
    return map_variables(
      variables,
      tf2_names.variable_table(config, model_class),
      shapes,
      model_class=model_class,
      where=self.description,
      ignored=ignored,
      notes=self._config_notes,
    )


def _add(
  variables: dict[str, SourceVariable], key: str, variable: SourceVariable, where: str
) -> None:
  if key in variables:
    raise ValueError(
      f"{where}: {variables[key].name} and {variable.name} are both the tensor {key}; the "
      "checkpoint seems to hold two models"
    )
  variables[key] = variable
