"""Learning-rate schedules of the original BERT/MobileBERT training code, as optax schedules.

The TF1 `create_optimizer` (google-research `mobilebert/optimization.py`, the same in
google-research `bert/optimization.py`) builds the rate in two independent pieces:

- a polynomial decay of the *global step*, from `init_lr` at step 0 to
  `end_lr = end_lr_rate * init_lr` at `total_steps`, constant afterwards:
  `(init_lr - end_lr) * (1 - min(step, total_steps) / total_steps) ** power + end_lr`;
- a linear warm-up `init_lr * step / warmup_steps` that *replaces* the decayed rate while
  `step < warmup_steps`.

The decay curve is therefore anchored at step 0, not at the end of the warm-up: right after
warm-up the rate is `(init_lr - end_lr) * (1 - warmup_steps / total_steps) + end_lr`, slightly
below `init_lr`. `decay_from_warmup=True` gives the other common convention (transformers'
`get_polynomial_decay_schedule_with_warmup`), where the decay runs from `init_lr` at
`warmup_steps` to `end_lr` at `total_steps`.

Steps are 0-based update counts, as optax passes them: the first update uses `schedule(0)`, which
is 0 whenever there is a warm-up (the TF1 code also takes its first step at rate 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

DECAY_TYPES = ("linear", "polynomial", "constant")

# MobileBERT's `create_optimizer` default (used by run_pretraining, run_squad, run_classifier).
# Google's BERT code decays to 0 instead: pass `end_lr_rate=0.0` for that.
DEFAULT_END_LR_RATE = 1e-4


def resolve_warmup_steps(
  total_steps: int | None,
  warmup_steps: int | None = None,
  warmup_proportion: float | None = None,
) -> int:
  """Number of warm-up steps from either an absolute count or a proportion of the run.

  A proportion is turned into `int(total_steps * warmup_proportion)`, as BERT's
  `run_classifier.py`/`run_squad.py` do.

  Args:
    total_steps: length of the run in optimizer updates (needed with `warmup_proportion`).
    warmup_steps: absolute number of warm-up steps.
    warmup_proportion: fraction of `total_steps` in [0, 1].

  Returns:
    The warm-up length (0 when neither is given).

  Raises:
    ValueError: both or an invalid one is given, or the warm-up is longer than the run.
  """
  if warmup_steps is not None and warmup_proportion is not None:
    raise ValueError(
      f"Give either warmup_steps ({warmup_steps}) or warmup_proportion "
      f"({warmup_proportion}), not both."
    )
  if warmup_proportion is not None:
    if not 0.0 <= warmup_proportion <= 1.0:
      raise ValueError(f"warmup_proportion must lie in [0, 1], got {warmup_proportion}.")
    if total_steps is None:
      raise ValueError("warmup_proportion needs total_steps.")
    warmup_steps = int(total_steps * warmup_proportion)
  if warmup_steps is None:
    return 0
  if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 0:
    raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}.")
  warmup_steps = int(warmup_steps)
  if total_steps is not None and warmup_steps > total_steps:
    raise ValueError(
      f"warmup_steps ({warmup_steps}) is longer than the whole run (total_steps={total_steps})."
    )
  return warmup_steps


def build_schedule(
  learning_rate: float,
  total_steps: int | None = None,
  warmup_steps: int | None = None,
  warmup_proportion: float | None = None,
  decay: str = "linear",
  power: float = 1.0,
  end_lr_rate: float = DEFAULT_END_LR_RATE,
  decay_from_warmup: bool = False,
) -> optax.Schedule:
  """Linear warm-up from 0, then linear, polynomial or no decay (module docstring for the rule).

  Args:
    learning_rate: peak rate `init_lr`.
    total_steps: step at which the decay reaches `end_lr_rate * learning_rate` (required unless
      `decay="constant"` without `warmup_proportion`).
    warmup_steps: warm-up length in steps (exclusive with `warmup_proportion`).
    warmup_proportion: warm-up length as a fraction of `total_steps`.
    decay: "linear" (power 1), "polynomial" (power `power`) or "constant" (`init_lr` after the
      warm-up; TF1's polynomial decay with end ratio 1.0 is the same thing).
    power: exponent of the polynomial decay (must stay 1.0 for "linear" and "constant").
    end_lr_rate: final rate as a fraction of `learning_rate` (TF1 MobileBERT: 1e-4, BERT: 0).
    decay_from_warmup: anchor the decay at the end of the warm-up instead of step 0.

  Returns:
    An optax schedule: 0-based step (int array) -> float32 rate.

  Raises:
    ValueError: on an unknown decay type or inconsistent settings.
  """
  if decay not in DECAY_TYPES:
    raise ValueError(f"Unknown learning-rate decay {decay!r}; expected one of {DECAY_TYPES}.")
  if not learning_rate >= 0.0:
    raise ValueError(f"learning_rate must be >= 0, got {learning_rate}.")
  if decay != "polynomial" and power != 1.0:
    raise ValueError(f"power={power} only applies to decay='polynomial' (got decay={decay!r}).")
  if not power > 0.0:
    raise ValueError(f"power must be > 0, got {power}.")
  if not end_lr_rate >= 0.0:
    raise ValueError(f"end_lr_rate must be >= 0, got {end_lr_rate}.")
  if total_steps is not None and (isinstance(total_steps, bool) or total_steps <= 0):
    raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}.")
  if decay != "constant" and total_steps is None:
    raise ValueError(f"decay={decay!r} needs total_steps.")
  warmup = resolve_warmup_steps(total_steps, warmup_steps, warmup_proportion)
  if decay != "constant" and decay_from_warmup and warmup == total_steps:
    raise ValueError(
      "decay_from_warmup=True leaves no steps to decay over: warmup_steps == total_steps "
      f"({total_steps})."
    )

  # All arithmetic in float32, as the TF graph does it, so that values agree to the last bit
  # wherever the formulas are the same.
  init_lr = jnp.float32(learning_rate)
  end_lr = init_lr * jnp.float32(end_lr_rate)

  def schedule(count):
    step = jnp.asarray(count).astype(jnp.float32)
    if decay == "constant":
      decayed = jnp.broadcast_to(init_lr, step.shape)
    else:
      if decay_from_warmup:
        decay_steps = jnp.float32(total_steps - warmup)
        progress = jnp.clip(step - jnp.float32(warmup), 0.0, decay_steps)
      else:
        decay_steps = jnp.float32(total_steps)
        progress = jnp.minimum(step, decay_steps)
      # (T − s)/T rather than TF's 1 − s/T: the same value up to rounding, but exactly 0 at the
      # end even where XLA turns the division by a constant into a reciprocal multiplication.
      remaining = (decay_steps - progress) / decay_steps
      decayed = (init_lr - end_lr) * jnp.power(remaining, jnp.float32(power)) + end_lr
    if warmup == 0:
      return decayed
    warming = init_lr * (step / jnp.float32(warmup))
    return jnp.where(step < warmup, warming, decayed)

  return schedule
