"""Original TF1 (google-research) name-based checkpoints: pretraining, SQuAD, classifier, teacher.

A checkpoint written by `tf.compat.v1.train.Saver` (or an Estimator) stores each variable under
its graph name (`bert/encoder/layer_0/attention/self/query/kernel`). `Tf1Source` maps them with
the table in `tf1_names`, so the released student, MobileBERT_TINY, the IB-BERT teacher, the QAT
variant and fine-tuned checkpoints all load into any of the eight classes.

Set aside without a word (kept in the report's `ignored`): optimizer slots (`<var>/adam_m`,
`<var>/adam_v` of the AdamWeightDecay and LAMB optimizers, `tf.train` slot names) and counters
(`global_step`). Set aside with one note: QAT fake-quantization ranges (`.../min`, `.../max`),
which calibrate an int8 export and have no parameter in a float model; listing hundreds of them
as unused would bury a genuinely unused tensor. Everything else that no parameter takes is
reported as unused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.weights import tf1_names
from mobilebert_jax.weights.mapping import SourceVariable, map_variables
from mobilebert_jax.weights.protocol import Path, SourceTensors
from mobilebert_jax.weights.tf_common import (
  TF_CONFIG_DEFAULTS,
  config_beside,
)


def looks_like_tf1(names: Mapping[str, Any]) -> bool:
  """Whether a name-based checkpoint uses the TF1 names (an encoder under `bert/`)."""
  return any(
    name.startswith(
      (f"{tf1_names.ENCODER_SCOPE}/embeddings/", f"{tf1_names.ENCODER_SCOPE}/encoder/")
    )
    for name in names
  )


class Tf1Source:
  """An opened TF1 name-based checkpoint (see `OpenedSource` in `protocol`).

  Args:
    prefix: the checkpoint prefix.
    reader: TensorFlow's checkpoint reader of it.
    shapes: its tensor names and shapes.
  """

  format = "tf1"
  config_defaults: Mapping[str, Any] = TF_CONFIG_DEFAULTS

  def __init__(self, prefix: str, reader: Any, shapes: Mapping[str, tuple[int, ...]]):
    self.prefix = prefix
    self._reader = reader
    self._shapes = dict(shapes)
    self.description = f"{prefix} (TF1 name-based checkpoint)"
    self._config_notes: tuple[str, ...] = ()

  def config(self) -> MobileBertConfig | None:
    """The `bert_config.json` (or `config.json`) beside the checkpoint.

    A TF1 config file does not record the classifier's label count, so it is taken from a
    top-level `output_weights` [num_labels, hidden] when the checkpoint has one.

    Raises:
      FileNotFoundError: no config beside the checkpoint (saying how to pass one).
    """
    found = config_beside(self.prefix, self.description)
    self._config_notes = (*found.notes, f"Config read from {found.path}.")
    config = found.config
    classifier = self._shapes.get("output_weights")
    if classifier is not None and len(classifier) == 2 and classifier[0] != config.num_labels:
      config = config.replace(num_labels=int(classifier[0]), id2label=None)
      self._config_notes += (
        f"num_labels={classifier[0]} taken from the classifier's output_weights {classifier}.",
      )
    return config

  def read(
    self, config: MobileBertConfig, model_class: str, shapes: Mapping[Path, tuple[int, ...]]
  ) -> SourceTensors:
    """Maps the checkpoint onto `model_class` with `tf1_names`' table."""
    variables: dict[str, SourceVariable] = {}
    ignored: list[str] = []
    fake_quant: list[str] = []
    for name, shape in self._shapes.items():
      if tf1_names.is_optimizer_state(name):
        ignored.append(name)
      elif tf1_names.is_fake_quant_range(name):
        fake_quant.append(name)
      else:
        variables[name] = SourceVariable(name, shape, self._loader(name))
    notes = list(self._config_notes)
    if fake_quant:
      notes.append(
        f"Skipped {len(fake_quant)} fake-quantization range variables (e.g. {fake_quant[0]}): "
        "they calibrate an int8 export of a QAT model and have no parameter in this float model."
      )
    return map_variables(
      variables,
      tf1_names.model_table(config, model_class),
      shapes,
      model_class=model_class,
      where=self.description,
      ignored=(*ignored, *fake_quant),
      notes=notes,
    )

  def _loader(self, name: str):
    return lambda: self._reader.get_tensor(name)
