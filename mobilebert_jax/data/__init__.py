"""Task input pipelines: raw datasets to fixed-shape NumPy features.

One module per job (sources, pretraining documents, SQuAD, ...); import the module you need,
e.g. `from mobilebert_jax.data import squad`. Nothing is imported here, so reading one task does
not pull in the optional dependencies (TensorFlow Datasets) of another.
"""
