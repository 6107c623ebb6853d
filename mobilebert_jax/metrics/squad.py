"""The official SQuAD v1.1 and v2.0 metrics (exact match and token F1), library and command line.

Both official scripts compare a predicted answer with every gold answer of its question and keep
the best score. Answers are normalised first: lower-cased, ASCII punctuation removed, the
articles "a", "an", "the" removed, whitespace collapsed. F1 is computed over the multisets of
normalised whitespace tokens. Scores are percentages over questions.

The versions differ in small ways, kept here:
  * v1.1 (`squad_v1_metrics`) reports `{"exact_match", "f1"}`; every gold answer counts, and an
    empty prediction scores 0.
  * v2.0 (`squad_v2_metrics`) reports `exact`, `f1`, `total`, then `HasAns_*` and `NoAns_*`
    for the answerable and unanswerable questions (each group only when present). Gold answers
    that normalise to "" are dropped; a question without any gold answer has "" as its only
    answer, so an empty prediction scores 1 there and an empty side scores F1 1 only if both
    sides are empty. With no-answer probabilities (`na_probs`, e.g. `null_odds.json`), a
    prediction whose probability exceeds `na_prob_thresh` (default 1.0) counts as "", and
    `best_exact`, `best_f1` (with their thresholds) report the scores at the best threshold.

The numbers (every float, and the order of the keys) are those of the official scripts: the same
sums in the same order. Missing predictions: v1.1 scores them 0 and logs "Unanswered question ID
will receive score 0.", as the official script does. The official v2.0 script prints "Missing
prediction for ID" and then fails (KeyError); here such a question is logged the same way and
scored 0 (wrong whether or not it is answerable, at every threshold) and counted in the totals.

Command line (the official v2.0 script's arguments, plus `--version`)::

  python -m mobilebert_jax.metrics.squad DATA_JSON PREDICTIONS_JSON \
      [--na-prob-file NULL_ODDS_JSON] [--na-prob-thresh 1.0] [--out-file EVAL_JSON] \
      [--version {auto,1.1,2.0}]

`--version auto` (default) uses the v1.1 metric when the data file says `"version": "1.1"` and
the v2.0 metric otherwise (the official files say "1.1" and "v2.0"). The result goes to stdout
as the official scripts print it (v2.0: 2-space-indented JSON; v1.1: one line) or, with
`--out-file`, to that file.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import string
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from mobilebert_jax import atomic_files

logger = logging.getLogger(__name__)

Gold = Mapping[str, Sequence[str]]
"""Question id -> gold answer texts (empty for an unanswerable question), in dataset order."""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace."""
  text = text.lower()
  text = "".join(c for c in text if c not in _PUNCTUATION)
  text = _ARTICLES.sub(" ", text)
  return " ".join(text.split())


def exact_score(gold: str, prediction: str) -> int:
  """1 when the normalised texts are equal, else 0."""
  return int(normalize_answer(gold) == normalize_answer(prediction))


def _f1_from_tokens(gold_tokens: list[str], pred_tokens: list[str]) -> float:
  num_same = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
  if num_same == 0:
    return 0
  precision = 1.0 * num_same / len(pred_tokens)
  recall = 1.0 * num_same / len(gold_tokens)
  return (2 * precision * recall) / (precision + recall)


def f1_score_v1(gold: str, prediction: str) -> float:
  """SQuAD v1.1 token F1: 0 whenever no normalised token is shared (an empty side included)."""
  return _f1_from_tokens(normalize_answer(gold).split(), normalize_answer(prediction).split())


def f1_score_v2(gold: str, prediction: str) -> float:
  """SQuAD v2.0 token F1: when either side has no tokens, 1 if both have none, else 0."""
  gold_tokens = normalize_answer(gold).split()
  pred_tokens = normalize_answer(prediction).split()
  if not gold_tokens or not pred_tokens:
    return int(gold_tokens == pred_tokens)
  return _f1_from_tokens(gold_tokens, pred_tokens)


def squad_v1_metrics(gold: Gold, predictions: Mapping[str, str]) -> dict[str, float]:
  """The official SQuAD v1.1 metric.

  Args:
    gold: question id -> gold answer texts (every question needs at least one).
    predictions: question id -> predicted text; ids not in `gold` are ignored.

  Returns:
    `{"exact_match": ..., "f1": ...}`, percentages over all gold questions.

  Raises:
    ValueError: no questions, or a question without gold answers.
  """
  if not gold:
    raise ValueError("no questions to score")
  exact_total = f1_total = 0
  for qid, answers in gold.items():
    if not answers:
      raise ValueError(f"question {qid!r} has no gold answer; the SQuAD 1.1 metric needs one")
    if qid not in predictions:
      logger.warning("Unanswered question %s will receive score 0.", qid)
      continue
    prediction = predictions[qid]
    exact_total += max(exact_score(a, prediction) for a in answers)
    f1_total += max(f1_score_v1(a, prediction) for a in answers)
  return {
    "exact_match": 100.0 * exact_total / len(gold),
    "f1": 100.0 * f1_total / len(gold),
  }


def _scores(
  exact: Mapping[str, float], f1: Mapping[str, float], qids: Sequence[str]
) -> dict[str, Any]:
  return {
    "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
    "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
    "total": len(qids),
  }


def _best_threshold(
  gold: Gold,
  predictions: Mapping[str, str],
  raw: Mapping[str, float],
  na_probs: Mapping[str, float],
) -> tuple[float, float]:
  """The score, and the no-answer threshold, that a sweep over `na_probs` maximises.

  The sweep starts with every question answered "" (all unanswerable ones right), then admits
  the predictions in increasing order of no-answer probability; the threshold is the probability
  of the last question admitted at the best running score (0.0 if admitting none is best).
  """
  # A missing prediction is wrong at every threshold, so it never counts as a right "".
  current = sum(1 for q, answers in gold.items() if not answers and q in predictions)
  best, best_thresh = current, 0.0
  for qid in sorted(na_probs, key=lambda k: na_probs[k]):
    if qid not in raw or qid not in predictions:
      continue
    if gold[qid]:
      current += raw[qid]  # admitting an answerable question earns its score
    elif predictions[qid]:
      current += -1  # a non-empty answer to an unanswerable question loses its point
    if current > best:
      best, best_thresh = current, na_probs[qid]
  return 100.0 * best / len(raw), best_thresh


def squad_v2_metrics(
  gold: Gold,
  predictions: Mapping[str, str],
  na_probs: Mapping[str, float] | None = None,
  na_prob_thresh: float = 1.0,
) -> dict[str, Any]:
  """The official SQuAD v2.0 metric.

  Args:
    gold: question id -> gold answer texts; an empty list marks an unanswerable question.
    predictions: question id -> predicted text ("" for no answer); extra ids are ignored.
    na_probs: question id -> no-answer probability or score (e.g. `null_odds.json`); adds the
      `best_*` keys. Must cover every predicted question of `gold`.
    na_prob_thresh: predictions whose `na_probs` value exceeds this count as "".

  Returns:
    The official keys, in the official order: `exact`, `f1`, `total`, `HasAns_exact`,
    `HasAns_f1`, `HasAns_total`, `NoAns_exact`, `NoAns_f1`, `NoAns_total` (each group only when
    the data has such questions), then with `na_probs` `best_exact`, `best_exact_thresh`,
    `best_f1`, `best_f1_thresh`.

  Raises:
    ValueError: no questions, or `na_probs` without a predicted question.
  """
  if not gold:
    raise ValueError("no questions to score")
  exact_raw: dict[str, float] = {}
  f1_raw: dict[str, float] = {}
  for qid, answers in gold.items():
    if qid not in predictions:
      logger.warning("Missing prediction for %s", qid)
      exact_raw[qid] = f1_raw[qid] = 0
      continue
    golds = [a for a in answers if normalize_answer(a)] or [""]
    prediction = predictions[qid]
    exact_raw[qid] = max(exact_score(a, prediction) for a in golds)
    f1_raw[qid] = max(f1_score_v2(a, prediction) for a in golds)

  probs = na_probs if na_probs is not None else {q: 0.0 for q in predictions}
  exact, f1 = dict(exact_raw), dict(f1_raw)
  for qid in gold:
    if qid not in predictions:
      continue
    if qid not in probs:
      raise ValueError(f"no no-answer probability for question {qid!r}")
    if probs[qid] > na_prob_thresh:
      # Predicted unanswerable: right exactly when the question has no answer.
      exact[qid] = f1[qid] = float(not gold[qid])

  result = _scores(exact, f1, list(gold))
  for prefix, qids in (
    ("HasAns", [q for q, a in gold.items() if a]),
    ("NoAns", [q for q, a in gold.items() if not a]),
  ):
    if qids:
      for key, value in _scores(exact, f1, qids).items():
        result[f"{prefix}_{key}"] = value
  if na_probs is not None:
    result["best_exact"], result["best_exact_thresh"] = _best_threshold(
      gold, predictions, exact_raw, na_probs
    )
    result["best_f1"], result["best_f1_thresh"] = _best_threshold(
      gold, predictions, f1_raw, na_probs
    )
  return result


# ----------------------------------------------------------------------------------------------
# Files.


def _load_json(path: str | os.PathLike) -> Any:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(path)}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if key not in obj:
    raise ValueError(f"{where}: missing key {key!r}")
  if not isinstance(obj[key], kind):
    raise ValueError(f"{where}: {key!r} must be {kind.__name__}, got {type(obj[key]).__name__}")
  return obj[key]


def gold_from_dataset(articles: Sequence[Any], *, source: str = "dataset") -> dict[str, list[str]]:
  """Gold answers of an official SQuAD `data` list (articles -> paragraphs -> qas -> answers).

  Raises:
    ValueError: a malformed record or a repeated question id, naming `source` and the record.
  """
  gold: dict[str, list[str]] = {}
  for a, article in enumerate(articles):
    for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{source}: data[{a}]")):
      where_p = f"{source}: data[{a}] paragraphs[{p}]"
      for q, qa in enumerate(_field(paragraph, "qas", list, where_p)):
        where = f"{where_p} qas[{q}]"
        qid = _field(qa, "id", str, where)
        where += f" (id {qid!r})"
        if qid in gold:
          raise ValueError(f"{where}: duplicate question id")
        answers = _field(qa, "answers", list, where)
        gold[qid] = [
          _field(answer, "text", str, f"{where} answers[{i}]") for i, answer in enumerate(answers)
        ]
  return gold


def load_squad_gold(path: str | os.PathLike) -> tuple[dict[str, list[str]], str | None]:
  """Reads an official SQuAD data file: `(gold answers by question id, its "version" field)`."""
  source = os.fspath(path)
  data = _load_json(path)
  articles = _field(data, "data", list, source)
  version = data.get("version")
  return gold_from_dataset(articles, source=source), version if isinstance(version, str) else None


def _load_mapping(path: str | os.PathLike, kind: type | tuple[type, ...], what: str) -> dict:
  source = os.fspath(path)
  data = _load_json(path)
  if not isinstance(data, dict):
    raise ValueError(f"{source}: {what} must be a JSON object keyed by question id")
  for qid, value in data.items():
    if not isinstance(value, kind) or isinstance(value, bool):
      raise ValueError(f"{source}: question {qid!r}: {what} value {value!r} has the wrong type")
  return data


def load_predictions(path: str | os.PathLike) -> dict[str, str]:
  """Reads `predictions.json` (question id -> answer text)."""
  return _load_mapping(path, str, "a prediction")


def load_na_probs(path: str | os.PathLike) -> dict[str, float]:
  """Reads a no-answer probability file such as `null_odds.json` (question id -> number)."""
  return _load_mapping(path, (int, float), "a no-answer probability")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
    prog="python -m mobilebert_jax.metrics.squad",
    description="Official SQuAD v1.1 / v2.0 evaluation (exact match and F1).",
  )
  parser.add_argument("data_file", metavar="DATA_JSON", help="SQuAD data file, e.g. dev-v2.0.json")
  parser.add_argument("pred_file", metavar="PREDICTIONS_JSON", help="predictions.json")
  parser.add_argument("--out-file", "-o", help="write the scores here instead of stdout")
  parser.add_argument(
    "--na-prob-file", "-n", help="no-answer probabilities, e.g. null_odds.json (v2.0)"
  )
  parser.add_argument(
    "--na-prob-thresh",
    "-t",
    type=float,
    default=1.0,
    help='predict "" where the no-answer probability exceeds this (default 1.0, v2.0)',
  )
  parser.add_argument(
    "--version",
    choices=("auto", "1.1", "2.0"),
    default="auto",
    help='metric version; auto: 1.1 when the data file says "version": "1.1", else 2.0',
  )
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status."""
  args = _parse_args(argv)
  logging.basicConfig(format="%(message)s", stream=sys.stderr, level=logging.WARNING)
  try:
    gold, file_version = load_squad_gold(args.data_file)
    predictions = load_predictions(args.pred_file)
    version = args.version
    if version == "auto":
      version = "1.1" if file_version == "1.1" else "2.0"
    if version == "1.1":
      if args.na_prob_file:
        raise ValueError("--na-prob-file is a SQuAD 2.0 option; the v1.1 metric has none")
      if file_version != "1.1":
        print(f"Evaluation expects v-1.1, but got dataset with v-{file_version}", file=sys.stderr)
      result = squad_v1_metrics(gold, predictions)
      text = json.dumps(result)
    else:
      na_probs = None
      if args.na_prob_file:
        na_probs = load_na_probs(args.na_prob_file)
        for qid in gold:
          if qid in predictions and qid not in na_probs:
            raise ValueError(f"{args.na_prob_file}: no entry for question {qid!r}")
      result = squad_v2_metrics(gold, predictions, na_probs, args.na_prob_thresh)
      text = json.dumps(result, indent=2)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.out_file:
    # Compact JSON with no trailing newline, as the official script's --out-file.
    atomic_files.write_text(args.out_file, json.dumps(result))
  else:
    print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
