"""The Colab notebook `colab/squad_finetune_tpu.ipynb`: its structure, and a full run of its demo.

The slow test executes every cell in a fresh Jupyter kernel of this interpreter, on the CPU, with
`MOBILEBERT_COLAB_DEMO=1` (the offline demo: shipped data, a small model from scratch) and a
temporary `MOBILEBERT_COLAB_WORKDIR`, so the notebook cannot drift away from the package's API.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import time

import nbformat
import pytest
from absl import logging as absl_logging

from mobilebert_jax.train import summaries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "colab", "squad_finetune_tpu.ipynb")
DEMO_F1_BAR = 60.0  # what the notebook (and configs/squad.py's demo) promise
CELL_TIMEOUT_S = 1200  # the training cell takes a few minutes on 2 CPU cores


def _read() -> nbformat.NotebookNode:
  with open(NOTEBOOK, encoding="utf-8") as f:
    return nbformat.read(f, as_version=4)


def _tagged(nb: nbformat.NotebookNode, tag: str) -> nbformat.NotebookNode:
  cells = [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
  return cells[0]


def _stdout(cell: nbformat.NotebookNode) -> str:
  return "".join(
    o.get("text", "")
    for o in cell.get("outputs", [])
    if o.output_type == "stream" and o.name == "stdout"
  )


def test_notebook_is_valid_stripped_and_switchable():
  nb = _read()
  nbformat.validate(nb)
  assert nb.nbformat == 4
  assert nb.metadata.get("accelerator") == "TPU"
  assert "colab" in nb.metadata
  assert nb.metadata.kernelspec.name == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  for cell in code:
    assert cell.outputs == [], f"cell {cell.get('id')} has outputs: strip them"
    assert cell.execution_count is None, f"cell {cell.get('id')} has an execution count"
  sources = "\n".join(c.source for c in code)
  # One switch, read from the environment, and the real path's inputs.
  assert len(re.findall(r"^DEMO = .*MOBILEBERT_COLAB_DEMO", sources, re.M)) == 1
  assert "MOBILEBERT_COLAB_WORKDIR" in sources
  assert "google/mobilebert-uncased" in sources
  assert "PACKAGE_SOURCE" in sources
  # The package's public helpers, not inline copies of them.
  assert "inference.load_finetuned(WORKDIR)" in sources
  assert "inference.answer_question(" in sources
  assert "summaries.quiet_library_logs(" in sources
  assert "addFilter" not in sources and "setLevel" not in sources
  # Every markdown cell explains something; the notebook stays small.
  assert all(c.source.strip() for c in nb.cells)
  assert os.path.getsize(NOTEBOOK) < 60_000


def test_quiet_library_logs_hides_only_the_named_libraries_below_the_level():
  """The helper the notebook (and the command line) use around training."""

  class Collect(logging.Handler):
    def __init__(self):
      super().__init__()
      self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
      self.messages.append(record.getMessage())

  def record(path: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("absl", level, path, 1, message, None, None)

  orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "manager.py")
  ours_file = os.path.join(os.sep, "repo", "mobilebert_jax", "train", "loop.py")
  collect = Collect()
  absl_logger = absl_logging.get_absl_logger()
  absl_logger.addHandler(collect)
  try:
    with summaries.quiet_library_logs():
      for path, level, message in [
        (orbax_file, logging.INFO, "orbax info"),
        (orbax_file, logging.WARNING, "orbax warning"),
        (ours_file, logging.INFO, "our info"),
      ]:
        absl_logger.handle(record(path, level, message))
    with summaries.quiet_library_logs(level=logging.ERROR):
      absl_logger.handle(record(orbax_file, logging.WARNING, "hidden orbax warning"))
      absl_logger.handle(record(orbax_file, logging.ERROR, "orbax error"))
    absl_logger.handle(record(orbax_file, logging.INFO, "orbax info after the block"))
  finally:
    absl_logger.removeHandler(collect)
  assert collect.messages == [
    "orbax warning",
    "our info",
    "orbax error",
    "orbax info after the block",
  ]


@pytest.mark.slow
def test_demo_runs_top_to_bottom(tmp_path):
  from nbclient import NotebookClient

  nb = _read()
  workdir = tmp_path / "workdir"
  env = dict(os.environ)
  env.update(
    MOBILEBERT_COLAB_DEMO="1",
    MOBILEBERT_COLAB_WORKDIR=str(workdir),
    HF_HUB_OFFLINE="1",  # the demo must not need the network
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")])),
  )
  # One CPU device, as on a laptop: conftest's 8 fake devices would only slow the demo down.
  env.pop("XLA_FLAGS", None)
  client = NotebookClient(
    nb,
    kernel_name="python3",  # jupyter_client starts it with this interpreter (sys.executable)
    timeout=CELL_TIMEOUT_S,
    startup_timeout=300,  # a busy machine starts kernels slowly
    resources={"metadata": {"path": str(tmp_path)}},
  )
  start = time.time()
  client.execute(env=env)  # raises CellExecutionError naming the cell that failed
  elapsed = time.time() - start
  with open(tmp_path / "executed.ipynb", "w", encoding="utf-8") as f:
    nbformat.write(nb, f)  # for a look when an assertion below fails

  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors, errors
  assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
  # The kernel runs this interpreter, where the package is importable: no pip, no network.
  assert "nothing to install" in _stdout(_tagged(nb, "install"))

  with open(workdir / "eval_metrics.json", encoding="utf-8") as f:
    metrics = json.load(f)
  assert {"exact_match", "f1"} <= set(metrics)
  assert metrics["f1"] >= DEMO_F1_BAR, metrics
  assert (workdir / "predictions.json").is_file()
  assert (workdir / "hf_export" / "model.safetensors").is_file()

  shown = _stdout(_tagged(nb, "predictions"))
  assert len(re.findall(r"^Q: ", shown, re.M)) >= 5, shown
  assert len(re.findall(r"predicted: (?:'[^']+'|\"[^\"]+\")", shown)) >= 5, shown
  assert re.search(r"^ +exact match$", shown, re.M), shown  # the trained model gets some right

  custom = _stdout(_tagged(nb, "custom-question"))
  answers = [a for _, a in re.findall(r"^A: (['\"])(.*)\1$", custom, re.M)]
  assert answers and all(a.strip() for a in answers), custom
  spans = re.findall(r"^ +characters (\d+)-(\d+) of the paragraph", custom, re.M)
  assert len(spans) == len(answers) and all(int(a) < int(b) for a, b in spans), custom
  # answer_question on a dev question gives the trainer's prediction for it.
  again = re.search(r"^dev question \S+: (.*)\n +predictions.json: (.*)$", custom, re.M)
  assert again and again.group(1) == again.group(2), custom

  exported = _stdout(_tagged(nb, "export"))
  if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    difference = re.search(r"max \|difference\| (\S+)", exported)
    assert difference and float(difference.group(1)) < 1e-3, exported
  print(f"notebook ran in {elapsed:.0f}s; demo dev F1 {metrics['f1']:.2f}, answers {answers}")
