"""Test set-up: 8 fake CPU devices and quiet TensorFlow, before JAX or TF start."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Tests must never reach the network: hub ids fail fast with a clear error instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests never share JAX's persistent compilation cache with the user's runs (or with each
# other: concurrent writers can tear an entry); the cache's own test turns it on explicitly.
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")
os.environ.setdefault("TFDS_DATA_DIR", os.path.join(os.path.dirname(__file__), ".tfds_unused"))

import jax
import pytest


@pytest.fixture(scope="module")
def fast_compiles():
  """Tiny models compile several times faster without XLA's optimisation passes.

  Modules that train or run tiny models use it with
  `pytestmark = pytest.mark.usefixtures("fast_compiles")`; numerics are unchanged in what the
  tests compare (each compares runs made under the same setting).
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
