"""`mobilebert_jax.optim` is `mobilebert_jax.train.optim` (its home until 0.1)."""

import sys

from mobilebert_jax.train import optim

sys.modules[__name__] = optim
