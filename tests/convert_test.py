"""`python -m mobilebert_jax.convert`, run as a subprocess on small checkpoints written by the test.

`--to=hf`: transformers loads the written directory and reproduces the reference the source was
made from. `--to=orbax`: `checkpointing.load_params_from_checkpoint` reads back exactly the
parameters `load_pretrained` gives for the source.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

tf = pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("official.nlp.modeling")

import reference_util as ru  # noqa: E402
import tf_reference_util as ref  # noqa: E402

from mobilebert_jax import MobileBertForMaskedLM, MobileBertForPreTraining  # noqa: E402
from mobilebert_jax.model.models import abstract_params  # noqa: E402
from mobilebert_jax.train.checkpointing import load_params_from_checkpoint  # noqa: E402
from mobilebert_jax.weights import load_pretrained  # noqa: E402

pytestmark = [pytest.mark.tf, pytest.mark.torch]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def convert(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.convert", *args],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
  )


def flat(tree) -> dict:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


def assert_same_params(a, b) -> None:
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for key, value in fa.items():
    assert value.dtype == fb[key].dtype, key
    np.testing.assert_array_equal(value, fb[key], err_msg="/".join(key))


def test_tf1_checkpoint_to_hf_directory(tmp_path):
  tf1_config = ref.small(ref.RELEASED)
  config = ref.our_config(tf1_config)
  model = ru.build_torch_model(config, "MobileBertForPreTraining", seed=11)
  ref.write_tf1_checkpoint(ref.tf1_tensors_from_hf(model, tf1_config), str(tmp_path / "tf1"))
  ref.write_bert_config(str(tmp_path / "tf1"), tf1_config)

  done = convert(str(tmp_path / "tf1"), str(tmp_path / "hf"), "--to=hf")
  assert done.returncode == 0, done.stderr[-4000:]
  assert "(tf1): " in done.stdout and "0 initialised" in done.stdout
  pad = np.max(np.abs(model.mobilebert.embeddings.word_embeddings.weight[0].detach().numpy()))
  assert f"[PAD] row (id 0): max |value| = {pad:.6g}" in done.stdout

  loaded = transformers.MobileBertForPreTraining.from_pretrained(
    str(tmp_path / "hf"), attn_implementation="eager"
  ).eval()
  batch = ru.make_batch(config, batch_size=2, length=16, seed=11)
  worst = ru.assert_parity(_reference_errors(loaded, model, batch))
  print(f"convert TF1 -> HF, transformers vs reference: max relative error {worst:.2e}")


def _reference_errors(a, b, batch) -> dict[str, float]:
  """Relative errors of transformers model `a` against transformers model `b`."""
  out_a, out_b = ru.run_reference(a, batch), ru.run_reference(b, batch)
  errors = {}
  for key in ("prediction_logits", "seq_relationship_logits"):
    errors[key] = ru.relative_error(out_a[key], out_b[key])
  for i, (x, y) in enumerate(zip(out_a["hidden_states"], out_b["hidden_states"], strict=True)):
    errors[f"hidden_states[{i}]"] = ru.relative_error(x, y)
  return errors


def test_tf2_checkpoint_to_scanned_orbax(tmp_path):
  tf1_config = ref.small(ref.RELEASED)
  pretrainer = ref.build_tf2_pretrainer(tf1_config, seed=12)
  prefix = ref.save_tf2_checkpoint(pretrainer, str(tmp_path / "tf2"))
  config_path = ref.write_bert_config(str(tmp_path / "elsewhere"), tf1_config)

  # The config comes from --config (nothing beside the checkpoint).
  done = convert(
    prefix,
    str(tmp_path / "orbax"),
    "--model_class=MobileBertForMaskedLM",
    f"--config={config_path}",
    "--scan_layers",
  )
  assert done.returncode == 0, done.stderr[-4000:]
  assert "(tf2): " in done.stdout and "Wrote an Orbax params checkpoint" in done.stdout

  module, expected = load_pretrained(
    prefix, MobileBertForMaskedLM, config=ref.our_config(tf1_config), scan_layers=True
  )
  assert "layers" in expected["mobilebert"]["encoder"]
  restored = load_params_from_checkpoint(str(tmp_path / "orbax"), abstract_params(module))
  assert_same_params(restored, jax.device_get(expected))


def test_hf_directory_to_orbax_and_errors(tmp_path):
  config = ref.our_config(ref.small(ref.RELEASED, classifier_activation=True))
  model = ru.build_torch_model(config, "MobileBertForPreTraining", seed=13)
  model.save_pretrained(str(tmp_path / "hf"))

  done = convert(str(tmp_path / "hf"), str(tmp_path / "orbax"))
  assert done.returncode == 0, done.stderr[-4000:]
  assert "(hf): " in done.stdout
  module, expected = load_pretrained(str(tmp_path / "hf"), MobileBertForPreTraining)
  restored = load_params_from_checkpoint(str(tmp_path / "orbax"), abstract_params(module))
  assert_same_params(restored, jax.device_get(expected))

  # A non-empty destination is refused; a TF checkpoint without a config says how to pass one.
  again = convert(str(tmp_path / "hf"), str(tmp_path / "orbax"))
  assert again.returncode == 1 and "not empty" in again.stderr
  pretrainer = ref.build_tf2_pretrainer(ref.small(ref.RELEASED), seed=14)
  prefix = ref.save_tf2_checkpoint(pretrainer, str(tmp_path / "bare"))
  bare = convert(prefix, str(tmp_path / "out"), "--to=hf")
  assert bare.returncode == 1
  assert "--config=mobilebert-uncased" in bare.stderr
  assert not os.path.exists(tmp_path / "out")
