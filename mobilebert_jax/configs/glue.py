r"""GLUE fine-tuning of MobileBERT (the recipe of the original TF1 `run_classifier.py`).

Commands:

  # RTE from the released checkpoint; data_dir is glue_data/ (or glue_data/RTE).
  python -m mobilebert_jax.finetune --task=glue/rte --workdir=/tmp/rte \
    --config.data.data_dir=/data/glue_data
  # MNLI from TFDS, then predict both test sets for the GLUE server.
  python -m mobilebert_jax.finetune --task=glue/mnli --workdir=/tmp/mnli \
    --config.data.source=tfds --config.data.predict_test=true
  # The same through this file directly.
  python -m mobilebert_jax.finetune --config=configs/glue.py:task=stsb --workdir=...

Expected scores (paper, Table 4; GLUE *test server*, so dev numbers differ): MobileBERT CoLA 50.5,
SST-2 92.8, MRPC 88.8, STS-B 84.4, QQP 70.2, MNLI-m/mm 83.3/82.6, QNLI 90.6, RTE 66.2
(GLUE score 77.7); MobileBERT_TINY 46.7, 91.7, 87.9, 80.1, 68.9, 81.5/81.6, 89.5, 65.1. The
paper searched hyper-parameters per task and the small tasks (CoLA, MRPC, RTE, STS-B) vary by
about 3 points from run to run: report the mean and spread of several `--config.seed` values.

Recipe (docs/training.md §glue): lr 5e-5, batch 32, 3 epochs, max_seq_length 128, warm-up 10%, AdamW
(weight decay 0.01, clip 1.0), dropout 0.1 before the classifier on the pooled first token.

Variants: `task=cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte|wnli` (GLUE spellings such as `SST-2` work
too), `size=tiny`.
"""

from mobilebert_jax.configs import common

GLUE_TASKS = ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")


def get_config(arg=None):
  """The config of one GLUE task; see the module docstring for the variants."""
  arg = common.parse_arg(arg, task="", size="")
  task = arg.task.lower().replace("-", "").replace("_", "")
  if task not in GLUE_TASKS:
    raise ValueError(f"configs/glue.py needs task=NAME, one of {GLUE_TASKS}; got {arg.task!r}")
  config = common.base_config(f"glue/{task}")
  config.model.classifier_dropout = 0.1
  config.data.predict_test = False
  config.eval.batch_size = 128
  common.apply_size(config, arg.size)
  return config
