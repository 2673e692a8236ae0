"""The training sampler: each batch's random plan (flips, affine warp, photometric changes),
applied.

``epoch_plans`` is the one sampler of training: the order of an epoch from ``(seed, epoch)``,
each batch's plan from ``(seed, epoch, batch)``. ``apply_plan`` turns a plan into the batch, over
numpy on the host or over ``jax.numpy`` inside the on-device pipeline's compiled steps
(``data.on_device``): one piece of code, so both pipelines train on the same batches. The
geometry itself (flip with label swap, affine maps, the warp) is ``core.geometry``'s.
``seed_copies`` and ``training_faces`` build the seed notebook's and Keras' fixed copies.

All functions are pure: they return new arrays and leave their inputs alone.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import geometry, keypoints
from facekp_jax.core.faces import Faces


def brightness(images, factors, xp=np):
  """Multiplies each image by its factor and clips to [0, 1]."""
  return xp.clip(images * factors.reshape(-1, 1, 1, 1).astype(np.float32), 0.0, 1.0)


def _per_face(values):
  return values.reshape(-1, 1, 1, 1).astype(np.float32)


def contrast(images, factors, xp=np):
  """Scales each image's deviations from its own mean by its factor; clips to [0, 1]. A
  factor of 1 leaves the image exactly as it is (as every photometric change here)."""
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  f = _per_face(factors)
  return xp.where(f == 1.0, images, xp.clip(mean + (images - mean) * f, 0.0, 1.0))


def gamma(images, exponents, xp=np):
  """Raises each image to its exponent (< 1 lifts the shadows, > 1 darkens them)."""
  g = _per_face(exponents)
  return xp.where(g == 1.0, images, xp.power(xp.clip(images, 0.0, 1.0), g))


BLUR_RADIUS = 3  # Pixels either side of the Gaussian kernel's centre (sigma up to ~1.5 px).


def blur_kernels(sigma) -> np.ndarray:
  """(n, 2 * BLUR_RADIUS + 1) normalised Gaussian taps; sigma 0 is the identity."""
  k = np.arange(-BLUR_RADIUS, BLUR_RADIUS + 1, dtype=np.float64)
  s = np.maximum(np.asarray(sigma, np.float64), 1e-3)[:, None]
  taps = np.exp(-0.5 * (k / s) ** 2)
  return (taps / taps.sum(axis=1, keepdims=True)).astype(np.float32)


def blur(images, taps, xp=np):
  """Each image convolved with its separable Gaussian ``taps`` (edges repeated)."""
  r = BLUR_RADIUS
  size = images.shape[1]
  for axis in (1, 2):
    pad = [(0, 0)] * 4
    pad[axis] = (r, r)
    padded = xp.pad(images, pad, mode="edge")
    out = 0.0
    for i in range(2 * r + 1):
      window = padded[:, i:i + size] if axis == 1 else padded[:, :, i:i + size]
      out = out + window * taps[:, i].reshape(-1, 1, 1, 1)
    images = out
  return images


def noise(images, field, xp=np):
  """Adds each image's noise field (already scaled by its strength); clips to [0, 1]."""
  return xp.clip(images + field, 0.0, 1.0)


def occlude(images, boxes, fill, xp=np):
  """Paints each image's box (x0, y0, x1, y1 in pixels, ends excluded) with its grey ``fill``;
  the labels stay as they are (a keypoint under the patch is still where it was)."""
  size = images.shape[1]
  grid = xp.arange(size, dtype=np.float32)
  b = boxes.astype(np.float32)
  inside_x = (grid[None, :] >= b[:, 0:1]) & (grid[None, :] < b[:, 2:3])  # (n, W)
  inside_y = (grid[None, :] >= b[:, 1:2]) & (grid[None, :] < b[:, 3:4])  # (n, H)
  inside = (inside_y[:, :, None] & inside_x[:, None, :])[..., None]
  return xp.where(inside, _per_face(fill), images)


def draw_plan(n: int, rng: np.random.Generator, config) -> dict[str, np.ndarray]:
  """The random choices of one batch: flips, affine maps and brightness factors.

  Keys: ``hflip``, ``vflip``, ``geometry`` (bool), ``forward``/``inverse`` ((n, 2, 3)
  affine maps, the identity where ``geometry`` is off) and ``brightness`` (1: no change).
  Every random number is drawn up front, in a fixed order (the geometry's after the
  older knobs', so plans without geometry are the ones earlier versions drew), and
  each knob's draws don't depend on the others. ``apply_plan`` turns a plan into
  the batch, on the host or on the devices.
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
  # The photometric knobs' draws (issue 26), after every older one.
  do_c = rng.random(n) < config.contrast_prob
  contrasts = rng.uniform(*config.contrast_range, n)
  do_gamma = rng.random(n) < config.gamma_prob
  exponents = np.exp(rng.uniform(*np.log(config.gamma_range), n))
  do_blur = rng.random(n) < config.blur_prob
  sigma = rng.uniform(0.0, config.blur_sigma, n)
  do_o = rng.random(n) < config.occlude_prob
  sides = rng.uniform(*config.occlude_size, (n, 2)) * keypoints.IMAGE_SIZE
  corner = rng.uniform(0.0, 1.0, (n, 2)) * (keypoints.IMAGE_SIZE - sides)
  fill = rng.uniform(0.0, 1.0, n)
  squeeze = rng.uniform(*config.squeeze_range, n)
  do_n = rng.random(n) < config.noise_prob
  strength = rng.uniform(0.0, config.noise_std, n)
  # The noise fields last, and only where a face may take one: 9216 numbers a face.
  field = (rng.standard_normal((n, keypoints.IMAGE_SIZE, keypoints.IMAGE_SIZE, 1))
           if config.noise_prob > 0 else np.zeros((n, 1, 1, 1)))
  forward, inverse = geometry.affine_maps(np.where(do_g, angle, 0.0), np.where(do_g, scale, 1.0),
                                          np.where(do_g[:, None], shift, 0.0),
                                          np.where(do_g, squeeze, 1.0))
  boxes = np.concatenate([corner, corner + sides], axis=1)
  return {"hflip": do_h, "vflip": do_v, "geometry": do_g, "forward": forward,
          "inverse": inverse, "brightness": np.where(do_b, factors, 1.0).astype(np.float32),
          "contrast": np.where(do_c, contrasts, 1.0).astype(np.float32),
          "gamma": np.where(do_gamma, exponents, 1.0).astype(np.float32),
          "blur": do_blur, "blur_taps": blur_kernels(np.where(do_blur, sigma, 0.0)),
          "occlude": do_o, "occlude_boxes": np.where(do_o[:, None], boxes, 0.0).astype(
              np.float32), "occlude_fill": fill.astype(np.float32),
          "noise": (field * np.where(do_n, strength, 0.0).reshape(-1, 1, 1, 1)).astype(
              np.float32)}


def epoch_plans(num_faces: int, config, epoch: int, start: int = 0) -> Iterator[tuple]:
  """(indices, plan) of each step of an epoch from ``start`` on: the one sampler of training.

  The order comes from ``(seed, epoch)``, each batch's plan from ``(seed, epoch, batch)``, so
  a resumed run replays exactly the batches an uninterrupted run would have seen. The host
  pipeline (``training.loop``) and the on-device one (``data.on_device``) both draw from here;
  an epoch's last partial batch is dropped.
  """
  order = np.random.default_rng([config.seed, epoch]).permutation(num_faces)
  b = config.batch_size
  for i in range(start, num_faces // b):
    plan = draw_plan(b, np.random.default_rng([config.seed, epoch, i]), config.augment)
    yield order[i * b:(i + 1) * b].astype(np.int32), plan


def _runs(xp, chosen, prob: float) -> bool:
  """Whether a step of ``apply_plan`` runs: on the host, when some face of the batch takes it;
  traced on the devices, when the config can draw it at all."""
  return bool(chosen.any()) if xp is np else prob > 0


def _warp_chosen(faces: Faces, plan: dict, xp) -> Faces:
  """The faces that drew a warp, warped. Traced, every face is warped and chosen per face; the
  host resamples only the chosen ones (the same numbers: each face's warp is its own)."""
  chosen = plan["geometry"]
  if xp is not np:
    moved = geometry.warp(faces, plan["forward"], plan["inverse"], xp)
    return faces_lib.where(chosen, moved, faces, xp)
  rows = np.flatnonzero(chosen)
  moved = geometry.warp(faces.take(rows), plan["forward"][rows], plan["inverse"][rows])
  return faces_lib.put(faces, rows, moved)


def apply_plan(faces: Faces, plan: dict, config, layout: keypoints.Layout, xp=np) -> Faces:
  """Applies a ``draw_plan`` plan to a batch of ``layout``'s faces: per face hflip (with the
  label swap), vflip, the affine warp (with its squeeze), brightness, contrast, gamma, blur,
  noise and occlusion, over numpy or ``jax.numpy`` (``xp``)."""
  if _runs(xp, plan["hflip"], config.hflip_prob):
    flipped = geometry.hflip(faces, layout, config.hflip_swap, xp)
    faces = faces_lib.where(plan["hflip"], flipped, faces, xp)
  if _runs(xp, plan["vflip"], config.vflip_prob):
    faces = faces_lib.where(plan["vflip"], geometry.vflip(faces, xp), faces, xp)
  if _runs(xp, plan["geometry"], config.geometry_prob):
    faces = _warp_chosen(faces, plan, xp)
  if _runs(xp, plan["brightness"] != 1.0, config.brightness_prob):
    faces = Faces(brightness(faces.images, plan["brightness"], xp), faces.targets, faces.mask)
  # The photometric changes: the image only; each is the identity where a face did not draw
  # it, so the host and the devices apply them to the whole batch alike.
  images = faces.images
  if _runs(xp, plan["contrast"] != 1.0, config.contrast_prob):
    images = contrast(images, plan["contrast"], xp)
  if _runs(xp, plan["gamma"] != 1.0, config.gamma_prob):
    images = gamma(images, plan["gamma"], xp)
  if _runs(xp, plan["blur"], config.blur_prob):
    images = blur(images, plan["blur_taps"], xp)
  if _runs(xp, plan["noise"] != 0.0, config.noise_prob):
    images = noise(images, plan["noise"], xp)
  if _runs(xp, plan["occlude"], config.occlude_prob):
    images = occlude(images, plan["occlude_boxes"], plan["occlude_fill"], xp)
  return faces if images is faces.images else Faces(images, faces.targets, faces.mask)


def augment_batch(faces: Faces, rng: np.random.Generator, config,
                  layout: keypoints.Layout) -> Faces:
  """Applies the augmentations of ``config`` (``config.augment``), each per example.

  Args:
    faces: a training batch.
    rng: the generator for this batch; the same generator state gives the same
      augmented batch.
    config: the ``augment`` section (``training.config``'s ``augment.*`` fields).
  """
  return apply_plan(faces, draw_plan(len(faces), rng, config), config, layout)


def seed_copies(faces: Faces, rng: np.random.Generator, config,
                layout: keypoints.Layout) -> Faces:
  """The seed notebook's offline augmentation: the set plus three altered copies.

  Copies: horizontal flip; that flipped copy flipped vertically as well; a
  brightness copy (factor ~ U(brightness_range)). The seed applied it *before*
  its train/test split; here it is only ever applied to the training split.
  """
  flipped = geometry.hflip(faces, layout, swap_labels=config.hflip_swap)
  both = geometry.vflip(flipped)
  low, high = config.brightness_range
  bright = Faces(brightness(faces.images, rng.uniform(low, high, len(faces))), faces.targets,
                 faces.mask)
  return faces_lib.concat([faces, flipped, both, bright])


def training_faces(train: Faces, config) -> Faces:
  """The training split, enlarged with the seed's offline copies or mirrored copies when asked.

  ``data.flip_copies``: every face plus its mirror (``geometry.hflip`` with the config's label
  swap), fixed once, as the Keras notebook fed its flips; online flips usually go with it off.
  """
  layout = keypoints.get(config.data.keypoints)
  if config.data.seed_copies:
    return seed_copies(train, np.random.default_rng([config.seed, 0xC0]), config.augment, layout)
  if config.data.flip_copies:
    flipped = geometry.hflip(train, layout, swap_labels=config.augment.hflip_swap)
    return faces_lib.concat([train, flipped])
  return train
