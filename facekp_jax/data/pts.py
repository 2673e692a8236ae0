"""Folders of face images with 300W-style ``.pts`` files, read into faces (and written from them).

A folder holds images (``.jpg .jpeg .png .bmp``, any case, in any subfolder) each with a
``NAME.pts`` beside ``NAME.jpg``: ``version: 1`` (optional), ``n_points: N``, ``{``, N lines
``x y``, ``}``, in pixels of the image with **0-based pixel centres** (x = 0 is the centre of
the first column). ``read_folder`` reads every image grey, frames its face into the model's
96x96 frame (``frame_face``) and returns the faces, their layout (by point count, or given) and
their relative paths; ``write_folder`` writes such a folder. Every problem with an input file
raises ``DataError`` whose message is one line naming the file, the line (1-based) where it
applies, and the problem.

Framing (``FRAMING``): a face is placed from its keypoints' bounding box. The square whose side
is the larger side of the points' bounding box, centred on the box's centre, is mapped by a
scale and a shift (no rotation: the natural head roll is kept) so that its side becomes
``side`` frame pixels and its centre lands at frame point ``(cx, cy)``. The constants are per
layout, by one of two rules.

**The inner face** (``kaggle15``, ``mtfl5``: eyes, brows, nose, mouth): where Kaggle's framing
puts faces: eye-centre distance ``EYE_DISTANCE`` = 36.2 px and eye midpoint ``EYE_MIDPOINT`` =
(48.3, 37.8) px (Kaggle's framing statistics). ``calibrate`` derives such constants from faces'
points: side = 36.2 / median(eye distance / box side), and the centre so that the median eye
midpoint lands at (48.3, 37.8).

  * ``mtfl5``: the 7650 real faces of MTFL (LFW and web photos), whose 5 points are already in
    Kaggle's framing; 300W's faces through eye centres, nose tip 30 and mouth corners 48, 54
    agree (42.22, 48.30, 57.04). The bounding box of these 5 points in Kaggle's mean shape
    (side 39.29) is smaller: the median of each face's larger side exceeds the mean shape's,
    as its width and height are nearly equal.
  * ``kaggle15``: Kaggle's mean shape (the 2140 complete training rows): the bounding box of
    its 15 points maps to itself. ``calibrate`` on shapes drawn from Kaggle's shape model
    (mean and 12 principal components) agrees to 1 % (63.14, 48.06, 55.65).

**The whole face** (``300w68``, ``wflw98``, ``cofw29``: points down to the chin, and for the
first two the jaw's contour): ``WHOLE_FACE``, the box's square at side 76 centred at (47.5, 48),
so that every point stays inside the frame even at the geometric augmentation's largest scale
(1.2 about the frame centre: the box's [10, 86] becomes [2.5, 93.5]). Kaggle's placement would
cut the chin off: ``calibrate`` on the 2012 faces of 300W's training parts (Helen, LFPW, AFW;
eye centre = the mean of each eye's 6 points) gives (85.18, 48.26, 62.86), whose box reaches
y = 105: 6.4 % of those faces have a point outside the frame (17.5 % at scale 1.2), where a
heatmap cannot put it. Trained on Helen + LFPW and scored on AFW (``python -m experiments.w300
--heldout=afw``: 50 epochs, seed 0), the whole face scores NME 0.0741 against 0.0790 at
Kaggle's placement (FR@0.10 0.148 against 0.196), and 0.0746 (FR@0.10 0.163) at Kaggle's
placement with the maps widened past the frame (``model.heatmap_margin=16``). Framed so,
300W's eyes are a median 32.3 px apart around (47.5, 25.6).

A point outside the frame after framing is kept as it is.
"""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
from absl import logging

from facekp_jax.core import faces as faces_lib
from facekp_jax.core import keypoints
from facekp_jax.core.errors import DataError
from facekp_jax.core.faces import Faces

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
EYE_DISTANCE, EYE_MIDPOINT = keypoints.EYE_DISTANCE, keypoints.EYE_MIDPOINT

# Layout name -> (side, cx, cy): see the module docstring for how each was obtained.
WHOLE_FACE = (76.0, 47.5, 48.0)  # The whole face's rule: see the module docstring.
FRAMING: dict[str, tuple[float, float, float]] = {
    "kaggle15": (63.86, 47.69, 55.93),
    "mtfl5": (42.32, 48.30, 57.21),
    "300w68": WHOLE_FACE,
    "wflw98": WHOLE_FACE,
    "cofw29": WHOLE_FACE,
}

def _text(path: str) -> list[str]:
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError:
    raise DataError(f"{path}: line 1: not a text file") from None
  return text.splitlines()


def _float(path: str, number: int, token: str) -> float:
  try:
    value = float(token)
  except ValueError:
    raise DataError(f"{path}: line {number}: not a number: {token!r:.40}") from None
  if not math.isfinite(value):
    raise DataError(f"{path}: line {number}: coordinate is not finite: {token!r:.40}")
  return value


def _header(path: str, lines: list[tuple[int, str]]) -> tuple[int, int]:
  """(n_points, index in ``lines`` of the ``{`` line) of a .pts file's non-blank lines."""
  if not lines:
    raise DataError(f"{path}: line 1: file is empty (expected 'n_points: N')")
  i = 0
  key, _, value = lines[0][1].partition(":")
  if key.strip().lower() == "version":
    i = 1
  if i >= len(lines):
    raise DataError(f"{path}: line {lines[-1][0]}: missing 'n_points: N' (file ends)")
  number, text = lines[i]
  key, _, value = text.partition(":")
  if key.strip().lower() != "n_points":
    raise DataError(f"{path}: line {number}: missing 'n_points: N', got {text!r:.40}")
  try:
    n = int(value.strip())
  except ValueError:
    raise DataError(f"{path}: line {number}: n_points is not a whole number: "
                    f"{value.strip()!r:.40}") from None
  if n <= 0:
    raise DataError(f"{path}: line {number}: n_points is {n}, expected at least 1")
  if i + 1 >= len(lines) or lines[i + 1][1] != "{":
    where, got = (lines[i + 1][0], f", got {lines[i + 1][1]!r:.40}") if i + 1 < len(lines) \
        else (number, " (file ends)")
    raise DataError(f"{path}: line {where}: missing '{{' after n_points{got}")
  return n, i + 1


def read_pts(path: str) -> np.ndarray:
  """Reads one 300W ``.pts`` file.

  Blank lines and ``\\r\\n`` line ends are tolerated; ``version:`` is optional.

  Returns:
    float64 (N, 2): the points' (x, y), as written in the file.

  Raises:
    DataError: naming the file, the line (1-based) and the problem.
  """
  lines = [(k + 1, line.strip()) for k, line in enumerate(_text(path)) if line.strip()]
  n, brace = _header(path, lines)
  points = []
  for number, text in lines[brace + 1:]:
    if text == "}":
      if len(points) != n:
        raise DataError(f"{path}: line {number}: n_points is {n} but {len(points)} points "
                        "precede '}'")
      rest = lines[brace + 2 + len(points):]
      if rest:
        raise DataError(f"{path}: line {rest[0][0]}: text after '}}': {rest[0][1]!r:.40}")
      return np.array(points, np.float64).reshape(n, 2)
    tokens = text.split()
    if len(tokens) != 2:
      raise DataError(f"{path}: line {number}: expected 'x y', got {text!r:.40}")
    points.append([_float(path, number, t) for t in tokens])
  last = lines[-1][0]
  raise DataError(f"{path}: line {last}: no closing '}}' (the file ends after {len(points)} of "
                  f"{n} points)")


def calibrate(points: np.ndarray, eyes: tuple) -> tuple[float, float, float]:
  """The framing constants ``(side, cx, cy)`` that put these faces at Kaggle's framing.

  Args:
    points: (N, K, 2) keypoints of N faces, in any pixels.
    eyes: two index sequences into the K points; each eye's centre is the mean of its points.

  Returns:
    side = ``EYE_DISTANCE`` / median(eye distance / box side); (cx, cy) such that the median
    eye midpoint, framed, is ``EYE_MIDPOINT`` (the framing is a scale and shift per face, so
    medians of framed values are the framed medians).
  """
  points = np.asarray(points, np.float64)
  lo, hi = points.min(axis=1), points.max(axis=1)
  centre, box = (lo + hi) / 2, (hi - lo).max(axis=1)
  a, b = (points[:, list(e)].mean(axis=1) for e in eyes)
  side = EYE_DISTANCE / np.median(np.linalg.norm(b - a, axis=1) / box)
  offset = np.median(((a + b) / 2 - centre) / box[:, None], axis=0)
  cx, cy = np.asarray(EYE_MIDPOINT) - side * offset
  return float(side), float(cx), float(cy)


def _framing(points: np.ndarray, layout_name: str) -> tuple[float, np.ndarray]:
  """(scale, shift) of the framing map ``p' = scale * p + shift`` of a face's points."""
  if layout_name not in FRAMING:
    raise ValueError(f"no framing for layout {layout_name!r} (FRAMING has "
                     f"{', '.join(FRAMING)})")
  side, cx, cy = FRAMING[layout_name]
  lo, hi = points.min(axis=0), points.max(axis=0)
  box = float((hi - lo).max())
  if not box > 0:
    raise ValueError("the points span no area: cannot frame them")
  scale = side / box
  return scale, np.array([cx, cy]) - scale * (lo + hi) / 2


def _warp(image: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
  """``image`` through ``p' = scale * p + shift`` into the 96x96 frame (pixel centres at
  integers, black outside the image). A shrink first averages by area (no aliasing) over the
  part of the image that reaches the frame, then shifts bilinearly."""
  size = keypoints.IMAGE_SIZE
  matrix = np.array([[scale, 0.0, shift[0]], [0.0, scale, shift[1]]])
  if scale < 1:
    # The source region the frame [-0.5, 95.5]^2 sees, plus the area filter's reach.
    margin = 2.0 / scale + 2.0
    lo = (-0.5 - shift) / scale - margin
    hi = (size - 0.5 - shift) / scale + margin
    x0, y0 = max(0, math.floor(lo[0])), max(0, math.floor(lo[1]))
    x1 = min(image.shape[1], math.ceil(hi[0]))
    y1 = min(image.shape[0], math.ceil(hi[1]))
    if x1 <= x0 or y1 <= y0:
      return np.zeros((size, size), np.uint8)
    w, h = x1 - x0, y1 - y0
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    image = cv2.resize(np.ascontiguousarray(image[y0:y1, x0:x1]), (nw, nh),
                       interpolation=cv2.INTER_AREA)
    # A small pixel r has its centre at crop point (r + 0.5) / f - 0.5 (f = nw / w).
    fx, fy = nw / w, nh / h
    matrix = np.array([
        [scale / fx, 0.0, scale * (0.5 / fx - 0.5 + x0) + shift[0]],
        [0.0, scale / fy, scale * (0.5 / fy - 0.5 + y0) + shift[1]]])
  return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def frame_face(image: np.ndarray, points: np.ndarray,
               layout_name: str) -> tuple[np.ndarray, np.ndarray]:
  """Frames a face into the model's 96x96 frame by ``FRAMING[layout_name]``.

  Args:
    image: uint8 (H, W) grey image.
    points: (K, 2) the face's keypoints (x, y) in the image, 0-based pixel centres.
    layout_name: the points' layout (a key of ``FRAMING``).

  Returns:
    ``(image, points)``: uint8 (96, 96) and float64 (K, 2), through one and the same map, so
    a point at a pixel centre lands on the centre of that pixel's image in the frame.

  Raises:
    ValueError: a layout without framing, or points that span no area.
  """
  points = np.asarray(points, np.float64)
  scale, shift = _framing(points, layout_name)
  return _warp(np.asarray(image, np.uint8), scale, shift), scale * points + shift


def _pairs(path: str) -> list[tuple[str, str]]:
  """(image, .pts) paths relative to ``path`` of the images that have a .pts beside them,
  sorted by the image's path."""
  found, skipped = [], 0
  for folder, _, files in os.walk(path, followlinks=True):
    pts = {f.lower(): f for f in files if f.lower().endswith(".pts")}
    stems = {}
    for name in files:
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        continue
      if (stem + ".pts").lower() not in pts:
        skipped += 1
        continue
      rel = os.path.relpath(os.path.join(folder, name), path)
      if stem.lower() in stems:
        raise DataError(f"{os.path.join(path, rel)}: another image, {stems[stem.lower()]}, "
                        "shares its .pts file")
      stems[stem.lower()] = name
      found.append((rel, os.path.join(os.path.dirname(rel), pts[(stem + ".pts").lower()])))
  if skipped:
    logging.info("%s: skipped %d images without a .pts file", path, skipped)
  return sorted(found)


def _layout_of(path: str, n: int) -> keypoints.Layout:
  by_count = {k.num_keypoints: k for k in keypoints.LAYOUTS.values()}
  if n not in by_count:
    known = ", ".join(f"{k.name}: {k.num_keypoints}" for k in keypoints.LAYOUTS.values())
    raise DataError(f"{path}: {n} points, a count no built-in layout has ({known}); set "
                    "data.keypoints to name the layout")
  return by_count[n]


def read_folder(path: str, layout: keypoints.Layout | None = None
                ) -> tuple[Faces, keypoints.Layout, list[str]]:
  """Reads a folder of images with .pts files into framed faces.

  Args:
    path: the folder; searched recursively; an image without a .pts beside it is skipped.
    layout: the points' layout; None: the built-in layout with the files' point count.

  Returns:
    ``(faces, layout, names)``: the faces framed by ``frame_face`` (targets x, y interleaved,
    all present), their layout, and each face's image path relative to ``path``, in order.

  Raises:
    DataError: not a folder, no image with a .pts, a malformed .pts, a point count that is
      not the layout's (or no built-in layout's), an unreadable image.
  """
  if not os.path.isdir(path):
    raise DataError(f"{path}: not a folder" if os.path.exists(path) else
                    f"{path}: folder not found")
  pairs = _pairs(path)
  if not pairs:
    raise DataError(f"{path}: no images with .pts files")
  images = np.empty((len(pairs), keypoints.IMAGE_SIZE, keypoints.IMAGE_SIZE), np.uint8)
  coords = None
  first = ""
  for i, (image_name, pts_name) in enumerate(pairs):
    image_path, pts_path = os.path.join(path, image_name), os.path.join(path, pts_name)
    points = read_pts(pts_path)
    if layout is None:
      layout, first = _layout_of(pts_path, len(points)), pts_path
    if len(points) != layout.num_keypoints:
      source = f", as {first} has" if first else ""
      raise DataError(f"{pts_path}: {len(points)} points, expected {layout.num_keypoints} "
                      f"(layout {layout.name}{source})")
    if not (points.max(axis=0) - points.min(axis=0)).max() > 0:
      raise DataError(f"{pts_path}: the points span no area: cannot frame the face")
    image = cv2.imread(image_path, cv2.IMREAD_GRAYSCALE)
    if image is None:
      raise DataError(f"{image_path}: cannot be read as an image")
    if coords is None:
      coords = np.empty((len(pairs), layout.num_coords), np.float64)
    images[i], framed = frame_face(image, points, layout.name)
    coords[i] = framed.reshape(-1)
  return faces_lib.from_arrays(images, coords), layout, [name for name, _ in pairs]


def write_folder(path: str, images_u8: np.ndarray, coords: np.ndarray,
                 names: list[str] | None = None) -> list[str]:
  """Writes faces as ``NAME.png`` images with ``NAME.pts`` files beside them.

  Args:
    path: the folder (made if missing).
    images_u8: uint8 (N, H, W) grey images.
    coords: (N, K, 2) each face's points (x, y), 0-based pixel centres of its image; finite.
    names: N file stems relative to ``path`` (may hold subfolders); default ``face_00000``...

  Returns:
    The images' paths relative to ``path``, in order.
  """
  images_u8, coords = np.asarray(images_u8), np.asarray(coords, np.float64)
  if images_u8.ndim != 3 or images_u8.dtype != np.uint8:
    raise ValueError(f"images must be uint8 (N, H, W), got {images_u8.dtype} {images_u8.shape}")
  if coords.shape[:1] != images_u8.shape[:1] or coords.ndim != 3 or coords.shape[2] != 2:
    raise ValueError(f"coords must be (N={len(images_u8)}, K, 2), got {coords.shape}")
  if not np.isfinite(coords).all():
    raise ValueError("coords must be finite: a .pts file holds no missing points")
  names = list(names) if names is not None else [f"face_{i:05d}" for i in range(len(coords))]
  if len(names) != len(coords):
    raise ValueError(f"{len(names)} names for {len(coords)} faces")
  written = []
  for image, points, name in zip(images_u8, coords, names):
    stem = os.path.join(path, name)
    os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
    if not cv2.imwrite(stem + ".png", image):
      raise OSError(f"{stem}.png: cannot be written")
    lines = [f"{float(x)!r} {float(y)!r}" for x, y in points]
    with open(stem + ".pts", "w") as f:
      f.write(f"version: 1\nn_points: {len(points)}\n{{\n" + "\n".join(lines) + "\n}\n")
    written.append(name + ".png")
  return written
