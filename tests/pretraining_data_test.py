"""Pretraining data: documents, BERT-style MLM + NSP instances, feature arrays, TFDS source."""

import collections
import itertools
import json
import math
import random
import types

import numpy as np
import pytest

from mobilebert_jax.data import pretraining
from mobilebert_jax.data.batching import StreamBatchIterator
from mobilebert_jax.data.pretraining_documents import (
  read_text_documents,
  split_sentences,
  tfds_documents,
)
from mobilebert_jax.data.pretraining_instances import (
  MaskingVocab,
  PretrainingConfig,
  truncate_pair,
)
from mobilebert_jax.tokenization import WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_DOCS = 40
MAX_SENTENCES = 16


def load_tokenizer(vocab_path):
  return WordPieceTokenizer.from_file(str(vocab_path), do_lower_case=True)


def write_vocab(path, words):
  path.write_text("\n".join(SPECIALS + list(words)) + "\n", encoding="utf-8")
  return load_tokenizer(path)


def write_documents(path, documents):
  """Writes BERT's format: one sentence per line, a blank line between documents."""
  text = "\n\n".join("\n".join(" ".join(s) for s in doc) for doc in documents)
  path.write_text(text + "\n", encoding="utf-8")


def tagged_corpus(seed):
  """Documents whose every word `d{d}s{s}` names its document and sentence."""
  rng = random.Random(seed)
  documents = []
  for d in range(NUM_DOCS):
    sentences = rng.randint(2, MAX_SENTENCES)
    documents.append([[f"d{d}s{s}"] * rng.randint(2, 10) for s in range(sentences)])
  return documents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  words = [f"d{d}s{s}" for d in range(NUM_DOCS) for s in range(MAX_SENTENCES)]
  tokenizer = write_vocab(root / "vocab.txt", words)
  documents = tagged_corpus(0)
  paths = [root / "part-0.txt", root / "part-1.txt"]
  write_documents(paths[0], documents[: NUM_DOCS // 2])
  write_documents(paths[1], documents[NUM_DOCS // 2 :])
  return tokenizer, paths


CONFIG = PretrainingConfig(max_seq_length=48, dupe_factor=10)


@pytest.fixture(scope="module")
def features(corpus):
  tokenizer, paths = corpus
  return pretraining.pretraining_features_from_files(paths, tokenizer, CONFIG, seed=7)


def original_ids(features):
  """input_ids with the original token put back at every masked position."""
  ids = features["input_ids"].copy()
  rows, slots = np.nonzero(features["masked_lm_weights"])
  ids[rows, features["masked_lm_positions"][rows, slots]] = features["masked_lm_ids"][rows, slots]
  return ids


def tagger(tokenizer):
  """token id -> (document, sentence) of the tagged corpus."""
  tags = {}
  for word, index in tokenizer.vocab.items():
    if word.startswith("d") and "s" in word:
      doc, sentence = word[1:].split("s")
      tags[index] = (int(doc), int(sentence))
  return lambda token_id: tags[int(token_id)]


def test_shapes_dtypes_padding_and_token_types(features, corpus):
  tokenizer = corpus[0]
  n = features["input_ids"].shape[0]
  assert n > 300
  assert set(features) == set(pretraining.FEATURE_KEYS)
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert features[key].shape == (n, 48) and features[key].dtype == np.int32
  for key in ("masked_lm_positions", "masked_lm_ids"):
    assert features[key].shape == (n, 20) and features[key].dtype == np.int32
  assert features["masked_lm_weights"].dtype == np.float32
  assert features["next_sentence_labels"].shape == (n,)
  assert features["next_sentence_labels"].dtype == np.int32

  cls, sep = tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]
  original = original_ids(features)
  lengths = features["attention_mask"].sum(1)
  assert lengths.min() >= 5 and lengths.max() == 48
  assert (lengths < 48).any()  # Short targets and document ends give padded instances.
  for row in range(n):
    length = lengths[row]
    mask = features["attention_mask"][row]
    assert (mask[:length] == 1).all() and (mask[length:] == 0).all()
    assert (features["input_ids"][row, length:] == 0).all()
    tokens = original[row, :length]
    seps = np.flatnonzero(tokens == sep)
    assert tokens[0] == cls and len(seps) == 2 and seps[1] == length - 1
    types = features["token_type_ids"][row]
    np.testing.assert_array_equal(types[: seps[0] + 1], 0)
    np.testing.assert_array_equal(types[seps[0] + 1 : length], 1)
    np.testing.assert_array_equal(types[length:], 0)


def test_same_seed_same_features_other_seed_differs(corpus, features):
  tokenizer, paths = corpus
  again = pretraining.pretraining_features_from_files(paths, tokenizer, CONFIG, seed=7)
  for key in features:
    np.testing.assert_array_equal(again[key], features[key])
  other = pretraining.pretraining_features_from_files(paths, tokenizer, CONFIG, seed=8)
  assert other["input_ids"].shape != features["input_ids"].shape or not np.array_equal(
    other["input_ids"], features["input_ids"]
  )


def test_number_of_predictions_follows_the_rate(features):
  lengths = features["attention_mask"].sum(1)
  counts = features["masked_lm_weights"].sum(1).astype(int)
  expected = [min(20, max(1, round(0.15 * length))) for length in lengths]
  np.testing.assert_array_equal(counts, expected)
  # Over the corpus that is ~15% of the tokens (rounding moves each instance by at most 1/2).
  rate = counts.sum() / lengths.sum()
  assert abs(rate - 0.15) < 0.5 / lengths.mean()
  # The weights are 1 for the first `count` slots, 0 after; padded slots hold position/id 0.
  slots = np.arange(20)[None, :]
  np.testing.assert_array_equal(features["masked_lm_weights"], (slots < counts[:, None]))
  assert (features["masked_lm_positions"][slots >= counts[:, None]] == 0).all()
  assert (features["masked_lm_ids"][slots >= counts[:, None]] == 0).all()


def test_never_masks_special_tokens_or_padding(features, corpus):
  tokenizer = corpus[0]
  special = {tokenizer.vocab["[CLS]"], tokenizer.vocab["[SEP]"]}
  original = original_ids(features)
  lengths = features["attention_mask"].sum(1)
  for row in range(len(lengths)):
    count = int(features["masked_lm_weights"][row].sum())
    positions = features["masked_lm_positions"][row, :count]
    assert (np.diff(positions) > 0).all()  # Sorted, no duplicates.
    assert positions.min() >= 1 and positions.max() < lengths[row] - 1
    assert not special & set(original[row, positions].tolist())
    np.testing.assert_array_equal(features["masked_lm_ids"][row, :count], original[row, positions])


def test_replacements_split_80_10_10(features, corpus):
  tokenizer = corpus[0]
  rows, slots = np.nonzero(features["masked_lm_weights"])
  positions = features["masked_lm_positions"][rows, slots]
  shown = features["input_ids"][rows, positions]
  label = features["masked_lm_ids"][rows, slots]
  n = len(rows)
  as_mask = np.mean(shown == tokenizer.vocab["[MASK]"])
  kept = np.mean(shown == label)
  replaced = 1.0 - as_mask - kept
  for observed, p in ((as_mask, 0.8), (kept, 0.1), (replaced, 0.1)):
    assert abs(observed - p) < 5 * math.sqrt(p * (1 - p) / n), (observed, p, n)
  # Random replacements come from the whole vocabulary, not from the instance.
  random_ids = shown[(shown != label) & (shown != tokenizer.vocab["[MASK]"])]
  assert len(set(random_ids.tolist())) > 0.5 * len(random_ids)


def test_next_sentence_sources(features, corpus):
  tokenizer = corpus[0]
  tag_of = tagger(tokenizer)
  labels = features["next_sentence_labels"]
  assert 0.3 < labels.mean() < 0.7
  original = original_ids(features)
  sep = tokenizer.vocab["[SEP]"]
  for row in range(len(labels)):
    length = features["attention_mask"][row].sum()
    first_sep = np.flatnonzero(original[row] == sep)[0]
    tags_a = {tag_of(t) for t in original[row, 1:first_sep]}
    tags_b = {tag_of(t) for t in original[row, first_sep + 1 : length - 1]}
    docs_a, docs_b = {d for d, _ in tags_a}, {d for d, _ in tags_b}
    assert len(docs_a) == 1 and len(docs_b) == 1  # A and B each come from one document.
    if labels[row] == 1:
      assert docs_a != docs_b
    else:
      assert docs_a == docs_b
      assert max(s for _, s in tags_a) < min(s for _, s in tags_b)  # B follows A.


def test_next_sentence_labels_are_half_random(corpus):
  """The coin is fair; only one-sentence chunks (always random) add a small excess of label 1.

  Long documents of short sentences and no short targets make such chunks rare.
  """
  tokenizer = corpus[0]
  documents = [
    [np.full(3, tokenizer.vocab[f"d{d}s{s % MAX_SENTENCES}"], np.int32) for s in range(150)]
    for d in range(8)
  ]
  config = PretrainingConfig(max_seq_length=64, short_seq_prob=0.0, dupe_factor=20)
  labels = pretraining.pretraining_features(documents, tokenizer, config, seed=0)[
    "next_sentence_labels"
  ]
  n = len(labels)
  assert n > 1500
  assert abs(labels.mean() - 0.5) < 4 * math.sqrt(0.25 / n) + 0.02, labels.mean()


def test_every_document_is_used_in_every_pass(features, corpus):
  tag_of = tagger(corpus[0])
  original = original_ids(features)
  # Position 1 is A's first token: one count per instance, keyed by A's document.
  seen = collections.Counter(tag_of(row[1])[0] for row in original)
  assert set(seen) == set(range(NUM_DOCS))
  assert min(seen.values()) >= CONFIG.dupe_factor  # At least one instance per pass.


def test_max_predictions_cap(corpus):
  tokenizer, paths = corpus
  config = PretrainingConfig(max_seq_length=48, max_predictions_per_seq=3, dupe_factor=2)
  features = pretraining.pretraining_features_from_files(paths, tokenizer, config, seed=1)
  counts = features["masked_lm_weights"].sum(1)
  assert features["masked_lm_positions"].shape[1] == 3
  assert counts.max() == 3 and (counts == 3).mean() > 0.5
  lengths = features["attention_mask"].sum(1)
  np.testing.assert_array_equal(counts, [min(3, max(1, round(0.15 * n))) for n in lengths])


def word_groups(tokens, tokenizer, length):
  """Positions of each word: a piece plus the `##` pieces directly after it (no specials)."""
  inverse = {v: k for k, v in tokenizer.vocab.items()}
  sep = tokenizer.vocab["[SEP]"]
  groups = []
  for position in range(1, length - 1):
    if tokens[position] == sep:
      continue
    piece = inverse[int(tokens[position])]
    if piece.startswith("##") and groups and groups[-1][-1] == position - 1:
      groups[-1].append(position)
    else:
      groups.append([position])
  return groups


@pytest.mark.parametrize("whole_word", [True, False])
def test_whole_word_masking_masks_whole_words(tmp_path, whole_word):
  stems = [f"w{i}" for i in range(30)]
  tokenizer = write_vocab(tmp_path / "vocab.txt", [*stems, "##xa", "##xb", "##xc"])
  rng = random.Random(3)
  documents = [
    [
      [rng.choice(stems) + "".join(rng.sample(["xa", "xb", "xc"], rng.randint(0, 3)))]
      * rng.randint(3, 8)
      for _ in range(rng.randint(2, 10))
    ]
    for _ in range(12)
  ]
  write_documents(tmp_path / "corpus.txt", documents)
  config = PretrainingConfig(max_seq_length=40, dupe_factor=5, whole_word_mask=whole_word)
  features = pretraining.pretraining_features_from_files(
    tmp_path / "corpus.txt", tokenizer, config, seed=0
  )
  original = original_ids(features)
  partial = whole_multi = 0
  for row in range(len(original)):
    length = features["attention_mask"][row].sum()
    count = int(features["masked_lm_weights"][row].sum())
    masked = set(features["masked_lm_positions"][row, :count].tolist())
    assert count <= max(1, round(0.15 * length))
    for group in word_groups(original[row], tokenizer, length):
      hit = masked.intersection(group)
      partial += 0 < len(hit) < len(group)
      whole_multi += len(group) > 1 and len(hit) == len(group)
  if whole_word:
    assert partial == 0 and whole_multi > 50
  else:
    assert partial > 50  # The check above can fail: piece-wise masking splits words.


def test_dense_labels_for_transformers(features):
  inputs = pretraining.to_transformers_inputs(features)
  labels = inputs["labels"]
  assert labels.shape == features["input_ids"].shape and labels.dtype == np.int32
  assert (labels != -100).sum() == features["masked_lm_weights"].sum()
  rows, slots = np.nonzero(features["masked_lm_weights"])
  positions = features["masked_lm_positions"][rows, slots]
  np.testing.assert_array_equal(labels[rows, positions], features["masked_lm_ids"][rows, slots])
  np.testing.assert_array_equal(inputs["next_sentence_label"], features["next_sentence_labels"])


@pytest.mark.torch
def test_labels_give_transformers_the_gathered_loss(features, corpus):
  """transformers' dense-label loss equals the loss at (positions, ids) gathered by hand."""
  import torch
  from transformers import MobileBertConfig, MobileBertForPreTraining

  config = MobileBertConfig(
    vocab_size=len(corpus[0].vocab),
    hidden_size=32,
    embedding_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    intra_bottleneck_size=16,
    true_hidden_size=16,
    num_feedforward_networks=1,
    max_position_embeddings=64,
  )
  torch.manual_seed(0)
  model = MobileBertForPreTraining(config).eval()
  batch = {key: value[:8] for key, value in features.items()}
  inputs = {
    k: torch.from_numpy(v.astype(np.int64))
    for k, v in pretraining.to_transformers_inputs(batch).items()
  }
  with torch.no_grad():
    out = model(**inputs)
  logits = out.prediction_logits.double()
  rows, slots = np.nonzero(batch["masked_lm_weights"])
  positions = batch["masked_lm_positions"][rows, slots]
  ids = batch["masked_lm_ids"][rows, slots]
  log_probs = torch.log_softmax(logits[rows, positions], dim=-1)
  mlm = -log_probs[np.arange(len(ids)), ids].mean()
  nsp = torch.nn.functional.cross_entropy(
    out.seq_relationship_logits.double(), torch.from_numpy(batch["next_sentence_labels"]).long()
  )
  np.testing.assert_allclose(out.loss.item(), (mlm + nsp).item(), rtol=1e-5)


def test_streaming_examples_are_seeded_and_draw_random_b_from_other_documents(corpus):
  tokenizer, paths = corpus
  config = PretrainingConfig(max_seq_length=48, dupe_factor=2)
  read = []

  def documents():
    for document in read_text_documents(paths, tokenizer):
      read.append(document)
      yield document

  stream = pretraining.iter_pretraining_examples(
    documents(), tokenizer, config, seed=5, pool_size=4
  )
  first = next(stream)
  assert len(read) <= 5  # Lazy: the first example needs only the pool and one more document.
  examples = [first, *stream]
  assert len(read) == NUM_DOCS
  again = list(
    pretraining.iter_pretraining_examples(
      read_text_documents(paths, tokenizer), tokenizer, config, seed=5, pool_size=4
    )
  )
  assert len(again) == len(examples)
  for a, b in zip(examples, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  stacked = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  original = original_ids(stacked)
  sep = tokenizer.vocab["[SEP]"]
  labels = stacked["next_sentence_labels"]
  assert 0.35 < labels.mean() < 0.7
  tag_of = tagger(tokenizer)
  for row in range(len(labels)):
    first_sep = np.flatnonzero(original[row] == sep)[0]
    doc_a, doc_b = tag_of(original[row, 1])[0], tag_of(original[row, first_sep + 1])[0]
    assert (doc_a != doc_b) == (labels[row] == 1)


ARTICLES = [
  "Alpha beta gamma. Delta epsilon zeta!\nEta theta iota? Kappa lambda mu.",
  "Nu xi omicron. Pi rho sigma tau. Upsilon phi chi psi omega.",
  "Mr. Alpha met Dr. Beta. They spoke about gamma and delta.",
  "Zeta eta theta.",
]


def test_tfds_text_dataset_to_instances(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow as tf

  words = sorted({w.strip(".!?").lower() for a in ARTICLES for w in a.split()})
  tokenizer = write_vocab(tmp_path / "vocab.txt", [*words, ".", "!", "?"])
  requested = []

  def as_dataset(self, split, *args, **kwargs):
    requested.append(split)
    titles = [f"t{i}" for i in range(len(ARTICLES))]
    return tf.data.Dataset.from_tensor_slices({"title": titles, "text": ARTICLES})

  config = PretrainingConfig(max_seq_length=16, dupe_factor=3)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    documents = list(
      tfds_documents("wikipedia/20230601.en", "train", tokenizer, process_index=1, process_count=2)
    )
    features = pretraining.pretraining_features(documents, tokenizer, config, seed=0)
  assert requested == [tfds.even_splits("train", 2)[1]]  # This process's half of the split.
  # One document per article; sentences split at . ! ? and not after "Mr." / "Dr.".
  assert [len(d) for d in documents] == [4, 3, 2, 1]
  np.testing.assert_array_equal(
    documents[2][0], tokenizer.convert_tokens_to_ids(tokenizer.tokenize("Mr. Alpha met Dr. Beta."))
  )
  n = features["input_ids"].shape[0]
  assert n >= 3 * len(ARTICLES) and features["input_ids"].shape == (n, 16)
  assert set(np.unique(features["next_sentence_labels"])) == {0, 1}


def test_split_sentences():
  text = (
    'He said "Stop." Then he left. J. R. R. Tolkien wrote it in the U.S. Army? '
    "No, e.g. this stays. (Really!) 3 more.\n\n  Second paragraph without end  \n"
    "第一句。第二句！"
  )
  assert split_sentences(text) == [
    'He said "Stop."',
    "Then he left.",
    "J. R. R. Tolkien wrote it in the U.S. Army?",
    "No, e.g. this stays.",
    "(Really!)",
    "3 more.",
    "Second paragraph without end",
    "第一句。",
    "第二句！",
  ]
  assert split_sentences("") == []


def test_text_files_documents_and_boundaries(tmp_path, corpus):
  tokenizer = write_vocab(tmp_path / "vocab.txt", ["a", "b", "c", "d"])
  (tmp_path / "one.txt").write_bytes("\ufeffa b\n  c  \n\n\n\nd\n \nb\n".encode())
  (tmp_path / "two.txt").write_text("a\nb", encoding="utf-8")  # No final newline.
  documents = list(read_text_documents([tmp_path / "one.txt", tmp_path / "two.txt"], tokenizer))
  ids = tokenizer.vocab
  as_lists = [[s.tolist() for s in d] for d in documents]
  assert as_lists == [
    [[ids["a"], ids["b"]], [ids["c"]]],
    [[ids["d"]]],
    [[ids["b"]]],  # The end of a file ends a document.
    [[ids["a"]], [ids["b"]]],
  ]
  assert all(s.dtype == np.int32 for d in documents for s in d)


def test_bad_settings_raise_clear_errors():
  with pytest.raises(ValueError, match="max_seq_length=4 is too small"):
    PretrainingConfig(max_seq_length=4)
  for prob in (0.0, 1.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="masked_lm_prob"):
      PretrainingConfig(masked_lm_prob=prob)
  with pytest.raises(ValueError, match="max_predictions_per_seq"):
    PretrainingConfig(max_predictions_per_seq=0)
  with pytest.raises(ValueError, match="short_seq_prob"):
    PretrainingConfig(short_seq_prob=1.5)
  with pytest.raises(ValueError, match="dupe_factor"):
    PretrainingConfig(dupe_factor=0)


def test_bad_inputs_raise_clear_errors(tmp_path, corpus):
  tokenizer = corpus[0]
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\na\n", encoding="utf-8")
  # The tokenizer already refuses such a vocabulary, naming the file...
  with pytest.raises(ValueError, match=r"vocab\.txt: the vocabulary has no mask token '\[MASK\]'"):
    load_tokenizer(tmp_path / "vocab.txt")
  # ...and the pretraining pipeline checks any tokenizer-like object it is handed.
  without_mask = types.SimpleNamespace(vocab={"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3})
  with pytest.raises(ValueError, match=r"no \[MASK\]"):
    MaskingVocab.from_tokenizer(without_mask)

  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n   \n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"empty\.txt: 0 non-empty document"):
    pretraining.pretraining_features_from_files(empty, tokenizer)
  single = tmp_path / "single.txt"
  single.write_text("d0s0 d0s0\nd0s1\n", encoding="utf-8")
  with pytest.raises(ValueError, match=r"single\.txt: 1 non-empty document"):
    pretraining.pretraining_features_from_files(single, tokenizer)
  with pytest.raises(ValueError, match="the document stream holds 1"):
    list(pretraining.iter_pretraining_examples(read_text_documents(single, tokenizer), tokenizer))

  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("d0s0\n\nd1s1\ncaf\u00e9\n".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1\.txt:4: not valid UTF-8"):
    pretraining.pretraining_features_from_files(latin1, tokenizer)


def test_example_stream_batches_resume_exactly(corpus):
  tokenizer, paths = corpus
  config = PretrainingConfig(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=1)
  make_examples = pretraining.pretraining_example_stream(
    lambda: read_text_documents(paths, tokenizer),
    tokenizer,
    config,
    seed=3,
    pool_size=8,
    process_index=0,
  )
  kwargs = dict(batch_size=8, num_epochs=2, shuffle_buffer_size=64, seed=1)
  uninterrupted = list(StreamBatchIterator(make_examples, **kwargs))
  per_epoch = len(uninterrupted) // 2
  assert per_epoch > 5 and uninterrupted[0]["input_ids"].shape == (8, 32)
  # Each epoch has its own seed: new splits and masks.
  assert not np.array_equal(uninterrupted[0]["input_ids"], uninterrupted[per_epoch]["input_ids"])
  first = StreamBatchIterator(make_examples, **kwargs)
  head = list(itertools.islice(first, per_epoch + 2))
  state = json.loads(json.dumps(first.get_state()))
  resumed = StreamBatchIterator(make_examples, **kwargs)
  resumed.set_state(state)
  rest = list(resumed)
  assert len(head) + len(rest) == len(uninterrupted)
  for got, want in zip(head + rest, uninterrupted, strict=True):
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_truncation_trims_the_longer_segment_from_both_ends():
  rng = random.Random(0)
  starts = []
  for _ in range(2000):
    a, b = list(range(10)), [100, 101, 102, 103]
    truncate_pair(a, b, 8, rng)
    assert len(a) == 4 and b == [100, 101, 102, 103]  # Only the longer segment shrinks.
    assert a == list(range(a[0], a[0] + 4))  # A contiguous window: only ends are removed.
    starts.append(a[0])  # = removals from the front, Binomial(6, 1/2).
  assert abs(np.mean(starts) - 3.0) < 5 * math.sqrt(1.5 / 2000)
  assert abs(np.var(starts) - 1.5) < 0.2
  a, b = [1, 2, 3, 4, 5], [6, 7, 8, 9, 10]
  truncate_pair(a, b, 8, random.Random(1))
  assert len(a) == 4 and len(b) == 4  # A tie takes from B first, then A is the longer.


def test_short_sequence_probability_shortens_targets(corpus):
  tokenizer, paths = corpus
  mean_length = {}
  for prob in (0.0, 1.0):
    config = PretrainingConfig(max_seq_length=48, short_seq_prob=prob, dupe_factor=3)
    features = pretraining.pretraining_features_from_files(paths, tokenizer, config, seed=0)
    mean_length[prob] = features["attention_mask"].sum(1).mean()
  # Targets uniform in [2, 45] instead of 45: instances get much shorter (not half: whole
  # sentences overshoot a target, and a random B fills up to it).
  assert mean_length[1.0] < 0.8 * mean_length[0.0], mean_length
