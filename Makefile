# The two commands of the README's Quickstart. Each creates its own virtual environment on first
# use and installs what it needs from pyproject.toml, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/mobilebert_demo

.PHONY: demo test lint

# Core install only: JAX, Flax, Optax, Orbax, tokenizers.
$(VENV)/.core-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e .
	touch $@

# Everything the test suite runs side by side: PyTorch (CPU wheel first, so the extras do not
# pull a CUDA build), transformers, TensorFlow and the TF2 Model Garden.
$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[torch,tf,reference,export,demo,test]"
	touch $(VENV)/.core-installed $@

demo: $(VENV)/.core-installed
	$(PY) -m mobilebert_jax.finetune --task=squad --demo --workdir=$(WORKDIR)

test: $(VENV)/.test-installed
	$(PY) -m pytest -n 2 tests

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
