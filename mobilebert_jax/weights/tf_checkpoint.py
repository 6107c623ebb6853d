"""The reader of TensorFlow checkpoints: TF1 name-based and TF2 (object-based or name-based).

`detect` looks at file names only (`tf_common.resolve_checkpoint_prefix`); `open` lists the
variables with TensorFlow and picks the source, and with it the name table, from them: an
object-based checkpoint (it stores `_CHECKPOINTABLE_OBJECT_GRAPH`) is TF2 (`tf2.Tf2ObjectSource`),
a name-based one with the original google-research names is TF1 (`tf1.Tf1Source`), and one with
the Model Garden's variable names is TF2 (`tf2.Tf2NamedSource`).
"""

from __future__ import annotations

from typing import Any

from mobilebert_jax.weights import tf1, tf2, tf2_names
from mobilebert_jax.weights.tf_common import (
  OBJECT_GRAPH_KEY,
  checkpoint_prefix,
  list_checkpoint,
  resolve_checkpoint_prefix,
)


class TfCheckpointReader:
  """TF1 name-based and TF2 checkpoints (a `WeightReader`, see `protocol`)."""

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
