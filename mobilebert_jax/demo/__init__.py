"""Files of the offline demo shipped with the package (see `make_data.py`, which writes them).

`python -m mobilebert_jax.finetune --task=squad --demo --workdir=DIR` trains a small
MobileBERT-shaped model from scratch on `train.json` and evaluates it on `dev.json`, whose
entities never occur in the training set.
"""

import os

DEMO_DIR = os.path.dirname(os.path.abspath(__file__))
VOCAB_FILE = os.path.join(DEMO_DIR, "vocab.txt")
TRAIN_FILE = os.path.join(DEMO_DIR, "train.json")
DEV_FILE = os.path.join(DEMO_DIR, "dev.json")
