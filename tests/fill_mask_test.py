"""`mobilebert_jax.fill_mask`: the masked-LM head's guesses, against transformers and a real run.

The reference is transformers' `MobileBertForPreTraining` on the same random weights (the house
tiny config, every leaf random, query and key large enough that attention is far from uniform):
the guesses must be its top tokens with its softmax probabilities. A real pretraining run (a few
steps of the tiny config) checks that a workdir loads with its own checkpoint and vocabulary.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from flax import traverse_util
from model_test import TINY, random_params  # the house tiny config and its helpers

from mobilebert_jax import MobileBertForPreTraining, cli, fill_mask
from mobilebert_jax import save_pretrained as save_hf
from mobilebert_jax.demo import VOCAB_FILE
from mobilebert_jax.trainers import pretraining

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = "the [MASK] of the city was built in [MASK] by the king."

pytestmark = pytest.mark.usefixtures("fast_compiles")


def sharp_attention_params(module, seed: int):
  """The house random parameters with query and key kernels 4x larger.

  Attention is then far from uniform, so a wrong mask or head split would change the guesses.
  """
  flat = traverse_util.flatten_dict(random_params(module, seed))
  for path in flat:
    if path[-2:] in (("query", "kernel"), ("key", "kernel")):
      flat[path] = 4.0 * flat[path]
  return traverse_util.unflatten_dict(flat)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> str:
  """A Hugging Face directory of random weights with the demo's vocabulary beside them."""
  directory = tmp_path_factory.mktemp("hf") / "model"
  with open(VOCAB_FILE, encoding="utf-8") as f:
    vocab_size = sum(1 for _ in f)
  module = MobileBertForPreTraining(TINY.replace(vocab_size=vocab_size, max_position_embeddings=64))
  save_hf(directory, module, sharp_attention_params(module, seed=5))
  shutil.copy(VOCAB_FILE, directory / "vocab.txt")
  return str(directory)


@pytest.mark.torch
def test_guesses_are_transformers_top_tokens_and_probabilities(weights_dir):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = fill_mask.load_masked_lm(weights_dir)
  guesses = fill_mask.fill_mask(model, TEXT, top_k=5)

  theirs = transformers.MobileBertForPreTraining.from_pretrained(
    weights_dir, attn_implementation="eager"
  ).eval()
  encoding = model.tokenizer.encode(TEXT)
  ids = torch.tensor([encoding.input_ids])
  with torch.no_grad():
    logits = theirs(input_ids=ids, attention_mask=torch.ones_like(ids)).prediction_logits[0]
  masked = [i for i, t in enumerate(encoding.input_ids) if t == model.tokenizer.mask_token_id]
  assert len(guesses) == len(masked) == 2
  for position, row in zip(masked, guesses, strict=True):
    probabilities = torch.softmax(logits[position].double(), -1).numpy()
    top = np.argsort(-probabilities)[:5]
    assert [g.token_id for g in row] == top.tolist()
    assert [g.token for g in row] == model.tokenizer.convert_ids_to_tokens(top.tolist())
    np.testing.assert_allclose([g.probability for g in row], probabilities[top], rtol=1e-5)


def test_bad_inputs_are_named(weights_dir, tmp_path):
  model = fill_mask.load_masked_lm(weights_dir)
  with pytest.raises(ValueError, match=r"no \[MASK\] in"):
    fill_mask.fill_mask(model, "nothing is masked here")
  with pytest.raises(ValueError, match="top_k must be at least 1"):
    fill_mask.fill_mask(model, TEXT, top_k=0)
  with pytest.raises(ValueError, match="max_position_embeddings=64"):
    fill_mask.fill_mask(model, " ".join(["the"] * 80) + " [MASK]")
  bare = tmp_path / "bare"
  shutil.copytree(weights_dir, bare)
  os.remove(bare / "vocab.txt")
  with pytest.raises(FileNotFoundError, match=r"no vocab\.txt beside"):
    fill_mask.load_masked_lm(bare)
  with pytest.raises(ValueError, match="applies to runs of ours"):
    fill_mask.load_masked_lm(weights_dir, step=3)


def test_a_pretraining_workdir_loads_its_checkpoint_and_kept_vocabulary(tmp_path):
  corpus = tmp_path / "train.txt"
  # BERT's text format: one sentence per line, a blank line between documents.
  corpus.write_text(
    "\n\n".join(
      "a sentence about the city.\nthe king built it in the year one.\nit still stands."
      for _ in range(8)
    )
    + "\n",
    encoding="utf-8",
  )
  config = cli.load_config_file(f"{REPO}/mobilebert_jax/configs/pretrain.py:size=tiny")
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.train_files = str(corpus)
  config.num_train_steps = 2
  config.checkpoint_every_steps = 2
  workdir = tmp_path / "run"
  pretraining.train_and_evaluate(config, str(workdir))

  model = fill_mask.load_masked_lm(workdir)
  assert "pretraining run" in model.description and "step 2" in model.description
  assert model.tokenizer.vocab_size == model.config.vocab_size
  guesses = fill_mask.fill_mask(model, TEXT, top_k=3)
  assert [len(row) for row in guesses] == [3, 3]
  for row in guesses:
    probabilities = [g.probability for g in row]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1 + 1e-9
