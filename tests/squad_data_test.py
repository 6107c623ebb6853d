"""SQuAD examples, features and answer decoding on our own SQuAD-format fixtures.

Fixtures (`tests/testdata/squad/`): five articles written for these tests, with answers at the
start, middle and end of their contexts, inside punctuation ("1871" in "(1871–1938)"), inside a
word ("Iceland" in "Icelandic"), with accents and symbols ("Łódź", "€12.50", "Jón Þorsteinsson"),
several gold answers (dev files), unanswerable SQuAD 2.0 questions, a context long enough for
several windows at a small `max_seq_length`, and a question longer than `max_query_length`.
The vocabulary is built from the fixture texts with a few words left out, so WordPiece splits
words ("light ##house") and emits [UNK] ("łodz": its "ł" is in no vocabulary entry).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from mobilebert_jax.data import squad
from mobilebert_jax.tokenization import WordPieceTokenizer

DATA = Path(__file__).parent / "testdata" / "squad"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Words left out of the vocabulary: WordPiece spells them from pieces (or characters).
SPLIT_WORDS = {"lighthouse", "okonkwo", "coltelli", "procopio", "lindqvist", "þorsteinsson"}
EXTRA_PIECES = ["light", "##house", "##s"]
UNK_CHAR = "ł"  # in no vocabulary entry: "łodz" becomes [UNK]
SMALL = squad.SquadFeatureConfig(max_seq_length=64, doc_stride=16, max_query_length=16)
# "Iceland" is annotated inside the single WordPiece token "icelandic": the reference's labels
# (and so both decodings) cover the whole word.
SUBWORD_ANSWERS = {"cafe-country": "Icelandic"}


def _fixture_texts() -> list[str]:
  texts = []
  for name in ("train-v1.1.json", "dev-v1.1.json", "train-v2.0.json", "dev-v2.0.json"):
    for article in json.loads((DATA / name).read_text(encoding="utf-8"))["data"]:
      for paragraph in article["paragraphs"]:
        texts.append(paragraph["context"])
        texts += [qa["question"] for qa in paragraph["qas"]]
  return texts


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> WordPieceTokenizer:
  basic = WordPieceTokenizer({t: i for i, t in enumerate(SPECIALS)}).basic_tokenize
  words = {w for text in _fixture_texts() for w in basic(text)}
  chars = {c for w in words for c in w} - {UNK_CHAR}
  entries = {w for w in words if w not in SPLIT_WORDS and UNK_CHAR not in w}
  entries |= chars | {"##" + c for c in chars} | set(EXTRA_PIECES)
  path = tmp_path_factory.mktemp("squad_vocab") / "vocab.txt"
  path.write_text("\n".join(SPECIALS + sorted(entries)) + "\n", encoding="utf-8")
  return WordPieceTokenizer.from_file(path, do_lower_case=True)


def _read(name: str, **kwargs) -> squad.SquadReadResult:
  return squad.read_squad_json(DATA / name, **kwargs)


def _write_json(tmp_path: Path, obj, name: str = "data.json") -> Path:
  path = tmp_path / name
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


def _one_question(context: str, question: str, answers, **extra) -> dict:
  qa = {"id": "q1", "question": question, "answers": answers, **extra}
  return {
    "version": "1.1",
    "data": [{"title": "T", "paragraphs": [{"context": context, "qas": [qa]}]}],
  }


# ----------------------------------------------------------------------------------------------
# Examples.


def test_split_words_uses_the_reference_whitespace():
  # Space, tab, CR, LF and U+202F separate words; a no-break space (U+00A0) does not.
  text = " ab\tc\u202fd\r\ne\u00a0f  "
  words, starts, char_to_word = squad.split_words(text)
  assert words == ("ab", "c", "d", "e\u00a0f")
  assert starts == (1, 4, 6, 9)
  assert char_to_word == [-1, 0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]


def test_training_examples_locate_their_answers():
  result = _read("train-v1.1.json", is_training=True)
  assert result.skipped == []
  assert len(result.examples) == 21
  for ex in result.examples:
    for word, start in zip(ex.doc_tokens, ex.word_start_chars, strict=True):
      assert ex.context_text[start : start + len(word)] == word
    covered = " ".join(ex.doc_tokens[ex.start_position : ex.end_position + 1])
    assert ex.orig_answer_text in covered
    first_char = ex.word_start_chars[ex.start_position]
    assert (
      first_char <= ex.answers[0].answer_start < first_char + len(ex.doc_tokens[ex.start_position])
    )
  born = next(e for e in result.examples if e.qas_id == "lh-born")
  assert born.doc_tokens[born.start_position] == "(1871–1938)"


def test_dev_examples_keep_every_gold_answer_and_no_target():
  examples = _read("dev-v1.1.json", is_training=False).examples
  designer = next(e for e in examples if e.qas_id == "lh-designer")
  assert designer.answer_texts == [
    "Mathilde Okonkwo-Berg",
    "Okonkwo-Berg",
    "the engineer Mathilde Okonkwo-Berg",
  ]
  assert designer.start_position is None and designer.orig_answer_text is None
  gold = squad.gold_answers(examples)
  assert list(gold) == [e.qas_id for e in examples] and gold["lh-designer"] == designer.answer_texts


def test_v2_training_examples_point_unanswerable_questions_nowhere():
  result = _read("train-v2.0.json", is_training=True, version_2_with_negative=True)
  by_id = {e.qas_id: e for e in result.examples}
  impossible = by_id["gl-loss-2021"]
  assert impossible.is_impossible
  assert (impossible.start_position, impossible.end_position) == (-1, -1)
  assert impossible.orig_answer_text == ""
  assert impossible.plausible_answers[0].text == "about six per cent"
  assert not by_id["gl-city"].is_impossible and by_id["gl-city"].orig_answer_text == "Zürich"
  assert sum(e.is_impossible for e in result.examples) == 3


def test_answer_not_at_its_offset_is_skipped_and_counted(tmp_path, caplog):
  context = "The bridge opened in 1932 after six years of work."
  data = _one_question(context, "When did it open?", [{"text": "1933", "answer_start": 21}])
  data["data"][0]["paragraphs"][0]["qas"].append(
    {"id": "q2", "question": "How long?", "answers": [{"text": "six years", "answer_start": 32}]}
  )
  path = _write_json(tmp_path, data)
  result = squad.read_squad_json(path, is_training=True)
  assert [e.qas_id for e in result.examples] == ["q2"]
  assert result.skipped_ids == ["q1"]
  assert "qas[0] (id 'q1')" in result.skipped[0].record and str(path) in result.skipped[0].record
  assert "skipped 1 training question" in caplog.text and "q1" in caplog.text
  # Evaluation reads every question: the gold answers only matter to the metric.
  assert len(squad.read_squad_json(path, is_training=False).examples) == 2


def test_degenerate_answers_are_skipped_with_a_reason(tmp_path):
  # A whitespace-only answer, and one starting in the whitespace before the first word: the
  # reference keeps both with meaningless targets; we skip and report them.
  context = "  Ada wrote the notes."
  data = _one_question(context, "Who?", [{"text": " ", "answer_start": 5}])
  data["data"][0]["paragraphs"][0]["qas"] += [
    {"id": "q2", "question": "Who?", "answers": [{"text": " Ada", "answer_start": 1}]},
    {"id": "q3", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 2}]},
  ]
  result = squad.read_squad_json(_write_json(tmp_path, data), is_training=True)
  assert result.skipped_ids == ["q1", "q2"]
  assert all("covers no word start" in s.reason for s in result.skipped)
  assert [(e.qas_id, e.start_position, e.end_position) for e in result.examples] == [("q3", 0, 0)]


def test_answer_whitespace_is_collapsed_before_the_comparison(tmp_path):
  # The reference compares the answer with its whitespace collapsed to the covering words.
  context = "It crossed the Rio  Grande at dawn."
  data = _one_question(context, "What did it cross?", [{"text": "Rio  Grande", "answer_start": 15}])
  result = squad.read_squad_json(_write_json(tmp_path, data), is_training=True)
  assert result.skipped == []
  assert result.examples[0].doc_tokens[result.examples[0].start_position] == "Rio"


@pytest.mark.parametrize(
  ("mutate", "message"),
  [
    (lambda d: d.pop("data"), "missing key 'data'"),
    (lambda d: d["data"][0].pop("paragraphs"), "data[0] ('T'): missing key 'paragraphs'"),
    (
      lambda d: d["data"][0]["paragraphs"][0].pop("context"),
      "paragraphs[0]: missing key 'context'",
    ),
    (lambda d: _qa(d).pop("question"), "qas[0] (id 'q1'): missing key 'question'"),
    (lambda d: _qa(d).pop("answers"), "qas[0] (id 'q1'): missing key 'answers'"),
    (lambda d: _qa(d)["answers"][0].pop("text"), "(id 'q1') answers[0]: missing key 'text'"),
    (lambda d: _qa(d)["answers"][0].update(answer_start="5"), "'answer_start' must be int"),
    (lambda d: _qa(d).update(id=7), "qas[0]: 'id' must be str"),
    (lambda d: d["data"][0]["paragraphs"][0].update(context="  \n"), "empty context"),
    (lambda d: _qa(d).update(question=" "), "(id 'q1'): empty question"),
    (lambda d: _qa(d)["answers"].append(_qa(d)["answers"][0]), "exactly one answer, found 2"),
    (lambda d: _qa(d)["answers"][0].update(answer_start=40), "runs outside the context"),
    (lambda d: _qa(d)["answers"][0].update(answer_start=-1), "runs outside the context"),
    (lambda d: _qa(d).update(is_impossible=True), "unanswerable question (is_impossible)"),
    (
      lambda d: d["data"][0]["paragraphs"][0]["qas"].append(dict(_qa(d))),
      "qas[1] (id 'q1'): duplicate question id 'q1' (first at",
    ),
  ],
)
def test_malformed_records_name_the_file_and_record(tmp_path, mutate, message):
  data = _one_question("Ada wrote the notes.", "Who wrote?", [{"text": "Ada", "answer_start": 0}])
  mutate(data)
  path = _write_json(tmp_path, data)
  with pytest.raises(ValueError) as info:
    squad.read_squad_json(path, is_training=True)
  assert str(path) in str(info.value)
  assert message in str(info.value)


def _qa(data: dict) -> dict:
  return data["data"][0]["paragraphs"][0]["qas"][0]


def test_invalid_json_names_file_line_and_column(tmp_path):
  path = tmp_path / "broken.json"
  path.write_text('{"version": "1.1",\n "data": [\n  {"title": "x",}\n ]}', encoding="utf-8")
  with pytest.raises(ValueError, match=r"broken\.json:3:\d+: invalid JSON"):
    squad.read_squad_json(path, is_training=False)


def test_v2_training_requires_is_impossible(tmp_path):
  data = _one_question("Ada wrote the notes.", "Who wrote?", [{"text": "Ada", "answer_start": 0}])
  with pytest.raises(ValueError, match=r"\(id 'q1'\): SQuAD 2.0 training needs 'is_impossible'"):
    squad.read_squad_json(
      _write_json(tmp_path, data), is_training=True, version_2_with_negative=True
    )


# ----------------------------------------------------------------------------------------------
# Features.


@pytest.fixture(scope="module")
def train_v1(tokenizer):
  examples = _read("train-v1.1.json", is_training=True).examples
  return examples, squad.convert_examples_to_features(
    examples, tokenizer, is_training=True, config=SMALL
  )


def _doc_token_rows(features, row):
  """Feature positions that hold document tokens."""
  return np.flatnonzero(features.meta.token_to_orig_map[row] >= 0)


def test_feature_layout(tokenizer, train_v1):
  examples, features = train_v1
  n = len(features)
  assert n > len(examples)  # the long context needs several windows at length 64
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert features.inputs[key].shape == (n, 64) and features.inputs[key].dtype == np.int32
  assert features.inputs["start_positions"].shape == (n,)
  assert features.meta.unique_ids[0] == 1_000_000_000
  np.testing.assert_array_equal(np.diff(features.meta.unique_ids), 1)
  for row in range(n):
    example = examples[features.meta.example_index[row]]
    query = tokenizer.tokenize(example.question_text)[: SMALL.max_query_length]
    ids = features.inputs["input_ids"][row]
    num_real = int(features.inputs["attention_mask"][row].sum())
    tokens = tokenizer.convert_ids_to_tokens(ids[:num_real])
    doc = _doc_token_rows(features, row)
    assert tokens[: len(query) + 2] == ["[CLS]", *query, "[SEP]"]
    assert tokens[-1] == "[SEP]" and "[SEP]" not in tokens[len(query) + 2 : -1]
    np.testing.assert_array_equal(doc, np.arange(len(query) + 2, num_real - 1))
    np.testing.assert_array_equal(features.inputs["attention_mask"][row, num_real:], 0)
    np.testing.assert_array_equal(ids[num_real:], 0)
    types = features.inputs["token_type_ids"][row]
    np.testing.assert_array_equal(types[: len(query) + 2], 0)
    np.testing.assert_array_equal(types[len(query) + 2 : num_real], 1)
    np.testing.assert_array_equal(types[num_real:], 0)
    for key in ("token_char_start", "token_char_end"):
      assert (
        getattr(features.meta, key)[row][features.meta.token_to_orig_map[row] < 0] == -1
      ).all()


def test_long_questions_are_truncated(tokenizer, train_v1):
  examples, features = train_v1
  index = next(i for i, e in enumerate(examples) if e.qas_id == "delta-eels")
  assert len(tokenizer.tokenize(examples[index].question_text)) > SMALL.max_query_length
  row = int(np.flatnonzero(features.meta.example_index == index)[0])
  ids = features.inputs["input_ids"][row]
  assert ids[SMALL.max_query_length + 1] == tokenizer.sep_token_id
  assert features.inputs["token_type_ids"][row, SMALL.max_query_length + 2] == 1


@pytest.mark.parametrize(
  "config",
  [SMALL, squad.SquadFeatureConfig(40, 7, 8), squad.SquadFeatureConfig(32, 40, 20)],
  ids=["64-16-16", "40-7-8", "32-40-20"],
)
def test_windows_and_max_context_against_brute_force(tokenizer, config):
  examples = _read("train-v1.1.json", is_training=True).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=True, config=config
  )
  meta = features.meta
  for index, example in enumerate(examples):
    rows = np.flatnonzero(meta.example_index == index)
    num_query = len(tokenizer.tokenize(example.question_text)[: config.max_query_length])
    capacity = config.max_seq_length - num_query - 3
    # Number the document's tokens by their character spans, gathered over all windows.
    spans = [
      [
        (int(meta.token_char_start[r, p]), int(meta.token_char_end[r, p]))
        for p in _doc_token_rows(features, r)
      ]
      for r in rows
    ]
    order = {span: k for k, span in enumerate(sorted({x for w in spans for x in w}))}
    windows = [(order[w[0]], len(w)) for w in spans]
    for w in spans:  # each window is a contiguous run of the document
      assert [order[x] for x in w] == list(range(order[w[0]], order[w[0]] + len(w)))
    num_tokens = len(order)
    # The reference's sliding rule: full windows, each starting min(length, stride) after the
    # previous one, and the first window to reach the end is the last.
    assert windows[0][0] == 0 and windows[-1][0] + windows[-1][1] == num_tokens
    for (s0, n0), (s1, _) in itertools.pairwise(windows):
      assert n0 == capacity and s1 == s0 + min(n0, config.doc_stride) and s0 + n0 < num_tokens
    assert windows[-1][1] == min(capacity, num_tokens - windows[-1][0])
    assert meta.doc_span_index[rows].tolist() == list(range(len(rows)))
    # Max context, brute force: each token's best window by min(left, right) + 0.01 * length,
    # the first best window on ties.
    for token in range(num_tokens):
      best, best_score = None, None
      for w, (start, length) in enumerate(windows):
        if start <= token < start + length:
          score = min(token - start, start + length - 1 - token) + 0.01 * length
          if best_score is None or score > best_score:
            best, best_score = w, score
      for w, ((start, length), row) in enumerate(zip(windows, rows, strict=True)):
        if start <= token < start + length:
          pos = _doc_token_rows(features, row)[token - start]
          assert bool(meta.token_is_max_context[row, pos]) == (w == best)


def test_offsets_spell_each_token(tokenizer, train_v1):
  examples, features = train_v1
  meta = features.meta
  for row in range(len(features)):
    example = examples[meta.example_index[row]]
    for pos in _doc_token_rows(features, row):
      token = tokenizer.convert_ids_to_tokens([features.inputs["input_ids"][row, pos]])[0]
      text = example.context_text[meta.token_char_start[row, pos] : meta.token_char_end[row, pos]]
      word = example.doc_tokens[meta.token_to_orig_map[row, pos]]
      assert text and text in word
      if token == "[UNK]":
        assert "".join(tokenizer.basic_tokenize(text)) == "łodz"
      else:
        assert "".join(tokenizer.basic_tokenize(text)) == token.removeprefix("##")


def test_offsets_cover_characters_that_normalisation_changes(tokenizer):
  # A decomposed accent (e + U+0301, stripped), a zero-width space (dropped by cleaning) and a
  # precomposed accented capital: the token spans still cover the characters of their words.
  context = "The Cafe\u0301 opened\u200b in \u00c9cole Street."
  data = {
    "data": [
      {
        "paragraphs": [
          {"context": context, "qas": [{"id": "d", "question": "Where?", "answers": []}]}
        ]
      }
    ]
  }
  examples = squad.parse_squad_json(data, source="mem", is_training=False).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=False, config=SMALL
  )
  meta = features.meta
  doc = _doc_token_rows(features, 0)
  words = examples[0].doc_tokens
  assert words[1] == "Cafe\u0301" and words[2] == "opened\u200b"
  for w, (word, start) in enumerate(zip(words, examples[0].word_start_chars, strict=True)):
    pos = doc[meta.token_to_orig_map[0, doc] == w]
    # Consecutive, gap-free spans from the word's first to its last character.
    np.testing.assert_array_equal(
      meta.token_char_start[0, pos[1:]], meta.token_char_end[0, pos[:-1]]
    )
    assert meta.token_char_start[0, pos[0]] == start
    # The whole word, but for a dropped character at its end (the zero-width space).
    end = start + len(word.rstrip("\u200b"))
    assert meta.token_char_end[0, pos[-1]] == end, word


def _answer_token_positions(example, features, row):
  """Feature positions whose characters overlap the annotated answer (independent of labels)."""
  meta = features.meta
  begin = example.answers[0].answer_start
  end = begin + len(example.answers[0].text)
  doc = _doc_token_rows(features, row)
  starts, ends = meta.token_char_start[row, doc], meta.token_char_end[row, doc]
  return doc[(starts < end) & (ends > begin)]


def _label_text(example, features, row, tokenizer, how):
  meta = features.meta
  s, e = int(features.inputs["start_positions"][row]), int(features.inputs["end_positions"][row])
  if how == "offsets":
    return example.context_text[meta.token_char_start[row, s] : meta.token_char_end[row, e]]
  tokens = tokenizer.convert_ids_to_tokens(features.inputs["input_ids"][row, s : e + 1])
  pred = " ".join(" ".join(tokens).replace(" ##", "").replace("##", "").split())
  words = example.doc_tokens[meta.token_to_orig_map[row, s] : meta.token_to_orig_map[row, e] + 1]
  return squad.get_final_text(pred, " ".join(words), tokenizer.basic_tokenize)


@pytest.mark.parametrize("config", [SMALL, squad.SquadFeatureConfig(40, 7, 8)], ids=["64", "40"])
@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_training_labels_round_trip(tokenizer, version, config):
  examples = _read(
    f"train-v{version}.json", is_training=True, version_2_with_negative=version == "2.0"
  ).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=True, config=config
  )
  meta = features.meta
  windows_with_answer = 0
  for row in range(len(features)):
    example = examples[meta.example_index[row]]
    start = int(features.inputs["start_positions"][row])
    end = int(features.inputs["end_positions"][row])
    if example.is_impossible:
      assert (start, end) == (0, 0)
      continue
    overlap = _answer_token_positions(example, features, row)
    # The whole answer lies in the window when its first and last characters' tokens do.
    whole = example.answers[0]
    inside = (
      len(overlap) > 0
      and meta.token_char_start[row, overlap[0]] <= whole.answer_start
      and meta.token_char_end[row, overlap[-1]] >= whole.answer_start + len(whole.text)
    )
    if not inside:
      assert (start, end) == (0, 0), example.qas_id
      continue
    windows_with_answer += 1
    assert (start, end) == (overlap[0], overlap[-1]), example.qas_id
    expected = SUBWORD_ANSWERS.get(example.qas_id, whole.text)
    assert _label_text(example, features, row, tokenizer, "offsets") == expected
    assert _label_text(example, features, row, tokenizer, "final_text") == expected
  answerable = [e for e in examples if not e.is_impossible]
  assert windows_with_answer >= len(answerable)  # every answer fits some window
  assert (features.inputs["start_positions"] == 0).sum() > 0


def test_every_answerable_example_has_a_labelled_window(train_v1):
  examples, features = train_v1
  labelled = set(features.meta.example_index[features.inputs["start_positions"] > 0].tolist())
  assert labelled == set(range(len(examples)))


def test_improve_answer_span_tightens_to_the_answer(tokenizer):
  doc = tokenizer.tokenize("was born (1871–1938) .")
  # The word "(1871–1938)" spans tokens 2..6; the answer "1871" is token 3 alone.
  assert squad.improve_answer_span(doc, 2, 6, tokenizer, "1871") == (3, 3)
  assert squad.improve_answer_span(doc, 2, 6, tokenizer, "1899") == (2, 6)


def test_doc_spans_follow_the_reference_loop():
  spans = squad.make_doc_spans(10, 4, 3)
  assert [(s.start, s.length) for s in spans] == [(0, 4), (3, 4), (6, 4)]
  spans = squad.make_doc_spans(10, 4, 6)  # the stride is capped by the window length
  assert [(s.start, s.length) for s in spans] == [(0, 4), (4, 4), (8, 2)]
  assert [(s.start, s.length) for s in squad.make_doc_spans(3, 4, 2)] == [(0, 3)]


def test_default_config_gives_one_window_per_fixture_example(tokenizer):
  examples = _read("dev-v2.0.json", is_training=False).examples
  features = squad.convert_examples_to_features(examples, tokenizer, is_training=False)
  assert features.inputs["input_ids"].shape == (len(examples), 384)
  assert "start_positions" not in features.inputs
  assert features.meta.token_is_max_context[features.meta.token_to_orig_map >= 0].all()


def test_bad_feature_inputs_raise(tokenizer):
  with pytest.raises(ValueError, match="greater than max_query_length"):
    squad.SquadFeatureConfig(max_seq_length=67, max_query_length=64)
  dev = _read("dev-v1.1.json", is_training=False).examples
  with pytest.raises(ValueError, match="'lh-designer' has no training target"):
    squad.convert_examples_to_features(dev[:1], tokenizer, is_training=True, config=SMALL)
  data = {
    "data": [
      {
        "paragraphs": [
          {"context": "\u200b\u200b", "qas": [{"id": "z", "question": "What?", "answers": []}]}
        ]
      }
    ]
  }
  blank = squad.parse_squad_json(data, source="mem", is_training=False).examples
  with pytest.raises(ValueError, match="question 'z': the context has no WordPiece tokens"):
    squad.convert_examples_to_features(blank, tokenizer, is_training=False, config=SMALL)


# ----------------------------------------------------------------------------------------------
# Decoding.


def test_get_final_text_projects_onto_the_original_words(tokenizer):
  basic = tokenizer.basic_tokenize
  assert squad.get_final_text("steve smith", "Steve Smith's", basic) == "Steve Smith"
  assert squad.get_final_text("1871", "(1871–1938)", basic) == "1871"
  assert squad.get_final_text("cafe au lait", "café au lait.", basic) == "café au lait"
  # Not found, or lengths that do not pair up: the original words come back whole.
  assert squad.get_final_text("smyth", "Steve Smith's", basic) == "Steve Smith's"
  assert squad.get_final_text("ae", "Æ", basic) == "Æ"  # no characters in common


def _synthetic_logits(examples, features, targets, null=None):
  """Logits that put a clear maximum on each example's target token span.

  `targets` maps example index -> (first, last) character offsets of the wanted answer (last
  exclusive), or None for "no answer" (a large [CLS] score).
  """
  meta = features.meta
  start = np.zeros(features.inputs["input_ids"].shape, np.float32)
  end = np.zeros_like(start)
  for row in range(len(features)):
    target = targets.get(int(meta.example_index[row]))
    if target is None:
      start[row, 0] = end[row, 0] = 8.0
      continue
    start[row, 0] = end[row, 0] = null if null is not None else 0.0
    doc = _doc_token_rows(features, row)
    s = doc[meta.token_char_start[row, doc] == target[0]]
    e = doc[meta.token_char_end[row, doc] == target[1]]
    if len(s) and len(e) and meta.token_is_max_context[row, s[0]]:
      start[row, s[0]] = 10.0
      end[row, e[0]] = 9.0
  return start, end


def test_decoding_synthetic_logits_recovers_the_gold_answers(tokenizer):
  examples = _read("dev-v1.1.json", is_training=False).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=False, config=SMALL
  )
  targets = {}
  for i, ex in enumerate(examples):
    # A model can only point at whole tokens: "Iceland" lies inside the token "icelandic".
    text = SUBWORD_ANSWERS.get(ex.qas_id, ex.answers[0].text)
    begin = (
      ex.context_text.index(text) if ex.qas_id in SUBWORD_ANSWERS else ex.answers[0].answer_start
    )
    targets[i] = (begin, begin + len(text))
  start, end = _synthetic_logits(examples, features, targets)
  for how in ("final_text", "offsets"):
    result = squad.postprocess_predictions(
      examples, features, start, end, tokenizer, text_extraction=how
    )
    assert result.null_odds is None
    for ex in examples:
      expected = SUBWORD_ANSWERS.get(ex.qas_id, ex.answers[0].text)
      assert result.predictions[ex.qas_id] == expected, (how, ex.qas_id)
      nbest = result.nbest[ex.qas_id]
      assert nbest[0]["text"] == expected
      assert nbest[0]["start_logit"] == 10.0 and nbest[0]["end_logit"] == 9.0
      assert sum(e["probability"] for e in nbest) == pytest.approx(1.0)
      assert len({e["text"] for e in nbest}) == len(nbest) <= 20
      scores = [e["start_logit"] + e["end_logit"] for e in nbest]
      assert scores == sorted(scores, reverse=True)
      assert list(nbest[0]) == ["text", "probability", "start_logit", "end_logit"]


@pytest.mark.parametrize(
  "case", ["question", "padding", "end_before_start", "too_long", "question_start_doc_end"]
)
def test_invalid_spans_are_never_predicted(tokenizer, case):
  examples = [
    e for e in _read("dev-v1.1.json", is_training=False).examples if e.qas_id == "delta-leader"
  ]
  features = squad.convert_examples_to_features(examples, tokenizer, is_training=False)
  meta = features.meta
  doc = _doc_token_rows(features, 0)
  start = np.full((1, 384), -100.0, np.float32)
  end = np.full((1, 384), -100.0, np.float32)
  start[0, doc[10]] = end[0, doc[12]] = 1.0  # the target: a valid 3-token span
  # A higher-scoring invalid pair, placed so that it cannot pair validly with the target either.
  bad_start, bad_end = {
    "question": (1, 2),
    "padding": (383, 383),
    "end_before_start": (doc[20], doc[5]),
    "too_long": (doc[13], doc[13] + 30),  # 31 tokens > max_answer_length
    "question_start_doc_end": (1, doc[12]),  # a start in the question, whatever the end
  }[case]
  start[0, bad_start] = end[0, bad_end] = 50.0
  qid = examples[0].qas_id
  target = examples[0].context_text[
    meta.token_char_start[0, doc[10]] : meta.token_char_end[0, doc[12]]
  ]
  for how in ("final_text", "offsets"):
    result = squad.postprocess_predictions(
      examples, features, start, end, tokenizer, text_extraction=how
    )
    assert result.predictions[qid] == target
    assert result.nbest[qid][0]["start_logit"] == 1.0
  if case == "too_long":
    longer = squad.postprocess_predictions(
      examples, features, start, end, tokenizer, max_answer_length=31
    )
    assert (longer.nbest[qid][0]["start_logit"], longer.nbest[qid][0]["end_logit"]) == (50.0, 50.0)


def test_answers_only_start_at_max_context_tokens(tokenizer):
  examples = [
    e for e in _read("dev-v1.1.json", is_training=False).examples if e.qas_id == "delta-leader"
  ]
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=False, config=SMALL
  )
  meta = features.meta
  assert len(features) > 2
  start = np.zeros(features.inputs["input_ids"].shape, np.float32)
  end = np.zeros_like(start)
  # In window 1, put the highest score on a token whose max context is another window.
  doc = _doc_token_rows(features, 1)
  not_max = doc[~meta.token_is_max_context[1, doc]]
  start[1, not_max[0]] = end[1, not_max[0]] = 100.0
  result = squad.postprocess_predictions(examples, features, start, end, tokenizer)
  assert all(e["start_logit"] + e["end_logit"] < 100.0 for e in result.nbest["delta-leader"])


def test_v2_null_score_and_threshold_rule(tokenizer, tmp_path):
  examples = _read("dev-v2.0.json", is_training=False).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=False, config=SMALL
  )
  targets = {}
  for i, ex in enumerate(examples):
    a = ex.answers[0] if ex.answers else None
    targets[i] = (a.answer_start, a.answer_start + len(a.text)) if a else None
  start, end = _synthetic_logits(examples, features, targets, null=2.0)
  result = squad.postprocess_predictions(
    examples, features, start, end, tokenizer, version_2_with_negative=True
  )
  assert result.num_without_span == 0
  for ex in examples:
    odds = result.null_odds[ex.qas_id]
    texts = [e["text"] for e in result.nbest[ex.qas_id]]
    assert "" in texts
    if ex.is_impossible:
      # Null 8 + 8 against the best non-null span (0 + 0 somewhere in the document).
      assert result.predictions[ex.qas_id] == ""
      assert odds == pytest.approx(16.0)
    else:
      assert result.predictions[ex.qas_id] == ex.answers[0].text
      assert odds == pytest.approx(2.0 + 2.0 - 19.0)
  # Raising the threshold above 16 keeps the best non-null answers everywhere.
  lenient = squad.postprocess_predictions(
    examples,
    features,
    start,
    end,
    tokenizer,
    version_2_with_negative=True,
    null_score_diff_threshold=16.5,
  )
  assert all(lenient.predictions.values())
  # A threshold below -15 answers "" everywhere.
  strict = squad.postprocess_predictions(
    examples,
    features,
    start,
    end,
    tokenizer,
    version_2_with_negative=True,
    null_score_diff_threshold=-15.5,
  )
  assert not any(strict.predictions.values())
  # The null score is the minimum over windows of the [CLS] start + end logits.
  multi = [
    e for e in _read("dev-v1.1.json", is_training=False).examples if e.qas_id == "delta-leader"
  ]
  mf = squad.convert_examples_to_features(multi, tokenizer, is_training=False, config=SMALL)
  s = np.zeros(mf.inputs["input_ids"].shape, np.float32)
  e = np.zeros_like(s)
  s[:, 0] = [3.0 + i for i in range(len(mf))]
  e[:, 0] = 1.0
  s[1, 0] = -2.0
  out = squad.postprocess_predictions(multi, mf, s, e, tokenizer, version_2_with_negative=True)
  null_entry = next(x for x in out.nbest["delta-leader"] if x["text"] == "")
  assert (null_entry["start_logit"], null_entry["end_logit"]) == (-2.0, 1.0)
  assert out.null_odds["delta-leader"] == pytest.approx(-1.0 - 0.0)
  # Files in the official layout.
  paths = squad.write_prediction_files(result, tmp_path)
  assert [Path(p).name for p in paths] == [
    "predictions.json",
    "nbest_predictions.json",
    "null_odds.json",
  ]
  text = (tmp_path / "predictions.json").read_text(encoding="utf-8")
  assert text == json.dumps(result.predictions, indent=4) + "\n"
  assert json.loads((tmp_path / "null_odds.json").read_text()) == result.null_odds
  assert list(json.loads(text)) == [e.qas_id for e in examples]


def test_no_valid_span(tokenizer):
  # The two best starts and ends are all in the padding: no candidate survives.
  examples = _read("dev-v2.0.json", is_training=False).examples[:1]
  features = squad.convert_examples_to_features(examples, tokenizer, is_training=False)
  start = np.zeros((1, 384), np.float32)
  start[0, 380:] = 5.0
  start[0, 0] = -1.0
  end = start.copy()
  qid = examples[0].qas_id
  # SQuAD 1.1: the reference's placeholder answer.
  v1 = squad.postprocess_predictions(examples, features, start, end, tokenizer, n_best_size=2)
  assert v1.predictions[qid] == "empty"
  assert v1.nbest[qid] == [
    {"text": "empty", "probability": 1.0, "start_logit": 0.0, "end_logit": 0.0}
  ]
  # SQuAD 2.0 (the reference fails here): "", scored against a non-null score of 0.
  v2 = squad.postprocess_predictions(
    examples, features, start, end, tokenizer, n_best_size=2, version_2_with_negative=True
  )
  assert v2.predictions[qid] == "" and v2.null_odds[qid] == -2.0 and v2.num_without_span == 1
  assert [e["text"] for e in v2.nbest[qid]] == [""]


def test_decoding_rejects_mismatched_logits(tokenizer):
  examples = _read("dev-v2.0.json", is_training=False).examples
  features = squad.convert_examples_to_features(
    examples, tokenizer, is_training=False, config=SMALL
  )
  bad = np.zeros((len(features), 63), np.float32)
  with pytest.raises(ValueError, match="logits must have the features' shape"):
    squad.postprocess_predictions(examples, features, bad, bad, tokenizer)
  good = np.zeros(features.inputs["input_ids"].shape, np.float32)
  with pytest.raises(ValueError, match="has no features"):
    squad.postprocess_predictions(examples + examples[:1], features, good, good, tokenizer)


# ----------------------------------------------------------------------------------------------
# TFDS.


@pytest.mark.tf
@pytest.mark.parametrize("version", ["1.1", "2.0"])
def test_tfds_random_mock_records_are_rejected_by_name(version):
  # TFDS's random mock data draws each answer list's texts and offsets independently, so their
  # lengths disagree: a malformed record, reported with its position and id.
  tfds = pytest.importorskip("tensorflow_datasets")
  mock = tfds.testing.mock_data(num_examples=2, policy=tfds.testing.MockPolicy.USE_CODE)
  expected = rf"tfds squad/v{version} validation record 0 \(id '[a-j]+'\): 'answers' has"
  with mock, pytest.raises(ValueError, match=expected):
    squad.load_squad_tfds(version, "validation", is_training=False)


def _tfds_records(path: Path) -> list[dict]:
  """The TFDS `squad` records of an official-format file (one per question)."""
  records = []
  for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
    for paragraph in article["paragraphs"]:
      for qa in paragraph["qas"]:

        def answers(key, qa=qa):
          items = qa.get(key, [])
          return {
            "text": [a["text"].encode() for a in items],
            "answer_start": np.asarray([a["answer_start"] for a in items], np.int32),
          }

        rec = {
          "id": qa["id"].encode(),
          "title": article["title"].encode(),
          "context": paragraph["context"].encode(),
          "question": qa["question"].encode(),
          "answers": answers("answers"),
        }
        if "is_impossible" in qa:
          rec["is_impossible"] = qa["is_impossible"]
          rec["plausible_answers"] = answers("plausible_answers")
        records.append(rec)
  return records


@pytest.mark.tf
@pytest.mark.parametrize(
  ("version", "name", "is_training"),
  [("1.1", "dev-v1.1.json", False), ("2.0", "train-v2.0.json", True)],
)
def test_tfds_path_matches_the_json_path(tokenizer, version, name, is_training):
  """`tfds.load` on mocked `squad/v1.1` / `squad/v2.0` records made from a fixture file."""
  tfds = pytest.importorskip("tensorflow_datasets")
  tf = pytest.importorskip("tensorflow")
  records = _tfds_records(DATA / name)

  def as_dataset(self, split, **kwargs):
    del split, kwargs
    return tf.data.Dataset.from_generator(
      lambda: iter(records),
      output_types=self.info.features.dtype,
      output_shapes=self.info.features.shape,
    )

  with tfds.testing.mock_data(
    num_examples=len(records), as_dataset_fn=as_dataset, policy=tfds.testing.MockPolicy.USE_CODE
  ):
    from_tfds = squad.load_squad_tfds(version, "validation", is_training=is_training)
  from_json = squad.read_squad_json(
    DATA / name, is_training=is_training, version_2_with_negative=version == "2.0"
  )
  assert from_tfds.examples == from_json.examples and from_tfds.skipped == []
  a, b = (
    squad.convert_examples_to_features(r.examples, tokenizer, is_training=is_training, config=SMALL)
    for r in (from_tfds, from_json)
  )
  assert set(a.inputs) == set(b.inputs) and len(a) > len(records)
  for key in a.inputs:
    np.testing.assert_array_equal(a.inputs[key], b.inputs[key])
  np.testing.assert_array_equal(a.meta.token_char_start, b.meta.token_char_start)


def test_tfds_rejects_unknown_versions():
  with pytest.raises(ValueError, match="SQuAD version must be one of"):
    squad.load_squad_tfds("3.0", "train", is_training=False)


def test_tfds_records_with_missing_features_are_named():
  records = [{"id": b"x1", "context": b"Some text.", "question": b"What?"}]
  with pytest.raises(
    ValueError, match=r"tfds squad/v1.1 train record 0: missing feature 'answers'"
  ):
    squad.examples_from_tfds_records(
      records, source="tfds squad/v1.1 train", is_training=False, version_2_with_negative=False
    )
