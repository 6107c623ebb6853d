"""Official task metrics, reimplemented to reproduce the official scripts' numbers.

Import the module you need, e.g. `from mobilebert_jax.metrics import squad`.
"""
