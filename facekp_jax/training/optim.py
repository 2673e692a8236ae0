"""The optimizer and learning-rate schedule that the config describes.

  config.optimizer:      "adam" (default) or "adamw" (decoupled weight decay
                         ``config.weight_decay`` on kernels only: biases and
                         batch-norm scales/offsets are not decayed).
  config.adam_eps:       Adam's epsilon (optax's 1e-8; Keras uses 1e-7).
  config.schedule:       "onecycle" (default: rise from lr/25, then cosine down to
                         lr/25e4), "constant" or "cosine" (decay to 0 over the run).
  config.warmup_epochs:  linear warm-up from 0 for "constant" and "cosine"; the
                         rising phase of "onecycle" (0: its usual 30 % of the run).

The peak learning rate is ``config.learning_rate`` throughout. A constant rate
without warm-up (the default until issue 27; workdirs from before these options
read as it) is exactly ``optax.adam(config.learning_rate)``, so their states and
checkpoints keep their structure.
"""

from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
_ONECYCLE_PCT_START = 0.3


def learning_rate(config, steps_per_epoch: int | None):
  """The learning rate: a float for a constant rate without warm-up, else an optax schedule.

  Args:
    config: the run's config (``learning_rate``, ``num_epochs``, ``schedule``,
      ``warmup_epochs``).
    steps_per_epoch: optimizer steps per epoch. ``None`` when only the state's
      structure is needed (a restore target): the schedule's shape is then wrong,
      but the optimizer state is the same tree of the same shapes.
  """
  lr = config.learning_rate
  schedule = config.schedule
  warmup_epochs = config.warmup_epochs
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  if schedule == "constant" and not warmup_epochs:
    return lr
  per_epoch = steps_per_epoch or 1
  total = max(1, config.num_epochs * per_epoch)
  warmup = min(total, int(round(warmup_epochs * per_epoch)))
  if schedule == "constant":
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)], [warmup])
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
  pct_start = warmup / total if warmup_epochs else _ONECYCLE_PCT_START
  return optax.cosine_onecycle_schedule(total, lr, pct_start=pct_start)


def _decay_mask(params):
  """True for the parameters weight decay applies to: kernels (rank >= 2)."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(config, steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """Builds ``config.optimizer`` with ``learning_rate(config, steps_per_epoch)``."""
  name = config.optimizer
  lr = learning_rate(config, steps_per_epoch)
  eps = config.adam_eps
  if name == "adam":
    return optax.adam(lr, eps=eps)
  if name == "adamw":
    return optax.adamw(lr, eps=eps, weight_decay=config.weight_decay,
                       mask=_decay_mask)
  raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
