"""Batching: deterministic order, exact resume, multi-host slices, padded remainders, streams."""

import itertools
import json

import numpy as np
import pytest

from mobilebert_jax.data.batching import BatchIterator, StreamBatchIterator

N = 103


def make_features(n=N):
  rng = np.random.default_rng(0)
  return {
    "index": np.arange(n, dtype=np.int32),
    "input_ids": rng.integers(1, 1000, size=(n, 6), dtype=np.int32),
    "score": rng.normal(size=(n,)).astype(np.float32),
  }


def take(iterator, count):
  return list(itertools.islice(iterator, count))


def assert_batches_equal(left, right):
  assert len(left) == len(right)
  for a, b in zip(left, right, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
      assert a[key].dtype == b[key].dtype


def test_rows_follow_the_index_and_keep_dtypes_and_shapes():
  features = make_features()
  for batch in take(BatchIterator(features, 8, shuffle=True, seed=3, process_count=1), 30):
    assert batch["input_ids"].shape == (8, 6) and batch["input_ids"].dtype == np.int32
    assert batch["score"].dtype == np.float32
    np.testing.assert_array_equal(batch["input_ids"], features["input_ids"][batch["index"]])
    np.testing.assert_array_equal(batch["score"], features["score"][batch["index"]])


def test_order_is_a_seeded_permutation_per_epoch():
  features = make_features()

  def epochs(seed, count):
    it = BatchIterator(features, 10, shuffle=True, seed=seed, process_count=1)
    batches = take(it, count * len(it))
    return np.concatenate([b["index"] for b in batches]).reshape(count, -1)

  first = epochs(seed=1, count=3)
  assert len(BatchIterator(features, 10, shuffle=True, process_count=1)) == N // 10
  for epoch in first:
    assert len(set(epoch.tolist())) == 100  # Drop remainder: 100 distinct rows per epoch.
  assert not np.array_equal(first[0], first[1])  # A new permutation each epoch.
  np.testing.assert_array_equal(epochs(seed=1, count=3), first)  # Same seed, same order.
  assert not np.array_equal(epochs(seed=2, count=1)[0], first[0])
  ordered = BatchIterator(features, 10, shuffle=False, process_count=1)
  np.testing.assert_array_equal(
    np.concatenate([b["index"] for b in take(ordered, 20)]), np.tile(np.arange(100), 2)
  )


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("consumed", [0, 3, 10, 11, 25])  # Inside, at and across epoch ends.
def test_exact_resume_from_json_state(drop_remainder, consumed):
  features = make_features()
  kwargs = dict(shuffle=True, seed=5, num_epochs=3, drop_remainder=drop_remainder, process_count=1)
  uninterrupted = list(BatchIterator(features, 10, **kwargs))
  assert len(uninterrupted) == 3 * (10 if drop_remainder else 11)

  first = BatchIterator(features, 10, **kwargs)
  head = take(first, consumed)
  saved = json.dumps(first.get_state())
  assert len(saved) < 300  # Position and identity, never data.

  resumed = BatchIterator(features, 10, **kwargs)
  resumed.set_state(json.loads(saved))
  assert_batches_equal(head + list(resumed), uninterrupted)


def test_resume_on_another_number_of_hosts():
  features = make_features()
  one = BatchIterator(features, 8, shuffle=True, seed=0, process_index=0, process_count=1)
  take(one, 17)
  state = json.loads(json.dumps(one.get_state()))
  expected = take(one, 5)
  slices = []
  for index in range(4):
    host = BatchIterator(features, 8, shuffle=True, seed=0, process_index=index, process_count=4)
    host.set_state(state)
    slices.append(take(host, 5))
  for step in range(5):
    np.testing.assert_array_equal(
      np.concatenate([s[step]["index"] for s in slices]), expected[step]["index"]
    )


@pytest.mark.parametrize("drop_remainder", [True, False])
@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_union_of_process_slices_is_the_global_batch(process_count, drop_remainder):
  features = make_features()
  kwargs = dict(shuffle=True, seed=9, num_epochs=2, drop_remainder=drop_remainder)
  global_batches = list(BatchIterator(features, 16, process_count=1, process_index=0, **kwargs))
  per_process = [
    list(BatchIterator(features, 16, process_count=process_count, process_index=i, **kwargs))
    for i in range(process_count)
  ]
  for slices in per_process:
    assert len(slices) == len(global_batches)
    assert all(len(batch["index"]) == 16 // process_count for batch in slices)
  for step, expected in enumerate(global_batches):
    for key in expected:
      joined = np.concatenate([slices[step][key] for slices in per_process])
      np.testing.assert_array_equal(joined, expected[key])


def test_padded_last_batch_with_weights():
  features = make_features()
  it = BatchIterator(
    features,
    16,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    process_count=2,
    process_index=1,
  )
  batches = list(it)
  assert len(it) == len(batches) == 7  # ceil(103 / 16)
  for batch in batches[:-1]:
    np.testing.assert_array_equal(batch["weights"], np.ones(8, np.float32))
  last = batches[-1]  # Global rows 96..102: process 1 holds positions 8..15, all padding.
  assert last["weights"].dtype == np.float32 and last["weights"].sum() == 0
  assert last["input_ids"].shape == (8, 6) and not last["input_ids"].any()
  it0 = BatchIterator(
    features,
    16,
    shuffle=False,
    num_epochs=1,
    drop_remainder=False,
    process_count=2,
    process_index=0,
  )
  last0 = list(it0)[-1]
  np.testing.assert_array_equal(last0["weights"], [1] * 7 + [0])
  np.testing.assert_array_equal(last0["index"], [96, 97, 98, 99, 100, 101, 102, 0])
  assert not last0["input_ids"][7].any() and last0["score"][7] == 0
  # Over the processes, every example appears exactly once with weight 1 (shuffled too).
  again = [
    BatchIterator(
      features,
      16,
      shuffle=True,
      seed=1,
      num_epochs=1,
      drop_remainder=False,
      process_count=2,
      process_index=i,
    )
    for i in range(2)
  ]
  real = np.concatenate([b["index"][b["weights"] > 0] for it in again for b in it])
  np.testing.assert_array_equal(np.sort(real), np.arange(N))


def test_epochs_and_length():
  features = make_features()
  it = BatchIterator(features, 10, shuffle=True, num_epochs=2, process_count=1)
  assert len(it) == 10 and len(list(it)) == 20
  assert next(it, None) is None
  forever = BatchIterator(features, 10, shuffle=True, process_count=1)
  assert len(take(forever, 1000)) == 1000


def test_batches_feed_make_array_from_process_local_data():
  import jax
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  devices = np.array(jax.devices())
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  it = BatchIterator(make_features(), 4 * len(devices), shuffle=True, seed=0)
  batch = next(it)
  arrays = {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
  assert arrays["input_ids"].shape == (4 * len(devices), 6)
  np.testing.assert_array_equal(np.asarray(arrays["index"]), batch["index"])


def test_bad_settings_raise_clear_errors():
  features = make_features()
  with pytest.raises(
    ValueError, match="global_batch_size=10 does not divide evenly over process_count=4"
  ):
    BatchIterator(features, 10, shuffle=True, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index must be in"):
    BatchIterator(features, 8, shuffle=True, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="make no full batch"):
    BatchIterator(features, 128, shuffle=True, process_count=1)
  with pytest.raises(ValueError, match="common leading dimension"):
    BatchIterator({"a": np.zeros(3), "b": np.zeros(4)}, 1, shuffle=False, process_count=1)
  with pytest.raises(ValueError, match="global_batch_size must be a positive integer"):
    BatchIterator(features, 0, shuffle=False, process_count=1)
  with pytest.raises(ValueError, match="seed"):
    BatchIterator(features, 8, shuffle=True, seed=-1, process_count=1)
  with pytest.raises(ValueError, match="'weights'"):
    BatchIterator({"weights": np.ones(4)}, 2, shuffle=False, drop_remainder=False, process_count=1)


def test_bad_state_raises_clear_errors():
  features = make_features()
  it = BatchIterator(features, 10, shuffle=True, seed=1, process_count=1)
  take(it, 3)
  state = it.get_state()
  for key, value, message in [
    ("seed", 2, "saved with seed=2, this iterator has seed=1"),
    ("num_examples", 50, "saved with num_examples=50"),
    ("global_batch_size", 20, "saved with global_batch_size=20"),
    ("shuffle", False, "saved with shuffle=False"),
    ("kind", "StreamBatchIterator", "not a BatchIterator state"),
    ("step", 10, "outside an epoch of 10 batches"),
    ("step", -1, "negative position"),
    ("epoch", "two", "integer 'epoch' and 'step'"),
  ]:
    fresh = BatchIterator(features, 10, shuffle=True, seed=1, process_count=1)
    with pytest.raises(ValueError, match=message):
      fresh.set_state({**state, key: value})
  with pytest.raises(ValueError, match="lacks 'seed'"):
    fresh.set_state({k: v for k, v in state.items() if k != "seed"})
  bounded = BatchIterator(features, 10, shuffle=True, seed=1, num_epochs=2, process_count=1)
  with pytest.raises(ValueError, match="past num_epochs=2"):
    bounded.set_state({**state, "epoch": 2, "step": 1})


def counting_stream(sizes):
  """epoch -> `sizes[epoch % len(sizes)]` examples tagged with the epoch."""

  def examples(epoch):
    for i in range(sizes[epoch % len(sizes)]):
      yield {"epoch": np.int32(epoch), "i": np.int32(i), "x": np.full(3, i, np.float32)}

  return examples


@pytest.mark.parametrize("consumed", [0, 2, 4, 5, 9])
def test_stream_exact_resume_across_epochs(consumed):
  kwargs = dict(batch_size=4, num_epochs=3, shuffle_buffer_size=7, seed=2, drop_remainder=False)
  uninterrupted = list(StreamBatchIterator(counting_stream([17, 10]), **kwargs))
  assert len(uninterrupted) == 5 + 3 + 5
  first = StreamBatchIterator(counting_stream([17, 10]), **kwargs)
  head = take(first, consumed)
  state = json.loads(json.dumps(first.get_state()))
  resumed = StreamBatchIterator(counting_stream([17, 10]), **kwargs)
  resumed.set_state(state)
  assert_batches_equal(head + list(resumed), uninterrupted)


def test_stream_shuffles_within_each_epoch_and_pads():
  it = StreamBatchIterator(
    counting_stream([17]), 4, num_epochs=2, shuffle_buffer_size=8, seed=0, drop_remainder=False
  )
  batches = list(it)
  assert len(batches) == 10  # ceil(17 / 4) per epoch.
  orders = []
  for epoch in range(2):
    epoch_batches = batches[5 * epoch : 5 * (epoch + 1)]
    assert all((b["epoch"] == epoch)[b["weights"] > 0].all() for b in epoch_batches)
    seen = np.concatenate([b["i"][b["weights"] > 0] for b in epoch_batches]).tolist()
    assert sorted(seen) == list(range(17)) and seen != list(range(17))  # All, shuffled.
    orders.append(seen)
  assert orders[0] != orders[1]  # Each epoch has its own shuffle seed.
  last = batches[4]
  np.testing.assert_array_equal(last["weights"], [1, 0, 0, 0])
  assert last["x"].shape == (4, 3) and not last["x"][1:].any()
  dropped = list(StreamBatchIterator(counting_stream([17]), 4, num_epochs=1))
  assert len(dropped) == 4 and "weights" not in dropped[0]


def test_stream_errors():
  with pytest.raises(ValueError, match="made no batch of 4 examples"):
    next(StreamBatchIterator(counting_stream([3]), 4))

  def ragged(epoch):
    yield {"x": np.zeros(3)}
    yield {"x": np.zeros(4)}

  with pytest.raises(
    ValueError, match=r"epoch 0, batch 0: example 1 of the batch: 'x' has shape \(4,\), not \(3,\)"
  ):
    next(StreamBatchIterator(ragged, 2))
  it = StreamBatchIterator(counting_stream([10]), 4, seed=1)
  with pytest.raises(ValueError, match="saved with seed=3"):
    it.set_state({**it.get_state(), "seed": 3})
  with pytest.raises(ValueError, match="past the end of epoch 0"):
    it.set_state({**it.get_state(), "step": 5})
  with pytest.raises(ValueError, match="not a StreamBatchIterator state"):
    it.set_state(BatchIterator(make_features(), 4, shuffle=False, process_count=1).get_state())
