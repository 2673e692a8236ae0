"""Finding faces in photos, and the affine maps between a photo and the model's aligned crops.

The model knows one framing only, Kaggle's: an upright face, eye centres
``EYE_DISTANCE`` (36.2) px apart with their midpoint at ``EYE_MIDPOINT`` (48.3, 37.8)
of the 96x96 frame (the statistics ``../shared/data/README.md`` gives and the built-in
faces are drawn from). Each face of a photo is brought into that framing by a
similarity map ``M`` (2x3, photo pixels -> crop pixels), the model predicts in the
crop, and ``to_photo`` maps the keypoints back through ``M``'s inverse. Pixel
``(row i, column j)`` is centred at ``(x=j, y=i)`` in both frames.

Detector: OpenCV's Haar cascade ``haarcascade_frontalface_alt2.xml``, whose weights
ship inside ``opencv-python-headless`` (4.x; 5.0 dropped the cascades, hence ``<5``).
Weighed against: OpenCV's YuNet (``cv2.FaceDetectorYN``: better on turned and small
faces, but its ONNX weights are not in the wheel and would have to be fetched),
scikit-image's LBP cascade (ships in the wheel, same family, no confidence score),
dlib's HOG detector (``pip install dlib-bin``: a wheel now, Boost licence; its sub-detectors
reach faces turned ~27 degrees, to be measured against this path in the photo benchmark,
issue 29) and MediaPipe / RetinaFace / InsightFace (large dependencies, or weights downloaded
at run time). On 600 MTFL faces (placed in a larger canvas) ``alt2`` found 97 % with no false
box, ``default`` 95.5 % with 4 false boxes, ``alt`` 95 % at twice the time
(``experiments/faces_align.py``). Haar finds frontal faces within about 20 degrees of
upright, so ``detect`` also searches the photo turned by each of ``ROLLS`` (at ``VIEW_SCALE``
of its size), maps each box back and keeps the best-scored box of each face; the view's turn
is the face's ``roll``, which the first crop undoes (``box_transform``). Profiles are missed.
The cascade's false boxes are dropped once the model has read them: a face whose keypoints'
mean confidence is under ``MIN_FACE_SCORE`` is not a face (``find_keypoints``).

From a box, the eyes are placed where they lie in ``alt2``'s boxes on those faces (median
midpoint at (0.497, 0.389) of the box, distance 0.377 of its width). That guess is rough (the
distance's interquartile range is ~10 % of it, and it knows no roll). With ``refine``, a first
pass of the model reads the face in that crop and the face is cropped again by the similarity
that lays its keypoints on the layout's mean shape in the training framing (``shape_transform``;
Kaggle's mean shape, ``MEAN_SHAPE``, for Kaggle's points and MTFL's five, else the training
split's mean, ``Predictor.mean_shape``), then read there. Measured on 600 held-out MTFL faces
(``experiments/faces_align.py``, README "Using a trained model"): it helps with tilted heads and
is even on upright ones; re-framing from the two eyes alone made things worse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import cv2
import numpy as np

from facekp_jax.core import keypoints
from facekp_jax.data import shape_stats

SIZE = keypoints.IMAGE_SIZE
EYE_DISTANCE, EYE_MIDPOINT = keypoints.EYE_DISTANCE, keypoints.EYE_MIDPOINT
CASCADE = "haarcascade_frontalface_alt2.xml"
# Where alt2's box (x, y, w, h) puts the eye midpoint (fractions of w and h) and the eye
# distance (fraction of w): medians over 600 MTFL faces, experiments/faces_align.py.
BOX_EYE_MIDPOINT = (0.497, 0.389)
BOX_EYE_DISTANCE = 0.377
_DETECT_SIDE = 1280  # Photos are searched at most this large (longest side); boxes scaled back.
_MIN_FACE = 24  # Smallest face searched for, pixels of the searched image.
# The rolls (degrees) searched beside the upright photo, and the turned views' size (a share
# of the searched photo's: their canvases are larger, and half the size costs a quarter).
# Haar finds faces within about 15 degrees of upright. On 100 300W faces placed in photos
# (experiments/photo_path.py's draw, detection alone), found at rolls 0/15/30/45/60:
# upright only 91/59/12/1/0 %; +-40: 93/69/84/83/40 % (1.9x the upright search's time); +-30:
# 94/84/92/57/13 % (1.9x); +-20 and +-45: 94/95/89/93/58 % (2.6x); the same at 0.4 of the
# size, or searched in coarser steps (scale factor 1.15-1.2), lose 2-11 points at 30-45
# degrees. The turned views are searched for faces of ``MIN_TURNED_FACE`` px or more (of the
# searched photo): smaller ones are found upright only. The finest scales cost the most; at 72
# px the four views take ~30 % less time than at 48 (the least the half-size views can see),
# and no face of that draw is lost (its faces are ~75-180 px wide).
ROLLS = (-45.0, -20.0, 20.0, 45.0)
VIEW_SCALE = 0.5
MIN_TURNED_FACE = 72
SAME_FACE = 0.5  # Boxes from two views overlapping by more (of the smaller one): one face.
# A face whose keypoints' mean confidence (its face score) is under this is dropped, where the
# model scores them (a heatmap head). The cascade's own score does not tell faces from the
# rest (the 5th percentile of true faces' scores, 55.2, is the median of the false boxes'),
# the model's does, above all through its TTA views' agreement (a face-free patch reads
# differently in each view). The shipped model on experiments/photo_path.py's photos (seed 0),
# found at 0/15/30/45/60 degrees and boxes on the 95 face-free photos: no filter
# 94/95/89/93/58 %, 16 boxes; at 0.4 94/95/88/92/57 %, 1; at 0.5 the same, none; 0.6
# 93/94/87/91/57 %, none; 0.7 81/80/76/81/54 % (the disc's mass alone, at 0.9:
# 92/94/86/91/56 %, 1 box).
MIN_FACE_SCORE = 0.5

# (N, 96, 96, 1) in [0, 1] -> (N, 2K) crop pixels (NaN: a keypoint the model does not read).
Predict = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Face:
  """A detected face: ``box`` (x, y, width, height) in photo pixels (x, y: its top-left
  pixel's centre), the detector's ``score`` (the cascade's last-stage weight: larger is
  more face-like, not a probability; NaN for a box given by hand) and ``roll`` (degrees): how
  far the face leans, as the view it was found in said (the eye line's angle from the x axis,
  y pointing down: positive is clockwise as the photo is shown). A face leaning by ``roll``
  stands upright in the photo turned by ``roll`` (``turned_view``); its box there, turned back
  about its centre, is ``box``: the box's size about that centre, before the turn."""

  box: tuple[float, float, float, float]
  score: float = math.nan
  roll: float = 0.0


@dataclasses.dataclass
class Keypoints:
  """One face's result: its ``face``, the crop map ``transform`` (2x3, photo -> crop)
  the prediction was made in, ``keypoints`` (2K,) in the photo's pixels, and ``confidence``
  (K,): how sure the model is of each in that crop (None: not scored)."""

  face: Face
  transform: np.ndarray
  keypoints: np.ndarray
  confidence: np.ndarray | None = None

  @property
  def face_score(self) -> float | None:
    """The mean confidence of the keypoints the model reads (None: not scored)."""
    return None if self.confidence is None else face_score(self.confidence)


def face_score(confidence: np.ndarray) -> float:
  """A face's score from its keypoints' confidences (K,): their mean, NaN (untrained) left out."""
  return float(np.nanmean(np.asarray(confidence, np.float64)))


_cascade = None


def _detector() -> cv2.CascadeClassifier:
  global _cascade  # One load per process (~50 ms); cascades are not shared across threads.
  if _cascade is None:
    path = cv2.data.haarcascades + CASCADE
    _cascade = cv2.CascadeClassifier(path)
    if _cascade.empty():
      raise RuntimeError(f"cannot load OpenCV's face cascade {path}")
  return _cascade


def to_uint8(grey: np.ndarray) -> np.ndarray:
  """A float picture in [0, 1] -> uint8 0..255 (rounded)."""
  return np.round(np.clip(grey, 0.0, 1.0) * 255.0).astype(np.uint8)


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
  """``image`` shrunk by ``scale`` (area filter), at least one pixel a side."""
  return cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                            max(1, round(image.shape[0] * scale))), interpolation=cv2.INTER_AREA)


def _search(image: np.ndarray, min_face: int = _MIN_FACE) -> tuple[np.ndarray, np.ndarray]:
  """The cascade's boxes (N, 4) and scores (N,) in a uint8 image, of faces ``min_face`` px or
  larger."""
  boxes, _, weights = _detector().detectMultiScale3(
      image, scaleFactor=1.1, minNeighbors=5, minSize=(min_face, min_face),
      outputRejectLevels=True)
  return np.reshape(boxes, (-1, 4)).astype(np.float64), np.reshape(weights, -1)


def turned_view(image: np.ndarray, angle: float,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """``image`` turned by ``angle`` degrees (positive: counter-clockwise as shown) about its
  centre and scaled by ``scale``, onto a canvas that holds all of it (edges repeated), and
  the map (2x3, image -> view) of its pixel centres."""
  if scale < 1.0:  # Shrink first (area filter), then turn: no aliasing.
    small = _resized(image, scale)
    view, turn = turned_view(small, angle)
    sx, sy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
    shrink = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
    return view, turn @ shrink
  h, w = image.shape
  turn = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, 1.0)
  c, s = abs(turn[0, 0]), abs(turn[0, 1])
  vw, vh = int(math.ceil(w * c + h * s)), int(math.ceil(w * s + h * c))
  turn[:, 2] += ((vw - 1) / 2.0 - (w - 1) / 2.0, (vh - 1) / 2.0 - (h - 1) / 2.0)
  view = cv2.warpAffine(image, turn, (vw, vh), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)
  return view, turn


def overlap(a, b) -> float:
  """The share of the smaller of two boxes (x, y, w, h) that lies inside the other (a box
  inside a face's box is a part of that face, whatever their sizes)."""
  w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
  return w * h / min(a[2] * a[3], b[2] * b[3])


def detect(grey: np.ndarray, rolls=ROLLS, view_scale: float = VIEW_SCALE) -> list[Face]:
  """The frontal faces of a grey (H, W) photo (uint8, or float in [0, 1]), left to right.

  The photo is searched as it is and turned by each angle of ``rolls`` (degrees; a face
  leaning by about ``a`` is upright in the photo turned by ``a``): a face found in several
  views is kept once, from the view whose box scores highest (boxes overlapping by more than
  ``SAME_FACE`` of the smaller one). The turned views are searched at ``view_scale`` of the
  photo's size (their canvases are larger: a cost). Photos longer than 1280 px are searched at
  that size; boxes are in the photo's pixels.
  """
  image = grey if grey.dtype == np.uint8 else to_uint8(grey)
  shrink = min(1.0, _DETECT_SIDE / max(image.shape))
  if shrink < 1.0:
    image = _resized(image, shrink)
  found = []
  for roll in (0.0, *rolls):
    view, turn = (image, np.eye(2, 3)) if roll == 0.0 else turned_view(image, roll, view_scale)
    back = cv2.invertAffineTransform(turn)
    boxes, scores = _search(view, _MIN_FACE if roll == 0.0 else max(
        _MIN_FACE, round(MIN_TURNED_FACE * view_scale)))
    size = math.sqrt(abs(np.linalg.det(back[:, :2])))  # View pixels -> image pixels.
    for (x, y, w, h), score in zip(boxes, scores):
      cx, cy = back @ np.array([x + (w - 1) / 2.0, y + (h - 1) / 2.0, 1.0])
      w, h = w * size, h * size
      # The searched image's pixel centres -> the photo's: u -> (u + 0.5) / shrink - 0.5.
      cx, cy, w, h = (cx + 0.5) / shrink - 0.5, (cy + 0.5) / shrink - 0.5, w / shrink, h / shrink
      found.append(Face((cx - (w - 1) / 2.0, cy - (h - 1) / 2.0, w, h), float(score),
                        float(roll)))
  kept = []
  for face in sorted(found, key=lambda f: -f.score):  # The best view of each face.
    if all(overlap(face.box, k.box) <= SAME_FACE for k in kept):
      kept.append(face)
  return sorted(kept, key=lambda f: (f.box[0], f.box[1]))


def eye_transform(midpoint, distance: float, roll: float = 0.0) -> np.ndarray:
  """The similarity (2x3, photo -> crop) that puts eyes with this ``midpoint`` (x, y),
  ``distance`` and ``roll`` (radians, the eye line's angle from the x axis) at Kaggle's
  framing: upright, ``EYE_DISTANCE`` apart, midpoint at ``EYE_MIDPOINT``."""
  if not distance > 0:
    raise ValueError(f"eye distance must be positive, got {distance}")
  s = EYE_DISTANCE / distance
  c, n = s * math.cos(roll), s * math.sin(roll)
  linear = np.array([[c, n], [-n, c]])  # Rotation by -roll, then the scale.
  shift = np.asarray(EYE_MIDPOINT) - linear @ np.asarray(midpoint, np.float64)
  return np.concatenate([linear, shift[:, None]], axis=1)


def box_transform(box, roll: float = 0.0) -> np.ndarray:
  """The crop map guessed from a detector box (x, y, w, h) of a face leaning by ``roll``
  degrees (``Face.roll``): eyes where alt2's boxes have them, the box turned about its centre."""
  x, y, w, h = box
  centre = np.array([x + (w - 1) / 2.0, y + (h - 1) / 2.0])
  offset = np.array([BOX_EYE_MIDPOINT[0] * w - (w - 1) / 2.0,
                     BOX_EYE_MIDPOINT[1] * h - (h - 1) / 2.0])
  r = math.radians(roll)
  turn = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
  return eye_transform(centre + turn @ offset, BOX_EYE_DISTANCE * w, r)


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """The similarity (2x3) that maps points ``src`` (K, 2) closest to ``dst`` (least squares,
  Umeyama 1991): rotation, one scale, shift; no reflection."""
  ms, md = src.mean(0), dst.mean(0)
  s0, d0 = src - ms, dst - md
  u, sv, vt = np.linalg.svd(d0.T @ s0 / len(src))
  flip = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
  linear = (np.trace(np.diag(sv) @ flip) / (s0 ** 2).sum(1).mean()) * (u @ flip @ vt)
  return np.concatenate([linear, (md - linear @ ms)[:, None]], axis=1)


def _framed_mean_shape() -> np.ndarray:
  """Kaggle's mean shape (15, 2), moved so that its eyes sit at the training framing."""
  mean = shape_stats.MEAN.reshape(-1, 2)
  left, right = (mean[keypoints.KAGGLE.index(f"{side}_eye_center")] for side in ("left", "right"))
  dx, dy = left - right
  frame = eye_transform((left + right) / 2, math.hypot(dx, dy), math.atan2(dy, dx))
  return to_crop(frame, mean.reshape(-1)).reshape(-1, 2)


def shape_transform(coords: np.ndarray, mean_shape: np.ndarray | None = None) -> np.ndarray:
  """The crop map from a face's keypoints (2K,) in photo pixels: the similarity that lays them
  on ``mean_shape`` (K, 2), the layout's mean shape in the training framing (upright, eyes
  ~36 px apart; default: Kaggle's, ``MEAN_SHAPE``). Keypoints that are NaN (a model's
  untrained ones, ``Predictor.only_trained``) are left out of the fit."""
  mean_shape = MEAN_SHAPE if mean_shape is None else np.asarray(mean_shape, np.float64)
  xy = np.asarray(coords, np.float64).reshape(-1, 2)
  known = np.isfinite(xy).all(axis=1) & np.isfinite(mean_shape).all(axis=1)
  return _similarity(xy[known], mean_shape[known])


def to_photo(transform: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """(..., 2K) coordinates in a crop -> the photo's pixels, through ``transform``'s inverse."""
  xy = np.asarray(coords, np.float64).reshape(*np.shape(coords)[:-1], -1, 2)
  linear, shift = transform[:, :2], transform[:, 2]
  back = (xy - shift) @ np.linalg.inv(linear).T
  return back.reshape(np.shape(coords))


def to_crop(transform: np.ndarray, coords: np.ndarray) -> np.ndarray:
  """(..., 2K) coordinates in the photo -> the crop's pixels."""
  xy = np.asarray(coords, np.float64).reshape(*np.shape(coords)[:-1], -1, 2)
  return (xy @ transform[:, :2].T + transform[:, 2]).reshape(np.shape(coords))


def crop(grey: np.ndarray, transform: np.ndarray) -> np.ndarray:
  """The 96x96 float32 crop of a grey float (H, W) photo under ``transform`` (photo -> crop).

  Bilinear sampling; when the crop shrinks the photo, the region it covers is first blurred
  (Gaussian, sigma = (1/scale - 1) / 2, as scikit-image's anti-aliasing) so that small
  details do not alias. Outside the photo, its edge pixels are repeated (as
  ``pictures.fit`` pads).
  """
  grey = np.asarray(grey, np.float32)
  linear = transform[:, :2]
  scale = math.sqrt(abs(np.linalg.det(linear)))
  sigma = max(0.0, (1.0 / scale - 1.0) / 2.0)
  # The photo region the crop sees, with room for the blur and the bilinear taps.
  corners = to_photo(transform, np.array([-1, -1, SIZE, -1, -1, SIZE, SIZE, SIZE], np.float64))
  margin = 3.0 * sigma + 2.0
  x0, y0 = (max(0, math.floor(corners[i::2].min() - margin)) for i in (0, 1))
  x1 = min(grey.shape[1], math.ceil(corners[0::2].max() + margin) + 1)
  y1 = min(grey.shape[0], math.ceil(corners[1::2].max() + margin) + 1)
  if x1 <= x0 or y1 <= y0:  # The crop lies wholly outside: the nearest edge pixels.
    x0, y0 = min(x0, grey.shape[1] - 1), min(y0, grey.shape[0] - 1)
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
  region = grey[y0:y1, x0:x1]
  if sigma > 0.05:
    region = cv2.GaussianBlur(region, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
  local = transform.copy()
  local[:, 2] = transform[:, 2] + linear @ np.array([x0, y0], np.float64)
  out = cv2.warpAffine(region, local, (SIZE, SIZE), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
  # The blur and the taps only average the photo's [0, 1], but in float32 a white pixel can
  # come out a rounding above 1, which the model's input check refuses.
  return np.clip(out, 0.0, 1.0, out=out)


def predict_in_crops(predict: Predict,
                     crops: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
  """Crops (photo, map) pairs, predicts them as one batch, maps keypoints back to each photo."""
  if not crops:
    return []
  images = np.stack([crop(grey, t) for grey, t in crops])[..., None]
  predictions = np.asarray(predict(images), np.float64)
  return [to_photo(t, p) for (_, t), p in zip(crops, predictions)]


def find_keypoints(predict: Predict, grey: np.ndarray, faces: list[Face] | None = None,
                   refine: bool = True, mean_shape: np.ndarray | None = None,
                   score: Predict | None = None,
                   min_score: float = MIN_FACE_SCORE) -> list[Keypoints]:
  """The keypoints of every face in a grey float (H, W) photo, in its pixels.

  Args:
    predict: the model on aligned crops, (N, 96, 96, 1) in [0, 1] -> (N, 2K) crop pixels.
    grey: the photo, float in [0, 1].
    faces: the faces to read (default: ``detect(grey)``).
    refine: crop each face a second time, from the keypoints the first pass found
      (``shape_transform``: upright, to scale), and predict again there.
    mean_shape: (K, 2) the layout's mean shape in the frame (default: Kaggle's 15).
    score: None, or the model's confidence on aligned crops, (N, 96, 96, 1) -> (N, K)
      (``Predictor.confidences``), read in each face's last crop.
    min_score: with ``score``, the faces whose ``face_score`` is under this are dropped
      (``MIN_FACE_SCORE``; 0 keeps every face).
  """
  return find_keypoints_in(predict, [(grey, faces)], refine, mean_shape, score, min_score)[0]


def find_keypoints_in(predict: Predict, photos: list[tuple[np.ndarray, list[Face] | None]],
                      refine: bool = True, mean_shape: np.ndarray | None = None,
                      score: Predict | None = None,
                      min_score: float = MIN_FACE_SCORE) -> list[list[Keypoints]]:
  """``find_keypoints`` of several (grey photo, faces or None) at once: every face of every
  photo goes into the same batch (one model call per pass, not one per photo)."""
  photos = [(grey, detect(grey) if found is None else found) for grey, found in photos]
  owners = [(grey, f) for grey, found in photos for f in found]
  transforms = [box_transform(f.box, f.roll) for _, f in owners]
  coords = predict_in_crops(predict, [(grey, t) for (grey, _), t in zip(owners, transforms)])
  if refine and owners:
    again = [_refined(t, c, mean_shape) for t, c in zip(transforms, coords)]
    redo = [i for i, t in enumerate(again) if t is not None]
    second = predict_in_crops(predict, [(owners[i][0], again[i]) for i in redo])
    for i, c in zip(redo, second):
      transforms[i], coords[i] = again[i], c
  sure = [None] * len(owners)
  if score is not None and owners:
    sure = list(np.asarray(score(np.stack([crop(grey, t) for (grey, _), t
                                           in zip(owners, transforms)])[..., None])))
  results = iter(Keypoints(f, t, c, s)
                 for (_, f), t, c, s in zip(owners, transforms, coords, sure))
  read = [[next(results) for _ in found] for _, found in photos]
  return [[k for k in faces if k.confidence is None or k.face_score >= min_score]
          for faces in read]


# Fewest keypoints a second crop is fitted to (a similarity needs 2; 3 tolerate one bad point).
MIN_REFINE_KEYPOINTS = 3


def _refined(first: np.ndarray, coords: np.ndarray,
             mean_shape: np.ndarray | None) -> np.ndarray | None:
  """The crop map from a first pass's keypoints (NaN: untrained, left out); None (keep the
  first) where they are implausible: under ``MIN_REFINE_KEYPOINTS`` finite ones, or a framing
  under half or over twice the first crop's scale."""
  if np.isfinite(np.reshape(coords, (-1, 2))).all(axis=1).sum() < MIN_REFINE_KEYPOINTS:
    return None
  again = shape_transform(coords, mean_shape)
  if not np.isfinite(again).all() or abs(np.linalg.det(again[:, :2])) < 1e-12:
    return None
  ratio = math.sqrt(abs(np.linalg.det(again[:, :2]) / np.linalg.det(first[:, :2])))
  return again if 0.5 <= ratio <= 2.0 else None


# Kaggle's mean shape in the training framing (15, 2): what ``shape_transform`` fits to.
MEAN_SHAPE = _framed_mean_shape()
