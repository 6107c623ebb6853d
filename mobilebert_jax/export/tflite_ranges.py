"""The int8 ranges of a .tflite flatbuffer: writing a QAT model's learned ranges, checking kernels.

TF 2.20's converter picks every tensor's int8 range by calibration: the min and max it sees on
the representative inputs. A quantization-aware model's export form clips every quantization
point to its learned range (`quantization_export`), so calibration finds *at most* that range,
and less wherever the calibration inputs do not reach both ends. A model whose ranges are wide
(the SQuAD demo's QAT from calibrated starting ranges: residual stream ±110, raw attention
scores -1,700..450) then gets a finer grid in the file than the one it was trained on, and its
int8 file lost 3.0 F1 against its QAT model on 4,432 questions; with the learned ranges
written into the file the loss was none (-0.27 F1; experiments/2026-12-06_int8_accuracy).

`with_clip_ranges` does what TF1's FakeQuant ops did for the original's converter: the range
of each quantization point is the learned one. It edits the calibrated, not yet quantized
flatbuffer between the converter's two halves (`_experimental_calibrate_only`, then
`convert.mlir_quantize`, as TF 2.20's `TFLiteConverter._quantize` calls them): every clip,
`MINIMUM(MAXIMUM(x, low), high)` with constant bounds, records [low, high] (intersected with
x's, when x is itself a clip's output) as the min/max of its output, its intermediate and, when
the clip is its only reader, its input. Hand-written because
no public converter option takes given ranges; the flatbuffer schema is TF's own.
"""

from __future__ import annotations

import numpy as np

# Ops that may touch float32 tensors in an integer-only model: the float outputs' dequantization
# and an input's quantization.
_BOUNDARY_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})


def _schema():
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils

  return schema, flatbuffer_utils


def _op_names(schema, model) -> list[str]:
  codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
  graph = model.subgraphs[0]
  return [codes[model.operatorCodes[op.opcodeIndex].builtinCode] for op in graph.operators]


def with_clip_ranges(calibrated: bytes) -> tuple[bytes, int]:
  """Sets the recorded min/max of every constant clip's tensors to the clip's bounds.

  Args:
    calibrated: a flatbuffer from a converter with `_experimental_calibrate_only` (float ops,
      with the calibrated min/max recorded per tensor).

  Returns:
    The edited flatbuffer (to quantize with `convert.mlir_quantize`) and the number of clips.
  """
  schema, flatbuffer_utils = _schema()
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
  graph = model.subgraphs[0]
  names = _op_names(schema, model)

  def constant(index: int) -> float | None:
    data = model.buffers[graph.tensors[index].buffer].data
    values = None if data is None else np.frombuffer(bytes(data), np.float32)
    return float(values[0]) if values is not None and values.size == 1 else None

  def set_range(index: int, low: float, high: float) -> None:
    stats = graph.tensors[index].quantization
    stats.min, stats.max = np.array([low], np.float32), np.array([high], np.float32)

  readers: dict[int, list[int]] = {}
  for k, op in enumerate(graph.operators):
    for i in op.inputs:
      readers.setdefault(i, []).append(k)
  # The range each clip's output got: a clip of a clipped tensor gets the intersection (the
  # attention logits: a learned range and the model's [-6, 60] clip, in either order). In
  # graph order, so that an earlier clip's range is known when a later one reads it.
  written: dict[int, tuple[float, float]] = {}
  clips = 0
  for k, op in enumerate(graph.operators):
    if names[k] != "MAXIMUM" or constant(op.inputs[1]) is None:
      continue
    after = readers.get(op.outputs[0], [])
    if len(after) != 1 or names[after[0]] != "MINIMUM":
      continue
    minimum = graph.operators[after[0]]
    low, high = constant(op.inputs[1]), constant(minimum.inputs[1])
    if high is None:
      continue
    source = op.inputs[0]
    if source in written:
      low, high = max(low, written[source][0]), min(high, written[source][1])
    set_range(op.outputs[0], low, high)
    set_range(minimum.outputs[0], low, high)
    written[minimum.outputs[0]] = (low, high)
    if readers.get(source) == [k]:
      set_range(source, low, high)
      written[source] = (low, high)
    clips += 1
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), clips


def integer_only(content: bytes) -> bool:
  """Whether every op of a .tflite file but (de)quantization computes on integer tensors."""
  schema, flatbuffer_utils = _schema()
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
  graph = model.subgraphs[0]
  for name, op in zip(_op_names(schema, model), graph.operators, strict=True):
    if name in _BOUNDARY_OPS:
      continue
    tensors = [graph.tensors[i] for i in (*op.inputs, *op.outputs) if i >= 0]
    if any(t.type == schema.TensorType.FLOAT32 for t in tensors):
      return False
  return True
