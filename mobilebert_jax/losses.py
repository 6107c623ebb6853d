"""`mobilebert_jax.losses` is `mobilebert_jax.train.losses` (its home until 0.1)."""

import sys

from mobilebert_jax.train import losses

sys.modules[__name__] = losses
