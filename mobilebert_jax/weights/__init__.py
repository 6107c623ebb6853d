"""Weight import and export: Hugging Face directories and hub ids, TF1/TF2 checkpoints, TF-Hub.

`load_pretrained` reads any registered checkpoint format into any of the eight model classes;
`save_pretrained` writes a Hugging Face directory. New formats plug in with `register_reader`
(see `mobilebert_jax.weights.loading`).
"""

from mobilebert_jax.weights import hf, tf_common, tfhub
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

# Local formats first; hub ids only when no local reader recognises the source. The TF readers
# go before the HF one: they recognise a source by its `.index` or `saved_model.pb` file, while
# the HF reader takes any directory with a `config.json`, which a TF checkpoint may have too.
# Neither imports TensorFlow until a TF source is opened.
register_reader(tf_common.TfCheckpointReader())
register_reader(tfhub.TfHubReader())
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
