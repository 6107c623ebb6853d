"""mobilebert_jax: MobileBERT in JAX/Flax.

The model classes mirror transformers' `MobileBert*` classes; weights load from and save to
Hugging Face directories (and, through `load_pretrained`, the TensorFlow checkpoints).
"""

from mobilebert_jax.model.config import PRESETS, MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import (
  MODEL_CLASSES,
  MobileBertForMaskedLM,
  MobileBertForMultipleChoice,
  MobileBertForNextSentencePrediction,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  MobileBertForSequenceClassification,
  MobileBertForTokenClassification,
  abstract_params,
  init_params,
)
from mobilebert_jax.weights import load_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = [
  "MODEL_CLASSES",
  "PRESETS",
  "MobileBertConfig",
  "MobileBertForMaskedLM",
  "MobileBertForMultipleChoice",
  "MobileBertForNextSentencePrediction",
  "MobileBertForPreTraining",
  "MobileBertForQuestionAnswering",
  "MobileBertForSequenceClassification",
  "MobileBertForTokenClassification",
  "MobileBertModel",
  "abstract_params",
  "init_params",
  "load_pretrained",
  "save_pretrained",
]
