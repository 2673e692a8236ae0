"""The values that fields a saved config predates had before they existed: old workdirs upgraded.

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
