"""`load_pretrained` on original TF1 (google-research) name-based checkpoints.

The checkpoints are written by the test with `tf.compat.v1.train.Saver` under the variable names
and shapes of docs/references.md §tf1-names, optimizer slots (`adam_m`, `adam_v`) and `global_step`
included. Their values come from a reference model through the test helper's own transforms, never
through the importer's table:

* released student, MobileBERT_TINY, QAT, SQuAD and classifier heads: from a randomised
  transformers PyTorch model (docs/references.md §hf-names backwards); our import must reproduce
  that model;
* the IB-BERT teacher, which transformers cannot build (docs/pitfalls.md P10): from a randomised TF2
  Model Garden teacher (docs/references.md §tf1-to-tf2 backwards); our import must reproduce the
  Model Garden.

Parity: max|ours - ref| <= 1e-5 * max|ref| on every output tensor.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("official.nlp.modeling")

import reference_util as ru  # noqa: E402
import tf_reference_util as ref  # noqa: E402

from mobilebert_jax import (  # noqa: E402
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  MobileBertModel,
)
from mobilebert_jax.weights import find_reader, load_pretrained, tf_common  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.torch]


class HfCheckpoint:
  """A randomised transformers model, its TF1 checkpoint on disk, and our config of it."""

  def __init__(self, directory, tf1_config, class_name: str, seed: int = 0, **overrides):
    self.tf1_config = tf1_config
    self.class_name = class_name
    self.config = ref.our_config(tf1_config, **overrides)
    self.model = ru.build_torch_model(self.config, class_name, seed=seed)
    self.tensors = ref.tf1_tensors_from_hf(self.model, tf1_config)
    self.directory = str(directory)
    self.prefix = ref.write_tf1_checkpoint(self.tensors, self.directory)
    ref.write_bert_config(self.directory, tf1_config)
    self.batch = ru.make_batch(self.config, batch_size=2, length=16, seed=seed)
    self.reference = ru.run_reference(self.model, self.batch)


def load(source, model_cls, **kwargs):
  return load_pretrained(source, model_cls, return_report=True, **kwargs)


def parity_with_hf(checkpoint: HfCheckpoint, source=None) -> float:
  """Loads `checkpoint` into its own class and compares every output with transformers'."""
  module, params, report = load(source or checkpoint.directory, type_of(checkpoint.class_name))
  assert report.format == "tf1"
  assert report.complete, report.summary()
  # Optimizer slots and the step counter are set aside silently, not reported as unused.
  assert "global_step" in report.ignored
  assert sum(name.endswith(("/adam_m", "/adam_v")) for name in report.ignored) == 2 * len(
    checkpoint.tensors
  )
  ours = ru.run_ours(module.config, checkpoint.class_name, params, checkpoint.batch)
  errors = ru.output_errors(ours, checkpoint.reference)
  assert any(k.startswith("hidden_states[") for k in errors)
  return ru.assert_parity(errors)


def type_of(class_name: str):
  return {
    cls.__name__: cls
    for cls in (
      MobileBertModel,
      MobileBertForPreTraining,
      MobileBertForQuestionAnswering,
      MobileBertForSequenceClassification,
    )
  }[class_name]


@pytest.fixture(scope="module")
def pretraining(tmp_path_factory):
  # The released student's structure, with a pooler so that `bert/pooler/dense` is covered too.
  tf1_config = ref.small(ref.RELEASED, classifier_activation=True)
  return HfCheckpoint(tmp_path_factory.mktemp("tf1_pre"), tf1_config, "MobileBertForPreTraining")


# ----------------------------------------------------------------------------------------------
# Parity with transformers (student architectures, heads)
# ----------------------------------------------------------------------------------------------


def test_released_architecture_pretraining_matches_hf(pretraining):
  # MLM (word table | extra_output_weights), NSP ([out, in] output_weights), pooler, 4 FFNs.
  worst = parity_with_hf(pretraining)
  print(f"TF1 released architecture (small): max relative error {worst:.2e}")


def test_tiny_architecture_matches_hf(tmp_path):
  # Q, K, V from the input bottleneck (value kernel b x b), no shared bottleneck, 2 FFNs.
  checkpoint = HfCheckpoint(tmp_path, ref.small(ref.TINY), "MobileBertForPreTraining", seed=1)
  assert checkpoint.tensors["bert/encoder/layer_0/attention/self/value/kernel"].shape == (16, 16)
  assert not any("bottleneck/attention" in name for name in checkpoint.tensors)
  worst = parity_with_hf(checkpoint)
  print(f"TF1 TINY architecture (small): max relative error {worst:.2e}")


def test_squad_checkpoint_matches_hf(tmp_path):
  checkpoint = HfCheckpoint(tmp_path, ref.small(ref.RELEASED), "MobileBertForQuestionAnswering", 2)
  assert checkpoint.tensors["cls/squad/output_weights"].shape == (2, 32)
  worst = parity_with_hf(checkpoint)
  print(f"TF1 SQuAD head (small): max relative error {worst:.2e}")


def test_classifier_checkpoint_matches_hf(tmp_path):
  checkpoint = HfCheckpoint(
    tmp_path,
    ref.small(ref.RELEASED, classifier_activation=True),
    "MobileBertForSequenceClassification",
    seed=3,
    num_labels=3,
  )
  # bert_config.json has no label count: the checkpoint's output_weights [3, H] gives it.
  module, _, report = load(checkpoint.directory, MobileBertForSequenceClassification)
  assert module.config.num_labels == 3
  assert any("num_labels=3" in note for note in report.notes)
  worst = parity_with_hf(checkpoint)
  print(f"TF1 classifier head (small): max relative error {worst:.2e}")


def test_qat_checkpoint_skips_fake_quant_ranges(tmp_path):
  tf1_config = ref.small(ref.QAT)
  config = ref.our_config(tf1_config)
  assert config.hidden_act == "relu6"
  model = ru.build_torch_model(config, "MobileBertForPreTraining", seed=4)
  tensors = ref.tf1_tensors_from_hf(model, tf1_config)
  ranges = {}
  for layer in range(2):
    scope = f"bert/encoder/layer_{layer}/attention/self"
    for i, kind in enumerate(("Act", "Weight", "Act")):
      suffix = f"_{i}" if i else ""
      for bound, value in (("min", -6.0), ("max", 6.0)):
        ranges[f"{scope}/MobileBert{kind}FakeQuantWithMinMaxVars{suffix}/{bound}"] = np.float32(
          value
        )
  prefix = ref.write_tf1_checkpoint(tensors, str(tmp_path), extra=ranges, slots=False)
  ref.write_bert_config(str(tmp_path), tf1_config)
  module, params, report = load(prefix, MobileBertForPreTraining)
  assert report.complete, report.summary()
  assert set(ranges) <= set(report.ignored)
  assert any("fake-quantization range" in note for note in report.notes)
  batch = ru.make_batch(config, 2, 16, seed=4)
  ours = ru.run_ours(module.config, "MobileBertForPreTraining", params, batch)
  worst = ru.assert_parity(ru.output_errors(ours, ru.run_reference(model, batch)))
  print(f"TF1 QAT (small): max relative error {worst:.2e}")


# ----------------------------------------------------------------------------------------------
# Parity with the Model Garden (IB-BERT teacher)
# ----------------------------------------------------------------------------------------------


def teacher_parity(tf1_config, directory, seed: int, slots) -> float:
  """TF1 teacher checkpoint filled from a randomised Model Garden teacher, compared with it."""
  pretrainer = ref.build_tf2_pretrainer(tf1_config, seed)
  batch = ref.make_batch(tf1_config["vocab_size"], 2, 16, seed)
  outputs = ref.run_tf2(pretrainer, batch)
  tensors = ref.tf1_tensors_from_tf2(pretrainer, tf1_config)
  del pretrainer
  # The TF2 pretrainer has no NSP head; the TF1 teacher graph does (run_pretraining.py).
  rng = np.random.default_rng(seed)
  hidden = tf1_config["hidden_size"]
  nsp_w = (0.3 * rng.standard_normal((2, hidden))).astype(np.float32)
  nsp_b = (0.3 * rng.standard_normal(2)).astype(np.float32)
  tensors["cls/seq_relationship/output_weights"] = nsp_w
  tensors["cls/seq_relationship/output_bias"] = nsp_b
  ref.write_tf1_checkpoint(tensors, str(directory), slots=slots(tensors))
  ref.write_bert_config(str(directory), tf1_config)
  del tensors

  module, params, report = load(str(directory), MobileBertForPreTraining)
  assert report.complete, report.summary()
  config = module.config
  assert config.normalization_type == "layer_norm" and config.hidden_act == "gelu_new"
  assert config.hf_layer_norm_eps_quirk is False
  encoder = params["mobilebert"]
  mlm = {"mobilebert": {k: v for k, v in encoder.items() if k != "pooler"}, "cls": params["cls"]}
  errors = ref.compare_with_tf2(config, encoder, mlm, outputs, batch)
  # NSP on the pooled output, [2, H] output_weights as stored ([out, in]).
  nsp = ref.run_ours(module, params, batch).seq_relationship_logits
  expected = outputs["pooled_output"].astype(np.float64) @ nsp_w.T.astype(np.float64) + nsp_b
  errors["seq_relationship_logits"] = ref.relative_error(nsp, expected)
  assert len(errors) == 3 + 2 * config.num_hidden_layers + 2
  return ref.assert_parity(errors)


def test_teacher_architecture_matches_tf2(tmp_path):
  worst = teacher_parity(ref.small(ref.TEACHER), tmp_path, seed=6, slots=lambda t: True)
  print(f"TF1 teacher architecture (small): max relative error {worst:.2e}")


# ----------------------------------------------------------------------------------------------
# Reports and errors
# ----------------------------------------------------------------------------------------------


def test_pretraining_checkpoint_into_question_answering(pretraining):
  _, _, report = load(pretraining.prefix, MobileBertForQuestionAnswering)
  assert set(report.initialized) == {"qa_outputs/kernel", "qa_outputs/bias"}
  heads = {n for n in pretraining.tensors if n.startswith(("cls/", "bert/pooler/"))}
  assert set(report.unused) == heads  # QA has no pooler, as in transformers
  assert "cls/seq_relationship/output_weights" in report.unused
  assert not any(n.endswith(("adam_m", "adam_v")) for n in report.unused)


def test_unexpected_variable_is_reported_by_name(pretraining, tmp_path):
  stray = "bert/encoder/layer_1/attention/self/relative_bias"
  prefix = ref.write_tf1_checkpoint(
    pretraining.tensors, str(tmp_path), slots=False, extra={stray: np.ones(4, np.float32)}
  )
  ref.write_bert_config(str(tmp_path), pretraining.tf1_config)
  _, _, report = load(prefix, MobileBertForPreTraining)
  assert report.unused == (stray,)
  assert report.initialized == ()


def test_wrong_shape_names_tensor_and_both_shapes(pretraining, tmp_path):
  tensors = dict(pretraining.tensors)
  tensors["bert/encoder/layer_1/attention/self/value/kernel"] = np.zeros((32, 12), np.float32)
  prefix = ref.write_tf1_checkpoint(tensors, str(tmp_path), slots=False)
  ref.write_bert_config(str(tmp_path), pretraining.tf1_config)
  with pytest.raises(ValueError) as info:
    load(prefix, MobileBertModel)
  message = str(info.value)
  assert "bert/encoder/layer_1/attention/self/value/kernel has shape (32, 12)" in message
  assert "expects (32, 16)" in message
  assert "mobilebert" not in message.split("value/kernel has shape")[0]


def test_uninitialised_parameters_are_named(pretraining, tmp_path):
  tensors = {k: v for k, v in pretraining.tensors.items() if "layer_1/ffn_layer_2/" not in k}
  prefix = ref.write_tf1_checkpoint(tensors, str(tmp_path), slots=False)
  ref.write_bert_config(str(tmp_path), pretraining.tf1_config)
  _, _, report = load(prefix, MobileBertModel)
  ffn = "encoder/layer_1/ffn_2"
  assert set(report.initialized) == {
    f"{ffn}/intermediate/kernel",
    f"{ffn}/intermediate/bias",
    f"{ffn}/output/kernel",
    f"{ffn}/output/bias",
    f"{ffn}/norm/scale",
    f"{ffn}/norm/bias",
  }


def test_no_config_says_how_to_pass_one(pretraining, tmp_path):
  for name in os.listdir(pretraining.directory):
    if name != "bert_config.json":
      shutil.copy(os.path.join(pretraining.directory, name), tmp_path / name)
  with pytest.raises(FileNotFoundError) as info:
    load(str(tmp_path), MobileBertModel)
  assert 'config=MobileBertConfig.from_preset("mobilebert-uncased")' in str(info.value)
  assert "bert_config.json" in str(info.value)
  _, _, report = load(str(tmp_path), MobileBertModel, config=pretraining.config)
  assert report.initialized == ()


def test_config_json_in_the_hf_dialect(pretraining, tmp_path):
  for name in os.listdir(pretraining.directory):
    if name != "bert_config.json":
      shutil.copy(os.path.join(pretraining.directory, name), tmp_path / name)
  # Our own config.json (transformers' dialect, with this port's switches).
  pretraining.config.replace(hf_layer_norm_eps_quirk=True).to_json_file(tmp_path / "config.json")
  module, _, _ = load(str(tmp_path / os.path.basename(pretraining.prefix)), MobileBertModel)
  # TF sources run LayerNorm with layer_norm_eps everywhere, whatever the file says.
  assert module.config.hf_layer_norm_eps_quirk is False
  assert module.config.replace(id2label=None) == pretraining.config


# ----------------------------------------------------------------------------------------------
# Finding the checkpoint from a path
# ----------------------------------------------------------------------------------------------


def test_paths_that_name_a_checkpoint(pretraining, tmp_path):
  prefix = pretraining.prefix
  directory = pretraining.directory
  for path in (prefix, prefix + ".index", prefix + ".data-00000-of-00001", directory):
    assert tf_common.resolve_checkpoint_prefix(path) == prefix, path
    assert find_reader(path).name == "tf-checkpoint"
  # A directory without a `checkpoint` state file but with one *.index file.
  single = tmp_path / "single"
  single.mkdir()
  for name in os.listdir(directory):
    if name.startswith(os.path.basename(prefix)):
      shutil.copy(os.path.join(directory, name), single / name)
  assert tf_common.resolve_checkpoint_prefix(str(single)) == str(single / os.path.basename(prefix))
  # A state file written on another machine (absolute paths that do not exist here).
  moved = tmp_path / "moved"
  shutil.copytree(single, moved)
  (moved / "checkpoint").write_text(
    f'model_checkpoint_path: "/gone/run/{os.path.basename(prefix)}"\n'
    f'all_model_checkpoint_paths: "/gone/run/{os.path.basename(prefix)}"\n'
  )
  assert tf_common.resolve_checkpoint_prefix(str(moved)) == str(moved / os.path.basename(prefix))
  # Two checkpoints and no state file: the error lists them.
  two = tmp_path / "two"
  shutil.copytree(single, two)
  for name in os.listdir(single):
    shutil.copy(single / name, two / name.replace("-1234", "-99"))
  assert find_reader(str(two)).name == "tf-checkpoint"
  with pytest.raises(FileNotFoundError, match=r"model\.ckpt-1234, model\.ckpt-99"):
    load(str(two), MobileBertModel)
  # Not checkpoints.
  assert tf_common.resolve_checkpoint_prefix(str(tmp_path / "missing")) is None
  assert tf_common.resolve_checkpoint_prefix(os.path.join(directory, "bert_config.json")) is None


def test_tensorflow_checkpoint_of_another_model(tmp_path):
  prefix = ref.write_tf1_checkpoint({"dense/kernel": np.ones((2, 3), np.float32)}, str(tmp_path))
  with pytest.raises(ValueError, match="not of MobileBERT"):
    load(prefix, MobileBertModel)


# ----------------------------------------------------------------------------------------------
# TensorFlow stays optional
# ----------------------------------------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )


def test_hf_loading_never_imports_tensorflow(tmp_path):
  config = ref.our_config(ref.small(ref.RELEASED))
  config.to_json_file(tmp_path / "config.json")
  done = run_python(
    f"""
    import json, sys
    import mobilebert_jax
    from mobilebert_jax import MobileBertModel, MobileBertConfig, init_params
    from mobilebert_jax.weights import load_pretrained, save_pretrained
    config = MobileBertConfig.from_json_file({str(tmp_path / "config.json")!r})
    module = MobileBertModel(config)
    save_pretrained({str(tmp_path / "hf")!r}, module, init_params(module))
    load_pretrained({str(tmp_path / "hf")!r}, MobileBertModel)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tf_keras"))
    print(json.dumps(loaded))
    """
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_tf_source_without_tensorflow_names_the_extra(pretraining):
  done = run_python(
    f"""
    import sys
    sys.modules["tensorflow"] = None  # makes `import tensorflow` fail, as if not installed
    from mobilebert_jax import MobileBertModel
    from mobilebert_jax.weights import load_pretrained, register_reader, registered_readers
    from mobilebert_jax.weights import tf_checkpoint, tfhub
    if "tf-checkpoint" not in {{r.name for r in registered_readers()}}:
      register_reader(tf_checkpoint.TfCheckpointReader())
      register_reader(tfhub.TfHubReader())
    try:
      load_pretrained({pretraining.prefix!r}, MobileBertModel)
    except ImportError as e:
      print("ImportError:", e)
    """
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'pip install "mobilebert-jax[tf]"' in done.stdout
  assert pretraining.prefix in done.stdout


def test_package_registers_the_tf_readers_before_hf():
  # A TF checkpoint directory may hold a config.json, which the HF reader would claim.
  done = run_python(
    """
    from mobilebert_jax.weights import registered_readers
    print(",".join(r.name for r in registered_readers()))
    """
  )
  assert done.returncode == 0, done.stderr[-3000:]
  names = done.stdout.strip().splitlines()[-1].split(",")
  assert "tf-checkpoint" in names and "tf-hub" in names, names
  assert names.index("tf-checkpoint") < names.index("hf") and names.index("tf-hub") < names.index(
    "hf"
  )


# ----------------------------------------------------------------------------------------------
# Full sizes (slow)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["released", "tiny"])
def test_full_size_student_matches_hf(tmp_path, name):
  tf1_config = {"released": ref.RELEASED, "tiny": ref.TINY}[name]
  checkpoint = HfCheckpoint(tmp_path, tf1_config, "MobileBertForPreTraining", seed=7)
  worst = parity_with_hf(checkpoint)
  print(f"TF1 full {name}: max relative error {worst:.2e}")


@pytest.mark.slow
def test_full_size_teacher_matches_tf2(tmp_path):
  # Slots only for the embeddings: the point here is the 294 M-parameter graph, not the slots.
  def slots(tensors):
    return [n for n in tensors if n.startswith("bert/embeddings/")]

  worst = teacher_parity(ref.TEACHER, tmp_path, seed=8, slots=slots)
  print(f"TF1 full teacher: max relative error {worst:.2e}")
