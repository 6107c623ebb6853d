"""SQuAD v1.1 / v2.0 questions as `SquadExample`s, from the official JSON files or from TFDS.

The context is split into words exactly as BERT's `run_squad.py` does: runs of characters other
than space, tab, CR, LF and U+202F (narrow no-break space). Every other character, including other
Unicode spaces, stays inside its word, and the WordPiece tokenizer sees each word on its own.

Training examples carry the answer as word positions. The character offset of the first (and, for
training, only) answer is projected onto words; when the words at that place, joined by single
spaces, do not contain the answer text (with its own whitespace collapsed), the question is
skipped, counted and reported, as the reference pipeline does (this happens for a handful of
SQuAD questions with odd Unicode). Two degenerate cases that the reference keeps with a
meaningless target are skipped and reported the same way: a whitespace-only answer, and an
answer that starts in whitespace before the first word. Everything else that is wrong with a
record (missing keys, wrong types, empty texts, an answer offset outside the context, a training
question without exactly one answer, a repeated question id) raises a `ValueError` that names
the file and the record.

Sources:
  * `read_squad_json`: the official files `train-v1.1.json`, `dev-v1.1.json`, `train-v2.0.json`,
    `dev-v2.0.json` from https://rajpurkar.github.io/SQuAD-explorer/ (or any file in that format).
  * `load_squad_tfds`: TFDS `squad/v1.1` and `squad/v2.0` (splits `train`, `validation`); needs
    the optional extra `pip install 'mobilebert-jax[tf]'`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mobilebert_jax.data import sources

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

TFDS_VERSIONS = ("1.1", "2.0")
"""SQuAD versions available in TFDS, as `squad/v1.1` and `squad/v2.0`."""


@dataclasses.dataclass(frozen=True)
class SquadAnswer:
  """One annotated answer: its text and the character offset where it starts in the context."""

  text: str
  answer_start: int


@dataclasses.dataclass(frozen=True)
class SquadExample:
  """One question about one context.

  Attributes:
    qas_id: the question id (the key of `predictions.json`).
    question_text: the question as written.
    context_text: the paragraph as written.
    title: the article title ("" when the source has none).
    doc_tokens: whitespace-separated words of the context, [num_words].
    word_start_chars: character offset in `context_text` of each word's first character,
      [num_words]; word `i` spans `context_text[s:s + len(doc_tokens[i])]`.
    answers: every annotated answer (several for dev sets; none for unanswerable questions).
    plausible_answers: SQuAD 2.0's plausible (but wrong) answers of unanswerable questions.
    is_impossible: the question has no answer in the context (SQuAD 2.0); False when the source
      does not say.
    orig_answer_text: training target text; "" for impossible questions, None outside training.
    start_position: training target, index of the first answer word; -1 for impossible
      questions, None outside training.
    end_position: training target, index of the last answer word (inclusive); as above.
  """

  qas_id: str
  question_text: str
  context_text: str
  title: str
  doc_tokens: tuple[str, ...]
  word_start_chars: tuple[int, ...]
  answers: tuple[SquadAnswer, ...] = ()
  plausible_answers: tuple[SquadAnswer, ...] = ()
  is_impossible: bool = False
  orig_answer_text: str | None = None
  start_position: int | None = None
  end_position: int | None = None

  @property
  def answer_texts(self) -> list[str]:
    """Texts of all annotated answers, in file order (what the official metric scores against)."""
    return [a.text for a in self.answers]


@dataclasses.dataclass(frozen=True)
class SkippedQuestion:
  """A training question left out because its answer text is not at its offset."""

  qas_id: str
  record: str
  reason: str


@dataclasses.dataclass(frozen=True)
class SquadReadResult:
  """Examples read from one source, and the training questions that were skipped.

  Attributes:
    examples: the examples, in source order.
    skipped: questions left out (training only), with where they are and why.
  """

  examples: list[SquadExample]
  skipped: list[SkippedQuestion]

  @property
  def skipped_ids(self) -> list[str]:
    return [s.qas_id for s in self.skipped]


def _is_reference_whitespace(c: str) -> bool:
  # The reference's word splitter: only these five characters separate words.
  return c in " \t\r\n" or ord(c) == 0x202F


def split_words(context: str) -> tuple[tuple[str, ...], tuple[int, ...], list[int]]:
  """Splits a context into words as BERT's SQuAD reader does.

  Args:
    context: the paragraph text.

  Returns:
    `(words, word_start_chars, char_to_word)`: the words, the offset of each word's first
    character, and for every character of `context` the index of the word it belongs to (for a
    whitespace character, the word before it; -1 before the first word), [len(context)].
  """
  words: list[str] = []
  starts: list[int] = []
  char_to_word: list[int] = []
  in_word = False
  for i, c in enumerate(context):
    if _is_reference_whitespace(c):
      in_word = False
    else:
      if not in_word:
        words.append(c)
        starts.append(i)
      else:
        words[-1] += c
      in_word = True
    char_to_word.append(len(words) - 1)
  return tuple(words), tuple(starts), char_to_word


class _QuestionBuilder:
  """Turns raw question records into examples, sharing the word split of a repeated context."""

  def __init__(self, *, is_training: bool, version_2_with_negative: bool):
    self.is_training = is_training
    self.version_2_with_negative = version_2_with_negative
    self.examples: list[SquadExample] = []
    self.skipped: list[SkippedQuestion] = []
    self._seen_ids: dict[str, str] = {}
    self._context: str | None = None
    self._split: tuple[tuple[str, ...], tuple[int, ...], list[int]] | None = None

  def _words(self, context: str) -> tuple[tuple[str, ...], tuple[int, ...], list[int]]:
    # Questions about one paragraph come together in both sources: keep the last split.
    if context != self._context or self._split is None:
      self._context = context
      self._split = split_words(context)
    return self._split

  def add(
    self,
    *,
    record: str,
    qas_id: str,
    question: str,
    context: str,
    title: str,
    answers: Sequence[SquadAnswer],
    plausible_answers: Sequence[SquadAnswer],
    is_impossible: bool | None,
  ) -> None:
    """Adds one question (or records it as skipped); `record` names it in errors."""
    if not qas_id:
      raise ValueError(f"{record}: empty question id")
    if qas_id in self._seen_ids:
      first = self._seen_ids[qas_id]
      raise ValueError(f"{record}: duplicate question id {qas_id!r} (first at {first})")
    self._seen_ids[qas_id] = record
    if not context.strip():
      # The reference cannot process an empty context either (it fails with an IndexError).
      raise ValueError(f"{record}: empty context")
    if not question.strip():
      raise ValueError(f"{record}: empty question")
    words, word_starts, char_to_word = self._words(context)
    example = SquadExample(
      qas_id=qas_id,
      question_text=question,
      context_text=context,
      title=title,
      doc_tokens=words,
      word_start_chars=word_starts,
      answers=tuple(answers),
      plausible_answers=tuple(plausible_answers),
      is_impossible=bool(is_impossible),
    )
    if self.is_training:
      example = self._with_training_target(example, record, char_to_word, is_impossible)
      if example is None:
        return
    self.examples.append(example)

  def _with_training_target(
    self,
    example: SquadExample,
    record: str,
    char_to_word: list[int],
    is_impossible: bool | None,
  ) -> SquadExample | None:
    if self.version_2_with_negative:
      if is_impossible is None:
        raise ValueError(f"{record}: SQuAD 2.0 training needs 'is_impossible' on every question")
      if is_impossible:
        return dataclasses.replace(example, orig_answer_text="", start_position=-1, end_position=-1)
    elif is_impossible:
      raise ValueError(
        f"{record}: unanswerable question (is_impossible) in a SQuAD 1.1 training set; "
        "pass version_2_with_negative=True to train on SQuAD 2.0"
      )
    if len(example.answers) != 1:
      raise ValueError(
        f"{record}: a training question needs exactly one answer, found {len(example.answers)}"
      )
    answer = example.answers[0]
    context = example.context_text
    if not answer.text:
      raise ValueError(f"{record}: empty answer text")
    end_char = answer.answer_start + len(answer.text) - 1
    if answer.answer_start < 0 or end_char >= len(context):
      raise ValueError(
        f"{record}: answer {answer.text!r} at offset {answer.answer_start} runs outside the "
        f"context ({len(context)} characters)"
      )
    start_word = char_to_word[answer.answer_start]
    end_word = char_to_word[end_char]
    # The reference's check: the words covering the answer's characters, joined by single spaces,
    # must contain the answer with its whitespace collapsed; otherwise the question is skipped.
    actual = " ".join(example.doc_tokens[max(start_word, 0) : end_word + 1])
    cleaned = " ".join(answer.text.split())
    reason = None
    if actual.find(cleaned) == -1:
      reason = f"answer {cleaned!r} not found in the words {actual!r} at its offset"
    elif not cleaned or start_word < 0:
      # The reference keeps these with a meaningless target (a whitespace answer matches
      # anywhere; an answer starting before the first word gets word index -1): skip them too.
      reason = f"answer {answer.text!r} at offset {answer.answer_start} covers no word start"
    if reason is not None:
      self.skipped.append(SkippedQuestion(example.qas_id, record, reason))
      logger.warning("Skipping %s: %s", record, reason)
      return None
    return dataclasses.replace(
      example,
      orig_answer_text=answer.text,
      start_position=start_word,
      end_position=end_word,
    )

  def result(self, source: str) -> SquadReadResult:
    if self.skipped:
      logger.warning(
        "%s: skipped %d training question(s) whose answer is not at its offset: %s",
        source,
        len(self.skipped),
        ", ".join(s.qas_id for s in self.skipped),
      )
    return SquadReadResult(self.examples, self.skipped)


# ----------------------------------------------------------------------------------------------
# Official JSON files.


def _require(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  if key not in obj:
    raise ValueError(f"{where}: missing key {key!r}")
  value = obj[key]
  # bool is an int in Python; a JSON true/false is never a valid offset.
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
    raise ValueError(f"{where}: {key!r} must be {names}, got {type(value).__name__}")
  return value


def _json_answers(qa: Mapping[str, Any], key: str, where: str) -> list[SquadAnswer]:
  answers = _require(qa, key, list, where)
  out = []
  for i, answer in enumerate(answers):
    at = f"{where} {key}[{i}]"
    text = _require(answer, "text", str, at)
    start = _require(answer, "answer_start", int, at)
    out.append(SquadAnswer(text, start))
  return out


def parse_squad_json(
  data: Mapping[str, Any],
  *,
  source: str,
  is_training: bool,
  version_2_with_negative: bool = False,
) -> SquadReadResult:
  """Reads examples from a parsed SQuAD JSON document (`{"version": ..., "data": [...]}`).

  Args:
    data: the whole JSON document.
    source: what to call it in messages (usually the file path).
    is_training: compute training targets (and skip questions whose answer is not at its offset).
    version_2_with_negative: SQuAD 2.0 training: questions marked `is_impossible` become
      examples that point at [CLS].

  Returns:
    The examples in file order and the skipped training questions.

  Raises:
    ValueError: for a malformed record, naming `source` and the record.
  """
  articles = _require(data, "data", list, source)
  builder = _QuestionBuilder(
    is_training=is_training, version_2_with_negative=version_2_with_negative
  )
  for a, article in enumerate(articles):
    where_a = f"{source}: data[{a}]"
    if not isinstance(article, Mapping):
      raise ValueError(f"{where_a}: expected a JSON object, got {type(article).__name__}")
    title = article.get("title", "")
    if not isinstance(title, str):
      raise ValueError(f"{where_a}: 'title' must be str, got {type(title).__name__}")
    if title:
      where_a += f" ({title!r})"
    for p, paragraph in enumerate(_require(article, "paragraphs", list, where_a)):
      where_p = f"{where_a} paragraphs[{p}]"
      context = _require(paragraph, "context", str, where_p)
      for q, qa in enumerate(_require(paragraph, "qas", list, where_p)):
        where_q = f"{where_p} qas[{q}]"
        qas_id = _require(qa, "id", str, where_q)
        where_q += f" (id {qas_id!r})"
        question = _require(qa, "question", str, where_q)
        # Unlabelled (test) files may leave the answers out; training cannot.
        has_answers = is_training or "answers" in qa
        answers = _json_answers(qa, "answers", where_q) if has_answers else []
        plausible = (
          _json_answers(qa, "plausible_answers", where_q) if "plausible_answers" in qa else []
        )
        is_impossible = None
        if "is_impossible" in qa:
          is_impossible = _require(qa, "is_impossible", bool, where_q)
        builder.add(
          record=where_q,
          qas_id=qas_id,
          question=question,
          context=context,
          title=title,
          answers=answers,
          plausible_answers=plausible,
          is_impossible=is_impossible,
        )
  return builder.result(source)


def load_json_file(path: PathLike) -> Any:
  """Parses a JSON file, raising a ValueError that names the file, line and column on bad JSON."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{os.fspath(path)}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
  except UnicodeDecodeError as e:
    raise ValueError(f"{os.fspath(path)}: not UTF-8 ({e.reason} at byte {e.start})") from None


def read_squad_json(
  path: PathLike, *, is_training: bool, version_2_with_negative: bool = False
) -> SquadReadResult:
  """Reads an official SQuAD JSON file (v1.1 or v2.0 format) into examples.

  Args:
    path: e.g. `train-v1.1.json`, `dev-v2.0.json`.
    is_training: compute training targets; questions whose answer is not at its offset are
      skipped and reported in the result (and logged).
    version_2_with_negative: train on SQuAD 2.0 (unanswerable questions point at [CLS]).

  Returns:
    The examples in file order and the skipped training questions.

  Raises:
    ValueError: for invalid JSON (with line and column) or a malformed record (with its place:
      article, paragraph, question index and id).
  """
  source = os.fspath(path)
  return parse_squad_json(
    load_json_file(path),
    source=source,
    is_training=is_training,
    version_2_with_negative=version_2_with_negative,
  )


# ----------------------------------------------------------------------------------------------
# TensorFlow Datasets.


def _tfds_answers(value: Any, field: str, where: str) -> list[SquadAnswer]:
  if not isinstance(value, Mapping) or "text" not in value or "answer_start" not in value:
    raise ValueError(f"{where}: {field!r} must hold 'text' and 'answer_start'")
  texts, starts = list(value["text"]), list(value["answer_start"])
  if len(texts) != len(starts):
    raise ValueError(f"{where}: {field!r} has {len(texts)} texts but {len(starts)} offsets")
  return [
    SquadAnswer(sources.decode_text(t, what=f"{where} {field} text"), int(s))
    for t, s in zip(texts, starts, strict=True)
  ]


def examples_from_tfds_records(
  records: Iterable[Mapping[str, Any]],
  *,
  source: str,
  is_training: bool,
  version_2_with_negative: bool,
) -> SquadReadResult:
  """Builds examples from TFDS SQuAD records (one question per record, text as bytes or str).

  Args:
    records: dicts with the TFDS `squad` features: `id`, `title`, `context`, `question`,
      `answers` (`text`, `answer_start`), and for v2.0 `is_impossible` and `plausible_answers`.
    source: what to call the dataset in messages, e.g. `"tfds squad/v2.0 train"`.
    is_training: compute training targets (see `read_squad_json`).
    version_2_with_negative: SQuAD 2.0 training.

  Returns:
    The examples in record order and the skipped training questions.
  """
  builder = _QuestionBuilder(
    is_training=is_training, version_2_with_negative=version_2_with_negative
  )
  for i, rec in enumerate(records):
    where = f"{source} record {i}"
    for key in ("id", "context", "question", "answers"):
      if key not in rec:
        raise ValueError(f"{where}: missing feature {key!r}")
    qas_id = sources.decode_text(rec["id"], what=f"{where} id")
    where += f" (id {qas_id!r})"
    is_impossible = rec.get("is_impossible")
    builder.add(
      record=where,
      qas_id=qas_id,
      question=sources.decode_text(rec["question"], what=f"{where} question"),
      context=sources.decode_text(rec["context"], what=f"{where} context"),
      title=sources.decode_text(rec.get("title", b""), what=f"{where} title"),
      answers=_tfds_answers(rec["answers"], "answers", where),
      plausible_answers=(
        _tfds_answers(rec["plausible_answers"], "plausible_answers", where)
        if "plausible_answers" in rec
        else []
      ),
      is_impossible=None if is_impossible is None else bool(is_impossible),
    )
  return builder.result(source)


def load_squad_tfds(
  version: str,
  split: str,
  *,
  is_training: bool,
  data_dir: str | None = None,
  download: bool = True,
  process_index: int = 0,
  process_count: int = 1,
) -> SquadReadResult:
  """Reads SQuAD from TensorFlow Datasets (`squad/v1.1` or `squad/v2.0`).

  Needs the optional extra `pip install 'mobilebert-jax[tf]'`. TFDS downloads the official JSON
  files and prepares them on first use (unless `download=False`); records come in TFDS's stored
  order, which is not the order of the JSON file.

  Args:
    version: "1.1" or "2.0".
    split: a TFDS split expression: "train", "validation", "validation[:10%]", ...
    is_training: compute training targets (see `read_squad_json`); SQuAD 2.0 training keeps the
      unanswerable questions as examples that point at [CLS].
    data_dir: TFDS data directory (default: TFDS's own, `~/tensorflow_datasets`).
    download: let TFDS download and prepare the dataset if it is missing.
    process_index: this process's slice of the split (evaluation needs the whole split, hence
      the single-process default).
    process_count: number of slices.

  Returns:
    The examples and the skipped training questions.

  Raises:
    ImportError: TensorFlow Datasets is not installed (the message names the extra).
    ValueError: unknown version, or a malformed record (named by its position and id).
  """
  if version not in TFDS_VERSIONS:
    raise ValueError(f"SQuAD version must be one of {TFDS_VERSIONS}, got {version!r}")
  name = f"squad/v{version}"
  records = sources.iter_tfds_examples(
    name,
    split,
    data_dir=data_dir,
    download=download,
    process_index=process_index,
    process_count=process_count,
  )
  return examples_from_tfds_records(
    records,
    source=f"tfds {name} {split}",
    is_training=is_training,
    version_2_with_negative=version == "2.0",
  )


def gold_answers(examples: Iterable[SquadExample]) -> dict[str, list[str]]:
  """Maps each question id to its annotated answer texts: the input of `metrics.squad`.

  Read evaluation examples with `is_training=False`, so no question is skipped.
  """
  return {e.qas_id: e.answer_texts for e in examples}
