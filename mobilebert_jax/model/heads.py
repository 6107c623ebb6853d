"""Pretraining heads: the masked-LM head with its tied output matrix, and the NSP head."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

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


class MobileBertLMPredictionHead(nn.Module):
  """Masked-LM head (spec 4.1).

  t = LayerNorm(act(h·W_t + c_t)); logits = t · [word_embeddings | extra_output_weights]ᵀ + bias.
  Features 0..E-1 of t meet the (tied) word table, features E..H-1 the extra output weights,
  stored [vocab_size, hidden_size - embedding_size] like the word table.
  """

  config: MobileBertConfig

  @nn.compact
  def __call__(self, hidden_states: Array, word_embeddings: Array) -> Array:
    """Computes vocabulary logits.

    Args:
      hidden_states: [..., hidden_size] encoder output (all positions, or gathered ones).
      word_embeddings: [vocab_size, embedding_size] the encoder's word table.

    Returns:
      [..., vocab_size] float32 logits.
    """
    config = self.config
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
    self, sequence_output: Array | None, pooled_output: Array | None, word_embeddings: Array | None
  ) -> tuple[Array | None, Array | None]:
    """Returns (MLM logits or None, NSP logits or None), float32."""
    mlm_logits = nsp_logits = None
    if self.masked_lm:
      mlm_logits = MobileBertLMPredictionHead(self.config, name="predictions")(
        sequence_output, word_embeddings
      )
    if self.next_sentence:
      nsp_logits = Dense(2, ("hidden", "classes"), self.config, name="seq_relationship")(
        pooled_output
      ).astype(jnp.float32)
    return mlm_logits, nsp_logits
