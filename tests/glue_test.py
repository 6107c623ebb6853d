"""GLUE: TSV and TFDS readers, featurisation against transformers, metrics against scipy and
scikit-learn, submission files, and malformed input."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from mobilebert_jax.data import glue
from mobilebert_jax.data.text_features import PairFeaturizer, truncate_pair_lengths
from mobilebert_jax.metrics import glue as glue_metrics
from mobilebert_jax.tokenization import WordPieceTokenizer

DATA = Path(__file__).parent / "testdata" / "glue"
_DIRS = {t.name: t.glue_name for t in glue.GLUE_TASKS.values()}


def _write_vocab(path: Path, texts) -> Path:
  """Vocabulary of the texts' words, with words ending in -ing/-ed/-s split into stem + suffix
  piece (so WordPiece splitting is exercised) and words starting with "q" left out ([UNK])."""
  from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

  basic = BasicTokenizer(do_lower_case=True)
  words = set()
  for text in texts:
    words.update(basic.tokenize(text))
  vocab = set()
  for word in words:
    if word.startswith("q"):
      continue
    for suffix in ("ing", "ed", "s"):
      if len(word) > len(suffix) + 2 and word.endswith(suffix):
        vocab.update([word[: -len(suffix)], "##" + suffix])
        break
    else:
      vocab.add(word)
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  path.write_text("\n".join(specials + sorted(vocab)) + "\n", encoding="utf-8")
  return path


def _all_texts():
  for task in glue.GLUE_TASKS.values():
    for split in task.splits:
      examples = glue.load_glue_tsv(task, split, DATA / task.glue_name)
      yield from examples.text_a
      yield from examples.text_b or []


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  return _write_vocab(tmp_path_factory.mktemp("vocab") / "vocab.txt", list(_all_texts()))


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return WordPieceTokenizer.from_file(str(vocab_path), do_lower_case=True)


@pytest.fixture(scope="module")
def hf_legacy(vocab_path):
  from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

  return BertTokenizerLegacy(str(vocab_path), do_lower_case=True)


# -- registry --------------------------------------------------------------------------------------


def test_registry_covers_glue_and_names_resolve():
  assert set(glue.GLUE_TASKS) == {
    "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli", "ax",
  }  # fmt: skip
  assert glue.get_task("SST-2").name == "sst2"
  assert glue.get_task("STS-B").is_regression
  assert glue.get_task("CoLA").num_labels == 2
  assert glue.get_task("mnli").labels == ("contradiction", "entailment", "neutral")
  with pytest.raises(ValueError, match="unknown GLUE task"):
    glue.get_task("squad")
  with pytest.raises(ValueError, match="no split 'validation'"):
    glue.get_task("mnli").split("validation")


def test_tfds_label_map_is_a_permutation_onto_reference_order():
  for task in glue.GLUE_TASKS.values():
    if task.is_regression:
      assert task.tfds_labels is None
      continue
    assert sorted(task.tfds_labels) == sorted(task.labels), task.name
  # TFDS's MNLI class 0 is entailment, which is id 1 in the reference processors' order.
  mnli = glue.get_task("mnli")
  assert [mnli.labels.index(name) for name in mnli.tfds_labels] == [1, 2, 0]


# -- TSV reading -----------------------------------------------------------------------------------

# (task, split, number of examples, first text_a, first text_b, first label string/score, ids)
_EXPECTED = [
  ("cola", "train", 3, "The otter swam across the cold river.", None, "1", [0, 1, 2]),
  ("cola", "validation", 2, "The lanterns was glowing brightly.", None, "0", [0, 1]),
  ("cola", "test", 2, "A heron waited by the pond.", None, None, [0, 1]),
  ("sst2", "train", 3, "a gentle , funny portrait of two stubborn neighbours ", None, "1",
   [0, 1, 2]),
  ("sst2", "test", 2, "an oddly moving little film ", None, None, [0, 1]),
  ("mrpc", "train", 3, "The council approved the new bridge on Tuesday .",
   "On Tuesday the council approved the new bridge .", "1", [0, 1, 2]),
  ("mrpc", "test", 2, "The museum reopened after repairs .",
   "After repairs , the museum opened again .", None, [0, 1]),
  ("qqp", "validation", 1, "Is coffee bad for sleep?", "Does coffee make it hard to sleep?", "1",
   [31]),
  ("qqp", "test", 2, "How do owls see at night?", "Why can owls see in the dark?", None, [0, 1]),
  ("stsb", "train", 3, "A man is playing a flute.", "A man plays the flute.", 4.8, [0, 1, 2]),
  ("stsb", "test", 2, "Rail strike ends after talks", "Talks end rail strike", None, [0, 1]),
  ("mnli", "train", 3, "The kettle whistled on the stove.", "Something on the stove made a sound.",
   "entailment", [0, 1, 2]),
  ("mnli", "validation_matched", 2, "Most hikers reached the summit before noon.",
   "Nobody reached the summit.", "contradiction", [0, 1]),
  ("mnli", "validation_mismatched", 1, "The report was filed late.",
   "The report may have been long.", "neutral", [0]),
  ("mnli", "test_matched", 2, "The library closes at nine.", "The library is open at noon.", None,
   [0, 1]),
  ("mnli", "test_mismatched", 1, "Farmers planted barley this year.", "Barley was planted.", None,
   [0]),
  ("qnli", "train", 2, "When did the bridge open?", "The bridge opened to traffic in 1932.",
   "entailment", [0, 1]),
  ("qnli", "test", 1, "Where do penguins live?", "Most penguins live in the southern hemisphere.",
   None, [0]),
  ("rte", "train", 2, "The mayor opened the new library on Monday.", "A library was opened.",
   "entailment", [0, 1]),
  ("rte", "test", 2, "The orchard sold apples and pears.", "The orchard sold fruit.", None, [0, 1]),
  ("wnli", "train", 2, "The trophy did not fit in the case because it was too big.",
   "The trophy was too big.", "1", [0, 1]),
  ("wnli", "test", 1, "The ball broke the window because it was fragile.",
   "The window was fragile.", None, [0]),
  ("ax", "test", 3, "The cat chased every mouse.", "The cat chased a mouse.", None, [0, 1, 2]),
  ("ax", "diagnostic_full", 3, "The cat chased every mouse.", "The cat chased a mouse.",
   "entailment", [0, 1, 2]),
]  # fmt: skip


@pytest.mark.parametrize("name,split,n,text_a,text_b,label,ids", _EXPECTED)
def test_tsv_layouts(name, split, n, text_a, text_b, label, ids):
  examples = glue.load_glue_tsv(name, split, DATA / _DIRS[name])
  task = examples.task
  assert len(examples) == n
  assert examples.text_a[0] == text_a
  assert (examples.text_b is None) == (not task.is_pair)
  if text_b is not None:
    assert examples.text_b[0] == text_b
  np.testing.assert_array_equal(examples.example_ids, ids)
  if label is None:
    assert examples.labels is None
  elif task.is_regression:
    assert examples.labels.dtype == np.float32
    assert examples.labels[0] == pytest.approx(label)
  else:
    assert examples.labels.dtype == np.int32
    assert task.labels[examples.labels[0]] == label
  assert not examples.report.skipped


def test_every_split_of_every_task_has_a_fixture():
  for task in glue.GLUE_TASKS.values():
    for split in task.splits:
      assert len(glue.load_glue_tsv(task, split, DATA / task.glue_name)) > 0, (task.name, split)


def test_quotes_are_text_and_bom_is_dropped():
  # Quoting is disabled as in the reference processors: quote characters stay in the text.
  mrpc = glue.load_glue_tsv("mrpc", "train", DATA / "MRPC")
  assert mrpc.text_a[2] == 'He called the plan "a good start" .'
  sst = glue.load_glue_tsv("sst2", "train", DATA / "SST-2")
  assert sst.text_a[2] == 'sharp dialogue rescues a "familiar" premise '
  np.testing.assert_array_equal(mrpc.labels, [1, 0, 1])


def test_label_ids_follow_reference_order():
  mnli = glue.load_glue_tsv("mnli", "train", DATA / "MNLI")
  # entailment, contradiction, neutral -> ids in (contradiction, entailment, neutral).
  np.testing.assert_array_equal(mnli.labels, [1, 0, 2])
  diag = glue.load_glue_tsv("ax", "diagnostic_full", DATA / "AX")
  np.testing.assert_array_equal(diag.labels, [1, 0, 2])
  stsb = glue.load_glue_tsv("stsb", "train", DATA / "STS-B")
  np.testing.assert_allclose(stsb.labels, [4.8, 0.0, 3.6], rtol=1e-6)


def test_qqp_drops_broken_rows_and_keeps_empty_question(caplog):
  examples = glue.load_glue_tsv("qqp", "train", DATA / "QQP")
  # Rows 11, 12 and 14 survive; the row broken over lines 4-5 is dropped in both halves.
  np.testing.assert_array_equal(examples.example_ids, [11, 12, 14])
  assert [line for line, _ in examples.report.skipped] == [4, 5]
  assert "expected 6 tab-separated columns, found 4" in examples.report.skipped[0][1]
  assert examples.report.empty_kept == [6]
  assert examples.text_b[2] == ""
  assert examples.report.rows == 5
  assert "2 skipped" in examples.report.summary()
  # The same pair is dropped on request, or rejected.
  skipped = glue.load_glue_tsv("qqp", "train", DATA / "QQP", empty_text="skip")
  np.testing.assert_array_equal(skipped.example_ids, [11, 12])
  with pytest.raises(glue.GlueFormatError, match=r"train\.tsv:6: empty question2"):
    glue.load_glue_tsv("qqp", "train", DATA / "QQP", empty_text="error")


def test_ax_test_falls_back_to_diagnostic_tsv(tmp_path):
  (tmp_path / "diagnostic.tsv").write_bytes((DATA / "AX" / "AX.tsv").read_bytes())
  assert len(glue.load_glue_tsv("ax", "test", tmp_path)) == 3
  with pytest.raises(FileNotFoundError, match=r"AX\.tsv"):
    glue.load_glue_tsv("ax", "test", tmp_path / "missing")


# -- malformed TSV ---------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "data.tsv") -> Path:
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


_RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(
  "task,split,text,pattern",
  [
    ("rte", "train", _RTE_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n",
     r"data\.tsv:3: expected 4 tab-separated columns, found 3"),
    ("rte", "train", _RTE_HEADER + "0\ta\tb\tentailed\n",
     r"data\.tsv:2: unknown RTE label 'entailed'"),
    ("rte", "train", "idx\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n",
     r"data\.tsv:1: header .* lacks column\(s\) \['index'\]"),
    ("rte", "train", _RTE_HEADER + "zero\ta\tb\tentailment\n", r"index 'zero' is not an integer"),
    ("rte", "train", _RTE_HEADER + "0\ta\t \tentailment\n", r"data\.tsv:2: empty sentence2"),
    ("rte", "train", _RTE_HEADER + "0\ta\tb\tentailment\n\n1\ta\tb\tentailment\n",
     r"data\.tsv:3: expected 4 tab-separated columns, found 1"),
    ("rte", "train", _RTE_HEADER, r"data\.tsv: no examples"),
    ("rte", "train", "", r"data\.tsv: empty file"),
    ("stsb", "train",
     "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\t2012\t1\tnone\tnone\ta\tb\tfour\n",
     r"data\.tsv:2: STS-B score 'four' is not a number"),
    ("stsb", "train",
     "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\t2012\t1\tnone\tnone\ta\tb\t5.5\n", r"data\.tsv:2: STS-B score '5\.5' is outside"),
    ("stsb", "train",
     "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
     "0\tg\tf\t2012\t1\tnone\tnone\ta\tb\tnan\n", r"STS-B score 'nan' is outside"),
    # A CoLA train file given a header: the header's label column is not a label.
    ("cola", "train", "source\tlabel\tmark\tsentence\nx\t1\t\tA cat.\n",
     r"data\.tsv:1: unknown CoLA label 'label'"),
    ("cola", "train", "x\t1\tA cat.\n", r"data\.tsv:1: expected 4 .* found 3 \(this file has no"),
    ("sst2", "train", "sentence\tlabel\n\t1\n", r"data\.tsv:2: empty sentence; pass empty_text"),
    # QQP's broken rows are only dropped where labels exist; a test file must be complete.
    ("qqp", "test", "id\tquestion1\tquestion2\n0\tWhy?\n", r"data\.tsv:2: expected 3 tab-sep"),
    ("qqp", "train", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\ta\tb\t2\n",
     r"data\.tsv:2: unknown QQP label '2'"),
  ],
)  # fmt: skip
def test_malformed_tsv_names_file_and_line(tmp_path, task, split, text, pattern):
  with pytest.raises(glue.GlueFormatError, match=pattern):
    glue.read_glue_tsv(task, split, _write(tmp_path, text))


def test_invalid_utf8_names_the_line(tmp_path):
  path = _write(tmp_path, "")
  path.write_bytes(_RTE_HEADER.encode() + b"0\ta\tb\tentailment\n1\ta\xff\tb\tentailment\n")
  with pytest.raises(glue.GlueFormatError, match=r"data\.tsv:3: not valid UTF-8"):
    glue.read_glue_tsv("rte", "train", path)


def test_trailing_blank_lines_and_crlf_are_accepted(tmp_path):
  path = _write(tmp_path, "")
  path.write_bytes(
    _RTE_HEADER.replace("\n", "\r\n").encode() + b'7\ta "b\tc\tnot_entailment\r\n\r\n\n'
  )
  examples = glue.read_glue_tsv("rte", "train", path)
  assert examples.text_a == ['a "b'] and examples.text_b == ["c"]
  np.testing.assert_array_equal(examples.labels, [1])
  np.testing.assert_array_equal(examples.example_ids, [7])


def test_bad_empty_text_policy():
  with pytest.raises(ValueError, match="empty_text must be"):
    glue.load_glue_tsv("rte", "train", DATA / "RTE", empty_text="drop")


# -- featurisation ---------------------------------------------------------------------------------


def _pop_loop(len_a, len_b, budget):
  """google-research/bert's `_truncate_seq_pair`, verbatim in spirit: pop from the longer."""
  while len_a + len_b > budget:
    if len_a > len_b:
      len_a -= 1
    else:
      len_b -= 1
  return len_a, len_b


def test_truncate_pair_lengths_matches_bert_pop_loop():
  for len_a, len_b, budget in itertools.product(range(12), range(12), range(16)):
    assert truncate_pair_lengths(len_a, len_b, budget) == _pop_loop(len_a, len_b, budget)


@pytest.mark.parametrize("max_length", [128, 16, 11, 8])
@pytest.mark.parametrize(
  "name,split",
  [("mrpc", "train"), ("mnli", "train"), ("cola", "train"), ("sst2", "test"), ("stsb", "train"),
   ("qqp", "train")],
)  # fmt: skip
def test_features_match_transformers(tokenizer, hf_legacy, name, split, max_length):
  examples = glue.load_glue_tsv(name, split, DATA / _DIRS[name])
  features = glue.featurize_glue(examples, tokenizer, max_seq_length=max_length)
  arrays = features.arrays
  n = len(examples)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert arrays[key].shape == (n, max_length) and arrays[key].dtype == np.int32
  for i in range(n):
    pair = () if examples.text_b is None else (examples.text_b[i],)
    expected = hf_legacy(
      examples.text_a[i],
      *pair,
      truncation="longest_first",
      max_length=max_length,
      padding="max_length",
      return_token_type_ids=True,
      return_attention_mask=True,
    )
    np.testing.assert_array_equal(arrays["input_ids"][i], expected["input_ids"])
    np.testing.assert_array_equal(arrays["token_type_ids"][i], expected["token_type_ids"])
    np.testing.assert_array_equal(arrays["attention_mask"][i], expected["attention_mask"])
  if examples.labels is None:
    assert "labels" not in arrays
  else:
    np.testing.assert_array_equal(arrays["labels"], examples.labels)
  np.testing.assert_array_equal(features.example_ids, examples.example_ids)
  full_lengths = [
    len(hf_legacy(a, *(() if examples.text_b is None else (examples.text_b[i],)))["input_ids"])
    for i, a in enumerate(examples.text_a)
  ]
  assert features.report.num_truncated == sum(length > max_length for length in full_lengths)
  assert features.report.longest == max(full_lengths)


def test_pair_layout_by_hand(tokenizer):
  text_a, text_b = "the otter swam across the cold river", "a heron waited"
  assert tokenizer.tokenize(text_a) == [
    "the", "otter", "swam", "acros", "##s", "the", "cold", "river",
  ]  # fmt: skip
  assert tokenizer.tokenize(text_b) == ["a", "heron", "wait", "##ed"]
  # 8 + 4 tokens, budget 10 - 3 = 7: four pops from the longer first segment (8 > 4 ... 5 > 4),
  # then a tie at 4 + 4, which costs the second segment its last piece.
  input_ids, types, full = PairFeaturizer(tokenizer, max_seq_length=10).encode(text_a, text_b)
  expected = ["[CLS]", "the", "otter", "swam", "acros", "[SEP]", "a", "heron", "wait", "[SEP]"]
  assert input_ids == tokenizer.convert_tokens_to_ids(expected)
  assert types == [0] * 6 + [1] * 4
  assert full == 8 + 4 + 3


def test_tie_truncation_follows_bert_not_rust_tokenizers(vocab_path, tokenizer, hf_legacy):
  """Equal segments with an odd budget: BERT gives the spare token to the first segment; the Rust
  tokenizers behind transformers' fast BertTokenizer give it to the second. We follow BERT."""
  from transformers import BertTokenizer

  text = "the otter swam across the cold river"
  assert len(tokenizer.tokenize(text)) > 3
  max_length = 8  # 5 tokens for the two segments: BERT keeps 3 + 2, the Rust tokenizers 2 + 3.
  ours = PairFeaturizer(tokenizer, max_length).encode(text, text)[1]
  kwargs = dict(truncation="longest_first", max_length=max_length, return_token_type_ids=True)
  legacy = hf_legacy(text, text, **kwargs)
  fast = BertTokenizer(str(vocab_path), do_lower_case=True)(text, text, **kwargs)
  assert ours == legacy["token_type_ids"] == [0] * 5 + [1] * 3
  assert fast["token_type_ids"] == [0] * 4 + [1] * 4


# -- TFDS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds():
  return pytest.importorskip("tensorflow_datasets")


def test_tfds_mnli_labels_are_mapped_by_name(tfds, tokenizer):
  with tfds.testing.mock_data(num_examples=12):
    raw = list(tfds.as_numpy(tfds.load("glue/mnli", split="validation_mismatched")))
    examples = glue.load_glue_tfds("mnli", "validation_mismatched")
  tfds_names = ("entailment", "neutral", "contradiction")
  mnli = glue.get_task("mnli")
  assert len(examples) == len(raw) == 12
  for i, record in enumerate(raw):
    assert examples.text_a[i] == record["premise"].decode()
    assert examples.text_b[i] == record["hypothesis"].decode()
    assert mnli.labels[examples.labels[i]] == tfds_names[record["label"]]
    assert examples.example_ids[i] == record["idx"]
  features = glue.featurize_glue(examples, tokenizer, max_seq_length=32)
  assert features.arrays["input_ids"].shape == (12, 32)


def test_tfds_stsb_scores_and_unlabelled_test(tfds):
  with tfds.testing.mock_data(num_examples=5):
    stsb = glue.load_glue_tfds("stsb", "train")
    cola_test = glue.load_glue_tfds("cola", "test")
    sst2 = glue.load_glue_tfds("sst2", "validation")
  assert stsb.labels.dtype == np.float32 and stsb.labels.shape == (5,)
  assert stsb.text_b is not None
  assert cola_test.labels is None and cola_test.text_b is None and len(cola_test) == 5
  assert set(sst2.labels.tolist()) <= {0, 1}
  with pytest.raises(ValueError, match="TFDS has no AX 'diagnostic_full'"):
    glue.load_glue_tfds("ax", "diagnostic_full")


# -- metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_scipy_and_sklearn(seed):
  rng = np.random.default_rng(seed)
  n = 200
  labels2, preds2 = rng.integers(0, 2, n), rng.integers(0, 2, n)
  labels3, preds3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
  gold, pred = rng.uniform(0, 5, n), rng.uniform(0, 5, n) + rng.uniform(0, 5, n)
  tied_gold, tied_pred = rng.integers(0, 6, n) / 1.0, rng.integers(0, 4, n) / 1.0
  close = pytest.approx
  assert glue_metrics.accuracy(labels3, preds3) == close(skm.accuracy_score(labels3, preds3))
  assert glue_metrics.f1_binary(labels2, preds2) == close(skm.f1_score(labels2, preds2))
  assert glue_metrics.matthews_corrcoef(labels2, preds2) == close(
    skm.matthews_corrcoef(labels2, preds2)
  )
  assert glue_metrics.matthews_corrcoef(labels3, preds3) == close(
    skm.matthews_corrcoef(labels3, preds3)
  )
  assert glue_metrics.pearson(gold, pred) == close(stats.pearsonr(gold, pred)[0])
  assert glue_metrics.spearman(gold, pred) == close(stats.spearmanr(gold, pred)[0])
  assert glue_metrics.spearman(tied_gold, tied_pred) == close(
    stats.spearmanr(tied_gold, tied_pred)[0]
  )


def test_metric_edge_cases_match_sklearn():
  labels = np.array([0, 1, 1, 0, 1])
  constant = np.zeros(5, dtype=int)
  assert glue_metrics.matthews_corrcoef(labels, constant) == skm.matthews_corrcoef(labels, constant)
  assert glue_metrics.f1_binary(constant, constant) == 0.0
  assert glue_metrics.f1_binary(labels, constant) == skm.f1_score(labels, constant)
  assert math.isnan(glue_metrics.pearson(np.ones(4), np.arange(4.0)))
  # A correlated but not perfectly correlated MCC on 3 classes, by hand: confusion [[2,0,0],
  # [0,1,1],[0,0,1]], n=5, trace 4, t=(2,2,1), p=(2,1,2): cov = 4*5 - (4+2+2) = 12,
  # var_t = 25 - 9 = 16, var_p = 25 - 9 = 16 -> 12/16.
  gold, pred = np.array([0, 0, 1, 1, 2]), np.array([0, 0, 1, 2, 2])
  assert glue_metrics.matthews_corrcoef(gold, pred) == pytest.approx(0.75)
  with pytest.raises(ValueError, match="equal length"):
    glue_metrics.accuracy(np.zeros(3), np.zeros(4))
  with pytest.raises(ValueError, match="empty"):
    glue_metrics.accuracy(np.zeros(0), np.zeros(0))


def test_task_metrics_and_scores():
  rng = np.random.default_rng(7)
  labels, logits = rng.integers(0, 2, 50), rng.normal(size=(50, 2))
  preds = logits.argmax(-1)
  mrpc = glue_metrics.glue_metrics("mrpc", labels, logits)
  assert set(mrpc) == {"accuracy", "f1", "score"}
  assert mrpc["f1"] == pytest.approx(skm.f1_score(labels, preds))
  assert mrpc["score"] == pytest.approx((mrpc["accuracy"] + mrpc["f1"]) / 2)
  assert set(glue_metrics.glue_metrics("qqp", labels, preds)) == {"accuracy", "f1", "score"}
  cola = glue_metrics.glue_metrics("cola", labels, preds)
  assert cola["score"] == cola["matthews_corrcoef"]
  gold, scores = rng.uniform(0, 5, 30), rng.uniform(0, 5, (30, 1))
  stsb = glue_metrics.glue_metrics("stsb", gold, scores)
  assert stsb["pearson"] == pytest.approx(stats.pearsonr(gold, scores[:, 0])[0])
  assert stsb["score"] == pytest.approx((stsb["pearson"] + stsb["spearman"]) / 2)
  ax = glue_metrics.glue_metrics("ax", rng.integers(0, 3, 40), rng.normal(size=(40, 3)))
  assert set(ax) == {"matthews_corrcoef", "score"}
  mnli = glue_metrics.mnli_metrics(
    (np.array([0, 1, 2]), np.array([0, 1, 1])), (np.array([2, 2]), np.array([2, 2]))
  )
  assert mnli == {"accuracy_matched": pytest.approx(2 / 3), "accuracy_mismatched": 1.0}
  for task in glue.GLUE_TASKS.values():
    assert task.metrics == glue_metrics.TASK_METRICS[task.name]


# -- submission ------------------------------------------------------------------------------------


_SUBMISSIONS = [
  ("cola", "test", "CoLA.tsv"),
  ("sst2", "test", "SST-2.tsv"),
  ("mrpc", "test", "MRPC.tsv"),
  ("stsb", "test", "STS-B.tsv"),
  ("qqp", "test", "QQP.tsv"),
  ("mnli", "test_matched", "MNLI-m.tsv"),
  ("mnli", "test_mismatched", "MNLI-mm.tsv"),
  ("qnli", "test", "QNLI.tsv"),
  ("rte", "test", "RTE.tsv"),
  ("wnli", "test", "WNLI.tsv"),
  ("ax", "test", "AX.tsv"),
]


def test_submission_covers_every_glue_file(tmp_path):
  written = set()
  for name, split, filename in _SUBMISSIONS:
    task = glue.get_task(name)
    examples = glue.load_glue_tsv(task, split, DATA / task.glue_name)
    n = len(examples)
    if task.is_regression:
      predictions = np.linspace(0.0, 5.0, n)
    else:
      predictions = np.arange(n) % task.num_labels
    path = glue.write_glue_submission(tmp_path, task, split, examples.example_ids, predictions)
    assert path.name == filename == glue.submission_filename(task, split)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "index\tprediction"
    rows = [line.split("\t") for line in lines[1:]]
    assert [int(i) for i, _ in rows] == examples.example_ids.tolist()
    if task.is_regression:
      assert [p for _, p in rows] == [f"{x:.3f}" for x in predictions]
    else:
      assert [p for _, p in rows] == [task.labels[i] for i in predictions]
    written.add(path.name)
  assert written == {filename for _, _, filename in _SUBMISSIONS}


def test_submission_label_strings_and_order(tmp_path):
  # Logits are arg-maxed; rows come out in index order; NLI labels are words, binary are digits.
  ids = np.array([2, 0, 1])
  logits = np.array([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
  path = glue.write_glue_submission(tmp_path, "mnli", "test_matched", ids, logits)
  assert path.read_text().splitlines() == [
    "index\tprediction", "0\tcontradiction", "1\tentailment", "2\tneutral",
  ]  # fmt: skip
  path = glue.write_glue_submission(tmp_path, "rte", "test", [0, 1], [1, 0])
  assert path.read_text().splitlines()[1:] == ["0\tnot_entailment", "1\tentailment"]
  path = glue.write_glue_submission(tmp_path, "wnli", "test", [0, 1], [1, 0])
  assert path.read_text().splitlines()[1:] == ["0\t1", "1\t0"]
  path = glue.write_glue_submission(tmp_path, "stsb", "test", [0, 1], [[3.14159], [0.0]])
  assert path.read_text().splitlines()[1:] == ["0\t3.142", "1\t0.000"]


def test_submission_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match="is not submitted to GLUE"):
    glue.write_glue_submission(tmp_path, "rte", "validation", [0], [0])
  with pytest.raises(ValueError, match="2 example ids for 3 predictions"):
    glue.write_glue_submission(tmp_path, "rte", "test", [0, 1], [0, 1, 0])
  with pytest.raises(ValueError, match="unique"):
    glue.write_glue_submission(tmp_path, "rte", "test", [0, 0], [0, 1])
  with pytest.raises(ValueError, match=r"class ids must lie in \[0, 2\)"):
    glue.write_glue_submission(tmp_path, "rte", "test", [0, 1], [0, 2])
  with pytest.raises(ValueError, match="class ids"):
    glue.write_glue_submission(tmp_path, "rte", "test", [0, 1], [0.5, 1.0])
  with pytest.raises(ValueError, match="finite"):
    glue.write_glue_submission(tmp_path, "stsb", "test", [0, 1], [1.0, np.nan])
