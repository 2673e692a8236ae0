"""Test-time augmentation, once: a face's views, the mean of their keypoints mapped back, and
how well they agree.

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


def flip_views(predict, images, layout: keypoints.Layout, xp=np) -> list:
  """The predictions of each image and of its mirror, the mirror's mapped back.

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 2K) pixel predictions of ``layout``.
    images: (N, 96, 96, 1).
    layout: the predictions' keypoint layout (its mirror twins).
    xp: ``numpy`` or ``jax.numpy``.
  """
  mirrored = predict(images[:, :, ::-1])
  back, _ = geometry.flip_coords(mirrored, xp.ones(mirrored.shape, np.float32), layout, xp)
  return [predict(images), back]


def views(predict, images, layout: keypoints.Layout, rotations=(), xp=np) -> list:
  """Every view's predictions in the face's own frame: ``flip_views`` of the face as it is and
  turned by -a and +a degrees for each angle a of ``rotations`` (a turned view's keypoints
  turned back); 2 + 4 * len(rotations) arrays (N, 2K). Arguments as ``average``'s."""
  out = flip_views(predict, images, layout, xp)
  for inverse in rotation_views(rotations):
    turned = geometry.fixed_warp(inverse)(images)
    out += [geometry.map_coords(inverse, v, xp) for v in flip_views(predict, turned, layout, xp)]
  return out


def average(predict, images, layout: keypoints.Layout, rotations=(), xp=np):
  """The test-time average: the mean of ``views``, the face as it is and its mirror, both
  again turned by -a and +a degrees for each angle a of ``rotations``.

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 2K) pixel predictions.
    images: (N, 96, 96, 1).
    layout: the predictions' keypoint layout (its mirror twins).
    rotations: angles of the turned views (``config.tta_rotations``; empty: flips only).
    xp: ``numpy`` or ``jax.numpy``.
  """
  every = views(predict, images, layout, rotations, xp)
  total = every[0]
  for view in every[1:]:
    total = total + view
  return (total / len(every)).astype(np.float32)


# How far the views may scatter before a keypoint's agreement falls to 1/e: 5 % of the face's
# normalising distance (the eye distance of 5 points). Chosen on the photo path's face-free
# photos and 300W's faces (experiments/README.md, confidence).
AGREEMENT_SCALE = 0.05


def agreement(every: list, layout: keypoints.Layout, scale: float = AGREEMENT_SCALE):
  """How well the views agree on each keypoint: exp(-d / scale), d the views' mean distance
  from their mean over the face's normalising distance (``layout.normalisers``, the first
  whose points are finite, read off that mean). (N, K) in (0, 1]; NaN where no normaliser
  can be read.

  Args:
    every: ``views``' arrays, each (N, 2K) pixels.
    layout: their keypoint layout.
    scale: the scatter, as a share of the normalising distance, that gives 1/e.
  """
  v = np.stack([np.asarray(x, np.float64) for x in every])
  v = v.reshape(v.shape[0], v.shape[1], -1, 2)  # (V, N, K, 2)
  mean = v.mean(axis=0)
  scatter = np.linalg.norm(v - mean, axis=3).mean(axis=0)  # (N, K) pixels
  norm = np.full(len(mean), np.nan)
  for _, (i, j) in layout.normalisers:
    d = np.linalg.norm(mean[:, i] - mean[:, j], axis=1)
    norm = np.where(np.isnan(norm) & np.isfinite(d) & (d > 0), d, norm)
  return np.exp(-scatter / (scale * norm[:, None]))
