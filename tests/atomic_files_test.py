"""Result files are written atomically: a failed write leaves the old file, never a broken one.

The failures are real, not mocked: a child process runs the writers under `RLIMIT_FSIZE` with
SIGXFSZ ignored, so writing past the limit fails with OSError(EFBIG), which reaches Python the
way a full disk's ENOSPC does (a short write, then an OSError from `write` or `flush`).
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable

import numpy as np
import pytest

from mobilebert_jax import atomic_files
from mobilebert_jax.data import conll, glue, squad_postprocess
from mobilebert_jax.metrics import squad as squad_metric
from mobilebert_jax.tasks import base as task_base
from mobilebert_jax.train import initialization, run_files

# Below the size of every file the cases write (checked by the happy-path test), so each write
# fails part-way, after the first `LIMIT` bytes reached the disk.
LIMIT = 64
_RESULT_MARKER = "RESULTS:"

# ----------------------------------------------------------------------------------------------
# Fixed inputs (non-ASCII included, to pin the encoding).

_TEXT = "".join(f"line {i}: ünïcode ✓\n" for i in range(40))
_VALUE = {"b": [1, 2.5, None], "a": {"text": "é ✓", "n": list(range(50))}}
_LINES = [f"{i}\tprediction ✓" for i in range(60)]
_ROWS = [["index", "prediction"], *([i, f"ending, {i} ✓"] for i in range(60))]
_SQUAD = squad_postprocess.SquadPredictions(
  predictions={f"q{i}": f"answer {i} ✓" if i % 3 else "" for i in range(12)},
  nbest={
    f"q{i}": [
      {"text": f"answer {i} ✓", "probability": 0.75, "start_logit": 1.5, "end_logit": -0.25},
      {"text": "", "probability": 0.25, "start_logit": 0.5, "end_logit": 0.5},
    ]
    for i in range(12)
  },
  null_odds={f"q{i}": i - 5.5 for i in range(12)},
)
_GLUE_IDS = np.random.default_rng(0).permutation(40)
_GLUE_LOGITS = np.random.default_rng(1).normal(size=(40, 3))
_GLUE_FILE = glue.submission_filename("mnli", "test_matched")
_CONLL_WORDS = [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]] * 5
_CONLL_GOLD = [["B-ORG", "O", "B-MISC", "O"], ["B-PER", "I-PER"]] * 5
_CONLL_PREDICTED = [["B-ORG", "O", "O", "O"], ["B-PER", "B-PER"]] * 5
_METRICS = {"eval/f1": 88.5, "eval/exact_match": 81.25, "step": 1000}
_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ünï"]
_VOCAB = "".join(f"{t}\n" for t in [*_SPECIAL_TOKENS, *(f"##{c}" for c in "abcdefghij")])


def _make_inputs(inputs: pathlib.Path) -> None:
  """The files the cases read: a vocabulary, a SQuAD 2.0 data file and its predictions."""
  (inputs / "vocab.txt").write_text(_VOCAB, encoding="utf-8")
  qas = [
    {"id": qid, "answers": [{"text": text, "answer_start": 0}] if i % 2 else []}
    for i, (qid, text) in enumerate(_SQUAD.predictions.items())
  ]
  data = {"version": "v2.0", "data": [{"paragraphs": [{"context": "c", "qas": qas}]}]}
  (inputs / "gold.json").write_text(json.dumps(data), encoding="utf-8")
  (inputs / "predictions.json").write_text(json.dumps(_SQUAD.predictions), encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# The writers, each with the code it had before it became atomic (the happy path's reference).


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  files: tuple[str, ...]  # what `write` creates in its directory, in order
  write: Callable[[str, str], object]  # (directory, inputs directory)
  old_write: Callable[[str, str], object]  # the plain open(path, "w") code it replaced
  overwrites: bool = True  # False: the writer leaves an existing file alone


def _old_text(path: str, text: str, newline: str | None = "\n") -> None:
  with open(path, "w", encoding="utf-8", newline=newline) as f:
    f.write(text)


def _csv_rows(f) -> None:
  csv.writer(f).writerows(_ROWS)


def _new_csv(directory: str, inputs: str) -> None:
  with atomic_files.open_for_write(os.path.join(directory, "out.csv")) as f:
    _csv_rows(f)


def _old_csv(directory: str, inputs: str) -> None:
  with open(os.path.join(directory, "out.csv"), "w", encoding="utf-8", newline="") as f:
    _csv_rows(f)


def _old_run_files_json(path: str, value) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")


def _old_lines(path: str, lines) -> None:
  _old_text(path, "".join(f"{line}\n" for line in lines))


def _old_squad(directory: str, inputs: str) -> None:
  for name, obj in (
    ("predictions.json", _SQUAD.predictions),
    ("nbest_predictions.json", _SQUAD.nbest),
    ("null_odds.json", _SQUAD.null_odds),
  ):
    _old_text(os.path.join(directory, name), json.dumps(obj, indent=4) + "\n", newline=None)


def _old_glue(directory: str, inputs: str) -> None:
  labels = glue.get_task("mnli").labels
  texts = [labels[int(value)] for value in _GLUE_LOGITS.argmax(axis=-1)]
  with open(os.path.join(directory, _GLUE_FILE), "w", encoding="utf-8", newline="\n") as f:
    f.write("index\tprediction\n")
    for i in np.argsort(_GLUE_IDS, kind="stable"):
      f.write(f"{int(_GLUE_IDS[i])}\t{texts[i]}\n")


def _old_conll(directory: str, inputs: str) -> None:
  path = os.path.join(directory, "predictions_validation.txt")
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for sentence, gold, predicted in zip(_CONLL_WORDS, _CONLL_GOLD, _CONLL_PREDICTED, strict=True):
      for word, g, p in zip(sentence, gold, predicted, strict=True):
        f.write(f"{word} {g} {p}\n")
      f.write("\n")


def _squad_metric_args(directory: str, inputs: str) -> list[str]:
  gold, predictions = (os.path.join(inputs, n) for n in ("gold.json", "predictions.json"))
  return [gold, predictions, "--out-file", os.path.join(directory, "scores.json")]


def _new_squad_metric(directory: str, inputs: str) -> None:
  assert squad_metric.main(_squad_metric_args(directory, inputs)) == 0


def _old_squad_metric(directory: str, inputs: str) -> None:
  gold, _ = squad_metric.load_squad_gold(os.path.join(inputs, "gold.json"))
  predictions = squad_metric.load_predictions(os.path.join(inputs, "predictions.json"))
  result = squad_metric.squad_v2_metrics(gold, predictions, None, 1.0)
  with open(os.path.join(directory, "scores.json"), "w", encoding="utf-8") as f:
    json.dump(result, f)


def _join(directory: str, name: str) -> str:
  return os.path.join(directory, name)


CASES = [
  # The module's API.
  Case(
    "write_text",
    ("out.txt",),
    lambda d, _: atomic_files.write_text(_join(d, "out.txt"), _TEXT),
    lambda d, _: _old_text(_join(d, "out.txt"), _TEXT),
  ),
  Case(
    "write_json",
    ("out.json",),
    lambda d, _: atomic_files.write_json(_join(d, "out.json"), _VALUE),
    lambda d, _: _old_run_files_json(_join(d, "out.json"), _VALUE),
  ),
  Case(
    "write_lines",
    ("out.txt",),
    lambda d, _: atomic_files.write_lines(_join(d, "out.txt"), _LINES),
    lambda d, _: _old_lines(_join(d, "out.txt"), _LINES),
  ),
  Case("open_for_write_csv", ("out.csv",), _new_csv, _old_csv),
  Case(
    "copy_file",
    ("vocab.txt",),
    lambda d, i: atomic_files.copy_file(_join(i, "vocab.txt"), _join(d, "vocab.txt")),
    lambda d, i: shutil.copyfile(_join(i, "vocab.txt"), _join(d, "vocab.txt")),
  ),
  # The writers of a run.
  Case(
    "squad_prediction_files",
    ("predictions.json", "nbest_predictions.json", "null_odds.json"),
    lambda d, _: squad_postprocess.write_prediction_files(_SQUAD, d),
    _old_squad,
  ),
  Case(
    "glue_submission",
    (_GLUE_FILE,),
    lambda d, _: glue.write_glue_submission(d, "mnli", "test_matched", _GLUE_IDS, _GLUE_LOGITS),
    _old_glue,
  ),
  Case(
    "task_write_lines",  # GLUE dev predictions and SWAG predictions_<split>.csv
    ("RTE_validation_predictions.tsv",),
    lambda d, _: task_base.write_lines(_join(d, "RTE_validation_predictions.tsv"), _LINES),
    lambda d, _: _old_lines(_join(d, "RTE_validation_predictions.tsv"), _LINES),
  ),
  Case(
    "conll_predictions",
    ("predictions_validation.txt",),
    lambda d, _: conll.write_conlleval_input(
      _join(d, "predictions_validation.txt"), _CONLL_WORDS, _CONLL_GOLD, _CONLL_PREDICTED
    ),
    _old_conll,
  ),
  Case(
    "run_files_eval_metrics",
    (run_files.EVAL_METRICS_FILE,),
    lambda d, _: run_files.write_json(_join(d, run_files.EVAL_METRICS_FILE), _METRICS),
    lambda d, _: _old_run_files_json(_join(d, run_files.EVAL_METRICS_FILE), _METRICS),
  ),
  Case(
    "keep_vocab",
    ("vocab.txt",),
    lambda d, i: initialization.keep_vocab(_join(i, "vocab.txt"), d),
    lambda d, i: shutil.copyfile(_join(i, "vocab.txt"), _join(d, "vocab.txt")),
    overwrites=False,
  ),
  Case("squad_metric_out_file", ("scores.json",), _new_squad_metric, _old_squad_metric),
]
_BY_NAME = {case.name: case for case in CASES}


def _old_bytes(name: str) -> bytes:
  return f"the previous run's {name}\n".encode() * 3


# ----------------------------------------------------------------------------------------------
# The child process: every case under one file-size limit.


def _child(spec_json: str) -> None:
  """Runs the writers of `spec` under `RLIMIT_FSIZE`; prints each one's outcome as JSON."""
  spec = json.loads(spec_json)
  # Past the limit the kernel would kill the process with SIGXFSZ; ignored, `write` fails with
  # EFBIG instead, an ordinary OSError like ENOSPC. Hard limit too: the writers cannot lift it.
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (spec["limit"], spec["limit"]))
  results = {}
  for key, (name, directory) in spec["runs"].items():
    try:
      _BY_NAME[name].write(directory, spec["inputs"])
    except OSError as e:
      results[key] = {"errno": e.errno, "error": repr(e)}
    except BaseException:
      results[key] = {"errno": None, "error": traceback.format_exc()}
    else:
      results[key] = {"errno": None, "error": None}
  print(_RESULT_MARKER + json.dumps(results), flush=True)


@pytest.fixture(scope="module")
def failed_writes(tmp_path_factory):
  """Runs every case in a child process past the size limit, over an old file and into an empty
  directory; returns (outcomes by run key, directories by run key)."""
  root = tmp_path_factory.mktemp("atomic")
  inputs = root / "inputs"
  inputs.mkdir()
  _make_inputs(inputs)
  runs, directories = {}, {}
  for case in CASES:
    for variant in ("over_old", "fresh") if case.overwrites else ("fresh",):
      key = f"{case.name}/{variant}"
      directory = root / case.name / variant
      directory.mkdir(parents=True)
      if variant == "over_old":
        for name in case.files:
          (directory / name).write_bytes(_old_bytes(name))
      runs[key] = (case.name, str(directory))
      directories[key] = directory
  spec = {"limit": LIMIT, "inputs": str(inputs), "runs": runs}
  tests_dir = str(pathlib.Path(__file__).parent)
  code = (
    f"import sys; sys.path.insert(0, {tests_dir!r}); import atomic_files_test; "
    "atomic_files_test._child(sys.argv[1])"
  )
  proc = subprocess.run(
    [sys.executable, "-c", code, json.dumps(spec)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=pathlib.Path(__file__).parent.parent,
  )
  lines = [line for line in proc.stdout.splitlines() if line.startswith(_RESULT_MARKER)]
  assert proc.returncode == 0 and lines, f"child failed:\n{proc.stdout}\n{proc.stderr}"
  return json.loads(lines[-1][len(_RESULT_MARKER) :]), directories


def _listing(directory: pathlib.Path) -> list[str]:
  return sorted(os.listdir(directory))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_failed_write_raises_and_keeps_the_old_file(failed_writes, case):
  outcomes, directories = failed_writes
  if case.overwrites:
    key = f"{case.name}/over_old"
    assert outcomes[key]["errno"] == errno.EFBIG, outcomes[key]["error"]
    directory = directories[key]
    # Every old file byte for byte (the first failed; the later ones were never started), and
    # nothing else: no temporary file left behind.
    assert _listing(directory) == sorted(case.files)
    for name in case.files:
      assert (directory / name).read_bytes() == _old_bytes(name), name


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_a_failed_first_write_leaves_no_file(failed_writes, case):
  outcomes, directories = failed_writes
  key = f"{case.name}/fresh"
  assert outcomes[key]["errno"] == errno.EFBIG, outcomes[key]["error"]
  # Neither a truncated file at the path nor a temporary one.
  assert _listing(directories[key]) == []


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_the_happy_path_writes_the_same_bytes_as_a_plain_write(tmp_path, case):
  inputs, new, old = (tmp_path / name for name in ("inputs", "new", "old"))
  for directory in (inputs, new, old):
    directory.mkdir()
  _make_inputs(inputs)
  if case.overwrites:  # the new content replaces an older file
    for name in case.files:
      (new / name).write_bytes(_old_bytes(name))
  case.write(str(new), str(inputs))
  case.old_write(str(old), str(inputs))
  assert _listing(new) == _listing(old) == sorted(case.files)
  for name in case.files:
    expected = (old / name).read_bytes()
    assert (new / name).read_bytes() == expected, name
    # The permissions a plain open() gives (0666 less the umask), not a temporary file's 0600.
    assert (new / name).stat().st_mode == (old / name).stat().st_mode, name
  # The failure tests fail each writer part-way through its (first) file.
  assert (old / case.files[0]).stat().st_size > LIMIT


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
  # The CoNLL writer finds the second sentence malformed after writing the first.
  path = tmp_path / "predictions_validation.txt"
  path.write_bytes(_old_bytes(path.name))
  with pytest.raises(ValueError, match="sentence 1"):
    conll.write_conlleval_input(path, [["a"], ["b", "c"]], [["O"], ["O"]], [["O"], ["O"]])
  assert _listing(tmp_path) == [path.name]
  assert path.read_bytes() == _old_bytes(path.name)

  with pytest.raises(KeyboardInterrupt), atomic_files.open_for_write(tmp_path / "new.bin", "wb"):
    raise KeyboardInterrupt
  assert _listing(tmp_path) == [path.name]


def test_open_for_write_takes_only_write_modes(tmp_path):
  for mode in ("a", "r", "w+", "x"):
    with (
      pytest.raises(ValueError, match="mode must be"),
      atomic_files.open_for_write(tmp_path / "f", mode),
    ):
      pass
  assert _listing(tmp_path) == []
