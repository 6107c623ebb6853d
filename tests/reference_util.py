"""Parity-test references: randomised transformers MobileBERTs, and their weights in our layout.

A parity test builds the PyTorch model that transformers makes from one of our configs, gives
every parameter a random value (biases and norm parameters included: the default initialisation
sets them to 0 and 1, which hides mapping errors), converts its state dict through the name
table in `mobilebert_jax.weights.hf_names`, and compares every output of both models.

The conversion here walks the table directly and checks it both ways (every table entry exists
in the state dict with the right shape, every parameter of ours is produced exactly once, every
state-dict key is either mapped or a known tied copy/buffer), so a test that uses it also tests
the table. It deliberately does not go through `mobilebert_jax.weights.loading`, which has its
own tests.

Typical use:

    config = MobileBertConfig(**small_sizes)
    torch_model, params = build_reference(config, "MobileBertForQuestionAnswering", seed=0)
    batch = make_batch(config, batch_size=3, length=12)
    ref = run_reference(torch_model, batch)
    ours = run_ours(config, "MobileBertForQuestionAnswering", params, batch)
    errors = output_errors(ours, ref)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import traverse_util

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MODEL_CLASSES, abstract_params
from mobilebert_jax.weights import hf_names

PyTree = Any

# The eight classes that exist in both libraries under the same name.
MODEL_CLASS_NAMES: tuple[str, ...] = tuple(MODEL_CLASSES)

# Parity policy of CONTRIBUTING.md: max|ours - ref| <= 1e-5 * max|ref|, per tensor, in float32.
RELATIVE_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------------------------
# The transformers model
# ----------------------------------------------------------------------------------------------


def hf_config(
  config: MobileBertConfig, attn_implementation: str = "eager"
) -> transformers.MobileBertConfig:
  """The transformers config that describes the same architecture as `config`.

  Args:
    config: our config. Implementation switches (scan, remat, dtypes, ...) are not part of it.
    attn_implementation: transformers attention path; "eager" computes the probabilities
      explicitly, so they can be returned and compared.

  Returns:
    A `transformers.MobileBertConfig`.
  """
  fields = config.to_hf_dict()
  # Derived or written only for files: transformers recomputes or rejects them as kwargs.
  for key in ("model_type", "true_hidden_size", "label2id"):
    fields.pop(key, None)
  if config.id2label is None:
    fields.pop("id2label")
  else:
    fields["id2label"] = {int(k): v for k, v in fields["id2label"].items()}
  return transformers.MobileBertConfig(**fields, attn_implementation=attn_implementation)


def _norm_modules() -> tuple[type, ...]:
  from transformers.models.mobilebert.modeling_mobilebert import NoNorm

  return (torch.nn.LayerNorm, NoNorm)


def randomize_(model: torch.nn.Module, seed: int = 0, weight_gain: float = 0.35) -> None:
  """Gives every parameter of a transformers MobileBERT a random, non-default value, in place.

  Dense weights get standard deviation `weight_gain / sqrt(fan_in)`, so that activations stay
  moderate whatever the widths; biases and norm offsets are large enough that a mis-mapped one
  changes the outputs far beyond the parity tolerance; norm scales are 1 + noise, so a swapped
  scale/offset pair is caught as well.

  Why the gain is below 1: a NoNorm block has no statistics to bound its output, so with random
  weights the residual stream grows by a constant factor per block. At gain 1 the released
  24-block model reaches ~1e15 and its attention logits become so large that fp32 rounding is
  amplified exponentially in *any* implementation (transformers in fp32 then differs from
  transformers in fp64 by as much as from us: chaotic, not wrong). At 0.35 the released model
  stays below ~1e2 and fp32 agrees with fp64 to ~1e-6 in every layer.

  Args:
    model: any transformers MobileBERT class.
    seed: seed of the torch generator.
    weight_gain: standard deviation of a dense weight times sqrt(fan_in).
  """
  generator = torch.Generator().manual_seed(seed)

  def normal(shape: torch.Size, std: float, mean: float = 0.0) -> torch.Tensor:
    return mean + std * torch.randn(shape, generator=generator, dtype=torch.float32)

  norm_types = _norm_modules()
  seen: set[int] = set()
  with torch.no_grad():
    for module in model.modules():
      for name, param in module.named_parameters(recurse=False):
        if id(param) in seen:  # tied parameters are visited once
          continue
        seen.add(id(param))
        if isinstance(module, norm_types):
          value = normal(param.shape, 0.3, 1.0) if name == "weight" else normal(param.shape, 0.3)
        elif isinstance(module, torch.nn.Embedding):
          value = normal(param.shape, 0.5)
        elif name == "weight" and param.ndim == 2:  # every nn.Linear: [out, in]
          value = normal(param.shape, weight_gain * param.shape[1] ** -0.5)
        else:  # biases, including the MLM output bias (a bare Parameter)
          value = normal(param.shape, 0.3)
        param.copy_(value)


def build_torch_model(
  config: MobileBertConfig,
  model_class: str,
  seed: int = 0,
  attn_implementation: str = "eager",
  weight_gain: float = 0.35,
) -> torch.nn.Module:
  """Builds and randomises the transformers model of `model_class` for `config` (eval mode).

  See `randomize_` for `seed` and `weight_gain`.

  Raises:
    AssertionError: transformers did not tie the MLM decoder to the word embeddings (the
      conversion relies on that tie).
  """
  torch.manual_seed(seed)
  cls = getattr(transformers, model_class)
  model = cls(hf_config(config, attn_implementation)).eval()
  randomize_(model, seed, weight_gain)
  if model_class in ("MobileBertForPreTraining", "MobileBertForMaskedLM"):
    decoder = model.cls.predictions.decoder
    assert decoder.weight is model.mobilebert.embeddings.word_embeddings.weight, "decoder untied"
    assert decoder.bias is model.cls.predictions.bias, "decoder bias untied"
  return model


# ----------------------------------------------------------------------------------------------
# State dict -> our parameters
# ----------------------------------------------------------------------------------------------


def state_dict_to_params(
  state_dict: Mapping[str, torch.Tensor | np.ndarray], config: MobileBertConfig, model_class: str
) -> PyTree:
  """Converts a transformers state dict to our (unscanned) parameter tree via `hf_names`.

  Args:
    state_dict: transformers state dict of `model_class`.
    config: our config of the model.
    model_class: class name, e.g. "MobileBertForPreTraining".

  Returns:
    Nested dict of float32 NumPy arrays, the structure of `init_params` for the class.

  Raises:
    AssertionError: naming the first mismatch (missing key, wrong shape, parameter produced
      twice or not at all, state-dict key left unused).
  """
  module = MODEL_CLASSES[model_class](config)
  our_shapes = traverse_util.flatten_dict(abstract_params(module))
  table = hf_names.model_table(config, model_class)
  params: dict[tuple[str, ...], np.ndarray] = {}
  for mapping in table:
    assert mapping.theirs in state_dict, f"{mapping.theirs} not in the {model_class} state dict"
    assert mapping.ours in our_shapes, f"{mapping.ours} is not one of our parameters"
    assert mapping.ours not in params, f"{mapping.ours} produced twice by the name table"
    tensor = state_dict[mapping.theirs]
    array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else tensor
    expected_theirs = hf_names.their_shape(our_shapes[mapping.ours].shape, mapping.transform)
    assert array.shape == expected_theirs, (
      f"{mapping.theirs}: shape {array.shape}, the table expects {expected_theirs}"
    )
    converted = hf_names.to_ours(array, mapping.transform, our_shapes[mapping.ours].shape)
    assert converted.shape == our_shapes[mapping.ours].shape, mapping
    params[mapping.ours] = converted.astype(np.float32)
  missing = sorted("/".join(p) for p in set(our_shapes) - set(params))
  assert not missing, f"the name table produces no value for {missing}"
  used = {m.theirs for m in table} | set(hf_names.tied_or_buffer_keys(model_class))
  unused = sorted(set(state_dict) - used)
  assert not unused, f"state-dict keys the name table does not map: {unused}"
  return traverse_util.unflatten_dict(params)


def build_reference(
  config: MobileBertConfig,
  model_class: str,
  seed: int = 0,
  attn_implementation: str = "eager",
  weight_gain: float = 0.35,
) -> tuple[torch.nn.Module, PyTree]:
  """A randomised transformers model and the same weights in our layout.

  Returns:
    (torch model in eval mode, our parameter tree).
  """
  model = build_torch_model(config, model_class, seed, attn_implementation, weight_gain)
  return model, state_dict_to_params(model.state_dict(), config, model_class)


# ----------------------------------------------------------------------------------------------
# Inputs and running both models
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Batch:
  """Model inputs as int64 NumPy arrays, [batch, length] or [batch, choices, length]."""

  input_ids: np.ndarray
  attention_mask: np.ndarray
  token_type_ids: np.ndarray


def make_batch(
  config: MobileBertConfig,
  batch_size: int = 3,
  length: int = 12,
  seed: int = 0,
  num_choices: int | None = None,
) -> Batch:
  """A batch with right padding of different lengths and two segments per example.

  Example 0 is unpadded; the others end after a random number (at least 3) of real tokens and
  carry the [PAD] id 0 (whose embedding row is random in a randomised model, so padding is
  visible through the trigram, docs/pitfalls.md P3). Token type 1 starts half way through the real
  tokens; padded positions have type 0, as tokenizers produce. Real tokens avoid id 0.

  Args:
    config: gives vocab and type-vocab sizes.
    batch_size: number of examples (of questions, for multiple choice).
    length: padded length T.
    seed: NumPy seed.
    num_choices: if set, inputs are [batch_size, num_choices, length].

  Returns:
    The `Batch`.
  """
  rng = np.random.default_rng(seed)
  rows = batch_size * (num_choices or 1)
  ids = rng.integers(1, config.vocab_size, size=(rows, length), dtype=np.int64)
  real_lengths = np.full(rows, length)
  if rows > 1:
    real_lengths[1:] = rng.integers(min(3, length), length + 1, size=rows - 1)
    real_lengths[1] = max(min(3, length), length - length // 3)  # always one padded example
  positions = np.arange(length)[None, :]
  mask = (positions < real_lengths[:, None]).astype(np.int64)
  ids = np.where(mask == 1, ids, 0)
  types = ((positions >= (real_lengths[:, None] + 1) // 2) & (mask == 1)).astype(np.int64)
  types = np.minimum(types, config.type_vocab_size - 1)
  shape = (batch_size, num_choices, length) if num_choices else (batch_size, length)
  return Batch(ids.reshape(shape), mask.reshape(shape), types.reshape(shape))


def run_reference(model: torch.nn.Module, batch: Batch, **labels: Any) -> Any:
  """Runs a transformers model on `batch` with hidden states and attentions returned.

  Args:
    model: the torch model (eval mode).
    batch: inputs.
    **labels: label tensors or arrays (`labels`, `start_positions`, ...), passed through.

  Returns:
    The transformers output object.
  """
  kwargs = {k: torch.as_tensor(np.asarray(v)) for k, v in labels.items()}
  with torch.no_grad():
    return model(
      input_ids=torch.as_tensor(batch.input_ids),
      attention_mask=torch.as_tensor(batch.attention_mask),
      token_type_ids=torch.as_tensor(batch.token_type_ids),
      output_hidden_states=True,
      output_attentions=True,
      **kwargs,
    )


def run_ours(
  config: MobileBertConfig,
  model_class: str,
  params: PyTree,
  batch: Batch,
  output_hidden_states: bool = True,
  output_attentions: bool = True,
) -> Any:
  """Runs our model class (deterministic, not jitted) on `batch`."""
  module = MODEL_CLASSES[model_class](config)
  return module.apply(
    {"params": params},
    jnp.asarray(batch.input_ids),
    attention_mask=jnp.asarray(batch.attention_mask),
    token_type_ids=jnp.asarray(batch.token_type_ids),
    deterministic=True,
    output_hidden_states=output_hidden_states,
    output_attentions=output_attentions,
  )


# ----------------------------------------------------------------------------------------------
# Comparing outputs
# ----------------------------------------------------------------------------------------------


def to_numpy(x: Any) -> np.ndarray:
  """A torch tensor or JAX array as a float64-free NumPy array (no copy of the dtype)."""
  if isinstance(x, torch.Tensor):
    return x.detach().cpu().numpy()
  return np.asarray(jax.device_get(x))


def relative_error(ours: Any, ref: Any) -> float:
  """max|ours - ref| / max|ref| (the parity metric), after checking the shapes agree.

  Raises:
    AssertionError: different shapes, or non-finite values on either side.
  """
  a, b = to_numpy(ours).astype(np.float64), to_numpy(ref).astype(np.float64)
  assert a.shape == b.shape, f"shape {a.shape} vs reference {b.shape}"
  assert np.all(np.isfinite(a)), "non-finite values in our output"
  assert np.all(np.isfinite(b)), "non-finite values in the reference output"
  scale = np.max(np.abs(b))
  assert scale > 0, "the reference is identically zero; the comparison would be vacuous"
  return float(np.max(np.abs(a - b)) / scale)


def _output_fields(ours: Any) -> Iterator[str]:
  for field in dataclasses.fields(ours):
    if getattr(ours, field.name) is not None:
      yield field.name


def output_errors(ours: Any, ref: Any) -> dict[str, float]:
  """Relative error of every output field, one entry per tensor.

  Every non-None field of our output must exist in the reference output (and vice versa, apart
  from `loss`); tuples (`hidden_states`, `attentions`) must have the same length and are
  reported per element as `hidden_states[i]`.

  Args:
    ours: one of our output dataclasses.
    ref: the transformers output of the same class.

  Returns:
    {field name: relative error}.
  """
  errors: dict[str, float] = {}
  ours_fields = set(_output_fields(ours))
  ref_fields = {k for k, v in ref.items() if v is not None and k != "loss"}
  assert ours_fields == ref_fields, f"fields: ours {sorted(ours_fields)}, ref {sorted(ref_fields)}"
  for name in sorted(ours_fields):
    mine, theirs = getattr(ours, name), ref[name]
    if isinstance(mine, tuple):
      assert len(mine) == len(theirs), f"{name}: {len(mine)} entries vs {len(theirs)}"
      for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        errors[f"{name}[{i}]"] = relative_error(a, b)
    else:
      errors[name] = relative_error(mine, theirs)
  return errors


def assert_parity(errors: Mapping[str, float], tolerance: float = RELATIVE_TOLERANCE) -> float:
  """Asserts every error is within `tolerance`; returns the worst one.

  Raises:
    AssertionError: listing every tensor over the tolerance.
  """
  assert errors, "nothing was compared"
  bad = {k: v for k, v in errors.items() if not v <= tolerance}
  assert not bad, f"relative error above {tolerance:g}: " + ", ".join(
    f"{k}={v:.3g}" for k, v in sorted(bad.items())
  )
  return max(errors.values())
