"""The model's inference function: fixed variables and any number of images -> keypoints.

``Inference`` jits the model's forward pass once over a 1-D data mesh (variables replicated,
images split on their first axis) and runs it in padded batches; with TTA, each prediction is
``tta.average`` of the views. Validation during training (variables of the current state) and
the serving predictor (a workdir's chosen weights) both predict through it.
"""

from __future__ import annotations

import jax
import numpy as np

from facekp_jax.core import faces, keypoints, sharding
from facekp_jax.model import heads, tta


def heatmap_logits(model, variables, images):
  """The heatmap head's maps (B, H, W, K) of ``images`` (its sown ``heads.LOGITS``)."""
  _, sown = model.apply(variables, images, train=False, mutable=["intermediates"])
  (logits,) = sown["intermediates"]["heatmap"][heads.LOGITS]
  return logits


def confidence_forward(model, margin: float, radius: float = heads.CONFIDENCE_RADIUS):
  """``(variables, images) -> (B, K)``: each keypoint's ``heads.confidence`` (a disc of
  ``radius`` px), for ``Inference(forward=...)``."""
  return lambda variables, images: heads.confidence(heatmap_logits(model, variables, images),
                                                    margin, radius)


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of ``multiple`` that is >= ``n``."""
  return -(-n // multiple) * multiple


class Inference:
  """``model.apply(variables, images, train=False)`` jitted over ``mesh``, in padded batches.

  ``layout`` is the model's keypoint layout (``model.layout``), whose mirror twins TTA uses.
  ``forward``: (variables, images) -> (B, 2K) in place of the model's own inference pass (an
  experiment's other read-out of the same network); jitted the same way.
  """

  def __init__(self, model, mesh, eval_batch_size: int, forward=None):
    self.layout = keypoints.get(model.layout)
    self.mesh = mesh
    self.eval_batch_size = round_up(eval_batch_size, mesh.devices.size)
    self._max_batch = eval_batch_size
    rep, shard = sharding.replicated(mesh), sharding.batch_sharded(mesh)
    # One global batch: (variables, images (B, 96, 96, 1)) -> (B, 2K), B a multiple of devices.
    forward = forward or (lambda variables, images: model.apply(variables, images, train=False))
    self.jitted = jax.jit(forward, in_shardings=(rep, shard), out_shardings=rep)

  def batch_size(self, n: int) -> int:
    """The batch that a call of ``n`` images is padded to.

    The next power of two >= ``n``, at most ``eval_batch_size``, rounded up to a multiple of
    the device count: one face costs a batch of one (not 128), and a process compiles at most
    log2(eval_batch_size) + 1 shapes.
    """
    bound = min(1 << max(n - 1, 0).bit_length(), self._max_batch)
    return round_up(bound, self.mesh.devices.size)

  def __call__(self, variables, images: np.ndarray, tta_rotations=None) -> np.ndarray:
    """Predicts every image (N, 96, 96, 1) in [0, 1]; returns (N, 2K) pixels.

    ``tta_rotations``: None, no test-time augmentation; else the turned views' angles of
    ``tta.average`` (``()``: flips only).
    """
    if tta_rotations is not None:
      return tta.average(lambda x: self(variables, x), images, self.layout, tta_rotations)
    n = len(images)
    size = self.batch_size(n)
    out = []
    for start in range(0, n, size):
      local = sharding.process_slice(faces.pad_rows(images[start:start + size], size))
      out.append(self.jitted(variables, sharding.to_global(local, self.mesh)))
    return np.concatenate(jax.device_get(out))[:n]
