"""`python -m mobilebert_jax.export`: see `mobilebert_jax.export.cli`."""

from mobilebert_jax.export.cli import run

if __name__ == "__main__":
  run()
