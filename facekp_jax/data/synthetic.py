"""Built-in synthetic faces: rendered 96x96 grey faces with exact keypoint labels.

Each face's 15 keypoints are drawn from the shape statistics of Kaggle's training labels
(``data.shape_stats``: mean + principal components), re-framed with a similarity transform to
Kaggle's framing (eye distance ~ N(36.2, 3.9) px, eye midpoint ~ N((48.3, 37.8), 2.6) px,
roll ~ N(0, 5.7 deg)). The face is then rendered *from those keypoints*, so every label
lies on its feature: pupils at the eye centres, eye corners at the ends of the eye opening,
eyebrow ends at the ends of the brow strokes, the nose tip between the nostrils, mouth
corners where the lips meet and the lip-centre points on the lip outlines.

Rendering is anti-aliased (coverage = clip(0.5 - signed distance)) and vectorised over
the pixel grid; small features are drawn in windows around them for speed. Face ``i`` of
``generate(n, seed)`` depends only on ``(seed, i)``, so a shorter run is a prefix of a
longer one.

As a file: python -m facekp_jax.synthesize --out faces.csv --n 2140 [--seed 0] [--missing]
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from facekp_jax.core import files, keypoints
from facekp_jax.data import shape_stats

_SIZE = keypoints.IMAGE_SIZE
_K = {name: i for i, name in enumerate(keypoints.KAGGLE.names)}
_LEFT, _RIGHT = _K["left_eye_center"], _K["right_eye_center"]
_GRID = np.arange(_SIZE, dtype=np.float32)
_X, _Y = _GRID[None, :], _GRID[:, None]  # Pixel (row i, col j) is centred at (x=j, y=i).

# Kaggle framing, from the shared data README.
_EYE_DIST_MEAN, _EYE_DIST_STD = 36.2, 3.9
_EYE_MID_MEAN, _EYE_MID_STD = np.array([48.3, 37.8]), 2.6
_ROLL_STD = math.radians(5.7)
_MARGIN = 1.0  # Keypoints stay in [1, 94] so every feature has some room inside the frame.
_MAX_TRIES = 50

_PATTERN_ABSENT = [tuple(_K[n] for n in absent) for absent, _ in shape_stats.MISSING_PATTERNS]
_PATTERN_P = np.array([rows for _, rows in shape_stats.MISSING_PATTERNS], np.float64)
_PATTERN_P /= _PATTERN_P.sum()
_PIXEL_TEXT = np.array([str(i) for i in range(256)], dtype=object)  # uint8 -> CSV text, fast.


# ----------------------------------------------------------------------------- geometry


def _reframe(shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Moves, scales and rolls a (15, 2) shape to a Kaggle-like framing."""
  left, right = shape[_LEFT], shape[_RIGHT]
  vec = left - right  # Subject's left eye is on the image right.
  dist = max(float(np.hypot(*vec)), 1e-3)
  target_dist = min(max(rng.normal(_EYE_DIST_MEAN, _EYE_DIST_STD), 24.0), 50.0)
  target_mid = rng.normal(_EYE_MID_MEAN, _EYE_MID_STD)
  target_roll = min(max(rng.normal(0.0, _ROLL_STD), -3 * _ROLL_STD), 3 * _ROLL_STD)
  angle = target_roll - math.atan2(vec[1], vec[0])
  c, s = math.cos(angle) * target_dist / dist, math.sin(angle) * target_dist / dist
  return (shape - (left + right) / 2) @ np.array([[c, s], [-s, c]]) + target_mid


def _local(p: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> tuple[float, float]:
  """Coordinates of ``p`` along ``axis`` and along its downward normal."""
  dx, dy = p[0] - origin[0], p[1] - origin[1]
  return float(dx * axis[0] + dy * axis[1]), float(dy * axis[0] - dx * axis[1])


def _plausible(pts: np.ndarray) -> bool:
  """In frame, and ordered like a face (so the features can be drawn through the points)."""
  if pts.min() < _MARGIN or pts.max() > _SIZE - 1 - _MARGIN:
    return False
  ex = pts[_LEFT] - pts[_RIGHT]
  along = pts @ ex / np.hypot(*ex)  # Distances across and down the face, in pixels.
  down = pts @ np.array([-ex[1], ex[0]]) / np.hypot(*ex)
  k = _K
  return bool(
      down[k["mouth_center_bottom_lip"]] - down[k["mouth_center_top_lip"]] > 3.0
      and down[k["mouth_center_top_lip"]] - down[k["nose_tip"]] > 3.0
      and along[k["mouth_left_corner"]] - along[k["mouth_right_corner"]] > 12.0
      and along[k["left_eye_outer_corner"]] - along[k["left_eye_inner_corner"]] > 6.0
      and along[k["right_eye_inner_corner"]] - along[k["right_eye_outer_corner"]] > 6.0
      and along[k["left_eyebrow_outer_end"]] - along[k["left_eyebrow_inner_end"]] > 6.0
      and along[k["right_eyebrow_inner_end"]] - along[k["right_eyebrow_outer_end"]] > 6.0)


def _sample_keypoints(rng: np.random.Generator) -> np.ndarray:
  """(15, 2) keypoints: a Kaggle-like shape in Kaggle-like framing, re-sampled until valid."""
  for _ in range(_MAX_TRIES):
    z = np.clip(rng.standard_normal(len(shape_stats.PRINCIPAL_STD)), -3.0, 3.0)
    shape = shape_stats.MEAN + (z * shape_stats.PRINCIPAL_STD) @ shape_stats.PRINCIPAL_COMPONENTS
    pts = _reframe(shape.reshape(-1, 2), rng)
    if _plausible(pts):
      return pts
  # Practically unreachable (about 87 % of draws are accepted).
  return np.clip(_reframe(shape_stats.MEAN.reshape(-1, 2), rng), 0, _SIZE - 1)


# ---------------------------------------------------------------------------- rendering


def _cover(sd, soft: float = 1.0):
  """Anti-aliased coverage of a shape from its signed distance in pixels (<0 inside)."""
  return np.clip(0.5 - sd if soft == 1.0 else 0.5 - sd / soft, 0.0, 1.0)


def _paint(img: np.ndarray, where, alpha, value) -> None:
  """Blends ``value`` over ``img[where]`` with coverage ``alpha`` (in place)."""
  region = img[where]
  region += alpha * (value - region)


def _window(centre, half: float):
  """A square window around ``centre``: (slices, x row vector, y column vector)."""
  c0, r0 = (min(max(math.floor(c - half), 0), _SIZE) for c in centre)
  c1, r1 = (min(max(math.ceil(c + half) + 1, 0), _SIZE) for c in centre)
  return (slice(r0, r1), slice(c0, c1)), _X[:, c0:c1], _Y[r0:r1, :]


def _frame_axes(p1, p2, ex):
  """Midpoint, half-length and unit axis of segment p1-p2, the axis pointing like ``ex``."""
  axis = p2 - p1
  half = float(np.hypot(*axis)) / 2
  axis = axis / (2 * half)
  return (p1 + p2) / 2, half, axis if axis @ ex >= 0 else -axis


def _uv(x, y, origin, axis):
  """Grid coordinates along ``axis`` and its downward normal (same units as x, y)."""
  dx, dy = x - float(origin[0]), y - float(origin[1])
  ax, ay = float(axis[0]), float(axis[1])
  return dx * ax + dy * ay, dy * ax - dx * ay


def _background(rng) -> np.ndarray:
  """A (96, 96) float32 backdrop: a grey level, a gradient and sometimes a wall edge."""
  img = rng.uniform(15, 240) + rng.normal(0, 0.35) * (_X - 47.5) + rng.normal(0, 0.35) * (_Y - 47.5)
  if rng.random() < 0.4:
    side = 1.0 if rng.random() < 0.5 else -1.0
    img += rng.uniform(-60, 60) * _cover((_X - rng.uniform(0, 95)) * side, 1.5)
  return img


def _draw_head(img, rng, pts, ex, d, skin) -> None:
  """Neck, ears, hair and the shaded skin of the head, from the eyes down to the chin."""
  mid = (pts[_LEFT] + pts[_RIGHT]) / 2
  u, v = _uv(_X, _Y, mid, ex)
  u, v = u / d, v / d  # Face units: one eye distance.
  centre_u = -0.4 * _local(pts[_K["nose_tip"]], mid, ex)[0] / d  # A turned head shows one cheek.
  chin = _local(pts[_K["mouth_center_bottom_lip"]], mid, ex)[1] / d + rng.uniform(0.3, 0.55)
  top = rng.uniform(-1.55, -1.2)
  v0, b = (top + chin) / 2, (chin - top) / 2
  width = rng.uniform(0.98, 1.2)
  a = width * (1 - rng.uniform(0.08, 0.3) * np.maximum(v - 0.25, 0))  # The jaw narrows.
  r2 = ((u - centre_u) / a) ** 2 + ((v - v0) / b) ** 2
  neck = _cover((np.abs(u - centre_u) - rng.uniform(0.45, 0.6)) * d) * _cover((0.6 - v) * d)
  _paint(img, ..., neck, skin * rng.uniform(0.6, 0.85))
  _draw_ears(img, rng, mid, ex, d, centre_u, width, skin)
  hair_col, hairline, hair_len = _sample_hair(rng, pts, mid, ex, d)
  lift = rng.uniform(0.0, 0.15)  # Volume on top.
  hair_width = width * rng.uniform(1.04, 1.3)
  rh2 = ((u - centre_u) / hair_width) ** 2 + ((v - v0 + lift) / (b + lift)) ** 2
  strands = 1 + rng.uniform(0, 0.06) * np.sin(rng.uniform(60, 110) * u + 3 * v)
  hair = _cover((np.sqrt(rh2) - 1) * d) * _cover((v - hair_len) * d, 3.0)
  _paint(img, ..., hair, hair_col * strands)
  # Skin darkens towards the rim of the face and with the side light.
  shade = 1 - rng.uniform(0.1, 0.35) * r2 * r2 + rng.normal(0, 0.1) * u + rng.normal(0, 0.05) * v
  visible = _cover((np.sqrt(r2) - 1) * d) * _cover((hairline[0] + hairline[1] * u * u - v) * d, 1.5)
  _paint(img, ..., visible, skin * shade)


def _draw_ears(img, rng, mid, ex, d, centre_u, width, skin) -> None:
  """Two ears at the sides of the head, behind the face and any long hair."""
  down = np.array([-ex[1], ex[0]])
  size, height = rng.uniform(0.1, 0.15) * d, rng.uniform(0.25, 0.32) * d
  for side in (-1, 1):
    centre = mid + ex * (centre_u + side * (width + 0.04)) * d + down * rng.uniform(0.2, 0.3) * d
    where, x, y = _window(centre, height + 1)
    u, v = _uv(x, y, centre, ex)
    r = np.sqrt((u / size) ** 2 + (v / height) ** 2)
    _paint(img, where, _cover((r - 1) * size), skin * rng.uniform(0.75, 0.95))
    _paint(img, where, _cover((r - 0.6) * size, 2.0) * 0.5, skin * 0.6)


def _sample_hair(rng, pts, mid, ex, d):
  """Hair grey level, hairline (v = h0 + h1 u^2, face units) and how far down hair falls."""
  brow_v = min(_local(pts[_K[n]], mid, ex)[1] for n in (
      "left_eyebrow_inner_end", "left_eyebrow_outer_end", "right_eyebrow_inner_end",
      "right_eyebrow_outer_end")) / d
  kind = rng.random()
  if kind < 0.55:
    col = rng.uniform(10, 60)  # Dark.
  elif kind < 0.85:
    col = rng.uniform(60, 120)  # Brown.
  else:
    col = rng.uniform(120, 200)  # Fair or grey.
  if rng.random() < 0.08:  # Bald: the hairline sits above the frame.
    return col, (-2.0, 0.0), -0.3
  h0 = min(rng.uniform(-1.0, -0.45), brow_v - 0.18)  # Fringes stop short of the brows.
  length = rng.uniform(-0.3, 0.3) if rng.random() < 0.5 else rng.uniform(0.3, 2.5)
  return col, (h0, rng.uniform(0.1, 0.6)), length


def _draw_eye(img, rng, centre, inner, outer, ex, skin, iris_col) -> None:
  """Socket shadow, sclera, iris and pupil at ``centre``, lash line; corners at the tips."""
  mid, half, axis = _frame_axes(inner, outer, ex)
  where, x, y = _window(mid, half + 5)
  u, v = _uv(x, y, mid, axis)
  tc, vc = _local(centre, mid, axis)
  tc = min(abs(tc) / half, 0.8)
  r_iris = half * rng.uniform(0.36, 0.46)
  r_pupil = r_iris * rng.uniform(0.35, 0.5)
  # Lids open at least enough to show the whole pupil.
  room = max(1 - tc * tc, 0.3)
  up = max(half * rng.uniform(0.4, 0.62), (-vc + r_pupil + 1.0) / room)
  lo = max(half * rng.uniform(0.25, 0.42), (vc + r_pupil + 1.0) / room)
  bump = 1 - (u / half) ** 2
  upper, lower = up * bump, lo * bump  # Lid heights above and below the corner line.
  socket = np.exp(-((u / (1.3 * half)) ** 2 + ((v + 0.3 * up) / (0.9 * half)) ** 2))
  img[where] *= 1 - rng.uniform(0.05, 0.25) * socket
  eye = _cover(np.maximum(-v - upper, v - lower), 0.8)
  _paint(img, where, eye, min(skin + rng.uniform(25, 70), 245))
  dist = np.hypot(x - float(centre[0]), y - float(centre[1]))
  _paint(img, where, _cover(dist - r_iris) * eye, iris_col)
  _paint(img, where, _cover(dist - r_pupil) * eye, iris_col * rng.uniform(0.1, 0.4))
  ends = _cover(np.abs(u) - half)
  _paint(img, where, _cover(np.abs(v + upper) - rng.uniform(0.4, 0.9)) * ends, rng.uniform(5, 45))
  crease = _cover(np.abs(v + upper + rng.uniform(1.5, 3) * bump) - 0.4) * ends
  _paint(img, where, crease * rng.uniform(0.1, 0.35), 0.5 * skin)


def _draw_brow(img, rng, inner, outer, ex, colour) -> None:
  """A tapered, arched stroke whose centre line runs from ``inner`` to ``outer``."""
  mid, half, axis = _frame_axes(inner, outer, ex)
  where, x, y = _window(mid, half + 4)
  u, v = _uv(x, y, mid, axis)
  t = u / half
  to_outer = np.clip((1 + t * np.sign((outer - inner) @ axis)) / 2, 0, 1)
  width = rng.uniform(1.0, 2.2) + (rng.uniform(0.4, 1.0) - rng.uniform(1.0, 2.2)) * to_outer
  arch = rng.uniform(0.05, 0.3) * half * (1 - t * t)
  sd = np.maximum(np.abs(v + arch) - width, np.abs(u) - half)
  _paint(img, where, _cover(sd, 1.3) * rng.uniform(0.6, 1.0), colour)


def _draw_nose(img, rng, tip, mid, ex, d, skin) -> None:
  """Bridge shadows from the eyes down, a highlight on the tip, nostrils either side."""
  length = max(_local(tip, mid, ex)[1], 4.0)
  centre = (tip + mid) / 2 + np.array([-ex[1], ex[0]]) * 3
  where, x, y = _window(centre, max(length / 2 + 6, 0.35 * d + 3))
  u, v = _uv(x, y, tip, ex)
  w = d * rng.uniform(0.22, 0.3)  # Half the width across the nostril wings.
  bridge = np.exp(-((np.abs(u) - 0.45 * w) / 1.6) ** 2) * np.clip(-v / length, 0, 1) ** 0.5
  bridge *= _cover(v + 0.6 * w, 3.0) * (1 + min(max(rng.normal(0, 0.5), -0.9), 0.9) * np.sign(u))
  img[where] *= 1 - rng.uniform(0.04, 0.15) * bridge
  wings = np.exp(-(((np.abs(u) - 0.85 * w) / (0.3 * w)) ** 2 + ((v - 0.1 * w) / (0.35 * w)) ** 2))
  below = np.exp(-((u / (0.8 * w)) ** 2 + ((v - 0.55 * w) / 1.5) ** 2))
  img[where] *= 1 - rng.uniform(0.08, 0.2) * wings - rng.uniform(0.05, 0.2) * below
  tip_light = np.exp(-(u * u + v * v) / (2 * (0.3 * w) ** 2))
  img[where] += (rng.uniform(0.05, 0.2) * skin + 8) * tip_light
  nostril = np.hypot((np.abs(u) - 0.45 * w) / (0.24 * w), (v - 0.3 * w) / (0.12 * w + 0.4))
  _paint(img, where, _cover((nostril - 1) * 0.15 * w) * rng.uniform(0.5, 0.9), 0.3 * skin)


def _lip_curve(t, point_t, point_v):
  """A parabola in the mouth frame through both corners (t = +-1) and one lip point."""
  return point_v * (1 - t * t) / (1 - min(point_t * point_t, 0.64))


def _draw_mouth(img, rng, pts, ex, skin) -> None:
  """Lips between the corners, their outer outlines through the lip-centre points.

  Lips have a limited thickness, so a tall top-to-bottom distance becomes an open mouth.
  """
  mid, half, axis = _frame_axes(pts[_K["mouth_right_corner"]], pts[_K["mouth_left_corner"]], ex)
  where, x, y = _window(mid, half + 4)
  u, v = _uv(x, y, mid, axis)
  t = u / half
  top_t, top_v = _local(pts[_K["mouth_center_top_lip"]], mid, axis)
  bot_t, bot_v = _local(pts[_K["mouth_center_bottom_lip"]], mid, axis)
  height, mid_t = bot_v - top_v, (top_t + bot_t) / (2 * half)
  upper = min(rng.uniform(0.35, 0.5) * height, rng.uniform(2.5, 4.5))
  lower = min(rng.uniform(0.4, 0.6) * height, rng.uniform(3.5, 6.0))
  if upper + lower > height:  # Closed mouth: the lips meet.
    upper, lower = upper * height / (upper + lower), lower * height / (upper + lower)
  top, bottom = _lip_curve(t, top_t / half, top_v), _lip_curve(t, bot_t / half, bot_v)
  upper_in, lower_in = _lip_curve(t, mid_t, top_v + upper), _lip_curve(t, mid_t, bot_v - lower)
  ends = np.abs(u) - half
  below = np.exp(-((u / half) ** 2 + ((v - bottom - 1.5) / 1.5) ** 2))
  img[where] *= 1 - rng.uniform(0.08, 0.25) * below
  lip = rng.uniform(0.55, 0.8) * img[where]  # Relative to the shaded skin, so lips always show.
  _paint(img, where, _cover(np.maximum(np.maximum(top - v, v - upper_in), ends), 1.2), 0.9 * lip)
  _paint(img, where, _cover(np.maximum(np.maximum(lower_in - v, v - bottom), ends), 1.2), lip)
  gap = rng.uniform(0.2, 0.8)
  inside = _cover(np.maximum(np.maximum(upper_in - v, v - lower_in) - gap, ends))
  _paint(img, where, inside, rng.uniform(5, 50))
  opening = height - upper - lower
  if opening > 2.0 and rng.random() < 0.7:  # Upper teeth.
    teeth = np.maximum(np.maximum(upper_in - v, v - upper_in - 0.45 * opening), ends + 0.15 * half)
    _paint(img, where, _cover(teeth), min(skin + rng.uniform(10, 60), 235))


def _finish(img, rng) -> np.ndarray:
  """Lighting gradient, contrast and brightness, lens blur and sensor noise; returns uint8."""
  gain = rng.uniform(0.7, 1.25) * (1 + rng.normal(0, 0.12) * (_X - 47.5) / 48
                                   + rng.normal(0, 0.12) * (_Y - 47.5) / 48)
  img = img * gain + (128 + rng.normal(0, 12) - 128 * gain.mean())
  img = _blur(img, rng.uniform(0.3, 1.0))
  img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.5, 6.0)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
  """Separable 5-tap Gaussian blur with edge padding."""
  k = [math.exp(-0.5 * (i / sigma) ** 2) for i in range(3)]
  k0, k1, k2 = (w / (k[0] + 2 * k[1] + 2 * k[2]) for w in k)
  p = np.pad(img, 2, mode="edge")
  p = k0 * p[:, 2:-2] + k1 * (p[:, 1:-3] + p[:, 3:-1]) + k2 * (p[:, :-4] + p[:, 4:])
  return k0 * p[2:-2] + k1 * (p[1:-3] + p[3:-1]) + k2 * (p[:-4] + p[4:])


def _render(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
  """A uint8 (96, 96) face drawn through the (15, 2) keypoints ``pts``."""
  left, right = pts[_LEFT], pts[_RIGHT]
  d = float(np.hypot(*(left - right)))
  ex = (left - right) / d
  skin = rng.uniform(70, 215)
  img = _background(rng)
  _draw_head(img, rng, pts, ex, d, skin)
  iris_col = min(rng.uniform(25, 120), 0.7 * skin)
  for side in ("left", "right"):
    centre, inner, outer = (pts[_K[f"{side}_eye_{part}"]]
                            for part in ("center", "inner_corner", "outer_corner"))
    _draw_eye(img, rng, centre, inner, outer, ex, skin, iris_col)
  brow_col = skin * rng.uniform(0.25, 0.7)
  for side in ("left", "right"):
    _draw_brow(img, rng, pts[_K[f"{side}_eyebrow_inner_end"]],
               pts[_K[f"{side}_eyebrow_outer_end"]], ex, brow_col)
  _draw_nose(img, rng, pts[_K["nose_tip"]], (left + right) / 2, ex, d, skin)
  _draw_mouth(img, rng, pts, ex, skin)
  return _finish(img, rng)


# ---------------------------------------------------------------------------------- API


def generate(n: int, seed: int = 0, missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Renders ``n`` synthetic faces.

  Args:
    n: number of faces.
    seed: non-negative seed; face ``i`` depends only on ``(seed, i)``.
    missing: if True, blank the labels following Kaggle's missing-label patterns (most
      rows keep only the eye centres, nose tip and bottom lip); the images are unchanged.

  Returns:
    ``(images, keypoints)``: uint8 (n, 96, 96) and float32 (n, 30) in ``keypoints.KAGGLE.columns``
    order, NaN where a label is absent.
  """
  if n < 0:
    raise ValueError(f"n must be >= 0, got {n}")
  images = np.empty((n, _SIZE, _SIZE), np.uint8)
  coords = np.empty((n, keypoints.KAGGLE.num_coords), np.float32)
  for i in range(n):
    rng = np.random.default_rng([seed, i])
    pts = _sample_keypoints(rng)
    images[i] = _render(rng, pts)
    coords[i] = pts.reshape(-1)
    if missing:  # Drawn last, so the image and geometry do not depend on `missing`.
      for k in _PATTERN_ABSENT[rng.choice(len(_PATTERN_P), p=_PATTERN_P)]:
        coords[i, 2 * k:2 * k + 2] = np.nan
  return images, coords


def to_frame(images: np.ndarray, coords: np.ndarray) -> pd.DataFrame:
  """Kaggle training.csv layout: the 30 ``COLUMNS`` then ``Image`` (9216 space-separated ints)."""
  frame = pd.DataFrame(np.asarray(coords, np.float32), columns=list(keypoints.KAGGLE.columns))
  flat = np.asarray(images, np.uint8).reshape(len(images), -1)
  frame[keypoints.IMAGE_COLUMN] = [" ".join(_PIXEL_TEXT[row].tolist()) for row in flat]
  return frame


def write_csv(path: str, n: int, seed: int = 0, missing: bool = False) -> None:
  """Writes ``generate(n, seed, missing)`` as a Kaggle-layout CSV (``.csv`` or ``.csv.gz``).

  The file appears atomically (``core.files.atomic_write``).
  """
  frame = to_frame(*generate(n, seed=seed, missing=missing))
  # gzip's usual level 6: pandas' default 9 is ~3x slower for a 2 % smaller file.
  compression = {"method": "gzip", "compresslevel": 6} if path.endswith(".gz") else None
  files.write_csv(path, frame, compression=compression)
