"""The offline demonstration that distillation works (`python -m mobilebert_jax.distill --demo`).

On real English text read at run time from installed packages (nothing is downloaded or
committed): the Wikipedia sample that ships in the `gensim` wheel (206 pages, of which 99 are
articles with prose; `pip install mobilebert-jax[demo]`), else CPython's own
`pydoc_data.topics`. Articles are split 90/10 into training and held-out documents, then, with
the project's own commands:

1. a WordPiece vocabulary is trained on the training split;
2. a small IB-BERT teacher (LayerNorm, one wide FFN) is pretrained with MLM + NSP;
3. three students of the same small MobileBERT shape get the same update budget and data:
   `scratch` (MLM + NSP pretraining, no teacher), `pretraining_distillation` (phase 2 only:
   embeddings and heads copied from the teacher, soft-target MLM) and `full_recipe` (L stages
   of progressive layer-wise transfer, then pretraining distillation for the remaining
   updates).

`DIR/demo_results.json` holds the held-out MLM accuracy of the teacher and of each student
(keys `teacher`, `scratch`, `pretraining_distillation`, `full_recipe`), the other held-out
metrics, step counts and wall times; each run's directory is beside it.
"""

from __future__ import annotations

import bz2
import dataclasses
import html
import importlib.util
import json
import os
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

import ml_collections
from absl import logging

from mobilebert_jax import atomic_files, cli
from mobilebert_jax.data.pretraining import split_sentences
from mobilebert_jax.tokenization.training import train_wordpiece_vocab

WIKIPEDIA_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
RESULTS_FILE = "demo_results.json"
ARMS = ("scratch", "pretraining_distillation", "full_recipe")


@dataclasses.dataclass(frozen=True)
class DemoSizes:
  """The demonstration's scale (the defaults take about 15 minutes on 2 CPU cores).

  Attributes:
    max_documents: read at most this many documents (None: all).
    vocab_size: WordPiece vocabulary.
    seq_length, max_predictions: instance shape.
    dupe_factor: passes of instance creation over the training documents.
    layers, hidden, heads, embedding: shared by teacher and student (the transfer compares
      their blocks one to one).
    teacher_intra, teacher_ffn: the teacher's block inner width and FFN width.
    student_intra, student_ffn, student_ffns: the student's bottleneck, FFN width and count.
    batch_size: sequences per update, every run.
    teacher_steps: the teacher's pretraining updates.
    student_steps: every student's update budget.
    steps_per_stage: the full recipe's layer-wise steps per block.
    learning_rate: LAMB peak rate of the MLM runs (teacher, scratch, phase 2).
    transfer_learning_rate: phase 1's base rate (the active block runs at 3x).
    eval_every_steps: held-out evaluation cadence of every run (for learning curves).
  """

  max_documents: int | None = None
  vocab_size: int = 4000
  seq_length: int = 64
  max_predictions: int = 10
  dupe_factor: int = 3
  layers: int = 4
  hidden: int = 64
  heads: int = 4
  embedding: int = 32
  teacher_intra: int = 128
  teacher_ffn: int = 256
  student_intra: int = 32
  student_ffn: int = 64
  student_ffns: int = 2
  batch_size: int = 32
  teacher_steps: int = 1000
  student_steps: int = 600
  steps_per_stage: int = 40
  learning_rate: float = 1e-2
  transfer_learning_rate: float = 1.5e-3
  eval_every_steps: int = 100


DEMO_SIZES = DemoSizes()
# A few steps of every arm, for the test suite.
SMOKE_SIZES = DemoSizes(
  max_documents=20,
  vocab_size=600,
  seq_length=32,
  max_predictions=5,
  dupe_factor=1,
  layers=2,
  hidden=32,
  heads=2,
  embedding=16,
  teacher_intra=32,
  teacher_ffn=64,
  student_intra=16,
  student_ffn=32,
  batch_size=8,
  teacher_steps=4,
  student_steps=6,
  steps_per_stage=2,
  eval_every_steps=0,
)


# ----------------------------------------------------------------------------------------------
# English text from installed packages
# ----------------------------------------------------------------------------------------------


def wikipedia_file() -> str | None:
  """The Wikipedia sample inside the installed `gensim` package (not imported), if any."""
  spec = importlib.util.find_spec("gensim")
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    path = os.path.join(root, "test", "test_data", WIKIPEDIA_FILE)
    if os.path.isfile(path):
      return path
  return None


_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|.*?\|\}", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_TAG = re.compile(r"<[^>]+>")
_FILE_LINK = re.compile(
  r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]"
)
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[https?://\S+\s*([^\]]*)\]")


def wikitext_paragraphs(text: str, min_words: int = 12) -> list[str]:
  """The prose paragraphs of an article's wikitext, markup removed (a crude but safe cleaner)."""
  text = _COMMENT.sub("", _REF.sub("", html.unescape(text)))
  for _ in range(5):  # nested templates, innermost first
    text, count = _TEMPLATE.subn("", text)
    if not count:
      break
  text = _TABLE.sub("", text)
  text = _FILE_LINK.sub("", text)
  text = _LINK.sub(r"\1", text)
  text = _EXTERNAL.sub(r"\1", text)
  text = _TAG.sub("", text).replace("'''", "").replace("''", "")
  paragraphs = []
  for line in text.split("\n"):
    line = line.strip()
    if not line or line[0] in "=*#:;|!{}[" or "{{" in line or "}}" in line:
      continue
    if len(line.split()) >= min_words:
      paragraphs.append(re.sub(r"\s+", " ", line))
  return paragraphs


def wikipedia_articles(path: str) -> Iterator[list[str]]:
  """Each main-namespace article of a MediaWiki XML dump (.bz2) as its prose paragraphs."""
  with bz2.open(path, "rb") as f:
    namespace, title_ns, text = None, None, None
    for _, element in ElementTree.iterparse(f, events=("end",)):
      tag = element.tag.rsplit("}", 1)[-1]
      if tag == "ns":
        title_ns = element.text
      elif tag == "text":
        text = element.text or ""
      elif tag == "page":
        if title_ns == "0" and not text.lstrip().lower().startswith("#redirect"):
          paragraphs = wikitext_paragraphs(text)
          if paragraphs:
            yield paragraphs
        namespace, title_ns, text = namespace, None, None
        element.clear()


def pydoc_documents() -> Iterator[list[str]]:
  """CPython's help topics (`pydoc_data.topics`, always installed) as documents."""
  from pydoc_data.topics import topics

  for name in sorted(topics):
    paragraphs = [
      re.sub(r"\s+", " ", p).strip()
      for p in topics[name].split("\n\n")
      if len(p.split()) >= 12 and not p.startswith("   ")  # prose, not code blocks
    ]
    if paragraphs:
      yield paragraphs


def english_documents(max_documents: int | None = None) -> tuple[str, list[list[str]]]:
  """(source description, documents as lists of sentences) from the installed packages."""
  path = wikipedia_file()
  if path is not None:
    articles, source = wikipedia_articles(path), f"Wikipedia sample of gensim ({path})"
  else:
    articles, source = pydoc_documents(), "pydoc_data.topics (install the 'demo' extra for text)"
  documents = []
  for paragraphs in articles:
    sentences = [s for p in paragraphs for s in split_sentences(p)]
    if len(sentences) >= 2:
      documents.append(sentences)
    if max_documents is not None and len(documents) >= max_documents:
      break
  return source, documents


def write_corpus(documents: list[list[str]], directory: str) -> tuple[str, str]:
  """Every tenth document held out; BERT's text format (a sentence per line, blank lines)."""
  os.makedirs(directory, exist_ok=True)
  paths = (os.path.join(directory, "train.txt"), os.path.join(directory, "heldout.txt"))
  splits = ([d for i, d in enumerate(documents) if i % 10], documents[::10])
  for path, split in zip(paths, splits, strict=True):
    with open(path, "w", encoding="utf-8") as f:
      f.write("\n\n".join("\n".join(d) for d in split) + "\n")
  return paths


# ----------------------------------------------------------------------------------------------
# The runs
# ----------------------------------------------------------------------------------------------


def _common(
  config: ml_collections.ConfigDict, sizes: DemoSizes, vocab: str, data: tuple, seed: int
) -> None:
  config.seed = seed  # initialisation and batch order; the instances (data.seed) stay fixed
  config.eval_every_steps = sizes.eval_every_steps
  config.tokenizer.vocab_file = vocab
  config.data.update(
    train_files=data[0],
    eval_files=data[1],
    max_seq_length=sizes.seq_length,
    max_predictions_per_seq=sizes.max_predictions,
    dupe_factor=sizes.dupe_factor,
    phase2_seq_length=0,
  )
  config.model.update(
    num_hidden_layers=sizes.layers,
    hidden_size=sizes.hidden,
    num_attention_heads=sizes.heads,
    embedding_size=sizes.embedding,
    max_position_embeddings=sizes.seq_length,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  config.batch_size = sizes.batch_size
  config.eval.batch_size = 64
  config.checkpoint_every_steps = 200
  config.keep_checkpoints = 1
  config.log_every_steps = 50
  config.progress_bar = False
  config.mesh_shape = (-1, 1)


def _mlm_optimizer(config: ml_collections.ConfigDict, sizes: DemoSizes) -> None:
  config.optimizer.update(
    name="lamb",
    learning_rate=sizes.learning_rate,
    warmup_steps=None,
    warmup_proportion=0.1,
    end_lr_rate=0.0,
  )


def teacher_config(
  sizes: DemoSizes, vocab: str, data: tuple, seed: int = 0
) -> ml_collections.ConfigDict:
  config = cli.load_config_file(f"{cli.package_config('pretrain.py')}:teacher")
  _common(config, sizes, vocab, data, seed)
  config.model.update(
    intra_bottleneck_size=sizes.teacher_intra,
    intermediate_size=sizes.teacher_ffn,
    num_feedforward_networks=1,
  )
  _mlm_optimizer(config, sizes)
  config.num_train_steps = sizes.teacher_steps
  return config


def _student_model(config: ml_collections.ConfigDict, sizes: DemoSizes) -> None:
  config.model.update(
    intra_bottleneck_size=sizes.student_intra,
    intermediate_size=sizes.student_ffn,
    num_feedforward_networks=sizes.student_ffns,
  )


def scratch_config(
  sizes: DemoSizes, vocab: str, data: tuple, seed: int = 0
) -> ml_collections.ConfigDict:
  config = cli.load_config_file(f"{cli.package_config('pretrain.py')}:student")
  _common(config, sizes, vocab, data, seed)
  _student_model(config, sizes)
  _mlm_optimizer(config, sizes)
  config.num_train_steps = sizes.student_steps
  return config


def distill_config(
  sizes: DemoSizes, vocab: str, data: tuple, teacher: str, *, layer_wise: bool, seed: int = 0
) -> ml_collections.ConfigDict:
  config = cli.load_config_file(cli.package_config("distill.py"))
  _common(config, sizes, vocab, data, seed)
  _student_model(config, sizes)
  _mlm_optimizer(config, sizes)
  config.teacher = teacher
  config.transfer_optimizer.learning_rate = sizes.transfer_learning_rate
  phase1 = sizes.layers * sizes.steps_per_stage if layer_wise else 0
  config.distill.update(steps_per_stage=sizes.steps_per_stage, phase1_steps=phase1)
  config.num_train_steps = sizes.student_steps - phase1  # the same update budget
  return config


def demo_vocabulary(train_file: str, sizes: DemoSizes, data_dir: str, teacher_dir: str) -> str:
  """The demo's WordPiece vocabulary: the one its runs already use, else a newly trained one.

  The `tokenizers` WordPiece trainer breaks ties between equally frequent pieces in an order
  that changes from process to process, so two trainings on the same text can give different
  vocabularies. A resumed demo must keep the vocabulary its checkpoints were trained with, and
  students must share their teacher's token ids: a vocabulary this workdir already wrote wins,
  then the one a (shared) teacher run kept; only a fresh demo trains one.

  Returns:
    The path of `vocab.txt` in `data_dir`.
  """
  path = os.path.join(data_dir, "vocab.txt")
  if os.path.exists(path):
    return path
  kept = os.path.join(teacher_dir, "vocab.txt")
  if os.path.exists(kept):
    atomic_files.copy_file(kept, path)
    return path
  return train_wordpiece_vocab(train_file, sizes.vocab_size, output_path=data_dir).path


def run_demo(
  workdir: str,
  sizes: DemoSizes = DEMO_SIZES,
  *,
  seed: int = 0,
  teacher: str | None = None,
  teacher_seed: int | None = None,
) -> dict[str, float]:
  """Runs the whole demonstration into `workdir`; returns the held-out MLM accuracies.

  Every run resumes if its directory holds a checkpoint, so an interrupted demo continues.

  Args:
    workdir: where everything goes.
    sizes: the scale.
    seed: the students' initialisation and batch order.
    teacher: a teacher workdir of this demo's shape and vocabulary, trained there if it is not
      finished (several student seeds can share one teacher); None: `workdir/teacher`.
    teacher_seed: the teacher's initialisation and batch order (default: `seed`). A shared
      teacher needs the same one in every call: its checkpoint resumes only the data stream it
      was trained on.
  """
  # The trainers start JAX: import them only now (after the command line's distributed set-up).
  from mobilebert_jax.trainers import distillation, pretraining

  workdir = os.path.abspath(workdir)
  started = time.time()
  source, documents = english_documents(sizes.max_documents)
  data = write_corpus(documents, os.path.join(workdir, "data"))
  teacher_dir = teacher or os.path.join(workdir, "teacher")
  vocab = demo_vocabulary(data[0], sizes, os.path.join(workdir, "data"), teacher_dir)
  logging.info("demo corpus: %d documents from %s; vocabulary %s", len(documents), source, vocab)

  timings, metrics = {}, {}

  def timed(name: str, run):
    start = time.time()
    metrics[name] = run()
    timings[name] = round(time.time() - start, 1)
    logging.info("demo %s: %s (%.0f s)", name, metrics[name], timings[name])

  timed(
    "teacher",
    lambda: pretraining.train_and_evaluate(
      teacher_config(sizes, vocab, data, seed if teacher_seed is None else teacher_seed),
      teacher_dir,
    ),
  )
  timed(
    "scratch",
    lambda: pretraining.train_and_evaluate(
      scratch_config(sizes, vocab, data, seed), os.path.join(workdir, "scratch")
    ),
  )
  for arm, layer_wise in (("pretraining_distillation", False), ("full_recipe", True)):
    config = distill_config(sizes, vocab, data, teacher_dir, layer_wise=layer_wise, seed=seed)
    timed(arm, lambda c=config, a=arm: distillation.train_and_evaluate(c, os.path.join(workdir, a)))

  results = {name: metrics[name]["mlm_accuracy"] for name in ("teacher", *ARMS)}
  report = {
    **results,
    "held_out": metrics,
    "seconds": timings,
    "total_seconds": round(time.time() - started, 1),
    "corpus": {"source": source, "documents": len(documents)},
    "sizes": dataclasses.asdict(sizes),
    "full_recipe_beats_scratch": results["full_recipe"] > results["scratch"],
  }
  with open(os.path.join(workdir, RESULTS_FILE), "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  logging.info("demo results (held-out MLM accuracy): %s", results)
  return results
