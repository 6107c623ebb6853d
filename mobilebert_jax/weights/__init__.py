"""Weight import and export: Hugging Face directories and hub ids, TF1/TF2 checkpoints, TF-Hub.

`load_pretrained` reads any registered checkpoint format into any of the eight model classes;
`save_pretrained` writes a Hugging Face directory. New formats plug in with `register_reader`
(the protocol is in `mobilebert_jax.weights.protocol`).

The names below load their modules on first use: `mobilebert_jax.model.config` reads foreign
config dialects through `weights.config_dialects`, and the loaders build on the model, so an
eager import here would make the two packages import each other.
"""

import importlib
from typing import Any

# Public name -> the module of this package that defines it.
_EXPORTS = {
  "LoadReport": "report",
  "SourceTensors": "loading",
  "find_reader": "loading",
  "load_pretrained": "loading",
  "register_reader": "loading",
  "registered_readers": "loading",
  "save_pretrained": "loading",
  "stack_layers": "layout",
  "unregister_reader": "loading",
  "unstack_layers": "layout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
  globals()[name] = value  # later look-ups skip this function
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *_EXPORTS})
