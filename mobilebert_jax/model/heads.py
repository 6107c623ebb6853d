"""Pretraining heads: the masked-LM head with its tied output matrix, and the NSP head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.layers import (
  Dense,
  LayerNorm,
  activation,
  dtype_of,
  kernel_init,
  partitioned,
)

Array = jax.Array


def validate_masked_positions(positions: Array, batch: int, length: int) -> None:
  """Raises a clear error for `masked_positions` the MLM head cannot gather.

  Shape and dtype are always checked; the range [0, length) only when the array is concrete
  (outside `jit`). Under `jit` an out-of-range position gathers a NaN row instead (see
  `gather_positions`).

  Args:
    positions: the `masked_positions` argument, expected int [batch, num_predictions].
    batch: batch size of the sequence output.
    length: sequence length of the sequence output.

  Raises:
    ValueError: naming the problem.
  """
  shape = tuple(getattr(positions, "shape", ()))
  if len(shape) != 2:
    raise ValueError(f"masked_positions must be [batch, num_predictions], got shape {shape}")
  if shape[0] != batch:
    raise ValueError(f"masked_positions has batch size {shape[0]} but the input has {batch}")
  dtype = getattr(positions, "dtype", None)
  if dtype is None or not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"masked_positions must be integers, got dtype {dtype}")
  if isinstance(positions, jax.core.Tracer) or not np.prod(shape):
    return
  # On the host with NumPy: a jnp reduction would be staged into an enclosing trace.
  values = np.asarray(positions)
  low, high = int(values.min()), int(values.max())
  if low < 0 or high >= length:
    bad = high if high >= length else low
    raise ValueError(f"masked position {bad} is outside the sequence [0, {length})")


def gather_positions(sequence: Array, positions: Array) -> Array:
  """Rows of a sequence at per-example positions (TF1's `gather_indexes`).

  Out-of-range positions (negative ones included) give NaN rows rather than a silent clamp or a
  wrap-around, so a bad position under `jit` poisons exactly the logits that depend on it.

  Args:
    sequence: [batch, length, width].
    positions: [batch, num_predictions] int.

  Returns:
    [batch, num_predictions, width].
  """
  length = sequence.shape[1]
  positions = jnp.where(positions < 0, length, positions)
  return jnp.take_along_axis(
    sequence, positions[..., None], axis=1, mode="fill", fill_value=jnp.nan
  )


class MobileBertLMPredictionHead(nn.Module):
  """Masked-LM head (docs/model.md §mlm-head).

  t = LayerNorm(act(h·W_t + c_t)); logits = t · [word_embeddings | extra_output_weights]ᵀ + bias.
  Features 0..E-1 of t meet the (tied) word table, features E..H-1 the extra output weights,
  stored [vocab_size, hidden_size - embedding_size] like the word table.
  """

  config: MobileBertConfig

  @nn.compact
  def __call__(
    self, hidden_states: Array, word_embeddings: Array, masked_positions: Array | None = None
  ) -> Array:
    """Computes vocabulary logits.

    Args:
      hidden_states: [..., hidden_size] encoder output; [batch, length, hidden_size] when
        `masked_positions` is given.
      word_embeddings: [vocab_size, embedding_size] the encoder's word table.
      masked_positions: optional [batch, num_predictions] int positions. The head then gathers
        those rows before the transform and projects only them onto the vocabulary (as TF1's
        `gather_indexes` and flaxformer's MLM head do): with 20 predictions per 512-token row
        that is ~25x less work than the full [batch, length, vocab_size] logits.

    Returns:
      [..., vocab_size] float32 logits, or [batch, num_predictions, vocab_size] at
      `masked_positions`.

    Raises:
      ValueError: bad `masked_positions` (see `validate_masked_positions`).
    """
    config = self.config
    if masked_positions is not None:
      if not hasattr(masked_positions, "shape"):  # a nested list
        masked_positions = np.asarray(masked_positions)
      if hidden_states.ndim != 3:
        raise ValueError(
          f"masked_positions needs a [batch, length, hidden] sequence output, got shape "
          f"{tuple(hidden_states.shape)}"
        )
      validate_masked_positions(masked_positions, *hidden_states.shape[:2])
      hidden_states = gather_positions(hidden_states, masked_positions)
    param_dtype = dtype_of(config.param_dtype)
    t = Dense(config.hidden_size, ("hidden", "hidden_out"), config, name="transform_dense")(
      hidden_states
    )
    t = activation(config.hidden_act)(t)
    t = LayerNorm("hidden", config.layer_norm_eps, config, name="transform_layer_norm")(t)
    output_matrix = word_embeddings
    extra_width = config.hidden_size - config.embedding_size
    if extra_width:
      extra = self.param(
        "extra_output_weights",
        partitioned(kernel_init(config), ("vocab", "mlm_extra")),
        (config.vocab_size, extra_width),
        param_dtype,
      )
      output_matrix = jnp.concatenate([word_embeddings, extra], axis=1)
    bias = self.param(
      "bias",
      partitioned(nn.initializers.zeros_init(), ("vocab",)),
      (config.vocab_size,),
      param_dtype,
    )
    compute = dtype_of(config.dtype)
    logits = jnp.einsum(
      "...h,vh->...v",
      t.astype(compute),
      output_matrix.astype(compute),
      preferred_element_type=jnp.float32,
    )
    return logits + bias.astype(jnp.float32)


class MobileBertClsHeads(nn.Module):
  """The `cls` scope of the pretraining-style models: `predictions` (MLM) and/or
  `seq_relationship` (NSP, logits [batch, 2] on the pooled output; 0 = "B follows A").

  Attributes:
    config: model config.
    masked_lm: build the MLM head.
    next_sentence: build the NSP head.
  """

  config: MobileBertConfig
  masked_lm: bool = True
  next_sentence: bool = True

  @nn.compact
  def __call__(
    self,
    sequence_output: Array | None,
    pooled_output: Array | None,
    word_embeddings: Array | None,
    masked_positions: Array | None = None,
  ) -> tuple[Array | None, Array | None]:
    """Computes the heads.

    Args:
      sequence_output: [batch, length, hidden] (MLM head) or None.
      pooled_output: [batch, hidden] (NSP head) or None.
      word_embeddings: [vocab_size, embedding_size] the tied word table (MLM head) or None.
      masked_positions: optional [batch, num_predictions] int positions to which the MLM head
        restricts its logits (see `MobileBertLMPredictionHead`).

    Returns:
      (MLM logits [batch, length or num_predictions, vocab_size] or None, NSP logits
      [batch, 2] or None), float32.
    """
    mlm_logits = nsp_logits = None
    if self.masked_lm:
      mlm_logits = MobileBertLMPredictionHead(self.config, name="predictions")(
        sequence_output, word_embeddings, masked_positions
      )
    if self.next_sentence:
      nsp_logits = Dense(2, ("hidden", "classes"), self.config, name="seq_relationship")(
        pooled_output
      ).astype(jnp.float32)
    return mlm_logits, nsp_logits
