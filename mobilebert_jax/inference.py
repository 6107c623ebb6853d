"""Using a fine-tuned model: load a trainer workdir, answer questions, classify texts.

    from mobilebert_jax import inference

    qa = inference.load_finetuned("/tmp/squad")          # the latest checkpoint of the run
    answer = inference.answer_question(qa, "Who wrote it?", paragraph)
    print(answer.text, paragraph[answer.start : answer.end], answer.score)

    rte = inference.load_finetuned("/tmp/rte")
    label, probabilities = inference.classify(rte, "A man sleeps.", "Nobody is asleep.")

Nothing here re-implements the task pipelines: questions go through the SQuAD feature and
decoding code of `mobilebert_jax.data.squad` and texts through GLUE's `featurize_glue`, with the
settings the run was trained and evaluated with (the config recorded with its checkpoints), and
the model runs through
the trainer's eval step (`steps.make_eval_step` with the task's `eval_outputs`, batched and
padded by `evaluation.predict`). A dev question therefore gets the answer the trainer wrote into
`predictions.json`. Batches are padded to a power of two (at most `batch_size` rows), so the
jitted forward pass compiles once per (rows, sequence length) shape.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from mobilebert_jax import tasks
from mobilebert_jax.data import glue, squad
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.models import MobileBertForQuestionAnswering, abstract_params
from mobilebert_jax.train import (
  checkpointing,
  evaluation,
  initialization,
  sharding,
  steps,
  summaries,
)

PyTree = Any
# What the trainer writes into a workdir besides the checkpoints (see `train.run_files`).
_WORKDIR_FILES = ("config.json", "model_config.json", "vocab.txt")
# BERT's `run_squad.py` settings, for models given as bare parts (no run config to read).
_SQUAD_DEFAULTS = {
  "max_seq_length": 384,
  "doc_stride": 128,
  "max_query_length": 64,
  "n_best_size": 20,
  "max_answer_length": 30,
  "null_score_diff_threshold": 0.0,
  "text_extraction": "final_text",
}


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: it holds arrays
class FineTuned:
  """A fine-tuned model restored from a trainer workdir.

  Attributes:
    module: the task's model (e.g. `MobileBertForQuestionAnswering`), built from `config`.
    params: its parameters (arrays on the first local device).
    tokenizer: the vocabulary the run trained with.
    config: the architecture.
    task: the canonical task name ("squad", "squad_v2", "glue/rte", ...).
    step: the training step of the restored checkpoint.
    run_config: the run's training config (sequence lengths, decoding settings, ...).
    vocab_file: the file `tokenizer` was read from (a WordPiece vocab.txt or a SentencePiece
      model).
  """

  module: nn.Module
  params: PyTree
  tokenizer: Any
  config: MobileBertConfig
  task: str
  step: int
  run_config: ml_collections.ConfigDict
  vocab_file: str | None = None


@dataclasses.dataclass(frozen=True)
class Answer:
  """The answer to one question.

  Attributes:
    text: the decoded answer, as the trainer writes it into `predictions.json` ("" is SQuAD
      2.0's "no answer").
    start: character offset in the context where the answer starts.
    end: exclusive end offset: `context[start:end]` is the answer as the context spells it
      (`text` up to whitespace, which the decoder joins with single spaces). `(0, 0)` when no
      span is answered (the null answer, or the decoder's placeholder when no span is valid).
    score: start logit + end logit of the answer (of [CLS] for the null answer).
    probability: the answer's share of the n-best list (softmax over their scores).
    null_score_diff: SQuAD 2.0 decoding: null score minus the best span's score (the answer is
      "" when this exceeds the threshold); None for SQuAD 1.1 decoding.
  """

  text: str
  start: int
  end: int
  score: float
  probability: float
  null_score_diff: float | None = None


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_finetuned(
  workdir_or_checkpoint: str | os.PathLike[str], *, step: int | None = None
) -> FineTuned:
  """Restores the model of a fine-tuning run written by `trainer.train_and_evaluate`.

  Args:
    workdir_or_checkpoint: the run's workdir, its `checkpoints/` directory, or one step
      directory `checkpoints/<step>`.
    step: the checkpoint to restore (default: the latest, or the step directory given).

  Returns:
    A `FineTuned` with the model, its parameters, the tokenizer and the run's settings.

  Raises:
    FileNotFoundError: the path is not such a workdir (naming what is missing), there is no
      checkpoint for `step`, or the run's vocabulary is gone.
    ValueError: the checkpoint is not a fine-tuning checkpoint, or `step` contradicts the step
      directory given.
  """
  path = os.path.abspath(os.fspath(workdir_or_checkpoint))
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path} does not exist (expected a fine-tuning workdir)")
  found = initialization.find_checkpoint(path)
  if found is None:
    raise FileNotFoundError(_not_a_workdir(path))
  root, step_dir_step = found
  if step_dir_step is not None and step not in (None, step_dir_step):
    raise ValueError(f"{path} is the checkpoint of step {step_dir_step}, not step {step}")
  step = step_dir_step if step is None else step

  metadata = checkpointing.read_metadata(root, step)
  train_config = metadata.get("train_config")
  if not isinstance(train_config, Mapping) or not metadata.get("model_config"):
    raise ValueError(f"{root} step {metadata.get('step')}: no model or training config recorded")
  if train_config.get("task") not in tasks.TASKS:
    raise ValueError(
      f"{root} holds a checkpoint of {train_config.get('task')!r}, not of a fine-tuning task "
      f"({sorted(tasks.TASKS)})"
    )
  run_config = ml_collections.ConfigDict(train_config)
  task = tasks.get_task(run_config.task)
  model_config = MobileBertConfig.from_dict(metadata["model_config"], source="hf")
  module = task.model_class(model_config)
  with summaries.quiet_library_logs(level=logging.ERROR):
    params = checkpointing.load_params_from_checkpoint(
      root, abstract_params(module), step=metadata["step"]
    )
  vocab_file = _vocab_file(root, run_config)
  tokenizer = initialization.load_tokenizer(vocab_file, run_config.tokenizer.do_lower_case)
  return FineTuned(
    module, params, tokenizer, model_config, task.name, metadata["step"], run_config, vocab_file
  )


def _not_a_workdir(path: str) -> str:
  present = set(os.listdir(path))
  missing = [name for name in _WORKDIR_FILES if name not in present]
  missing.append(f"{initialization.CHECKPOINTS_DIR}/<step>/{checkpointing.STATE_ITEM}/")
  return (
    f"{path} is not a fine-tuning workdir written by trainer.train_and_evaluate (nor its "
    f"checkpoints/ directory or one step of it): no {', no '.join(missing)}"
  )


def _vocab_file(checkpoint_root: str, run_config: ml_collections.ConfigDict) -> str:
  """The vocabulary the trainer kept in the workdir, else the run's `tokenizer.vocab_file`."""
  kept = initialization.vocab_in(os.path.dirname(checkpoint_root), checkpoint_root)
  if kept:
    return kept
  configured = run_config.tokenizer.get("vocab_file")
  if configured and os.path.isfile(configured):
    return configured
  raise FileNotFoundError(
    f"no vocabulary for the checkpoint in {checkpoint_root}: no {' or '.join(_WORKDIR_FILES[2:])}"
    f" in {os.path.dirname(checkpoint_root)}, and the run's tokenizer.vocab_file "
    f"({configured!r}) does not exist"
  )


# ----------------------------------------------------------------------------------------------
# The forward pass: the trainer's eval step on one device
# ----------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _eval_step(module: nn.Module, task_name: str):
  # One jitted step per model; jax.jit then caches one executable per input shape.
  task = tasks.get_task(task_name)
  outputs_fn = evaluation.with_bookkeeping(task.eval_outputs)
  return jax.jit(steps.make_eval_step(module, outputs_fn=outputs_fn))


def _predict(
  module: nn.Module, params: PyTree, task_name: str, inputs: Mapping[str, np.ndarray], rows: int
) -> dict[str, np.ndarray]:
  """The task's eval outputs for every row of `inputs` ([N, L] each), N first."""
  num_rows = len(inputs["input_ids"])
  # Powers of two up to `rows`: few shapes to compile, little padding for a single question.
  batch_rows = min(max(rows, 1), 1 << max(num_rows - 1, 0).bit_length())
  device = jax.local_devices()[0]
  mesh = sharding.make_mesh((1, 1), devices=[device])
  return evaluation.predict(
    _eval_step(module, task_name),
    params,
    inputs,
    global_batch_size=batch_rows,
    batch_sharding=sharding.batch_sharding(mesh),
  )


# ----------------------------------------------------------------------------------------------
# Question answering
# ----------------------------------------------------------------------------------------------


def answer_question(
  finetuned_or_parts: FineTuned | tuple[nn.Module, PyTree, Any],
  question: str,
  context: str,
  *,
  max_seq_length: int | None = None,
  doc_stride: int | None = None,
  max_query_length: int | None = None,
  n_best_size: int | None = None,
  max_answer_length: int | None = None,
  null_score_diff_threshold: float | None = None,
) -> Answer:
  """Answers one question about one context; see `answer_questions` for the arguments."""
  return answer_questions(
    finetuned_or_parts,
    [question],
    [context],
    max_seq_length=max_seq_length,
    doc_stride=doc_stride,
    max_query_length=max_query_length,
    n_best_size=n_best_size,
    max_answer_length=max_answer_length,
    null_score_diff_threshold=null_score_diff_threshold,
  )[0]


def answer_questions(
  finetuned_or_parts: FineTuned | tuple[nn.Module, PyTree, Any],
  questions: Sequence[str],
  contexts: Sequence[str] | str,
  *,
  max_seq_length: int | None = None,
  doc_stride: int | None = None,
  max_query_length: int | None = None,
  n_best_size: int | None = None,
  max_answer_length: int | None = None,
  null_score_diff_threshold: float | None = None,
  batch_size: int = 32,
) -> list[Answer]:
  """Answers questions with a SQuAD model, decoded exactly as the trainer's evaluation.

  Long contexts are cut into overlapping windows and the best span over all of them wins, as
  in the dev evaluation. Settings left as None take the run's values (`config.data` and
  `config.eval` of a `FineTuned`), or BERT's SQuAD settings (384, 128, 64, n-best 20, answers
  of at most 30 tokens) for a model given as parts.

  Args:
    finetuned_or_parts: `load_finetuned(...)` of a SQuAD run, or `(module, params, tokenizer)`
      of a `MobileBertForQuestionAnswering`.
    questions: the questions, Q of them.
    contexts: one context per question (Q), or one context for all of them.
    max_seq_length: tokens per window, L.
    doc_stride: how far apart the windows of a long context start.
    max_query_length: questions are cut to this many tokens.
    n_best_size: start and end positions tried per window.
    max_answer_length: the longest answer, in tokens.
    null_score_diff_threshold: SQuAD 2.0 decoding: answer "" when the null score exceeds the
      best span's score by more than this. Used for SQuAD 2.0 runs (default: the run's value)
      and for any model when given; None with a SQuAD 1.1 model always answers a span.
    batch_size: most windows per forward pass.

  Returns:
    One `Answer` per question, in order.

  Raises:
    ValueError: not a question-answering model, an empty question or context, mismatched
      list lengths, or windows longer than the model's `max_position_embeddings`.
  """
  module, params, tokenizer, task_name, run_config = _unpack(finetuned_or_parts, "squad")
  if isinstance(contexts, str):
    contexts = [contexts] * len(questions)
  if len(contexts) != len(questions):
    raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
  if not questions:
    return []
  given = {
    "max_seq_length": max_seq_length,
    "doc_stride": doc_stride,
    "max_query_length": max_query_length,
    "n_best_size": n_best_size,
    "max_answer_length": max_answer_length,
  }
  settings = _squad_settings(run_config, given)
  version_2 = task_name == "squad_v2" or null_score_diff_threshold is not None
  if null_score_diff_threshold is None:
    null_score_diff_threshold = settings["null_score_diff_threshold"]
  if settings["max_seq_length"] > module.config.max_position_embeddings:
    raise ValueError(
      f"max_seq_length={settings['max_seq_length']} exceeds the model's "
      f"max_position_embeddings={module.config.max_position_embeddings}"
    )

  # The SQuAD reader builds the examples, so odd inputs fail as they would in a dev file.
  document = {
    "data": [
      {"paragraphs": [{"context": c, "qas": [{"id": str(i), "question": q, "answers": []}]}]}
      for i, (q, c) in enumerate(zip(questions, contexts, strict=True))
    ]
  }
  examples = squad.parse_squad_json(document, source="question", is_training=False).examples
  features = squad.convert_examples_to_features(
    examples,
    tokenizer,
    is_training=False,
    config=squad.SquadFeatureConfig(
      settings["max_seq_length"], settings["doc_stride"], settings["max_query_length"]
    ),
  )
  outputs = _predict(module, params, "squad", features.inputs, batch_size)
  start_logits = outputs["start_logits"].astype(np.float64)
  end_logits = outputs["end_logits"].astype(np.float64)
  result = squad.postprocess_predictions(
    examples,
    features,
    start_logits,
    end_logits,
    tokenizer,
    n_best_size=settings["n_best_size"],
    max_answer_length=settings["max_answer_length"],
    version_2_with_negative=version_2,
    null_score_diff_threshold=null_score_diff_threshold,
    text_extraction=settings["text_extraction"],
  )
  answers = []
  for index, example in enumerate(examples):
    text = result.predictions[example.qas_id]
    entry = next(e for e in result.nbest[example.qas_id] if e["text"] == text)
    rows = np.flatnonzero(features.meta.example_index == index)
    span = (0, 0)
    if text:
      span = _char_span(example, features, rows, start_logits, end_logits, entry, settings, text)
    answers.append(
      Answer(
        text=text,
        start=span[0],
        end=span[1],
        score=entry["start_logit"] + entry["end_logit"],
        probability=entry["probability"],
        null_score_diff=None if result.null_odds is None else result.null_odds[example.qas_id],
      )
    )
  return answers


def _squad_settings(
  run_config: ml_collections.ConfigDict | None, given: Mapping[str, int | None]
) -> dict[str, Any]:
  """The window and decoding settings: given ones, else the run's, else BERT's."""
  settings = dict(_SQUAD_DEFAULTS)
  if run_config is not None:
    for name in ("max_seq_length", "doc_stride", "max_query_length"):
      settings[name] = run_config.data[name]
    for name in ("n_best_size", "max_answer_length", "null_score_diff_threshold"):
      settings[name] = run_config.eval[name]
    settings["text_extraction"] = run_config.eval.get("text_extraction", "final_text")
  settings.update({name: value for name, value in given.items() if value is not None})
  return settings


def _char_span(
  example: squad.SquadExample,
  features: squad.SquadFeatures,
  rows: np.ndarray,
  start_logits: np.ndarray,
  end_logits: np.ndarray,
  entry: Mapping[str, Any],
  settings: Mapping[str, Any],
  text: str,
) -> tuple[int, int]:
  """Where the decoded answer lies in the context.

  The n-best entries carry their logits but not their positions, so the span is found as the
  valid (start, end) token pair of the example's windows with exactly those logits (they are
  copied, not recomputed, so the comparison is exact). Its character span is then narrowed to
  `text` when the decoder's "final_text" alignment cut it from within the tokens' words.
  """
  meta = features.meta
  for row in rows:
    is_doc = meta.token_to_orig_map[row] >= 0
    starts = np.flatnonzero(
      (start_logits[row] == entry["start_logit"]) & is_doc & meta.token_is_max_context[row]
    )
    ends = np.flatnonzero((end_logits[row] == entry["end_logit"]) & is_doc)
    for first in starts:
      for last in ends[(ends >= first) & (ends - first < settings["max_answer_length"])]:
        begin = int(meta.token_char_start[row, first])
        end = int(meta.token_char_end[row, last])
        if example.context_text[begin:end] == text:
          return begin, end
        # "final_text" cuts the answer out of the whole words under the tokens: look there.
        first_word = int(meta.token_to_orig_map[row, first])
        last_word = int(meta.token_to_orig_map[row, last])
        words_begin = example.word_start_chars[first_word]
        words_end = example.word_start_chars[last_word] + len(example.doc_tokens[last_word])
        found = example.context_text.find(text, words_begin, words_end)
        return (found, found + len(text)) if found >= 0 else (begin, end)
  return 0, 0  # the decoder's placeholder answer: no valid span at all


# ----------------------------------------------------------------------------------------------
# Sequence classification
# ----------------------------------------------------------------------------------------------


def classify(
  finetuned: FineTuned, text: str, text_pair: str | None = None
) -> tuple[str | float, dict[str, float] | None]:
  """Classifies a text (or a text pair) with a GLUE model, featurised as in training.

  Args:
    finetuned: `load_finetuned(...)` of a GLUE run.
    text: the (first) sentence.
    text_pair: the second sentence of pair tasks (MNLI, RTE, MRPC, ...); None for single-
      sentence tasks (SST-2, CoLA).

  Returns:
    `(label, probabilities)`: the predicted label as the trainer writes it into its dev
    predictions file (e.g. "entailment", "1"), and the probability of every label. For STS-B's
    regression: `(score, None)`.

  Raises:
    ValueError: not a GLUE model, or a missing or superfluous `text_pair`.
  """
  module, params, tokenizer, task_name, run_config = _unpack(finetuned, "glue")
  task = glue.get_task(task_name.removeprefix("glue/"))
  if task.is_pair != (text_pair is not None):
    needs = "a text_pair" if task.is_pair else "no text_pair (a single-sentence task)"
    raise ValueError(f"{task.glue_name} takes {needs}")
  examples = glue.GlueExamples(
    task=task,
    split="predict",
    text_a=[text],
    text_b=None if text_pair is None else [text_pair],
    labels=None,
    example_ids=np.zeros(1, np.int64),
    report=glue.ReadReport(source="classify"),
  )
  features = glue.featurize_glue(examples, tokenizer, run_config.data.max_seq_length)
  logits = _predict(module, params, task_name, features.arrays, 1)["logits"][0]
  logits = logits.astype(np.float64)
  if task.is_regression:
    return float(logits[0]), None
  probabilities = np.exp(logits - logits.max())
  probabilities /= probabilities.sum()
  by_label = dict(zip(task.labels, probabilities.tolist(), strict=True))
  return task.labels[int(np.argmax(logits))], by_label


def _unpack(
  finetuned_or_parts: FineTuned | tuple[nn.Module, PyTree, Any], family: str
) -> tuple[nn.Module, PyTree, Any, str, ml_collections.ConfigDict | None]:
  """(module, params, tokenizer, task name, run config), checked for the task family."""
  if isinstance(finetuned_or_parts, FineTuned):
    finetuned = finetuned_or_parts
    if tasks.get_task(finetuned.task).family != family:
      raise ValueError(f"a {finetuned.task} model cannot do {family} (load a {family} workdir)")
    return (
      finetuned.module,
      finetuned.params,
      finetuned.tokenizer,
      finetuned.task,
      finetuned.run_config,
    )
  if family != "squad":
    raise TypeError(f"pass load_finetuned(...) of a {family} run, got {type(finetuned_or_parts)}")
  module, params, tokenizer = finetuned_or_parts
  if not isinstance(module, MobileBertForQuestionAnswering):
    raise ValueError(f"answer_question needs a MobileBertForQuestionAnswering, got {module}")
  return module, params, tokenizer, "squad", None
