r"""SQuAD v1.1 / v2.0 fine-tuning of MobileBERT (the recipe of the original TF1 `run_squad.py`).

Commands:

  # SQuAD v1.1 from the released checkpoint; data_dir holds train-v1.1.json and dev-v1.1.json.
  python -m mobilebert_jax.finetune --task=squad --workdir=/tmp/squad_v1 \
    --config.data.data_dir=/data/squad
  # SQuAD v2.0 from TFDS.
  python -m mobilebert_jax.finetune --task=squad_v2 --workdir=/tmp/squad_v2 \
    --config.data.source=tfds
  # The same through this file directly.
  python -m mobilebert_jax.finetune --config=configs/squad.py:version=2.0 --workdir=...
  # The offline demo (no network; about a minute and a half on two CPU cores).
  python -m mobilebert_jax.finetune --task=squad --demo --workdir=/tmp/demo

Expected dev scores (paper, Table 5): MobileBERT v1.1 EM 82.9 / F1 90.0, v2.0 EM 76.2 /
F1 79.2 (MobileBERT_TINY: 81.4 / 88.6 and 74.4 / 77.1). The demo's small model, trained from
scratch, reaches dev EM 71-80 / F1 74-82 (seeds 0-4: F1 82.3, 76.3, 76.9, 76.8, 73.6), where the
untrained model scores F1 2-4; it takes about 1.5 minutes on two CPU cores (see `demo()`).

Recipe (docs/training.md §squad): lr 4e-5, batch 32, 5 epochs, max_seq_length 384, doc_stride 128,
max_query_length 64, warm-up 10%, AdamW (weight decay 0.01, clip 1.0), n_best 20,
max_answer_length 30, null_score_diff_threshold 0.0 (v2.0).

Variants (after the colon, comma-separated): `version=1.1|2.0`, `demo`, `size=tiny`.
"""

from mobilebert_jax.configs import common


def get_config(arg=None):
  """The SQuAD config; see the module docstring for the variants."""
  arg = common.parse_arg(arg, version="1.1", demo=False, size="")
  if arg.version not in ("1.1", "2.0"):
    raise ValueError(f"SQuAD version must be 1.1 or 2.0, got {arg.version!r}")
  config = common.base_config("squad" if arg.version == "1.1" else "squad_v2")
  config.data.update(max_seq_length=384, doc_stride=128, max_query_length=64)
  config.eval.update(
    batch_size=64,
    n_best_size=20,
    max_answer_length=30,
    null_score_diff_threshold=0.0,
    text_extraction="final_text",
  )
  config.optimizer.learning_rate = 4e-5
  config.batch_size = 32
  config.num_epochs = 5.0
  if arg.demo:
    demo(config)
  if common.apply_size(config, arg.size):
    config.data.update(doc_stride=32, max_query_length=16)
  return config


def demo(config):
  """The offline demo: a small MobileBERT-shaped model trained from scratch on shipped data.

  The model keeps everything that makes MobileBERT what it is (trigram embeddings, input/output
  bottlenecks, NoNorm, ReLU, several stacked FFNs, the shared key/query bottleneck), only
  smaller. The data (`mobilebert_jax/demo/`) are short generated paragraphs about invented
  people, towns and ships; the dev set's entities never occur in training.
  """
  from mobilebert_jax import demo as demo_files  # Only the demo needs the shipped files.

  config.init_from = ""
  config.model.update(
    vocab_size=None,  # from the vocabulary
    embedding_size=32,
    hidden_size=64,
    intra_bottleneck_size=32,
    num_hidden_layers=4,
    num_attention_heads=2,
    intermediate_size=64,
    num_feedforward_networks=2,
    max_position_embeddings=96,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    # Four blocks compile faster unrolled than under nn.scan on CPU.
    scan_layers=False,
  )
  config.tokenizer.vocab_file = demo_files.VOCAB_FILE
  config.data.update(
    train_file=demo_files.TRAIN_FILE,
    eval_file=demo_files.DEV_FILE,
    max_seq_length=96,
    doc_stride=48,
    max_query_length=24,
  )
  config.optimizer.update(name="adamw", learning_rate=2e-3, warmup_proportion=0.05)
  config.batch_size = 32
  config.num_train_steps = 1000
  config.eval.batch_size = 128
  config.checkpoint_every_steps = 500
  config.log_every_steps = 100
  return config
