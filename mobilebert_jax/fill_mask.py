"""Probing a pretrained or distilled model: its masked-LM head's guesses for `[MASK]` tokens.

    from mobilebert_jax import fill_mask

    model = fill_mask.load_masked_lm("/tmp/distill/full_recipe")  # a pretraining/distill workdir
    fill_mask.fill_mask(model, "the capital of france is [MASK].", top_k=3)
    # [[Guess(token='paris', token_id=..., probability=0.41), ...]]  one list per [MASK]

A run's held-out MLM accuracy says how often the model is right; this says what it believes, the
first thing to look at after pretraining a teacher or distilling a student. Sources: a workdir (or
checkpoint) of `mobilebert_jax.pretrain` or `mobilebert_jax.distill` (the student), with the
vocabulary the run kept, or anything `weights.load_pretrained` reads (e.g. the released
`google/mobilebert-uncased` directory, whose `vocab.txt` sits beside the weights).

The text is tokenized as in pretraining (`[CLS] text [SEP]`, one segment); every `[MASK]` written
in it is one masked position. Probabilities are the softmax of the MLM head's logits over the
whole vocabulary, in float64.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForPreTraining, abstract_params
from mobilebert_jax.train import checkpointing, initialization, summaries
from mobilebert_jax.weights import load_pretrained

PyTree = Any
# The run kinds whose checkpoints hold a masked-LM head (fine-tuning checkpoints do not).
_PRETRAINING_RUNS = ("pretraining", "distillation")


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds arrays
class MaskedLanguageModel:
  """A model with its masked-LM head and vocabulary.

  Attributes:
    module: a `MobileBertForPreTraining` built from `config`.
    params: its parameters.
    tokenizer: the vocabulary it was trained with.
    config: the architecture.
    description: where it came from (for logs).
  """

  module: nn.Module
  params: PyTree
  tokenizer: Any
  config: MobileBertConfig
  description: str


@dataclasses.dataclass(frozen=True)
class Guess:
  """One candidate for a masked position.

  Attributes:
    token: the vocabulary entry (a WordPiece continuation keeps its `##`).
    token_id: its id.
    probability: the MLM head's probability of it at this position.
  """

  token: str
  token_id: int
  probability: float


def load_masked_lm(
  source: str | os.PathLike[str],
  *,
  step: int | None = None,
  vocab_file: str | None = None,
  do_lower_case: bool | None = None,
) -> MaskedLanguageModel:
  """Loads the masked-LM model of a pretraining or distillation run, or of released weights.

  Args:
    source: a workdir (or checkpoint directory) of `mobilebert_jax.pretrain` or
      `mobilebert_jax.distill`, or anything `weights.load_pretrained` reads.
    step: the checkpoint step of a run (default: the latest).
    vocab_file: the vocabulary (default: the one the run kept, or the `vocab.txt` beside
      weights).
    do_lower_case: lower-case the text (default: the run's setting; True for weights).

  Returns:
    The `MaskedLanguageModel`.

  Raises:
    FileNotFoundError: no such source, or no vocabulary for it.
    ValueError: a fine-tuning checkpoint (it has no masked-LM head), or `step` for weights.
  """
  path = os.path.abspath(os.fspath(source))
  found = initialization.find_checkpoint(path)
  if found is None:
    if step is not None:
      raise ValueError(f"step={step} applies to runs of ours; {source} is not one")
    module, params = load_pretrained(os.fspath(source), MobileBertForPreTraining)
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    vocab_file = vocab_file or initialization.vocab_in(folder)
    if vocab_file is None:
      raise FileNotFoundError(f"no vocab.txt beside {source}; pass vocab_file=")
    tokenizer = initialization.load_tokenizer(vocab_file, do_lower_case is not False)
    return MaskedLanguageModel(module, params, tokenizer, module.config, f"weights {source}")

  root, step_dir_step = found
  metadata = checkpointing.read_metadata(root, step if step is not None else step_dir_step)
  train_config = metadata.get("train_config") or {}
  run = train_config.get("task")
  if run not in _PRETRAINING_RUNS:
    raise ValueError(
      f"{root} holds a checkpoint of {run!r}, which has no masked-LM head; pass a workdir of "
      "mobilebert_jax.pretrain or mobilebert_jax.distill"
    )
  config = MobileBertConfig.from_dict(metadata["model_config"], source="hf")
  module = MobileBertForPreTraining(config)
  with summaries.quiet_library_logs(level=logging.ERROR):  # Orbax's read-only chatter
    params = checkpointing.load_params_from_checkpoint(
      root, abstract_params(module), step=metadata["step"]
    )
  tokenizer_config = train_config.get("tokenizer") or {}
  # The vocabulary the run kept beside its checkpoints, else the one its config named.
  kept = initialization.vocab_in(os.path.dirname(root))
  vocab_file = vocab_file or kept or tokenizer_config.get("vocab_file")
  if not vocab_file or not os.path.isfile(vocab_file):
    raise FileNotFoundError(f"no vocabulary for {root}: none kept beside it; pass vocab_file=")
  if do_lower_case is None:
    do_lower_case = bool(tokenizer_config.get("do_lower_case", True))
  tokenizer = initialization.load_tokenizer(vocab_file, do_lower_case)
  description = f"{run} run {root} step {metadata['step']}"
  return MaskedLanguageModel(module, params, tokenizer, config, description)


@functools.lru_cache(maxsize=8)
def _logits_fn(module: nn.Module):
  # One jitted forward per model; jax.jit then caches one executable per input length.
  def logits(params, input_ids, attention_mask, token_type_ids):
    return module.apply({"params": params}, input_ids, attention_mask, token_type_ids)

  return jax.jit(logits)


def fill_mask(model: MaskedLanguageModel, text: str, *, top_k: int = 5) -> list[list[Guess]]:
  """The model's `top_k` guesses for every `[MASK]` in `text`, most probable first.

  Args:
    model: `load_masked_lm(...)`.
    text: one text containing at least one `[MASK]` token.
    top_k: guesses per masked position.

  Returns:
    One list of `Guess`es per `[MASK]`, in the order they occur.

  Raises:
    ValueError: no `[MASK]` in the text, `top_k` < 1, or more tokens than the model's
      `max_position_embeddings`.
  """
  if top_k < 1:
    raise ValueError(f"top_k must be at least 1, got {top_k}")
  tokenizer = model.tokenizer
  encoding = tokenizer.encode(text)
  ids = np.asarray(encoding.input_ids, np.int32)
  masked = np.flatnonzero(ids == tokenizer.mask_token_id)
  if masked.size == 0:
    raise ValueError(f"no {tokenizer.mask_token} in {text!r}: nothing to fill")
  if ids.size > model.config.max_position_embeddings:
    raise ValueError(
      f"the text is {ids.size} tokens long, more than the model's "
      f"max_position_embeddings={model.config.max_position_embeddings}"
    )
  inputs = [jnp.asarray(a[None]) for a in (ids, np.ones_like(ids), np.zeros_like(ids))]
  logits = np.asarray(_logits_fn(model.module)(model.params, *inputs).prediction_logits[0])
  logits = logits[masked].astype(np.float64)  # [masks, V]
  probabilities = np.exp(logits - logits.max(axis=-1, keepdims=True))
  probabilities /= probabilities.sum(axis=-1, keepdims=True)
  top_k = min(top_k, probabilities.shape[-1])
  guesses = []
  for row in probabilities:
    best = np.argsort(-row, kind="stable")[:top_k]
    tokens = tokenizer.convert_ids_to_tokens(best.tolist())
    guesses.append([Guess(t, int(i), float(row[i])) for t, i in zip(tokens, best, strict=True)])
  return guesses
