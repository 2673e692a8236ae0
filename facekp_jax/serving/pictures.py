"""Your own pictures -> the model's 96x96 grey input, and keypoints back in the picture's pixels.

Photos (the default of ``predict``): every face ``detect.detect`` finds is read in a crop
aligned to the training framing (``detect.find_keypoints``); ``predict_photos`` gives a
``Photo`` per file and ``plot_photo`` its overlay (boxes and keypoints). A folder stands for the
image files in it (``images.expand_paths``). ``run_photos`` writes each photo's overlay,
``<out_dir>/<stem>_keypoints.png``, one row per face in a CSV (file, face index, box, detector
score, the x, y of each trained keypoint, unclipped) and an entry per photo in the JSON beside
it; a photo without a face is reported in one line and the others go on.

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
from facekp_jax.serving import detect, images, predictor, submission

SIZE = keypoints.IMAGE_SIZE
CROPS = ("none", "center")
_PREVIEW = 4096  # Longest side of the picture kept for the overlay (its resolution, up to this).


@dataclasses.dataclass(frozen=True)
class Framing:
  """Where the model's 96x96 input lies in a picture: a ``side``-pixel square whose top-left
  pixel is picture pixel (``left``, ``top``) (negative where the square is padding)."""

  left: int
  top: int
  side: int

  def to_picture(self, coords: np.ndarray) -> np.ndarray:
    """(..., 2K) coordinates in the 96x96 frame -> the picture's pixels (centre convention)."""
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
  return images.resize(square, SIZE, SIZE)[..., None], Framing(left, top, side)


@dataclasses.dataclass
class Picture:
  """One picture's prediction: ``keypoints`` (2K,) in the picture's pixels."""

  path: str
  height: int
  width: int
  framing: Framing
  keypoints: np.ndarray
  preview: np.ndarray  # The picture, at most _PREVIEW pixels on its longest side.


def preview_of(picture: np.ndarray) -> np.ndarray:
  """The picture, at most ``_PREVIEW`` pixels on its longest side (what overlays draw)."""
  h, w = picture.shape[:2]
  shrink = min(1.0, _PREVIEW / max(h, w))
  return images.resize(picture, max(1, round(h * shrink)), max(1, round(w * shrink)))


def predict_pictures(predict: Callable[[np.ndarray], np.ndarray], paths: list[str],
                     crop: str = "none", chunk: int = 64) -> Iterator[Picture]:
  """Predicts the keypoints of image files in batches of ``chunk`` pictures.

  ``predict``: the model on whole pictures fitted into 96x96, (N, 96, 96, 1) -> (N, 2K) pixels.

  Raises:
    DataError: a missing or undecodable file.
  """
  for start in range(0, len(paths), chunk):
    inputs, pictures = [], []
    for path in paths[start:start + chunk]:
      picture = images.read_picture(path)
      image, framing = fit(images.to_grey(picture), crop)
      inputs.append(image)
      h, w = picture.shape[:2]
      pictures.append(Picture(path, h, w, framing, np.empty(0), preview_of(picture)))
    predictions = predict(np.stack(inputs))
    for p, prediction in zip(pictures, predictions):
      p.keypoints = p.framing.to_picture(prediction)
      yield p


def _overlay_axes(preview: np.ndarray, height: int, width: int):
  """A figure as large as ``preview`` (pixel for pixel at 100 dpi) whose one axes spans it, the
  picture drawn in the picture's own pixel coordinates; (figure, axes, marker size)."""
  plt = plots.pyplot()
  h, w = preview.shape[:2]
  fig = plt.figure(figsize=(max(w, 64) / 100, max(h, 64) / 100), dpi=100)
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(preview, cmap="gray" if preview.ndim == 2 else None, vmin=0, vmax=1,
            extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="antialiased")
  ax.axis("off")
  return fig, ax, float(np.clip(min(h, w) / 90, 3.0, 12.0))


def plot_picture(p: Picture, layout: keypoints.Layout):
  """The picture, at its resolution, with its predicted keypoints (a colour each, a legend)
  and the model's square (dashed)."""
  fig, ax, size = _overlay_axes(p.preview, p.height, p.width)
  f = p.framing
  ax.add_patch(plots.pyplot().Rectangle((f.left - 0.5, f.top - 0.5), f.side, f.side, fill=False,
                                        ls="--", ec="yellow", lw=max(1.0, size / 4)))
  plots.draw_keypoints(ax, p.keypoints.reshape(-1, 2), layout, size)
  ax.set_xlim(-0.5, p.width - 0.5)
  ax.set_ylim(p.height - 0.5, -0.5)
  return fig


def keypoint_lines(p: Picture, crop: str, layout: keypoints.Layout) -> str:
  lines = [f"{p.path} ({p.width}x{p.height}, crop={crop}): x, y in the picture's pixels"]
  for name, (x, y) in zip(layout.names, p.keypoints.reshape(-1, 2)):
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
                   refine: bool = True, chunk: int = 16,
                   mean_shape: np.ndarray | None = None,
                   score: Callable[[np.ndarray], np.ndarray] | None = None,
                   min_score: float = detect.MIN_FACE_SCORE) -> Iterator[Photo]:
  """Finds and reads every face of each image file (``detect.find_keypoints_in``), the faces of
  ``chunk`` photos at a time in one batch.

  Args:
    predict: the model on aligned crops, (N, 96, 96, 1) in [0, 1] -> (N, 2K) pixels.
    paths: image files.
    refine: a second, upright crop from the first pass's keypoints.
    chunk: photos read together.
    mean_shape: what the second crop fits to (``Predictor.mean_shape``; default Kaggle's).
    score: None, or each keypoint's confidence on aligned crops (``Predictor.confidences``).
    min_score: with ``score``, faces of a lower face score are dropped (``detect``).

  Raises:
    DataError: a missing or undecodable file.
  """
  for start in range(0, len(paths), chunk):
    batch = [(path, images.read_picture(path)) for path in paths[start:start + chunk]]
    found = detect.find_keypoints_in(predict, [(images.to_grey(p), None) for _, p in batch], refine,
                                     mean_shape, score, min_score)
    for (path, picture), keypoints_ in zip(batch, found):
      yield Photo(path, picture.shape[0], picture.shape[1], keypoints_, preview_of(picture))


# A keypoint whose confidence is below this is drawn hollow: its map's mass near it, times the
# TTA views' agreement on it, is under a half (Predictor.confidences).
UNSURE = 0.5


def plot_photo(p: Photo, layout: keypoints.Layout):
  """The photo, at its resolution, with each face's box (yellow, numbered) and keypoints (a
  colour each, joined by the layout's lines; a legend; hollow: confidence under ``UNSURE``)."""
  fig, ax, size = _overlay_axes(p.preview, p.height, p.width)
  plt = plots.pyplot()
  for i, k in enumerate(p.faces):
    x, y, w, h = k.face.box
    ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, ec="yellow",
                               lw=max(1.0, size / 4)))
    ax.text(x - 0.5, y - 1.5, str(i), color="yellow", fontsize=max(8.0, size * 1.5),
            va="bottom")
    plots.draw_keypoints(ax, k.keypoints.reshape(-1, 2), layout, size, legend=i == 0,
                         hollow=None if k.confidence is None else k.confidence < UNSURE)
  ax.set_xlim(-0.5, p.width - 0.5)
  ax.set_ylim(p.height - 0.5, -0.5)
  return fig


def face_lines(p: Photo, layout: keypoints.Layout) -> str:
  """A photo's summary: one line, then one line per face (box, score, the layout's NME pair:
  eye centres or outer corners)."""
  if not p.faces:
    return f"{p.path} ({p.width}x{p.height}): no face found"
  lines = [f"{p.path} ({p.width}x{p.height}): {len(p.faces)} face"
           + "s" * (len(p.faces) != 1) + " (x, y in the photo's pixels)"]
  for i, k in enumerate(p.faces):
    x, y, w, h = k.face.box
    xy = k.keypoints.reshape(-1, 2)
    a, b = layout.normalisers[-1][1]
    eyes = (f"; {layout.names[a]} ({xy[a, 0]:.1f}, {xy[a, 1]:.1f}) {layout.names[b]} "
            f"({xy[b, 0]:.1f}, {xy[b, 1]:.1f})"
            if np.isfinite(xy[[a, b]]).all() else "")  # NaN: eyes never trained.
    sure = ""
    if k.confidence is not None and np.isfinite(k.confidence).any():
      sure = (f"; keypoint confidence {np.nanmean(k.confidence):.2f} mean, "
              f"{np.nanmin(k.confidence):.2f} least")
    lines.append(f"  face {i}: box x {x:.0f} y {y:.0f} w {w:.0f} h {h:.0f}, score "
                 f"{k.face.score:.1f}{eyes}{sure}")
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
    plots.save_figure(plot_picture(p, model.layout), overlay, tight=False)
    print(f"{keypoint_lines(p, crop, model.layout)}\n  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  return done


PHOTO_COLUMNS = ("file", "face", "box_x", "box_y", "box_width", "box_height", "score")


def photo_table(photos: list[Photo], layout: keypoints.Layout,
                names: list[str] | None = None) -> pd.DataFrame:
  """One row per face: file, face index, box (x, y, width, height), score, the x, y of each
  keypoint of ``names`` (default: all of ``layout``'s; a model's trained ones), then, where
  the faces were scored, each one's confidence (``<name>_confidence``)."""
  names = layout.names if names is None else names
  cols = np.array([2 * layout.index(n) + a for n in names for a in (0, 1)], np.int64)
  index = np.array([layout.index(n) for n in names], np.int64)
  faces = [(p, i, k) for p in photos for i, k in enumerate(p.faces)]
  scored = bool(faces) and all(k.confidence is not None for _, _, k in faces)
  rows = [(p.path, i, *k.face.box, k.face.score, *np.asarray(k.keypoints)[cols],
           *(np.asarray(k.confidence)[index] if scored else ())) for p, i, k in faces]
  columns = [f"{n}_{a}" for n in names for a in ("x", "y")]
  columns += [f"{n}_confidence" for n in names] if scored else []
  frame = pd.DataFrame(rows, columns=[*PHOTO_COLUMNS, *columns])
  return frame.astype({"face": np.int64})


def photo_record(p: Photo, layout: keypoints.Layout) -> dict:
  """A photo's JSON entry: its size and, per face, box, score, crop map, keypoints and (where
  scored) their confidences."""
  return {"file": p.path, "width": p.width, "height": p.height, "faces": [
      {"face": i, "box": [round(float(v), 2) for v in k.face.box],
       "score": round(k.face.score, 4),
       "crop_transform": k.transform.tolist(),
       "keypoints": {name: [round(float(x), 4), round(float(y), 4)] for name, (x, y) in
                     zip(layout.names, k.keypoints.reshape(-1, 2))
                     if np.isfinite(x)},  # NaN: untrained, left out.
       **({} if k.confidence is None else {"confidence": {
           name: round(float(c), 4) for name, c in zip(layout.names, k.confidence)
           if np.isfinite(c)}})}
      for i, k in enumerate(p.faces)]}


def run_photos(model: predictor.Predictor, paths: list[str], out_dir: str, tta: bool = False,
               refine: bool = True, out: str | None = None,
               min_score: float = detect.MIN_FACE_SCORE) -> list[Photo]:
  """Finds and reads every face of each photo; writes overlays, ``out`` (CSV) and its JSON.
  ``min_score``: faces of a lower face score are dropped (a heatmap model's; ``detect``).

  ``out`` defaults to ``<out_dir>/faces.csv``; the JSON is ``out`` with ``.json`` for ``.csv``.
  """
  os.makedirs(out_dir, exist_ok=True)
  out = out or os.path.join(out_dir, "faces.csv")
  print(f"{model.describe(tta)}, {detect.CASCADE}, refine {'on' if refine else 'off'}")
  submission.print_untrained(model, "left out")
  done = []

  def read(images):  # Untrained keypoints are NaN from the start: refine fits trained ones.
    return model.only_trained(model.predict(images, tta=tta))

  for p in predict_photos(read, paths, refine, mean_shape=model.mean_shape,
                          score=model.scorer and model.confidences, min_score=min_score):
    print(face_lines(p, model.layout))
    if p.faces:
      overlay = overlay_path(out_dir, p.path)
      plots.save_figure(plot_photo(p, model.layout), overlay, tight=False)
      print(f"  overlay: {overlay}")
    p.preview = None  # Keep only the numbers.
    done.append(p)
  table = photo_table(done, model.layout, model.trained_names())
  submission.write_csv(out, table)
  json_path = os.path.splitext(out)[0] + ".json"
  files.write_json(json_path, {
      "workdir": os.path.abspath(model.workdir), "checkpoint": model.checkpoint,
      "step": model.step, "tta": tta, "refine": refine, "detector": detect.CASCADE,
      "min_face_score": min_score if model.scorer else None,
      "keypoints": model.layout.name, "photos": [photo_record(p, model.layout) for p in done]})
  without = sum(not p.faces for p in done)
  print(f"{len(table)} faces in {len(done) - without} of {len(done)} photos: wrote {out}, "
        f"{json_path}")
  return done
