"""Running an exported model: one callable per format, all fed and read by signature names.

Each runner maps `{input name: int32 [N, ...]}` to `{output name: float32 [N, ...]}` for any
number of rows N, so evaluation and tests treat every format alike. TFLite files run batch 1
row by row, as on a phone, through `ai_edge_litert`'s signature runner (outputs by name, never
by tensor index: the original `LiteRunner` read output 0 as the end logits), with
LiteRT's default XNNPACK delegate. SavedModels and StableHLO artifacts run in batches.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.export import deps
from mobilebert_jax.export.signatures import SERVING_KEY, Signature, serving_function
from mobilebert_jax.export.sources import ExportSource

Inputs = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
Runner = Callable[[Inputs], Outputs]
BATCH_ROWS = 32


def _rows(inputs: Inputs) -> int:
  return int(next(iter(inputs.values())).shape[0])


def _in_batches(inputs: Inputs, rows: int, run: Callable[[Inputs], Mapping]) -> Outputs:
  """`run` over fixed-size batches (the last padded with copies of row 0), concatenated."""
  total = _rows(inputs)
  pieces: dict[str, list[np.ndarray]] = {}
  for start in range(0, total, rows):
    batch = {}
    for name, value in inputs.items():
      chunk = np.asarray(value[start : start + rows])
      pad = rows - len(chunk)
      if pad:  # one shape for every call: one compilation, one traced function
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)])
      batch[name] = chunk
    for name, value in run(batch).items():
      pieces.setdefault(name, []).append(np.asarray(value)[: min(rows, total - start)])
  return {name: np.concatenate(parts) for name, parts in pieces.items()}


class TfliteRunner:
  """Runs a .tflite file with the LiteRT interpreter, one row at a time.

  Args:
    model: the file's path or its bytes.
    num_threads: CPU threads of the interpreter.
  """

  def __init__(self, model: str | bytes, num_threads: int = 1):
    interpreter = deps.import_litert_interpreter("Running a .tflite model")
    kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": model}
    self.interpreter = interpreter.Interpreter(**kwargs, num_threads=num_threads)
    self.runner = self.interpreter.get_signature_runner(SERVING_KEY)
    listed = self.interpreter.get_signature_list()[SERVING_KEY]
    self.input_names = tuple(listed["inputs"])
    self.output_names = tuple(listed["outputs"])

  def __call__(self, inputs: Inputs) -> Outputs:
    pieces: dict[str, list[np.ndarray]] = {}
    for row in range(_rows(inputs)):
      outputs = self.runner(**{name: np.asarray(inputs[name][row : row + 1]) for name in inputs})
      for name, value in outputs.items():
        pieces.setdefault(name, []).append(np.array(value))  # a copy: buffers are reused
    return {name: np.concatenate(parts) for name, parts in pieces.items()}


class SavedModelRunner:
  """Runs a SavedModel's serving signature in batches of `BATCH_ROWS`."""

  def __init__(self, directory: str):
    tf = deps.import_tensorflow("Running a SavedModel")
    with deps.quiet_tensorflow():
      self.loaded = tf.saved_model.load(directory)
    self.function = self.loaded.signatures[SERVING_KEY]
    self._tf = tf

  def __call__(self, inputs: Inputs) -> Outputs:
    def run(batch):
      outputs = self.function(**{k: self._tf.constant(v) for k, v in batch.items()})
      return {k: v.numpy() for k, v in outputs.items()}

    return _in_batches(inputs, min(BATCH_ROWS, _rows(inputs)), run)


class StablehloRunner:
  """Runs a serialized `jax.export` artifact in batches of `BATCH_ROWS`."""

  def __init__(self, serialized: bytes, signature: Signature):
    self.exported = jax.export.deserialize(bytearray(serialized))
    self.input_names = signature.inputs

  def __call__(self, inputs: Inputs) -> Outputs:
    call = jax.jit(self.exported.call)

    def run(batch):
      return jax.device_get(call(*(jnp.asarray(batch[n]) for n in self.input_names)))

    return _in_batches(inputs, min(BATCH_ROWS, _rows(inputs)), run)


class JaxRunner:
  """Runs the JAX model itself (the reference every export is compared with)."""

  def __init__(self, source: ExportSource, signature: Signature):
    fn = serving_function(source.module, signature)
    variables = jax.tree.map(jnp.asarray, source.variables)
    # The weights are an argument, not closed-over constants: XLA compiles a 25M-parameter
    # model far faster without 100 MB of literals in its program.
    self._call = jax.jit(fn)
    self._variables = variables
    self.input_names = signature.inputs

  def __call__(self, inputs: Inputs) -> Outputs:
    def run(batch):
      arrays = (jnp.asarray(batch[n]) for n in self.input_names)
      return jax.device_get(self._call(self._variables, *arrays))

    return _in_batches(inputs, min(BATCH_ROWS, _rows(inputs)), run)
