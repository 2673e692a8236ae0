"""A run's config beyond its file: the checks of its values, and old workdirs' configs upgraded.

``check_config`` refuses impossible settings before any data is read or file written.

A workdir's ``config.json`` holds the fields its version knew. A field added later
means "what the project did before": the seed's dense head before ``model.head``,
no geometric augmentation before ``augment.geometry_prob``, and so on; that is
not always the field's *current* default (the head's default is now the heatmap).
``upgrade`` fills exactly those values into a saved config, so that evaluating,
predicting from or resuming an old run does what that run did, and code reads
``config.model.head`` directly instead of repeating a default at each use.
"""

from __future__ import annotations

import copy
import json
import os

import ml_collections

from facekp_jax.core.errors import ConfigError, WorkdirError
from facekp_jax.data import augment, kaggle
from facekp_jax.model import losses, resnet, tta
from facekp_jax.training import optim

# Dotted field -> its value before the field existed (behaviour unchanged by the field).
LEGACY: dict[str, object] = {
    "optimizer": "adam",
    "weight_decay": 1e-4,
    "schedule": "constant",
    "warmup_epochs": 0.0,
    "adam_eps": 1e-8,
    "input_on_device": False,
    "steps_per_call": 1,
    "tta": False,
    "tta_rotations": (),
    "loss": "mse",
    "smooth_l1_beta": 1.0,
    "wing_w": 10.0,
    "wing_epsilon": 2.0,
    "ema_decay": 0.0,
    "data.flip_copies": False,
    "data.bad_labels": "error",
    "augment.geometry_prob": 0.0,
    "augment.rotate_deg": 0.0,
    "augment.scale_range": (1.0, 1.0),
    "augment.shift_px": 0.0,
    "model.head": "regression",
    "model.heatmap_size": 48,
    "model.heatmap_margin": 0.0,
    "model.heatmap_stages": 1,
    "model.kernel_init": "lecun_normal",
}


def upgrade(saved: dict) -> dict:
  """A copy of a saved config (plain dict) with every ``LEGACY`` field it lacks filled in."""
  out = copy.deepcopy(saved)
  for dotted, value in LEGACY.items():
    *parents, name = dotted.split(".")
    node = out
    for parent in parents:
      node = node.get(parent)
      if not isinstance(node, dict):
        break
    else:
      node.setdefault(name, value)
  return out


def _tuples(value):
  """JSON gives lists where the config had tuples: turn them back (recursively)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (``config.json``), tuples restored.

  Raises:
    WorkdirError: no readable ``config.json``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise WorkdirError(f"workdir {workdir}: no config.json (not a training workdir)")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WorkdirError(f"workdir {workdir}: cannot read config.json ({e})") from None
  if not isinstance(saved, dict):
    raise WorkdirError(f"workdir {workdir}: config.json does not hold a config")
  return ml_collections.ConfigDict(_tuples(upgrade(saved)))


def check_config(config, num_devices: int) -> None:
  """Refuses impossible settings before any data is read or file written."""
  problems = []
  if config.data.rows not in ("complete", "all"):
    problems.append(f"data.rows must be 'complete' or 'all', got {config.data.rows!r}")
  if config.data.bad_labels not in kaggle.BAD_LABELS:
    problems.append(f"data.bad_labels must be one of {list(kaggle.BAD_LABELS)}, got "
                    f"{config.data.bad_labels!r}")
  if not 0.0 <= config.data.val_fraction < 1.0:
    problems.append(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")
  if config.batch_size < 1 or config.batch_size % num_devices:
    problems.append(f"batch_size {config.batch_size} does not divide evenly over {num_devices} "
                    f"devices; use a multiple of {num_devices}")
  for name, low in (("num_epochs", 1), ("eval_batch_size", 1), ("keep_checkpoints", 1),
                    ("checkpoint_every_steps", 0), ("steps_per_call", 1)):
    if not config[name] >= low:
      problems.append(f"{name} must be >= {low}, got {config[name]}")
  problems += augment.config_problems(config.augment) + losses.config_problems(config)
  problems += tta.problems(config.tta_rotations)
  if not 0.0 <= config.ema_decay < 1.0:
    problems.append(f"ema_decay must be in [0, 1), got {config.ema_decay}")
  problems += _optimizer_problems(config) + resnet.config_problems(config.model)
  if problems:
    raise ConfigError("; ".join(problems))


def _optimizer_problems(config) -> list[str]:
  problems = []
  if config.optimizer not in optim.OPTIMIZERS:
    problems.append(f"optimizer must be one of {list(optim.OPTIMIZERS)}, got {config.optimizer!r}")
  if config.schedule not in optim.SCHEDULES:
    problems.append(f"schedule must be one of {list(optim.SCHEDULES)}, got {config.schedule!r}")
  if not config.learning_rate > 0:
    problems.append(f"learning_rate must be > 0, got {config.learning_rate}")
  if not config.weight_decay >= 0:
    problems.append(f"weight_decay must be >= 0, got {config.weight_decay}")
  if not 0 <= config.warmup_epochs < max(config.num_epochs, 1):
    problems.append(f"warmup_epochs must be in [0, num_epochs={config.num_epochs}), "
                    f"got {config.warmup_epochs}")
  return problems
