"""The `python -m mobilebert_jax.finetune` entry point, end to end on tiny fixtures.

Each task family trains a few steps of the `size=tiny` config (a small MobileBERT-shaped model
from scratch, the demo vocabulary) through `finetune.main(argv)` in-process, on the 8 fake CPU
devices of conftest.py, and must leave the final metrics, the prediction files, an Orbax
checkpoint and the summaries in its workdir. The fixtures hold only a handful of training
examples, fewer than a global batch of 8, so the tests repeat them into a temporary copy.
Bad command lines must fail before any training, with a message that names the problem; one
of them runs as a subprocess to cover the console script's exit status.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from absl import app, flags

from mobilebert_jax import cli, finetune
from mobilebert_jax.demo import VOCAB_FILE
from mobilebert_jax.errors import RunConfigError
from mobilebert_jax.train import checkpointing

# ml_collections loads config files with the deprecated `load_module()`; not ours to fix.
pytestmark = pytest.mark.usefixtures("fast_compiles")

TESTDATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "mobilebert_jax", "configs")


def repeat_rows(src: str, dst: str, times: int, header_lines: int = 1) -> None:
  """Copies a text file, repeating its data lines `times` times (headers kept once)."""
  with open(src, encoding="utf-8") as f:
    lines = f.read().splitlines()
  head, rows = lines[:header_lines], [line for line in lines[header_lines:] if line.strip()]
  with open(dst, "w", encoding="utf-8", newline="\n") as f:
    f.write("\n".join(head + rows * times) + "\n")


def glue_copy(tmp_path, glue_name: str, times: int = 4) -> str:
  """A copy of a GLUE fixture directory whose train.tsv has `times` as many rows."""
  dst = tmp_path / "glue" / glue_name
  shutil.copytree(os.path.join(TESTDATA, "glue", glue_name), dst)
  repeat_rows(os.path.join(TESTDATA, "glue", glue_name, "train.tsv"), dst / "train.tsv", times)
  return str(tmp_path / "glue")


def run(workdir, *args: str) -> dict[str, float]:
  return finetune.main(
    [
      "mobilebert-finetune",
      f"--workdir={workdir}",
      f"--config.tokenizer.vocab_file={VOCAB_FILE}",
      *args,
    ]
  )


def read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def assert_run_files(workdir, final_step: int) -> None:
  """What every run leaves behind besides the task's predictions."""
  for name in ("config.json", "model_config.json", "run_info.json", "vocab.txt"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  assert steps[-1] == final_step
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if "train/loss" in r]
  assert train[-1]["step"] == final_step
  assert all(r["train/learning_rate"] >= 0 and r["train/steps_per_sec"] > 0 for r in train)
  assert all(r["train/grad_norm"] > 0 for r in train)
  assert any("eval/" in key for key in records[-1])
  events = os.listdir(os.path.join(workdir, "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)


# ----------------------------------------------------------------------------------------------
# Every task family trains through the CLI
# ----------------------------------------------------------------------------------------------


def test_squad_v1_trains_and_writes_predictions(tmp_path):
  workdir = tmp_path / "squad"
  metrics = run(
    workdir,
    "--task=squad",
    f"--config={CONFIGS}/squad.py:size=tiny",
    f"--config.data.data_dir={TESTDATA}/squad",
    "--config.eval_every_steps=2",
  )
  assert set(metrics) == {"exact_match", "f1"}
  assert read_json(workdir / "eval_metrics.json") == pytest.approx(metrics)
  predictions = read_json(workdir / "predictions.json")
  gold = read_json(f"{TESTDATA}/squad/dev-v1.1.json")
  question_ids = {qa["id"] for a in gold["data"] for p in a["paragraphs"] for qa in p["qas"]}
  assert set(predictions) == question_ids
  nbest = read_json(workdir / "nbest_predictions.json")
  assert all(1 <= len(entries) <= 20 for entries in nbest.values())
  assert not (workdir / "null_odds.json").exists()
  assert_run_files(workdir, final_step=4)
  # Evaluated during training too; that checkpoint is ranked by its F1.
  with open(workdir / "metrics.jsonl") as f:
    evals = [r["step"] for r in map(json.loads, f) if "eval/f1" in r]
  assert evals == [2, 4]
  manager = checkpointing.CheckpointManager(workdir / "checkpoints", read_only=True)
  try:
    assert set(manager.metadata(2)["metrics"]) == {"exact_match", "f1"}
  finally:
    manager.close()
  config = read_json(workdir / "config.json")
  assert config["task"] == "squad" and config["data"]["doc_stride"] == 32
  assert read_json(workdir / "model_config.json")["hidden_size"] == 32


def test_squad_v2_reports_the_official_v2_keys(tmp_path):
  workdir = tmp_path / "squad_v2"
  metrics = run(
    workdir,
    "--task=squad2.0",
    f"--config={CONFIGS}/squad.py:version=2.0,size=tiny",
    f"--config.data.data_dir={TESTDATA}/squad",
    "--config.num_train_steps=2",
  )
  for key in ("exact_match", "f1", "exact", "total", "HasAns_f1", "NoAns_f1", "best_f1"):
    assert key in metrics, key
  assert metrics["exact_match"] == metrics["exact"]
  null_odds = read_json(workdir / "null_odds.json")
  assert set(null_odds) == set(read_json(workdir / "predictions.json"))


def test_glue_stsb_regression(tmp_path):
  workdir = tmp_path / "stsb"
  metrics = run(
    workdir,
    "--task=glue/STS-B",
    f"--config={CONFIGS}/glue.py:task=stsb,size=tiny",
    f"--config.data.data_dir={glue_copy(tmp_path, 'STS-B')}",
    "--config.data.predict_test=true",
  )
  assert set(metrics) == {"pearson", "spearman", "score"}
  assert read_json(workdir / "model_config.json")["problem_type"] == "regression"
  with open(workdir / "STS-B.tsv") as f:
    rows = list(csv.reader(f, delimiter="\t"))
  assert rows[0] == ["index", "prediction"] and len(rows) > 1
  assert all(float(score) == float(score) for _, score in rows[1:])  # numbers, not NaN
  assert (workdir / "STS-B_validation_predictions.tsv").is_file()


def test_glue_mnli_evaluates_both_dev_sets_and_writes_submissions(tmp_path):
  workdir = tmp_path / "mnli"
  metrics = run(
    workdir,
    "--task=mnli",
    f"--config={CONFIGS}/glue.py:task=mnli,size=tiny",
    f"--config.data.data_dir={glue_copy(tmp_path, 'MNLI', times=3)}",
    "--config.data.predict_test=true",
    "--config.num_train_steps=2",
  )
  assert {"accuracy", "score", "validation_mismatched/accuracy"} <= set(metrics)
  assert 0.0 <= metrics["accuracy"] <= 1.0
  labels = {"entailment", "neutral", "contradiction"}
  for name, split in (("MNLI-m.tsv", "test_matched"), ("MNLI-mm.tsv", "test_mismatched")):
    with open(workdir / name) as f:
      rows = list(csv.reader(f, delimiter="\t"))
    with open(f"{TESTDATA}/glue/MNLI/{split}.tsv") as f:
      num_examples = sum(1 for line in f if line.strip()) - 1
    assert rows[0] == ["index", "prediction"]
    assert len(rows) - 1 == num_examples
    assert {label for _, label in rows[1:]} <= labels
  model_config = read_json(workdir / "model_config.json")
  assert model_config["num_labels"] == 3 and model_config["classifier_dropout"] == 0.1


def test_conll2003_writes_conlleval_predictions(tmp_path):
  train = tmp_path / "train.txt"
  repeat_rows(f"{TESTDATA}/conll/eng_iob1.txt", train, times=4, header_lines=0)
  workdir = tmp_path / "conll"
  metrics = run(
    workdir,
    "--task=conll03",
    f"--config={CONFIGS}/conll2003.py:size=tiny",
    f"--config.data.train_file={train}",
    f"--config.data.eval_file={TESTDATA}/conll/eng_iob2.txt",
  )
  assert set(metrics) == {"f1", "precision", "recall", "accuracy"}
  with open(workdir / "predictions_validation.txt") as f:
    lines = [line.split() for line in f if line.strip()]
  assert lines and all(len(fields) == 3 for fields in lines)  # word gold predicted
  tags = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
  assert {fields[2] for fields in lines} <= tags


def test_swag_multiple_choice(tmp_path):
  data = tmp_path / "swag"
  shutil.copytree(f"{TESTDATA}/swag", data)
  repeat_rows(f"{TESTDATA}/swag/train.csv", data / "train.csv", times=4)
  workdir = tmp_path / "swag_run"
  metrics = run(
    workdir,
    "--task=swag",
    f"--config={CONFIGS}/swag.py:size=tiny",
    f"--config.data.data_dir={data}",
    "--config.data.predict_test=true",
    "--config.num_train_steps=2",
  )
  assert set(metrics) == {"accuracy"}
  with open(workdir / "predictions_test.csv") as f:
    rows = list(csv.reader(f))
  assert rows[0] == ["index", "prediction"]
  assert {int(p) for _, p in rows[1:]} <= {0, 1, 2, 3}


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
  """SIGKILL the console script once it has saved a checkpoint, then run the same command."""
  workdir = tmp_path / "killed"
  args = [
    "--task=squad",
    f"--config={CONFIGS}/squad.py:size=tiny",
    f"--config.data.data_dir={TESTDATA}/squad",
    "--config.num_train_steps=60",
    "--config.checkpoint_every_steps=20",
    "--config.log_every_steps=10",
  ]
  env = {**os.environ, "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
  command = [sys.executable, "-m", "mobilebert_jax.finetune", f"--workdir={workdir}"]
  command += [f"--config.tokenizer.vocab_file={VOCAB_FILE}", *args]
  log = tmp_path / "killed.log"  # a file, not a pipe: a full pipe would stall the process
  with open(log, "w") as stderr:
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=stderr, stderr=stderr)
    try:
      deadline = time.time() + 240
      while not any(n.isdigit() for n in _listdir(workdir / "checkpoints")):
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
      process.send_signal(signal.SIGKILL)
      process.wait(timeout=60)
    finally:
      if process.poll() is None:
        process.kill()
  assert not (workdir / "eval_metrics.json").exists()  # it did not get to finish

  metrics = run(workdir, *args)
  start_step = read_json(workdir / "run_info.json")["start_step"]
  assert start_step in (20, 40)
  assert read_json(workdir / "eval_metrics.json") == pytest.approx(metrics)
  assert_run_files(workdir, final_step=60)


def _listdir(path) -> list[str]:
  return os.listdir(path) if os.path.isdir(path) else []


# ----------------------------------------------------------------------------------------------
# Bad command lines fail clearly, before training
# ----------------------------------------------------------------------------------------------


def parse(*args: str):
  return finetune.parse_flags(["mobilebert-finetune", "--workdir=/tmp/unused", *args])


def test_task_picks_its_config_file_and_variant():
  parsed = parse("--task=glue/SST-2")
  assert parsed.config.task == "glue/sst2"
  assert parsed["config"].config_filename.endswith("glue.py:task=sst2")
  assert parse("--task=squad_v2").config.task == "squad_v2"
  demo = parse("--task=squad", "--demo")
  assert demo.config.init_from == "" and demo.config.data.train_file.endswith("train.json")


def test_overrides_are_applied_with_their_types():
  parsed = parse(
    "--task=rte",
    "--config.optimizer.learning_rate=3e-5",
    "--config.model.hidden_dropout_prob=0.2",
    "--config.model.scan_layers=true",
    "--config.mesh_shape=(4,2)",
  )
  config = parsed.config
  assert config.optimizer.learning_rate == 3e-5
  assert config.model.hidden_dropout_prob == 0.2 and config.model.scan_layers is True
  assert tuple(config.mesh_shape) == (4, 2)


@pytest.mark.parametrize(
  ("args", "message"),
  [
    (["--task=squad", "--config.optimizer.learnin_rate=1e-4"], "Did you mean"),
    (["--task=squad", "--config.modl.hidden_size=8"], "no field 'modl'"),
    (["--task=squad", "--config.optimizer.learning_rate=fast"], "learning_rate"),
    (["--task=sqad"], "unknown task"),
    (["--task=glue/ax"], "diagnostic"),
    ([], "--task"),
    (["--task=glue/rte", "--demo"], "demo"),
    (["--task=squad", "--demo", f"--config={CONFIGS}/squad.py"], "--demo picks"),
    (["--task=squad", f"--config={CONFIGS}/glue.py:task=rte"], "--config is for task"),
    (["--task=squad", f"--config={CONFIGS}/missing.py"], "does not exist"),
    (["--task=squad", f"--config={CONFIGS}/glue.py:task=nope"], "task=NAME"),
    (["--task=squad", "--unknown_flag=1"], "unknown_flag"),
  ],
)
def test_bad_command_lines_fail_clearly(args, message):
  with pytest.raises(app.UsageError, match=message):
    parse(*args)


def test_missing_workdir_is_an_error():
  with pytest.raises(app.UsageError, match="--workdir"):
    finetune.parse_flags(["mobilebert-finetune", "--task=squad"])


def test_missing_data_names_the_field_to_set(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"config\.data\.data_dir"):
    run(tmp_path / "w", "--task=squad", f"--config={CONFIGS}/squad.py:size=tiny")
  with pytest.raises(FileNotFoundError, match=r"train-v1\.1\.json"):
    run(
      tmp_path / "w",
      "--task=squad",
      f"--config={CONFIGS}/squad.py:size=tiny",
      f"--config.data.data_dir={tmp_path}",
    )


def test_unreadable_init_from_is_an_error(tmp_path):
  (tmp_path / "not_a_checkpoint").mkdir()
  with pytest.raises(FileNotFoundError, match="not_a_checkpoint"):
    run(
      tmp_path / "w",
      "--task=squad",
      f"--config={CONFIGS}/squad.py:size=tiny",
      f"--config.data.data_dir={TESTDATA}/squad",
      f"--init_from={tmp_path / 'not_a_checkpoint'}",
    )
  with pytest.raises(FileNotFoundError, match="does not exist"):
    run(
      tmp_path / "fresh",
      "--task=squad",
      f"--config={CONFIGS}/squad.py:size=tiny",
      f"--config.data.data_dir={TESTDATA}/squad",
      "--config.tokenizer.vocab_file=",
      f"--init_from={tmp_path / 'no' / 'such' / 'dir'}",
    )
  with pytest.raises(ValueError, match="Unknown MobileBERT preset"):
    run(
      tmp_path / "w",
      "--task=squad",
      f"--config={CONFIGS}/squad.py:size=tiny",
      f"--config.data.data_dir={TESTDATA}/squad",
      "--init_from=preset:no-such-model",
    )


def test_console_script_exits_nonzero_with_the_reason():
  """The installed entry point (run via `python -m`), as a user sees it."""
  result = subprocess.run(
    [sys.executable, "-m", "mobilebert_jax.finetune", "--task=squad", "--workdir=/tmp/x",
     "--config.data.dat_dir=/data"],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=REPO,
    check=False,
  )  # fmt: skip
  assert result.returncode == 1
  assert "--config.data.dat_dir" in result.stderr and "data_dir" in result.stderr


@pytest.mark.parametrize(
  ("error", "status"),
  [(RunConfigError("the checkpoint fixes\n  the model"), 1), (FileNotFoundError("no data"), 1)],
)
def test_user_errors_of_a_run_are_one_line(monkeypatch, capsys, error, status):
  def define(flag_values):
    flags.DEFINE_string("workdir", None, "Run directory.", flag_values=flag_values)

  def main_fn(parsed):
    raise error

  monkeypatch.setattr(sys, "argv", ["prog", "--workdir=/tmp/x"])
  with pytest.raises(SystemExit) as exit_info:
    cli.run("prog", "doc", define, parse_with_squad_config(define), main_fn)
  assert exit_info.value.code == status
  message = capsys.readouterr().err.splitlines()
  assert message[0] == f"prog: {' '.join(str(error.args[0]).split())}"
  assert not any("Traceback" in line for line in message)


def test_a_bug_keeps_its_traceback(monkeypatch):
  def define(flag_values):
    flags.DEFINE_string("workdir", None, "Run directory.", flag_values=flag_values)

  def main_fn(parsed):
    raise KeyError("a bug")

  monkeypatch.setattr(sys, "argv", ["prog"])
  with pytest.raises(KeyError, match="a bug"):
    cli.run("prog", "doc", define, parse_with_squad_config(define), main_fn)


def parse_with_squad_config(define):
  return lambda argv: cli.parse(argv, define, lambda pre: cli.package_config("squad.py"))
