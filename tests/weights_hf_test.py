"""`load_pretrained` / `save_pretrained` against transformers' PyTorch MobileBERT.

Every reference is a small transformers model with all parameters randomised (biases and norm
weights too, since the default initialisation hides mapping errors), written to disk by the
test as transformers writes it (`model.safetensors`) and as the hub's older files are
(`pytorch_model.bin` with the tied decoder copies and the `position_ids` buffer).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import traverse_util  # noqa: E402
from safetensors import SafetensorError  # noqa: E402

from mobilebert_jax.model.config import MobileBertConfig  # noqa: E402
from mobilebert_jax.model.models import MODEL_CLASSES, abstract_params  # noqa: E402
from mobilebert_jax.weights import (  # noqa: E402
  hf_names,
  layout,
  load_pretrained,
  register_reader,
  registered_readers,
  save_pretrained,
  unregister_reader,
)
from mobilebert_jax.weights.loading import SourceTensors  # noqa: E402

pytestmark = pytest.mark.torch

TOLERANCE = 1e-5  # max|ours - ref| / max|ref|, the project's parity bar.
CLASSES = sorted(MODEL_CLASSES)
SMALL = MobileBertConfig(
  vocab_size=99,
  embedding_size=16,
  hidden_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  intermediate_size=40,
  intra_bottleneck_size=24,
  max_position_embeddings=32,
  num_feedforward_networks=2,
  num_labels=3,
  classifier_activation=True,
)
# The "w/o OPT" flavour: LayerNorm everywhere, where transformers' eps quirk
# (docs/pitfalls.md P8) shows.
LAYER_NORM = SMALL.replace(normalization_type="layer_norm", hidden_act="gelu")
# The TINY attention layout: queries, keys and values from the input bottleneck.
BOTTLENECK_ATTENTION = SMALL.replace(
  use_bottleneck_attention=True, key_query_shared_bottleneck=False
)

OUTPUT_FIELDS = {
  "MobileBertModel": ("last_hidden_state", "pooler_output"),
  "MobileBertForPreTraining": ("prediction_logits", "seq_relationship_logits"),
  "MobileBertForMaskedLM": ("logits",),
  "MobileBertForNextSentencePrediction": ("logits",),
  "MobileBertForSequenceClassification": ("logits",),
  "MobileBertForMultipleChoice": ("logits",),
  "MobileBertForTokenClassification": ("logits",),
  "MobileBertForQuestionAnswering": ("start_logits", "end_logits"),
}


# ----------------------------------------------------------------------------------------------
# References, inputs, comparisons
# ----------------------------------------------------------------------------------------------


def for_class(config: MobileBertConfig, class_name: str) -> MobileBertConfig:
  """transformers' QA head has `num_labels` outputs and only runs with 2 (start, end)."""
  if class_name == "MobileBertForQuestionAnswering":
    return config.replace(num_labels=2)
  return config


def hf_config(config: MobileBertConfig):
  data = config.to_hf_dict()
  for key in ("model_type", "true_hidden_size", "id2label", "label2id"):
    data.pop(key)
  return transformers.MobileBertConfig(**data, attn_implementation="eager")


def reference(config: MobileBertConfig, class_name: str, seed: int = 0):
  """A transformers model with every parameter drawn at random."""
  torch.manual_seed(seed)
  model = getattr(transformers, class_name)(hf_config(config)).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      noise = torch.randn(param.shape, generator=generator)
      if name.endswith("bias"):
        param.copy_(0.5 * noise)
      elif "LayerNorm.weight" in name:
        param.copy_(1.0 + 0.5 * noise)
      else:
        param.copy_(0.1 * noise)
  return model


def write_bin(model, directory: str) -> str:
  """Writes `pytorch_model.bin` as transformers 4.x did: tied copies and the buffer included."""
  os.makedirs(directory, exist_ok=True)
  state = dict(model.state_dict())
  prefix = "" if type(model).__name__ == "MobileBertModel" else hf_names.BASE_MODEL_PREFIX
  positions = model.config.max_position_embeddings
  state[f"{prefix}embeddings.position_ids"] = torch.arange(positions).expand((1, -1))
  torch.save(state, os.path.join(directory, "pytorch_model.bin"))
  model.config.to_json_file(os.path.join(directory, "config.json"))
  return directory


def batch(class_name: str, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Four rows of 12 tokens: right padding in two rows, both token types."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab_size, (4, 12))
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  mask[2, 5:] = 0
  ids[mask == 0] = 0
  types = np.zeros_like(ids)
  types[:, 4:] = 1
  types[mask == 0] = 0
  arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
  if class_name == "MobileBertForMultipleChoice":
    arrays = {k: v.reshape(2, 2, 12) for k, v in arrays.items()}
  return arrays


def run_ours(module, params, inputs) -> dict[str, np.ndarray]:
  out = module.apply(
    {"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()}, output_hidden_states=True
  )
  return _collect(out, type(module).__name__, np.asarray)


def run_theirs(model, inputs) -> dict[str, np.ndarray]:
  with torch.no_grad():
    out = model(**{k: torch.tensor(v) for k, v in inputs.items()}, output_hidden_states=True)
  return _collect(out, type(model).__name__, lambda t: t.numpy())


def _collect(out, class_name: str, to_numpy) -> dict[str, np.ndarray]:
  """The class's output fields and every hidden state, as NumPy arrays."""
  fields = {f: to_numpy(getattr(out, f)) for f in OUTPUT_FIELDS[class_name]}
  fields.update({f"hidden_states[{i}]": to_numpy(h) for i, h in enumerate(out.hidden_states)})
  return fields


def relative_errors(ours: dict, theirs: dict) -> dict[str, float]:
  assert ours.keys() == theirs.keys()
  errors = {}
  for key in ours:
    a, b = np.asarray(ours[key], np.float64), np.asarray(theirs[key], np.float64)
    assert a.shape == b.shape, (key, a.shape, b.shape)
    errors[key] = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
  return errors


def assert_parity(ours: dict, theirs: dict) -> float:
  errors = relative_errors(ours, theirs)
  worst = max(errors, key=errors.get)
  assert errors[worst] <= TOLERANCE, f"{worst}: relative error {errors[worst]:.3g}"
  return errors[worst]


def flat(params) -> dict[tuple[str, ...], np.ndarray]:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}


def assert_same_params(a, b) -> None:
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for key in fa:
    assert fa[key].dtype == fb[key].dtype, key
    np.testing.assert_array_equal(fa[key], fb[key], err_msg="/".join(key))


def random_params(module, seed: int):
  """Our own parameters with every leaf random (norm scales around 1)."""
  shapes = traverse_util.flatten_dict(abstract_params(module))
  keys = jax.random.split(jax.random.key(seed), len(shapes))
  out = {}
  for key, (path, leaf) in zip(keys, shapes.items(), strict=True):
    noise = jax.random.normal(key, leaf.shape, leaf.dtype)
    if path[-1] == "scale":
      out[path] = 1.0 + 0.5 * noise
    elif path[-1] == "bias":
      out[path] = 0.5 * noise
    else:
      out[path] = 0.1 * noise
  return traverse_util.unflatten_dict(out)


# ----------------------------------------------------------------------------------------------
# Checkpoints written once per module
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """`checkpoint(config_name, class_name, fmt)` -> (reference model, directory), cached."""
  configs = {"small": SMALL, "layer_norm": LAYER_NORM}
  cache = {}

  def get(config_name: str, class_name: str, fmt: str = "safetensors"):
    key = (config_name, class_name)
    if key not in cache:
      model = reference(for_class(configs[config_name], class_name), class_name, seed=len(cache))
      root = tmp_path_factory.mktemp(f"{config_name}-{class_name}")
      model.save_pretrained(str(root / "safetensors"))
      write_bin(model, str(root / "bin"))
      cache[key] = (model, root)
    model, root = cache[key]
    return model, str(root / fmt)

  return get


# ----------------------------------------------------------------------------------------------
# Import parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("class_name", CLASSES)
def test_load_matches_transformers(checkpoint, class_name, fmt):
  model, directory = checkpoint("small", class_name, fmt)
  module, params, report = load_pretrained(directory, MODEL_CLASSES[class_name], return_report=True)
  inputs = batch(class_name, SMALL.vocab_size)
  assert_parity(run_ours(module, params, inputs), run_theirs(model, inputs))

  assert report.complete, report.summary()
  assert report.format == "hf"
  assert report.model_class == class_name
  assert report.config.num_labels == for_class(SMALL, class_name).num_labels  # from id2label
  assert report.pad_row_is_zero is False  # random weights: row 0 is not zero
  if fmt == "bin":
    prefix = "" if class_name == "MobileBertModel" else "mobilebert."
    expected = {f"{prefix}embeddings.position_ids"}
    if class_name in ("MobileBertForPreTraining", "MobileBertForMaskedLM"):
      expected |= {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias"}
    assert set(report.ignored) == expected
  assert not report.notes, report.notes  # the tied copies equal their originals


@pytest.mark.parametrize("class_name", ["MobileBertModel", "MobileBertForPreTraining"])
def test_layer_norm_config_matches_transformers_with_eps_quirk(checkpoint, class_name):
  model, directory = checkpoint("layer_norm", class_name)
  module, params = load_pretrained(directory, MODEL_CLASSES[class_name])
  assert module.config.hf_layer_norm_eps_quirk  # set for HF sources
  inputs = batch(class_name, SMALL.vocab_size)
  assert_parity(run_ours(module, params, inputs), run_theirs(model, inputs))

  # The caller's override wins, and then transformers' eps 1e-5 in two norms shows
  # (docs/pitfalls.md P8).
  module, params = load_pretrained(
    directory, MODEL_CLASSES[class_name], hf_layer_norm_eps_quirk=False
  )
  assert not module.config.hf_layer_norm_eps_quirk
  errors = relative_errors(run_ours(module, params, inputs), run_theirs(model, inputs))
  assert max(errors.values()) > TOLERANCE


def test_scan_layers_loads_identically(checkpoint):
  model, directory = checkpoint("small", "MobileBertForPreTraining")
  cls = MODEL_CLASSES["MobileBertForPreTraining"]
  module, params = load_pretrained(directory, cls)
  scanned_module, scanned = load_pretrained(directory, cls, scan_layers=True)
  assert scanned_module.config.scan_layers
  assert "layers" in scanned["mobilebert"]["encoder"]
  assert_same_params(scanned, layout.stack_layers(params, SMALL.num_hidden_layers))
  inputs = batch("MobileBertForPreTraining", SMALL.vocab_size)
  ours, ours_scanned = run_ours(module, params, inputs), run_ours(scanned_module, scanned, inputs)
  assert max(relative_errors(ours_scanned, ours).values()) <= 1e-6
  assert_parity(ours_scanned, run_theirs(model, inputs))


# ----------------------------------------------------------------------------------------------
# Loading across classes
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "source_class, target_class",
  [
    ("MobileBertForPreTraining", "MobileBertForQuestionAnswering"),
    ("MobileBertModel", "MobileBertForSequenceClassification"),
    ("MobileBertForPreTraining", "MobileBertModel"),
    ("MobileBertForMaskedLM", "MobileBertForNextSentencePrediction"),
  ],
)
def test_cross_class_report_matches_transformers(checkpoint, caplog, source_class, target_class):
  _, directory = checkpoint("small", source_class)
  with caplog.at_level(logging.INFO, logger="mobilebert_jax"):
    module, params, report = load_pretrained(
      directory, MODEL_CLASSES[target_class], return_report=True
    )
  # transformers' QA head only runs with num_labels=2 (the sources here have 3 labels).
  labels = {"num_labels": 2} if target_class == "MobileBertForQuestionAnswering" else {}
  theirs, info = getattr(transformers, target_class).from_pretrained(
    directory, output_loading_info=True, attn_implementation="eager", **labels
  )
  theirs.eval()
  names = {"/".join(m.ours): m.theirs for m in hf_names.model_table(report.config, target_class)}
  assert {names[p] for p in report.initialized} == set(info["missing_keys"])
  assert set(report.unused) == set(info["unexpected_keys"])
  assert report.initialized or report.unused
  # The caller asked for the report, so it is logged at INFO, not as a warning.
  ours = [r for r in caplog.records if r.name.startswith("mobilebert_jax")]
  logged = " ".join(r.getMessage() for r in ours if r.levelno == logging.INFO)
  for name in (*report.initialized, *report.unused):
    assert name in logged
  assert not [r for r in ours if r.levelno >= logging.WARNING]

  # The shared encoder computes what transformers' copy computes.
  inputs = batch(target_class, SMALL.vocab_size)
  ours, ref = run_ours(module, params, inputs), run_theirs(theirs, inputs)
  hidden = [k for k in ours if k.startswith("hidden_states")]
  assert_parity({k: ours[k] for k in hidden}, {k: ref[k] for k in hidden})


def test_pretraining_checkpoint_into_question_answering(checkpoint):
  _, directory = checkpoint("small", "MobileBertForPreTraining")
  _, params, report = load_pretrained(
    directory, MODEL_CLASSES["MobileBertForQuestionAnswering"], return_report=True
  )
  assert set(report.initialized) == {"qa_outputs/kernel", "qa_outputs/bias"}
  assert {u.split(".")[0] for u in report.unused} == {"cls", "mobilebert"}
  assert all(u.startswith(("cls.", "mobilebert.pooler.")) for u in report.unused)
  assert "cls.seq_relationship.weight" in report.unused
  assert params["qa_outputs"]["kernel"].shape == (SMALL.hidden_size, 2)


def test_bare_encoder_checkpoint_into_head_class_and_rng(checkpoint):
  model, directory = checkpoint("small", "MobileBertModel")
  cls = MODEL_CLASSES["MobileBertForTokenClassification"]
  _, params, report = load_pretrained(directory, cls, return_report=True)
  assert set(report.initialized) == {"classifier/kernel", "classifier/bias"}
  assert set(report.unused) == {"pooler.dense.weight", "pooler.dense.bias"}
  assert any("prefix was added" in note for note in report.notes)
  word = model.embeddings.word_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(params["mobilebert"]["embeddings"]["word_embeddings"], word)

  # Fresh heads are deterministic in `rng`.
  _, again = load_pretrained(directory, cls)
  _, other = load_pretrained(directory, cls, rng=jax.random.key(7))
  np.testing.assert_array_equal(params["classifier"]["kernel"], again["classifier"]["kernel"])
  assert not np.array_equal(params["classifier"]["kernel"], other["classifier"]["kernel"])


# ----------------------------------------------------------------------------------------------
# File variants
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("torch_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_files_widen_exactly(tmp_path, torch_dtype):
  half = reference(SMALL, "MobileBertForMaskedLM", seed=3).to(torch_dtype)
  half.save_pretrained(str(tmp_path / "st"))
  write_bin(half, str(tmp_path / "bin"))
  widened = reference(SMALL, "MobileBertForMaskedLM", seed=3).to(torch_dtype).to(torch.float32)
  widened.save_pretrained(str(tmp_path / "fp32"))
  cls = MODEL_CLASSES["MobileBertForMaskedLM"]
  _, expected = load_pretrained(str(tmp_path / "fp32"), cls)
  name = str(torch_dtype).removeprefix("torch.")
  for fmt in ("st", "bin"):
    module, params, report = load_pretrained(str(tmp_path / fmt), cls, return_report=True)
    assert_same_params(params, expected)
    # transformers' config.json records the storage dtype as "dtype"; it is not our compute dtype.
    assert module.config.dtype == "float32"
    assert any(name in note for note in report.notes), report.notes
  _, kept = load_pretrained(str(tmp_path / "st"), cls, param_dtype=name)
  for leaf in jax.tree.leaves(kept):
    assert leaf.dtype == jnp.dtype(name)
  assert_same_params(kept, jax.tree.map(lambda x: x.astype(name), expected))


def test_sharded_safetensors(checkpoint, tmp_path):
  model, directory = checkpoint("small", "MobileBertForPreTraining")
  model.save_pretrained(str(tmp_path), max_shard_size="100KB")
  shards = [f for f in os.listdir(tmp_path) if f.startswith("model-")]
  assert len(shards) > 1 and os.path.exists(tmp_path / "model.safetensors.index.json")
  cls = MODEL_CLASSES["MobileBertForPreTraining"]
  _, sharded, report = load_pretrained(str(tmp_path), cls, return_report=True)
  _, whole = load_pretrained(directory, cls)
  assert_same_params(sharded, whole)
  assert report.complete
  # The index file itself is also a valid source.
  _, from_index = load_pretrained(str(tmp_path / "model.safetensors.index.json"), cls)
  assert_same_params(from_index, whole)


def test_tied_copy_that_differs_is_reported(checkpoint, tmp_path, caplog):
  model, _ = checkpoint("small", "MobileBertForMaskedLM")
  state = dict(model.state_dict())
  state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1.0
  state["unrelated.extra.weight"] = torch.ones(3)
  torch.save(state, tmp_path / "pytorch_model.bin")
  model.config.to_json_file(tmp_path / "config.json")
  with caplog.at_level(logging.INFO, logger="mobilebert_jax"):
    _, params, report = load_pretrained(
      str(tmp_path), MODEL_CLASSES["MobileBertForMaskedLM"], return_report=True
    )
  assert any("cls.predictions.decoder.weight differs" in n for n in report.notes), report.notes
  # Handed to the caller: logged at INFO. Not asked for: a warning.
  levels = {r.levelno for r in caplog.records if "decoder.weight differs" in r.getMessage()}
  assert levels == {logging.INFO}
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="mobilebert_jax"):
    load_pretrained(str(tmp_path), MODEL_CLASSES["MobileBertForMaskedLM"])
  assert "cls.predictions.decoder.weight differs" in caplog.text
  assert report.unused == ("unrelated.extra.weight",)
  assert "cls.predictions.decoder.weight" in report.ignored
  word = model.mobilebert.embeddings.word_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(params["mobilebert"]["embeddings"]["word_embeddings"], word)


def test_zero_pad_row_is_reported(tmp_path):
  model = reference(SMALL, "MobileBertModel")
  with torch.no_grad():
    model.embeddings.word_embeddings.weight[0] = 0.0
  model.save_pretrained(str(tmp_path))
  _, _, report = load_pretrained(str(tmp_path), return_report=True)
  assert report.pad_row_is_zero is True
  assert "is zero" in report.summary()


def test_single_file_and_config_argument(checkpoint, tmp_path):
  _, directory = checkpoint("small", "MobileBertModel")
  lone = tmp_path / "weights.safetensors"
  shutil.copy(os.path.join(directory, "model.safetensors"), lone)
  with pytest.raises(FileNotFoundError, match=r"carries no model config; pass config="):
    load_pretrained(str(lone))
  module, params = load_pretrained(str(lone), config=SMALL)
  _, expected = load_pretrained(directory)
  assert_same_params(params, expected)
  assert module.config.hf_layer_norm_eps_quirk  # implied by the format even with `config=`


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("class_name", CLASSES)
def test_export_round_trip(tmp_path, class_name):
  # Alternate the layouts and attention variants to cover them without doubling the test count.
  index = CLASSES.index(class_name)
  config = (SMALL if index % 2 else BOTTLENECK_ATTENTION).replace(scan_layers=index % 3 == 0)
  cls = MODEL_CLASSES[class_name]
  module = cls(config)
  params = random_params(cls(config.replace(scan_layers=False)), seed=index)
  if config.scan_layers:
    params = layout.stack_layers(params, config.num_hidden_layers)
  save_pretrained(tmp_path, module, params)

  with open(tmp_path / "config.json") as f:
    written = json.load(f)
  assert written["architectures"] == [class_name] and written["model_type"] == "mobilebert"
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]

  theirs, info = getattr(transformers, class_name).from_pretrained(
    str(tmp_path), output_loading_info=True, attn_implementation="eager"
  )
  theirs.eval()
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"] and not info["error_msgs"], info
  inputs = batch(class_name, config.vocab_size)
  assert_parity(run_ours(module, params, inputs), run_theirs(theirs, inputs))

  _, reloaded, report = load_pretrained(
    str(tmp_path), cls, scan_layers=config.scan_layers, return_report=True
  )
  assert report.complete
  assert report.config.to_hf_dict() == for_class(config, class_name).to_hf_dict()
  assert_same_params(reloaded, params)


def test_export_layouts_write_the_same_file(tmp_path):
  cls = MODEL_CLASSES["MobileBertForPreTraining"]
  params = random_params(cls(SMALL), seed=1)
  save_pretrained(tmp_path / "plain", cls(SMALL), params)
  stacked = layout.stack_layers(params)
  save_pretrained(tmp_path / "scanned", cls(SMALL.replace(scan_layers=True)), stacked)
  plain = (tmp_path / "plain" / "model.safetensors").read_bytes()
  assert plain == (tmp_path / "scanned" / "model.safetensors").read_bytes()


def test_export_into_existing_directory(tmp_path):
  cls = MODEL_CLASSES["MobileBertModel"]
  (tmp_path / "vocab.txt").write_text("[PAD]\n")
  (tmp_path / "pytorch_model.bin").write_bytes(b"stale")
  (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"stale")
  (tmp_path / "model.safetensors.index.json").write_text("{}")
  params = random_params(cls(SMALL), seed=2)
  save_pretrained(tmp_path, cls(SMALL), params)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors", "vocab.txt"]
  _, reloaded = load_pretrained(str(tmp_path))
  assert_same_params(reloaded, params)


def test_failed_export_leaves_nothing_that_looks_complete(tmp_path):
  cls = MODEL_CLASSES["MobileBertModel"]
  params = random_params(cls(SMALL), seed=2)
  # An object array has the right shape but safetensors cannot serialise it: the write fails
  # half way, after the staging area exists.
  bad = jax.tree.map(np.asarray, params)
  kernel = bad["embeddings"]["embedding_transformation"]["kernel"]
  bad["embeddings"]["embedding_transformation"]["kernel"] = kernel.astype(object)

  target = tmp_path / "new"
  with pytest.raises(SafetensorError, match="Unknown dtype"):
    save_pretrained(target, cls(SMALL), bad)
  assert sorted(os.listdir(tmp_path)) == []

  existing = tmp_path / "existing"
  save_pretrained(existing, cls(SMALL), params)
  before = {name: (existing / name).read_bytes() for name in os.listdir(existing)}
  with pytest.raises(SafetensorError, match="Unknown dtype"):
    save_pretrained(existing, cls(SMALL), bad)
  assert {name: (existing / name).read_bytes() for name in os.listdir(existing)} == before


def test_export_warns_about_layer_norm_eps(tmp_path, caplog):
  cls = MODEL_CLASSES["MobileBertModel"]
  params = random_params(cls(LAYER_NORM), seed=0)
  with caplog.at_level(logging.WARNING, logger="mobilebert_jax"):
    save_pretrained(tmp_path / "plain", cls(LAYER_NORM), params)
  assert "eps 1e-5" in caplog.text and "P8" in caplog.text
  caplog.clear()
  quirk = LAYER_NORM.replace(hf_layer_norm_eps_quirk=True)
  with caplog.at_level(logging.WARNING, logger="mobilebert_jax"):
    save_pretrained(tmp_path / "quirk", cls(quirk), params)
  assert "P8" not in caplog.text


def test_export_refuses_what_transformers_cannot_build(tmp_path):
  # Bottlenecks without either attention flag: the IB-BERT teacher's layout (docs/pitfalls.md P10).
  teacher_like = SMALL.replace(key_query_shared_bottleneck=False)
  cls = MODEL_CLASSES["MobileBertModel"]
  params = random_params(cls(teacher_like), seed=0)
  with pytest.raises(ValueError, match=r"cannot build this architecture \(docs/pitfalls.md P10\)"):
    save_pretrained(tmp_path / "out", cls(teacher_like), params)
  assert not (tmp_path / "out").exists()


def test_export_rejects_params_that_do_not_fit(tmp_path):
  cls = MODEL_CLASSES["MobileBertForQuestionAnswering"]
  params = random_params(cls(SMALL), seed=0)
  del params["qa_outputs"]
  with pytest.raises(ValueError, match=r"missing \['qa_outputs/bias', 'qa_outputs/kernel'\]"):
    save_pretrained(tmp_path / "out", cls(SMALL), params)
  assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_shape_mismatch_names_tensor_and_shapes(checkpoint):
  _, directory = checkpoint("small", "MobileBertForPreTraining")
  with pytest.raises(ValueError) as error:
    load_pretrained(directory, MODEL_CLASSES["MobileBertForPreTraining"], intermediate_size=44)
  message = str(error.value)
  assert "mobilebert.encoder.layer.0.intermediate.dense.weight" in message
  assert "(40, 24)" in message and "(44, 24)" in message

  _, directory = checkpoint("small", "MobileBertForSequenceClassification")
  with pytest.raises(ValueError, match=r"classifier\.weight .* \(3, 48\).*\(2, 48\)"):
    load_pretrained(directory, MODEL_CLASSES["MobileBertForSequenceClassification"], num_labels=2)


def test_unknown_hub_id_offline(monkeypatch):
  import huggingface_hub.constants

  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  with pytest.raises(FileNotFoundError) as error:
    load_pretrained("nobody-here/no-such-mobilebert")
  message = str(error.value)
  assert "nobody-here/no-such-mobilebert" in message
  assert "model.safetensors: not in the local cache" in message
  assert "pytorch_model.bin" in message and "local directory" in message


def test_directory_without_weights(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"holds no checkpoint .*Readable sources"):
    load_pretrained(str(tmp_path))
  SMALL.to_json_file(tmp_path / "config.json", include_implementation=False)
  with pytest.raises(FileNotFoundError, match=r"it has \['config.json'\]\). Readable sources"):
    load_pretrained(str(tmp_path))
  (tmp_path / "model.safetensors.index.json").write_text(
    json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}})
  )
  with pytest.raises(FileNotFoundError, match=r"lists the shard model-00001-of-00002"):
    load_pretrained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"neither an existing file"):
    load_pretrained(str(tmp_path / "missing" / "model.safetensors"))


def test_config_of_another_model_type(checkpoint, tmp_path):
  _, directory = checkpoint("small", "MobileBertModel")
  shutil.copy(os.path.join(directory, "model.safetensors"), tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 99}))
  with pytest.raises(ValueError, match=r"config.json: the config describes a 'bert' model"):
    load_pretrained(str(tmp_path))


def test_bad_arguments(checkpoint):
  _, directory = checkpoint("small", "MobileBertModel")
  with pytest.raises(ValueError, match=r"no field\(s\) \['revison'\].*rng, return_report"):
    load_pretrained(directory, revison="main")
  with pytest.raises(TypeError, match="model_cls must be one of"):
    load_pretrained(directory, dict)


def test_bin_without_torch_names_the_extra(checkpoint):
  _, directory = checkpoint("small", "MobileBertModel", "bin")
  code = (
    "import sys\n"
    "sys.modules['torch'] = None  # this interpreter has no torch\n"
    "from mobilebert_jax.weights import load_pretrained\n"
    f"load_pretrained({directory!r})\n"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  done = subprocess.run(
    [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
  )
  assert done.returncode != 0
  assert "ImportError" in done.stderr
  assert 'pip install "mobilebert-jax[torch]"' in done.stderr


# ----------------------------------------------------------------------------------------------
# The reader registry
# ----------------------------------------------------------------------------------------------


class _NpzSource:
  """A toy format for the protocol test: our own flat paths in an .npz, no config."""

  format = "npz-test"
  config_defaults: ClassVar[dict] = {}

  def __init__(self, path: str):
    self.description = path
    self._arrays = dict(np.load(path))

  def config(self):
    return None

  def read(self, config, model_class, shapes) -> SourceTensors:
    tensors = {tuple(k.split("/")): v for k, v in self._arrays.items()}
    used = {k: v for k, v in tensors.items() if k in shapes}
    return SourceTensors(
      tensors=used,
      names={k: "/".join(k) for k in used},
      unused=tuple(sorted("/".join(k) for k in tensors if k not in shapes)),
    )


class _NpzReader:
  name = "npz-test"
  accepts = "an .npz of our own parameter paths (test only)"

  def detect(self, source: str) -> bool:
    return source.endswith(".npz") and os.path.isfile(source)

  def open(self, source: str, *, revision=None) -> _NpzSource:
    return _NpzSource(source)


def test_a_new_reader_plugs_into_the_merge(tmp_path):
  cls = MODEL_CLASSES["MobileBertForSequenceClassification"]
  params = random_params(cls(SMALL), seed=5)
  arrays = {"/".join(k): v for k, v in flat(params).items() if k[0] != "classifier"}
  arrays["cls/extra"] = np.zeros(2, np.float32)
  np.savez(tmp_path / "weights.npz", **arrays)
  register_reader(_NpzReader())
  try:
    assert registered_readers()[-1].name == "hf-hub"  # the fallback stays last
    module, loaded, report = load_pretrained(
      str(tmp_path / "weights.npz"), cls, config=SMALL, scan_layers=True, return_report=True
    )
  finally:
    unregister_reader("npz-test")
  assert report.format == "npz-test"
  assert set(report.initialized) == {"classifier/kernel", "classifier/bias"}
  assert report.unused == ("cls/extra",)
  assert not module.config.hf_layer_norm_eps_quirk  # no HF defaults for this format
  expected = layout.stack_layers({k: v for k, v in params.items() if k != "classifier"})
  loaded = {k: v for k, v in loaded.items() if k != "classifier"}
  assert_same_params(loaded, expected)
  assert "npz-test" not in [r.name for r in registered_readers()]
