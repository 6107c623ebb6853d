"""`mobilebert_jax.checkpointing` is `mobilebert_jax.train.checkpointing` (its home until 0.1)."""

import sys

from mobilebert_jax.train import checkpointing

sys.modules[__name__] = checkpointing
