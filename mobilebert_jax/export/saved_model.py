"""TF SavedModel export through `jax2tf` (native serialization), TF-Hub style and fine-tunable.

The JAX function is lowered to StableHLO once and embedded in a single `XlaCallModule` op
(jax2tf's only mode in current JAX). Parameters are not baked in as
constants: every leaf of every variable collection becomes a `tf.Variable` that the function
reads, and `with_gradient=True` gives the op a custom gradient, so a TF user can fine-tune the
reloaded SavedModel with `tf.GradientTape` (saved with `experimental_custom_gradients`).

Variables carry the TF2 Model Garden names where our TF-Hub importer knows the tensor
(`weights.tf2_names.variable_table`, e.g. `transformer_layer_3/attention/query/kernel`), so
`load_pretrained(saved_model_dir)` reads an exported encoder back exactly; task heads and
non-parameter collections keep our path (`qa_outputs/kernel`, `<collection>/...`). The
architecture goes beside them as `config.json`, where the importer looks for it.

The root object follows TF-Hub's reusable SavedModel interface: `__call__` (a dict of inputs
in, a dict of outputs out; the encoder's `encoder_outputs` is a list as in TF-Hub),
`variables`, `trainable_variables`, `regularization_losses`, and the `serving_default`
signature with the names of `signatures`; where the source has a vocabulary (a workdir, a
weights directory), `vocab_file` (an asset under `assets/`) and `do_lower_case`, as TF-Hub's
BERT encoders carry them for their preprocessing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from mobilebert_jax.export import deps
from mobilebert_jax.export.signatures import SERVING_KEY, Signature, serving_function
from mobilebert_jax.export.sources import ExportSource
from mobilebert_jax.weights import tf2_names

# Where `jax2tf` lowers for: a SavedModel is a serving format, so it runs on any of these.
SERVING_PLATFORMS = ("cpu", "cuda", "tpu")
CONFIG_FILE = "config.json"


def variable_names(source: ExportSource) -> dict[tuple[str, ...], str]:
  """The TF variable name of every leaf of `source.variables`, keyed (collection, *path)."""
  table = {
    m.ours: m.theirs
    for m in tf2_names.variable_table(source.config, source.model_class)
    if m.transform == "copy"  # every TF2 mapping is a copy; a reshape would need undoing in TF
  }
  names = {}
  for collection, tree in source.variables.items():
    for path in traverse_util.flatten_dict(tree):
      if collection == "params" and path in table:
        names[(collection, *path)] = table[path]
      else:
        named = path if collection == "params" else (collection, *path)
        names[(collection, *path)] = "/".join(named)
  return names


def build_module(
  source: ExportSource,
  signature: Signature,
  seq_len: int,
  *,
  batch_size: int | None,
  with_gradient: bool,
  platforms: Sequence[str] = ("cpu",),
) -> Any:
  """The TF object to save: variables, `__call__` and the serving function.

  Args:
    source: the model and its variables.
    signature: its input and output names.
    seq_len: the static sequence length T.
    batch_size: a static batch (TFLite wants 1), or None for a symbolic batch.
    with_gradient: give the model op a gradient (fine-tuning in TF).
    platforms: what the embedded StableHLO is lowered for.

  Returns:
    A trackable object with `serve` (the signature function), `__call__`, `variables`,
    `trainable_variables` and `regularization_losses`.
  """
  tf = deps.import_tensorflow("Exporting a SavedModel")
  from jax.experimental import jax2tf

  names = variable_names(source)
  flat = {
    (collection, *path): value
    for collection, tree in source.variables.items()
    for path, value in traverse_util.flatten_dict(tree).items()
  }
  tf_variables = {
    key: tf.Variable(np.asarray(value), name=names[key], trainable=key[0] == "params")
    for key, value in flat.items()
  }
  polymorphic = None
  if batch_size is None:
    polymorphic = [None, *[signature.polymorphic_shape(seq_len)] * 3]
  converted = jax2tf.convert(
    serving_function(source.module, signature),
    polymorphic_shapes=polymorphic,
    with_gradient=with_gradient,
    native_serialization_platforms=tuple(platforms),
  )
  shape = signature.input_shape(batch_size, seq_len)
  specs = [tf.TensorSpec(shape, tf.int32, name=name) for name in signature.inputs]

  def variables_tree():
    return traverse_util.unflatten_dict(tf_variables)

  @tf.function(autograph=False, input_signature=specs)
  def serve(ids, mask, segment_ids):
    return converted(variables_tree(), ids, mask, segment_ids)

  @tf.function(autograph=False, input_signature=[dict(zip(signature.inputs, specs, strict=True))])
  def call(inputs):
    outputs = dict(serve(*(inputs[name] for name in signature.inputs)))
    if "encoder_outputs" in outputs:  # TF-Hub's list, and its "default" alias of the pooling
      outputs["encoder_outputs"] = tf.unstack(outputs["encoder_outputs"])
      outputs["default"] = outputs["pooled_output"]
    return outputs

  root = tf.__internal__.tracking.AutoTrackable()
  root.serve = serve
  root.__call__ = call
  root.variables = list(tf_variables.values())
  root.trainable_variables = [v for v in root.variables if v.trainable]
  root.regularization_losses = []
  if source.vocab_file is not None:
    # TF-Hub's text encoders carry their tokenizer's files: `vocab_file` as an asset (copied
    # into assets/) and `do_lower_case` as a variable outside `variables`.
    root.vocab_file = tf.saved_model.Asset(source.vocab_file)
  if source.do_lower_case is not None:
    root.do_lower_case = tf.Variable(source.do_lower_case, trainable=False, name="do_lower_case")
  return root


def save(
  source: ExportSource,
  directory: str,
  signature: Signature,
  seq_len: int,
  *,
  batch_size: int | None = None,
  with_gradient: bool = True,
  platforms: Sequence[str] = SERVING_PLATFORMS,
) -> str:
  """Writes the SavedModel (and `config.json`) to `directory`; see `build_module`.

  Returns:
    The directory.
  """
  tf = deps.import_tensorflow("Exporting a SavedModel")
  root = build_module(
    source,
    signature,
    seq_len,
    batch_size=batch_size,
    with_gradient=with_gradient,
    platforms=platforms,
  )
  options = tf.saved_model.SaveOptions(experimental_custom_gradients=with_gradient)
  with deps.quiet_tensorflow():
    tf.saved_model.save(root, directory, signatures={SERVING_KEY: root.serve}, options=options)
  source.config.to_json_file(os.path.join(directory, CONFIG_FILE))
  return directory
