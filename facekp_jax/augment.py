"""Online, per-batch augmentation in numpy: flips that respect labels, brightness.

Conventions (see ``keypoints``): pixel column j is centred at x = j, so a
horizontal mirror maps x -> 95 - x. A mirrored face's left eye is the original
right eye, so the horizontal flip also permutes keypoints (and their masks)
with ``keypoints.FLIP_COORDS``. ``swap_labels=False`` reproduces the seed
notebook's fault (mirrored pixels, unswapped labels) for ablations only.

All functions are pure: they return new arrays and leave their inputs alone.
"""

from __future__ import annotations

import numpy as np

from facekp_jax import keypoints
from facekp_jax.data import Faces

_X = slice(0, None, 2)
_Y = slice(1, None, 2)


def hflip(faces: Faces, swap_labels: bool = True) -> Faces:
  """Mirrors faces left-right: x -> 95 - x, left/right keypoints swapped."""
  targets = faces.targets.copy()
  targets[:, _X] = keypoints.mirror(targets[:, _X])
  mask = faces.mask
  if swap_labels:
    targets, mask = targets[:, keypoints.FLIP_COORDS], mask[:, keypoints.FLIP_COORDS]
  return Faces(faces.images[:, :, ::-1], np.where(mask > 0, targets, 0.0).astype(np.float32), mask)


def vflip(faces: Faces) -> Faces:
  """Mirrors faces top-bottom: y -> 95 - y (no keypoint has an up/down twin)."""
  targets = faces.targets.copy()
  targets[:, _Y] = keypoints.mirror(targets[:, _Y])
  return Faces(faces.images[:, ::-1], np.where(faces.mask > 0, targets, 0.0).astype(np.float32),
               faces.mask)


def brightness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """Multiplies each image by its factor and clips to [0, 1]."""
  return np.clip(images * factors.reshape(-1, 1, 1, 1).astype(np.float32), 0.0, 1.0)


def _where(select: np.ndarray, a: Faces, b: Faces) -> Faces:
  """Per-example choice between two batches of faces."""
  s = select.reshape(-1, 1)
  return Faces(np.where(s.reshape(-1, 1, 1, 1), a.images, b.images),
               np.where(s, a.targets, b.targets), np.where(s, a.mask, b.mask))


def draw_plan(n: int, rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """The random choices of one batch: ``hflip``, ``vflip`` (bool) and ``brightness`` factors.

  Every random number is drawn up front, so each knob's draws don't depend on
  the others; a factor of 1 means no brightness change. ``apply_plan`` (numpy)
  and ``device_input.apply_plan`` (on the devices) turn a plan into the same batch.
  """
  do_h = rng.random(n) < config.hflip_prob
  do_v = rng.random(n) < config.vflip_prob
  do_b = rng.random(n) < config.brightness_prob
  low, high = config.brightness_range
  factors = rng.uniform(low, high, n)
  return {"hflip": do_h, "vflip": do_v,
          "brightness": np.where(do_b, factors, 1.0).astype(np.float32)}


def apply_plan(faces: Faces, plan: dict[str, np.ndarray], config) -> Faces:
  """Applies a ``draw_plan`` plan to a batch (per example: hflip, then vflip, then brightness)."""
  if plan["hflip"].any():
    faces = _where(plan["hflip"], hflip(faces, swap_labels=config.hflip_swap), faces)
  if plan["vflip"].any():
    faces = _where(plan["vflip"], vflip(faces), faces)
  if (plan["brightness"] != 1.0).any():
    faces = Faces(brightness(faces.images, plan["brightness"]), faces.targets, faces.mask)
  return faces


def augment_batch(faces: Faces, rng: np.random.Generator, config) -> Faces:
  """Applies the augmentations of ``config`` (``config.augment``), each per example.

  Args:
    faces: a training batch.
    rng: the generator for this batch; the same generator state gives the same
      augmented batch.
    config: the ``augment`` section: ``hflip_prob``, ``hflip_swap``,
      ``vflip_prob``, ``brightness_prob``, ``brightness_range``.
  """
  return apply_plan(faces, draw_plan(len(faces), rng, config), config)


def seed_copies(faces: Faces, rng: np.random.Generator, config) -> Faces:
  """The seed notebook's offline augmentation: the set plus three altered copies.

  Copies: horizontal flip; that flipped copy flipped vertically as well; a
  brightness copy (factor ~ U(brightness_range)). The seed applied it *before*
  its train/test split; here it is only ever applied to the training split.
  """
  flipped = hflip(faces, swap_labels=config.hflip_swap)
  both = vflip(flipped)
  low, high = config.brightness_range
  bright = Faces(brightness(faces.images, rng.uniform(low, high, len(faces))), faces.targets,
                 faces.mask)
  parts = (faces, flipped, both, bright)
  return Faces(*(np.concatenate([getattr(p, f) for p in parts])
                 for f in ("images", "targets", "mask")))
