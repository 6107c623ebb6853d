"""SQuAD v1.1 and v2.0: span extraction with `MobileBertForQuestionAnswering`.

Data: the official JSON files (`config.data.data_dir` with `train-v1.1.json`/`dev-v1.1.json`,
or `train_file`/`eval_file`) or TFDS `squad/v1.1`, `squad/v2.0`. Evaluation decodes answers as
BERT's `run_squad.py` does and writes `predictions.json`, `nbest_predictions.json` and, for
v2.0, `null_odds.json`; metrics are the official script's (`exact_match`/`f1` for v1.1; for
v2.0 `exact`, `f1`, `HasAns_*`, `NoAns_*`, `best_*`, plus `exact_match` = `exact`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from mobilebert_jax.data import squad
from mobilebert_jax.metrics import squad as squad_metrics
from mobilebert_jax.model.models import MobileBertForQuestionAnswering
from mobilebert_jax.tasks.base import (
  ConfigDict,
  EvalSet,
  Task,
  check_source,
  data_file,
  example_mask,
  masked_accuracy,
  tfds_kwargs,
)
from mobilebert_jax.train import losses

logger = logging.getLogger(__name__)


def _feature_config(config: ConfigDict) -> squad.SquadFeatureConfig:
  data = config.data
  return squad.SquadFeatureConfig(
    max_seq_length=data.max_seq_length,
    doc_stride=data.doc_stride,
    max_query_length=data.max_query_length,
  )


def _read(config: ConfigDict, version: str, *, training: bool) -> list[squad.SquadExample]:
  """Training or dev examples from the configured source."""
  if check_source(config, ("files", "tfds")) == "tfds":
    result = squad.load_squad_tfds(
      version, "train" if training else "validation", is_training=training, **tfds_kwargs(config)
    )
  else:
    kind = "train" if training else "dev"
    path = data_file(
      config,
      "train_file" if training else "eval_file",
      (f"{kind}-v{version}.json",),
      f"SQuAD v{version} {'training' if training else 'dev'} data",
    )
    result = squad.read_squad_json(
      path, is_training=training, version_2_with_negative=version == "2.0"
    )
  if result.skipped:
    logger.warning(
      "%d training question(s) skipped (answer not at its offset), e.g. %s",
      len(result.skipped),
      result.skipped[0].record,
    )
  if not result.examples:
    raise ValueError(f"SQuAD v{version}: the {'training' if training else 'dev'} data is empty")
  return result.examples


def _make_task(name: str, version: str) -> Task:
  v2 = version == "2.0"

  def train_features(config: ConfigDict, tokenizer) -> dict[str, np.ndarray]:
    examples = _read(config, version, training=True)
    features = squad.convert_examples_to_features(
      examples, tokenizer, is_training=True, config=_feature_config(config)
    )
    return dict(features.inputs)

  def eval_sets(config: ConfigDict, tokenizer) -> list[EvalSet]:
    examples = _read(config, version, training=False)
    features = squad.convert_examples_to_features(
      examples, tokenizer, is_training=False, config=_feature_config(config)
    )
    gold = squad.gold_answers(examples)

    def finish(outputs: Mapping[str, np.ndarray], output_dir: str | None) -> dict[str, float]:
      result = squad.postprocess_predictions(
        examples,
        features,
        outputs["start_logits"],
        outputs["end_logits"],
        tokenizer,
        n_best_size=config.eval.n_best_size,
        max_answer_length=config.eval.max_answer_length,
        version_2_with_negative=v2,
        null_score_diff_threshold=config.eval.null_score_diff_threshold,
        text_extraction=config.eval.text_extraction,
      )
      if output_dir is not None:
        squad.write_prediction_files(result, output_dir)
      if not v2:
        return squad_metrics.squad_v1_metrics(gold, result.predictions)
      metrics = squad_metrics.squad_v2_metrics(gold, result.predictions, na_probs=result.null_odds)
      # One name for the headline numbers of both versions.
      return {"exact_match": metrics["exact"], **metrics}

    return [EvalSet("validation", dict(features.inputs), finish)]

  def make_loss(model_config):
    del model_config

    def loss_fn(outputs, batch):
      loss = losses.question_answering_loss(
        outputs.start_logits,
        outputs.end_logits,
        batch["start_positions"],
        batch["end_positions"],
        batch.get("weights"),
      )
      mask = example_mask(batch, batch["start_positions"].shape)
      start_hit = masked_accuracy(
        jnp.argmax(outputs.start_logits, -1), batch["start_positions"], mask
      )
      return loss, {"start_accuracy": start_hit}

    return loss_fn

  def eval_outputs(outputs, batch):
    del batch
    return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits}

  return Task(
    name=name,
    family="squad",
    model_class=MobileBertForQuestionAnswering,
    main_metric="f1",
    model_overrides=lambda config: {},
    train_features=train_features,
    eval_sets=eval_sets,
    make_loss=make_loss,
    eval_outputs=eval_outputs,
  )


TASKS = {"squad": _make_task("squad", "1.1"), "squad_v2": _make_task("squad_v2", "2.0")}
