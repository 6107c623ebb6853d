"""One short `train_and_evaluate` per training regime, each over `mobilebert_jax.train`."""
