"""SWAG: the CSV reader, [N, 4, L] featurisation against transformers, accuracy, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilebert_jax.data import swag
from mobilebert_jax.tokenization import WordPieceTokenizer

DATA = Path(__file__).parent / "testdata" / "swag"
HEADER = ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3"


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
  """Words of the fixture, with -s/-ed endings split off as `##` pieces and "kite" left out."""
  from transformers.models.bert.tokenization_bert_legacy import BasicTokenizer

  basic = BasicTokenizer(do_lower_case=True)
  examples = swag.read_swag_csv(DATA / "train.csv")
  texts = examples.contexts + examples.starts + [e for ends in examples.endings for e in ends]
  vocab = set()
  for word in {w for text in texts for w in basic.tokenize(text)} - {"kite"}:
    for suffix in ("ed", "s"):
      if len(word) > 4 and word.endswith(suffix):
        vocab.update([word[: -len(suffix)], "##" + suffix])
        break
    else:
      vocab.add(word)
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  path.write_text("\n".join(specials + sorted(vocab)) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def tokenizer(vocab_path):
  return WordPieceTokenizer.from_file(str(vocab_path), do_lower_case=True)


# -- reading ---------------------------------------------------------------------------------------


def test_read_train_csv():
  examples = swag.read_swag_csv(DATA / "train.csv")
  assert len(examples) == 3
  assert examples.contexts[0] == "A boy lifts a red kite above his head."
  assert examples.starts == ["He", "Someone", "The ferry"]
  # Quoted CSV fields keep their commas and (doubled) quotes.
  assert examples.endings[0][3] == 'sings to the kite, "fly, fly", and waits.'
  assert examples.endings[2] == (
    "turns into a bird.",
    "swims to the mountains.",
    "sounds its horn and slows down.",
    "melts in the sun, slowly.",
  )
  np.testing.assert_array_equal(examples.labels, [0, 1, 2])
  assert examples.labels.dtype == np.int32
  np.testing.assert_array_equal(examples.example_ids, [0, 1, 2])
  assert examples.fold_inds == ["101", "102", "103"]
  assert examples.video_ids[1] == "anetv_Baking-00002"


def test_read_val_and_unlabelled_test_csv():
  assert swag.read_swag_csv(DATA / "val.csv").labels.tolist() == [2]
  test = swag.read_swag_csv(DATA / "test.csv")
  assert test.labels is None and len(test) == 2


@pytest.mark.parametrize(
  "text,pattern",
  [
    (HEADER + ",label\n0,v,1,s,ctx,He,g,a,b,c,d,4\n", r"bad\.csv:2: label '4' is not one of"),
    (HEADER + ",label\n0,v,1,s,ctx,He,g,a,b,c,d,\n", r"bad\.csv:2: label '' is not one of"),
    (HEADER + ",label\n0,v,1,s,ctx,He,g,a,b,c,d,0\n1,v,1,s,ctx,He,g,a,b,c,0\n",
     r"bad\.csv:3: expected 12 fields, found 11"),
    (HEADER + ",label\n0,v,1,s,ctx,He,g,a, ,c,d,0\n", r"bad\.csv:2: empty ending1"),
    (HEADER + ",label\n0,v,1,s,,He,g,a,b,c,d,0\n", r"bad\.csv:2: empty sent1"),
    (HEADER.replace(",ending3", "") + ",label\n0,v,1,s,ctx,He,g,a,b,c,0\n",
     r"bad\.csv:1: header .* lacks column\(s\) \['ending3'\]"),
    (HEADER + ",label\nzero,v,1,s,ctx,He,g,a,b,c,d,0\n", r"index 'zero' is not an integer"),
    (HEADER + ",label\n", r"bad\.csv: no examples"),
    ("", r"bad\.csv: empty file"),
    # A quoted field spanning lines: the error names the line the record starts on.
    (HEADER + ',label\n0,v,1,s,"ctx\nmore",He,g,a,b,c,d,0\n1,v,1,s,ctx,He,g,a,b,c,d,9\n',
     r"bad\.csv:4: label '9'"),
  ],
)  # fmt: skip
def test_malformed_csv_names_file_and_line(tmp_path, text, pattern):
  path = tmp_path / "bad.csv"
  path.write_text(text, encoding="utf-8")
  with pytest.raises(swag.SwagFormatError, match=pattern):
    swag.read_swag_csv(path)


def test_unreadable_csv(tmp_path):
  path = tmp_path / "bad.csv"
  # An unterminated quote swallows the rest of the file into one short record.
  path.write_text(HEADER + ',label\n0,v,1,s,"ctx,He,g,a,b,c,d,0\n1,v,1,s,ctx,He,g,a,b,c,d,0\n')
  with pytest.raises(swag.SwagFormatError, match=r"bad\.csv:2: expected 12 fields, found 5"):
    swag.read_swag_csv(path)
  path.write_bytes(HEADER.encode() + b",label\n0,v,1,s,c\xfftx,He,g,a,b,c,d,0\n")
  with pytest.raises(swag.SwagFormatError, match=r"bad\.csv: not a readable CSV file"):
    swag.read_swag_csv(path)


def test_empty_sent2_is_allowed(tmp_path):
  path = tmp_path / "ok.csv"
  path.write_text(HEADER + ",label\n5,v,1,s,ctx,,g,a,b,c,d,3\n", encoding="utf-8")
  examples = swag.read_swag_csv(path)
  assert examples.starts == [""] and examples.labels.tolist() == [3]
  assert examples.example_ids.tolist() == [5]


# -- featurisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_length", [64, 14])
def test_features_match_transformers(vocab_path, tokenizer, max_length):
  """Choice i is the pair (sent1, sent2 + " " + ending_i), as in transformers' run_swag."""
  from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

  hf = BertTokenizerLegacy(str(vocab_path), do_lower_case=True)
  examples = swag.read_swag_csv(DATA / "train.csv")
  features = swag.featurize_swag(examples, tokenizer, max_seq_length=max_length)
  arrays = features.arrays
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert arrays[key].shape == (3, swag.NUM_CHOICES, max_length) and arrays[key].dtype == np.int32
  np.testing.assert_array_equal(arrays["labels"], [0, 1, 2])
  np.testing.assert_array_equal(features.example_ids, [0, 1, 2])
  truncated = 0
  for i in range(len(examples)):
    for c, ending in enumerate(examples.endings[i]):
      first, second = examples.contexts[i], f"{examples.starts[i]} {ending}"
      expected = hf(
        first,
        second,
        truncation="longest_first",
        max_length=max_length,
        padding="max_length",
        return_token_type_ids=True,
        return_attention_mask=True,
      )
      np.testing.assert_array_equal(arrays["input_ids"][i, c], expected["input_ids"])
      np.testing.assert_array_equal(arrays["token_type_ids"][i, c], expected["token_type_ids"])
      np.testing.assert_array_equal(arrays["attention_mask"][i, c], expected["attention_mask"])
      truncated += len(hf(first, second)["input_ids"]) > max_length
  assert features.report.num_sequences == 12
  assert features.report.num_truncated == truncated
  assert (truncated == 0) == (max_length == 64)


def test_choice_layout_by_hand(tokenizer):
  examples = swag.read_swag_csv(DATA / "train.csv")
  features = swag.featurize_swag(examples, tokenizer, max_seq_length=32)
  # Example 1, choice 1: [CLS] the baker kneads ... [SEP] someone places the dough ... [SEP]
  tokens = ["[CLS]", *tokenizer.tokenize("The baker kneads the dough on the counter."), "[SEP]"]
  tokens += [*tokenizer.tokenize("Someone places the dough in a greased bowl."), "[SEP]"]
  assert "##s" in tokens and "[UNK]" not in tokens
  row = features.arrays["input_ids"][1, 1]
  assert row[: len(tokens)].tolist() == tokenizer.convert_tokens_to_ids(tokens)
  assert not row[len(tokens) :].any()
  # "kite" is not in the vocabulary.
  assert tokenizer.unk_token_id in features.arrays["input_ids"][0, 0]


def test_unlabelled_features_and_accuracy(tokenizer):
  test = swag.read_swag_csv(DATA / "test.csv")
  features = swag.featurize_swag(test, tokenizer, max_seq_length=16)
  assert "labels" not in features.arrays
  assert features.arrays["input_ids"].shape == (2, 4, 16)
  logits = np.array([[0.1, 2.0, 0.0, -1.0], [3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
  assert swag.swag_accuracy([1, 1, 2], logits) == pytest.approx(2 / 3)
  assert swag.swag_accuracy([1, 1, 2], np.array([1, 0, 2])) == pytest.approx(2 / 3)
