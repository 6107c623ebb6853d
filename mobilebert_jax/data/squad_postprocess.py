"""Start/end logits of SQuAD features to answer texts, n-best lists and no-answer scores.

Reproduces BERT's `run_squad.py` decoding:
  * In every window of an example, the `n_best_size` highest start logits and end logits (over
    all L positions, padding included; ties to the lower position) are paired. A pair is kept when
    both ends are document tokens, the start is a max-context token of the window, end >= start,
    and the span has at most `max_answer_length` tokens.
  * SQuAD 2.0: the no-answer score is the smallest `start_logit[0] + end_logit[0]` ([CLS]) over
    the example's windows; it enters the candidates as the empty answer.
  * Candidates are ranked by start + end logit; distinct texts fill the n-best list, whose
    softmax over the summed logits gives the `probability` of each entry.
  * SQuAD 1.1: the answer is the top entry. SQuAD 2.0: with `score_diff = null score - best
    non-empty entry's score`, the answer is "" when `score_diff > null_score_diff_threshold`
    (default 0.0), else the best non-empty text; `score_diff` is written to `null_odds.json`, the
    `--na-prob-file` of the official evaluation script.

Answer text (`text_extraction`):
  * "final_text" (default, the reference behaviour): the WordPiece span is detokenised, and
    `get_final_text` aligns it with the original words it came from, to recover the original
    casing, accents and punctuation without the extra characters of partly covered words.
  * "offsets": the context between the first token's start and the last token's end character
    (`SquadFeatureMeta.token_char_start/end`). Exact for every tokenizer normalisation, and what
    a demo would highlight; it can differ from "final_text" where the reference's alignment
    heuristic gives up (it then returns the whole words).

Deviation: where a SQuAD 2.0 example has no valid non-empty candidate at all, the reference fails
(it dereferences a missing entry); here the answer is "", its `score_diff` is the null score
itself (as against a non-null score of 0.0, the reference's placeholder logits), and the case is
counted in `SquadPredictions.num_without_span`. A SQuAD 1.1 example without candidates gets the
reference's placeholder answer "empty".
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from mobilebert_jax import atomic_files
from mobilebert_jax.data.squad_examples import SquadExample
from mobilebert_jax.data.squad_features import SquadFeatures, SquadTokenizer

logger = logging.getLogger(__name__)

TextExtraction = Literal["final_text", "offsets"]

PREDICTIONS_FILE = "predictions.json"
NBEST_FILE = "nbest_predictions.json"
NULL_ODDS_FILE = "null_odds.json"


@dataclasses.dataclass(frozen=True)
class SquadPredictions:
  """Decoded answers of a list of examples, in example order.

  Attributes:
    predictions: question id -> answer text ("" for no answer): `predictions.json`.
    nbest: question id -> n-best entries, each `{"text", "probability", "start_logit",
      "end_logit"}`: `nbest_predictions.json`.
    null_odds: SQuAD 2.0 only, question id -> null score minus best non-null score:
      `null_odds.json`; None for SQuAD 1.1.
    num_without_span: examples with no valid non-empty candidate (see the module docstring).
  """

  predictions: dict[str, str]
  nbest: dict[str, list[dict[str, Any]]]
  null_odds: dict[str, float] | None
  num_without_span: int = 0


def _strip_spaces(text: str) -> tuple[str, list[int]]:
  """`text` without " " characters, and the position in `text` of each remaining character."""
  kept = [i for i, c in enumerate(text) if c != " "]
  return "".join(text[i] for i in kept), kept


def get_final_text(
  pred_text: str, orig_text: str, basic_tokenize: Callable[[str], list[str]]
) -> str:
  """Maps a detokenised prediction back onto the original words it was cut from.

  `pred_text` is normalised (lower case, no accents, punctuation split off) and `orig_text` are
  the whole original words under the predicted tokens (e.g. "steve smith" and "Steve Smith's").
  The original words are basic-tokenised the same way; when, spaces aside, they have as many
  characters as the original, characters are paired one to one and the prediction's first and
  last characters are carried over ("Steve Smith"). When the prediction is not found in the
  tokenised words or the lengths differ, `orig_text` is returned unchanged.

  Args:
    pred_text: the predicted WordPiece span, "##" joins removed, single-spaced.
    orig_text: the original words it covers, joined by single spaces.
    basic_tokenize: the tokenizer's basic (pre-WordPiece) step, with the model's casing.

  Returns:
    The part of `orig_text` that the prediction covers.
  """
  tok_text = " ".join(basic_tokenize(orig_text))
  start = tok_text.find(pred_text)
  if start == -1:
    return orig_text
  end = start + len(pred_text) - 1
  orig_ns, orig_positions = _strip_spaces(orig_text)
  tok_ns, tok_positions = _strip_spaces(tok_text)
  if len(orig_ns) != len(tok_ns):
    return orig_text
  tok_to_ns = {position: ns for ns, position in enumerate(tok_positions)}
  if start not in tok_to_ns or end not in tok_to_ns:
    return orig_text
  return orig_text[orig_positions[tok_to_ns[start]] : orig_positions[tok_to_ns[end]] + 1]


def softmax(scores: Sequence[float]) -> list[float]:
  """Softmax in Python floats, max-shifted, summed in order (the reference's arithmetic)."""
  if not scores:
    return []
  top = max(scores)
  exps = [math.exp(s - top) for s in scores]
  total = 0.0
  for x in exps:
    total += x
  return [x / total for x in exps]


def _top_indexes(logits: np.ndarray, n: int) -> np.ndarray:
  # Highest first; a stable sort of the negated values puts ties at the lower position first.
  return np.argsort(-logits, kind="stable")[:n]


@dataclasses.dataclass(frozen=True)
class _Candidate:
  feature: int  # row in the features
  start: int
  end: int
  start_logit: float
  end_logit: float


def _feature_candidates(
  features: SquadFeatures,
  row: int,
  start_logits: np.ndarray,
  end_logits: np.ndarray,
  n_best_size: int,
  max_answer_length: int,
) -> list[_Candidate]:
  """Valid (start, end) pairs of one feature, in the reference's order (start-major)."""
  meta = features.meta
  starts = _top_indexes(start_logits, n_best_size)[:, None]
  ends = _top_indexes(end_logits, n_best_size)[None, :]
  is_doc = meta.token_to_orig_map[row] >= 0
  valid = (
    is_doc[starts]
    & is_doc[ends]
    & meta.token_is_max_context[row][starts]
    & (ends >= starts)
    & (ends - starts + 1 <= max_answer_length)
  )
  pairs = np.argwhere(valid)  # row-major: the reference's nested loop order
  return [
    _Candidate(
      row,
      int(starts[i, 0]),
      int(ends[0, j]),
      float(start_logits[starts[i, 0]]),
      float(end_logits[ends[0, j]]),
    )
    for i, j in pairs
  ]


def _answer_text(
  example: SquadExample,
  features: SquadFeatures,
  cand: _Candidate,
  tokenizer: SquadTokenizer,
  text_extraction: TextExtraction,
) -> str:
  meta = features.meta
  if text_extraction == "offsets":
    begin = int(meta.token_char_start[cand.feature, cand.start])
    end = int(meta.token_char_end[cand.feature, cand.end])
    return example.context_text[begin:end]
  ids = features.inputs["input_ids"][cand.feature, cand.start : cand.end + 1]
  tok_text = " ".join(tokenizer.convert_ids_to_tokens(ids.tolist()))
  tok_text = tok_text.replace(" ##", "").replace("##", "")
  tok_text = " ".join(tok_text.strip().split())
  first_word = int(meta.token_to_orig_map[cand.feature, cand.start])
  last_word = int(meta.token_to_orig_map[cand.feature, cand.end])
  orig_text = " ".join(example.doc_tokens[first_word : last_word + 1])
  return get_final_text(tok_text, orig_text, tokenizer.basic_tokenize)


def postprocess_predictions(
  examples: Sequence[SquadExample],
  features: SquadFeatures,
  start_logits: np.ndarray,
  end_logits: np.ndarray,
  tokenizer: SquadTokenizer,
  *,
  n_best_size: int = 20,
  max_answer_length: int = 30,
  version_2_with_negative: bool = False,
  null_score_diff_threshold: float = 0.0,
  text_extraction: TextExtraction = "final_text",
) -> SquadPredictions:
  """Decodes per-feature logits into answers (see the module docstring for the rules).

  Args:
    examples: the examples the features were made from.
    features: `convert_examples_to_features(examples, ..., is_training=False)`.
    start_logits: [N, L] start logits, one row per feature, in feature order.
    end_logits: [N, L] end logits.
    tokenizer: the tokenizer the features were made with.
    n_best_size: start and end positions tried per window, and entries kept per question.
    max_answer_length: longest answer, in WordPiece tokens.
    version_2_with_negative: SQuAD 2.0 (questions may have no answer).
    null_score_diff_threshold: SQuAD 2.0: answer "" when null score - best non-null score is
      above this.
    text_extraction: "final_text" (the reference) or "offsets" (cut from the context by
      character offsets).

  Returns:
    Answers, n-best lists and (SQuAD 2.0) null odds, keyed by question id in example order.

  Raises:
    ValueError: logits whose shape does not match the features, an example without features,
      an unknown `text_extraction`, or a non-positive size.
  """
  if text_extraction not in ("final_text", "offsets"):
    raise ValueError(f"text_extraction must be 'final_text' or 'offsets', got {text_extraction!r}")
  if n_best_size < 1 or max_answer_length < 1:
    raise ValueError(
      f"n_best_size and max_answer_length must be positive, got {n_best_size} and "
      f"{max_answer_length}"
    )
  expected = features.inputs["input_ids"].shape
  start_logits = np.asarray(start_logits, dtype=np.float64)  # exact for float32 logits
  end_logits = np.asarray(end_logits, dtype=np.float64)
  if start_logits.shape != expected or end_logits.shape != expected:
    raise ValueError(
      f"logits must have the features' shape {expected}, got {start_logits.shape} and "
      f"{end_logits.shape}"
    )
  by_example: dict[int, list[int]] = collections.defaultdict(list)
  for row, index in enumerate(features.meta.example_index.tolist()):
    by_example[index].append(row)

  predictions: dict[str, str] = {}
  nbest_json: dict[str, list[dict[str, Any]]] = {}
  null_odds: dict[str, float] | None = {} if version_2_with_negative else None
  num_without_span = 0

  for ex_index, example in enumerate(examples):
    rows = by_example.get(ex_index)
    if not rows:
      raise ValueError(f"question {example.qas_id!r} (example {ex_index}) has no features")
    candidates: list[_Candidate] = []
    null: _Candidate | None = None
    for row in rows:
      s_logits, e_logits = start_logits[row], end_logits[row]
      if version_2_with_negative:
        score = float(s_logits[0]) + float(e_logits[0])
        if null is None or score < null.start_logit + null.end_logit:
          null = _Candidate(row, 0, 0, float(s_logits[0]), float(e_logits[0]))
      candidates += _feature_candidates(
        features, row, s_logits, e_logits, n_best_size, max_answer_length
      )
    if null is not None:
      candidates.append(null)
    candidates.sort(key=lambda c: c.start_logit + c.end_logit, reverse=True)  # stable

    nbest: list[tuple[str, float, float]] = []
    seen: set[str] = set()
    for cand in candidates:
      if len(nbest) >= n_best_size:
        break
      if cand.start > 0:
        text = _answer_text(example, features, cand, tokenizer, text_extraction)
        if text in seen:
          continue
      else:
        text = ""
      seen.add(text)
      nbest.append((text, cand.start_logit, cand.end_logit))
    if null is not None and "" not in seen:
      nbest.append(("", null.start_logit, null.end_logit))
    if not nbest:
      nbest.append(("empty", 0.0, 0.0))  # the reference's placeholder when nothing is valid

    probs = softmax([s + e for _, s, e in nbest])
    nbest_json[example.qas_id] = [
      {"text": text, "probability": p, "start_logit": s, "end_logit": e}
      for (text, s, e), p in zip(nbest, probs, strict=True)
    ]
    if null is None:
      predictions[example.qas_id] = nbest[0][0]
      continue
    best = next((entry for entry in nbest if entry[0]), None)
    null_score = null.start_logit + null.end_logit
    if best is None:
      # No span to offer (the reference fails here): answer "" and score the null against the
      # reference's placeholder logits (0.0, 0.0).
      num_without_span += 1
      predictions[example.qas_id] = ""
      null_odds[example.qas_id] = null_score
      continue
    score_diff = null_score - best[1] - best[2]
    null_odds[example.qas_id] = score_diff
    predictions[example.qas_id] = "" if score_diff > null_score_diff_threshold else best[0]

  if num_without_span:
    logger.warning("%d question(s) had no valid non-empty answer span", num_without_span)
  return SquadPredictions(predictions, nbest_json, null_odds, num_without_span)


def write_prediction_files(result: SquadPredictions, output_dir: str | os.PathLike) -> list[str]:
  """Writes `predictions.json`, `nbest_predictions.json` and (SQuAD 2.0) `null_odds.json`.

  The files have the reference's layout (4-space-indented JSON in question order) and are the
  inputs of `python -m mobilebert_jax.metrics.squad` (and of the official evaluation scripts).

  Returns:
    The paths written.
  """
  os.makedirs(output_dir, exist_ok=True)
  outputs = [(PREDICTIONS_FILE, result.predictions), (NBEST_FILE, result.nbest)]
  if result.null_odds is not None:
    outputs.append((NULL_ODDS_FILE, result.null_odds))
  paths = []
  for name, obj in outputs:
    path = os.path.join(output_dir, name)
    # Atomic: a failed write (a full disk) must not leave an empty predictions.json behind.
    atomic_files.write_json(path, obj, indent=4, sort_keys=False)
    paths.append(path)
  return paths
