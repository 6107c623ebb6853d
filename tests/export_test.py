"""`mobilebert_jax.export` against the real converters and runtimes, on tiny models.

Float formats (SavedModel, TFLite, StableHLO) must match the JAX model within the project's
parity tolerance (1e-5 relative) on inputs with padding and a model whose attention is far
from uniform; quantized TFLite files must run and be reported (their error is measured, not
asserted tight). The SavedModel must reload through our own TF-Hub importer with exactly the
exported parameters and pass gradients in TF. The command line is run in-process (`cli.main`,
what `python -m mobilebert_jax.export` calls) for its one-line errors, and end to end from a
fine-tuning workdir trained here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

tf = pytest.importorskip("tensorflow")
pytest.importorskip("ai_edge_litert")

from mobilebert_jax.export import (  # noqa: E402
  ExportError,
  ExportSource,
  cli,
  evaluate_tflite,
  export_model,
  resolve_source,
  runners,
  tflite_ranges,
)
from mobilebert_jax.export.evaluation import relative_error, synthetic_inputs  # noqa: E402
from mobilebert_jax.export.saved_model import variable_names  # noqa: E402
from mobilebert_jax.export.signatures import signature_for  # noqa: E402
from mobilebert_jax.model.encoder import MobileBertModel  # noqa: E402
from mobilebert_jax.model.models import (  # noqa: E402
  MobileBertForQuestionAnswering,
  abstract_params,
)
from mobilebert_jax.weights import load_pretrained  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.usefixtures("fast_compiles")]

TOLERANCE = 1e-5
SEQ_LEN = 12
from model_test import TINY  # noqa: E402  (the house tiny config, docs/testing.md)


def random_variables(module, seed: int = 0) -> dict:
  """Random parameters (biases and norm offsets included, which `init` leaves at 0).

  Query and key kernels are large enough that attention is far from uniform, so a wrong mask
  or a wrong softmax would show in the outputs.
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(abstract_params(module)).items():
    scale = 0.5 if path[-1] != "kernel" else 0.5 / np.sqrt(leaf.shape[0])
    if path[-2] in ("query", "key") and path[-1] == "kernel":
      scale *= 6.0
    value = rng.standard_normal(leaf.shape) * scale
    flat[path] = (1.0 + value if path[-1] == "scale" else value).astype(np.float32)
  return {"params": traverse_util.unflatten_dict(flat)}


def tiny_source(model_cls, seed: int = 0, **changes) -> ExportSource:
  config = TINY.replace(**changes)
  module = model_cls(config)
  return ExportSource(
    module, random_variables(module, seed), config, f"tiny {model_cls.__name__}", "weights"
  )


@pytest.fixture(scope="module")
def qa_source() -> ExportSource:
  return tiny_source(MobileBertForQuestionAnswering)


def test_attention_of_the_tiny_model_is_far_from_uniform(qa_source):
  signature = signature_for(qa_source.module)
  ids, mask, segments = synthetic_inputs(signature, SEQ_LEN, TINY.vocab_size).values()
  out = qa_source.module.apply(
    qa_source.variables,
    jnp.asarray(ids),
    jnp.asarray(mask),
    jnp.asarray(segments),
    output_attentions=True,
  )
  # Masked keys get no weight, and every row has at least 6 real keys.
  for probabilities in out.attentions:
    assert np.asarray(probabilities).max() > 0.5  # uniform attention would give <= 1/6


@pytest.mark.parametrize("format", ["saved_model", "tflite", "stablehlo"])
def test_float_formats_match_jax(qa_source, format, tmp_path):
  result = export_model(qa_source, tmp_path / "out", format=format, seq_len=SEQ_LEN)
  report = json.loads((tmp_path / "out" / "export_report.json").read_text())
  assert report == json.loads(json.dumps(result.report))
  assert report["format"] == format and report["quantization"] == "none"
  assert report["outputs"] == ["start_logits", "end_logits"]
  assert set(report["inputs"]) == {"input_ids", "input_mask", "segment_ids"}
  assert report["file_size_bytes"] > 10_000
  assert report["error_inputs"].startswith("synthetic")
  assert report["max_relative_error"]["max"] < TOLERANCE
  assert report["masked_attention_logit"] is None
  assert report["batch"] == (1 if format == "tflite" else "symbolic")

  # The file itself, run by name with another batch size than the report used.
  signature = signature_for(qa_source.module)
  inputs = synthetic_inputs(signature, SEQ_LEN, TINY.vocab_size, rows=3, seed=7)
  if format == "tflite":
    runner = runners.TfliteRunner(result.path)
    assert runner.input_names == ("input_ids", "input_mask", "segment_ids")
    shapes = {k: list(v["shape"]) for k, v in runner.runner.get_input_details().items()}
    assert shapes == {name: [1, SEQ_LEN] for name in runner.input_names}
  elif format == "saved_model":
    runner = runners.SavedModelRunner(result.path)
  else:
    runner = runners.StablehloRunner(pathlib.Path(result.path).read_bytes(), signature)
  outputs = runner(inputs)
  expected = runners.JaxRunner(qa_source, signature)(inputs)
  for name in ("start_logits", "end_logits"):
    assert outputs[name].shape == (3, SEQ_LEN)
    np.testing.assert_allclose(
      outputs[name], expected[name], rtol=0, atol=TOLERANCE * np.abs(expected[name]).max()
    )


@pytest.mark.parametrize("quantize", ["dynamic", "int8"])
def test_quantized_tflite_runs_and_is_reported(qa_source, quantize, tmp_path):
  signature = signature_for(qa_source.module)
  calibration = synthetic_inputs(signature, SEQ_LEN, TINY.vocab_size, rows=10, seed=3)
  samples = [{k: v[i : i + 1] for k, v in calibration.items()} for i in range(10)]
  result = export_model(
    qa_source,
    tmp_path,
    format="tflite",
    quantize=quantize,
    seq_len=SEQ_LEN,
    representative_inputs=samples if quantize == "int8" else None,
  )
  report = result.report
  assert report["quantization"] == quantize
  error = report["max_relative_error"]["max"]
  print(f"{quantize}: max relative error {error:.3g}, {report['file_size_bytes']} bytes")
  assert 0 < error < 0.5  # quantized (not float), yet the same model
  if quantize == "int8":
    # The quantization-friendly mask fill is the default of full-integer exports.
    assert report["masked_attention_logit"] == -6.0
    assert report["integer_only"] is True
    assert report["calibration_steps"] == 10 and report["calibration_data"] == "given by the caller"
  else:
    assert report["masked_attention_logit"] is None
    # Read from the file: dynamic-range kernels take float activations.
    content = (tmp_path / "model.tflite").read_bytes()
    assert tflite_ranges.integer_only(content) is False


def softmax_input_grids(tflite_file) -> list[tuple[float, int]]:
  """(scale, zero point) of the int8 input of every SOFTMAX in a .tflite file."""
  from tensorflow.lite.python import schema_py_generated as schema
  from tensorflow.lite.tools import flatbuffer_utils

  model = flatbuffer_utils.read_model(str(tflite_file))
  graph = model.subgraphs[0]
  grids = []
  for op in graph.operators:
    if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.SOFTMAX:
      stats = graph.tensors[op.inputs[0]].quantization
      grids.append((float(stats.scale[0]), int(stats.zeroPoint[0])))
  return grids


def int8_tensor_scales(tflite_file) -> list[float]:
  """The scale of every per-tensor quantized tensor of a .tflite file."""
  from tensorflow.lite.tools import flatbuffer_utils

  graph = flatbuffer_utils.read_model(str(tflite_file)).subgraphs[0]
  stats = [t.quantization for t in graph.tensors]
  return [
    float(q.scale[0]) for q in stats if q is not None and q.scale is not None and len(q.scale) == 1
  ]


@pytest.mark.parametrize("points", ["original", "tflite"])
def test_int8_export_of_a_qat_model_clips_to_its_learned_ranges(tmp_path, points):
  """A QAT model's full-integer export runs in the export form without being asked to."""
  from mobilebert_jax.model import quantization

  config = TINY.replace(quantization_aware=True, hidden_act="relu6", quantization_points=points)
  module = MobileBertForQuestionAnswering(config)
  signature = signature_for(module)
  calibration = synthetic_inputs(signature, SEQ_LEN, TINY.vocab_size, rows=10, seed=3)
  ids, mask, segments = (jnp.asarray(v) for v in calibration.values())
  params = random_variables(module, seed=4)["params"]
  # Ranges as a short QAT run leaves them: a few EMA steps from [-6, 6] towards the batches'.
  ranges = module.init(jax.random.key(0), ids, mask, segments)[quantization.RANGES]
  for _ in range(3):
    _, updated = module.apply(
      {"params": params, quantization.RANGES: ranges}, ids, mask, segments, mutable=True
    )
    ranges = updated[quantization.RANGES]
  # Wider than what the calibration inputs reach, so that the file's grids are the learned
  # ranges only if the exporter writes them (calibration alone finds the data's narrower
  # ones): 1.2 to 2.3 times as wide, a different width at each point, and the logits' last
  # range before the softmax [-6, 10 + 10 * layer].
  last = "logits_quant" if points == "tflite" else "filled_quant"

  points_seen: list[str] = []

  def widened(path, bound):
    keys = [k.key for k in path]
    if keys[-2] == last:
      layer = int(next(k for k in keys if k.startswith("layer_")).removeprefix("layer_"))
      return jnp.float32(-6.0 if keys[-1] == "min" else 10.0 + 10.0 * layer)
    point = "/".join(keys[:-1])
    if point not in points_seen:
      points_seen.append(point)
    return (1.2 + 0.01 * points_seen.index(point)) * bound  # a different width at each point

  ranges = jax.tree_util.tree_map_with_path(widened, ranges)
  source = ExportSource(
    module, {"params": params, quantization.RANGES: ranges}, config, "tiny QAT", "weights"
  )
  samples = [{k: v[i : i + 1] for k, v in calibration.items()} for i in range(10)]
  result = export_model(
    source,
    tmp_path,
    format="tflite",
    quantize="int8",
    seq_len=SEQ_LEN,
    representative_inputs=samples,
  )
  report = result.report
  assert report["learned_ranges"] is True and report["integer_only"] is True
  assert report["collections"] == [quantization.RANGES]
  assert report["learned_ranges_written"] > 2 * TINY.num_hidden_layers

  # The comparison ran against the export form (clips), which differs from the QAT model
  # (rounding); the int8 file is close to the former.
  export_form = MobileBertForQuestionAnswering(config.replace(quantization_export=True))
  variables = {"params": params, quantization.RANGES: ranges}
  clipped = export_form.apply(variables, ids, mask, segments)
  rounded = module.apply(variables, ids, mask, segments)
  assert not np.array_equal(np.asarray(clipped.start_logits), np.asarray(rounded.start_logits))
  error = report["max_relative_error"]["max"]
  print(f"QAT int8: max relative error {error:.3g} against the export form")
  assert 0 < error < 0.5
  # The converter fuses scaling, fill and the [-6, 60] clip into the softmax's int8 input, on
  # the last learned range before it inside the clip: the "tflite" points' one range after the
  # clip (what they train on), or the original's filled range (its masked range is gone).
  learned = quantization.learned_ranges({quantization.RANGES: ranges})
  expected = []
  for layer in range(TINY.num_hidden_layers):
    low, high = learned[f"mobilebert/encoder/layer_{layer}/attention/scores/{last}"]
    # The export form clips to the nudged range (0 on the grid), then to [-6, 60].
    low, high, _, _ = quantization.nudged_range(np.float32(low), np.float32(high), exact=False)
    low, high = max(float(low), -6.0), min(float(high), 60.0)
    expected.append(pytest.approx((high - low) / 255, rel=1e-3))
  grids = softmax_input_grids(tmp_path / "model.tflite")
  assert [scale for scale, _ in grids] == expected
  # The learned ranges are grids of the file, where calibration would have found the narrower
  # ranges of the data (not all of them: e.g. NoNorm's γ and β clips fold into constants).
  scales = int8_tensor_scales(tmp_path / "model.tflite")
  found = 0
  for low, high in learned.values():
    low, high, _, _ = quantization.nudged_range(np.float32(low), np.float32(high), exact=False)
    found += any(abs(scale * 255 / float(high - low) - 1) < 1e-3 for scale in scales)
  print(f"{found} of {len(learned)} learned ranges are grids of the file")
  assert found > len(learned) // 2  # (under a tenth without writing them)
  assert expected[0] != expected[1] and any(e != 66 / 255 for e in expected)


@pytest.fixture(scope="module")
def hub_export(tmp_path_factory) -> tuple[ExportSource, str]:
  """A tiny encoder exported as a TF-Hub SavedModel (also a source `load_pretrained` reads)."""
  source = tiny_source(MobileBertModel, seed=1)
  directory = str(tmp_path_factory.mktemp("hub_export") / "hub")
  export_model(source, directory, format="saved_model", seq_len=SEQ_LEN, evaluate=False)
  return source, directory


def test_saved_model_carries_the_vocabulary_as_tf_hub_does(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("".join(f"token{i}\n" for i in range(TINY.vocab_size)))
  source = dataclasses.replace(
    tiny_source(MobileBertModel, seed=1), vocab_file=str(vocab), do_lower_case=True
  )
  directory = tmp_path / "hub"
  export_model(source, directory, format="saved_model", seq_len=SEQ_LEN, evaluate=False)
  hub = tf.saved_model.load(str(directory))
  asset = hub.vocab_file.asset_path.numpy().decode()
  assert asset == str(directory / "assets" / "vocab.txt")
  assert pathlib.Path(asset).read_text() == vocab.read_text()
  assert bool(hub.do_lower_case.numpy()) is True
  assert all("do_lower_case" not in v.name for v in hub.variables)
  # Our importer reads the flag as a note and the weights as before.
  _, _, report = load_pretrained(str(directory), MobileBertModel, return_report=True)
  assert not report.unused and not report.initialized
  assert any("do_lower_case is True" in note for note in report.notes)


@pytest.mark.slow  # TF compiles the gradient of the embedded StableHLO
def test_saved_model_reloads_exactly_and_is_fine_tunable(hub_export):
  source, directory = hub_export

  # Our TF-Hub importer reads the exported encoder back, bit for bit.
  module, params, report = load_pretrained(directory, MobileBertModel, return_report=True)
  assert report.format == "tf-hub" and not report.initialized and not report.unused
  assert module.config == TINY
  expected = traverse_util.flatten_dict(source.variables["params"])
  loaded = traverse_util.flatten_dict(params)
  assert loaded.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(np.asarray(loaded[path]), value, err_msg="/".join(path))

  # The TF-Hub interface: a dict in, `encoder_outputs` as a list; gradients reach every variable.
  hub = tf.saved_model.load(directory)
  signature = signature_for(source.module)
  inputs = synthetic_inputs(signature, SEQ_LEN, TINY.vocab_size, rows=2)
  with tf.GradientTape() as tape:
    outputs = hub({k: tf.constant(v) for k, v in inputs.items()})
    loss = tf.reduce_sum(outputs["sequence_output"] ** 2) + tf.reduce_sum(outputs["pooled_output"])
  assert len(outputs["encoder_outputs"]) == TINY.num_hidden_layers
  np.testing.assert_array_equal(outputs["encoder_outputs"][-1], outputs["sequence_output"])
  gradients = tape.gradient(loss, hub.trainable_variables)
  assert len(gradients) == len(expected)

  def jax_loss(p):
    out = source.module.apply({"params": p}, *map(jnp.asarray, inputs.values()))
    return jnp.sum(out.last_hidden_state**2) + jnp.sum(out.pooler_output)

  jax_gradients = traverse_util.flatten_dict(jax.grad(jax_loss)(source.variables["params"]))
  by_name = {v.name: g for v, g in zip(hub.trainable_variables, gradients, strict=True)}
  names = variable_names(source)
  ours = np.concatenate([by_name[f"{names[('params', *k)]}:0"].numpy().ravel() for k in expected])
  reference = np.concatenate([np.ravel(jax_gradients[k]) for k in expected])
  # The parity metric over the whole gradient: some tensors' gradients are exactly zero in
  # theory (a key bias shifts every logit of a row alike) and only rounding noise in practice.
  assert relative_error(ours, reference) < TOLERANCE


def test_checkpoint_collections_are_exported(tmp_path):
  """Every collection of a checkpoint of ours (e.g. QAT's activation ranges) comes along."""
  from mobilebert_jax.train import checkpointing

  # Without the pooler's dense layer, the QA model's encoder is a whole MobileBertModel.
  source = tiny_source(MobileBertForQuestionAnswering, seed=2, classifier_activation=False)
  ranges = {"mobilebert": {"embeddings": {"range": np.array([-6.0, 6.0], np.float32)}}}
  with checkpointing.CheckpointManager(
    tmp_path / "ckpt",
    save_interval_steps=None,
    async_save=False,
    model_config=source.config,
    train_config={"model_class": "MobileBertForQuestionAnswering"},
  ) as manager:
    manager.save(
      0, {"params": source.variables["params"], "collections": {"quant_stats": ranges}}, force=True
    )
  resolved = resolve_source(str(tmp_path / "ckpt"))
  assert resolved.kind == "checkpoint" and resolved.collections == ("quant_stats",)
  np.testing.assert_array_equal(
    resolved.variables["quant_stats"]["mobilebert"]["embeddings"]["range"], [-6.0, 6.0]
  )
  encoder = resolve_source(str(tmp_path / "ckpt"), model_class="MobileBertModel")
  assert encoder.collections == ("quant_stats",)
  assert "embeddings" in encoder.variables["quant_stats"]
  with pytest.raises(ValueError, match="holds a MobileBertForQuestionAnswering; it exports as"):
    resolve_source(str(tmp_path / "ckpt"), model_class="MobileBertForSequenceClassification")

  result = export_model(
    resolved, tmp_path / "sm", format="saved_model", seq_len=SEQ_LEN, evaluate=False
  )
  assert result.report["collections"] == ["quant_stats"]
  hub = tf.saved_model.load(result.path)
  stored = {v.name: v for v in hub.variables}
  assert not stored["quant_stats/mobilebert/embeddings/range:0"].trainable


def test_without_tensorflow_the_error_names_the_extra(qa_source, tmp_path, monkeypatch):
  # A None entry makes `import tensorflow` fail as it does when the package is not installed.
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ImportError, match=re.escape('pip install "mobilebert-jax[export]"')):
    export_model(qa_source, tmp_path / "tflite", format="tflite", seq_len=SEQ_LEN)
  # StableHLO needs no TensorFlow.
  result = export_model(qa_source, tmp_path / "hlo", format="stablehlo", seq_len=SEQ_LEN)
  assert result.report["max_relative_error"]["max"] < TOLERANCE


# ----------------------------------------------------------------------------------------------
# The command line
# ----------------------------------------------------------------------------------------------


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
  status = cli.main([str(a) for a in args])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--format=onnx"], "--format must be one of saved_model, tflite, stablehlo, got 'onnx'"),
    (["--quantize=int4"], "--quantize must be one of none, dynamic, int8"),
    (["--seq_len=64"], "--seq_len=64 is longer than the model's position table"),
    (["--format=stablehlo", "--quantize=dynamic"], "applies to --format=tflite only"),
    (["--quantize=int8"], "calibrates on the task's training data, so SRC must be a fine-tuning"),
    (["--model_class=MobileBertForPreTraining"], "has no export signature"),
  ],
)
def test_cli_settings_errors_are_one_line(capsys, tmp_path, hub_export, args, message):
  status, _, err = run_cli(capsys, hub_export[1], tmp_path / "out", *args)
  assert status == 1
  assert err.count("\n") == 1 and message in err, err


def test_cli_bad_source_is_one_line(capsys, tmp_path):
  (tmp_path / "notes.txt").write_text("not a model")
  status, _, err = run_cli(capsys, tmp_path, tmp_path / "out")
  assert status == 1 and err.count("\n") == 1
  assert "holds no checkpoint this package can read" in err


@pytest.mark.slow
def test_cli_exports_a_finetuning_workdir(capsys, tmp_path, hub_export):
  """End to end: a tiny SQuAD run, `--format=tflite --quantize=dynamic`, and its dev F1."""
  sys.path.insert(0, os.path.dirname(__file__))
  from inference_test import demo_subset, tiny_config

  from mobilebert_jax.demo import DEV_FILE, TRAIN_FILE
  from mobilebert_jax.trainers import finetuning as trainer

  config = tiny_config(
    "squad.py:size=tiny",
    num_train_steps=20,
    checkpoint_every_steps=20,
    log_every_steps=10,
    **{
      "data.train_file": demo_subset(TRAIN_FILE, 6, tmp_path / "train.json"),
      "data.eval_file": demo_subset(DEV_FILE, 3, tmp_path / "dev.json"),
      "optimizer.learning_rate": 5e-3,
    },
  )
  workdir = str(tmp_path / "squad")
  trainer.train_and_evaluate(config, workdir)

  status, out, err = run_cli(capsys, workdir, tmp_path / "tflite", "--quantize=dynamic")
  assert status == 0, err
  report = json.loads((tmp_path / "tflite" / "export_report.json").read_text())
  assert report["source_kind"] == "workdir" and report["seq_len"] == 64
  assert report["error_inputs"].startswith("dev set")
  metric = report["task_metric"]
  assert metric["task"] == "squad" and metric["main_metric"] == "f1"
  with open(os.path.join(workdir, "eval_metrics.json")) as f:
    assert metric["jax"]["f1"] == pytest.approx(json.load(f)["f1"])
  assert set(metric["exported"]) == {"exact_match", "f1"}
  assert "task_metric" in out
  # The Python API scores the file alone the same way.
  assert evaluate_tflite(tmp_path / "tflite" / "model.tflite", workdir) == metric["exported"]
  with pytest.raises(ExportError, match="not a fine-tuning workdir"):
    evaluate_tflite(tmp_path / "tflite" / "model.tflite", hub_export[1])
