"""The training sampler: each batch's random plan (flips, affine warp, brightness), applied.

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
  forward, inverse = geometry.affine_maps(np.where(do_g, angle, 0.0), np.where(do_g, scale, 1.0),
                                          np.where(do_g[:, None], shift, 0.0))
  return {"hflip": do_h, "vflip": do_v, "geometry": do_g, "forward": forward,
          "inverse": inverse, "brightness": np.where(do_b, factors, 1.0).astype(np.float32)}


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
  label swap), vflip, the affine warp, brightness, over numpy or ``jax.numpy`` (``xp``)."""
  if _runs(xp, plan["hflip"], config.hflip_prob):
    flipped = geometry.hflip(faces, layout, config.hflip_swap, xp)
    faces = faces_lib.where(plan["hflip"], flipped, faces, xp)
  if _runs(xp, plan["vflip"], config.vflip_prob):
    faces = faces_lib.where(plan["vflip"], geometry.vflip(faces, xp), faces, xp)
  if _runs(xp, plan["geometry"], config.geometry_prob):
    faces = _warp_chosen(faces, plan, xp)
  if _runs(xp, plan["brightness"] != 1.0, config.brightness_prob):
    faces = Faces(brightness(faces.images, plan["brightness"], xp), faces.targets, faces.mask)
  return faces


def augment_batch(faces: Faces, rng: np.random.Generator, config,
                  layout: keypoints.Layout) -> Faces:
  """Applies the augmentations of ``config`` (``config.augment``), each per example.

  Args:
    faces: a training batch.
    rng: the generator for this batch; the same generator state gives the same
      augmented batch.
    config: the ``augment`` section: ``hflip_prob``, ``hflip_swap``,
      ``vflip_prob``, ``brightness_prob``, ``brightness_range``, ``geometry_prob``,
      ``rotate_deg``, ``scale_range``, ``shift_px``.
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
