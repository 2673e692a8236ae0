"""A trained workdir as a predictor: its saved config, its model, one of its checkpoints.

``evaluate`` and ``predict`` restore a model here and predict through
``steps.Trainer.predict`` (batched, jitted over the device mesh, optional flip
test-time augmentation), the very path training's own evaluation takes. The
workdir is only read: nothing in it is created, cleaned up or deleted, so a run
can still be training there.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np

from facekp_jax import checkpoint, config_upgrade, keypoints, sharding, steps
from facekp_jax import workdir as workdir_lib

CHECKPOINTS = ("best", "latest")


@dataclasses.dataclass
class Model:
  """A restored model.

  Attributes:
    workdir: the training workdir it came from.
    config: the run's config (``workdir/config.json``).
    trainer: the jitted steps over this process's device mesh.
    state: the restored train state.
    step: the checkpoint's step.
    checkpoint: which checkpoint was asked for: ``"best"`` or ``"latest"``.
    trained: (30,) 1 for the coordinates of keypoints the training split labelled
      (``workdir.trained_keypoints``); the others are the model's guesses, never learnt.
  """

  workdir: str
  config: ml_collections.ConfigDict
  trainer: steps.Trainer
  state: steps.TrainState
  step: int
  checkpoint: str
  trained: np.ndarray

  def untrained_names(self) -> list[str]:
    """The keypoints the run never had labels for, in ``keypoints.KEYPOINT_NAMES`` order."""
    return [n for n, t in zip(keypoints.KEYPOINT_NAMES, self.trained[::2]) if not t]

  def only_trained(self, coords: np.ndarray) -> np.ndarray:
    """``coords`` (..., 30) with the untrained keypoints' coordinates set to NaN."""
    return np.where(self.trained > 0, np.asarray(coords, np.float64), np.nan)

  def predict(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, 96, 96, 1) images in [0, 1] -> (N, 30) keypoints in pixels."""
    return self.trainer.predict(self.state, images, tta=tta)

  def describe(self, tta: bool) -> str:
    rotations = self.config.tta_rotations
    views = f" and turned +-{', +-'.join(f'{a:g}' for a in rotations)} deg" if rotations else ""
    return (f"workdir {self.workdir}, {self.checkpoint} checkpoint (step {self.step}), "
            f"TTA {f'on (flips{views})' if tta else 'off'}")


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
    workdir_lib.WorkdirError: no readable ``config.json``.
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise workdir_lib.WorkdirError(f"workdir {workdir}: no config.json (not a training workdir)")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise workdir_lib.WorkdirError(f"workdir {workdir}: cannot read config.json ({e})") from None
  if not isinstance(saved, dict):
    raise workdir_lib.WorkdirError(f"workdir {workdir}: config.json does not hold a config")
  return ml_collections.ConfigDict(_tuples(config_upgrade.upgrade(saved)))


def load(workdir: str, which: str = "best") -> Model:
  """Restores the ``best`` (by validation RMSE; else the latest) or ``latest`` checkpoint.

  Raises:
    workdir_lib.WorkdirError: no config, no checkpoint, or a checkpoint that does not fit the
      config's model; one line.
  """
  if which not in CHECKPOINTS:
    raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {which!r}")
  config = read_config(workdir)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt = checkpoint.Checkpointer(workdir, read_only=True) if os.path.isdir(ckpt_dir) else None
  try:
    latest = ckpt.latest_step() if ckpt else None
    if latest is None:
      raise workdir_lib.WorkdirError(
          f"workdir {workdir}: no checkpoint to restore (train one first: python -m "
          f"facekp_jax.main --config=... --workdir={workdir})")
    step = latest
    if which == "best" and ckpt.best_step() is not None:
      step = ckpt.best_step()
    trainer = steps.Trainer(config, sharding.make_mesh())
    # The restore target: ``init_state``'s structure, shapes and shardings, traced but not run
    # (compiling the random initialiser would take longer than everything else here).
    target = jax.eval_shape(trainer.init_state)
    try:
      state, _ = ckpt.restore(target, step=step)
    except (ValueError, KeyError, TypeError) as e:
      detail = " ".join(str(e).split())[:200]
      raise workdir_lib.WorkdirError(f"workdir {workdir}: the checkpoint at step {step} does "
                                     f"not fit the model of config.json ({detail})") from None
  finally:
    if ckpt:
      ckpt.close()
  return Model(workdir, config, trainer, state, int(jax.device_get(state.step)), which,
               workdir_lib.trained_keypoints(workdir))
