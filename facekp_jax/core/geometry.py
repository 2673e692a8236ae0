"""Geometry of faces, once for numpy and ``jax.numpy``: mirrors, affine maps and the warp.

Conventions (see ``keypoints``): pixel column j is centred at x = j, so a horizontal mirror maps
x -> 95 - x (``mirror``). A mirrored face's left eye is the original right eye, so the
horizontal flip also permutes keypoints (and their masks) with the layout's twins
(``Layout.flip_coords``, ``flip_coords``); ``swap=False`` reproduces the seed notebook's fault
(mirrored pixels, unswapped labels) for ablations only.

Affine maps: per face, a rotation by ``angle`` degrees and a scaling about the frame centre
(47.5, 47.5), where the Kaggle framing puts the face, then a shift, as one map
``p' = s R (p - c) + c + t`` (positive angles turn the face clockwise on screen, as image y
points down). Images are resampled bilinearly; a source point outside the image takes the
nearest border pixel (edge fill, no black corners). Keypoints go through the same map; one
that leaves the frame [-0.5, 95.5]^2 becomes missing (mask 0), so it never pulls a loss.

Every function takes the array module ``xp`` (``numpy`` or ``jax.numpy``) where it computes,
so the host pipeline, the on-device pipeline, test-time augmentation and the export run the
very same code. All functions are pure: they return new arrays and leave their inputs alone.
"""

from __future__ import annotations

import numpy as np

from facekp_jax.core import keypoints
from facekp_jax.core.faces import Faces

_SIZE = keypoints.IMAGE_SIZE
FRAME_CENTRE = (_SIZE - 1) / 2.0  # Pixel centres run 0..95: the frame's centre is 47.5.
_GRID_STEPS = 2.0**14


def mirror(coord):
  """Mirrors coordinates across the image's centre line: c -> 95 - c (pixel centres)."""
  return (_SIZE - 1) - coord


def flip_coords(coords, mask, layout: keypoints.Layout | None, xp=np, *, axis: int = 0,
                swap: bool = True):
  """Keypoints (N, 2K) and their mask of faces mirrored along x (``axis=0``) or y (1).

  With ``swap`` (the horizontal flip's rule), each keypoint takes its mirror twin's place in
  ``layout`` (``Layout.flip_coords``: the left eye becomes the right eye; ``layout`` may be None
  without ``swap``). Masked coordinates are 0.

  Returns:
    ``(coords, mask)``.
  """
  x, y = coords[:, 0::2], coords[:, 1::2]
  x, y = (mirror(x), y) if axis == 0 else (x, mirror(y))
  coords = xp.stack([x, y], axis=-1).reshape(coords.shape)
  if swap:
    perm = layout.flip_coords
    coords, mask = coords[:, perm], mask[:, perm]
  return xp.where(mask > 0, coords, 0.0).astype(np.float32), mask


def hflip(faces: Faces, layout: keypoints.Layout, swap_labels: bool = True, xp=np) -> Faces:
  """Mirrors faces left-right: x -> 95 - x, left/right keypoints of ``layout`` swapped
  (``flip_coords``)."""
  return Faces(faces.images[:, :, ::-1],
               *flip_coords(faces.targets, faces.mask, layout, xp, axis=0, swap=swap_labels))


def vflip(faces: Faces, xp=np) -> Faces:
  """Mirrors faces top-bottom: y -> 95 - y (no keypoint has an up/down twin)."""
  return Faces(faces.images[:, ::-1],
               *flip_coords(faces.targets, faces.mask, None, xp, axis=1, swap=False))


def affine_maps(angle_deg, scale, shift, squeeze=None) -> tuple[np.ndarray, np.ndarray]:
  """Forward and inverse (n, 2, 3) maps of rotations, scalings (about the centre) and shifts.

  Args:
    angle_deg, scale: (n,) rotation in degrees and scale factor of each face.
    shift: (n, 2) translation (x, y) in pixels, applied after rotation and scaling.
    squeeze: (n,) or None: a horizontal scale of the upright face about the frame's vertical
      centre line, before the rotation (a face turned about its vertical axis, roughly).

  Returns:
    ``(forward, inverse)`` float32, ``[x', y'] = M[:, :2] @ [x, y] + M[:, 2]``, computed in
    float64 on the host so that every consumer applies the same numbers.
  """
  theta = np.deg2rad(np.asarray(angle_deg, np.float64))
  scale = np.asarray(scale, np.float64)
  shift = np.asarray(shift, np.float64).reshape(-1, 2)
  cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
  a_inv = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], -2)  # (n, 2, 2)
  if squeeze is not None:  # A = s R diag(q, 1): its inverse's first row over q.
    a_inv[:, 0, :] /= np.asarray(squeeze, np.float64)[:, None]
  # On a grid of 2^-14, the inverse's products with pixel coordinates (multiples of 1/2 below
  # 128) are exact in float32, so numpy and XLA (fused multiply-add or not) warp alike.
  a_inv = np.round(a_inv * _GRID_STEPS) / _GRID_STEPS
  a = np.linalg.inv(a_inv)
  c = np.full(2, FRAME_CENTRE)
  forward = np.concatenate([a, (c - a @ c + shift)[..., None]], -1)
  inverse = np.concatenate([a_inv, (-(a_inv @ forward[..., 2:]))], -1)
  return forward.astype(np.float32), inverse.astype(np.float32)


def map_coords(m, coords, xp=np):
  """Keypoints (N, 2K) through one (2, 3) affine map."""
  x, y = coords[:, 0::2], coords[:, 1::2]
  nx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
  ny = m[1, 0] * x + m[1, 1] * y + m[1, 2]
  return xp.stack([nx, ny], axis=-1).reshape(coords.shape)


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
  """Keypoints (B, 2K) through ``forward``; points that leave the frame become missing."""
  x, y = targets[:, 0::2], targets[:, 1::2]
  m = forward
  nx = m[:, 0, 0, None] * x + m[:, 0, 1, None] * y + m[:, 0, 2, None]
  ny = m[:, 1, 0, None] * x + m[:, 1, 1, None] * y + m[:, 1, 2, None]
  low, high = -0.5, _SIZE - 0.5
  inside = (nx >= low) & (nx <= high) & (ny >= low) & (ny <= high)
  keep = xp.repeat(inside, 2, axis=1)
  mask = xp.where(keep, mask, 0.0).astype(np.float32)
  moved = xp.stack([nx, ny], axis=-1).reshape(targets.shape)
  return xp.where(mask > 0, moved, 0.0).astype(np.float32), mask


def warp(faces: Faces, forward, inverse, xp=np) -> Faces:
  """Faces through the affine maps of ``affine_maps`` (images and keypoints alike)."""
  targets, mask = warp_targets(faces.targets, faces.mask, forward, xp)
  return Faces(warp_images(faces.images, inverse, xp), targets, mask)
