r"""SWAG multiple-choice fine-tuning of MobileBERT.

Commands:

  # data_dir holds train.csv and val.csv (and test.csv with predict_test) from rowanz/swagaf.
  python -m mobilebert_jax.finetune --task=swag --workdir=/tmp/swag \
    --config.data.data_dir=/data/swagaf/data

Expected score: the MobileBERT paper reports no SWAG number. For scale, BERT-base reaches about
81.6% dev accuracy (BERT paper); measure several seeds and record them in `experiments/`.

Recipe: lr 5e-5, batch 32, 3 epochs, max_seq_length 128 per choice, warm-up 10%, AdamW, dropout
0.1 before the per-choice scorer.

Variants: `size=tiny`.
"""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
  "mobilebert_configs_common", pathlib.Path(__file__).with_name("common.py")
)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def get_config(arg=None):
  """The SWAG config; see the module docstring."""
  arg = common.parse_arg(arg, size="")
  config = common.base_config("swag")
  config.model.classifier_dropout = 0.1
  config.data.test_file = common.placeholder(str)
  config.data.predict_test = False
  config.eval.batch_size = 64
  common.apply_size(config, arg.size)
  return config
