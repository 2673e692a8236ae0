"""Your own pictures -> the model's 96x96 grey input, and keypoints back in the picture's pixels.

Photos (the default of ``predict``): every face ``detect.detect`` finds is read in a crop
aligned to the training framing (``detect.find_keypoints``); ``predict_photos`` gives a
``Photo`` per file and ``plot_photo`` its overlay (boxes and keypoints). A folder stands for
the image files in it (``expand_paths``). ``run_photos`` writes each photo's overlay,
``<out_dir>/<stem>_keypoints.png``, one row per face in a CSV (file, face index, box, detector
score, the 30 coordinates, unclipped) and an entry per photo in the JSON beside it; a photo
without a face is reported in one line and the others go on.

Whole pictures (``--nodetect``) (PNG; JPEG and others through Pillow, which matplotlib brings) are
turned grey (ITU-R 601 luma), made square, and resampled to 96x96 (area
averaging when shrinking, linear interpolation when enlarging). The model knows
Kaggle's framing only: an upright face filling most of the frame, eyes about
36 px apart (3/8 of the width) on a line about 38 px (2/5 of the height) from
the top, centred. Crop your pictures like that for good results:

  crop="none"    (default) pad the short side to a square (repeating the edge
                 pixels), so all of the picture is kept undistorted.
  crop="center"  keep the central square of the picture.

Keypoints come back in the original picture's pixels (pixel (row i, column j)
centred at (x=j, y=i)); ``plot_picture`` draws them with the square the model saw
(dashed), ``run_pictures`` prints them and writes the overlays. EXIF rotation is not applied:
a sideways photo stays sideways. Untrained keypoints (``trained_keypoints.json``) are NaN:
left out of the prints, the JSON and the overlays.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from facekp_jax.core import files, keypoints, plots
from facekp_jax.core.errors import DataError
from facekp_jax.serving import detect, predictor, submission

SIZE = keypoints.IMAGE_SIZE
CROPS = ("none", "center")
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow's "L" mode.
_PREVIEW = 640  # Longest side of the picture kept for the overlay.
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


@dataclasses.dataclass(frozen=True)
class Framing:
  """Where the model's 96x96 input lies in a picture: a ``side``-pixel square whose top-left
  pixel is picture pixel (``left``, ``top``) (negative where the square is padding)."""

  left: int
  top: int
  side: int

  def to_picture(self, coords: np.ndarray) -> np.ndarray:
    """(..., 30) coordinates in the 96x96 frame -> the picture's pixels (centre convention)."""
    out = (np.asarray(coords, np.float64) + 0.5) * (self.side / SIZE) - 0.5
    out[..., 0::2] += self.left
    out[..., 1::2] += self.top
    return out


def fit(grey: np.ndarray, crop: str = "none") -> tuple[np.ndarray, Framing]:
  """A grey (H, W) picture -> the model's (96, 96, 1) input and where it lies in the picture.

  ``crop="none"`` pads the short side to a square with the edge pixels (centred);
  ``crop="center"`` keeps the central square.
  """
  h, w = grey.shape
  if crop == "center":
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = grey[top:top + side, left:left + side]
  elif crop == "none":
    side = max(h, w)
    top, left = -((side - h) // 2), -((side - w) // 2)
    square = np.pad(grey, ((-top, side - h + top), (-left, side - w + left)), mode="edge")
  else:
    raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
  return resize(square, SIZE, SIZE)[..., None], Framing(left, top, side)


@dataclasses.dataclass
class Picture:
  """One picture's prediction: ``keypoints`` (30,) in the picture's pixels."""

  path: str
  height: int
  width: int
  framing: Framing
  keypoints: np.ndarray
  preview: np.ndarray  # The picture, at most _PREVIEW pixels on its longest side.


def preview_of(picture: np.ndarray) -> np.ndarray:
  """The picture, at most 640 pixels on its longest side (what overlays draw)."""
  h, w = picture.shape[:2]
  shrink = min(1.0, _PREVIEW / max(h, w))
  return resize(picture, max(1, round(h * shrink)), max(1, round(w * shrink)))


def predict_pictures(predict: Callable[[np.ndarray], np.ndarray], paths: list[str],
                     crop: str = "none", chunk: int = 64) -> Iterator[Picture]:
  """Predicts the keypoints of image files in batches of ``chunk`` pictures.

  ``predict``: the model on whole pictures fitted into 96x96, (N, 96, 96, 1) -> (N, 30) pixels.

  Raises:
    DataError: a missing or undecodable file.
  """
  for start in range(0, len(paths), chunk):
    inputs, pictures = [], []
    for path in paths[start:start + chunk]:
      picture = read_picture(path)
      image, framing = fit(to_grey(picture), crop)
      inputs.append(image)
      h, w = picture.shape[:2]
      pictures.append(Picture(path, h, w, framing, np.empty(0), preview_of(picture)))
    predictions = predict(np.stack(inputs))
    for p, prediction in zip(pictures, predictions):
      p.keypoints = p.framing.to_picture(prediction)
      yield p


def plot_picture(p: Picture):
  """The picture with its predicted keypoints (red x) and the model's square (dashed)."""
  scale = 6.0 / max(p.height, p.width)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(2.0, p.width * scale), max(2.0, p.height * scale)))
  extent = (-0.5, p.width - 0.5, p.height - 0.5, -0.5)
  ax.imshow(p.preview, cmap="gray" if p.preview.ndim == 2 else None, vmin=0, vmax=1,
            extent=extent, interpolation="antialiased")
  f = p.framing
  ax.add_patch(plt.Rectangle((f.left - 0.5, f.top - 0.5), f.side, f.side, fill=False, ls="--",
                             ec="yellow", lw=1))
  xy = p.keypoints.reshape(-1, 2)
  ax.plot(xy[:, 0], xy[:, 1], "x", ms=6, color="red", mew=1.5)
  ax.set_xlim(min(extent[0], f.left - 0.5), max(extent[1], f.left + f.side - 0.5))
  ax.set_ylim(max(extent[2], f.top + f.side - 0.5), min(extent[3], f.top - 0.5))
  ax.axis("off")
  ax.set_title(os.path.basename(p.path), fontsize=9)
  return fig


def keypoint_lines(p: Picture, crop: str) -> str:
  lines = [f"{p.path} ({p.width}x{p.height}, crop={crop}): x, y in the picture's pixels"]
  for name, (x, y) in zip(keypoints.KEYPOINT_NAMES, p.keypoints.reshape(-1, 2)):
    if np.isfinite(x):  # NaN: a keypoint the model was never trained on.
      lines.append(f"  {name:<26}{x:9.1f}{y:9.1f}")
  return "\n".join(lines)


@dataclasses.dataclass
class Photo:
  """One photo's faces (``detect.Keypoints``, left to right; keypoints in its pixels)."""

  path: str
  height: int
  width: int
  faces: list[detect.Keypoints]
  preview: np.ndarray | None  # See ``Picture.preview``.


def predict_photos(predict: Callable[[np.ndarray], np.ndarray], paths: list[str],
                   refine: bool = True, chunk: int = 16) -> Iterator[Photo]:
  """Finds and reads every face of each image file (``detect.find_keypoints_in``), the faces of
  ``chunk`` photos at a time in one batch.

  Args:
    predict: the model on aligned crops, (N, 96, 96, 1) in [0, 1] -> (N, 30) pixels.
    paths: image files.
    refine: a second, upright crop from the first pass's keypoints.
    chunk: photos read together.

  Raises:
    DataError: a missing or undecodable file.
  """
  for start in range(0, len(paths), chunk):
    batch = [(path, read_picture(path)) for path in paths[start:start + chunk]]
    found = detect.find_keypoints_in(predict, [(to_grey(p), None) for _, p in batch], refine)
    for (path, picture), keypoints_ in zip(batch, found):
      yield Photo(path, picture.shape[0], picture.shape[1], keypoints_, preview_of(picture))


def plot_photo(p: Photo):
  """The photo with each face's box (yellow, numbered) and keypoints (red x)."""
  scale = 6.0 / max(p.height, p.width)
  plt = plots.pyplot()
  fig, ax = plt.subplots(figsize=(max(2.0, p.width * scale), max(2.0, p.height * scale)))
  ax.imshow(p.preview, cmap="gray" if p.preview.ndim == 2 else None, vmin=0, vmax=1,
            extent=(-0.5, p.width - 0.5, p.height - 0.5, -0.5), interpolation="antialiased")
  for i, k in enumerate(p.faces):
    x, y, w, h = k.face.box
    ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="yellow", lw=1.2))
    ax.text(x - 0.5, y - 1.5, str(i), color="yellow", fontsize=8, va="bottom")
    xy = k.keypoints.reshape(-1, 2)
    ax.plot(xy[:, 0], xy[:, 1], "x", ms=4, color="red", mew=1.2)
  ax.set_xlim(-0.5, p.width - 0.5)
  ax.set_ylim(p.height - 0.5, -0.5)
  ax.axis("off")
  ax.set_title(f"{os.path.basename(p.path)}: {len(p.faces)} face" + "s" * (len(p.faces) != 1),
               fontsize=9)
  return fig


def face_lines(p: Photo) -> str:
  """A photo's summary: one line, then one line per face (box, score, eye centres)."""
  if not p.faces:
    return f"{p.path} ({p.width}x{p.height}): no face found"
  lines = [f"{p.path} ({p.width}x{p.height}): {len(p.faces)} face"
           + "s" * (len(p.faces) != 1) + " (x, y in the photo's pixels)"]
  for i, k in enumerate(p.faces):
    x, y, w, h = k.face.box
    xy = k.keypoints.reshape(-1, 2)
    left, right = xy[keypoints.LEFT_EYE], xy[keypoints.RIGHT_EYE]
    eyes = (f"; eyes left ({left[0]:.1f}, {left[1]:.1f}) right ({right[0]:.1f}, {right[1]:.1f})"
            if np.isfinite([*left, *right]).all() else "")  # NaN: eyes never trained.
    lines.append(f"  face {i}: box x {x:.0f} y {y:.0f} w {w:.0f} h {h:.0f}, score "
                 f"{k.face.score:.1f}{eyes}")
  return "\n".join(lines)


def overlay_path(out_dir: str, path: str) -> str:
  """Where a picture's overlay goes: ``<out_dir>/<its stem>_keypoints.png``."""
  return os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0] + "_keypoints.png")


def run_pictures(model: predictor.Predictor, paths: list[str], out_dir: str, crop: str = "none",
                 tta: bool = False) -> list[Picture]:
  """Prints each picture's keypoints and writes its overlay into ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  print(model.describe(tta))
  submission.print_untrained(model, "not shown")
  done = []
  for p in predict_pictures(lambda x: model.predict(x, tta=tta), paths, crop):
    p.keypoints = model.only_trained(p.keypoints)
    overlay = overlay_path(out_dir, p.path)
    plots.save_figure(plot_picture(p), overlay)
    print(f"{keypoint_lines(p, crop)}\n  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  return done


PHOTO_COLUMNS = ("file", "face", "box_x", "box_y", "box_width", "box_height", "score")


def photo_table(photos: list[Photo]) -> pd.DataFrame:
  """One row per face: file, face index, box (x, y, width, height), score, 30 coordinates."""
  rows = [(p.path, i, *k.face.box, k.face.score, *k.keypoints)
          for p in photos for i, k in enumerate(p.faces)]
  frame = pd.DataFrame(rows, columns=[*PHOTO_COLUMNS, *keypoints.COLUMNS])
  return frame.astype({"face": np.int64})


def photo_record(p: Photo) -> dict:
  """A photo's JSON entry: its size and, per face, box, score, crop map and keypoints."""
  return {"file": p.path, "width": p.width, "height": p.height, "faces": [
      {"face": i, "box": [round(float(v), 2) for v in k.face.box],
       "score": round(k.face.score, 4),
       "crop_transform": k.transform.tolist(),
       "keypoints": {name: [round(float(x), 4), round(float(y), 4)] for name, (x, y) in
                     zip(keypoints.KEYPOINT_NAMES, k.keypoints.reshape(-1, 2))
                     if np.isfinite(x)}}  # NaN: untrained, left out.
      for i, k in enumerate(p.faces)]}


def run_photos(model: predictor.Predictor, paths: list[str], out_dir: str, tta: bool = False,
               refine: bool = True, out: str | None = None) -> list[Photo]:
  """Finds and reads every face of each photo; writes overlays, ``out`` (CSV) and its JSON.

  ``out`` defaults to ``<out_dir>/faces.csv``; the JSON is ``out`` with ``.json`` for ``.csv``.
  """
  os.makedirs(out_dir, exist_ok=True)
  out = out or os.path.join(out_dir, "faces.csv")
  print(f"{model.describe(tta)}, {detect.CASCADE}, refine {'on' if refine else 'off'}")
  submission.print_untrained(model, "left out")
  done = []

  def read(images):  # Untrained keypoints are NaN from the start: refine fits trained ones.
    return model.only_trained(model.predict(images, tta=tta))

  for p in predict_photos(read, paths, refine):
    print(face_lines(p))
    if p.faces:
      overlay = overlay_path(out_dir, p.path)
      plots.save_figure(plot_photo(p), overlay)
      print(f"  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  table = photo_table(done)
  submission.write_csv(out, table)
  json_path = os.path.splitext(out)[0] + ".json"
  files.write_json(json_path, {
      "workdir": os.path.abspath(model.workdir), "checkpoint": model.checkpoint,
      "step": model.step, "tta": tta, "refine": refine, "detector": detect.CASCADE,
      "photos": [photo_record(p) for p in done]})
  without = sum(not p.faces for p in done)
  print(f"{len(table)} faces in {len(done) - without} of {len(done)} photos: wrote {out}, "
        f"{json_path}")
  return done
