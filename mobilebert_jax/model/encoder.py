"""The MobileBERT encoder: trigram embeddings, bottlenecked blocks, the block stack and pooler.

The forward pass follows docs/model.md §forward step by step. Block parameters are named after the
TF2 Model Garden layout (`bottleneck_input`, `kq_shared_bottleneck`, `attention`, `ffn_{f}`,
`bottleneck_output`), with all F feed-forward networks numbered uniformly; the importers map the
TF1 and transformers names onto it.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mobilebert_jax.model import quantization
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.layers import (
  Dense,
  activation,
  constrain,
  dtype_of,
  kernel_init,
  make_norm,
  partitioned,
  quirk_eps,
)
from mobilebert_jax.model.outputs import MobileBertModelOutput

Array = jax.Array


def _block_width_axis(config: MobileBertConfig) -> str:
  """Logical name of the width inside a block (b with bottlenecks, H without)."""
  return "bottleneck" if config.use_bottleneck else "hidden"


def _attention_input_axes(config: MobileBertConfig) -> tuple[str, str]:
  """Logical names of the query/key input width and of the value input width."""
  if not config.use_bottleneck:
    return "hidden", "hidden"
  if config.use_bottleneck_attention:
    return "bottleneck", "bottleneck"
  if config.key_query_shared_bottleneck:
    return "bottleneck", "hidden"
  return "hidden", "hidden"


# ----------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------


def trigram(embeddings: Array) -> Array:
  """Concatenates (next, current, previous) token embeddings along the feature axis.

  The "next" slot of the last position and the "previous" slot of the first position are zero
  (docs/model.md §embeddings, step 2; docs/pitfalls.md P4: this order is what all references use).

  Args:
    embeddings: [batch, length, E].

  Returns:
    [batch, length, 3E].
  """
  zeros = jnp.zeros_like(embeddings[:, :1])
  next_tokens = jnp.concatenate([embeddings[:, 1:], zeros], axis=1)
  previous_tokens = jnp.concatenate([zeros, embeddings[:, :-1]], axis=1)
  return jnp.concatenate([next_tokens, embeddings, previous_tokens], axis=-1)


def lookup(table: Array, ids: Array) -> Array:
  """Row lookup that turns out-of-range ids into NaN rows instead of clamping them.

  Under `jit` the ids cannot be checked on the host; a silent clamp would give a plausible but
  wrong answer, whereas NaN poisons every output that depends on the bad token.
  """
  ids = jnp.where(ids < 0, table.shape[0], ids)
  return jnp.take(table, ids, axis=0, mode="fill", fill_value=jnp.nan)


class MobileBertEmbeddings(nn.Module):
  """Word (trigram) + position + segment embeddings, normalised, with dropout."""

  config: MobileBertConfig

  @nn.compact
  def __call__(
    self, input_ids: Array, token_type_ids: Array, attention_mask: Array | None, deterministic: bool
  ) -> Array:
    """Embeds a batch.

    Args:
      input_ids: [batch, length] int token ids.
      token_type_ids: [batch, length] int segment ids.
      attention_mask: [batch, length] 1 for real tokens (used only by the padding-invariant
        trigram option).
      deterministic: disables dropout.

    Returns:
      [batch, length, hidden_size] float32.
    """
    config = self.config
    param_dtype = dtype_of(config.param_dtype)
    init = kernel_init(config)
    word_table = self.param(
      "word_embeddings",
      partitioned(init, ("vocab", "embed")),
      (config.vocab_size, config.embedding_size),
      param_dtype,
    )
    position_table = self.param(
      "position_embeddings",
      partitioned(init, ("position", "hidden")),
      (config.max_position_embeddings, config.hidden_size),
      param_dtype,
    )
    type_table = self.param(
      "token_type_embeddings",
      partitioned(init, ("type_vocab", "hidden")),
      (config.type_vocab_size, config.hidden_size),
      param_dtype,
    )

    length = input_ids.shape[1]
    words = lookup(word_table, input_ids).astype(dtype_of(config.dtype))
    if config.padding_invariant_trigram and attention_mask is not None:
      words = words * attention_mask[..., None].astype(words.dtype)
    if config.trigram_input:
      words = trigram(words)
    if config.has_embedding_projection:
      words = Dense(
        config.hidden_size, ("embed_input", "hidden"), config, name="embedding_transformation"
      )(words)
    positions = position_table[:length].astype(jnp.float32)
    types = lookup(type_table, token_type_ids).astype(jnp.float32)
    embeddings = words.astype(jnp.float32) + positions[None] + types
    embeddings = make_norm(config, "hidden", "norm", epsilon=quirk_eps(config))(embeddings)
    embeddings = nn.Dropout(config.hidden_dropout_prob)(embeddings, deterministic=deterministic)
    return embeddings

  def word_embedding_table(self) -> Array:
    """The [vocab_size, embedding_size] word table (shared with the MLM output layer)."""
    return nn.meta.unbox(self.get_variable("params", "word_embeddings"))


# ----------------------------------------------------------------------------------------------
# One block
# ----------------------------------------------------------------------------------------------


class BottleneckLayer(nn.Module):
  """Dense H -> b followed by the block norm (input and shared key/query bottlenecks)."""

  config: MobileBertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: [batch, length, hidden]. Returns: [batch, length, intra_bottleneck] float32."""
    config = self.config
    y = Dense(config.intra_bottleneck_size, ("hidden", "bottleneck"), config, name="dense")(x)
    return make_norm(config, "bottleneck", "norm")(y)


class SelfAttention(nn.Module):
  """Multi-head attention, output projection and the normalised residual
  (docs/model.md §block, steps 3-7).

  Attributes:
    config: model config.
    deterministic: disables dropout.
  """

  config: MobileBertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(
    self, query_input: Array, key_input: Array, value_input: Array, residual: Array, mask: Array
  ) -> tuple[Array, Array, Array]:
    """Attends.

    Args:
      query_input: [batch, length, attention_input_size].
      key_input: [batch, length, attention_input_size].
      value_input: [batch, length, value_input_size].
      residual: [batch, length, true_hidden_size] tensor added before the norm.
      mask: [batch, 1, 1, length] bool, True for keys that may be attended to.

    Returns:
      ([batch, length, true_hidden_size] float32 output,
       [batch, heads, length, length] float32 attention probabilities before dropout,
       [batch, heads, length, length] float32 masked attention logits: the scaled scores with
       masked keys replaced as `config.masked_attention_logit` says, exactly the softmax's
       input, so `softmax(logits) == probs`). Unused outputs cost nothing under `jit`.
    """
    config = self.config
    heads, head_size = config.num_attention_heads, config.attention_head_size
    qk_axis, v_axis = _attention_input_axes(config)
    query = Dense((heads, head_size), (qk_axis, "heads", "kv"), config, name="query")(query_input)
    key = Dense((heads, head_size), (qk_axis, "heads", "kv"), config, name="key")(key_input)
    value = Dense((heads, head_size), (v_axis, "heads", "kv"), config, name="value")(value_input)

    # Scores in float32: the product is scaled after the matmul, as TF1 and transformers do.
    scores = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
    if config.quantization_aware:
      # The original QAT's -6 fill unless another value is set (a huge fill has no 8-bit range).
      fill = -6.0 if config.masked_attention_logit is None else config.masked_attention_logit
      scores = quantization.AttentionScoreQuantizer(
        config.quantization_export, config.quantization_points == "tflite", name="scores"
      )(scores, mask, head_size**-0.5, fill)
    else:
      scores = scores * np.float32(head_size**-0.5)
      if config.masked_attention_logit is None:
        fill = jnp.finfo(jnp.float32).min
      else:
        fill = jnp.float32(config.masked_attention_logit)
      # The finite fill (not -inf) keeps log_softmax of the logits finite at masked keys, which
      # attention transfer needs: there the teacher's probability is 0 and 0 * -inf would be NaN.
      scores = jnp.where(mask, scores, fill)
    probs = jax.nn.softmax(scores, axis=-1)
    if config.quantization_aware and config.quantization_points == "tflite":
      probs = quantization.quantize_probabilities(probs, config.quantization_export)
    dropped = nn.Dropout(config.attention_probs_dropout_prob)(
      probs, deterministic=self.deterministic
    )
    context = jnp.einsum("bhqk,bkhd->bqhd", dropped.astype(value.dtype), value)
    if config.quantization_aware:
      context = quantization.quantize_context(context, config.quantization_export)

    width = config.true_hidden_size
    width_axis = _block_width_axis(config)
    output = Dense(width, ("heads", "kv", width_axis), config, contract_dims=2, name="output")(
      context
    )
    if not config.use_bottleneck:
      output = nn.Dropout(config.hidden_dropout_prob)(output, deterministic=self.deterministic)
    output = make_norm(config, width_axis, "norm")(output.astype(jnp.float32) + residual)
    return output, probs, scores


class FeedForward(nn.Module):
  """One FFN: dense b -> I, activation, dense I -> b, normalised residual.

  Attributes:
    config: model config.
    is_last: the block's final FFN (transformers' `intermediate`/`output`), which has hidden
      dropout in the plain-BERT path and, in transformers, the ε quirk.
    deterministic: disables dropout.
  """

  config: MobileBertConfig
  is_last: bool = False
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x: [batch, length, true_hidden]. Returns: same shape, float32."""
    config = self.config
    width_axis = _block_width_axis(config)
    h = Dense(config.intermediate_size, (width_axis, "mlp"), config, name="intermediate")(x)
    h = activation(config.hidden_act)(h)
    h = Dense(config.true_hidden_size, ("mlp", width_axis), config, name="output")(h)
    if self.is_last and not config.use_bottleneck:
      h = nn.Dropout(config.hidden_dropout_prob)(h, deterministic=self.deterministic)
    eps = quirk_eps(config) if self.is_last else None
    return make_norm(config, width_axis, "norm", epsilon=eps)(h.astype(jnp.float32) + x)


class OutputBottleneck(nn.Module):
  """Dense b -> H, dropout, normalised residual with the block input
  (docs/model.md §block, step 9)."""

  config: MobileBertConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, block_input: Array) -> Array:
    """Args: x: [batch, length, b]; block_input: [batch, length, H]. Returns: [.., H] f32."""
    config = self.config
    y = Dense(config.hidden_size, ("bottleneck", "hidden"), config, name="dense")(x)
    y = nn.Dropout(config.hidden_dropout_prob)(y, deterministic=self.deterministic)
    return make_norm(config, "hidden", "norm")(y.astype(jnp.float32) + block_input)


class MobileBertBlock(nn.Module):
  """One MobileBERT block (or a plain BERT block when `use_bottleneck` is False).

  The call signature `(carry, mask) -> (carry, per_layer_outputs)` lets the same module run
  unrolled or under `nn.scan`.

  Attributes:
    config: model config.
    deterministic: disables dropout.
    output_hidden_states: also return this block's output as a per-layer output.
    output_attentions: also return this block's attention probabilities.
    output_attention_logits: also return this block's masked pre-softmax attention logits.
  """

  config: MobileBertConfig
  deterministic: bool = True
  output_hidden_states: bool = False
  output_attentions: bool = False
  output_attention_logits: bool = False

  @nn.compact
  def __call__(
    self, hidden_states: Array, mask: Array
  ) -> tuple[Array, tuple[Array | None, Array | None, Array | None]]:
    """Runs the block.

    Args:
      hidden_states: [batch, length, hidden_size] float32 block input X.
      mask: [batch, 1, 1, length] bool key mask.

    Returns:
      (output [batch, length, hidden_size] float32,
       (the output again if `output_hidden_states` else None,
        attention probabilities [batch, heads, length, length] if `output_attentions` else None,
        attention logits [batch, heads, length, length] if `output_attention_logits` else None)).
    """
    config = self.config
    x = hidden_states
    if config.use_bottleneck:
      layer_input = BottleneckLayer(config, name="bottleneck_input")(x)
      if config.use_bottleneck_attention:
        query_input = key_input = value_input = layer_input
      elif config.key_query_shared_bottleneck:
        shared = BottleneckLayer(config, name="kq_shared_bottleneck")(x)
        query_input = key_input = shared
        value_input = x
      else:
        query_input = key_input = value_input = x
    else:
      query_input = key_input = value_input = layer_input = x

    attention_output, probs, logits = SelfAttention(config, self.deterministic, name="attention")(
      query_input, key_input, value_input, layer_input, mask
    )
    ffn_output = attention_output
    for f in range(config.num_feedforward_networks):
      is_last = f == config.num_feedforward_networks - 1
      ffn_output = FeedForward(config, is_last, self.deterministic, name=f"ffn_{f}")(ffn_output)
    if config.use_bottleneck:
      output = OutputBottleneck(config, self.deterministic, name="bottleneck_output")(ffn_output, x)
    else:
      output = ffn_output
    output = constrain(output, ("batch", "length", "hidden"))
    return output, (
      output if self.output_hidden_states else None,
      probs if self.output_attentions else None,
      logits if self.output_attention_logits else None,
    )


# ----------------------------------------------------------------------------------------------
# The block stack
# ----------------------------------------------------------------------------------------------

_REMAT_POLICIES = {
  "full": None,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def resolve_num_blocks(config: MobileBertConfig, num_blocks: int | None) -> int:
  """How many leading blocks a call runs: `num_blocks`, or all of them when it is None.

  Args:
    config: model config.
    num_blocks: None, or a static Python int in [1, num_hidden_layers].

  Returns:
    The number of blocks, an int.

  Raises:
    TypeError: `num_blocks` is not a Python int (a traced value cannot choose the graph).
    ValueError: `num_blocks` is outside [1, num_hidden_layers].
  """
  depth = config.num_hidden_layers
  if num_blocks is None:
    return depth
  if isinstance(num_blocks, bool) or not isinstance(num_blocks, int | np.integer):
    raise TypeError(
      f"num_blocks must be a static Python int (it selects which blocks are compiled), got "
      f"{type(num_blocks).__name__}"
    )
  if not 1 <= num_blocks <= depth:
    raise ValueError(f"num_blocks={num_blocks} is outside [1, num_hidden_layers={depth}]")
  return int(num_blocks)


def _leading_slices(params: dict, count: int) -> dict:
  """The first `count` entries of every stacked [L, ...] parameter (a view for `nn.scan`)."""
  return jax.tree.map(lambda x: x[:count], params)


class MobileBertEncoder(nn.Module):
  """The stack of `num_hidden_layers` blocks, unrolled or scanned.

  Unrolled, block i's parameters live under `layer_{i}`; with `config.scan_layers` they are
  stacked on a leading axis (logical name "layers") under `layers`. `stack_layers` and
  `unstack_layers` in `mobilebert_jax.weights.layout` convert between the two.

  A call may run only the first `num_blocks` blocks (progressive layer-wise knowledge transfer
  trains stage k with blocks 0..k, i.e. `num_blocks=k + 1`). The parameter tree is always the full
  stack's: unrolled, the loop simply stops early and the later `layer_{i}` are never read; scanned,
  the scan runs over the first `num_blocks` slices of the stacked [L, ...] parameters. Either way
  no work is done for the later blocks and their gradients are exactly zero (the transpose of the
  slice pads with zeros). Dropout keys: unrolled, a block draws the same dropout mask whatever
  `num_blocks` is; scanned, the rng is split into `num_blocks` keys, so masks differ from those of
  a full-depth call (both are valid dropout).
  """

  config: MobileBertConfig

  @nn.compact
  def __call__(
    self,
    hidden_states: Array,
    mask: Array,
    deterministic: bool,
    output_hidden_states: bool,
    output_attentions: bool,
    output_attention_logits: bool = False,
    num_blocks: int | None = None,
  ) -> tuple[Array, tuple[Array, ...] | None, tuple[Array, ...] | None, tuple[Array, ...] | None]:
    """Runs the blocks.

    Args:
      hidden_states: [batch, length, hidden] embedding output.
      mask: [batch, 1, 1, length] bool key mask.
      deterministic: disables dropout.
      output_hidden_states: collect every block's output.
      output_attentions: collect every block's attention probabilities.
      output_attention_logits: collect every block's masked pre-softmax attention logits.
      num_blocks: run blocks 0..num_blocks-1 only (a static int in [1, num_hidden_layers]);
        None runs all. Initialisation always builds the full stack, so it must be None there.

    Returns:
      (output of the last block run [batch, length, hidden],
       per-block outputs or None,
       per-block attention probabilities [batch, heads, length, length] or None,
       per-block attention logits [batch, heads, length, length] or None);
      each tuple has one entry per block run.

    Raises:
      TypeError, ValueError: a bad `num_blocks` (see `resolve_num_blocks`), or a truncated stack
        at initialisation.
    """
    config = self.config
    depth = resolve_num_blocks(config, num_blocks)
    truncated = depth < config.num_hidden_layers
    if truncated and self.is_initializing():
      raise ValueError(
        f"num_blocks={depth} at initialisation would create only part of the stack; initialise "
        f"the full model and pass num_blocks to apply"
      )
    block_cls = MobileBertBlock
    if config.remat_policy != "none":
      block_cls = nn.remat(
        block_cls, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=not config.scan_layers
      )
    kwargs = dict(
      config=config,
      deterministic=deterministic,
      output_hidden_states=output_hidden_states,
      output_attentions=output_attentions,
      output_attention_logits=output_attention_logits,
    )
    if config.scan_layers:
      stack = nn.scan(
        block_cls,
        variable_axes={"params": 0, quantization.RANGES: 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(nn.broadcast,),
        length=depth,
        metadata_params={nn.PARTITION_NAME: "layers"},
      )
      if truncated:
        # The scan sees a [depth, ...] view of the stored [L, ...] parameters; the stored tree
        # (what init creates and apply takes) stays the full stack's.
        stack = nn.map_variables(
          stack, "params", trans_in_fn=functools.partial(_leading_slices, count=depth)
        )
      hidden_states, per_layer = stack(**kwargs, name="layers")(hidden_states, mask)
      # Stacked [depth, ...] per-layer outputs -> one entry per block.
      per_layer = tuple(None if x is None else tuple(x) for x in per_layer)
    else:
      outputs = []
      for i in range(depth):
        hidden_states, layer_outputs = block_cls(**kwargs, name=f"layer_{i}")(hidden_states, mask)
        outputs.append(layer_outputs)
      per_layer = tuple(
        tuple(layer[j] for layer in outputs) if wanted else None
        for j, wanted in enumerate(
          (output_hidden_states, output_attentions, output_attention_logits)
        )
      )
    return hidden_states, *per_layer


class MobileBertPooler(nn.Module):
  """First-token pooling: tanh(Dense(h[:, 0])) or, without `classifier_activation`, h[:, 0]."""

  config: MobileBertConfig

  @nn.compact
  def __call__(self, hidden_states: Array) -> Array:
    """Args: hidden_states: [batch, length, hidden]. Returns: [batch, hidden] float32."""
    first = hidden_states[:, 0]
    if not self.config.classifier_activation:
      return first
    pooled = Dense(self.config.hidden_size, ("hidden", "hidden_out"), self.config, name="dense")(
      first
    )
    return jnp.tanh(pooled.astype(jnp.float32))


# ----------------------------------------------------------------------------------------------
# The base model
# ----------------------------------------------------------------------------------------------


def _is_concrete(x: object) -> bool:
  return not isinstance(x, jax.core.Tracer)


def validate_inputs(
  config: MobileBertConfig,
  input_ids: Array,
  attention_mask: Array | None,
  token_type_ids: Array | None,
) -> None:
  """Raises a clear error for inputs the model cannot take.

  Shapes are always checked. Values (ids within the tables) are checked when the arrays are
  concrete, i.e. outside `jit`; under `jit` an out-of-range id yields NaN outputs instead.

  Raises:
    ValueError: naming the problem.
  """
  shape = tuple(input_ids.shape)
  if len(shape) != 2:
    raise ValueError(f"input_ids must be [batch, length], got shape {shape}")
  if not jnp.issubdtype(input_ids.dtype, jnp.integer):
    raise ValueError(f"input_ids must be integers, got dtype {input_ids.dtype}")
  if shape[1] > config.max_position_embeddings:
    raise ValueError(
      f"sequence length {shape[1]} exceeds max_position_embeddings "
      f"({config.max_position_embeddings}): the position table has no row for it"
    )
  if shape[1] == 0:
    raise ValueError("input_ids has length 0")
  for name, other in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
    if other is not None and tuple(other.shape) != shape:
      raise ValueError(f"{name} has shape {tuple(other.shape)} but input_ids has shape {shape}")
  # Concrete arrays are checked on the host with NumPy: jnp reductions would be staged into an
  # enclosing trace when the ids are constants captured by a jitted function.
  vocab = config.vocab_size
  _check_id_range(input_ids, vocab, f"token id {{}} is outside the vocabulary [0, {vocab})")
  if token_type_ids is not None:
    types = config.type_vocab_size
    message = f"token type id {{}} is outside [0, type_vocab_size={types})"
    _check_id_range(token_type_ids, types, message)


def _check_id_range(ids: Array, size: int, message: str) -> None:
  """Raises ValueError(message.format(bad_id)) when concrete `ids` fall outside [0, size)."""
  if not _is_concrete(ids) or not ids.size:
    return
  values = np.asarray(ids)
  low, high = int(values.min()), int(values.max())
  if low < 0 or high >= size:
    bad = high if high >= size else low
    raise ValueError(message.format(bad))


class MobileBertModel(nn.Module):
  """The bare encoder: embeddings, blocks and (optionally) the pooler.

  Attributes:
    config: model config.
    add_pooling_layer: build the pooler (transformers drops it for the MLM, token
      classification and QA models).
  """

  config: MobileBertConfig
  add_pooling_layer: bool = True

  def setup(self):
    self.embeddings = MobileBertEmbeddings(self.config)
    self.encoder = MobileBertEncoder(self.config)
    if self.add_pooling_layer:
      self.pooler = MobileBertPooler(self.config)

  def __call__(
    self,
    input_ids: Array,
    attention_mask: Array | None = None,
    token_type_ids: Array | None = None,
    deterministic: bool = True,
    output_hidden_states: bool = False,
    output_attentions: bool = False,
    *,
    output_attention_logits: bool = False,
    num_blocks: int | None = None,
  ) -> MobileBertModelOutput:
    """Encodes a batch.

    Args:
      input_ids: [batch, length] token ids.
      attention_mask: [batch, length], 1 for real tokens and 0 for padding (default all 1).
      token_type_ids: [batch, length] segment ids (default all 0).
      deterministic: disables dropout; pass False and a "dropout" rng to train.
      output_hidden_states: return the embedding output and every block's output.
      output_attentions: return every block's attention probabilities.
      output_attention_logits: return every block's masked pre-softmax attention logits (what
        attention transfer takes `log_softmax` of; see `MobileBertModelOutput`).
      num_blocks: run only blocks 0..num_blocks-1 (a static int in [1, num_hidden_layers]; None,
        the default, runs all). `last_hidden_state` is then block num_blocks-1's output and the
        per-block tuples have num_blocks entries (`hidden_states` num_blocks + 1). The pooler, if
        any, is applied to that output as usual: only meaningful when training a shallow model
        with its heads, not for layer-wise transfer. Parameters are always the full stack's;
        later blocks are not run and get zero gradients. Must be None at initialisation.

    Returns:
      `MobileBertModelOutput`.

    Raises:
      ValueError: on inputs the model cannot take (see `validate_inputs`), or a bad
        `num_blocks` (see `resolve_num_blocks`; TypeError for a non-int).
    """
    validate_inputs(self.config, input_ids, attention_mask, token_type_ids)
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    embeddings = self.embeddings(input_ids, token_type_ids, attention_mask, deterministic)
    embeddings = constrain(embeddings, ("batch", "length", "hidden"))
    if attention_mask is None:
      mask = jnp.ones((input_ids.shape[0], 1, 1, input_ids.shape[1]), dtype=bool)
    else:
      mask = (attention_mask != 0)[:, None, None, :]
    last, per_layer_hidden, per_layer_probs, per_layer_logits = self.encoder(
      embeddings,
      mask,
      deterministic,
      output_hidden_states,
      output_attentions,
      output_attention_logits,
      num_blocks,
    )
    pooled = self.pooler(last) if self.add_pooling_layer else None
    hidden_states = (embeddings, *per_layer_hidden) if output_hidden_states else None
    return MobileBertModelOutput(
      last_hidden_state=last,
      pooler_output=pooled,
      hidden_states=hidden_states,
      attentions=per_layer_probs,
      attention_logits=per_layer_logits,
    )

  def word_embedding_table(self) -> Array:
    """The [vocab_size, embedding_size] word table (tied to the MLM output layer)."""
    return self.embeddings.word_embedding_table()
