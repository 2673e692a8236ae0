"""A trained workdir loaded for inference: its config, its chosen weights, TTA; no optimizer.

``load`` restores one of a workdir's checkpoints and keeps what inference needs: the model
function (``model.apply.Inference``, jitted over this process's device mesh), the weights
``training.state.inference_variables`` chooses (the EMA where the run keeps one) and the run's
test-time augmentation. Evaluate, predict and export all predict through a ``Predictor``. The
workdir is only read: nothing in it is created, cleaned up or deleted, so a run can still be
training there.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from facekp_jax.core import keypoints, sharding
from facekp_jax.core.errors import WorkdirError
from facekp_jax.model import apply, resnet
from facekp_jax.training import checkpoint, state
from facekp_jax.training import config as config_lib
from facekp_jax.training import workdir as workdir_lib


@dataclasses.dataclass
class Predictor:
  """A restored model.

  Attributes:
    workdir: the training workdir it came from.
    config: the run's config (``workdir/config.json``, upgraded by ``training.config``).
    variables: the weights it predicts with (``state.inference_variables``), on the devices.
    inference: the jitted model function over this process's device mesh.
    step: the checkpoint's step.
    checkpoint: which checkpoint was asked for: ``"best"`` or ``"latest"``.
    trained: (30,) 1 for the coordinates of keypoints the training split labelled
      (``workdir.trained_keypoints``); the others are the model's guesses, never learnt.
  """

  workdir: str
  config: ml_collections.ConfigDict
  variables: dict
  inference: apply.Inference
  step: int
  checkpoint: str
  trained: np.ndarray

  @property
  def eval_batch_size(self) -> int:
    return self.inference.eval_batch_size

  def untrained_names(self) -> list[str]:
    """The keypoints the run never had labels for, in ``keypoints.KEYPOINT_NAMES`` order."""
    return [n for n, t in zip(keypoints.KEYPOINT_NAMES, self.trained[::2]) if not t]

  def only_trained(self, coords: np.ndarray) -> np.ndarray:
    """``coords`` (..., 30) with the untrained keypoints' coordinates set to NaN."""
    return np.where(self.trained > 0, np.asarray(coords, np.float64), np.nan)

  def predict(self, images: np.ndarray, tta: bool = False) -> np.ndarray:
    """(N, 96, 96, 1) images in [0, 1] -> (N, 30) keypoints in pixels; ``tta``: the test-time
    average over the flips and the turned views of ``config.tta_rotations``."""
    return self.inference(self.variables, images, self.config.tta_rotations if tta else None)

  def use_tta(self, tta: bool | None = None, rotations=None) -> bool:
    """Whether to use TTA as a command asks: ``tta=None`` follows the run's ``config.tta``;
    ``rotations``, when given, replace ``config.tta_rotations`` (the turned views)."""
    if rotations is not None:
      self.config.tta_rotations = tuple(rotations)
    return self.config.tta if tta is None else tta

  def describe(self, tta: bool) -> str:
    rotations = self.config.tta_rotations
    views = f" and turned +-{', +-'.join(f'{a:g}' for a in rotations)} deg" if rotations else ""
    return (f"workdir {self.workdir}, {self.checkpoint} checkpoint (step {self.step}), "
            f"TTA {f'on (flips{views})' if tta else 'off'}")


def load(workdir: str, which: str = "best", ema: bool = True) -> Predictor:
  """Restores the ``best`` (by validation RMSE; else the latest) or ``latest`` checkpoint.

  ``ema=False``: the raw parameters even where the run keeps their moving average (for
  comparisons; every command predicts with the average).

  Raises:
    WorkdirError: no config, no checkpoint, or a checkpoint that does not fit the config's
      model; one line.
  """
  config = config_lib.read_config(workdir)
  problems = config_lib.problems(config)
  if problems:  # A hand-edited config.json: name its fields, not a failure deep in Flax.
    raise WorkdirError(f"workdir {workdir}: config.json cannot build a model "
                       f"({'; '.join(problems)})")
  mesh = sharding.make_mesh()
  model = resnet.create_model(config, dtype=resnet.compute_dtype(config))
  restored, _ = checkpoint.restore_trained(
      workdir, lambda: state.create_train_state(config, model, mesh), which)
  return Predictor(workdir, config, state.inference_variables(restored, ema),
                   apply.Inference(model, mesh, config.eval_batch_size),
                   int(jax.device_get(restored.step)), which,
                   workdir_lib.trained_keypoints(workdir))
