"""StableHLO export: a serialized `jax.export.Exported` with a symbolic batch.

The artifact is the model's StableHLO with the weights embedded as constants, plus the calling
convention (input and output trees, shapes with the symbolic batch `b`), serialized by
`Exported.serialize()`. Any JAX process (no mobilebert_jax, no Flax) runs it:

    exported = jax.export.deserialize(open("model.stablehlo", "rb").read())
    outputs = exported.call(input_ids, input_mask, segment_ids)  # dict by output name

It is a *serving* format: JAX guarantees that a serialized artifact stays loadable for a
limited window of JAX versions (the StableHLO/`jax.export` compatibility policy, months rather
than years), so keep the checkpoint as the archive and re-export from it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mobilebert_jax.export.signatures import Signature, serving_function
from mobilebert_jax.export.sources import ExportSource

FILE_NAME = "model.stablehlo"
SERVING_PLATFORMS = ("cpu", "cuda", "tpu")


def export(
  source: ExportSource,
  signature: Signature,
  seq_len: int,
  *,
  platforms: Sequence[str] = SERVING_PLATFORMS,
) -> jax.export.Exported:
  """Exports `fn(input_ids, input_mask, segment_ids) -> {output name: array}`.

  Args:
    source: the model and its variables (embedded as constants).
    signature: its input and output names; inputs are int32 [b, T] ([b, C, T] for multiple
      choice) with a symbolic batch b.
    seq_len: the static sequence length T.
    platforms: the platforms the artifact runs on.

  Returns:
    The `jax.export.Exported`; `.serialize()` gives the bytes to write.
  """
  variables = jax.tree.map(jnp.asarray, source.variables)
  fn = functools.partial(serving_function(source.module, signature), variables)
  shape = jax.export.symbolic_shape(signature.polymorphic_shape(seq_len))
  # One shape object for the three inputs: they share the batch symbol.
  args = [jax.ShapeDtypeStruct(shape, jnp.int32) for _ in signature.inputs]
  return jax.export.export(jax.jit(fn), platforms=tuple(platforms))(*args)
