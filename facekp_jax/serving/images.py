"""Pictures from files and arrays: image files read, photo arrays checked, grey, resized.

``read_picture`` decodes a file (PNG; JPEG and others through Pillow, which matplotlib brings)
into float32 grey (H, W) or colour (H, W, 3) in [0, 1]; ``as_picture`` takes a path or any photo
array (H x W, H x W x 1, 3 or 4; uint8, uint16 or float in [0, 1]) to the same, refusing a wrong
rank, dtype, empty or non-finite array with a ``ValueError`` that names the problem.
``to_grey`` is ITU-R 601 luma; ``resize`` area-averages when shrinking and interpolates linearly
when enlarging; ``expand_paths`` turns folders into their image files.
"""

from __future__ import annotations

import os

import numpy as np

from facekp_jax.core.errors import DataError

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow's "L" mode.
# Files a folder contributes (what matplotlib and Pillow decode), by ending.
IMAGE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def expand_paths(paths: list[str]) -> list[str]:
  """Files as given; a folder -> its image files (``IMAGE_ENDINGS``), sorted by name.

  Raises:
    DataError: a path that does not exist, or a folder without image files.
  """
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(path, name) for name in os.listdir(path)
                     if name.lower().endswith(IMAGE_ENDINGS)
                     and os.path.isfile(os.path.join(path, name)))
      if not found:
        raise DataError(f"{path}: folder holds no image files ({', '.join(IMAGE_ENDINGS)})")
      out.extend(found)
    elif os.path.isfile(path):
      out.append(path)
    else:
      raise DataError(f"{path}: file not found")
  return out


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of a 1-D resize between pixel grids that span the same extent.

  Shrinking averages the input pixels each output pixel covers (area, by overlap);
  enlarging interpolates linearly between the pixel centres (edges clamped).
  """
  scale = n_in / n_out
  j = np.arange(n_in)[None, :]
  if scale >= 1:
    lo = np.arange(n_out)[:, None] * scale
    weights = np.clip(np.minimum(lo + scale, j + 1) - np.maximum(lo, j), 0.0, None)
  else:
    centre = np.clip((np.arange(n_out)[:, None] + 0.5) * scale - 0.5, 0, n_in - 1)
    weights = np.maximum(0.0, 1.0 - np.abs(centre - j))
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Resizes an (H, W) or (H, W, C) float image to (height, width[, C])."""
  rows = _resample_matrix(image.shape[0], height)
  cols = _resample_matrix(image.shape[1], width)
  out = np.tensordot(rows, np.asarray(image, np.float32), axes=(1, 0))  # (height, W, ...)
  out = np.tensordot(cols, np.moveaxis(out, 1, 0), axes=(1, 0))  # (width, height, ...)
  return np.moveaxis(out, 0, 1).astype(np.float32)


def read_picture(path: str) -> np.ndarray:
  """An image file -> float32 (H, W) grey or (H, W, 3) colour in [0, 1] (alpha dropped).

  Raises:
    DataError: a missing or undecodable file.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  import matplotlib.image  # pylint: disable=g-import-not-at-top  # Only to decode files.
  try:
    pixels = matplotlib.image.imread(path)
  except Exception as e:  # pylint: disable=broad-except  # Any decoder failure is the file's.
    detail = " ".join(str(e).split())[:120] or type(e).__name__
    raise DataError(f"{path}: cannot be read as an image ({detail})") from None
  if np.issubdtype(pixels.dtype, np.integer):
    pixels = pixels / float(np.iinfo(pixels.dtype).max)
  pixels = np.clip(np.asarray(pixels, np.float32), 0.0, 1.0)
  if pixels.ndim == 3 and pixels.shape[2] in (1, 2):
    pixels = pixels[:, :, 0]  # Grey (+ alpha).
  elif pixels.ndim == 3 and pixels.shape[2] in (3, 4):
    pixels = pixels[:, :, :3]
  if pixels.ndim not in (2, 3) or min(pixels.shape[:2]) < 1:
    raise DataError(f"{path}: unsupported image shape {pixels.shape}")
  return pixels


def to_grey(picture: np.ndarray) -> np.ndarray:
  return picture if picture.ndim == 2 else (picture @ _LUMA).astype(np.float32)


def as_picture(photo) -> np.ndarray:
  """A path or a photo array -> float32 grey (H, W) or colour (H, W, 3) in [0, 1].

  Arrays: (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA (alpha dropped); uint8 (0..255),
  uint16 (0..65535) or float in [0, 1].

  Raises:
    ValueError: an array of another rank, channel count or dtype, an empty one, one with
      non-finite values, or a float one outside [0, 1]; the message names the problem.
    DataError: a path that is missing or not an image.
  """
  if isinstance(photo, (str, os.PathLike)):
    return read_picture(os.fspath(photo))
  array = np.asarray(photo)
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
    raise ValueError(f"a photo must be H x W, or H x W x 1, 3 or 4 channels; got shape "
                     f"{array.shape}")
  if array.size == 0:
    raise ValueError(f"the photo is empty (shape {array.shape})")
  if array.dtype == np.uint8 or array.dtype == np.uint16:
    pixels = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
  elif np.issubdtype(array.dtype, np.floating):
    if not np.isfinite(array).all():
      raise ValueError("the photo has non-finite values (NaN or inf)")
    if array.min() < 0.0 or array.max() > 1.0:
      raise ValueError(f"a float photo must be in [0, 1]; got values from {array.min():g} to "
                       f"{array.max():g} (divide 0..255 values by 255, or pass uint8)")
    pixels = array.astype(np.float32)
  else:
    raise ValueError(f"a photo must be uint8, uint16 or float; got {array.dtype}")
  if pixels.ndim == 3:
    pixels = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels[:, :, :3]
  return pixels
