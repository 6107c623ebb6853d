r"""CoNLL-2003 English NER fine-tuning of MobileBERT (token classification).

Commands:

  # data_dir holds eng.train / eng.testa / eng.testb (or train.txt / valid.txt / test.txt).
  python -m mobilebert_jax.finetune --task=conll2003 --workdir=/tmp/conll \
    --config.data.data_dir=/data/conll2003 --config.data.eval_test=true
  # From TFDS.
  python -m mobilebert_jax.finetune --task=conll2003 --workdir=/tmp/conll \
    --config.data.source=tfds

Expected score: the MobileBERT paper reports no CoNLL-2003 number. For scale, BERT-base reaches
about 95 dev / 91-92 test entity F1 (conlleval) with this head; measure several seeds and record
them in `experiments/`. Metrics here are fractions (0.95, not 95).

Recipe: the GLUE settings of docs/training.md §glue (lr 5e-5, batch 32, 3 epochs, max_seq_length
128, warm-up 10%, AdamW), first-WordPiece labelling, dropout 0.1 before the classifier.

Variants: `size=tiny`.
"""

from mobilebert_jax.configs import common


def get_config(arg=None):
  """The CoNLL-2003 config; see the module docstring."""
  arg = common.parse_arg(arg, size="")
  config = common.base_config("conll2003")
  config.model.classifier_dropout = 0.1
  config.data.test_file = common.placeholder(str)
  config.data.eval_test = False
  config.eval.batch_size = 128
  common.apply_size(config, arg.size)
  return config
