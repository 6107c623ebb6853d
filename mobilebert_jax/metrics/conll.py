"""Entity (chunk) precision, recall and F1 exactly as the CoNLL `conlleval` script computes them.

This is a re-implementation of the rules of `conlleval` (Tjong Kim Sang, version 2004-01-26), the
scorer of the CoNLL-2000 chunking and CoNLL-2002/2003 NER shared tasks:

* A tag is split at its first hyphen into a prefix and a type (`B-MISC` -> `B`, `MISC`; `O` ->
  `O`, no type). The prefix decides chunk boundaries, so IOB1, IOB2 (BIO), IOE1, IOE2 and the
  bracket tags `[`/`]` are all understood without being told which scheme is in use.
* A chunk starts at B after anything, at I or E after O, at E after E, at I after E, wherever the
  type changes (unless the tag is O), and at every `[`/`]`. It ends before B after B/I, before O
  after B/I/E, before E or I after E, wherever the type changes after a non-O tag, and after every
  `[`/`]`. So an I- tag after O, or after a chunk of another type, starts a new chunk: this is how
  IOB1 files, and invalid IOB2 predictions, are scored.
* A predicted chunk is correct only if it starts and ends at the same words as a gold chunk and has
  the same type; there is no credit for partial overlaps or for the right span with the wrong type.
* Sentence boundaries close every chunk (they count as a word tagged O on both sides, and are not
  counted as tokens).
* Precision = correct / predicted chunks, recall = correct / gold chunks, F1 their harmonic mean;
  each is 0 when its denominator is 0. Per-type scores cover every type seen in the gold or the
  predicted tags. Token accuracy counts words whose predicted tag equals the gold tag exactly.

Results are fractions; `format_conlleval` prints them as percentages in conlleval's layout. One
difference in what is fed rather than in the rules: given a CoNLL-2003 output file, the script also
counts each `-DOCSTART-` line as a (correctly tagged O) token; here only sentences are passed, so
token accuracy excludes those lines. Entity scores are unaffected.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

__all__ = [
  "ChunkScore",
  "ConllEvalResult",
  "chunk_ends",
  "chunk_starts",
  "conlleval",
  "extract_chunks",
  "format_conlleval",
  "split_tag",
]

_OUTSIDE = "O"


def split_tag(tag: str) -> tuple[str, str]:
  """Splits a tag at its first hyphen into (prefix, type): `B-MISC` -> (`B`, `MISC`).

  Tags without a hyphen have an empty type (`O` -> (`O`, ``)). As in conlleval (where Perl's
  truthiness turns a type "0" into ""), a type spelled `0` counts as no type.
  """
  prefix, _, chunk_type = tag.partition("-")
  return prefix, "" if chunk_type == "0" else chunk_type


def chunk_ends(prev_prefix: str, prefix: str, prev_type: str, chunk_type: str) -> bool:
  """Whether a chunk ended between the previous word and this one (conlleval's `endOfChunk`)."""
  if (prev_prefix, prefix) in _END_PAIRS:
    return True
  if prev_prefix not in (_OUTSIDE, ".") and prev_type != chunk_type:
    return True
  # Bracket tags are chunks of length one.
  return prev_prefix in ("[", "]")


def chunk_starts(prev_prefix: str, prefix: str, prev_type: str, chunk_type: str) -> bool:
  """Whether a chunk started at this word (conlleval's `startOfChunk`)."""
  if (prev_prefix, prefix) in _START_PAIRS:
    return True
  if prefix not in (_OUTSIDE, ".") and prev_type != chunk_type:
    return True
  return prefix in ("[", "]")


_END_PAIRS = frozenset(
  {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
)
_START_PAIRS = frozenset(
  {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
)


def extract_chunks(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  """The chunks conlleval sees in one sentence.

  Args:
    tags: One tag per word.

  Returns:
    `(type, start, end)` triples with `end` exclusive, in order.
  """
  chunks = []
  prev_prefix, prev_type = _OUTSIDE, ""
  open_type, open_start = None, 0
  for i, tag in enumerate([*tags, _OUTSIDE]):  # The trailing O is the sentence boundary.
    prefix, chunk_type = split_tag(tag)
    ends = chunk_ends(prev_prefix, prefix, prev_type, chunk_type)
    starts = chunk_starts(prev_prefix, prefix, prev_type, chunk_type)
    if open_type is not None and (ends or starts):
      chunks.append((open_type, open_start, i))
      open_type = None
    if starts and i < len(tags):
      open_type, open_start = chunk_type, i
    prev_prefix, prev_type = prefix, chunk_type
  return chunks


@dataclasses.dataclass(frozen=True)
class ChunkScore:
  """Scores over one chunk type, or over all of them.

  Attributes:
    precision: correct / predicted (0 if nothing was predicted).
    recall: correct / gold (0 if there is no gold chunk).
    f1: 2PR / (P + R) (0 if P + R = 0).
    num_correct: Predicted chunks matching a gold chunk in span and type.
    num_gold: Gold chunks.
    num_predicted: Predicted chunks.
  """

  precision: float
  recall: float
  f1: float
  num_correct: int
  num_gold: int
  num_predicted: int

  @classmethod
  def from_counts(cls, num_correct: int, num_gold: int, num_predicted: int) -> ChunkScore:
    precision = num_correct / num_predicted if num_predicted else 0.0
    recall = num_correct / num_gold if num_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return cls(precision, recall, f1, num_correct, num_gold, num_predicted)


@dataclasses.dataclass(frozen=True)
class ConllEvalResult:
  """Everything conlleval prints.

  Attributes:
    overall: Scores over all chunk types.
    per_type: Scores per chunk type (sorted by type name).
    num_tokens: Words scored (sentence boundaries excluded).
    num_correct_tags: Words whose predicted tag equals the gold tag.
  """

  overall: ChunkScore
  per_type: dict[str, ChunkScore]
  num_tokens: int
  num_correct_tags: int

  @property
  def accuracy(self) -> float:
    """Token-level tag accuracy."""
    return self.num_correct_tags / self.num_tokens if self.num_tokens else 0.0

  @property
  def precision(self) -> float:
    return self.overall.precision

  @property
  def recall(self) -> float:
    return self.overall.recall

  @property
  def f1(self) -> float:
    return self.overall.f1


def conlleval(
  gold_tags: Sequence[Sequence[str]], predicted_tags: Sequence[Sequence[str]]
) -> ConllEvalResult:
  """Scores predicted tag sequences against gold ones with conlleval's rules.

  Args:
    gold_tags: Per sentence, one gold tag per word.
    predicted_tags: Per sentence, one predicted tag per word (same lengths).

  Returns:
    Overall and per-type precision/recall/F1, and token accuracy.
  """
  if len(gold_tags) != len(predicted_tags):
    raise ValueError(f"{len(gold_tags)} gold sentences but {len(predicted_tags)} predicted")
  correct, gold_found, pred_found = Counter(), Counter(), Counter()
  num_tokens = num_correct_tags = 0
  # State carried from word to word (and across sentence boundaries, as in the script).
  last_gold, last_gold_type, last_pred, last_pred_type = _OUTSIDE, "", _OUTSIDE, ""
  in_correct = False

  def step(gold: str, gold_type: str, pred: str, pred_type: str) -> None:
    nonlocal last_gold, last_gold_type, last_pred, last_pred_type, in_correct
    gold_ends = chunk_ends(last_gold, gold, last_gold_type, gold_type)
    pred_ends = chunk_ends(last_pred, pred, last_pred_type, pred_type)
    gold_starts = chunk_starts(last_gold, gold, last_gold_type, gold_type)
    pred_starts = chunk_starts(last_pred, pred, last_pred_type, pred_type)
    if in_correct:
      if gold_ends and pred_ends and last_pred_type == last_gold_type:
        in_correct = False
        correct[last_gold_type] += 1
      elif gold_ends != pred_ends or pred_type != gold_type:
        in_correct = False
    if gold_starts and pred_starts and pred_type == gold_type:
      in_correct = True
    if gold_starts:
      gold_found[gold_type] += 1
    if pred_starts:
      pred_found[pred_type] += 1
    last_gold, last_gold_type, last_pred, last_pred_type = gold, gold_type, pred, pred_type

  for index, (gold_sentence, pred_sentence) in enumerate(
    zip(gold_tags, predicted_tags, strict=True)
  ):
    if len(gold_sentence) != len(pred_sentence):
      raise ValueError(
        f"sentence {index}: {len(gold_sentence)} gold tags but {len(pred_sentence)} predicted"
      )
    for gold_tag, pred_tag in zip(gold_sentence, pred_sentence, strict=True):
      gold, gold_type = split_tag(gold_tag)
      pred, pred_type = split_tag(pred_tag)
      step(gold, gold_type, pred, pred_type)
      num_tokens += 1
      num_correct_tags += gold == pred and gold_type == pred_type
    step(_OUTSIDE, "", _OUTSIDE, "")  # The blank line between sentences.
  if in_correct:
    correct[last_gold_type] += 1

  per_type = {
    chunk_type: ChunkScore.from_counts(
      correct[chunk_type], gold_found[chunk_type], pred_found[chunk_type]
    )
    for chunk_type in sorted(set(gold_found) | set(pred_found))
  }
  overall = ChunkScore.from_counts(
    sum(correct.values()), sum(gold_found.values()), sum(pred_found.values())
  )
  return ConllEvalResult(overall, per_type, num_tokens, num_correct_tags)


def format_conlleval(result: ConllEvalResult) -> str:
  """The report in conlleval's own layout (percentages with two decimals).

  Byte-for-byte what the script prints, except that the script lists the empty type (tags
  without a hyphen, such as a bare `B`) twice when both gold and predicted tags have it.
  """
  overall = result.overall
  lines = [
    f"processed {result.num_tokens} tokens with {overall.num_gold} phrases; "
    f"found: {overall.num_predicted} phrases; correct: {overall.num_correct}."
  ]
  if result.num_tokens:
    lines.append(
      f"accuracy: {100 * result.accuracy:6.2f}%; precision: {100 * overall.precision:6.2f}%; "
      f"recall: {100 * overall.recall:6.2f}%; FB1: {100 * overall.f1:6.2f}"
    )
  for chunk_type, score in result.per_type.items():
    lines.append(
      f"{chunk_type:>17s}: precision: {100 * score.precision:6.2f}%; "
      f"recall: {100 * score.recall:6.2f}%; FB1: {100 * score.f1:6.2f}  {score.num_predicted}"
    )
  return "\n".join(lines) + "\n"
