"""Orbax checkpoints: round trip, retention, atomicity, resharding, params-only loading.

Real Orbax directories under pytest's tmp_path; states live on the 8 fake CPU devices of
conftest.py. Nothing here compiles a train step: states are built from abstract shapes and
filled with random values, which makes every leaf distinctive.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from resume_worker import CONFIG, GLOBAL_BATCH, make_features, make_optimizer

from mobilebert_jax import (
  MobileBertConfig,
  MobileBertForPreTraining,
  MobileBertForQuestionAnswering,
  abstract_params,
)
from mobilebert_jax.data.batching import BatchIterator
from mobilebert_jax.train import checkpointing as ckpt_lib
from mobilebert_jax.train import sharding as shd
from mobilebert_jax.train.train_state import TrainState

TRAIN_CONFIG = {"learning_rate": 1e-2, "batch_size": 8, "warmup": None, "layers": (1, 2)}


def random_like(abstract, seed: int):
  """Random values (keys: fresh keys) with the shapes, dtypes and shardings of `abstract`."""
  leaves, treedef = jax.tree.flatten(abstract)
  rng = np.random.default_rng(seed)
  out = []
  for leaf in leaves:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      value = jax.random.key(int(rng.integers(1 << 30)))
      out.append(jax.device_put(value, leaf.sharding) if leaf.sharding else value)
      continue
    if jnp.issubdtype(leaf.dtype, jnp.integer):
      host = rng.integers(0, 1000, leaf.shape).astype(leaf.dtype)
    else:
      host = rng.standard_normal(leaf.shape).astype(leaf.dtype)
    out.append(jax.device_put(host, leaf.sharding) if leaf.sharding else host)
  return jax.tree.unflatten(treedef, out)


def sharded_state(mesh_shape=(2, 4), preset="fsdp", step=7, seed=0):
  model = MobileBertForQuestionAnswering(CONFIG)
  mesh = shd.make_mesh(mesh_shape)
  abstract = shd.abstract_train_state(model, make_optimizer(), mesh, shd.logical_axis_rules(preset))
  state = random_like(abstract, seed)
  return state.replace(step=jax.device_put(jnp.int32(step), abstract.step.sharding)), abstract


def assert_states_equal(got, want):
  got_leaves, got_def = jax.tree.flatten(got)
  want_leaves, want_def = jax.tree.flatten(want)
  assert got_def == want_def
  for a, b in zip(got_leaves, want_leaves, strict=True):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = jax.random.key_data(a), jax.random.key_data(b)
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def manager(directory, **kwargs):
  kwargs.setdefault("model_config", CONFIG)
  kwargs.setdefault("train_config", TRAIN_CONFIG)
  return ckpt_lib.CheckpointManager(directory, **kwargs)


def test_round_trip_restores_state_iterator_and_metadata(tmp_path):
  state, abstract = sharded_state()
  iterator = BatchIterator(make_features(), GLOBAL_BATCH, shuffle=True, seed=3)
  for _ in range(7):  # into the second epoch (5 batches per epoch)
    next(iterator)
  with manager(tmp_path, save_interval_steps=7) as ckpt:
    assert ckpt.save(7, state, data_state=iterator.get_state(), metrics={"loss": jnp.float32(2.5)})
  expected_next = next(iterator)

  with manager(tmp_path) as ckpt:
    assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
    restored = ckpt.restore(abstract)
  assert restored.step == 7
  assert isinstance(restored.state, TrainState)
  assert_states_equal(restored.state, state)
  kernel = restored.state.params["mobilebert"]["encoder"]["layers"]["ffn_0"]["intermediate"]
  assert kernel["kernel"].sharding.spec == P(None, None, "fsdp")
  assert restored.state.opt_state["adam"].count.dtype == jnp.int32

  fresh = BatchIterator(make_features(), GLOBAL_BATCH, shuffle=True, seed=3)
  fresh.set_state(restored.data_state)
  got_next = next(fresh)
  for key in expected_next:
    np.testing.assert_array_equal(got_next[key], expected_next[key])

  meta = restored.metadata
  assert meta["format"] == ckpt_lib.FORMAT_NAME and meta["step"] == 7
  assert meta["model_config"] == json.loads(json.dumps(CONFIG.to_dict()))
  rebuilt = MobileBertConfig.from_dict(meta["model_config"], source="hf")
  assert rebuilt.to_dict() == CONFIG.to_dict()
  assert meta["train_config"] == {
    "learning_rate": 1e-2,
    "batch_size": 8,
    "warmup": None,
    "layers": [1, 2],
  }
  assert meta["metrics"] == {"loss": 2.5}
  assert meta["mesh"] == {"data": 2, "fsdp": 4} and meta["process_count"] == 1
  assert meta["code"]["package_version"] == "0.1.0"
  head = subprocess.run(
    ["git", "rev-parse", "HEAD"],
    capture_output=True,
    text=True,
    cwd=shd.__file__.rsplit("/", 2)[0],
    check=False,
  )
  if head.returncode == 0:
    assert meta["code"]["git_sha"] == head.stdout.strip()
  assert set(meta["versions"]) == {"jax", "flax", "optax", "orbax_checkpoint"}
  # The metadata is plain JSON on disk, readable without this package.
  on_disk = json.loads((tmp_path / "7" / "metadata" / "metadata").read_text())
  assert on_disk["model_config"]["hidden_size"] == 32


@pytest.mark.parametrize("mesh_shape,preset", [((8, 1), "dp"), ((1, 1), "dp")])
def test_restore_onto_a_different_mesh(tmp_path, mesh_shape, preset):
  state, _ = sharded_state((2, 4), "fsdp")
  with manager(tmp_path) as ckpt:
    ckpt.save(7, state, force=True)
  devices = jax.devices()[: mesh_shape[0] * mesh_shape[1]]
  mesh = shd.make_mesh(mesh_shape, devices=devices)
  target = shd.abstract_train_state(
    MobileBertForQuestionAnswering(CONFIG), make_optimizer(), mesh, shd.logical_axis_rules(preset)
  )
  with manager(tmp_path) as ckpt:
    restored = ckpt.restore(target)
  assert_states_equal(restored.state, state)
  for got, want in zip(jax.tree.leaves(restored.state), jax.tree.leaves(target), strict=True):
    assert got.sharding == want.sharding
  assert {d for x in jax.tree.leaves(restored.state) for d in x.devices()} == set(devices)


def small_state(step: int, width: int = 4) -> TrainState:
  return TrainState(
    step=jnp.int32(step),
    params={"w": jnp.full((width,), float(step))},
    opt_state=(),
    rng=jax.random.key(step),
  )


def test_keep_last_n_plus_the_best_survives_restarts(tmp_path):
  f1 = {2: 91.0, 4: 80.0, 5: 85.0}
  with manager(tmp_path, save_interval_steps=1, max_to_keep=2, best_metric="f1") as ckpt:
    for step in range(1, 7):
      metrics = {"f1": f1[step], "loss": 1.0} if step in f1 else None
      assert ckpt.save(step, small_state(step), metrics=metrics)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 5, 6]
    assert ckpt.best_step() == 2
  # Orbax re-reads the metrics, so the best checkpoint stays protected after a restart.
  with manager(tmp_path, save_interval_steps=1, max_to_keep=2, best_metric="f1") as ckpt:
    assert ckpt.best_step() == 2
    for step in (7, 8):
      ckpt.save(step, small_state(step), metrics={"f1": 50.0} if step == 7 else None)
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 7, 8]
    assert ckpt.metadata(2)["metrics"] == {"f1": 91.0, "loss": 1.0}
    restored = ckpt.restore(small_state(0), step=2)
    np.testing.assert_array_equal(restored.state.params["w"], np.full((4,), 2.0))
    with pytest.raises(ValueError, match="lack the tracked metric 'f1'"):
      ckpt.save(9, small_state(9), metrics={"loss": 1.0})


def test_keep_best_in_min_mode(tmp_path):
  loss = {1: 3.0, 2: 1.0, 3: 2.0, 4: 4.0}
  with manager(
    tmp_path, save_interval_steps=1, max_to_keep=1, best_metric="loss", best_mode="min"
  ) as ckpt:
    for step in range(1, 5):
      ckpt.save(step, small_state(step), metrics={"loss": loss[step]})
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [2, 4] and ckpt.best_step() == 2


def test_save_schedule_force_and_checks(tmp_path):
  with manager(tmp_path, save_interval_steps=3) as ckpt:
    assert not ckpt.should_save(2) and ckpt.should_save(3)
    assert ckpt.save(2, small_state(2)) is False
    assert ckpt.save(3, small_state(3)) is True
    assert ckpt.save(3, small_state(3), force=True) is False  # already saved: kept as is
    assert ckpt.save(4, small_state(4), force=True) is True
    with pytest.raises(ValueError, match=r"save\(step=6\) got a state whose step is 5"):
      ckpt.save(6, small_state(5))
    ckpt.wait_until_finished()
    assert ckpt.all_steps() == [3, 4]
  with pytest.raises(ValueError, match="max_to_keep"):
    ckpt_lib.CheckpointManager(tmp_path, max_to_keep=0)
  with pytest.raises(ValueError, match="best_mode"):
    ckpt_lib.CheckpointManager(tmp_path, best_metric="f1", best_mode="largest")


def test_interrupted_save_is_never_the_latest(tmp_path):
  with manager(tmp_path, save_interval_steps=1) as ckpt:
    ckpt.save(1, small_state(1))
    ckpt.save(2, small_state(2))
  # What a process killed while writing step 3 leaves behind: Orbax's temporary directory
  # (the rename to "3" is the commit), here with complete-looking contents.
  shutil.copytree(tmp_path / "2", tmp_path / "3.orbax-checkpoint-tmp")
  with manager(tmp_path, read_only=True) as ckpt:
    assert ckpt.all_steps() == [1, 2] and ckpt.latest_step() == 2
  with manager(tmp_path, save_interval_steps=1) as ckpt:
    assert ckpt.latest_step() == 2
    restored = ckpt.restore(small_state(0))
    assert restored.step == 2
    np.testing.assert_array_equal(restored.state.params["w"], np.full((4,), 2.0))
    # The resumed run redoes step 3; the leftover is removed before that save.
    assert ckpt.save(3, small_state(3).replace(params={"w": jnp.full((4,), 33.0)}))
  assert not (tmp_path / "3.orbax-checkpoint-tmp").exists()
  with manager(tmp_path, read_only=True) as ckpt:
    assert ckpt.all_steps() == [1, 2, 3]
    np.testing.assert_array_equal(
      ckpt.restore(small_state(0)).state.params["w"], np.full((4,), 33.0)
    )


def test_restore_errors_are_clear(tmp_path):
  with manager(tmp_path) as ckpt:
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
      ckpt.restore(small_state(0))
    ckpt.save(1, small_state(1), force=True)
    ckpt.wait_until_finished()
    with pytest.raises(FileNotFoundError, match=r"step 5 .* available: \[1\]"):
      ckpt.restore(small_state(0), step=5)
    with pytest.raises(
      ValueError, match=r"mismatches: params/w: checkpoint \(4,\) vs target \(5,\)"
    ):
      ckpt.restore(small_state(0, width=5))
    state = small_state(0)
    with pytest.raises(ValueError, match="missing from the checkpoint: params/extra"):
      ckpt.restore(state.replace(params={**state.params, "extra": jnp.zeros(())}))
    with pytest.raises(ValueError, match="need a sharding"):
      ckpt.restore(state.replace(params={"w": jax.ShapeDtypeStruct((4,), jnp.float32)}))


def test_load_params_into_another_model_class(tmp_path):
  pretraining = MobileBertForPreTraining(CONFIG)
  params = random_like(abstract_params(pretraining), seed=5)
  state = TrainState(step=jnp.int32(11), params=params, opt_state=(), rng=jax.random.key(0))
  with manager(tmp_path) as ckpt:
    ckpt.save(11, state, force=True)

  mesh = shd.make_mesh((2, 4))
  qa = MobileBertForQuestionAnswering(CONFIG)
  qa_shardings = shd.train_state_shardings(
    qa, make_optimizer(), mesh, shd.logical_axis_rules("fsdp")
  ).params
  target = shd.with_shardings(abstract_params(qa), qa_shardings)
  loaded = ckpt_lib.load_params_from_checkpoint(tmp_path, target, subtrees=["mobilebert"])
  assert list(loaded) == ["mobilebert"]
  # The QA encoder has no pooler; the pre-training one's pooler (and `cls`) are not read.
  assert "pooler" in params["mobilebert"] and "pooler" not in loaded["mobilebert"]
  assert jax.tree.structure(loaded["mobilebert"]) == jax.tree.structure(target["mobilebert"])
  for path, leaf in jax.tree_util.tree_leaves_with_path(loaded["mobilebert"]):
    want = params["mobilebert"]
    for key in path:
      want = want[key.key]
    np.testing.assert_array_equal(np.asarray(leaf), want)
  words = loaded["mobilebert"]["embeddings"]["word_embeddings"]
  assert words.sharding.spec == P("fsdp", None)

  # A step directory works too, and nested source paths map onto other target keys.
  enc = ckpt_lib.load_params_from_checkpoint(
    tmp_path / "11",
    {"body": abstract_params(qa)["mobilebert"]["encoder"]},
    subtrees={"body": "mobilebert/encoder"},
  )
  np.testing.assert_array_equal(
    enc["body"]["layers"]["ffn_0"]["output"]["kernel"],
    params["mobilebert"]["encoder"]["layers"]["ffn_0"]["output"]["kernel"],
  )

  with pytest.raises(ValueError, match="no 'qa_outputs'"):
    ckpt_lib.load_params_from_checkpoint(tmp_path, abstract_params(qa), subtrees=["qa_outputs"])
  wider = MobileBertForQuestionAnswering(CONFIG.replace(intermediate_size=64))
  with pytest.raises(
    ValueError,
    match=r"shape mismatches: .*ffn_0/intermediate/kernel: checkpoint \(2, 16, 32\) vs target "
    r"\(2, 16, 64\)",
  ):
    ckpt_lib.load_params_from_checkpoint(tmp_path, abstract_params(wider), subtrees=["mobilebert"])
  with pytest.raises(FileNotFoundError):
    ckpt_lib.load_params_from_checkpoint(tmp_path / "missing", abstract_params(qa))
