"""The SQuAD v1.1 / v2.0 metric against scores worked out by hand.

Every expected number below is derived in the comments from the normalisation and F1 rules of
the official scripts; floats are compared exactly where the official arithmetic (sums in dataset
order, then `100.0 * total / count`) is reproduced step by step.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobilebert_jax.metrics import squad as metric

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------------------------
# A SQuAD 2.0 dataset of five questions, and predictions for them.
#
#   q1 answerable, gold ["the Eiffel Tower", "Eiffel Tower"], predicted "Eiffel tower!"
#      normalised: "eiffel tower" == "eiffel tower"          -> exact 1, F1 1
#   q2 answerable, gold ["Marie Curie"], predicted "Pierre and Marie Curie"
#      tokens pierre/and/marie/curie vs marie/curie: 2 shared, P = 2/4, R = 2/2
#      F1 = 2 * 0.5 * 1 / 1.5 = 2/3                           -> exact 0, F1 2/3
#   q3 unanswerable (no gold), predicted ""                   -> exact 1, F1 1
#   q4 unanswerable, predicted "in 1889"                      -> exact 0, F1 0
#   q5 answerable, gold ["an  old\nbridge", "A bridge over the river."], predicted
#      "old bridge over water": vs "old bridge" 2 shared, P = 2/4, R = 1, F1 = 2/3;
#      vs "bridge over river" 2 shared, P = 2/4, R = 2/3, F1 = 4/7; max 2/3 -> exact 0, F1 2/3
#
#   exact = 100 * 2 / 5 = 40;  F1 = 100 * (1 + 2/3 + 1 + 0 + 2/3) / 5 = 66.67
#   HasAns (q1, q2, q5): exact 100 * 1/3 = 33.33, F1 100 * (1 + 2/3 + 2/3) / 3 = 77.78
#   NoAns (q3, q4): exact 50, F1 50
#
# No-answer probabilities: q1 0.1, q5 0.2, q4 0.3, q2 0.6, q3 0.8. The best-threshold sweep starts
# with every answer "" (the 2 unanswerable questions right) and admits predictions in increasing
# probability order:
#   exact: +q1 (1) -> 3 best @0.1; +q5 (0) -> 3; +q4 (non-empty, unanswerable: -1) -> 2;
#          +q2 (0) -> 2; +q3 ("" : 0) -> 2.         best_exact = 100 * 3/5 = 60 @ 0.1
#   F1:    +q1 -> 3 @0.1; +q5 (2/3) -> 3.67 best @0.2; +q4 -> 2.67; +q2 -> 3.33; +q3 -> 3.33.
#                                                   best_f1 = 100 * (11/3) / 5 = 73.33 @ 0.2
# With --na-prob-thresh 0.5, q2 (0.6) and q3 (0.8) count as "": q2 scores 0, q3 1:
#   exact 100 * 2/5 = 40 (q1, q3); F1 100 * (1 + 0 + 1 + 0 + 2/3) / 5 = 53.33;
#   HasAns F1 100 * (1 + 0 + 2/3) / 3 = 55.56.

V2_DATA = {
  "version": "v2.0",
  "data": [
    {
      "title": "Paris",
      "paragraphs": [
        {
          "context": "unused by the metric",
          "qas": [
            {
              "id": "q1",
              "question": "?",
              "answers": [
                {"text": "the Eiffel Tower", "answer_start": 0},
                {"text": "Eiffel Tower", "answer_start": 4},
              ],
              "is_impossible": False,
            },
            {
              "id": "q2",
              "question": "?",
              "answers": [{"text": "Marie Curie", "answer_start": 0}],
              "is_impossible": False,
            },
            {"id": "q3", "question": "?", "answers": [], "is_impossible": True},
          ],
        }
      ],
    },
    {
      "title": "Rivers",
      "paragraphs": [
        {
          "context": "unused",
          "qas": [
            {"id": "q4", "question": "?", "answers": [], "is_impossible": True},
            {
              "id": "q5",
              "question": "?",
              "answers": [
                {"text": "an  old\nbridge", "answer_start": 0},
                {"text": "A bridge over the river.", "answer_start": 0},
              ],
              "is_impossible": False,
            },
          ],
        }
      ],
    },
  ],
}
V2_PREDICTIONS = {
  "q1": "Eiffel tower!",
  "q2": "Pierre and Marie Curie",
  "q3": "",
  "q4": "in 1889",
  "q5": "old bridge over water",
}
NA_PROBS = {"q1": 0.1, "q2": 0.6, "q3": 0.8, "q4": 0.3, "q5": 0.2}

F2_3 = (2 * 0.5 * 1.0) / (0.5 + 1.0)  # q2's and q5's F1, as the official arithmetic gets it
V2_EXPECTED = {
  "exact": 100.0 * (1 + 0 + 1 + 0 + 0) / 5,
  "f1": 100.0 * ((((1.0 + F2_3) + 1) + 0) + F2_3) / 5,
  "total": 5,
  "HasAns_exact": 100.0 * 1 / 3,
  "HasAns_f1": 100.0 * ((1.0 + F2_3) + F2_3) / 3,
  "HasAns_total": 3,
  "NoAns_exact": 50.0,
  "NoAns_f1": 50.0,
  "NoAns_total": 2,
}
V2_BEST = {
  "best_exact": 60.0,
  "best_exact_thresh": 0.1,
  "best_f1": 100.0 * (2 + 1.0 + F2_3) / 5,
  "best_f1_thresh": 0.2,
}


def test_hand_values_are_what_the_comments_say():
  assert V2_EXPECTED["f1"] == pytest.approx(66.6667, abs=1e-4)
  assert V2_EXPECTED["HasAns_exact"] == pytest.approx(33.3333, abs=1e-4)
  assert V2_EXPECTED["HasAns_f1"] == pytest.approx(77.7778, abs=1e-4)
  assert V2_BEST["best_f1"] == pytest.approx(73.3333, abs=1e-4)


@pytest.mark.parametrize(
  ("gold", "prediction", "exact"),
  [
    ("The Eiffel Tower", "eiffel tower", 1),  # case, leading article
    ("Eiffel Tower", "the  Eiffel\tTower.", 1),  # whitespace, punctuation
    ("an apple", "a apple", 1),  # every article goes
    ("banana", "bnana", 0),
    ("Banana", "banana!?", 1),
    ("the Ananas", "ananas", 1),  # "an" inside a word stays
    ("Okonkwo-Berg", "OkonkwoBerg", 1),  # ASCII hyphen is punctuation: removed, not spaced
    ("Okonkwo–Berg", "Okonkwo Berg", 0),  # the en dash is not ASCII punctuation: kept
    ("café", "cafe", 0),  # accents are not stripped
    ("the", "", 1),  # both normalise to ""
  ],
)
def test_normalisation_cases(gold, prediction, exact):
  assert metric.exact_score(gold, prediction) == exact


def test_normalize_answer():
  assert metric.normalize_answer("  The  Cat's\n(pyjamas)!  ") == "cats pyjamas"
  assert metric.normalize_answer("A an THE then") == "then"


def test_f1_rules_differ_on_empty_answers():
  # v2.0: an empty side scores 1 only if both are empty; v1.1: no shared token is 0.
  assert metric.f1_score_v2("the", "") == 1 and metric.f1_score_v1("the", "") == 0
  assert metric.f1_score_v2("", "x") == 0 and metric.f1_score_v1("", "x") == 0
  assert metric.f1_score_v2("x y z", "y z u v") == metric.f1_score_v1("x y z", "y z u v")
  # 2 shared of 4 predicted and 3 gold: P 1/2, R 2/3, F1 = (2 * 1/2 * 2/3) / (1/2 + 2/3) = 4/7.
  assert metric.f1_score_v1("x y z", "y z u v") == pytest.approx(4 / 7)
  # Repeated tokens count as a multiset: "x x y" vs "x y y" share x and y once each.
  assert metric.f1_score_v1("x x y", "x y y") == pytest.approx(2 / 3)


def test_v2_metrics_by_hand():
  gold = metric.gold_from_dataset(V2_DATA["data"])
  assert gold["q3"] == [] and gold["q5"][1] == "A bridge over the river."
  result = metric.squad_v2_metrics(gold, V2_PREDICTIONS)
  assert result == V2_EXPECTED
  assert list(result) == list(V2_EXPECTED)  # the official key order
  with_probs = metric.squad_v2_metrics(gold, V2_PREDICTIONS, na_probs=NA_PROBS)
  assert with_probs == {**V2_EXPECTED, **V2_BEST}
  assert list(with_probs) == list(V2_EXPECTED) + list(V2_BEST)


def test_v2_no_answer_threshold():
  gold = metric.gold_from_dataset(V2_DATA["data"])
  result = metric.squad_v2_metrics(gold, V2_PREDICTIONS, na_probs=NA_PROBS, na_prob_thresh=0.5)
  assert result["exact"] == 40.0
  assert result["f1"] == 100.0 * ((((1.0 + 0.0) + 1.0) + 0) + F2_3) / 5
  assert result["f1"] == pytest.approx(53.3333, abs=1e-4)
  assert result["HasAns_f1"] == pytest.approx(55.5556, abs=1e-4)
  assert result["NoAns_exact"] == 50.0  # q3 right either way; q4 (0.3) keeps its answer
  # The sweep uses the raw scores: the best thresholds do not depend on na_prob_thresh.
  assert {k: result[k] for k in V2_BEST} == V2_BEST


def test_v2_only_emits_the_groups_present():
  gold = {"a": ["x"], "b": ["y z"]}
  result = metric.squad_v2_metrics(gold, {"a": "x", "b": "z"})
  # b: P = 1/1, R = 1/2, F1 = 2/3.
  assert list(result) == ["exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"]
  assert result["exact"] == 50.0 and result["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
  no_answers = metric.squad_v2_metrics({"a": [], "b": []}, {"a": "", "b": "y"})
  assert list(no_answers) == ["exact", "f1", "total", "NoAns_exact", "NoAns_f1", "NoAns_total"]
  assert no_answers["exact"] == 50.0


def test_v2_gold_answers_that_normalise_to_nothing_are_dropped():
  # The gold "The" normalises to "", so "" is the only answer left: an empty prediction is right.
  result = metric.squad_v2_metrics({"a": ["The"]}, {"a": ""})
  assert (result["exact"], result["f1"], result["HasAns_total"]) == (100.0, 100.0, 1)


def test_v2_missing_predictions_score_zero_and_are_reported(caplog):
  gold = metric.gold_from_dataset(V2_DATA["data"])
  predictions = {k: v for k, v in V2_PREDICTIONS.items() if k not in ("q1", "q3")}
  result = metric.squad_v2_metrics(gold, predictions, na_probs=NA_PROBS)
  assert "Missing prediction for q1" in caplog.text and "Missing prediction for q3" in caplog.text
  # q1 and q3 lose their points (exact 1 each, F1 1 each) but stay in the totals.
  assert result["total"] == 5 and result["exact"] == 0.0
  assert result["f1"] == 100.0 * (F2_3 + F2_3) / 5
  assert result["NoAns_exact"] == 0.0
  # Sweep: everything "" first: q4 right, q3 (missing) wrong -> 1. F1: +q5 (2/3) -> 5/3 best
  # @0.2; +q4 (answered, unanswerable) -1 -> 2/3; +q2 (2/3) -> 4/3. Exact: +q5 0 -> 1; +q4 -> 0;
  # +q2 -> 0, so the start (1, threshold 0.0) stays best.
  assert (result["best_exact"], result["best_exact_thresh"]) == (100.0 * 1 / 5, 0.0)
  assert result["best_f1"] == 100.0 * (1 + F2_3) / 5
  assert result["best_f1_thresh"] == 0.2


def test_v1_metrics_by_hand(caplog):
  # p1: gold ["Harbour Master's Office", "the harbour master's office"], predicted
  #     "The Harbour Master's office." -> normalised "harbour masters office" both: exact 1, F1 1.
  # p2: gold ["North Quay", "the north quay steps"], predicted "steps of the North Quay":
  #     vs "north quay": 2 shared of 4 predicted, P 1/2, R 1, F1 2/3;
  #     vs "north quay steps": 3 shared, P 3/4, R 1, F1 = 1.5 / 1.75 = 6/7 -> exact 0, F1 6/7.
  # p3: no prediction -> 0 (and a message).
  # exact_match = 100 * 1/3; f1 = 100 * (1 + 6/7) / 3.
  gold = {
    "p1": ["Harbour Master's Office", "the harbour master's office"],
    "p2": ["North Quay", "the north quay steps"],
    "p3": ["1902"],
  }
  predictions = {"p1": "The Harbour Master's office.", "p2": "steps of the North Quay"}
  result = metric.squad_v1_metrics(gold, predictions)
  f1_p2 = (2 * 0.75 * 1.0) / (0.75 + 1.0)
  assert result == {"exact_match": 100.0 * 1 / 3, "f1": 100.0 * (1.0 + f1_p2) / 3}
  assert list(result) == ["exact_match", "f1"]
  assert result["f1"] == pytest.approx(100 * (1 + 6 / 7) / 3)
  assert "Unanswered question p3 will receive score 0." in caplog.text


def test_v1_needs_a_gold_answer_and_questions():
  with pytest.raises(ValueError, match="'x' has no gold answer"):
    metric.squad_v1_metrics({"x": []}, {"x": ""})
  with pytest.raises(ValueError, match="no questions"):
    metric.squad_v2_metrics({}, {})


# ----------------------------------------------------------------------------------------------
# Command line.


def _write(tmp_path: Path, name: str, obj) -> Path:
  path = tmp_path / name
  path.write_text(json.dumps(obj), encoding="utf-8")
  return path


def _run_cli(*args: str | Path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  return subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.metrics.squad", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=300,
    check=False,
  )


def test_cli_v2_prints_the_official_json(tmp_path):
  data = _write(tmp_path, "dev-v2.0.json", V2_DATA)
  preds = _write(tmp_path, "predictions.json", V2_PREDICTIONS)
  na = _write(tmp_path, "null_odds.json", NA_PROBS)
  run = _run_cli(data, preds, "--na-prob-file", na)
  assert run.returncode == 0, run.stderr
  # Same keys, order and float values: the text itself is what the official script prints.
  assert run.stdout == json.dumps({**V2_EXPECTED, **V2_BEST}, indent=2) + "\n"


def test_cli_v1_prints_the_official_json(tmp_path):
  data = {
    "version": "1.1",
    "data": [
      {
        "title": "t",
        "paragraphs": [
          {
            "context": "c",
            "qas": [
              {"id": "a", "question": "?", "answers": [{"text": "Blue whale", "answer_start": 0}]},
              {"id": "b", "question": "?", "answers": [{"text": "krill", "answer_start": 0}]},
            ],
          }
        ],
      }
    ],
  }
  # a: "the blue whale" -> "blue whale": exact 1; b missing: 0. exact_match 50, f1 50.
  run = _run_cli(
    _write(tmp_path, "d.json", data), _write(tmp_path, "p.json", {"a": "the blue whale"})
  )
  assert run.returncode == 0, run.stderr
  assert run.stdout == json.dumps({"exact_match": 50.0, "f1": 50.0}) + "\n"
  assert "Unanswered question b will receive score 0." in run.stderr


def test_cli_options_in_process(tmp_path, capsys):
  data = _write(tmp_path, "dev.json", V2_DATA)
  preds = _write(tmp_path, "predictions.json", V2_PREDICTIONS)
  na = _write(tmp_path, "null_odds.json", NA_PROBS)
  out = tmp_path / "eval.json"
  assert metric.main([str(data), str(preds), "-n", str(na), "-t", "0.5", "-o", str(out)]) == 0
  assert capsys.readouterr().out == ""
  written = json.loads(out.read_text())
  assert written["f1"] == pytest.approx(53.3333, abs=1e-4) and "best_f1" in written
  assert out.read_text() == json.dumps(written)  # one line, as the official --out-file
  # --version 1.1 on v2.0 data: the v1.1 metric, with the official version warning.
  v1_gold = dict(V2_DATA, data=V2_DATA["data"][:1])
  v1_gold["data"] = [
    {"paragraphs": [{"context": "", "qas": [V2_DATA["data"][0]["paragraphs"][0]["qas"][0]]}]}
  ]
  v1_file = _write(tmp_path, "v1.json", v1_gold)
  assert metric.main([str(v1_file), str(preds), "--version", "1.1"]) == 0
  captured = capsys.readouterr()
  assert json.loads(captured.out) == {"exact_match": 100.0, "f1": 100.0}
  assert "Evaluation expects v-1.1, but got dataset with v-v2.0" in captured.err
  assert metric.main([str(v1_file), str(preds), "--version", "1.1", "-n", str(na)]) == 2
  assert "SQuAD 2.0 option" in capsys.readouterr().err


@pytest.mark.parametrize(
  ("data_text", "message"),
  [
    ('{"data": [\n {"paragraphs": [}\n]}', r"data\.json:2:\d+: invalid JSON"),
    ('{"version": "1.1"}', re.escape("data.json: missing key 'data'")),
    (
      '{"data": [{"paragraphs": [{"qas": [{"id": "x"}]}]}]}',
      re.escape("data[0] paragraphs[0] qas[0] (id 'x'): missing key 'answers'"),
    ),
    (
      '{"data": [{"paragraphs": [{"qas": [{"id": "x", "answers": []}, '
      '{"id": "x", "answers": []}]}]}]}',
      re.escape("qas[1] (id 'x'): duplicate question id"),
    ),
  ],
)
def test_cli_reports_malformed_data(tmp_path, capsys, data_text, message):
  data = tmp_path / "data.json"
  data.write_text(data_text, encoding="utf-8")
  preds = _write(tmp_path, "p.json", {"x": "y"})
  assert metric.main([str(data), str(preds)]) == 2
  err = capsys.readouterr().err
  assert re.search(message, err), err


def test_cli_reports_bad_predictions_and_na_probs(tmp_path, capsys):
  data = _write(tmp_path, "dev.json", V2_DATA)
  bad = _write(tmp_path, "p.json", {"q1": 3})
  assert metric.main([str(data), str(bad)]) == 2
  assert "p.json: question 'q1': a prediction value 3 has the wrong type" in capsys.readouterr().err
  preds = _write(tmp_path, "predictions.json", V2_PREDICTIONS)
  short = _write(tmp_path, "na.json", {"q1": 0.5})
  assert metric.main([str(data), str(preds), "-n", str(short)]) == 2
  assert "na.json: no entry for question 'q2'" in capsys.readouterr().err
