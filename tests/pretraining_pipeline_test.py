"""The Grain pretraining pipeline: ArrayRecord shards, seeded batches, host slices, exact resume.

Bounded memory while writing (a pool of documents, one example in flight) is not tested: showing
it would take a corpus larger than memory. It follows from the streaming code that writes.
"""

import itertools
import json
import random

import numpy as np
import pytest

from mobilebert_jax.data import pretraining
from mobilebert_jax.data import pretraining_pipeline as pp
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.data.pretraining_documents import read_text_documents
from mobilebert_jax.data.pretraining_instances import PretrainingConfig
from mobilebert_jax.tokenization import WordPieceTokenizer

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_DOCS = 12
CONFIG = PretrainingConfig(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
SEED = 7
POOL = 4


def write_corpus(root, num_docs=NUM_DOCS):
  """Two text files in BERT's format whose words `d{d}s{s}` name document and sentence."""
  rng = random.Random(0)
  documents = [
    [" ".join([f"d{d}s{s}"] * rng.randint(2, 8)) for s in range(rng.randint(2, 6))]
    for d in range(num_docs)
  ]
  words = [f"d{d}s{s}" for d in range(num_docs) for s in range(6)]
  (root / "vocab.txt").write_text("\n".join(SPECIALS + words) + "\n", encoding="utf-8")
  paths = [root / "part-0.txt", root / "part-1.txt"]
  half = num_docs // 2
  for path, docs in zip(paths, (documents[:half], documents[half:]), strict=True):
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
  tokenizer = WordPieceTokenizer.from_file(str(root / "vocab.txt"), do_lower_case=True)
  return tokenizer, paths


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  tokenizer, paths = write_corpus(root)
  out = root / "train-32"
  manifest = pp.write_instances(
    str(root / "part-*.txt"), tokenizer, CONFIG, out, seed=SEED, shards=3, pool_size=POOL
  )
  return tokenizer, paths, out, manifest


def stream_examples(tokenizer, paths, config=CONFIG):
  return list(
    pretraining.iter_pretraining_examples(
      read_text_documents(paths, tokenizer), tokenizer, config, seed=SEED, pool_size=POOL
    )
  )


def stack(examples):
  return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def assert_batches_equal(got, want):
  assert len(got) == len(want)
  for index, (a, b) in enumerate(zip(got, want, strict=True)):
    assert a.keys() == b.keys(), index
    for key in b:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {index}, {key}")


def take(iterator, count):
  return list(itertools.islice(iterator, count))


def test_shards_hold_the_instance_stream_in_order(corpus, tmp_path):
  tokenizer, paths, out, manifest = corpus
  want = stream_examples(tokenizer, paths)
  assert manifest["num_examples"] == len(want) > 40
  assert [s["num_examples"] for s in manifest["shards"]] == [
    len(range(i, len(want), 3)) for i in range(3)
  ]
  assert manifest["provenance"]["source_files"] == [str(p) for p in paths]
  assert manifest["config"]["max_seq_length"] == 32
  shards = pp.InstanceShards(out)
  assert len(shards) == len(want)
  got = [shards[i] for i in range(len(want))]
  assert_batches_equal(got, want)  # Record i is example i, whatever the shard count.
  for index in (0, 5, len(want) - 1):
    assert_batches_equal([shards[index]], [want[index]])
    assert shards[index]["next_sentence_labels"].shape == ()
  # One shard, the same examples; two directories read as their concatenation.
  single = pp.write_examples(want, tmp_path / "one", config=CONFIG, shards=1)
  assert single["num_examples"] == len(want)
  both = pp.InstanceShards([out, tmp_path / "one"])
  assert len(both) == 2 * len(want)
  assert_batches_equal([both[len(want) + 4]], [want[4]])


def test_records_are_compact_fixed_int32(corpus):
  tokenizer, paths, _, _ = corpus
  example = stream_examples(tokenizer, paths)[0]
  record = pp.encode_example(example)
  assert len(record) == 4 * (3 + 2 * 32 + 2 * 5)
  assert_batches_equal([pp.decode_example(record, 32, 5)], [example])
  with pytest.raises(ValueError, match="does not hold an example of max_seq_length=64"):
    pp.decode_example(record, 64, 5)
  broken = dict(example, attention_mask=1 - example["attention_mask"])
  with pytest.raises(ValueError, match="leading ones"):
    pp.encode_example(broken)


def test_same_seed_same_batches_other_seed_other_order(corpus):
  _, _, out, manifest = corpus
  n, g = manifest["num_examples"], 8

  def run(seed):
    with pp.pretraining_batches(
      out, g, seed=seed, shuffle=True, num_epochs=2, process_index=0, process_count=1
    ) as batches:
      return list(batches)

  first, again, other = run(3), run(3), run(4)
  assert len(first) == 2 * (n // g) and first[0]["input_ids"].shape == (g, 32)
  assert_batches_equal(again, first)
  assert not np.array_equal(first[0]["input_ids"], other[0]["input_ids"])
  # Each epoch is a permutation (less the dropped remainder), and a different one.
  per_epoch = n // g
  epochs = [first[:per_epoch], first[per_epoch:]]
  rows = [np.concatenate([b["input_ids"] for b in epoch]) for epoch in epochs]
  examples = pp.InstanceShards(out)
  ids = {tuple(examples[i]["input_ids"]): i for i in range(n)}
  order = [[ids[tuple(r)] for r in epoch] for epoch in rows]
  assert all(len(set(o)) == per_epoch * g for o in order)
  assert order[0] != order[1]


def test_exact_resume_inside_and_across_epoch_boundaries(corpus):
  _, _, out, manifest = corpus
  n, g = manifest["num_examples"], 8
  per_epoch = n // g
  kwargs = dict(seed=1, shuffle=True, num_epochs=3, process_index=0, process_count=1)
  uninterrupted = list(pp.pretraining_batches(out, g, **kwargs))
  assert len(uninterrupted) == 3 * per_epoch
  for k in (2, per_epoch, per_epoch + 1, 3 * per_epoch):  # Inside, at and past the boundary.
    first = pp.pretraining_batches(out, g, **kwargs)
    head = take(first, k)
    state = json.loads(json.dumps(first.get_state()))
    assert state["grain"] == {"next_index": k}
    assert (state["epoch"], state["step"]) == divmod(k, per_epoch)
    first.close()
    resumed = pp.pretraining_batches(out, g, **kwargs)
    resumed.set_state(state)
    assert_batches_equal(head + list(resumed), uninterrupted)


def test_host_slices_make_the_global_batch_for_any_host_count(corpus):
  _, _, out, _ = corpus
  g, steps = 8, 9  # More than one epoch (the corpus has fewer than 9 batches of 8).
  kwargs = dict(seed=2, shuffle=True, num_epochs=None)
  global_batches = take(
    pp.pretraining_batches(out, g, process_index=0, process_count=1, **kwargs), steps
  )
  for hosts in (1, 2, 4):
    iterators = [
      pp.pretraining_batches(out, g, process_index=p, process_count=hosts, **kwargs)
      for p in range(hosts)
    ]
    per_host = [take(it, steps) for it in iterators]
    assert per_host[0][0]["input_ids"].shape == (g // hosts, 32)
    joined = [
      {key: np.concatenate([per_host[p][s][key] for p in range(hosts)]) for key in batch}
      for s, batch in enumerate(per_host[0])
    ]
    assert_batches_equal(joined, global_batches)
    # The state is global: the same on every host (our checkpoints require it).
    states = [it.get_state() for it in iterators]
    assert all(state == states[0] for state in states)
  # A state saved by one host restores on another host count: the rest of the global stream.
  single = pp.pretraining_batches(out, g, process_index=0, process_count=1, **kwargs)
  take(single, 3)
  host = pp.pretraining_batches(out, g, process_index=1, process_count=2, **kwargs)
  host.set_state(single.get_state())
  for step in range(3, steps):
    want = {k: v[g // 2 :] for k, v in global_batches[step].items()}
    assert_batches_equal([next(host)], [want])


def test_a_host_reads_only_its_rows(corpus):
  tokenizer, paths, _, _ = corpus
  features = stack(stream_examples(tokenizer, paths))

  read = set()

  class Recording(pp.InMemoryExamples):
    def __getitem__(self, index):
      read.add(int(index))
      return super().__getitem__(index)

  source = Recording(features)
  kwargs = dict(seed=0, shuffle=False, num_epochs=1, process_index=1, process_count=4)
  batches = list(pp.pretraining_batches(source, 8, **kwargs))
  assert len(batches) == len(source) // 8
  assert read == {8 * step + row for step in range(len(batches)) for row in (2, 3)}


def test_in_memory_and_shard_sources_give_identical_batches(corpus):
  tokenizer, paths, out, _ = corpus
  features = stack(stream_examples(tokenizer, paths))
  kwargs = dict(seed=5, shuffle=True, num_epochs=2, process_index=1, process_count=2)
  from_memory = list(pp.pretraining_batches(features, 8, **kwargs))
  assert_batches_equal(list(pp.pretraining_batches(out, 8, **kwargs)), from_memory)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_unshuffled_batches_of_in_memory_features_equal_batch_iterator(corpus, drop_remainder):
  """The documented relation to `pretraining`'s in-memory path: its features, batched unchanged."""
  tokenizer, paths, _, _ = corpus
  features = pretraining.pretraining_features_from_files(paths, tokenizer, CONFIG, seed=SEED)
  kwargs = dict(num_epochs=2, drop_remainder=drop_remainder, process_index=1, process_count=2)
  want = list(BatchIterator(features, 12, shuffle=False, **kwargs))
  got = list(pp.pretraining_batches(features, 12, seed=0, shuffle=False, **kwargs))
  assert_batches_equal(got, want)


def test_eval_pass_sees_every_example_once_with_weights(corpus):
  _, _, out, manifest = corpus
  n, g = manifest["num_examples"], 16
  assert n % g  # The last batch is partial, so padding shows.
  kwargs = dict(seed=0, shuffle=False, num_epochs=1, drop_remainder=False, process_count=2)
  hosts = [list(pp.pretraining_batches(out, g, process_index=p, **kwargs)) for p in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == -(-n // g)
  rows = {
    key: np.concatenate([np.concatenate([h[s][key] for h in hosts]) for s in range(len(hosts[0]))])
    for key in hosts[0][0]
  }
  weights = rows.pop("weights")
  np.testing.assert_array_equal(weights, np.arange(len(weights)) < n)
  examples = pp.InstanceShards(out)
  want = stack([examples[i] for i in range(n)])
  for key, value in want.items():
    np.testing.assert_array_equal(rows[key][:n], value)
    assert not rows[key][n:].any()  # Padding rows are zeros (and score nothing).


def test_phased_batches_switch_sequence_length_and_resume(corpus, tmp_path):
  tokenizer, paths, out_32, _ = corpus
  config_64 = PretrainingConfig(max_seq_length=64, max_predictions_per_seq=10, dupe_factor=2)
  out_64 = tmp_path / "train-64"
  pp.write_instances(paths, tokenizer, config_64, out_64, seed=SEED, shards=2, pool_size=POOL)
  assert pp.phase_switch_step(10) == 9 and pp.phase_switch_step(100, 0.5) == 50

  def phased():
    kwargs = dict(seed=0, shuffle=True, process_index=0, process_count=1)
    phases = [
      pp.pretraining_batches(out_32, 8, **kwargs),
      pp.pretraining_batches(out_64, 4, **kwargs),
    ]
    return pp.PhasedBatches(phases, switch_steps=[7])

  uninterrupted = take(phased(), 12)
  assert [b["input_ids"].shape for b in uninterrupted] == [(8, 32)] * 7 + [(4, 64)] * 5
  for k in (3, 7, 9):
    first = phased()
    head = take(first, k)
    state = json.loads(json.dumps(first.get_state()))
    resumed = phased()
    resumed.set_state(state)
    assert resumed.phase == int(k >= 7)
    assert_batches_equal(head + take(resumed, 12 - k), uninterrupted)
  with pytest.raises(ValueError, match="switch_steps"):
    phased().set_state({**state, "switch_steps": [5]})
  with pytest.raises(ValueError, match="2 phases need 1 switch steps"):
    pp.PhasedBatches([iter([]), iter([])], switch_steps=[3, 5])
  with pytest.raises(ValueError, match="increasing and positive"):
    pp.PhasedBatches([iter([]), iter([]), iter([])], switch_steps=[5, 5])


def test_bad_inputs_raise_clear_errors(corpus, tmp_path):
  tokenizer, paths, out, _ = corpus
  with pytest.raises(FileExistsError, match="already holds pretraining instances"):
    pp.write_instances(paths, tokenizer, CONFIG, out, seed=SEED, shards=2)
  with pytest.raises(FileNotFoundError, match="no text file matches"):
    pp.write_instances(str(tmp_path / "*.txt"), tokenizer, CONFIG, tmp_path / "x", seed=1, shards=1)
  with pytest.raises(FileNotFoundError, match=r"has no instances\.json"):
    pp.InstanceShards(tmp_path)
  with pytest.raises(ValueError, match="max_seq_length=64"):
    example = stream_examples(tokenizer, paths)[0]
    pp.write_examples(
      [example], tmp_path / "y", config=PretrainingConfig(max_seq_length=64), shards=1
    )
  with pytest.raises(ValueError, match="does not divide evenly"):
    pp.pretraining_batches(out, 6, seed=0, shuffle=True, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="make no full batch"):
    pp.pretraining_batches(out, 4096, seed=0, shuffle=True, process_index=0, process_count=1)
  kwargs = dict(shuffle=True, num_epochs=1, process_index=0, process_count=1)
  state = pp.pretraining_batches(out, 8, seed=1, **kwargs).get_state()
  with pytest.raises(ValueError, match="saved with seed=1, this iterator has seed=2"):
    pp.pretraining_batches(out, 8, seed=2, **kwargs).set_state(state)
  with pytest.raises(ValueError, match="past num_epochs=1"):
    pp.pretraining_batches(out, 8, seed=1, **kwargs).set_state(
      {
        **state,
        "epoch": 2,
        "step": 0,
        "grain": {"next_index": 2 * (len(pp.InstanceShards(out)) // 8)},
      }
    )
