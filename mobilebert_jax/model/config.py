"""`MobileBertConfig`: the typed, frozen description of one MobileBERT architecture.

Field names follow transformers' `MobileBertConfig` (which are also the keys of the original TF1
`bert_config.json`). The two JSON dialects disagree on the defaults of keys they omit
(docs/pitfalls.md P7): the TF1 `BertConfig` defaults describe a plain BERT (no trigram, no
bottleneck, LayerNorm, 16 token types, ...) while transformers' defaults describe the released
MobileBERT student. A reader must therefore know which dialect it reads;
`from_dict(..., source=...)` does, and guesses only from unambiguous markers when asked to. Each
dialect's keys, defaults and markers are in `mobilebert_jax.weights.config_dialects`; this module
keeps our own form.

Besides the architecture, the config carries the few implementation switches of this port
(`scan_layers`, `remat_policy`, `dtype`, `param_dtype`, ...). They never change the numbers of an
fp32 forward pass, except the quantization switches (`quantization_*`, which simulate int8), and
they are not written into HF `config.json` files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any, Literal

from mobilebert_jax.weights import config_dialects

ConfigSource = Literal["auto", "hf", "tf1", "tf2"]

ACTIVATIONS = ("relu", "relu6", "gelu", "gelu_new", "gelu_pytorch_tanh", "tanh", "silu", "swish")
NORMALIZATION_TYPES = ("no_norm", "layer_norm")
REMAT_POLICIES = ("none", "full", "dots", "dots_with_no_batch_dims")
DTYPES = ("float32", "bfloat16", "float16")
# Which tensors quantization-aware training fake-quantizes (`MobileBertConfig.quantization_points`).
QUANTIZATION_POINTS = ("original", "tflite")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MobileBertConfig:
  """Architecture and implementation switches of a MobileBERT model.

  The defaults are transformers' defaults, i.e. the released `google/mobilebert-uncased`
  student except for `classifier_activation` (transformers defaults it to True, the released
  model has no pooler dense: docs/pitfalls.md P6). Use `MobileBertConfig.from_preset(...)` for the
  released architectures.

  Attributes:
    vocab_size: rows of the WordPiece embedding table.
    embedding_size: width E of the token embedding table (128 in MobileBERT).
    hidden_size: inter-block width H (embedding output, block input/output, pooler, heads).
    num_hidden_layers: number of transformer blocks L.
    num_attention_heads: attention heads A.
    intermediate_size: inner width of every feed-forward network.
    hidden_act: activation of the FFNs and of the MLM transform. "gelu" is the exact erf form
      (transformers' meaning); "gelu_new" is the tanh approximation that the TF code calls "gelu".
    hidden_dropout_prob: dropout on the embedding output and on hidden projections.
    attention_probs_dropout_prob: dropout on attention probabilities.
    max_position_embeddings: rows of the position table (the longest sequence).
    type_vocab_size: number of segment ids.
    initializer_range: standard deviation of the truncated-normal initialiser.
    layer_norm_eps: epsilon of every LayerNorm (NoNorm has none).
    pad_token_id: id of [PAD]; only recorded (the trigram sees the [PAD] row, docs/pitfalls.md P3).
    trigram_input: build each position's embedding from (next, current, previous) tokens.
    use_bottleneck: wrap every block in input/output bottlenecks (False: the plain BERT block).
    intra_bottleneck_size: intra-block width b when `use_bottleneck`.
    use_bottleneck_attention: queries, keys and values all come from the input bottleneck.
    key_query_shared_bottleneck: queries and keys come from a second, shared bottleneck and
      values from the block input. Ignored when `use_bottleneck_attention` is set; both
      attention flags are ignored without `use_bottleneck`.
    num_feedforward_networks: stacked FFNs per block F.
    normalization_type: "no_norm" (elementwise affine) or "layer_norm".
    classifier_activation: the pooler is tanh(Dense(first token)) when True, the raw first
      token when False.
    classifier_dropout: dropout before task classifiers; None means `hidden_dropout_prob`.
    num_labels: outputs of the sequence/token classification heads (1 means regression).
    problem_type: "regression", "single_label_classification" or "multi_label_classification";
      None picks from `num_labels` and the label dtype as transformers does.
    id2label: optional label names as ((id, name), ...) pairs.
    hf_layer_norm_eps_quirk: reproduce transformers' PyTorch model exactly, whose embedding
      LayerNorm and final FFN-output LayerNorm ignore `layer_norm_eps` and use PyTorch's 1e-5
      (docs/pitfalls.md P8). Only matters with `normalization_type="layer_norm"`. The TF references
      use `layer_norm_eps` everywhere, which is the default here.
    masked_attention_logit: value that replaces the attention logits of masked keys. None
      (default) gives masked keys exactly zero probability, as transformers and the TF2 Model
      Garden do; -6.0 reproduces the 2021 google-research TF1 code (docs/pitfalls.md P5).
    padding_invariant_trigram: zero the embeddings of padded positions before the trigram, so
      the last real token no longer sees the [PAD] row and outputs do not depend on the padded
      length (docs/pitfalls.md P3). Off by default because the references do not do it.
    scan_layers: run the blocks with `nn.scan` (parameters stacked on a leading layer axis).
      Faster to compile; identical numbers.
    remat_policy: rematerialisation of each block in the backward pass: "none", "full",
      "dots" or "dots_with_no_batch_dims".
    dtype: compute dtype of matrix multiplications ("float32" or "bfloat16"); norms, softmax and
      the residual stream stay in float32.
    param_dtype: storage dtype of the parameters.
    quantization_aware: quantization-aware training as the original MobileBERT QAT
      (`mobilebert_jax.model.quantization`, docs/quantization.md): fake 8-bit quantization of
      every dense layer's input and kernel, NoNorm's input/γ/β/product, the attention scores
      (clipped to [-6, 60]; masked keys get `masked_attention_logit`, default -6) and context,
      with moving-average activation ranges in the `quant_ranges` collection. Needs ReLU6 and
      NoNorm, as the original (preset "mobilebert-uncased-qat"). Off: the float model, unchanged.
    quantization_export: with `quantization_aware`, the form handed to a full-integer TFLite
      converter: every activation fake quantization becomes a clip to its learned range (the
      converter's calibration then finds at most those ranges) and kernels stay float.
    quantization_points: with `quantization_aware`, which tensors are fake-quantized:
      "original" (the original MobileBERT QAT, above) or "tflite", which adds the int8 tensors
      a full-integer TFLite model computes and the original does not simulate: every `Dense`'s
      output (bias added) with its own moving-average range, the attention probabilities
      on TFLite's fixed int8 softmax grid (steps of 1/256; the returned attentions are then
      those rounded probabilities, no longer exactly the softmax of the returned logits), and
      the attention logits quantized once after their [-6, 60] clip (moving-average range), as
      TFLite's converter computes them, instead of twice before it (the original).
    quantization_per_channel: with `quantization_aware`, fake-quantize every kernel with one
      symmetric scale per output channel, as TFLite's full-integer converter quantizes fully
      connected kernels by default, instead of one scale per kernel (the original).
  """

  vocab_size: int = 30522
  embedding_size: int = 128
  hidden_size: int = 512
  num_hidden_layers: int = 24
  num_attention_heads: int = 4
  intermediate_size: int = 512
  hidden_act: str = "relu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  trigram_input: bool = True
  use_bottleneck: bool = True
  intra_bottleneck_size: int = 128
  use_bottleneck_attention: bool = False
  key_query_shared_bottleneck: bool = True
  num_feedforward_networks: int = 4
  normalization_type: str = "no_norm"
  classifier_activation: bool = True
  classifier_dropout: float | None = None
  num_labels: int = 2
  problem_type: str | None = None
  id2label: tuple[tuple[int, str], ...] | None = None
  # Implementation switches of this port (never written to HF config.json).
  hf_layer_norm_eps_quirk: bool = False
  masked_attention_logit: float | None = None
  padding_invariant_trigram: bool = False
  scan_layers: bool = False
  remat_policy: str = "none"
  dtype: str = "float32"
  param_dtype: str = "float32"
  quantization_aware: bool = False
  quantization_export: bool = False
  quantization_points: str = "original"
  quantization_per_channel: bool = False

  # ------------------------------------------------------------------------------------------
  # Validation and derived sizes
  # ------------------------------------------------------------------------------------------

  def __post_init__(self):
    # Accept a dict (as in transformers) and store the hashable, canonical form.
    object.__setattr__(self, "id2label", _normalise_id2label(self.id2label))
    problems = []
    for name in (
      "vocab_size",
      "embedding_size",
      "hidden_size",
      "num_hidden_layers",
      "num_attention_heads",
      "intermediate_size",
      "max_position_embeddings",
      "type_vocab_size",
      "intra_bottleneck_size",
      "num_feedforward_networks",
    ):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        problems.append(f"{name} must be a positive integer, got {value!r}")
    if problems:
      raise ValueError("Invalid MobileBertConfig: " + "; ".join(problems))
    if self.hidden_act not in ACTIVATIONS:
      problems.append(f"hidden_act {self.hidden_act!r} is not one of {ACTIVATIONS}")
    if self.normalization_type not in NORMALIZATION_TYPES:
      problems.append(
        f"normalization_type {self.normalization_type!r} is not one of {NORMALIZATION_TYPES}"
      )
    if self.remat_policy not in REMAT_POLICIES:
      problems.append(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        problems.append(f"{name} {getattr(self, name)!r} is not one of {DTYPES}")
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        problems.append(f"{name} must lie in [0, 1), got {value}")
    if self.classifier_dropout is not None and not 0.0 <= self.classifier_dropout < 1.0:
      problems.append(f"classifier_dropout must lie in [0, 1), got {self.classifier_dropout}")
    if self.true_hidden_size % self.num_attention_heads:
      what = "intra_bottleneck_size" if self.use_bottleneck else "hidden_size"
      problems.append(
        f"{what} ({self.true_hidden_size}) is not divisible by num_attention_heads "
        f"({self.num_attention_heads})"
      )
    if self.embedding_size > self.hidden_size:
      problems.append(
        f"embedding_size ({self.embedding_size}) exceeds hidden_size ({self.hidden_size}): the "
        "MLM output matrix is [word embeddings | extra weights] and cannot be narrower than "
        "the embedding table"
      )
    if self.num_labels < 1:
      problems.append(f"num_labels must be >= 1, got {self.num_labels}")
    if self.problem_type not in (
      None,
      "regression",
      "single_label_classification",
      "multi_label_classification",
    ):
      problems.append(f"unknown problem_type {self.problem_type!r}")
    if self.id2label is not None and len(self.id2label) != self.num_labels:
      problems.append(
        f"id2label has {len(self.id2label)} entries but num_labels is {self.num_labels}"
      )
    if self.masked_attention_logit is not None and self.masked_attention_logit > 0:
      problems.append("masked_attention_logit must be negative (or None)")
    if self.quantization_aware and (
      self.hidden_act != "relu6" or self.normalization_type != "no_norm"
    ):
      problems.append(
        "quantization_aware needs hidden_act='relu6' and normalization_type='no_norm' as the "
        f"original QAT (got {self.hidden_act!r}, {self.normalization_type!r}); set them too or "
        "use the 'mobilebert-uncased-qat' preset"
      )
    if self.quantization_export and not self.quantization_aware:
      problems.append("quantization_export applies only with quantization_aware=True")
    if self.quantization_per_channel and not self.quantization_aware:
      problems.append("quantization_per_channel applies only with quantization_aware=True")
    if self.quantization_points not in QUANTIZATION_POINTS:
      problems.append(
        f"quantization_points must be one of {', '.join(QUANTIZATION_POINTS)}, got "
        f"{self.quantization_points!r}"
      )
    if problems:
      raise ValueError("Invalid MobileBertConfig: " + "; ".join(problems))

  @property
  def true_hidden_size(self) -> int:
    """Width inside a block: `intra_bottleneck_size` with bottlenecks, else `hidden_size`."""
    return self.intra_bottleneck_size if self.use_bottleneck else self.hidden_size

  @property
  def attention_head_size(self) -> int:
    """Per-head width d = true_hidden_size / num_attention_heads."""
    return self.true_hidden_size // self.num_attention_heads

  @property
  def attention_input_size(self) -> int:
    """Width of the tensor queries and keys are projected from.

    Input bottleneck or shared bottleneck (b) when one feeds attention; otherwise the block
    input (H). The teacher (IB-BERT) takes the latter path, which transformers cannot build
    (docs/pitfalls.md P10).
    """
    if self.use_bottleneck and (self.use_bottleneck_attention or self.key_query_shared_bottleneck):
      return self.intra_bottleneck_size
    return self.hidden_size

  @property
  def value_input_size(self) -> int:
    """Width of the tensor values are projected from."""
    if self.use_bottleneck and self.use_bottleneck_attention:
      return self.intra_bottleneck_size
    return self.hidden_size

  @property
  def uses_shared_bottleneck(self) -> bool:
    """True when the block has the separate key/query bottleneck."""
    return (
      self.use_bottleneck and self.key_query_shared_bottleneck and not self.use_bottleneck_attention
    )

  @property
  def embedding_input_size(self) -> int:
    """Width entering the embedding projection (3E with the trigram, else E)."""
    return self.embedding_size * (3 if self.trigram_input else 1)

  @property
  def has_embedding_projection(self) -> bool:
    """Whether the embeddings go through `embedding_transformation`."""
    return self.trigram_input or self.embedding_size != self.hidden_size

  @property
  def effective_classifier_dropout(self) -> float:
    """Dropout rate before task classifiers."""
    if self.classifier_dropout is not None:
      return self.classifier_dropout
    return self.hidden_dropout_prob

  @property
  def label_map(self) -> dict[int, str]:
    """`id2label` as a dict (generated names when absent)."""
    if self.id2label is None:
      return {i: f"LABEL_{i}" for i in range(self.num_labels)}
    return dict(self.id2label)

  def with_overrides(self, **overrides: Any) -> MobileBertConfig:
    """This config with a run's overrides: `replace`, plus the rule for a new label count.

    Every place that adapts a stored architecture to a run (from a preset, from one of our
    checkpoints, from HF/TF weights, on resume) goes through here. A `num_labels` that differs
    from the stored label names' count drops those names (they described the old head), as
    transformers does, unless `id2label` is overridden too.

    Raises:
      ValueError: an unknown field or an impossible combination.
    """
    changes = dict(overrides)
    if (
      "num_labels" in changes
      and "id2label" not in changes
      and self.id2label is not None
      and len(self.id2label) != changes["num_labels"]
    ):
      changes["id2label"] = None
    return self.replace(**changes)

  def replace(self, **changes: Any) -> MobileBertConfig:
    """Returns a copy with `changes` applied (and validated)."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
    if unknown:
      raise ValueError(f"MobileBertConfig has no field(s) {sorted(unknown)}")
    if "id2label" in changes:
      changes["id2label"] = _normalise_id2label(changes["id2label"])
    return dataclasses.replace(self, **changes)

  # ------------------------------------------------------------------------------------------
  # Presets
  # ------------------------------------------------------------------------------------------

  @classmethod
  def from_preset(cls, name: str, **overrides: Any) -> MobileBertConfig:
    """Builds a named architecture; see `PRESETS` for the names.

    Args:
      name: preset name, e.g. "mobilebert-uncased", "mobilebert-tiny", "ibbert-large".
      **overrides: fields to change, e.g. `num_labels=3` or `scan_layers=True`.

    Returns:
      The config.

    Raises:
      KeyError: unknown preset name.
    """
    if name not in PRESETS:
      raise KeyError(f"Unknown MobileBERT preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name].with_overrides(**overrides)

  # ------------------------------------------------------------------------------------------
  # Reading and writing JSON
  # ------------------------------------------------------------------------------------------

  @classmethod
  def from_dict(
    cls, data: Mapping[str, Any], source: ConfigSource = "auto", **overrides: Any
  ) -> MobileBertConfig:
    """Builds a config from a parsed JSON dict.

    Args:
      data: the parsed JSON.
      source: "hf" for a transformers `config.json`, "tf1" for an original google-research
        `bert_config.json`, "tf2" for TF2 Model Garden `MobileBertEncoderConfig` arguments, or
        "auto" to recognise the dialect (see `mobilebert_jax.weights.config_dialects`).
      **overrides: fields to set after reading.

    Returns:
      The config.

    Raises:
      ValueError: the dict is in neither format, or describes an impossible model.
    """
    names = frozenset(field.name for field in dataclasses.fields(cls))
    fields = config_dialects.fields_from_dict(
      data, source, config_fields=names, implementation_fields=IMPLEMENTATION_FIELDS
    )
    fields.update(overrides)
    if "id2label" in fields:
      fields["id2label"] = _normalise_id2label(fields["id2label"])
    unknown = set(fields) - names
    if unknown:
      raise ValueError(f"MobileBertConfig has no field(s) {sorted(unknown)}")
    return cls(**fields)

  @classmethod
  def from_json_file(
    cls, path: str | os.PathLike[str], source: ConfigSource = "auto", **overrides: Any
  ) -> MobileBertConfig:
    """Reads an HF `config.json`, a TF1 `bert_config.json` or TF2 encoder arguments.

    Args:
      path: the JSON file.
      source: dialect, see `from_dict`.
      **overrides: fields to set after reading.

    Returns:
      The config.

    Raises:
      ValueError: the file is not valid JSON, or not a MobileBERT config of a known dialect.
    """
    path = os.fspath(path)
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
      raise ValueError(f"{path} does not hold a JSON object, so it is not a model config")
    try:
      return cls.from_dict(data, source=source, **overrides)
    except ValueError as e:
      raise ValueError(f"{path}: {e}") from e

  def to_dict(self, include_implementation: bool = True) -> dict[str, Any]:
    """The config as a JSON-ready dict in the transformers dialect.

    Args:
      include_implementation: also write the switches of this port (`scan_layers`, ...).

    Returns:
      A dict that `from_dict(..., source="hf")` reads back to an equal config.
    """
    out: dict[str, Any] = {}
    for field in dataclasses.fields(self):
      if not include_implementation and field.name in IMPLEMENTATION_FIELDS:
        continue
      out[field.name] = getattr(self, field.name)
    out["id2label"] = {str(k): v for k, v in self.label_map.items()}
    out["label2id"] = {v: k for k, v in self.label_map.items()}
    out["true_hidden_size"] = self.true_hidden_size
    out["model_type"] = "mobilebert"
    return out

  def to_hf_dict(self) -> dict[str, Any]:
    """The dict for a transformers `config.json` (architecture fields only)."""
    out = self.to_dict(include_implementation=False)
    if self.use_bottleneck_attention and self.key_query_shared_bottleneck:
      # transformers would build (unused) shared-bottleneck weights for this combination.
      out["key_query_shared_bottleneck"] = False
    return out

  def to_json(self, include_implementation: bool = True) -> str:
    """The config as indented JSON text (transformers dialect)."""
    return json.dumps(self.to_dict(include_implementation), indent=2, sort_keys=True) + "\n"

  def to_json_file(self, path: str | os.PathLike[str], include_implementation: bool = True) -> None:
    """Writes `to_json()` to `path`."""
    with open(path, "w", encoding="utf-8") as f:
      f.write(self.to_json(include_implementation))


IMPLEMENTATION_FIELDS = frozenset(
  {
    "hf_layer_norm_eps_quirk",
    "masked_attention_logit",
    "padding_invariant_trigram",
    "scan_layers",
    "remat_policy",
    "dtype",
    "param_dtype",
    "quantization_aware",
    "quantization_export",
    "quantization_points",
    "quantization_per_channel",
  }
)


def _normalise_id2label(value: Any) -> tuple[tuple[int, str], ...] | None:
  if value is None:
    return None
  if isinstance(value, Mapping):
    items = value.items()
  else:
    items = value
  pairs = tuple(sorted((int(k), str(v)) for k, v in items))
  # transformers writes generated names when there are none; they carry no information.
  if all(name == f"LABEL_{i}" for i, name in pairs):
    return None
  return pairs


# The released architectures (docs/model.md §presets).
PRESETS: dict[str, MobileBertConfig] = {
  # google/mobilebert-uncased = uncased_L-24_H-128_B-512_A-4_F-4_OPT.
  "mobilebert-uncased": MobileBertConfig(classifier_activation=False),
  # The quantization-aware-training variant: identical but ReLU6.
  "mobilebert-uncased-qat": MobileBertConfig(classifier_activation=False, hidden_act="relu6"),
  # The paper's "MobileBERT w/o OPT": LayerNorm and GELU instead of NoNorm and ReLU.
  "mobilebert-uncased-no-opt": MobileBertConfig(
    classifier_activation=False, normalization_type="layer_norm", hidden_act="gelu_new"
  ),
  # MobileBERT_TINY (uncased_L-24_H-128_B-512_A-4_F-2_tiny_OPT; no public checkpoint).
  "mobilebert-tiny": MobileBertConfig(
    classifier_activation=False,
    use_bottleneck_attention=True,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=2,
  ),
  # The IB-BERT_LARGE teacher (uncased_L-24_H-1024_B-512_A-4).
  "ibbert-large": MobileBertConfig(
    intermediate_size=4096,
    hidden_act="gelu_new",
    hidden_dropout_prob=0.1,
    intra_bottleneck_size=1024,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
  ),
  # BERT-base through the plain (no bottleneck, no trigram) path.
  "bert-base-uncased": MobileBertConfig(
    embedding_size=768,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    trigram_input=False,
    use_bottleneck=False,
    intra_bottleneck_size=768,
    key_query_shared_bottleneck=False,
    num_feedforward_networks=1,
    normalization_type="layer_norm",
    classifier_activation=True,
  ),
}
