"""`LoadReport`: what `load_pretrained` did with every parameter and every source tensor."""

from __future__ import annotations

import dataclasses

from mobilebert_jax.model.config import MobileBertConfig


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """The account of one `load_pretrained` call.

  Parameter paths are our unscanned names joined with "/" (e.g.
  "mobilebert/encoder/layer_0/attention/query/kernel"), also when the model is scanned; source
  names are the names the checkpoint itself uses (e.g. transformers' state-dict keys).

  Attributes:
    source: what was read (resolved files, or the hub id and the files downloaded).
    format: name of the reader that read it (e.g. "hf").
    model_class: the class loaded into, e.g. "MobileBertForQuestionAnswering".
    config: the config the module was built with.
    loaded: parameters taken from the source.
    initialized: parameters the source lacks, freshly initialised (e.g. a new task head).
    unused: source tensors that no parameter took (e.g. pretraining heads of a checkpoint
      loaded into a task model). Tied copies and buffers are not listed.
    ignored: source tensors skipped on purpose (tied copies, buffers), for the record.
    notes: anything else worth knowing (a tied copy that differs from its original, a
      dtype conversion, a prefix added or removed).
    pad_row_is_zero: whether row `config.pad_token_id` of the loaded word embeddings is all
      zeros (docs/pitfalls.md P3: a non-zero [PAD] row makes outputs depend on the padded length);
      None when the word embeddings were not loaded.
  """

  source: str
  format: str
  model_class: str
  config: MobileBertConfig
  loaded: tuple[str, ...] = ()
  initialized: tuple[str, ...] = ()
  unused: tuple[str, ...] = ()
  ignored: tuple[str, ...] = ()
  notes: tuple[str, ...] = ()
  pad_row_is_zero: bool | None = None

  @property
  def complete(self) -> bool:
    """True when every parameter came from the source and every source tensor was used."""
    return not self.initialized and not self.unused

  def summary(self) -> str:
    """A human-readable multi-line account (what the loader logs)."""
    lines = [
      f"Loaded {self.model_class} from {self.source} ({self.format}): "
      f"{len(self.loaded)} parameters loaded, {len(self.initialized)} initialised, "
      f"{len(self.unused)} source tensors unused."
    ]
    if self.initialized:
      lines.append("Initialised (not in the source): " + ", ".join(self.initialized))
    if self.unused:
      lines.append("Unused source tensors: " + ", ".join(self.unused))
    if self.pad_row_is_zero is not None:
      row = f"The [PAD] row (id {self.config.pad_token_id}) of the word embeddings is"
      if self.pad_row_is_zero:
        lines.append(f"{row} zero.")
      elif self.config.trigram_input and not self.config.padding_invariant_trigram:
        lines.append(
          f"{row} non-zero: through the trigram the last real token sees it, so outputs "
          "depend on the padded length (docs/pitfalls.md P3; see padding_invariant_trigram)."
        )
      else:
        lines.append(f"{row} non-zero.")
    lines.extend(self.notes)
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.summary()
