r"""MLM + NSP pretraining (`python -m mobilebert_jax.pretrain`), of any MobileBERT configuration.

Commands:

  # The IB-BERT_LARGE teacher from scratch on text files (one sentence per line, a blank line
  # between documents), with a held-out split evaluated during and after training.
  python -m mobilebert_jax.pretrain --workdir=/tmp/teacher \
    --config=configs/pretrain.py:teacher \
    --config.tokenizer.vocab_file=/models/mobilebert-uncased/vocab.txt \
    --config.data.train_files='/data/wiki/train-*.txt' \
    --config.data.eval_files=/data/wiki/heldout.txt --config.eval_every_steps=5000
  # BERT-base with BERT's recipe, from a TFDS Wikipedia (each host streams its slice).
  python -m mobilebert_jax.pretrain --workdir=/tmp/bert --config=configs/pretrain.py:bert \
    --config.tokenizer.vocab_file=/models/bert-base-uncased/vocab.txt \
    --config.data.source=tfds --config.data.tfds_name=wikipedia/20230601.en \
    --config.data.tfds_train_split='train[:99%]' --config.data.tfds_eval_split='train[99.9%:]'
  # Continue pretraining the released student (any source `load_pretrained` reads, or a workdir).
  python -m mobilebert_jax.pretrain --workdir=/tmp/more --config=configs/pretrain.py:student \
    --init_from=google/mobilebert-uncased --config.data.train_files='/data/*.txt'
  # The offline smoke test: a 2-block model, a few steps.
  python -m mobilebert_jax.pretrain --workdir=/tmp/tiny --config=configs/pretrain.py:size=tiny \
    --config.tokenizer.vocab_file=mobilebert_jax/demo/vocab.txt --config.data.train_files=...

Variants (after the colon, comma-separated):

  teacher (default)  `ibbert-large`, the IB-BERT_LARGE teacher of the distillation, recipe
                     `teacher`.
  student            `mobilebert-uncased` from scratch, recipe `mobilebert`.
  bert               `bert-base-uncased`, recipe `bert`.
  recipe=NAME        another recipe for the chosen model (below).
  size=tiny          a 2-block model of the chosen kind and a few steps, for tests.

Recipes (docs/training.md §schedules for the TF1 warm-up and decay; `data.phase2_*` is the
two-phase sequence-length schedule, see the README's "Pretraining"):

  bert        Devlin et al. 2019, appendix A.2, and google-research/bert `run_pretraining.py`:
              Adam with weight decay 0.01 (the TF1 `AdamWeightDecayOptimizer`: `adamw_tf1`),
              β 0.9/0.999, ε 1e-6, global clip 1.0, lr 1e-4 warmed up over 10,000 steps and
              decayed linearly to 0, batch 256 for 1,000,000 steps, dropout 0.1; 90 % of the
              steps at 128 tokens (20 predictions), the last 10 % at 512 (80 predictions: the
              README's "about max_seq_length x masked_lm_prob", NVIDIA's phase-2 value).
  lamb        NVIDIA DeepLearningExamples PyTorch/LanguageModeling/BERT
              `scripts/run_pretraining.sh` (after You et al. 2020, LAMB): phase 1 is batch
              65,536 for 7,038 steps at 128 tokens, lr 6e-3 with warm-up over 28.43 % of the
              steps. This config is that phase; phase 2 is a second run that starts from its
              weights (fresh optimizer, as theirs):
                --init_from=PHASE1_WORKDIR --config.batch_size=32768
                --config.num_train_steps=1563 --config.optimizer.learning_rate=4e-3
                --config.optimizer.warmup_proportion=0.128 --config.data.max_seq_length=512
                --config.data.max_predictions_per_seq=80
              The optimizer here is TF1's LAMB (no bias correction, linear decay to 0); NVIDIA's
              FusedLAMB is not the same update, so the numbers are a starting point, not a
              reproduction. Such batches need `--config.grad_accum_steps`.
  mobilebert  the optimizer and data settings of MobileBERT's TF1 README command (the training of
              the released student, docs/training.md §distillation; without the teacher here):
              LAMB, lr 1.5e-3 warmed up over 10,000 steps, linear decay to lr·1e-4, weight decay
              0.01, global clip 1.0, batch 2048, 500,000 steps at 512 tokens, 20 predictions.
  teacher     the paper does not publish how IB-BERT_LARGE was pretrained (only that the
              teacher checkpoint is a plain BERT MLM+NSP checkpoint, written by the TF1
              `run_pretraining.py` without a teacher config). Our choice, unvalidated:
              * the `mobilebert` optimizer (LAMB, lr 1.5e-3, 10,000 warm-up steps, decay to
                lr·1e-4): the one LAMB setting published for this block width (512) and this
                script, and LAMB keeps a 24-block post-LayerNorm model stable at large batches;
              * BERT's length schedule (90 % at 128 tokens / 20 predictions, 10 % at 512 / 80):
                the distillation feeds 512-token sequences, so every position must be trained;
              * batch 4096, the short-sequence batch of that README command's first round;
              * 62,500 steps = 256 M sequences, BERT_LARGE's budget (1 M x 256), since the
                paper sets IB-BERT_LARGE beside BERT_LARGE.

Fields beyond `configs/common.py`'s (whose meanings apply to the fields shared with it):

  task             "pretraining" (names the run in its checkpoints).
  data.source      "files": `train_files` / `eval_files`, comma-separated globs of text files in
                   BERT's format (instances created in memory at start-up); "array_record":
                   `train_dirs` / `eval_dirs`, comma-separated directories of instances written
                   once by `data.pretraining_pipeline.write_instances` (corpora larger than
                   memory, many hosts; `phase2_train_dirs` / `phase2_eval_dirs` hold the
                   second length's); both read by the Grain pipeline. "tfds": `tfds_name`
                   with `tfds_train_split` (streamed, one host) and `tfds_eval_split` (read
                   whole), `tfds_text_field`.
  data.max_seq_length, max_predictions_per_seq, masked_lm_prob, short_seq_prob, dupe_factor,
  whole_word_mask  instance creation (`data.pretraining_instances.PretrainingConfig`; BERT's
                   defaults); `data.seed` seeds it (BERT's 12345), `seed` the batch order.
  data.phase2_seq_length   0: one phase. Else the last `phase2_fraction` of the steps train on
                   instances of that length with `phase2_max_predictions_per_seq` predictions.
  data.shuffle_buffer_size, pool_size   the TFDS stream's shuffle buffer and document pool.
  loss.mlm_denominator_eps   the MLM loss is Σ w·CE / (Σ w + eps) over the masked positions, TF1's
                   normalisation (1e-5; 0 gives transformers' mean over masked tokens).
  num_train_steps  the run length (pretraining counts steps, not epochs).

Train metrics carry `sequences_per_sec`, `tokens_per_sec`, `tflops_per_sec` and `mfu` (model
FLOPs with the MLM head at the masked positions, `train.flops`).
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from mobilebert_jax.configs import common

# Variant -> (preset, default recipe).
MODELS = {
  "teacher": ("ibbert-large", "teacher"),
  "student": ("mobilebert-uncased", "mobilebert"),
  "bert": ("bert-base-uncased", "bert"),
}
RECIPES = ("bert", "lamb", "mobilebert", "teacher")

# `size=tiny` keeps each kind's character: the teacher's single FFN of full width and LayerNorm,
# BERT's plain (bottleneck-free) blocks; the rest is `common.tiny`'s.
_TINY_MODEL = {
  "teacher": {"num_feedforward_networks": 1, "intermediate_size": 64},
  "student": {},
  "bert": {
    "embedding_size": 32,
    "intra_bottleneck_size": 32,
    "num_feedforward_networks": 1,
    "intermediate_size": 64,
  },
}


def get_config(arg=None):
  """The pretraining config; see the module docstring for the variants."""
  arg = common.parse_arg(arg, teacher=False, student=False, bert=False, recipe="", size="")
  chosen = [name for name in MODELS if arg[name]]
  if len(chosen) > 1:
    raise ValueError(f"choose one of teacher, student, bert (got {', '.join(chosen)})")
  kind = chosen[0] if chosen else "teacher"
  preset, default_recipe = MODELS[kind]
  recipe = arg.recipe or default_recipe
  if recipe not in RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")

  config = base_config(preset)
  RECIPE_FUNCTIONS[recipe](config)
  if common.apply_size(config, arg.size):
    config.model.update(_TINY_MODEL[kind])
    config.data.update(
      max_seq_length=32,
      max_predictions_per_seq=5,
      dupe_factor=2,
      phase2_seq_length=0,
      phase2_max_predictions_per_seq=10,
    )
    config.optimizer.update(warmup_steps=None, warmup_proportion=0.1)
    config.grad_accum_steps = 1
  return config


def base_config(preset: str) -> ml_collections.ConfigDict:
  """The fields of every pretraining run (the `bert` recipe's data settings)."""
  config = ml_collections.ConfigDict()
  config.task = "pretraining"
  config.seed = 0
  config.init_from = ""  # from scratch: `model.preset`
  config.model = common.model_config(preset)
  config.tokenizer = ml_collections.ConfigDict(
    {"vocab_file": placeholder(str), "do_lower_case": True}
  )
  config.data = ml_collections.ConfigDict(
    {
      "source": "files",
      "train_files": placeholder(str),
      "eval_files": placeholder(str),
      "train_dirs": placeholder(str),
      "eval_dirs": placeholder(str),
      "phase2_train_dirs": placeholder(str),
      "phase2_eval_dirs": placeholder(str),
      "tfds_name": placeholder(str),
      "tfds_train_split": "train",
      "tfds_eval_split": placeholder(str),
      "tfds_text_field": "text",
      "tfds_data_dir": placeholder(str),
      "tfds_download": True,
      "max_seq_length": 128,
      "max_predictions_per_seq": 20,
      "masked_lm_prob": 0.15,
      "short_seq_prob": 0.1,
      "dupe_factor": 10,
      "whole_word_mask": False,
      "seed": 12345,
      "phase2_seq_length": 0,
      "phase2_fraction": 0.1,
      "phase2_max_predictions_per_seq": 80,
      "shuffle_buffer_size": 10_000,
      "pool_size": 10_000,
    }
  )
  config.loss = ml_collections.ConfigDict({"mlm_denominator_eps": 1e-5})
  config.optimizer = ml_collections.ConfigDict(
    {
      "name": "lamb",
      "learning_rate": 1e-4,
      "warmup_steps": placeholder(int),
      "warmup_proportion": placeholder(float),
      "end_lr_rate": 0.0,
      "weight_decay": 0.01,
      "clip_norm": 1.0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-6,
    }
  )
  config.batch_size = 256
  config.num_train_steps = 1_000_000
  config.grad_accum_steps = 1
  config.eval = ml_collections.ConfigDict({"batch_size": 256})
  config.eval_every_steps = 0
  config.checkpoint_every_steps = 5000
  config.keep_checkpoints = 3
  config.resume_step = placeholder(int)
  config.log_every_steps = 100
  config.mesh_shape = (-1, 1)
  config.sharding_rules = "dp"
  config.progress_bar = True
  config.profile_steps = placeholder(tuple)
  return config


def bert(config: ml_collections.ConfigDict) -> None:
  """BERT's recipe (module docstring)."""
  config.optimizer.update(
    name="adamw_tf1", learning_rate=1e-4, warmup_steps=10_000, end_lr_rate=0.0
  )
  config.batch_size = 256
  config.num_train_steps = 1_000_000
  config.data.update(
    max_seq_length=128,
    max_predictions_per_seq=20,
    phase2_seq_length=512,
    phase2_fraction=0.1,
    phase2_max_predictions_per_seq=80,
  )


def lamb(config: ml_collections.ConfigDict) -> None:
  """Phase 1 of NVIDIA's LAMB recipe (module docstring)."""
  config.optimizer.update(
    name="lamb", learning_rate=6e-3, warmup_proportion=0.2843, end_lr_rate=0.0
  )
  config.batch_size = 65_536
  config.num_train_steps = 7_038
  config.data.update(max_seq_length=128, max_predictions_per_seq=20, phase2_seq_length=0)


def mobilebert(config: ml_collections.ConfigDict) -> None:
  """MobileBERT's TF1 README settings (module docstring)."""
  config.optimizer.update(name="lamb", learning_rate=1.5e-3, warmup_steps=10_000, end_lr_rate=1e-4)
  config.batch_size = 2048
  config.num_train_steps = 500_000
  config.data.update(max_seq_length=512, max_predictions_per_seq=20, phase2_seq_length=0)


def teacher(config: ml_collections.ConfigDict) -> None:
  """Our choice for IB-BERT_LARGE (module docstring: the paper does not publish one)."""
  mobilebert(config)
  config.batch_size = 4096
  config.num_train_steps = 62_500
  config.data.update(
    max_seq_length=128,
    max_predictions_per_seq=20,
    phase2_seq_length=512,
    phase2_fraction=0.1,
    phase2_max_predictions_per_seq=80,
  )


RECIPE_FUNCTIONS = {"bert": bert, "lamb": lamb, "mobilebert": mobilebert, "teacher": teacher}
