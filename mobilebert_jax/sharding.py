"""`mobilebert_jax.sharding` is `mobilebert_jax.train.sharding` (its home until 0.1)."""

import sys

from mobilebert_jax.train import sharding

sys.modules[__name__] = sharding
