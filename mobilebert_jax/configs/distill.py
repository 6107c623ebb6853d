r"""Distillation of a MobileBERT student from a teacher (`python -m mobilebert_jax.distill`).

Commands:

  # The paper's recipe from an IB-BERT_LARGE teacher pretrained with `mobilebert_jax.pretrain`
  # (24 stages of 10,000 layer-wise steps, then 500,000 steps of pretraining distillation).
  python -m mobilebert_jax.distill --workdir=/tmp/student --teacher=/tmp/teacher \
    --config.data.train_files='/data/wiki/train-*.txt' --config.data.eval_files=/data/heldout.txt
  # Another strategy of the paper, or a shallower student mapped onto the teacher's blocks.
  python -m mobilebert_jax.distill ... --config.distill.strategy=joint
  python -m mobilebert_jax.distill ... --config.model.num_hidden_layers=12 \
    --config.distill.layer_map=uniform
  # The offline demonstration on real English text (about 15 minutes on 2 CPU cores).
  python -m mobilebert_jax.distill --demo --workdir=/tmp/distill_demo

Variants (after the colon): `size=tiny`, a 2-block student and a few steps, for tests.

The recipe (docs/training.md §distillation; the TF1 README command and `run_pretraining.py`):

  phase 1  `distill.strategy`: "progressive" (L stages of `steps_per_stage` = 10,000 steps),
           "joint" (every block at every step, the same L·P steps) or "auxiliary" (no phase 1:
           every block's transfer terms join the phase-2 loss). `transfer_optimizer`: LAMB at
           a constant 1.5e-3, no warm-up, global clip 1.0, weight decay 0.01, per-block rates
           `layer_rate_boost`·bg(s)·{0, 1, 0.1}. Loss factors 100 / 1 / 5000 / 5 (feature map,
           attention, mean, variance), parameter-free LayerNorm ε 1e-12. `phase1_steps`
           overrides L·P (0: no phase 1, i.e. pretraining distillation alone).
  phase 2  `optimizer`: LAMB, 1.5e-3 warmed up over 10,000 steps (to the undecayed rate, as
           TF1), linear decay to 1.5e-7, weight decay 0.01, clip 1.0; `num_train_steps` =
           500,000; MLM against `ground_truth_ratio`·one-hot + (1 − α)·teacher distribution
           (α = 0.5), plus NSP; `temperature` multiplies the teacher's sequence output.
  data     batch 2048, 512 tokens, 20 predictions (the README command; it ran on a TPU v3-256).

Fields beyond `configs/pretrain.py`'s (whose meanings apply):

  teacher              the teacher's weights (`--teacher` sets it): a pretraining workdir of
                       ours, an HF directory or hub id, a TF1/TF2/TF-Hub checkpoint.
  teacher_dtype        "float32" or "bfloat16" (the teacher runs forward only).
  distill.layer_map    "" (block ℓ against teacher block ℓ), "uniform", or "1,3,5,...".
  distill.teacher_all_layer_statistics   the TF1 code's mean/variance targets over all teacher
                       hidden states (almost certainly a typo there; off = the matching block).
  distill.copy_from_teacher   start the student's embeddings and heads from the teacher's.
  distill.semantics    "tf1" (the original); "tf2" the TF2 Model Garden's run, quirks included
                       (`train.tf2_distillation`: a run with a fresh optimizer per stage in
                       `phase1/stage_<k>`, per-variable clipping, bias-corrected LAMB, ε 1e-3,
                       the double softmax, the loss summed over tokens and divided by k + 1,
                       the embedding copy by position), for comparison with that code.
"""

from __future__ import annotations

import ml_collections
from ml_collections.config_dict import placeholder

from mobilebert_jax.configs import common, pretrain


def get_config(arg=None):
  """The distillation config; see the module docstring for the variant."""
  arg = common.parse_arg(arg, size="")
  config = pretrain.base_config("mobilebert-uncased")
  pretrain.mobilebert(config)  # phase 2's optimizer and data: the README command's
  config.task = "distillation"
  config.teacher = placeholder(str)
  config.teacher_dtype = "float32"
  config.distill = ml_collections.ConfigDict(
    {
      "strategy": "progressive",
      "semantics": "tf1",
      "steps_per_stage": 10_000,
      "phase1_steps": placeholder(int),
      "layer_map": "",
      "teacher_all_layer_statistics": False,
      "layer_norm_eps": 1e-12,
      "factors": {"feature": 100.0, "attention": 1.0, "mean": 5000.0, "variance": 5.0},
      "layer_rate_boost": 3.0,
      "ground_truth_ratio": 0.5,
      "temperature": 1.0,
      "copy_from_teacher": True,
    }
  )
  config.transfer_optimizer = ml_collections.ConfigDict(
    {
      "name": "lamb",
      "learning_rate": 1.5e-3,
      "end_lr_rate": 1.0,  # a constant rate: the original decays 1.5e-3 to 1.5e-3 · 1.0
      "weight_decay": 0.01,
      "clip_norm": 1.0,
      "b1": 0.9,
      "b2": 0.999,
      "eps": 1e-6,
    }
  )
  if common.apply_size(config, arg.size):
    config.data.update(max_seq_length=32, max_predictions_per_seq=5, dupe_factor=2)
    config.optimizer.update(warmup_steps=None, warmup_proportion=0.1)
    config.distill.steps_per_stage = 3
    config.num_train_steps = 4
    config.grad_accum_steps = 1
  return config
