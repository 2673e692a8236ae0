"""Augmentation and its sampler: flips that respect labels, one affine warp, brightness.

Conventions (see ``keypoints``): pixel column j is centred at x = j, so a
horizontal mirror maps x -> 95 - x. A mirrored face's left eye is the original
right eye, so the horizontal flip also permutes keypoints (and their masks)
with ``keypoints.FLIP_COORDS``. ``swap_labels=False`` reproduces the seed
notebook's fault (mirrored pixels, unswapped labels) for ablations only.

Geometry: per face, a rotation by ``angle`` degrees and a scaling about the frame
centre (47.5, 47.5), where the Kaggle framing puts the face, then a shift, as one
affine map ``p' = s R (p - c) + c + t`` (positive angles turn the face clockwise
on screen, as image y points down). The image is resampled bilinearly; a source
point outside the image takes the nearest border pixel (edge fill, no black
corners). Keypoints go through the same map; one that leaves the frame
[-0.5, 95.5]^2 becomes missing (mask 0), so it never pulls the loss. The warp
functions take the array module (``numpy`` or ``jax.numpy``): the host pipeline
and ``device_input`` run the very same code.

All functions are pure: they return new arrays and leave their inputs alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from facekp_jax import keypoints
from facekp_jax.data import Faces

_X = slice(0, None, 2)
_Y = slice(1, None, 2)
_SIZE = keypoints.IMAGE_SIZE
FRAME_CENTRE = (_SIZE - 1) / 2.0  # Pixel centres run 0..95: the frame's centre is 47.5.
_GRID_STEPS = 2.0**14


def hflip(faces: Faces, swap_labels: bool = True) -> Faces:
  """Mirrors faces left-right: x -> 95 - x, left/right keypoints swapped."""
  targets = faces.targets.copy()
  targets[:, _X] = keypoints.mirror(targets[:, _X])
  mask = faces.mask
  if swap_labels:
    targets, mask = targets[:, keypoints.FLIP_COORDS], mask[:, keypoints.FLIP_COORDS]
  return Faces(faces.images[:, :, ::-1], np.where(mask > 0, targets, 0.0).astype(np.float32), mask)


def flip_average(predict, images: np.ndarray) -> np.ndarray:
  """Flip test-time augmentation: the mean prediction of each image and of its mirror.

  The mirror's prediction is mapped back into the image's frame by ``hflip`` itself
  (x -> 95 - x, left/right keypoints swapped), the flip training augments with.

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 30) pixel predictions.
    images: (N, 96, 96, 1).
  """
  present = np.ones((len(images), keypoints.NUM_COORDS), np.float32)
  mirrored = hflip(Faces(images, present, present)).images
  back = hflip(Faces(mirrored, predict(mirrored), present)).targets
  return 0.5 * (predict(images) + back)


def tta_average(predict, images: np.ndarray, rotations=()) -> np.ndarray:
  """Test-time augmentation: the mean of ``flip_average`` over the faces as they are and, for
  each angle a of ``rotations`` (degrees), turned by -a and by +a about the frame centre
  (``rotation_views``); a turned view's keypoints are turned back by its inverse map.

  Args:
    predict: maps (N, 96, 96, 1) images to (N, 30) pixel predictions.
    images: (N, 96, 96, 1).
    rotations: angles of the extra views (``config.tta_rotations``; empty: flips only).
  """
  views = [flip_average(predict, images)]
  for inverse in rotation_views(rotations):
    turned = fixed_warp(inverse)(images)
    views.append(map_coords(inverse, flip_average(predict, turned)))
  return np.mean(views, axis=0).astype(np.float32)


def rotation_views(rotations) -> list[np.ndarray]:
  """The inverse maps (2, 3) of the turned test-time views: -a then +a for each angle a."""
  angles = [sign * float(a) for a in rotations for sign in (-1.0, 1.0)]
  if not angles:
    return []
  n = len(angles)
  _, inverse = affine_maps(np.array(angles), np.ones(n), np.zeros((n, 2)))
  return list(inverse)


def map_coords(m, coords, xp=np):
  """Keypoints (N, 30) through one (2, 3) affine map (numpy or JAX arrays)."""
  x, y = coords[:, _X], coords[:, _Y]
  nx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
  ny = m[1, 0] * x + m[1, 1] * y + m[1, 2]
  return xp.stack([nx, ny], axis=-1).reshape(coords.shape)


def vflip(faces: Faces) -> Faces:
  """Mirrors faces top-bottom: y -> 95 - y (no keypoint has an up/down twin)."""
  targets = faces.targets.copy()
  targets[:, _Y] = keypoints.mirror(targets[:, _Y])
  return Faces(faces.images[:, ::-1], np.where(faces.mask > 0, targets, 0.0).astype(np.float32),
               faces.mask)


def brightness(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
  """Multiplies each image by its factor and clips to [0, 1]."""
  return np.clip(images * factors.reshape(-1, 1, 1, 1).astype(np.float32), 0.0, 1.0)


def affine_maps(angle_deg, scale, shift) -> tuple[np.ndarray, np.ndarray]:
  """Forward and inverse (n, 2, 3) maps of rotations, scalings (about the centre) and shifts.

  Args:
    angle_deg, scale: (n,) rotation in degrees and scale factor of each face.
    shift: (n, 2) translation (x, y) in pixels, applied after rotation and scaling.

  Returns:
    ``(forward, inverse)`` float32, ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``, computed in
    float64 on the host so that every consumer applies the same numbers.
  """
  theta = np.deg2rad(np.asarray(angle_deg, np.float64))
  scale = np.asarray(scale, np.float64)
  shift = np.asarray(shift, np.float64).reshape(-1, 2)
  cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
  a_inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (n, 2, 2)
  # On a grid of 2^-14, the inverse's products with pixel coordinates (multiples of 1/2 below
  # 128) are exact in float32, so numpy and XLA (fused multiply-add or not) warp alike.
  a_inv = np.round(a_inv * _GRID_STEPS) / _GRID_STEPS
  a = np.linalg.inv(a_inv)
  c = np.full(2, FRAME_CENTRE)
  forward = np.concatenate([a, (c - a @ c + shift)[..., None]], -1)
  inverse = np.concatenate([a_inv, (-(a_inv @ forward[..., 2:]))], -1)
  return forward.astype(np.float32), inverse.astype(np.float32)


def warp_images(images, inverse, xp=np):
  """Resamples (B, 96, 96, 1) images: output pixel p takes the bilinear value at ``inverse`` p.

  Source points outside the image take the nearest border pixel (coordinates are
  clipped to [0, 95] before interpolating).
  """
  b = images.shape[0]
  i00, wx, wy = _bilinear_taps(inverse, xp)
  flat = images.reshape(b, _SIZE * _SIZE)
  return _interpolate(lambda offset: xp.take_along_axis(flat, i00 + offset, axis=1)
                      .reshape(b, _SIZE, _SIZE), wx, wy).reshape(images.shape).astype(np.float32)


def _bilinear_taps(inverse, xp=np):
  """Where each output pixel of ``warp_images`` samples: the flat index (n, 9216) of its
  top-left source pixel and the bilinear weights (n, 96, 96) along x and y."""
  grid = np.arange(_SIZE, dtype=np.float32)
  ys, xs = grid[:, None], grid[None, :]
  m = [[inverse[:, i, j][:, None, None] for j in range(3)] for i in range(2)]
  sx = xp.clip(m[0][0] * xs + m[0][1] * ys + m[0][2], 0.0, _SIZE - 1.0)
  sy = xp.clip(m[1][0] * xs + m[1][1] * ys + m[1][2], 0.0, _SIZE - 1.0)
  x0 = xp.minimum(xp.floor(sx), _SIZE - 2.0)
  y0 = xp.minimum(xp.floor(sy), _SIZE - 2.0)
  i00 = (y0 * _SIZE + x0).astype(np.int32).reshape(inverse.shape[0], -1)
  return i00, sx - x0, sy - y0


def _interpolate(at, wx, wy):
  """The bilinear mix of the four taps ``at(offset)`` (offsets into the flat image)."""
  top = at(0) * (1.0 - wx) + at(1) * wx
  bottom = at(_SIZE) * (1.0 - wx) + at(_SIZE + 1) * wx
  return top * (1.0 - wy) + bottom * wy


def fixed_warp(inverse: np.ndarray):
  """``warp_images`` under one (2, 3) map for every image, as four gathers with constant
  indices: ``(B, 96, 96, 1) -> (B, 96, 96, 1)`` for numpy or JAX arrays alike (jit- and
  exporter-friendly: no index arithmetic in the graph)."""
  i00, wx, wy = _bilinear_taps(np.asarray(inverse, np.float32)[None])
  i00, wx, wy = i00[0], wx[0].astype(np.float32), wy[0].astype(np.float32)

  def apply(images):
    flat = images.reshape(images.shape[0], _SIZE * _SIZE)
    return _interpolate(lambda offset: flat[:, i00 + offset].reshape(-1, _SIZE, _SIZE),
                        wx, wy).reshape(images.shape)

  return apply


def warp_targets(targets, mask, forward, xp=np):
  """Keypoints (B, 30) through ``forward``; points that leave the frame become missing."""
  x, y = targets[:, _X], targets[:, _Y]
  m = forward
  nx = m[:, 0, 0, None] * x + m[:, 0, 1, None] * y + m[:, 0, 2, None]
  ny = m[:, 1, 0, None] * x + m[:, 1, 1, None] * y + m[:, 1, 2, None]
  low, high = -0.5, _SIZE - 0.5
  inside = (nx >= low) & (nx <= high) & (ny >= low) & (ny <= high)
  keep = xp.repeat(inside, 2, axis=1)
  mask = xp.where(keep, mask, 0.0).astype(np.float32)
  moved = xp.stack([nx, ny], axis=-1).reshape(targets.shape)
  return xp.where(mask > 0, moved, 0.0).astype(np.float32), mask


def warp(faces: Faces, forward: np.ndarray, inverse: np.ndarray) -> Faces:
  """Faces through the affine maps of ``affine_maps`` (images and keypoints alike)."""
  targets, mask = warp_targets(faces.targets, faces.mask, forward)
  return Faces(warp_images(faces.images, inverse), targets, mask)


def config_problems(config) -> list[str]:
  """What is wrong with the ``augment`` section (empty when it can work)."""
  problems = []
  for name in ("hflip_prob", "vflip_prob", "brightness_prob", "geometry_prob"):
    if not 0.0 <= config[name] <= 1.0:
      problems.append(f"augment.{name} must be in [0, 1], got {config[name]}")
  low, high = config.brightness_range
  if not 0 < low <= high:
    problems.append(f"augment.brightness_range must be 0 < low <= high, got {(low, high)}")
  low, high = config.scale_range
  if not 0 < low <= high:
    problems.append(f"augment.scale_range must be 0 < low <= high, got {(low, high)}")
  if not 0.0 <= config.rotate_deg <= 180.0:
    problems.append(f"augment.rotate_deg must be in [0, 180], got {config.rotate_deg}")
  if not 0.0 <= config.shift_px <= keypoints.IMAGE_SIZE / 2:
    problems.append(f"augment.shift_px must be in [0, 48], got {config.shift_px}")
  return problems


def tta_problems(rotations) -> list[str]:
  """What is wrong with ``config.tta_rotations`` (empty when ``tta_average`` can use it)."""
  try:
    ok = all(0.0 < float(a) <= 90.0 for a in rotations)
  except (TypeError, ValueError):
    ok = False
  return [] if ok else [f"tta_rotations must be angles in (0, 90] degrees, got {rotations!r}"]


def _where(select: np.ndarray, a: Faces, b: Faces) -> Faces:
  """Per-example choice between two batches of faces."""
  s = select.reshape(-1, 1)
  return Faces(np.where(s.reshape(-1, 1, 1, 1), a.images, b.images),
               np.where(s, a.targets, b.targets), np.where(s, a.mask, b.mask))


def draw_plan(n: int, rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """The random choices of one batch: flips, affine maps and brightness factors.

  Keys: ``hflip``, ``vflip``, ``geometry`` (bool), ``forward``/``inverse`` ((n, 2, 3)
  affine maps, the identity where ``geometry`` is off) and ``brightness`` (1: no change).
  Every random number is drawn up front, in a fixed order (the geometry's after the
  older knobs', so plans without geometry are the ones earlier versions drew), and
  each knob's draws don't depend on the others. ``apply_plan`` (numpy) and
  ``device_input.apply_plan_jnp`` (on the devices) turn a plan into the same batch.
  """
  do_h = rng.random(n) < config.hflip_prob
  do_v = rng.random(n) < config.vflip_prob
  do_b = rng.random(n) < config.brightness_prob
  low, high = config.brightness_range
  factors = rng.uniform(low, high, n)
  do_g = rng.random(n) < config.geometry_prob
  angle = rng.uniform(-config.rotate_deg, config.rotate_deg, n)
  scale = rng.uniform(*config.scale_range, n)
  shift = rng.uniform(-config.shift_px, config.shift_px, (n, 2))
  forward, inverse = affine_maps(np.where(do_g, angle, 0.0), np.where(do_g, scale, 1.0),
                                 np.where(do_g[:, None], shift, 0.0))
  return {"hflip": do_h, "vflip": do_v, "geometry": do_g, "forward": forward,
          "inverse": inverse, "brightness": np.where(do_b, factors, 1.0).astype(np.float32)}


def epoch_plans(num_faces: int, config, epoch: int, start: int = 0) -> Iterator[tuple]:
  """(indices, plan) of each step of an epoch from ``start`` on: the one sampler of training.

  The order comes from ``(seed, epoch)``, each batch's plan from ``(seed, epoch, batch)``, so
  a resumed run replays exactly the batches an uninterrupted run would have seen. The host
  pipeline (``train``) and the on-device one (``device_input``) both draw from here;
  an epoch's last partial batch is dropped.
  """
  order = np.random.default_rng([config.seed, epoch]).permutation(num_faces)
  b = config.batch_size
  for i in range(start, num_faces // b):
    plan = draw_plan(b, np.random.default_rng([config.seed, epoch, i]), config.augment)
    yield order[i * b:(i + 1) * b].astype(np.int32), plan


def apply_plan(faces: Faces, plan: dict[str, np.ndarray], config) -> Faces:
  """Applies a ``draw_plan`` plan to a batch (per example: hflip, vflip, warp, brightness)."""
  if plan["hflip"].any():
    faces = _where(plan["hflip"], hflip(faces, swap_labels=config.hflip_swap), faces)
  if plan["vflip"].any():
    faces = _where(plan["vflip"], vflip(faces), faces)
  if plan["geometry"].any():
    rows = np.flatnonzero(plan["geometry"])
    moved = warp(faces.take(rows), plan["forward"][rows], plan["inverse"][rows])
    faces = Faces(*(_put(getattr(faces, f), rows, getattr(moved, f))
                    for f in ("images", "targets", "mask")))
  if (plan["brightness"] != 1.0).any():
    faces = Faces(brightness(faces.images, plan["brightness"]), faces.targets, faces.mask)
  return faces


def _put(array: np.ndarray, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
  out = array.copy()
  out[rows] = values
  return out


def augment_batch(faces: Faces, rng: np.random.Generator, config) -> Faces:
  """Applies the augmentations of ``config`` (``config.augment``), each per example.

  Args:
    faces: a training batch.
    rng: the generator for this batch; the same generator state gives the same
      augmented batch.
    config: the ``augment`` section: ``hflip_prob``, ``hflip_swap``,
      ``vflip_prob``, ``brightness_prob``, ``brightness_range``, ``geometry_prob``,
      ``rotate_deg``, ``scale_range``, ``shift_px``.
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
