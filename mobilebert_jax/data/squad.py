"""SQuAD v1.1 / v2.0 for MobileBERT: examples, sliding-window features, answer decoding.

The pipeline of BERT's (and MobileBERT's) `run_squad.py`, reproduced token for token, in three
modules re-exported here:

  * `squad_examples`: official JSON files or TFDS `squad/v1.1`, `squad/v2.0` -> `SquadExample`s.
  * `squad_features`: examples -> fixed-shape NumPy features (`SquadFeatures`), with training
    targets, max-context flags and token character offsets.
  * `squad_postprocess`: start/end logits -> `predictions.json`, `nbest_predictions.json`,
    `null_odds.json`.

Typical evaluation::

  from mobilebert_jax.data import squad
  from mobilebert_jax.metrics import squad as squad_metrics

  examples = squad.read_squad_json("dev-v2.0.json", is_training=False).examples
  features = squad.convert_examples_to_features(examples, tokenizer, is_training=False)
  start_logits, end_logits = ...  # [N, L] each, from the model over features.inputs
  result = squad.postprocess_predictions(
      examples, features, start_logits, end_logits, tokenizer, version_2_with_negative=True)
  squad.write_prediction_files(result, output_dir)
  scores = squad_metrics.squad_v2_metrics(
      squad.gold_answers(examples), result.predictions, na_probs=result.null_odds)
"""

from mobilebert_jax.data.squad_examples import (
  TFDS_VERSIONS,
  SkippedQuestion,
  SquadAnswer,
  SquadExample,
  SquadReadResult,
  examples_from_tfds_records,
  gold_answers,
  load_json_file,
  load_squad_tfds,
  parse_squad_json,
  read_squad_json,
  split_words,
)
from mobilebert_jax.data.squad_features import (
  FIRST_UNIQUE_ID,
  PAD_ID,
  DocSpan,
  SquadFeatureConfig,
  SquadFeatureMeta,
  SquadFeatures,
  SquadTokenizer,
  convert_examples_to_features,
  improve_answer_span,
  make_doc_spans,
  max_context_masks,
)
from mobilebert_jax.data.squad_postprocess import (
  NBEST_FILE,
  NULL_ODDS_FILE,
  PREDICTIONS_FILE,
  SquadPredictions,
  TextExtraction,
  get_final_text,
  postprocess_predictions,
  softmax,
  write_prediction_files,
)

__all__ = [
  "FIRST_UNIQUE_ID",
  "NBEST_FILE",
  "NULL_ODDS_FILE",
  "PAD_ID",
  "PREDICTIONS_FILE",
  "TFDS_VERSIONS",
  "DocSpan",
  "SkippedQuestion",
  "SquadAnswer",
  "SquadExample",
  "SquadFeatureConfig",
  "SquadFeatureMeta",
  "SquadFeatures",
  "SquadPredictions",
  "SquadReadResult",
  "SquadTokenizer",
  "TextExtraction",
  "convert_examples_to_features",
  "examples_from_tfds_records",
  "get_final_text",
  "gold_answers",
  "improve_answer_span",
  "load_json_file",
  "load_squad_tfds",
  "make_doc_spans",
  "max_context_masks",
  "parse_squad_json",
  "postprocess_predictions",
  "read_squad_json",
  "softmax",
  "split_words",
  "write_prediction_files",
]
