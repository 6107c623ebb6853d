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

from mobilebert_jax.configs import common


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
