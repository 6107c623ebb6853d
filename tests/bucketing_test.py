"""Length bucketing: the bucket rule, order, remainders, resume, host slices, numerics, trainer."""

import itertools
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.data.bucketing import (
  BucketedBatchIterator,
  bucket_of,
  quantile_bucket_lengths,
  real_lengths,
)
from mobilebert_jax.model.config import MobileBertConfig
from mobilebert_jax.model.encoder import MobileBertModel
from mobilebert_jax.model.models import init_params

N = 203
L = 32
BUCKETS = (8, 16, 24)  # + L


def make_features(n=N, length=L, seed=0):
  """Rows of GLUE-like lengths (mostly short), a per-example label and token-level labels."""
  rng = np.random.default_rng(seed)
  real = np.minimum(rng.geometric(1 / 9, size=n) + 2, length)
  real[:3] = (length, 8, 7)  # a full row, one exactly at a boundary, one just under it
  mask = (np.arange(length)[None] < real[:, None]).astype(np.int32)
  ids = rng.integers(5, 100, size=(n, length), dtype=np.int32) * mask  # [PAD] = 0 after the end
  token_labels = np.where(mask == 1, rng.integers(0, 9, size=(n, length)), -100).astype(np.int32)
  return {
    "index": np.arange(n, dtype=np.int64),
    "input_ids": ids,
    "attention_mask": mask,
    "token_type_ids": np.zeros((n, length), np.int32),
    "token_labels": token_labels,
    "labels": rng.integers(0, 2, size=n).astype(np.int32),
  }


def bucketed(features, batch=8, **kwargs):
  kwargs = {"bucket_lengths": BUCKETS, "shuffle": True, "seed": 3, "process_count": 1, **kwargs}
  return BucketedBatchIterator(features, batch, **kwargs)


def take(iterator, count):
  return list(itertools.islice(iterator, count))


def assert_batches_equal(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      assert a[key].dtype == b[key].dtype


# ----------------------------------------------------------------------------------------------
# The bucket rule and truncation
# ----------------------------------------------------------------------------------------------


def test_real_length_is_one_past_the_last_real_token_over_all_inner_rows():
  mask = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(real_lengths(mask), [2, 3, 0, 4])
  choices = np.zeros((2, 4, 6), np.int32)  # multiple choice: the longest choice counts
  choices[0, 2, :5] = 1
  choices[1, :, :2] = 1
  np.testing.assert_array_equal(real_lengths(choices), [5, 2])


def test_each_example_keeps_the_pad_after_its_last_token():
  """The smallest bucket *longer* than the real length; a full row goes to the last bucket."""
  buckets = (8, 16, 24, 32)
  lengths = np.array([0, 1, 7, 8, 15, 16, 17, 31, 32])
  np.testing.assert_array_equal(
    np.asarray(buckets)[bucket_of(lengths, buckets)], [8, 8, 8, 16, 16, 24, 24, 32, 32]
  )


def test_batches_are_cut_to_their_bucket_and_keep_every_real_token():
  features = make_features()
  it = bucketed(features)
  assert it.bucket_lengths == (8, 16, 24, 32)
  seen_lengths = set()
  for batch in take(it, 2 * len(it)):
    rows = batch["index"]
    length = batch["input_ids"].shape[1]
    seen_lengths.add(length)
    for key in ("input_ids", "attention_mask", "token_type_ids", "token_labels"):
      assert batch[key].shape == (8, length) and batch[key].dtype == features[key].dtype
      np.testing.assert_array_equal(batch[key], features[key][rows, :length])
    np.testing.assert_array_equal(batch["labels"], features["labels"][rows])  # per example
    real = real_lengths(features["attention_mask"][rows])
    assert np.all((real < length) | (length == L))  # the [PAD] after the last token is kept
    assert np.all(batch["attention_mask"].sum(1) == features["attention_mask"][rows].sum(1))
  assert seen_lengths == {8, 16, 24, 32}


def test_multiple_choice_arrays_are_cut_on_their_last_axis():
  rng = np.random.default_rng(1)
  real = rng.integers(3, 20, size=(40, 4))
  mask = (np.arange(L)[None, None] < real[..., None]).astype(np.int32)
  features = {"input_ids": mask * 7, "attention_mask": mask, "labels": np.zeros(40, np.int32)}
  for batch in take(bucketed(features, batch=4), 10):
    length = batch["input_ids"].shape[-1]
    assert batch["input_ids"].shape == (4, 4, length) and batch["labels"].shape == (4,)
    assert batch["attention_mask"].sum() == batch["input_ids"].sum() // 7


def test_token_positions_must_lie_inside_the_bucket():
  """SQuAD's answer positions index real tokens, so they always pass; past the end they fail."""
  features = make_features()
  real = real_lengths(features["attention_mask"])
  features["start_positions"] = (real - 1).astype(np.int32)
  features["end_positions"] = (real - 1).astype(np.int32)
  bucketed(features)  # inside: accepted
  features["end_positions"] = features["end_positions"].copy()
  features["end_positions"][5] = real[5] + 10  # into the padding, maybe past the bucket
  with pytest.raises(ValueError, match=r"end_positions\[5\]=.* outside example 5's bucket"):
    bucketed(features)


@pytest.mark.parametrize(
  ("kwargs", "message"),
  [
    ({"bucket_lengths": (16, 8)}, "strictly increasing"),
    ({"bucket_lengths": (16, 64)}, r"go past the features' sequence length 32"),
    ({"bucket_lengths": ()}, "bucket_lengths is empty"),
    ({"bucket_lengths": (0, 16)}, "positive integer"),
    ({"sequence_keys": ["labels"]}, "'labels' is not a feature array of rank 2"),
  ],
)
def test_bad_settings_are_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    bucketed(make_features(), **kwargs)


def test_features_need_an_attention_mask():
  features = make_features()
  del features["attention_mask"]
  with pytest.raises(ValueError, match="needs 'attention_mask'"):
    bucketed(features)


def test_quantile_buckets_end_at_the_full_length():
  lengths = real_lengths(make_features(n=2000)["attention_mask"])
  buckets = quantile_bucket_lengths(lengths, 4, L, multiple_of=8)
  assert buckets[-1] == L and list(buckets) == sorted(set(buckets))
  assert all(b % 8 == 0 for b in buckets) and len(buckets) >= 2
  assert quantile_bucket_lengths(lengths, 1, L) == (L,)


# ----------------------------------------------------------------------------------------------
# Order, remainders, resume and host slices
# ----------------------------------------------------------------------------------------------


def epoch_rows(iterator, epochs=1):
  return [
    np.concatenate([b["index"] for b in take(iterator, len(iterator))]) for _ in range(epochs)
  ]


def test_an_epoch_drops_only_the_remainder_and_changes_with_the_epoch_and_seed():
  features = make_features()
  it = bucketed(features)
  assert len(it) == len(BatchIterator(features, 8, shuffle=True, process_count=1)) == N // 8
  epochs = epoch_rows(it, 3)
  for rows in epochs:
    assert len(rows) == len(set(rows.tolist())) == N - N % 8  # fewer than a batch left out
  assert len({tuple(rows) for rows in epochs}) == 3
  assert len(set(range(N)) - set(np.concatenate(epochs).tolist())) < N % 8  # a new subset
  again = epoch_rows(bucketed(features), 3)
  for a, b in zip(epochs, again, strict=True):
    np.testing.assert_array_equal(a, b)  # same seed, same stream
  assert not np.array_equal(epoch_rows(bucketed(features, seed=4))[0], epochs[0])


def test_batches_of_all_buckets_are_interleaved():
  it = bucketed(make_features())
  lengths = [b["input_ids"].shape[1] for b in take(it, len(it))]
  assert lengths != sorted(lengths)
  ordered = bucketed(make_features(), shuffle=False)
  lengths = [b["input_ids"].shape[1] for b in take(ordered, len(ordered))]
  assert lengths == sorted(lengths)  # unshuffled: shortest bucket first


def test_without_drop_remainder_every_example_comes_exactly_once():
  features = make_features()
  it = bucketed(features, drop_remainder=False, num_epochs=1)
  batches = list(it)
  assert len(batches) == len(it) == -(-N // 8)
  weights = np.concatenate([b["weights"] for b in batches])
  rows = np.concatenate([b["index"] for b in batches])[weights == 1.0]
  assert sorted(rows.tolist()) == list(range(N))
  assert all(b["input_ids"].shape[0] == 8 for b in batches)  # the last one padded


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("process_count", [2, 4])
def test_the_union_of_the_host_slices_is_the_global_batch(process_count, drop_remainder):
  features = make_features()
  kwargs = {"drop_remainder": drop_remainder, "num_epochs": 2}
  global_batches = list(bucketed(features, batch=8, **kwargs))
  hosts = [
    list(bucketed(features, batch=8, process_index=p, process_count=process_count, **kwargs))
    for p in range(process_count)
  ]
  for step, expected in enumerate(global_batches):
    slices = [host[step] for host in hosts]
    assert len({s["input_ids"].shape for s in slices}) == 1  # every host, the same bucket
    for key in expected:
      np.testing.assert_array_equal(np.concatenate([s[key] for s in slices]), expected[key])


@pytest.mark.parametrize("steps", [0, 5, 25, 26, 51])  # start, mid-epoch, boundary, epoch 2
def test_resume_from_json_continues_exactly(steps):
  features = make_features()
  straight = take(bucketed(features), steps + 12)
  first = bucketed(features)
  take(first, steps)
  state = json.loads(json.dumps(first.get_state()))
  assert (state["epoch"], state["step"]) == divmod(steps, N // 8)
  resumed = bucketed(features)
  resumed.set_state(state)
  assert_batches_equal(take(resumed, 12), straight[steps:])
  # Another host count resumes the same global stream.
  halves = []
  for p in range(2):
    host = bucketed(features, process_index=p, process_count=2)
    host.set_state(state)
    halves.append(take(host, 12))
  for index, expected in enumerate(straight[steps:]):
    np.testing.assert_array_equal(
      np.concatenate([halves[0][index]["index"], halves[1][index]["index"]]), expected["index"]
    )


def test_states_of_other_streams_are_refused():
  features = make_features()
  state = bucketed(features).get_state()
  with pytest.raises(ValueError, match="bucket_lengths"):
    bucketed(features, bucket_lengths=(16,)).set_state(state)
  other = make_features(seed=9)  # same N, other lengths
  with pytest.raises(ValueError, match="bucket_sizes"):
    bucketed(other).set_state(state)
  with pytest.raises(ValueError, match="not a BucketedBatchIterator state"):
    bucketed(features).set_state(BatchIterator(features, 8, shuffle=True).get_state())
  with pytest.raises(ValueError, match="not a BatchIterator state"):
    BatchIterator(features, 8, shuffle=True, process_count=1).set_state(state)
  with pytest.raises(ValueError, match="outside an epoch"):
    bucketed(features).set_state({**state, "step": N // 8})


# ----------------------------------------------------------------------------------------------
# Numerics: what bucketing does to MobileBERT's outputs (docs/pitfalls.md P3)
# ----------------------------------------------------------------------------------------------

SMALL = MobileBertConfig(
  vocab_size=100,
  embedding_size=16,
  hidden_size=32,
  intra_bottleneck_size=16,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=24,
  max_position_embeddings=L,
  num_feedforward_networks=2,
  classifier_activation=True,
)


def model_outputs(config, params, features, rows, length):
  """Last hidden states [rows, length, hidden] and pooled outputs of `rows` cut to `length`."""
  out = MobileBertModel(config).apply(
    {"params": params},
    jnp.asarray(features["input_ids"][rows, :length]),
    attention_mask=jnp.asarray(features["attention_mask"][rows, :length]),
    token_type_ids=jnp.asarray(features["token_type_ids"][rows, :length]),
  )
  return np.asarray(out.last_hidden_state), np.asarray(out.pooler_output)


def relative_error(features, rows, got, want):
  """max|got - want| / max|want| over the real positions and the pooled outputs."""
  real = features["attention_mask"][rows, : got[0].shape[1], None] == 1
  hidden = np.abs(got[0] - want[0][:, : got[0].shape[1]])[np.broadcast_to(real, got[0].shape)]
  scale = max(np.max(np.abs(want[0])), np.max(np.abs(want[1])))
  return max(hidden.max(), np.abs(got[1] - want[1]).max()) / scale


@pytest.mark.usefixtures("fast_compiles")
@pytest.mark.parametrize("invariant", [False, True])
def test_bucketed_outputs_equal_full_length_outputs(invariant):
  """The bucket rule keeps each row's [PAD] neighbour, so outputs match with the option on or
  off; an exact cut (no [PAD] after the last token) matches only with the option on."""
  config = SMALL.replace(padding_invariant_trigram=invariant)
  params = init_params(MobileBertModel(config), 0)
  table = params["embeddings"]["word_embeddings"]
  # A non-zero [PAD] row, as in the released checkpoint (P3).
  params["embeddings"]["word_embeddings"] = table.at[0].set(jnp.linspace(-1.0, 1.0, 16))
  features = make_features()
  rows = np.array([1, 2])  # real lengths 8 and 7: buckets 16 and 8
  full = model_outputs(config, params, features, rows, L)

  # What the iterator yields: each row at its own bucket's length.
  for i, (row, length) in enumerate(zip(rows, (16, 8), strict=True)):
    got = model_outputs(config, params, features, [row], length)
    assert relative_error(features, [row], got, (full[0][[i]], full[1][[i]])) <= 1e-5

  # Cut to exactly the real length, the last token's "next" slot sees zeros, not [PAD].
  row = np.array([1])
  exact = model_outputs(config, params, features, row, 8)
  error = relative_error(features, row, exact, (full[0][[0]], full[1][[0]]))
  if invariant:
    assert error <= 1e-5
  else:
    assert error > 1e-3


# ----------------------------------------------------------------------------------------------
# The trainer: one compile per bucket
# ----------------------------------------------------------------------------------------------


def write_sst2(directory, rng, count):
  words = ["the", "a", "film", "plot", "cast", "warm", "dull", "sharp", "funny", "slow", "story"]
  lines = ["sentence\tlabel"]
  for _ in range(count):
    sentence = " ".join(rng.choice(words, size=int(rng.geometric(1 / 8)) + 1))
    lines.append(f"{sentence}\t{int(rng.integers(0, 2))}")
  (directory / "SST-2").mkdir(parents=True, exist_ok=True)
  name = "train.tsv" if count > 16 else "dev.tsv"
  (directory / "SST-2" / name).write_text("\n".join(lines) + "\n")


@pytest.mark.usefixtures("fast_compiles")
def test_the_trainer_compiles_the_step_once_per_bucket(tmp_path, monkeypatch, caplog):
  from mobilebert_jax.cli import load_config_file
  from mobilebert_jax.demo import VOCAB_FILE
  from mobilebert_jax.train import sharding
  from mobilebert_jax.trainers import finetuning

  rng = np.random.default_rng(0)
  write_sst2(tmp_path / "glue", rng, 96)
  write_sst2(tmp_path / "glue", rng, 8)
  configs = os.path.join(os.path.dirname(finetuning.__file__), os.pardir, "configs")
  config = load_config_file(f"{configs}/glue.py:task=sst2,size=tiny")
  config.tokenizer.vocab_file = VOCAB_FILE
  config.data.data_dir = str(tmp_path / "glue")
  config.data.bucket_lengths = (8, 16)
  config.num_train_steps = 12
  config.checkpoint_every_steps = 100

  steps, lengths = [], []
  jit_train_step = sharding.jit_train_step

  def capture_step(*args, **kwargs):
    steps.append(jit_train_step(*args, **kwargs))
    return steps[-1]

  class RecordingIterator(BucketedBatchIterator):
    def __next__(self):
      batch = super().__next__()
      lengths.append(batch["input_ids"].shape[1])
      return batch

  monkeypatch.setattr(finetuning.sharding, "jit_train_step", capture_step)
  monkeypatch.setattr(finetuning, "BucketedBatchIterator", RecordingIterator)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax._src.dispatch"):
    metrics = finetuning.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(metrics["score"])
  assert len(lengths) == 12 and set(lengths) <= {8, 16, 64} and len(set(lengths)) >= 2
  compiles = [r for r in caplog.records if "compilation of jit(step_without_frozen)" in r.message]
  assert len(compiles) == len(set(lengths))  # one XLA compilation per bucket
  # The dispatch cache holds two signatures per shape (the first step's freshly built state and
  # the step outputs), as it does at full length; both run the same executable.
  assert steps[0].jitted._cache_size() <= 2 * len(set(lengths))
  saved = (tmp_path / "run" / "checkpoints" / "12").rglob("*")
  assert any(b"BucketedBatchIterator" in p.read_bytes() for p in saved if p.is_file())
