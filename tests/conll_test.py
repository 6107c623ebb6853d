"""CoNLL-2003 NER: readers, IOB1/IOB2 handling, first-sub-word featurisation against transformers,
decoding, and the conlleval metric on hand-computed cases."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from mobilebert_jax.data import conll
from mobilebert_jax.metrics.conll import (
  conlleval,
  extract_chunks,
  format_conlleval,
  split_tag,
)
from mobilebert_jax.tokenization import WordPieceTokenizer

DATA = Path(__file__).parent / "testdata" / "conll"


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  """The fixture words, lower-cased; words longer than five letters are split into a 4-letter
  stem and `##` pieces of 2 letters so words span several pieces; "2000" is left out ([UNK])."""
  words = {w.lower() for s in conll.read_conll2003(DATA / "eng_iob2.txt").words for w in s}
  vocab = set()
  for word in words - {"2000"}:
    if len(word) > 5:
      vocab.add(word[:4])
      vocab.update("##" + word[i : i + 2] for i in range(4, len(word), 2))
    else:
      vocab.add(word)
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  path.write_text("\n".join(specials + sorted(vocab)) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return WordPieceTokenizer.from_file(str(vocab_path), do_lower_case=True)


# -- conlleval: hand-computed cases ---------------------------------------------------------------


def _counts(result):
  return result.overall.num_correct, result.overall.num_gold, result.overall.num_predicted


def test_split_tag_follows_conlleval():
  assert split_tag("B-PER") == ("B", "PER")
  assert split_tag("O") == ("O", "")
  assert split_tag("I-MISC-X") == ("I", "MISC-X")  # the type is everything after the 1st hyphen
  assert split_tag("E-0") == ("E", "")  # Perl's truthiness drops a type spelled "0"


def test_type_and_boundary_errors():
  # Gold chunks: PER[0,2) LOC[3] ORG[5,7). Predicted: PER[0,2) ORG[3] ORG[5].
  # Only PER matches: ORG[3] has the right span but the wrong type, ORG[5] the right type but
  # ends too early. Per type: PER 1/1/1, LOC gold 1 predicted 0, ORG gold 1 predicted 2.
  gold = [["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG", "O"]]
  result = conlleval(gold, pred)
  assert _counts(result) == (1, 3, 3)
  assert result.precision == pytest.approx(1 / 3) and result.recall == pytest.approx(1 / 3)
  assert result.f1 == pytest.approx(1 / 3)
  per = result.per_type
  assert (per["PER"].precision, per["PER"].recall, per["PER"].f1) == (1.0, 1.0, 1.0)
  assert (per["LOC"].num_gold, per["LOC"].num_predicted, per["LOC"].f1) == (1, 0, 0.0)
  assert (per["ORG"].num_correct, per["ORG"].num_gold, per["ORG"].num_predicted) == (0, 1, 2)
  assert list(per) == ["LOC", "ORG", "PER"]
  # Tags equal at positions 0, 1, 2, 4, 5.
  assert result.accuracy == pytest.approx(5 / 7)


def test_iob1_chunks_and_i_after_o_starts_a_chunk():
  # IOB1: I-PER I-PER is one chunk, B-PER starts a second PER chunk right after it, the I-LOC
  # after O starts a chunk. Predicting the same spans in IOB2 is entirely correct...
  gold = [["I-PER", "I-PER", "B-PER", "O", "I-LOC"]]
  pred = [["B-PER", "I-PER", "B-PER", "O", "B-LOC"]]
  result = conlleval(gold, pred)
  assert _counts(result) == (3, 3, 3) and result.f1 == 1.0
  assert extract_chunks(gold[0]) == [("PER", 0, 2), ("PER", 2, 3), ("LOC", 4, 5)]
  # ...but token accuracy compares raw tags: positions 0 (I-PER/B-PER) and 4 (I-LOC/B-LOC) differ.
  assert result.accuracy == pytest.approx(3 / 5)


def test_i_tag_after_another_type_starts_a_chunk():
  # Gold PER[0] LOC[1,3); predicted PER[0,2) LOC[2]: no span matches.
  result = conlleval([["B-PER", "I-LOC", "I-LOC"]], [["B-PER", "I-PER", "I-LOC"]])
  assert _counts(result) == (0, 2, 2)
  assert result.f1 == 0.0


def test_partial_overlap_gets_no_credit():
  # The predicted ORG runs one word past the gold one.
  result = conlleval([["B-ORG", "I-ORG", "O"]], [["B-ORG", "I-ORG", "I-ORG"]])
  assert _counts(result) == (0, 1, 1)
  # Predicting nothing: precision is 0 (no predictions), recall 0.
  result = conlleval([["B-ORG", "I-ORG", "O"]], [["O", "O", "O"]])
  assert _counts(result) == (0, 1, 0) and result.precision == 0.0 and result.f1 == 0.0


def test_sentence_boundaries_close_chunks():
  # B-PER ending sentence 1 and I-PER opening sentence 2 are two chunks, not one.
  gold = [["O", "B-PER"], ["I-PER", "O"]]
  assert _counts(conlleval(gold, gold)) == (2, 2, 2)
  assert _counts(conlleval(gold, [["O", "B-PER"], ["B-PER", "O"]])) == (2, 2, 2)
  # Joined into one sentence they form a single chunk.
  assert _counts(conlleval([["O", "B-PER", "I-PER", "O"]], [["O", "B-PER", "I-PER", "O"]])) == (
    1,
    1,
    1,
  )


def test_ioe_and_bracket_tags():
  # IOE: E ends a chunk, and E after E starts a new one: NP[0,2) NP[2].
  assert extract_chunks(["I-NP", "E-NP", "E-NP", "O"]) == [("NP", 0, 2), ("NP", 2, 3)]
  # IOE2 with a B- tag: "E-X B-X" continues the chunk (neither rule fires), as in conlleval.
  assert extract_chunks(["I-NP", "E-NP", "B-NP", "O"]) == [("NP", 0, 3)]
  # Bracket tags are one-word chunks.
  assert extract_chunks(["[-NP", "]-NP", "O"]) == [("NP", 0, 1), ("NP", 1, 2)]
  result = conlleval([["I-NP", "E-NP", "E-NP", "O"]], [["I-NP", "I-NP", "E-NP", "O"]])
  # Gold NP[0,2) NP[2]; predicted NP[0,3): nothing matches.
  assert _counts(result) == (0, 2, 1)


def test_small_corpus_by_hand():
  gold = [
    ["B-PER", "I-PER", "O", "O", "B-LOC", "O"],  # Anna Berg flew to Paris .
    ["O", "B-ORG", "O", "O", "B-LOC", "I-LOC"],  # The UN met in New York
    ["B-ORG", "O", "B-PER", "I-PER"],  # Reuters quoted Olaf Scholz
  ]
  pred = [
    ["B-PER", "I-PER", "O", "O", "B-LOC", "O"],  # both chunks right
    ["O", "B-ORG", "O", "O", "B-LOC", "O"],  # ORG right, LOC[4,5) vs gold LOC[4,6) wrong
    ["B-PER", "O", "B-PER", "O"],  # PER[0] has ORG's span (wrong type), PER[2] too short
  ]
  # Gold: PER 2, LOC 2, ORG 2 = 6. Predicted: PER 3, LOC 2, ORG 1 = 6. Correct: PER 1 (S1),
  # LOC 1 (S1), ORG 1 (S2) = 3.
  #   overall P = R = F = 3/6
  #   PER: P 1/3, R 1/2, F = 2(1/3)(1/2)/(5/6) = 0.4
  #   LOC: P = R = F = 1/2;  ORG: P 1/1, R 1/2, F = 2/3
  #   tokens 16, equal tags 6 + 5 + 2 = 13 -> accuracy 0.8125
  result = conlleval(gold, pred)
  assert _counts(result) == (3, 6, 6)
  assert (result.precision, result.recall, result.f1) == (0.5, 0.5, 0.5)
  per = result.per_type
  assert per["PER"].precision == pytest.approx(1 / 3) and per["PER"].recall == 0.5
  assert per["PER"].f1 == pytest.approx(0.4)
  assert (per["LOC"].precision, per["LOC"].recall, per["LOC"].f1) == (0.5, 0.5, 0.5)
  assert (per["ORG"].precision, per["ORG"].recall) == (1.0, 0.5)
  assert per["ORG"].f1 == pytest.approx(2 / 3)
  assert (result.num_tokens, result.num_correct_tags, result.accuracy) == (16, 13, 0.8125)
  assert format_conlleval(result) == (
    "processed 16 tokens with 6 phrases; found: 6 phrases; correct: 3.\n"
    "accuracy:  81.25%; precision:  50.00%; recall:  50.00%; FB1:  50.00\n"
    "              LOC: precision:  50.00%; recall:  50.00%; FB1:  50.00  2\n"
    "              ORG: precision: 100.00%; recall:  50.00%; FB1:  66.67  1\n"
    "              PER: precision:  33.33%; recall:  50.00%; FB1:  40.00  3\n"
  )


def test_counts_equal_exact_span_and_type_matches():
  """On random tag sequences (IOB and IOE prefixes, two types), conlleval's streaming counts
  equal a direct count: gold chunks, predicted chunks, and their exact (type, span) overlap."""
  rng = np.random.default_rng(0)
  tags = ["O", "B-A", "I-A", "E-A", "B-B", "I-B", "E-B"]
  for _ in range(300):
    lengths = rng.integers(1, 8, size=rng.integers(1, 4))
    gold = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
    pred = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
    gold_chunks = {(s, c) for s, sent in enumerate(gold) for c in extract_chunks(sent)}
    pred_chunks = {(s, c) for s, sent in enumerate(pred) for c in extract_chunks(sent)}
    assert _counts(conlleval(gold, pred)) == (
      len(gold_chunks & pred_chunks),
      len(gold_chunks),
      len(pred_chunks),
    )


def test_conlleval_rejects_misaligned_input():
  with pytest.raises(ValueError, match="2 gold sentences but 1 predicted"):
    conlleval([["O"], ["O"]], [["O"]])
  with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
    conlleval([["O", "O"]], [["O"]])


# -- IOB schemes -----------------------------------------------------------------------------------


def test_iob1_to_iob2_preserves_every_chunk():
  tags = ["O", "B-A", "I-A", "B-B", "I-B"]
  for length in range(1, 6):
    for sequence in itertools.product(tags, repeat=length):
      converted, changed = conll.iob1_to_iob2(sequence)
      assert extract_chunks(converted) == extract_chunks(sequence)
      assert conll.iob1_to_iob2(converted) == (converted, 0)  # IOB2 is a fixed point
      assert changed == sum(a != b for a, b in zip(sequence, converted, strict=True))
      assert conll.detect_tag_scheme([converted]) in ("iob2", "none")


def test_detect_tag_scheme():
  assert conll.detect_tag_scheme([["I-PER", "I-PER", "O"]]) == "iob1"
  assert conll.detect_tag_scheme([["I-PER", "B-PER", "O"]]) == "iob1"
  assert conll.detect_tag_scheme([["B-PER", "I-PER", "O"]]) == "iob2"
  assert conll.detect_tag_scheme([["B-PER"], ["I-LOC"]]) == "mixed"
  assert conll.detect_tag_scheme([["O", "O"]]) == "none"


# -- reading ---------------------------------------------------------------------------------------


def test_read_iob1_converts_to_the_iob2_file():
  iob1 = conll.read_conll2003(DATA / "eng_iob1.txt")
  iob2 = conll.read_conll2003(DATA / "eng_iob2.txt")
  assert iob1.tags == iob2.tags
  assert iob1.words == iob2.words
  assert iob1.report.source_scheme == "iob1" and iob2.report.source_scheme == "iob2"
  # Lena, Harbour, Kiel, Dutch, Euro, Vienna start with I- in IOB1; German keeps its B-.
  assert iob1.report.num_converted == 6 and iob2.report.num_converted == 0
  for data in (iob1, iob2):
    assert (data.report.num_documents, data.report.num_sentences, data.report.num_words) == (
      2,
      3,
      24,
    )
  first = iob2.sentences[0]
  assert first.words[:2] == ("Lena", "Brandt")
  assert first.pos[:3] == ("NNP", "NNP", "VBD")
  assert first.ner == ("B-PER", "I-PER", "O", "O", "B-ORG", "I-ORG", "O", "B-LOC", "O")
  assert (first.document, first.line) == (0, 3)
  assert (iob2.sentences[2].document, iob2.sentences[2].line) == (1, 23)
  assert iob2.sentences[1].ner[3:5] == ("B-MISC", "B-MISC")  # adjacent MISC chunks
  kept = conll.read_conll2003(DATA / "eng_iob1.txt", tag_scheme="keep")
  assert kept.sentences[0].ner[0] == "I-PER" and kept.report.num_converted == 0
  # Scores do not depend on the scheme the gold tags are kept in.
  assert conlleval(kept.tags, iob2.tags).f1 == 1.0


@pytest.mark.parametrize(
  "text,pattern",
  [
    ("Lena NNP I-NP B-PER\nBrandt NNP B-PER\n",
     r"bad\.txt:2: expected 4 space-separated columns \(word POS chunk NER\), found 3"),
    ("Lena NNP I-NP B-PERSON\n", r"bad\.txt:1: unknown NER tag 'B-PERSON'"),
    ("Lena NNP B-NP S-PER\n", r"bad\.txt:1: unknown NER tag 'S-PER'"),
    ("-DOCSTART- -X- -X- O\n\n", r"bad\.txt: no sentences"),
  ],
)  # fmt: skip
def test_malformed_conll_names_file_and_line(tmp_path, text, pattern):
  path = tmp_path / "bad.txt"
  path.write_text(text, encoding="utf-8")
  with pytest.raises(conll.ConllFormatError, match=pattern):
    conll.read_conll2003(path)


def test_invalid_utf8_names_the_line(tmp_path):
  path = tmp_path / "bad.txt"
  path.write_bytes(b"Kiel NNP B-NP B-LOC\n\nK\xf6ln NNP B-NP B-LOC\n")
  with pytest.raises(conll.ConllFormatError, match=r"bad\.txt:3: not valid utf-8"):
    conll.read_conll2003(path)
  assert conll.read_conll2003(path, encoding="latin-1").words[1] == ("Köln",)


def test_tabs_crlf_and_missing_final_blank_line(tmp_path):
  path = tmp_path / "tabs.txt"
  path.write_bytes(
    b"-DOCSTART- O\r\n\r\nKiel\tNNP\tB-NP\tB-LOC\r\nport NN I-NP O\r\n\r\n\r\nOslo NNP B-NP I-LOC"
  )
  data = conll.read_conll2003(path)
  assert data.words == [("Kiel", "port"), ("Oslo",)]
  assert data.tags == [("B-LOC", "O"), ("B-LOC",)]
  assert data.report.source_scheme == "mixed" and data.report.num_documents == 1
  assert data.sentences[0].line == 3


def test_unknown_tag_scheme_argument():
  with pytest.raises(ValueError, match="tag_scheme must be"):
    conll.read_conll2003(DATA / "eng_iob2.txt", tag_scheme="bio")


# -- featurisation ---------------------------------------------------------------------------------


def test_first_subword_labels_match_transformers_word_ids(vocab_path, tokenizer):
  """The labelling of transformers' token-classification example: the first piece of each word
  (word_ids changes) gets the word's label, every other position -100."""
  from transformers import BertTokenizer

  data = conll.read_conll2003(DATA / "eng_iob2.txt")
  features = conll.featurize_ner(data.words, data.tags, tokenizer, max_seq_length=32)
  hf = BertTokenizer(str(vocab_path), do_lower_case=True)
  label_id = {name: i for i, name in enumerate(conll.NER_LABELS)}
  assert features.arrays["input_ids"].shape == (3, 32)
  for s, (words, tags) in enumerate(zip(data.words, data.tags, strict=True)):
    encoding = hf(list(words), is_split_into_words=True, padding="max_length", max_length=32)
    word_ids = encoding.word_ids()
    expected_labels, previous = [], None
    for word_id in word_ids:
      first = word_id is not None and word_id != previous
      expected_labels.append(label_id[tags[word_id]] if first else -100)
      previous = word_id
    np.testing.assert_array_equal(features.arrays["input_ids"][s], encoding["input_ids"])
    np.testing.assert_array_equal(features.arrays["attention_mask"][s], encoding["attention_mask"])
    np.testing.assert_array_equal(features.arrays["labels"][s], expected_labels)
  assert not features.arrays["token_type_ids"].any()
  assert features.report.num_split_sentences == 0 and features.report.num_unk_words == 0


def test_layout_by_hand(tokenizer):
  words, tags = [["Lena", "visited", "Vienna"]], [["B-PER", "O", "B-LOC"]]
  assert tokenizer.tokenize("visited") == ["visi", "##te", "##d"]
  assert tokenizer.tokenize("Vienna") == ["vien", "##na"]
  features = conll.featurize_ner(words, tags, tokenizer, max_seq_length=10)
  pieces = ["[CLS]", "lena", "visi", "##te", "##d", "vien", "##na", "[SEP]"]
  np.testing.assert_array_equal(
    features.arrays["input_ids"][0], [*tokenizer.convert_tokens_to_ids(pieces), 0, 0]
  )
  #                              [CLS] lena visi ##te ##d vien ##na [SEP] pad  pad
  np.testing.assert_array_equal(
    features.arrays["labels"][0], [-100, 1, 0, -100, -100, 5, -100, -100, -100, -100]
  )
  np.testing.assert_array_equal(features.word_index[0], [-1, 0, 1, -1, -1, 2, -1, -1, -1, -1])
  np.testing.assert_array_equal(features.arrays["attention_mask"][0], [1] * 8 + [0] * 2)


def test_long_sentences_split_and_decode_back(tokenizer):
  data = conll.read_conll2003(DATA / "eng_iob2.txt")
  features = conll.featurize_ner(data.words, data.tags, tokenizer, max_seq_length=8)
  report = features.report
  assert report.num_split_sentences == 3 and report.num_rows > 3
  assert report.num_truncated_sentences == 0 and report.num_dropped_words == 0
  # Rows stay in sentence order, and each word's first piece appears exactly once.
  assert np.all(np.diff(features.sentence_index) >= 0)
  for s, n in enumerate(features.num_words):
    rows = features.word_index[features.sentence_index == s]
    assert sorted(rows[rows >= 0].tolist()) == list(range(n))
  # Decoding the gold labels (as if predicted) gives back the gold tags, and so a perfect score.
  labels = features.arrays["labels"]
  decoded = conll.decode_ner_predictions(np.where(labels < 0, 0, labels), features)
  assert decoded == [list(tags) for tags in data.tags]
  assert conlleval(data.tags, decoded).f1 == 1.0
  # Logits are arg-maxed.
  logits = np.eye(len(conll.NER_LABELS))[np.where(labels < 0, 0, labels)]
  assert conll.decode_ner_predictions(logits, features) == decoded


def test_truncate_mode_counts_and_decodes_dropped_words_as_o(tokenizer):
  data = conll.read_conll2003(DATA / "eng_iob2.txt")
  features = conll.featurize_ner(
    data.words, data.tags, tokenizer, max_seq_length=8, long_sentences="truncate"
  )
  report = features.report
  assert report.num_rows == 3 and report.num_truncated_sentences == 3
  kept = int((features.word_index >= 0).sum())
  assert report.num_dropped_words == report.num_dropped_words == 24 - kept
  labels = features.arrays["labels"]
  decoded = conll.decode_ner_predictions(np.where(labels < 0, 0, labels), features)
  for s, tags in enumerate(data.tags):
    n_kept = int((features.word_index[s] >= 0).sum())
    assert decoded[s] == list(tags[:n_kept]) + ["O"] * (len(tags) - n_kept)


def test_odd_words_unk_and_clipping(tokenizer):
  # A zero-width space tokenises to nothing (fed as [UNK]); "2000" is not in the vocabulary.
  # With max_seq_length 5 there is room for 3 pieces: "qualifiers" (5 pieces) is clipped.
  words = [["\u200b", "2000", "qualifiers"]]
  features = conll.featurize_ner(words, [["O", "B-MISC", "O"]], tokenizer, max_seq_length=5)
  report = features.report
  assert (report.num_unk_words, report.num_clipped_words) == (1, 1)
  unk = tokenizer.unk_token_id
  assert features.arrays["input_ids"][0].tolist()[:3] == [tokenizer.cls_token_id, unk, unk]
  assert conll.decode_ner_predictions(features.arrays["labels"].clip(0), features) == [
    ["O", "B-MISC", "O"]
  ]


def test_featurize_without_tags_and_bad_input(tokenizer):
  features = conll.featurize_ner([["Kiel"]], None, tokenizer, max_seq_length=6)
  assert "labels" not in features.arrays
  with pytest.raises(ValueError, match=r"tags \['B-PERSON'\] not in"):
    conll.featurize_ner([["Kiel"]], [["B-PERSON"]], tokenizer)
  with pytest.raises(ValueError, match="1 words but 2 tags"):
    conll.featurize_ner([["Kiel"]], [["O", "O"]], tokenizer)
  with pytest.raises(ValueError, match="sentence 0 has no words"):
    conll.featurize_ner([[]], None, tokenizer)
  with pytest.raises(ValueError, match="long_sentences"):
    conll.featurize_ner([["Kiel"]], None, tokenizer, long_sentences="wrap")
  with pytest.raises(ValueError, match="do not match"):
    conll.decode_ner_predictions(np.zeros((1, 3), dtype=int), features)


def test_write_conlleval_input(tmp_path):
  path = tmp_path / "out.txt"
  conll.write_conlleval_input(path, [["Kiel", "port"]], [["B-LOC", "O"]], [["B-LOC", "B-LOC"]])
  assert path.read_text() == "Kiel B-LOC B-LOC\nport O B-LOC\n\n"


# -- TFDS ------------------------------------------------------------------------------------------


def _as_dataset_from(sentences):
  """A TFDS `_as_dataset` replacement serving the given sentences, encoded with TFDS's classes."""
  import tensorflow as tf

  def as_dataset(self, *args, **kwargs):
    features = self.info.features

    def encode(key, values):
      return [features[key].feature.str2int(value) for value in values]

    records = [
      {
        "tokens": list(s.words),
        "pos": encode("pos", s.pos),
        "chunks": encode("chunks", s.chunks),
        "ner": encode("ner", s.ner),
      }
      for s in sentences
    ]
    return tf.data.Dataset.from_generator(
      lambda: iter(records), output_types=features.dtype, output_shapes=features.shape
    )

  return as_dataset


def test_tfds_conll2003_reads_like_the_files(tokenizer):
  tfds = pytest.importorskip("tensorflow_datasets")
  files = conll.read_conll2003(DATA / "eng_iob2.txt")
  iob1 = conll.read_conll2003(DATA / "eng_iob1.txt", tag_scheme="keep")
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset_from(iob1.sentences)):
    kept = conll.load_conll2003_tfds("validation", tag_scheme="keep")
    converted = conll.load_conll2003_tfds("dev")
  assert kept.tags == iob1.tags and kept.report.source_scheme == "iob1"
  assert converted.words == files.words and converted.tags == files.tags
  assert [s.pos for s in converted.sentences] == [s.pos for s in files.sentences]
  assert [s.chunks for s in converted.sentences] == [s.chunks for s in iob1.sentences]
  assert converted.report.num_converted == 6
  features = conll.featurize_ner(converted.words, converted.tags, tokenizer, max_seq_length=32)
  reference = conll.featurize_ner(files.words, files.tags, tokenizer, max_seq_length=32)
  for key, value in reference.arrays.items():
    np.testing.assert_array_equal(features.arrays[key], value)
  with pytest.raises(ValueError, match="splits train, dev"):
    conll.load_conll2003_tfds("valid")


def test_tfds_conll2003_rejects_ragged_records():
  tfds = pytest.importorskip("tensorflow_datasets")
  # TFDS's random mock draws each sequence feature with its own length.
  error = pytest.raises(conll.ConllFormatError, match="example 0: feature lengths differ")
  with tfds.testing.mock_data(num_examples=2), error:
    conll.load_conll2003_tfds("train")
