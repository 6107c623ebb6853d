"""Weight import and export: Hugging Face directories and hub ids (and, later, TF checkpoints).

`load_pretrained` reads any registered checkpoint format into any of the eight model classes;
`save_pretrained` writes a Hugging Face directory. New formats plug in with `register_reader`
(see `mobilebert_jax.weights.loading`).
"""

from mobilebert_jax.weights import hf
from mobilebert_jax.weights.layout import stack_layers, unstack_layers
from mobilebert_jax.weights.loading import (
  SourceTensors,
  find_reader,
  load_pretrained,
  register_reader,
  registered_readers,
  save_pretrained,
  unregister_reader,
)
from mobilebert_jax.weights.report import LoadReport

# Local formats first; hub ids only when no local reader recognises the source.
register_reader(hf.HfReader())
register_reader(hf.HfHubReader(), fallback=True)

__all__ = [
  "LoadReport",
  "SourceTensors",
  "find_reader",
  "load_pretrained",
  "register_reader",
  "registered_readers",
  "save_pretrained",
  "stack_layers",
  "unregister_reader",
  "unstack_layers",
]
