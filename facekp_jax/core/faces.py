"""The faces container (images, keypoint targets, their mask): its joins, selections, padding.

``Faces`` holds numpy arrays on the host; inside a traced function (the on-device pipeline,
``data.augment.apply_plan`` over ``jax.numpy``) it holds JAX arrays alike, so one piece of code
serves both. It is a JAX pytree, so it can pass in and out of ``jax.jit``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

FIELDS = ("images", "targets", "mask")


@dataclasses.dataclass(frozen=True)
class Faces:
  """A set of faces.

  Attributes:
    images: float32 (N, 96, 96, 1) in [0, 1].
    targets: float32 (N, 2K) keypoint coordinates in pixels (x, y interleaved); 0 where missing.
    mask: float32 (N, 2K), 1 where the coordinate is present.
  """

  images: np.ndarray
  targets: np.ndarray
  mask: np.ndarray

  def __len__(self) -> int:
    return len(self.images)

  def take(self, index) -> Faces:
    return Faces(self.images[index], self.targets[index], self.mask[index])


jax.tree_util.register_dataclass(Faces, data_fields=list(FIELDS), meta_fields=[])


def from_arrays(images_u8: np.ndarray, coords: np.ndarray) -> Faces:
  """uint8 (N, 96, 96) images and (N, 2K) coordinates with NaNs -> ``Faces``."""
  mask = ~np.isnan(coords)
  return Faces(
      images=(images_u8.astype(np.float32) / 255.0)[..., None],
      targets=np.where(mask, coords, 0.0).astype(np.float32),
      mask=mask.astype(np.float32))


def concat(parts: Sequence[Faces]) -> Faces:
  """The faces of ``parts``, one after the other."""
  return Faces(*(np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS))


def where(select, a: Faces, b: Faces, xp=np) -> Faces:
  """Per face, ``a`` where ``select`` (N,) is true, else ``b`` (numpy or ``jax.numpy``)."""
  s = select.reshape(-1, 1)
  return Faces(xp.where(s.reshape(-1, 1, 1, 1), a.images, b.images),
               xp.where(s, a.targets, b.targets), xp.where(s, a.mask, b.mask))


def put(faces: Faces, rows: np.ndarray, values: Faces) -> Faces:
  """A copy of ``faces`` (numpy) whose faces at ``rows`` are ``values``."""
  out = []
  for f in FIELDS:
    array = getattr(faces, f).copy()
    array[rows] = getattr(values, f)
    out.append(array)
  return Faces(*out)


def pad_rows(array: np.ndarray, size: int) -> np.ndarray:
  """``array`` with all-zero rows appended up to ``size`` rows."""
  n = size - len(array)
  return array if n <= 0 else np.concatenate([array, np.zeros((n,) + array.shape[1:],
                                                              array.dtype)])

