"""Test-time augmentation, once: a face's views and the mean of their keypoints mapped back.

The views are the face as it is and its mirror, and, for each angle a of
``config.tta_rotations``, both again turned by -a and by +a degrees about the frame centre.
A mirror's keypoints come back through ``geometry.flip_coords`` (x -> 95 - x, left/right
swapped: the flip training augments with), a turned view's through its inverse map. ``average``
takes the array module: the host path (evaluate, predict, validation) runs it over numpy around
the jitted model, and the export traces the very same function over ``jax.numpy``.
"""

from __future__ import annotations

import numpy as np

from facekp_jax.core import geometry, keypoints


def problems(rotations) -> list[str]:
  """What is wrong with ``config.tta_rotations`` (empty when ``average`` can use it)."""
  try:
    ok = all(0.0 < float(a) <= 90.0 for a in rotations)
  except (TypeError, ValueError):
    ok = False
  return [] if ok else [f"tta_rotations must be angles in (0, 90] degrees, got {rotations!r}"]


def rotation_views(rotations) -> list[np.ndarray]:
  """The inverse maps (2, 3) of the turned views: -a then +a for each angle a."""
  angles = [sign * float(a) for a in rotations for sign in (-1.0, 1.0)]
  if not angles:
    return []
  n = len(angles)
  _, inverse = geometry.affine_maps(np.array(angles), np.ones(n), np.zeros((n, 2)))
  return list(inverse)


def flip_average(predict, images, layout: keypoints.Layout, xp=np):
  """The mean prediction of each image and of its mirror, the mirror's mapped back.

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 2K) pixel predictions of ``layout``.
    images: (N, 96, 96, 1).
    layout: the predictions' keypoint layout (its mirror twins).
    xp: ``numpy`` or ``jax.numpy``.
  """
  mirrored = predict(images[:, :, ::-1])
  back, _ = geometry.flip_coords(mirrored, xp.ones(mirrored.shape, np.float32), layout, xp)
  return 0.5 * (predict(images) + back)


def average(predict, images, layout: keypoints.Layout, rotations=(), xp=np):
  """The test-time average: ``flip_average`` over the face as it is and turned by -a and +a
  degrees for each angle a of ``rotations`` (a turned view's keypoints turned back).

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 2K) pixel predictions.
    images: (N, 96, 96, 1).
    layout: the predictions' keypoint layout (its mirror twins).
    rotations: angles of the turned views (``config.tta_rotations``; empty: flips only).
    xp: ``numpy`` or ``jax.numpy``.
  """
  views = [flip_average(predict, images, layout, xp)]
  for inverse in rotation_views(rotations):
    turned = geometry.fixed_warp(inverse)(images)
    views.append(geometry.map_coords(inverse, flip_average(predict, turned, layout, xp), xp))
  total = views[0]
  for view in views[1:]:
    total = total + view
  return (total / len(views)).astype(np.float32)
